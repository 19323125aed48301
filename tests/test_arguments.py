"""Every entry point checks its arguments (issue 16, item 4): a wrong type or value anywhere is a DecError (the CLI's
one-line error, exit 1) that names the argument and says what it takes, raised before anything is allocated; never a
TypeError, a RuntimeError from deep inside torch, a silent wrong answer or a traceback.

- `Decoder.generate`: hypothesis over wrong-typed and out-of-range values through every parameter, on round-based,
  beam-search and exact-backend decoders; numpy integers are integers (the same tokens as Python ints), bools and
  floats are not; text needs a tokenizer, may not be mixed with ids, and must be encodable.
- `decspec.compile`: junk in every argument (spec, decoder, backend, models, overrides, model keywords).
- the CLI: `--escapes` over arbitrary text (malformed escapes refused, non-ASCII kept), `-o` to a directory or a
  missing folder, counts below 1, a seed past 64 bits, a model role the command line cannot bind.
- model directories: a config.json with any bad size is refused before a tensor is allocated (hypothesis).
- hints: every command-line option a message names exists.
"""
from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.arguments import MAX_CONTEXT, MAX_POSITIONS
from decspec.cli import build_parser, main, unescaped
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.table import TableModel

ROOT = Path(__file__).resolve().parent.parent
V = 6
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def tables():
    return {"target": TableModel.random(V, 1, seed=0, eos_token_id=V - 1), "draft": TableModel.random(V, 1, seed=1)}


DECODERS = {  # a round graph run by the interpreter, by the exact rule table, and beam search (no rounds)
    "rounds": lambda: decspec.compile("specs/speculative.dec", models=tables(), k=3),
    "exact backend": lambda: decspec.compile("specs/speculative.dec", models=tables(), k=3, backend="exact"),
    "beam search": lambda: decspec.compile("specs/beam_search.dec", models={"target": tables()["target"]}),
}


@pytest.fixture(scope="module", params=list(DECODERS))
def decoder(request):
    return DECODERS[request.param]()


# --------------------------------------------------------------------------- generate


def not_an_int():
    return st.one_of(st.booleans(), st.floats(allow_nan=True), st.text(max_size=4), st.none(), st.lists(st.integers(0, 3), max_size=2),
                     st.builds(np.float32, st.floats(-5, 5, width=32)), st.builds(np.bool_, st.booleans()), st.just(b"1"),
                     st.builds(lambda x: torch.tensor(x), st.integers(0, 3)))


BAD = {
    "max_new_tokens": st.one_of(not_an_int().filter(lambda v: v is not None and not (isinstance(v, list) and len(v) == 1 and v[0] > 0)),
                                st.integers(max_value=0)),  # a list: one count per prompt
    "seed": st.one_of(not_an_int().filter(lambda v: v is not None and not (isinstance(v, list) and len(v) == 1)),  # a list: one per prompt
                      st.integers(min_value=2**64), st.integers(max_value=-2**63 - 1),
                      st.lists(st.one_of(st.integers(min_value=2**64), st.floats()), min_size=1, max_size=1)),
    "eos_token_id": st.one_of(not_an_int().filter(lambda v: v is not None and not (isinstance(v, str) and v == "default")
                                                  and not (isinstance(v, list) and v)),  # a list of ids is several EOS ids
                              st.integers(max_value=-1),
                              st.integers(min_value=V),
                              st.lists(st.one_of(st.integers(max_value=-1), st.integers(min_value=V), st.booleans(), st.none(),
                                                 st.floats()), min_size=1, max_size=2).flatmap(
                                  lambda bad: st.permutations([0, *bad]))),  # a list with a bad id, or an empty one
}


@pytest.mark.parametrize("name", list(BAD))
def test_every_scalar_argument_of_generate_is_checked(decoder, name):
    if name == "seed" and decoder.search is not None:
        pytest.skip("beam search is deterministic: its seed is checked, then unused")

    @SETTINGS
    @given(BAD[name])
    def check(value):
        with pytest.raises(DecError, match=name):
            decoder.generate([[1, 2]], **{"max_new_tokens": 3, name: value})

    check()


ID_ROWS = st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=4), min_size=1, max_size=3)


