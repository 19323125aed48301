"""What a spec can make decspec read and say, and what decspec loads back from disk (issue 16, item 1).

- The .dec parser's tables are never unpickled from a place another user can write: a pickle planted
  under Lark's old cache name in the temp directory (which Lark's `cache=True` did run) is never loaded,
  and the tables in the user cache are read back only from a private folder, from a file the current
  user owns that no one else can write. The grammar index cache follows the same rule and never unpickles.
- A file a spec names (`import`, `lark_file`, `json_schema`) is never quoted beyond what parsed as the
  expected language: secrets in `.env` files, JSON credentials, YAML, `/proc/self/environ` never reach a
  diagnostic or the CLI's output, whatever the file holds (hypothesis); devices, pipes, directories,
  binary and oversized files are refused by kind, without reading them.
"""
from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decspec
from decspec.dsl import files
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError, Source
from decspec.dsl.parser import parse
from decspec.stdlib.grammars.cache import IndexCache
from decspec.stdlib.grammars.cfg import lark_lalr
from decspec.stdlib.models.table import TableModel
from decspec.user_cache import open_private, private_dir

SECRET = "hunter2secret9"  # a valid name in .dec and Lark, so a file holding it can get far in both parsers
ROOT = Path(__file__).resolve().parent.parent
VOCAB = [b"a", b"b", b"{", b"}", b'"', b":", None]


