"""The `grammar` slot: grammar-constrained decoding, alone and composed with speculative decoding.

Outputs always belong to the grammar (a full match when EOS ended the row, a valid prefix otherwise), on
eager and inductor, with and without speculation; the output distribution is exactly the grammar-masked
target's (exact backend) and a statistical check agrees; greedy speculative decoding under a grammar is
greedy constrained decoding token for token; the passes keep the mask between the model and the sampler;
bad grammars are diagnostics that point at the spec.
"""
from __future__ import annotations

import json
import re

import pytest
import torch

import decspec
from decspec.backends.grammar import GrammarSession, grammar_states, masked_logits
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.compiler.verify import verify
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.grammars import compile_grammar, compile_regex
from decspec.stdlib.grammars.matcher import Matcher
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel
from decspec.testing import assert_samples_match, exact_distribution, target_distribution, tv_distance

# A tiny vocabulary for table models: single characters, a few longer tokens, and the EOS (last id).
VOCAB = [b"a", b"b", b"c", b"{", b"}", b'"', b":", b",", b" ", b"ok", b"true", b"false", b'"n"', b"ab", None]
EOS = len(VOCAB) - 1
V = len(VOCAB)
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": ["a", "b", "c"]}}, "required": ["ok"]}
GRAMMARS = {
    "regex": ('regex("""(ab|c)+b?""")', r"(ab|c)+b?"),
    "json_schema": ("json_schema(" + repr(json.dumps(SCHEMA)).replace("'", '"""', 1)[:-1] + '""")', None),
    "choice": ('choice(["ab", "abc", "cab"])', r"ab|abc|cab"),
}


def spec(grammar: str, propose: str | None = "autoregressive(draft, max = k)", sampler: str = "temperature(temperature)",
         verify: str = "rejection") -> str:
    lines = ['    target  = model("target")', f"    sampler = {sampler}", f"    grammar = {grammar}"]
    if propose is not None:
        lines[1:1] = ['    draft   = model("draft")'] if "draft" in propose else []
        lines += [f"    propose = {propose}", f"    verify  = {verify}"]
    return "decoder d(k: int = 3, temperature: float = 1.0) {\n" + "\n".join(lines) + "\n}\n"


def tables(seed: int = 0, order: int = 1, v: int = V) -> dict[str, TableModel]:
    return {"target": TableModel.random(v, order, seed, eos_token_id=v - 1),
            "draft": TableModel.random(v, order, seed + 100, temperature=2.0, eos_token_id=v - 1)}


def text(tokens: list[int]) -> tuple[bytes, bool]:
    """The bytes a row spells, and whether an EOS ended it."""
    ended = bool(tokens) and tokens[-1] == EOS
    return b"".join(VOCAB[t] for t in (tokens[:-1] if ended else tokens)), ended


def assert_in_language(kind: str, rows: list[list[int]]) -> None:
    pattern = GRAMMARS[kind][1]
    dfa = compile_regex(pattern) if pattern else None
    for row in rows:
        out, ended = text(row)
        if kind == "json_schema":
            if ended:
                value = json.loads(out)
                assert set(value) <= {"ok", "n"} and isinstance(value["ok"], bool) and value.get("n", "a") in "abc", out
            continue
        if ended:
            assert re.fullmatch(pattern, out.decode()), out
        else:
            assert dfa.walk(out) >= 0, out  # a live state of the trimmed DFA: some completion matches


# --------------------------------------------------------------------------- outputs obey the grammar


@pytest.mark.parametrize("backend", ["eager", "inductor"])
@pytest.mark.parametrize("propose", [None, "autoregressive(draft, max = k)", "lookup(ngram = 2, max = k)", "forced(max = k)"])
@pytest.mark.parametrize("kind", sorted(GRAMMARS))
def test_outputs_belong_to_the_grammar(kind, propose, backend):
    models = tables(seed=len(kind))
    dec = decspec.compile(spec(GRAMMARS[kind][0], propose), models=models, vocab=VOCAB, backend=backend)
    out = dec.generate([[0, 1], [3], [5, 6, 7, 2]], max_new_tokens=24, seed=1)
    assert_in_language(kind, out.tokens)
    assert any(row[-1] == EOS for row in out.tokens)  # EOS comes, where the grammar accepts