def with_one_bad_id(rows, bad):
    """rows with one id replaced by `bad`: (rows, where)."""
    return st.tuples(st.integers(0, len(rows) - 1), st.integers(0, 100)).map(
        lambda at: ([r if i != at[0] else r[:at[1] % len(r)] + [bad] + r[at[1] % len(r) + 1:] for i, r in enumerate(rows)], at[0]))


BAD_ID = st.one_of(st.booleans(), st.floats(allow_nan=True), st.integers(min_value=V), st.integers(max_value=-1), st.none(),
                   st.lists(st.integers(0, 3), min_size=1, max_size=2), st.builds(np.float64, st.floats(0, 3)), st.builds(np.bool_, st.booleans()))


def test_every_bad_token_id_anywhere_in_a_prompt_names_its_prompt(decoder):
    @SETTINGS
    @given(ID_ROWS.flatmap(lambda rows: BAD_ID.flatmap(lambda bad: with_one_bad_id(rows, bad))))
    def check(case):
        rows, b = case
        with pytest.raises(DecError, match=rf"prompt {b} has|input_ids mixes"):
            decoder.generate(rows, max_new_tokens=2)

    check()


@pytest.mark.parametrize("input_ids, message", [
    (None, r"input_ids must be .* \(got None\)"), (3, r"\(got 3 \(an int\)\)"), ({1: 2}, "a dict"), (b"ab", "input_ids is bytes"),
    ([], "input_ids is empty"), ([[1], []], "prompt 1 is empty"), ([[[1]]], "prompt 0 has \\[1\\] \\(a list\\) at position 0"),
    (torch.tensor([[True, False]]), "integer Tensor"), (torch.ones(1, 2), "integer Tensor"), (torch.ones(1, 1, 2, dtype=torch.long), r"shape \(1, 1, 2\)"),
    (np.ones((1, 2), dtype=bool), "integer ndarray"), (np.ones((1, 2)), "integer ndarray"), ([1, [2]], "input_ids mixes token ids and prompts"),
    (["text", [1, 2]], "mixes text"), ("text", "carries no tokenizer"), ([torch.ones(2)], "prompt 0 must be an integer Tensor"),
])
def test_malformed_prompts_say_what_is_wrong(decoder, input_ids, message):
    with pytest.raises(DecError, match=message):
        decoder.generate(input_ids, max_new_tokens=2)


INTEGERS = [int, np.int64, np.int32, np.uint8, np.int16, lambda x: torch.tensor(x).item()]


@pytest.mark.parametrize("kind", INTEGERS, ids=["int", "int64", "int32", "uint8", "int16", "item"])
def test_numpy_integers_are_integers(kind):
    dec = DECODERS["rounds"]()
    want = dec.generate([[1, 2], [3]], max_new_tokens=5, seed=7, eos_token_id=V - 1)
    got = dec.generate([[kind(1), kind(2)], [kind(3)]], max_new_tokens=kind(5), seed=kind(7), eos_token_id=kind(V - 1))
    assert got.tokens == want.tokens
    assert dec.generate(np.array([[1, 2]]), max_new_tokens=5, seed=7).tokens == dec.generate([[1, 2]], max_new_tokens=5, seed=7).tokens


def test_any_64_bit_seed_is_taken_and_nothing_wider(decoder):
    for seed in (0, 2**63, 2**64 - 1, -2**63, np.uint64(2**64 - 1)):
        decoder.generate([[1]], max_new_tokens=2, seed=seed)
    for seed in (2**64, -2**63 - 1, 10**100):
        with pytest.raises(DecError, match=r"seed must be an integer in \[-2\*\*63, 2\*\*64\)"):
            decoder.generate([[1]], max_new_tokens=2, seed=seed)


@pytest.mark.parametrize("max_new_tokens", [MAX_POSITIONS, 10**9, 2**63, 10**40])
def test_max_new_tokens_that_would_allocate_too_much_is_refused_before_allocating(decoder, max_new_tokens, monkeypatch):
    allocated = []
    zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: allocated.append(a) or zeros(*a, **k))
    with pytest.raises(DecError, match=r"context positions per row; decspec preallocates at most 1,048,576"):
        decoder.generate([[1, 2]], max_new_tokens=max_new_tokens)
    assert not [a for a in allocated if math.prod(a[0] if isinstance(a[0], tuple) else a) > 10**6]


