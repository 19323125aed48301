"""Grammar-forced drafts (`forced`, backends/grammar.py forced_drafts): which tokens are drafted, and that the
drafts never change the output (the exact check is in test_grammar_decoding.py; greedy on the shipped pair here)."""
from __future__ import annotations

import pytest
import torch

import decspec
from decspec.backends.grammar import GrammarSession, forced_drafts, forced_token
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.grammars import compile_grammar

VOCAB = [b"n", b"na", b"name", b"name:", b" ", b"x", b"nap", b"y", None]
EOS = len(VOCAB) - 1
PROMPT_END = 3  # rows below: a 3-token prompt, then the generated tokens the grammar reads


def session(pattern: str = "name: ?(x|y)") -> GrammarSession:
    return GrammarSession(compile_grammar("regex", pattern, VOCAB, eos_id=EOS, cache=False))


def drafts(s: GrammarSession, rows: list[list[int]], k: int = 4, ngram: int = 3) -> list[list[int]]:
    width = max(map(len, rows))
    tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    d, count = forced_drafts(s, tokens, torch.tensor([len(r) for r in rows]), torch.full((len(rows),), PROMPT_END), k, ngram)
    return [row[:n] for row, n in zip(d.tolist(), count.tolist())]


def test_the_longest_token_of_a_prefix_chain_is_forced_and_choices_are_not():
    s = session()
    assert VOCAB[forced_token(s, s.matcher.start, plain=False)] == b"name:"  # n, na, name, name: all allowed
    after = s.matcher.next_state([s.matcher.start], [3])[0]
    assert forced_token(s, after, plain=False) == -1  # " ", "x", "y": a choice
    assert forced_token(s, after, plain=True) == -1  # "x" or "y" still
    s2 = session("name: ?x")
    after = s2.matcher.next_state([s2.matcher.start], [3])[0]
    assert forced_token(s2, after, plain=False) == -1 and VOCAB[forced_token(s2, after, plain=True)] == b"x"  # the compact spelling


def test_forced_drafts_follow_the_grammar_then_the_row_s_own_habits():
    s = session("name: ?x")
    assert drafts(s, [[6, 6, 6]], ngram=0) == [[3, 5]]  # "name:" then "x" (compact); the grammar then accepts
    # a row that wrote "name: x" before (in its prompt) drafts the space after "name:" again
    s = session("(name: ?x)+")
    assert drafts(s, [[3, 4, 5, 3]], ngram=3, k=2) == [[4, 5]]
    assert drafts(s, [[3, 4, 5, 3]], ngram=3) == [[4, 5, 3, 4]]  # past "x" the grammar may end: only the habit goes on
    assert drafts(s, [[3, 4, 5, 3]], ngram=0) == [[5]]
    assert drafts(s, [[6, 6, 6], [3, 4, 5, 3]], k=1, ngram=3) == [[3], [4]]  # rows apart, max respected


def test_nothing_is_drafted_where_the_grammar_may_end():
    s = session("x|xy")
    assert drafts(s, [[6, 6, 6, 5]]) == [[]]  # after "x": EOS or "y"


def test_forced_needs_a_grammar():
    with pytest.raises(DecError, match="no grammar"):
        decspec.compile('decoder d {\n target = model("target")\n propose = forced(max = 4)\n verify = rejection\n}\n')


def test_the_shipped_spec_gives_the_constrained_target_s_greedy_tokens():
    from decspec.stdlib.models.pretrained import reference_models

    models = {"target": reference_models()["target"]}
    schema = decspec.__file__.rsplit("/", 2)[0] + "/specs/schemas/person.json"
    plain = decspec.compile(f'decoder d {{\n target = model("target")\n sampler = greedy\n grammar = json_schema("{schema}")\n}}\n',
                            models=models)
    forced = decspec.compile("specs/json_forced.dec", models=models)
    prompts = ["person = ", "user = ", "record = "]
    a = plain.generate(prompts, max_new_tokens=40, eos_token_id=None)
    b = forced.generate(prompts, max_new_tokens=40, eos_token_id=None)
    assert [list(map(int, r)) for r in a.tokens] == [list(map(int, r)) for r in b.tokens]
    assert b.stats.mean_accepted > 0.3  # the keys and punctuation come as accepted drafts