def test_the_shipped_json_spec_prints_json_that_matches_its_schema():
    """specs/json_schema.dec on a byte-level table (its schema needs a real vocabulary; the shipped models are
    exercised by benchmarks/grammar_decode.py and `decspec run`)."""
    byte_vocab = [bytes([i]) for i in range(256)] + [None]
    models = {r: TableModel.random(257, 1, seed=i, eos_token_id=256) for i, r in enumerate(("target", "draft"))}
    dec = decspec.compile("specs/json_schema.dec", models=models, vocab=byte_vocab, temperature=1.0)
    pattern = re.compile(r'[ ]?"name"')
    for row in dec.generate([[1]] * 4, max_new_tokens=160, seed=0).tokens:
        body = bytes(row[:-1]) if row[-1] == 256 else bytes(row)
        if row[-1] == 256:
            value = json.loads(body)
            assert {"name", "born", "language"} <= set(value) and value["language"] in ("python", "c", "rust")
        else:
            assert body.startswith(b"{") and (len(body) < 8 or pattern.match(body[1:].decode()))


# --------------------------------------------------------------------------- the distribution


@pytest.mark.parametrize("propose, verify, k", [
    ("autoregressive(draft, max = k)", "rejection", 3),
    ("lookup(ngram = 1, max = k)", "rejection", 3),
    ("autoregressive(draft, max = k)", "greedy", 2),
    ("forced(max = k)", "rejection", 3),
    ("forced(max = k, ngram = 0)", "rejection", 3),
])
def test_exactly_the_grammar_masked_target(propose, verify, k):
    v = 5  # a, b, c, {, and the EOS
    vocab = VOCAB[:4] + [None]
    for seed in (0, 1):
        models = tables(seed, v=v)
        dec = decspec.compile(spec(GRAMMARS["regex"][0], propose, verify=verify), models=models, vocab=vocab, k=k, temperature=0.9)
        got = exact_distribution(dec, [1], 4)
        expected = target_distribution(dec, [1], 4)  # masked by the decoder's grammar
        assert tv_distance(got, expected) <= max(1e-12, got.error_bound)
        unmasked = target_distribution(models["target"], [1], 4, pipeline=[("temperature", {"t": 0.9})])
        assert tv_distance(got, unmasked) > 0.1  # the mask is what makes it match


def test_the_toolkit_and_decspec_verify_check_a_grammar_decoder(capsys):
    from decspec.cli import main
    from decspec.testing import assert_lossless

    dec = decspec.compile(spec(GRAMMARS["choice"][0]), models=tables(4), vocab=VOCAB, k=2)
    assert assert_lossless(dec, prompt=[1], max_new_tokens=3).method == "exact"
    assert main(["verify", "specs/choice.dec"]) == 0  # tables spelled from the grammar's strings (test_grammar_forced.py)
    assert "lossless, exactly" in capsys.readouterr().out


def test_samples_follow_the_grammar_masked_target():
    vocab = VOCAB[:4] + [None]
    models = tables(3, v=5)
    dec = decspec.compile(spec(GRAMMARS["regex"][0]), models=models, vocab=vocab, k=3)
    out = dec.generate([[1]] * 3000, max_new_tokens=3, seed=0)
    assert_samples_match(out.tokens, target_distribution(dec, [1], 3), p_fail=1e-6)