def test_many_rows_times_many_positions_is_refused(decoder):
    rows = MAX_CONTEXT // MAX_POSITIONS + 1
    with pytest.raises(DecError, match=r"\d+ rows x .* positions to preallocate"):  # beam search: rows x beam width
        decoder.generate([[1]] * rows, max_new_tokens=MAX_POSITIONS - 1000)


def test_a_model_s_own_position_limit_comes_first():
    from decspec.stdlib.models.pretrained import reference_models

    dec = decspec.compile("specs/speculative.dec", models=reference_models())
    limit = dec.models["target"].max_positions
    with pytest.raises(DecError, match=rf"exceeds the {limit} positions of model 'target'"):
        dec.generate([[1]], max_new_tokens=limit)


# --------------------------------------------------------------------------- text prompts


@pytest.fixture(scope="module")
def text_decoder():
    from decspec.stdlib.models.pretrained import reference_models

    return decspec.compile("specs/speculative.dec", models=reference_models())


@SETTINGS
@given(text=st.text(max_size=12), at=st.integers(0, 12), surrogate=st.integers(0xD800, 0xDFFF), rows=st.integers(1, 3))
def test_unencodable_text_is_refused_at_its_character(text_decoder, text, at, surrogate, rows):
    at = min(at, len(text))
    bad = text[:at] + chr(surrogate) + text[at:]
    with pytest.raises(DecError, match=rf"prompt {rows - 1} is not valid Unicode text: .* at character {at} \(a lone surrogate\)"):
        text_decoder.generate(["ok"] * (rows - 1) + [bad], max_new_tokens=1)


def test_text_and_ids_never_mix(text_decoder):
    for prompts in (["a", [1, 2]], [[1, 2], "a"], ["a", torch.tensor([1])], ["a", None]):
        with pytest.raises(DecError, match="mixes text"):
            text_decoder.generate(prompts, max_new_tokens=1)
    assert text_decoder.generate(["a", "b"], max_new_tokens=1).text is not None


# --------------------------------------------------------------------------- compile


COMPILE_JUNK = st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.integers(), max_size=2), st.builds(object), st.binary(max_size=3))


COMPILE_ARGS = {"spec": "spec must be", "backend": "backend must be", "decoder": "decoder must be"}


@SETTINGS
@given(name=st.sampled_from(list(COMPILE_ARGS)), junk=COMPILE_JUNK.filter(lambda v: v is not None))
def test_compile_checks_the_spec_backend_and_decoder_name(name, junk):
    args = {"spec": "specs/speculative.dec", "backend": "eager", "decoder": None, name: junk}
    with pytest.raises(DecError, match=COMPILE_ARGS[name]):
        decspec.compile(args.pop("spec"), **args, models=tables())
    if name != "decoder":
        with pytest.raises(DecError, match=COMPILE_ARGS[name]):
            decspec.compile(*(["specs/speculative.dec"] if name != "spec" else [None]), models=tables(),
                            **({"backend": None} if name == "backend" else {}))


@SETTINGS
@given(junk=st.one_of(st.none(), st.integers(), st.text(max_size=5), st.builds(object), st.lists(st.none(), max_size=2)),
       role=st.sampled_from(["target", "draft"]))
def test_a_model_mapping_holds_models(junk, role):
    models = {**tables(), role: junk}
    with pytest.raises(DecError, match=rf"models\['{role}'\] is .*, not a model"):
        decspec.compile("specs/speculative.dec", models=models)
    with pytest.raises(DecError, match="must be a dict"):
        decspec.compile("specs/speculative.dec", models=[junk])
    with pytest.raises(DecError, match="must be a dict"):
        decspec.compile("specs/speculative.dec", models=tables(), overrides=[junk])


@pytest.mark.parametrize("value", [None, object(), torch.zeros(2)])
def test_a_model_keyword_that_is_not_a_model_says_so(value):
    with pytest.raises(DecError, match=r"target=.* is not a model, and the decoder has no parameter 'target'"):
        decspec.compile("specs/speculative.dec", target=value, draft=tables()["draft"])