class Planted:
    """A pickle that, when loaded, creates the file `marker`: proof that someone's data ran as code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- the parser's tables


def test_a_pickle_planted_where_larks_temp_cache_was_is_never_loaded(tmp_path):
    shared_tmp, marker = tmp_path / "tmp", tmp_path / "ran"
    shared_tmp.mkdir()
    env = {"TMPDIR": str(shared_tmp), "DECSPEC_CACHE": str(tmp_path / "cache")}
    old_way = """
        from importlib import resources
        from lark import Lark
        grammar = resources.files("decspec.dsl").joinpath("dec.lark").read_text(encoding="utf-8")
        Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True, maybe_placeholders=True, cache=True)
    """
    assert run_python(old_way, env).returncode == 0  # writes Lark's cache file under the name it will look for
    planted = sorted(shared_tmp.glob(".lark_cache*"))
    assert planted, "Lark's cache file name changed: update this test's plant"
    for path in planted:  # keep Lark's header line (its key), swap the tables for an attacker's pickle
        key = path.read_bytes().split(b"\n", 1)[0]
        path.write_bytes(key + b"\n" + pickle.dumps(Planted(marker)))
    run_python(old_way, env)
    assert marker.exists()  # the plant does run under Lark's cache=True: the fault this test guards against
    marker.unlink()
    result = run_python("""
        from decspec.dsl.parser import parse
        print(parse('decoder d() { target = model("t") }', "d.dec").items[0].name)
    """, env)
    assert result.returncode == 0 and result.stdout.strip() == "d", result.stderr
    assert not marker.exists()


def test_parser_tables_load_only_from_a_private_file(tmp_path, monkeypatch):
    from decspec.dsl import parser

    monkeypatch.setenv("DECSPEC_CACHE", str(tmp_path / "cache"))
    build = parser._lark.__wrapped__  # the uncached function: one build or load per call
    build()
    folder = tmp_path / "cache" / "parser"
    (tables,) = folder.glob("dec-*.lark")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(tables.stat().st_mode) == 0o600
    assert build().parse('decoder d() { k = 1 }')  # loaded from the file just written

    header = tables.read_bytes().split(b"\n", 1)[0] + b"\n"
    marker = tmp_path / "ran"
    tables.write_bytes(header + pickle.dumps(Planted(marker)))
    build()  # the current user's own private file is trusted (it only fails to be a parser, and is rebuilt)
    assert marker.exists()

    for unsafe in (lambda: tables.chmod(0o620), lambda: folder.chmod(0o777)):
        marker.unlink(missing_ok=True)
        tables.write_bytes(header + pickle.dumps(Planted(marker)))
        tables.chmod(0o600)
        folder.chmod(0o700)
        unsafe()  # group-writable file, or a folder anyone can write: never read
        assert build().parse('decoder d() { k = 1 }') and not marker.exists()
    folder.chmod(0o700)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file away needs root")
def test_a_file_another_user_owns_is_never_read(tmp_path):
    folder = private_dir(tmp_path / "cache")
    path = folder / "f"
    path.write_bytes(b"x")
    with open_private(path) as f:
        assert f is not None and f.read() == b"x"
    os.chown(path, 4242, -1)
    with open_private(path) as f:
        assert f is None
    os.chown(folder, 4242, -1)
    assert private_dir(folder) is None


def test_private_dir_creates_every_missing_folder_0700(tmp_path):
    made = private_dir(tmp_path / "a" / "b" / "c")
    assert made == tmp_path / "a" / "b" / "c"
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in (tmp_path / "a", tmp_path / "a" / "b", made))
    symlink = tmp_path / "link"
    symlink.symlink_to(made / "f")
    (made / "f").write_bytes(b"x")
    with open_private(symlink) as f:  # a symlink is not followed to a file, even one of ours
        assert f is None


def test_the_grammar_index_cache_never_unpickles(tmp_path):
    marker = tmp_path / "ran"
    path = private_dir(tmp_path / "grammars") / "k.npz"
    with open(path, "wb") as f:
        np.savez(f, words=np.array([Planted(marker)], dtype=object))
    assert IndexCache.load(path) is None and not marker.exists()


def test_the_grammar_index_cache_ignores_files_others_can_write(tmp_path, monkeypatch):
    from decspec.stdlib.grammars import CACHE, compile_grammar

    monkeypatch.setenv("DECSPEC_CACHE_DIR", str(tmp_path))
    CACHE.clear()
    compile_grammar("regex", "ab", VOCAB, eos_id=6)
    (path,) = tmp_path.glob("*.npz")
    assert IndexCache.load(path) is not None
    path.chmod(0o666)
    assert IndexCache.load(path) is None
    CACHE.clear()


# --------------------------------------------------------------------------- diagnostics never quote a file's secrets


SECRET_FILES = {
    "aws.env": f"AWS_ACCESS_KEY_ID=AKIAEXAMPLE\nAWS_SECRET_ACCESS_KEY={SECRET}\n",
    "export.sh": f"export API_TOKEN={SECRET}\n",
    "config.yaml": f"user: bob\npassword: {SECRET}\n",
    "creds.json": json.dumps({"client_id": "x", "client_secret": SECRET, "nested": {"token": SECRET}}),
    "settings.ini": f"[auth]\ntoken = {SECRET}\n",
    "id_key.pem": f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n-----END OPENSSH PRIVATE KEY-----\n",
    "decoder.env": f"decoder=prod\nsecret={SECRET}\n",  # starts like a spec: parses one token, quotes no more
    "import.txt": f"import os; KEY = '{SECRET}'\n",
    "latin1.txt": f"caf\xe9={SECRET}\n",  # written as latin-1 below: not UTF-8
    "binary.bin": f"\x00\x01{SECRET}\x00",
}


def secret_file(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_bytes(SECRET_FILES[name].encode("latin-1" if name == "latin1.txt" else "utf-8"))
    return path


def spec_naming(folder: Path, reader: str, target: str) -> Path:
    """A spec file whose `reader` ("import", "lark_file", "json_schema") names the file `target`."""
    grammar = f'\n    grammar = {reader}("{target}")' if reader != "import" else ""
    head = f'import "{target}"\n' if reader == "import" else ""
    path = folder / "spec.dec"
    path.write_text(head + 'decoder spec() {\n    target = model("target")' + grammar + "\n}\n")
    return path


def error_text(spec: Path) -> str:
    """The rendered diagnostics of checking and compiling the spec (lark_file is only read at compile time)."""
    with pytest.raises(DecError) as info:
        decspec.compile(spec, target=TableModel.random(len(VOCAB), 1, 0, eos_token_id=len(VOCAB) - 1), vocab=VOCAB)
    return str(info.value)


@pytest.mark.parametrize("reader", ["import", "lark_file", "json_schema"])
@pytest.mark.parametrize("name", sorted(SECRET_FILES))
def test_no_reader_quotes_a_secret_file(tmp_path, reader, name):
    secret_file(tmp_path, name)
    message = error_text(spec_naming(tmp_path, reader, name))
    assert SECRET not in message and name in message


def test_a_file_that_is_not_a_spec_is_named_by_kind():
    with pytest.raises(DecError) as info:
        parse(Source(f"AWS_SECRET={SECRET}\n", "aws.env", quotable=0))
    assert str(info.value).startswith("aws.env:1:1: error: not a .dec spec: expected 'decoder' or 'import' here")
    assert SECRET not in str(info.value) and "AWS_SECRET" not in str(info.value)


def test_a_spec_file_is_quoted_as_far_as_it_parsed(tmp_path):
    path = tmp_path / "typo.dec"
    path.write_text(f'decoder d() {{ verify rejection {SECRET} }}\n')
    with pytest.raises(DecError) as info:
        load(path)
    assert str(info.value).splitlines()[1:3] == ["    decoder d() { verify rejection", " " * 25 + "^" * 9]
    path.write_text(f'decoder d() {{ verify = rejection }}\ndecoder d() {{ x = "{SECRET}" }}\n')
    with pytest.raises(DecError) as info:  # it parsed: a .dec file, quoted as usual
        load(path)
    assert "decoder 'd' is defined twice" in str(info.value)


@pytest.mark.parametrize("reader", ["import", "json_schema"])
def test_the_cli_never_prints_the_environment(tmp_path, reader):
    spec = spec_naming(tmp_path, reader, "/proc/self/environ")
    result = subprocess.run([sys.executable, "-m", "decspec", "check", str(spec)], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "DECSPEC_TEST_SECRET": SECRET}, timeout=300)
    assert result.returncode == 1 and "binary file" in result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("reader", ["import", "lark_file", "json_schema"])
def test_devices_pipes_and_folders_are_refused_unread(tmp_path, reader):
    os.mkfifo(tmp_path / "pipe")  # opening it for reading would wait for a writer forever
    for target, kind in (("/dev/zero", "a character device"), ("pipe", "a pipe"), (str(tmp_path), "a directory")):
        assert kind in error_text(spec_naming(tmp_path, reader, target))


def test_oversized_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_BYTES", 1024)
    (tmp_path / "big.dec").write_text("# " + "x" * 2000 + "\n")
    assert "larger than" in error_text(spec_naming(tmp_path, "import", "big.dec"))


# --------------------------------------------------------------------------- hypothesis: whatever the file holds

KEYS = st.sampled_from(["AWS_SECRET_ACCESS_KEY", "token", "password", "api_key", "client_secret", "passwd", "key",
                        "decoder", "import", "target", "verify", "private_key"])
SEPARATORS = st.sampled_from(["=", " = ", ": ", ":", " ", "=\"", " := "])
NOISE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30).filter(
    lambda t: SECRET not in t)
SPEC_LINES = st.sampled_from(['import "base.dec"', "decoder d() {", "decoder d() { target = model(\"t\") }", "}",
                              "# a comment", "", "[section]", "{", "export", "(", '"""'])