def constrained_greedy(model, matcher, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding of the grammar-masked target, from full forwards and the matcher alone."""
    history, out, state = list(prompt), [], matcher.start
    while len(out) < n:
        logits = model.forward(torch.tensor([history]), model.new_cache(1, len(history))).logits[0, -1]
        x = int(masked_logits(matcher, logits[None], torch.tensor([state]))[0].argmax())
        out.append(x)
        history.append(x)
        if x == model.eos_token_id:
            break
        state = int(matcher.next_state([state], [x])[0])
    return out


@pytest.mark.parametrize("backend", ["eager", "inductor"])
@pytest.mark.parametrize("propose, verify", [("autoregressive(draft, max = k)", "greedy"), ("autoregressive(draft, max = k)", "rejection"),
                                             ("lookup(ngram = 2, max = k)", "rejection")])
def test_greedy_speculation_is_greedy_constrained_decoding(propose, verify, backend):
    prompts = [[0, 1, 3], [2], [5, 0, 1, 0, 1]]
    for seed, kind in enumerate(sorted(GRAMMARS)):
        models = tables(seed, order=2)
        dec = decspec.compile(spec(GRAMMARS[kind][0], propose, sampler="greedy", verify=verify), models=models, vocab=VOCAB,
                              backend=backend, k=4)
        got = dec.generate(prompts, max_new_tokens=14, seed=0).tokens
        assert got == [constrained_greedy(models["target"], dec.matcher, p, 14) for p in prompts]


def test_inductor_equals_eager_on_a_transformer():
    models = random_models(seed=2)
    for m in models.values():
        m.eos_token_id = 3
    vocab = [bytes([97 + i % 26]) for i in range(512)]  # every id spells a letter: many tokens per byte
    vocab[3] = None
    grammar = 'regex("""(abc|d)+e{0,3}""")'
    text = spec(grammar, sampler="greedy", verify="greedy")
    prompts = [[5, 6, 7, 8], [9], [10, 11]]
    a = decspec.compile(text, models=models, vocab=vocab, k=3).generate(prompts, max_new_tokens=10, seed=0)
    b = decspec.compile(text, models=models, vocab=vocab, k=3, backend="inductor").generate(prompts, max_new_tokens=10, seed=0)
    assert a.tokens == b.tokens and a.stats.accepted == b.stats.accepted
    for row in a.tokens:
        spelled = "".join(vocab[t].decode() for t in row if t != 3)
        assert re.fullmatch(r"(abc|d)+e{0,3}", spelled) if row[-1] == 3 else compile_regex(r"(abc|d)+e{0,3}").walk(spelled.encode()) >= 0


@pytest.mark.parametrize("kind, source", [("regex", r"(ab|c)+b?"), ("json_schema", json.dumps(SCHEMA)),
                                          ("choice", ["ab", "abc", "cab"]), ("regex", r"[a-c ]{0,5}(true|false)")])
def test_the_device_table_computes_what_the_matcher_does(kind, source):
    """GrammarTable (the tensors a compiled round reads) against the matcher it was made from, on every state
    (and the dead state -1) and every token: next states, and masked logits (wider than the grammar's vocabulary)."""
    from decspec.backends.grammar import device_table

    m = compile_grammar(kind, source, VOCAB, eos_id=EOS, cache=False)
    table = device_table(m, torch.device("cpu"))
    states = torch.arange(-1, m.num_states).repeat_interleave(V)
    tokens = torch.arange(V).repeat(m.num_states + 1)
    host = torch.tensor([-1 if st < 0 else int(m.next_state([st], [t])[0]) for st, t in zip(states.tolist(), tokens.tolist())])
    assert torch.equal(table.next_state(states, tokens), host) and bool((host >= 0).any())
    logits = torch.randn(len(states), V + 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(table.masked(logits, states), masked_logits(m, logits, states))
    walk = torch.tensor([[0, 1, 2, 2, 0]])  # "abcca": states along it from the start, as the session walks them
    start = torch.tensor([m.start])
    expected = GrammarSession(m).walk(walk, torch.tensor([5]))
    assert torch.equal(table.states(start, walk, 5, last=False), expected) and table.states(start, walk, 3, last=True) == expected[0, 3]


@pytest.mark.parametrize("verify, sampler", [("greedy", "greedy"), ("rejection", "temperature(1.0)")])
def test_a_compiled_grammar_round_is_one_graph_with_the_eager_tokens(verify, sampler):
    """Issue 18, item 2: a regular grammar's masks and states are tables on the device (backends/grammar.py
    GrammarTable), so the torch.compile'd round has no graph break around the mask: one graph, no recompile on a
    second call, and the eager backend's tokens (greedy, and sampled for the same seed); the host path
    (device_grammars=False) gives the same tokens."""
    from torch._dynamo.utils import counters

    models = random_models(seed=2)
    for m in models.values():
        m.eos_token_id = 3
    vocab = [bytes([97 + i % 26]) * (1 + i % 3) for i in range(512)]  # letters, one to three bytes a token
    vocab[3] = None
    text = spec('regex("""(abc|d)+e{0,3}""")', sampler=sampler, verify=verify)
    prompts = [[5, 6, 7, 8], [9], [10, 11]]
    eager = [decspec.compile(text, models=models, vocab=vocab, k=3).generate(prompts, max_new_tokens=10, seed=s).tokens
             for s in (0, 1)]
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile(text, models=models, vocab=vocab, k=3, backend="inductor")
    dec.backend_options = {"compile": True, "dynamo_backend": "eager"}  # dynamo's graphs and breaks, no inductor codegen (fast)
    assert [dec.generate(prompts, max_new_tokens=10, seed=s).tokens for s in (0, 1)] == eager
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    host = decspec.compile(text, models=models, vocab=vocab, k=3, backend="inductor")
    host.backend_options = {"device_grammars": False}
    assert host.generate(prompts, max_new_tokens=10, seed=0).tokens == eager[0]


# --------------------------------------------------------------------------- the ops and the passes


def test_states_roll_back_with_rejected_drafts():
    """A grammar state is a function of the sequence asked for: a session asked about other drafts walks
    from their common prefix, and asking again for the committed tokens gives the same states."""
    m = compile_grammar("regex", r"(ab|c)+b?", VOCAB, eos_id=EOS, cache=False)
    session = GrammarSession(m)
    tokens = torch.tensor([[9, 9, 0, 1, 2, 0, 0]])  # prompt of 2, then "abca"
    length, start = torch.tensor([6]), torch.tensor([2])
    first = grammar_states(session, tokens, length, start, torch.tensor([[1, 2, 2]]), last=False)  # drafts "bcc"
    again = grammar_states(session, tokens, length, start, torch.tensor([[2, 0, 1]]), last=False)  # drafts "cab" instead
    fresh = grammar_states(GrammarSession(m), tokens, length, start, torch.tensor([[2, 0, 1]]), last=False)
    assert torch.equal(again, fresh) and first[0, 0] == again[0, 0]
    refused = grammar_states(session, tokens, length, start, torch.tensor([[3, 0, 1]]), last=False)  # "{" is refused
    assert refused[0, 1:].tolist() == [-1, -1, -1]
    logits = masked_logits(m, torch.zeros(1, 4, V), refused)
    assert torch.isfinite(logits[0, 1:]).all()  # past a refused draft: unconstrained, never committed


def test_mask_feeds_the_sampler_after_every_pass():
    text = spec(GRAMMARS["regex"][0], sampler="greedy", verify="greedy")
    graph = run_pipeline(lower(decspec.dsl.check.load(text)), check=True)
    masks = [op for op in graph.walk() if op.name == "grammar_mask"]
    assert len(masks) == 2  # the draft's and the target's
    users = [op for op in graph.walk() if any(v in op.inputs for m in masks for v in m.outputs)]
    assert [op.name for op in users] == ["sampler_probs", "sampler_probs"]
    assert not any(op.name == "sample" for op in graph.walk())  # greedy_sample: still an argmax under the mask
    verify(graph)


def test_index_satisfies_the_matcher_protocol():
    assert isinstance(compile_grammar("choice", ["ab"], VOCAB, eos_id=EOS, cache=False), Matcher)


# --------------------------------------------------------------------------- diagnostics

def compile_with(grammar: str, **kwargs):
    return decspec.compile(spec(grammar, None), target=tables()["target"], vocab=kwargs.pop("vocab", VOCAB), **kwargs)


@pytest.mark.parametrize("grammar, message", [
    ('regex("a(b")', "unclosed group"),
    ('regex("[^\\\\s\\\\S]")', "accepts nothing"),
    ('json_schema("""{"type": "array", "items": {"type": "string"}, "uniqueItems": true}""")', "$.uniqueItems: uniqueItems on items"),
    ('json_schema("""{"type": }""")', "not valid JSON"),
    ('json_schema("missing.json")', "cannot read JSON schema file"),
    ('choice([])', "non-empty list"),
    ('lark("""start: "a" b""")', "lark grammar"),  # an undefined rule: found when compiled over the vocabulary
    ('lark_file("missing.lark")', "cannot read Lark grammar file"),
])
def test_bad_grammars_point_at_the_component(grammar, message):
    with pytest.raises(DecError, match=re.escape(message)) as info:
        compile_with(grammar)
    (diag,) = info.value.diagnostics
    assert diag.span is not None and (diag.span.line, diag.span.col) == (4, 15)  # `grammar = ...` in spec()


@pytest.mark.parametrize("grammar", ['lark("""start: "a" """)', "json"])
def test_context_free_grammars_without_the_lark_matcher_are_not_yet(grammar, monkeypatch):
    from decspec.stdlib.grammars import compile as core

    monkeypatch.setattr(core, "KINDS", tuple(k for k in core.KINDS if k not in ("lark", "json")))
    with pytest.raises(DecError, match="not yet supported") as info:
        compile_with(grammar)
    assert info.value.diagnostics[0].span.line == 4


def test_a_lark_grammar_constrains_speculative_decoding_exactly():
    """A context-free language (balanced braces around a's) through the Lark matcher, as any Matcher."""
    vocab = [b"a", b"{", b"}", b"{a", None]
    grammar = 'lark("""start: "{" start* "}" | "a" """)'
    models = tables(5, v=5)
    dec = decspec.compile(spec(grammar), models=models, vocab=vocab, k=2, temperature=1.5)
    got = exact_distribution(dec, [1], 4)
    assert tv_distance(got, target_distribution(dec, [1], 4)) <= max(1e-12, got.error_bound)
    for row in dec.generate([[1]] * 20, max_new_tokens=10, seed=0).tokens:
        spelled = b"".join(vocab[t] for t in row if t != 4).decode()
        depth = [spelled[:i].count("{") - spelled[:i].count("}") for i in range(len(spelled) + 1)]
        assert min(depth) >= 0 and (row[-1] != 4 or (depth[-1] == 0 and (spelled == "a" or spelled[0] == "{")))


def test_check_reports_grammar_errors_without_models(tmp_path, capsys):
    from decspec.cli import main

    path = tmp_path / "bad.dec"
    path.write_text(spec('regex("a{2,1}")', None))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:4:15: error:" in err and "regex" in err


def test_a_vocabulary_that_cannot_express_the_grammar():
    with pytest.raises(DecError, match="cannot express this grammar: no token contains the byte 0x7A") as info:
        compile_with('regex("a+z")')
    assert info.value.diagnostics[0].span.line == 4


def test_a_grammar_needs_a_vocabulary_and_an_eos():
    target = tables()["target"]
    with pytest.raises(DecError, match="has no tokenizer") as info:
        decspec.compile(spec('regex("a+")', None), target=target)
    assert "vocab=" in info.value.diagnostics[0].hint
    with pytest.raises(DecError, match="needs an EOS token"):
        decspec.compile(spec('regex("a+")', None), target=TableModel.random(V, 1, 0), vocab=VOCAB)


def test_inline_and_file_schemas_agree(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "d.dec").write_text(spec('json_schema("s.json")', None))  # relative to the .dec file
    from_file = decspec.compile(tmp_path / "d.dec", target=tables()["target"], vocab=VOCAB).matcher
    inline = compile_with(GRAMMARS["json_schema"][0]).matcher
    assert from_file.num_states == inline.num_states and torch.equal(from_file.mask([0, 1]), inline.mask([0, 1]))