def test_a_misspelled_parameter_is_still_a_misspelled_parameter():
    with pytest.raises(DecError, match="unknown parameter 'kk'"):
        decspec.compile("specs/speculative.dec", models=tables(), kk=3)


# --------------------------------------------------------------------------- the command line


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "internal error" not in err, err
    return err


ESCAPABLE = st.text(alphabet=st.sampled_from(list("ab\\xuUN{}01789fnt'\"") + ["é", "€", "😀", "\u2028"]), max_size=14)


@settings(max_examples=300, deadline=None)
@given(ESCAPABLE)
def test_escapes_decode_like_python_or_are_refused(text):
    try:
        out = unescaped(text)
    except DecError as e:
        assert "--prompt" in str(e)
        return
    if text.isascii():  # Python's own reading of the same escapes (an unknown escape stays as written)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert out == text.encode().decode("unicode_escape")
    assert all(c in out for c in text if not c.isascii())  # non-ASCII text is kept, never re-read as Latin-1


def test_escapes_keep_non_ascii_text():
    assert unescaped("naïve café\\n€ 😀") == "naïve café\n€ 😀"


@pytest.mark.parametrize("prompt", ["a\\x4", "\\u12", "end\\", "\\N{NO SUCH NAME}", "\\U00110000"])
def test_run_with_a_malformed_escape_is_one_line(prompt, capsys):
    assert main(["run", "specs/speculative.dec", "--prompt", prompt, "--escapes", "--max-new-tokens", "2"]) == 1
    assert "--prompt" in one_error_line(capsys)


def test_emit_to_a_directory_or_a_missing_folder(tmp_path, capsys):
    assert main(["emit", "specs/speculative.dec", "-o", str(tmp_path)]) == 1
    assert "is a directory" in one_error_line(capsys)
    assert main(["emit", "specs/speculative.dec", "-o", str(tmp_path / "no" / "such" / "round.py")]) == 1
    assert "there is no folder" in one_error_line(capsys)
    for target in (["--format", "mlir"], []):
        assert main(["emit", "specs/speculative.dec", *target, "-o", str(tmp_path)]) == 1
        one_error_line(capsys)
    assert main(["emit", "specs/speculative.dec", "-o", str(tmp_path / "round.py")]) == 0
    assert "def " in (tmp_path / "round.py").read_text()