@pytest.mark.parametrize("spec", ["specs/json_forced.dec", "specs/regex.dec", "specs/choice.dec", "specs/json_schema.dec"])
def test_decspec_verify_checks_grammar_specs_exactly(spec):  # json_forced_draft: below, at a temperature > 0
    """`decspec verify` spells a grammar spec's tables from the grammar's own strings (bytes, a few two-byte tokens, EOS)."""
    from decspec.verify import verify_spec

    report = verify_spec(spec, overrides={"k": 3} if "json" in spec else None, configs=3)
    assert report.checked and report.observed_lossless and report.exit_code == 0
    assert all(c.eos == c.vocab - 1 for c, _, _ in report.checked)


def test_decspec_verify_catches_a_broken_verifier_under_a_grammar():
    from decspec.testing import broken_verifier
    from decspec.verify import verify_spec

    text = open("specs/json_forced.dec").read().replace("verify  = rejection", "verify  = accept_all")
    text = text.replace('"schemas/person.json"', '"specs/schemas/person.json"')
    with broken_verifier() as name:
        report = verify_spec(text.replace("accept_all", name), configs=4, max_new_tokens=4)
    assert not report.observed_lossless and report.exit_code == 1  # forced drafts the target would not take, all accepted


def test_decspec_verify_refuses_context_free_grammars_clearly():
    from decspec.verify import verify_spec

    with pytest.raises(DecError, match="context-free"):
        verify_spec('decoder d {\n target = model("target")\n grammar = json\n}\n')


# --------------------------------------------------------------------------- forced tokens, then a draft model's

def test_forced_then_a_draft_model_is_exactly_lossless_when_sampling():
    """The forced drafts (q one-hot) and the draft model's after them (over the context followed by the forced ones),
    verified in one round: the exact distribution equals the grammar-constrained target's, at temperature 0.7."""
    from decspec.verify import verify_spec

    report = verify_spec("specs/json_forced_draft.dec", overrides={"k": 3, "m": 2, "temperature": 0.7}, configs=3)
    assert report.checked and report.observed_lossless and report.exit_code == 0


def test_forced_then_with_a_broken_verifier_is_caught():
    from decspec.testing import broken_verifier
    from decspec.verify import verify_spec

    text = open("specs/json_forced_draft.dec").read().replace("verify  = rejection", "verify  = accept_all")
    text = text.replace('"schemas/person.json"', '"specs/schemas/person.json"')
    with broken_verifier() as name:
        report = verify_spec(text.replace("accept_all", name), overrides={"k": 3, "m": 2, "temperature": 0.7}, configs=3,
                             max_new_tokens=3)
    assert not report.observed_lossless and report.exit_code == 1


def test_forced_then_gives_the_constrained_target_s_greedy_tokens_and_more_per_round():
    from decspec.stdlib.models.pretrained import reference_models

    models = reference_models()
    schema = decspec.__file__.rsplit("/", 2)[0] + "/specs/schemas/person.json"
    plain = decspec.compile(f'decoder d {{\n target = model("target")\n sampler = greedy\n grammar = json_schema("{schema}")\n}}\n',
                            models={"target": models["target"]})
    chained = decspec.compile("specs/json_forced_draft.dec", models=models)
    draft_only = decspec.compile(open("specs/json_forced_draft.dec").read().replace(
        "forced_then(autoregressive(draft, max = m), max = k)", "autoregressive(draft, max = m)").replace(
        '"schemas/person.json"', f'"{schema}"'), models=models)
    prompts = ["person = ", "user = "]
    want = plain.generate(prompts, max_new_tokens=40, eos_token_id=None).tokens
    got = chained.generate(prompts, max_new_tokens=40, eos_token_id=None)
    assert got.tokens == want == draft_only.generate(prompts, max_new_tokens=40, eos_token_id=None).tokens
    alone = draft_only.generate(prompts, max_new_tokens=40, eos_token_id=None)
    assert got.stats.mean_accepted > alone.stats.mean_accepted  # forced tokens come on top of the draft's m, for free