@st.composite
def secret_texts(draw) -> str:
    """Lines of .env / YAML / INI / shell / spec fragments and noise; the secret only ever as a value."""
    lines = draw(st.lists(st.one_of(
        st.builds(lambda k, s: f"{k}{s}{SECRET}", KEYS, SEPARATORS),
        st.builds(lambda k: f"export {k}={SECRET}", KEYS),
        st.builds(lambda k: json.dumps({k: SECRET}), KEYS),
        SPEC_LINES, NOISE.map(lambda t: t.replace("\n", " "))), min_size=1, max_size=8))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=secret_texts())
def test_an_imported_file_never_leaks_its_values(tmp_path, text):
    (tmp_path / "file.env").write_text(text, encoding="utf-8")
    spec = spec_naming(tmp_path, "import", "file.env")
    try:
        load(spec)
    except DecError as e:
        assert SECRET not in str(e), str(e)


@settings(max_examples=150, deadline=None)
@given(text=secret_texts())
def test_a_lark_grammar_never_leaks_a_files_values(text):
    try:
        lark_lalr(text, "start")
    except DecError as e:
        assert SECRET not in str(e), str(e)


JSON_KEYS = KEYS | st.sampled_from(["title", "description", "default", "examples", "$comment"])
JSON_FILES = st.recursive(st.just(SECRET) | st.integers() | st.booleans() | st.none(),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_KEYS, inner, max_size=4),
                          max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=JSON_FILES)
def test_a_json_file_never_leaks_its_values_as_a_schema(tmp_path, data):
    (tmp_path / "creds.json").write_text(json.dumps(data))
    try:
        load(spec_naming(tmp_path, "json_schema", "creds.json"))
    except DecError as e:
        assert SECRET not in str(e), str(e)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200), at=st.integers(0, 200))
def test_binary_files_are_refused_by_kind(tmp_path, data, at):
    blob = data[:at] + b"\x00" + SECRET.encode() + data[at:]
    (tmp_path / "blob").write_bytes(blob)
    with pytest.raises(DecError) as info:
        load(spec_naming(tmp_path, "import", "blob"))
    assert SECRET not in str(info.value) and "binary file" in str(info.value)