@pytest.mark.parametrize("argv, message", [
    (["verify", "specs/speculative.dec", "--configs", "0"], "--configs must be at least 1 (got 0)"),
    (["verify", "specs/speculative.dec", "--configs", "-3"], "--configs must be at least 1"),
    (["verify", "specs/speculative.dec", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["emit", "specs/speculative.dec", "--format", "mlir", "--batch", "0", "--capacity", "0"], "--batch must be at least 1"),
    (["emit", "specs/speculative.dec", "--format", "mlir", "--capacity", "0"], "--capacity must be at least 1"),
    (["emit", "specs/speculative.dec", "--format", "mlir", "--capacity", "8"], "capacity 8 is too small for this round"),
    (["emit", "specs/speculative.dec", "--format", "mlir", "--batch", "100000", "--capacity", "100000"], "more than decspec preallocates"),
    (["run", "specs/speculative.dec", "--batch", "0"], "--batch must be at least 1"),
    (["run", "specs/speculative.dec", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["run", "specs/speculative.dec", "--seed", str(2**64)], "seed must be an integer in"),
    (["run", "specs/speculative.dec", "--seed", str(-2**70)], "seed must be an integer in"),
    (["run", "specs/speculative.dec", "--max-new-tokens", str(10**12)], "exceeds the"),
])
def test_cli_arguments_are_checked(argv, message, capsys):
    assert main(argv) == 1
    assert message in one_error_line(capsys)


def test_a_role_the_command_line_cannot_bind_names_no_option_that_does_not_exist(tmp_path, capsys):
    spec = tmp_path / "helper.dec"
    spec.write_text((ROOT / "specs" / "speculative.dec").read_text().replace('model("draft")', 'model("helper")'))
    assert main(["run", str(spec), "--max-new-tokens", "2"]) == 1
    err = one_error_line(capsys)
    assert "role 'helper'" in err and "--helper" not in err


# --------------------------------------------------------------------------- model directories


SIZES = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "head_dim", "max_position_embeddings"]
BAD_SIZE = st.one_of(st.integers(max_value=0), st.integers(min_value=2**27 + 1), st.floats(), st.text(max_size=3), st.booleans(),
                     st.lists(st.integers(1, 4), max_size=2))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from decspec.stdlib.models.transformer import Transformer, TransformerConfig

    path = tmp_path_factory.mktemp("tiny")
    config = TransformerConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in Transformer.random(config, seed=0).state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16,
                                                  "num_hidden_layers": 1, "num_attention_heads": 2}))
    return path


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(SIZES), value=BAD_SIZE)
def test_a_config_with_a_bad_size_is_refused_before_any_tensor_is_allocated(model_dir, field, value):
    from decspec.stdlib.models import pretrained
    from decspec.stdlib.models.pretrained import load_transformer

    raw = json.loads((model_dir / "config.json").read_text())
    bad = model_dir.parent / f"bad-{model_dir.name}"
    bad.mkdir(exist_ok=True)
    (bad / "config.json").write_text(json.dumps({**raw, field: value}))
    if not (bad / "model.safetensors").exists():
        (bad / "model.safetensors").symlink_to(model_dir / "model.safetensors")
    built = []
    original = pretrained.Transformer

    class Recording(original):
        def __init__(self, config, *, dtype=torch.float32, device="cpu"):
            built.append(str(device))
            super().__init__(config, dtype=dtype, device=device)

    pretrained.Transformer = Recording
    try:
        with pytest.raises(DecError, match=r"config.json|do not match|has shape"):
            load_transformer(bad)
    finally:
        pretrained.Transformer = original
    assert all(d == "meta" for d in built), built


def test_a_config_that_inflates_its_weights_allocates_nothing(model_dir, tmp_path):
    from decspec.stdlib.models.pretrained import load_transformer

    raw = json.loads((model_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "vocab_size": 4_000_000, "hidden_size": 65_536}))  # ~0.5T parameters
    (tmp_path / "model.safetensors").symlink_to(model_dir / "model.safetensors")
    with pytest.raises(DecError, match="has shape .* but config.json implies"):
        load_transformer(tmp_path)
    assert load_transformer(model_dir).vocab_size == 16


# --------------------------------------------------------------------------- hints name only what exists


def message_strings():
    """(file, text) of every string constant in the arguments of DecError-like calls in decspec's modules."""
    for path in [p for d in ("decspec", "dsl", "compiler", "stdlib", "backends") for p in (ROOT / d).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                    "DecError", "GrammarError", "TooLarge", "Diagnostic", "UnreadableFile", "InvalidConfig"):
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    for sub in ast.walk(arg):
                        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                            yield path.relative_to(ROOT), sub.value


PIP = {"--no-deps", "--only-binary"}  # pip's own options that messages quote in the command they suggest


def module_options(module: str) -> set[str]:
    """The options a `python -m decspec.stdlib.models.MODULE` command line declares."""
    return set(re.findall(r"add_argument\(\"(--[a-z-]+)\"", (ROOT / "stdlib" / "models" / f"{module}.py").read_text()))


def test_every_command_line_option_a_message_names_exists():
    parser = build_parser()
    options = {o for a in parser._actions for o in a.option_strings}
    for sub in parser._subparsers._group_actions[0].choices.values():
        options |= {o for a in sub._actions for o in a.option_strings}
    named, missing = 0, []
    for f, text in message_strings():
        for m in re.finditer(r"(?<![\w-])--[a-z][a-z-]*", text):
            before = text[:m.start()]
            programs = re.findall(r"\bpip\b|decspec\.stdlib\.models\.(\w+)", before)
            known = options if not programs else PIP if programs[-1] == "" else module_options(programs[-1])
            named += 1
            if m.group() not in known:
                missing.append((str(f), m.group()))
    assert named > 10  # the scan sees the messages
    assert not missing, missing