@pytest.mark.parametrize("spec, message", [
    ('propose = forced_then(autoregressive(draft, max = 2), max = 4)', "no grammar"),
    ('propose = forced_then(forced(max = 2), max = 4)\n grammar = regex("[a-z]+")', "`then` must be autoregressive or lookup"),
])
def test_forced_then_refuses_what_it_cannot_run(spec, message):
    with pytest.raises(DecError, match=message):
        decspec.compile(f'decoder d {{\n target = model("target")\n draft = model("draft")\n {spec}\n verify = rejection\n}}\n')


# --------------------------------------------------------------------------- on the device (the inductor backend)

def random_rows(matcher, rng, rows: int, longest: int) -> list[list[int]]:
    """Rows of a PROMPT_END-token prompt, then a random walk of the grammar (EOS aside): what a round's context holds."""
    out = []
    for _ in range(rows):
        row, state = [int(t) for t in rng.integers(0, EOS, PROMPT_END)], matcher.start
        for _ in range(int(rng.integers(0, longest + 1))):
            allowed = [int(t) for t in matcher.allowed(state) if t != EOS]
            if not allowed:
                break
            row.append(allowed[int(rng.integers(len(allowed)))])
            state = int(matcher.next_state([state], [row[-1]])[0])
        out.append(row)
    return out


@pytest.mark.parametrize("pattern", ["name: ?(x|y)", "(name: ?(x|y))+", "(nap(x|y) ?)+", "(name: ?x|y)+"])
def test_each_state_s_forced_tokens_in_the_table_are_forced_token_s(pattern):
    from decspec.backends.grammar import device_table

    s = session(pattern)
    table = device_table(s.matcher, torch.device("cpu")).forced_tokens()
    want = [[forced_token(s, state, plain) for state in range(s.matcher.num_states)] + [-1] for plain in (False, True)]
    assert table.tolist() == want and max(want[0]) >= 0


@pytest.mark.parametrize("pattern", ["(name: ?(x|y))+", "(nap(x|y) ?)+", "(name: ?x|y)+"])
@pytest.mark.parametrize("k, ngram", [(1, 3), (4, 0), (4, 1), (7, 3)])
def test_the_device_walk_drafts_what_the_host_walk_does(pattern, k, ngram, monkeypatch):
    """forced_drafts_on_device (table lookups and the n-gram habit, static shapes) against forced_drafts (the matcher's
    walk) on random contexts, with a short LOOKUP_WINDOW so that matches before a row's window must be ignored too."""
    import numpy as np

    from decspec.backends import grammar as G

    monkeypatch.setattr(G, "LOOKUP_WINDOW", 9)
    s = session(pattern)
    table = G.device_table(s.matcher, torch.device("cpu"))
    rows = random_rows(s.matcher, np.random.default_rng(k * 10 + ngram), 24, 20)
    width = max(map(len, rows)) + 2
    tokens = torch.tensor([r + [EOS] * (width - len(r)) for r in rows])  # garbage past each row's length
    length, start = torch.tensor([len(r) for r in rows]), torch.full((len(rows),), PROMPT_END)
    want, count = forced_drafts(s, tokens, length, start, k, ngram)
    states = G.grammar_states(s, tokens, length, start)
    got, got_count, after = G.forced_drafts_on_device(table, table.forced_tokens(), states, tokens, length, k, ngram)
    assert torch.equal(got, want) and torch.equal(got_count, count) and int(count.sum()) > 0
    assert torch.equal(after, table.states(states, want, k, last=False).gather(1, count[:, None]).squeeze(1))


def reference(spec: str):
    from decspec.stdlib.models.pretrained import reference_models

    models = reference_models()
    return models if "draft" in spec else {"target": models["target"]}


@pytest.mark.parametrize("spec", ["specs/json_forced.dec", "specs/json_forced_draft.dec"])
@pytest.mark.parametrize("temperature, options", [(0.0, {}), (0.8, {}), (0.8, {"device_grammars": False}),
                                                  (0.8, {"device_forced": False})])
def test_the_inductor_round_gives_the_eager_tokens(spec, temperature, options):
    """The generated round (uncompiled) of forced drafts, and of forced drafts then a draft model's, gives eager's
    tokens and acceptances for the same seed, greedy and sampled: with the grammar's device table (the forced walk
    as table lookups), with the host walk (device_grammars=False), and with the masks on the device but the forced
    walk on the host (device_forced=False: what inductor compiling for a CPU does, see below)."""
    models = reference(spec)
    prompts = ["person = ", "user = ", "record = {"]
    eager = decspec.compile(spec, models=models, temperature=temperature).generate(prompts, max_new_tokens=24, seed=3,
                                                                                  eos_token_id=None)
    dec = decspec.compile(spec, models=models, temperature=temperature, backend="inductor")
    dec.backend_options = options
    got = dec.generate(prompts, max_new_tokens=24, seed=3, eos_token_id=None)
    assert got.tokens == eager.tokens and got.stats.accepted == eager.stats.accepted
    assert eager.stats.mean_accepted > 0.5


@pytest.mark.parametrize("spec", ["specs/json_forced.dec", "specs/json_forced_draft.dec"])
def test_a_compiled_forced_round_is_one_graph_with_the_eager_tokens(spec):
    """torch.compile of the round (dynamo's graphs and breaks, through its eager backend): one graph, no graph break
    (the forced walk is table lookups on the device), no recompile on a second call with other prompt lengths, and
    the eager backend's sampled tokens."""
    from torch._dynamo.utils import counters

    models = reference(spec)
    params = {"k": 4, "m": 2} if "draft" in spec else {"k": 4}
    calls = [(["person = ", "user = "], 0), (["a longer prompt = {", "q"], 1)]
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile(spec, models=models, temperature=0.8, backend="inductor", **params)
    dec.backend_options = {"compile": True, "dynamo_backend": "eager"}
    eager = decspec.compile(spec, models=models, temperature=0.8, **params)
    for prompts, seed in calls:
        got = dec.generate(prompts, max_new_tokens=16, seed=seed, eos_token_id=None).tokens
        assert got == eager.generate(prompts, max_new_tokens=16, seed=seed, eos_token_id=None).tokens
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_the_forced_walk_stays_on_the_host_where_inductor_compiles_for_a_cpu():
    """gcc 12 fails with an internal compiler error on inductor's C++ kernel of the fused forced walk (docs/backends.md),
    so by default a round that inductor compiles for a CPU walks forced drafts on the host (one graph break); dynamo's
    other backends, the uncompiled round and other devices walk them on the device; `device_forced` says which."""
    from decspec.backends.inductor.runner import RoundRunner

    graph = decspec.compile("specs/json_forced.dec", models=reference("specs/json_forced.dec")).graph
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not RoundRunner(graph, compile=True).forced_on_device(cpu)
    assert RoundRunner(graph, compile=True).forced_on_device(gpu)
    assert RoundRunner(graph, compile=True, dynamo_backend="eager").forced_on_device(cpu)
    assert RoundRunner(graph).forced_on_device(cpu)
    assert RoundRunner(graph, compile=True, device_forced=True).forced_on_device(cpu)
    assert not RoundRunner(graph, device_forced=False).forced_on_device(cpu)
