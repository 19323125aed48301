"""Lookahead decoding (`propose = lookahead(...)`, Fu et al. 2024): Jacobi iterates and an n-gram pool.

The pool insertion, the Jacobi step with its diagonal n-grams (against a plain-Python reference)
and the drafts on hand-made states; greedy equivalence on table models and on the shipped target;
exact losslessness when sampling, with a verifier that accepts everything caught (so worlds did
carry their pools and draft from them); the inductor backend against eager (the same tokens, one compiled
graph, a cache never read past what the static windows re-feed); the exported round's state in and out; the
checker's diagnostics.
"""
from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.dsl.diagnostics import DecError
from decspec.stdlib import lookahead
from decspec.stdlib.models.table import TableModel
from decspec.testing import assert_greedy_equivalent, assert_lossless, broken_verifier, exact_distribution, greedy_tokens, target_distribution, tv_distance

SPEC = "specs/lookahead.dec"


# --------------------------------------------------------------------------- the pool


def test_insert_puts_the_newest_first_and_drops_the_oldest():
    pool = torch.full((1, 3, 2, 1), lookahead.EMPTY)
    for cont in ([1], [2], [0]):
        pool = lookahead.insert(pool, torch.tensor([2]), torch.tensor([cont]))
    assert pool[0, 2].tolist() == [[0], [2]]  # [1] fell off (pool = 2)
    pool = lookahead.insert(pool, torch.tensor([2]), torch.tensor([[2]]))
    assert pool[0, 2].tolist() == [[2], [0]]  # seen again: moved to the front, not duplicated
    assert (pool[0, :2] == lookahead.EMPTY).all()  # other first tokens untouched


def test_first_guess_comes_from_the_context():
    levels, _ = lookahead.initial(2, 5, window=3, ngram=2, pool=1)
    ctx = torch.tensor([[1, 2, 3, 4, 9], [3, 4, 9, 9, 9]])
    g = lookahead.guess(ctx, torch.tensor([4, 2]), levels)
    assert g.tolist() == [[2, 3, 4], [4, 3, 4]]  # the last W tokens; a 2-token context cyclically


def reference_collect(levels: list, logits: torch.Tensor, pool: dict) -> tuple[list, dict]:
    """One row in plain Python: x'_i = argmax, then every diagonal (levels[0][i], levels[1][i+1], ..., x'[i+N-1])."""
    W, N = len(levels[0]), len(levels) + 1
    new = [int(logits[i].argmax()) for i in range(W)]
    traj = levels + [new]
    for i in range(W - N + 1):
        gram = [traj[lvl][i + lvl] for lvl in range(N)]
        row = [c for c in pool.get(gram[0], []) if c != gram[1:]]
        pool[gram[0]] = [gram[1:]] + row
    return traj[1:], pool


@settings(max_examples=100)
@given(data=st.data(), V=st.integers(2, 5), W=st.integers(2, 6), G=st.integers(1, 3))
def test_collect_equals_the_plain_python_reference(data, V, W, G):
    N = data.draw(st.integers(2, W))
    ints = lambda n: data.draw(st.lists(st.integers(0, V - 1), min_size=n, max_size=n))
    levels = [ints(W) for _ in range(N - 1)]
    logits = torch.tensor([ints(V) for _ in range(W + 1)], dtype=torch.float64) - torch.arange(V) * 1e-3  # no ties
    _, pool = lookahead.initial(1, V, W, N, G)
    got_levels, got_pool = lookahead.collect(torch.zeros(1, 4, dtype=torch.long), torch.tensor([4]), torch.tensor([levels]), pool, logits[None])
    want_levels, want_pool = reference_collect(levels, logits, {})
    assert got_levels[0].tolist() == want_levels
    for first in range(V):
        row = [c for c in got_pool[0, first].tolist() if c[0] != lookahead.EMPTY]
        assert row == want_pool.get(first, [])[:G]


def test_drafts_take_the_newest_ngram_of_the_last_token():
    _, pool = lookahead.initial(2, 4, window=3, ngram=3, pool=2)
    pool = lookahead.insert(pool, torch.tensor([1, 1]), torch.tensor([[2, 3], [2, 3]]))
    pool = lookahead.insert(pool, torch.tensor([1, 0]), torch.tensor([[0, 2], [3, 3]]))
    d, q, count = lookahead.drafts(torch.tensor([[3, 1], [0, 2]]), torch.tensor([2, 2]), pool, 2, vocab=4)
    assert count.tolist() == [2, 0] and d.tolist() == [[0, 2], [0, 0]]  # row 1 ends in 2: nothing pooled under it
    assert q[0, 0].tolist() == [1, 0, 0, 0] and q[0, 1].tolist() == [0, 0, 1, 0] and q[1].abs().sum() == 0


# --------------------------------------------------------------------------- decoding

greedy_cases = st.fixed_dictionaries(
    {
        "vocab": st.integers(2, 8),
        "order": st.integers(1, 2),
        "seed": st.integers(0, 10_000),
        "window": st.integers(2, 6),
        "ngram": st.integers(2, 4),
        "pool": st.integers(1, 4),
        "verify": st.sampled_from(["rejection", "greedy"]),
        "prompts": st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=8), min_size=1, max_size=3),
        "max_new_tokens": st.integers(1, 16),
    }
)


@settings(max_examples=30, deadline=None)
@given(case=greedy_cases)
def test_greedy_lookahead_is_greedy_decoding(case):
    V = case["vocab"]
    target = TableModel.random(V, case["order"], seed=case["seed"], eos_token_id=1 if case["seed"] % 2 else None)
    text = open(SPEC).read().replace("verify  = rejection", f"verify  = {case['verify']}")
    prompts = [[t % V for t in p] for p in case["prompts"]]
    assert_greedy_equivalent(text, models={"target": target}, prompts=prompts, max_new_tokens=case["max_new_tokens"], exact=False,
                             window=max(case["window"], case["ngram"]), ngram=case["ngram"], pool=case["pool"])


def test_drafts_come_once_the_pool_fills():
    target = TableModel.random(6, 2, seed=2)
    dec = decspec.compile(SPEC, target=target, window=4, ngram=3)
    prompts = [[0, 1, 2, 3], [5, 5, 1, 2, 3, 4, 0]]
    out = dec.generate(prompts, max_new_tokens=20, seed=0)
    assert out.tokens == [greedy_tokens(target, p, 20) for p in prompts]
    assert out.stats.mean_accepted > 0 and out.stats.rounds < 20
    assert out.stats.model_calls["target"] >= 2 * out.stats.rounds  # the lookahead branch is a call of its own


def test_greedy_on_the_shipped_target():
    dec = decspec.compile(SPEC)
    target = dec._bound_models()["target"]
    prompts = [dec.tokenizer.encode("def fibonacci(n):"), dec.tokenizer.encode("import os\n")]
    out = dec.generate(prompts, max_new_tokens=16, seed=0, eos_token_id=None)
    assert out.tokens == [greedy_tokens(target, p, 16) for p in prompts]


@pytest.mark.parametrize("prompt", [[1], [0, 2, 0]])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_lookahead_is_exactly_lossless_when_sampling(prompt, temperature):
    target = TableModel.random(3, 1, seed=sum(prompt), eos_token_id=2 if prompt == [1] else None)
    check = assert_lossless(SPEC, models={"target": target}, prompt=prompt, max_new_tokens=4, method="exact",
                            temperature=temperature, window=3, ngram=2, pool=2)
    assert check.method == "exact"


def test_the_exact_backend_drafts_from_each_worlds_pool():
    """A verifier that accepts every draft is caught: some world drafted from its pool."""
    target = TableModel.random(3, 1, seed=5)
    with broken_verifier() as name:
        dec = decspec.compile(open(SPEC).read().replace("verify  = rejection", f"verify  = {name}"), target=target,
                              temperature=1.0, window=3, ngram=2, pool=2)
        got = exact_distribution(dec, [0], 4)
    assert tv_distance(got, target_distribution(dec, [0], 4)) > 1e-3


# --------------------------------------------------------------------------- backends and diagnostics


PROMPTS = [[5, 6, 7, 8, 5, 6, 7], [9, 10, 9, 10, 9], [11], [3, 4, 5, 3, 4, 5, 3, 4]]  # ragged, repetitive, one token
TABLE_PROMPTS = [[0, 1, 2, 3], [5, 5, 1, 2, 3, 4, 0], [4]]


def transformer() -> dict:
    from decspec.stdlib.models.default import random_models

    return {"target": random_models(seed=3)["target"]}  # a static KV cache (forward_at): what the windows are about


def table() -> dict:
    return {"target": TableModel.random(6, 2, seed=2)}


# (models, prompts, temperature): the random transformer's logits are nearly flat, so 0.05 samples off the argmax
# while drafts are still accepted; the table's peaked rows accept drafts at 0.7
CASES = {"transformer-greedy": (transformer, PROMPTS, 0.0), "transformer-sampled": (transformer, PROMPTS, 0.05),
         "table-greedy": (table, TABLE_PROMPTS, 0.0), "table-sampled": (table, TABLE_PROMPTS, 0.7)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_inductor_equals_eager_for_the_same_seed(case):
    models, prompts, temperature = CASES[case]
    models = models()
    options = dict(models=models, temperature=temperature, window=4, ngram=3)
    a = decspec.compile(SPEC, **options).generate(prompts, max_new_tokens=20, seed=0)
    b = decspec.compile(SPEC, **options, backend="inductor").generate(prompts, max_new_tokens=20, seed=0)
    assert a.tokens == b.tokens and a.stats.accepted == b.stats.accepted and a.stats.drafted == b.stats.drafted
    assert sum(map(sum, a.stats.accepted)) > 0  # rounds drafted from the pool and kept drafts: the cache was advanced past them
    assert b.stats.model_calls["target"] == 2 * b.stats.rounds + 1  # the lookahead branch, the verification, and the prefill
    if temperature:
        greedy = decspec.compile(SPEC, **{**options, "temperature": 0.0}).generate(prompts, max_new_tokens=20, seed=0)
        assert greedy.tokens != a.tokens  # the sampled case did sample


def test_the_target_re_feeds_one_context_position():
    """The lookahead branch writes guessed tokens at L .. L+W-1; the verification call rewrites L-1 .. L+K-1, so the
    next round needs only L'-1 again (codegen.windows resets the fed count after a call over guessed tokens)."""
    from decspec.backends.inductor import codegen

    graph = decspec.compile(SPEC, target=TableModel.random(3, 1, seed=0), window=5, ngram=4).graph
    assert codegen.windows(graph) == {"target": 1}
    source = codegen.emit_python(graph)
    feeds = re.findall(r"\.feed\(ctx_tokens, ctx_length, v\d+, (-?\d+), (\d+)\)", source)
    assert feeds == [("-1", "5"), ("-1", "3")]  # ctx[L-1] ++ the guess (W = 5), then ctx[L-1] ++ the drafts (K = N-1 = 3)


def test_cache_positions_a_call_feeds_are_never_read_before_it_writes_them(monkeypatch):
    """Before every model call, the target's K/V at and past the first position the call feeds are overwritten with
    noise (what a wrong window would leave there: the lookahead branch's guessed tokens): the tokens stay eager's.
    The same noise one position earlier changes them, so the check can fail."""
    from decspec.backends.inductor.static import StaticSession

    models = transformer()
    want = decspec.compile(SPEC, models=models, window=4, ngram=3).generate(PROMPTS, max_new_tokens=16, seed=0).tokens
    feed = StaticSession.feed

    def poisoned(margin: int):
        def run(self, ctx_tokens, ctx_length, ext, lo, hi):
            first = (ctx_length + lo - margin).clamp(min=0)  # [B]
            past = torch.arange(self.cache.capacity)[None, :] >= first[:, None]  # [B, S]
            for buf in self.cache.k + self.cache.v:  # [B, H, S, D]
                buf.copy_(torch.where(past[:, None, :, None], torch.randn_like(buf) * 10, buf))
            return feed(self, ctx_tokens, ctx_length, ext, lo, hi)
        return run

    dec = decspec.compile(SPEC, models=models, window=4, ngram=3, backend="inductor")
    monkeypatch.setattr(StaticSession, "feed", poisoned(0))
    assert dec.generate(PROMPTS, max_new_tokens=16, seed=0).tokens == want
    monkeypatch.setattr(StaticSession, "feed", poisoned(1))
    assert dec.generate(PROMPTS, max_new_tokens=16, seed=0).tokens != want


def test_compiled_round_is_one_graph_and_never_recompiles():
    """The window and the pool are round inputs (m[state key]) and the round's new values outputs: one graph, no
    graph break, and a second call with other prompt lengths (the same capacity bucket) compiles nothing."""
    from torch._dynamo.utils import counters

    models = transformer()
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile(SPEC, models=models, window=4, ngram=3, backend="inductor")
    dec.backend_options = {"compile": True, "dynamo_backend": "eager"}
    others = [[1, 2], [3, 4, 5, 3, 4, 5, 3, 4, 5], [7, 7, 7], [8]]
    first = dec.generate(PROMPTS, max_new_tokens=16, seed=0)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    frames = counters["frames"]["total"]  # frames dynamo translated: a recompile translates round_fn again
    second = dec.generate(others, max_new_tokens=16, seed=1)
    assert counters["stats"]["unique_graphs"] == 1 and counters["frames"]["total"] == frames and second.stats.compile_time == 0
    eager = decspec.compile(SPEC, models=models, window=4, ngram=3)
    assert first.tokens == eager.generate(PROMPTS, max_new_tokens=16, seed=0).tokens
    assert second.tokens == eager.generate(others, max_new_tokens=16, seed=1).tokens


def test_the_exported_round_takes_and_returns_the_window_and_the_pool():
    """The MLIR export's round (RoundModule: the generated round as a pure function) has the draft state as inputs and
    outputs after the caches: called round after round with its outputs fed back, it gives eager's tokens and eager's
    acceptances round by round (with the first state fed to every round, the pool each round collects alone drafts
    later: 0 0 0 2 ... here instead of 0 0 2 2 ...). The export itself: tests/test_backend_mlir.py."""
    from decspec.backends.mlir.round import RoundModule

    models = transformer()
    dec = decspec.compile(SPEC, models=models, window=4, ngram=3)
    prompt, new = PROMPTS[0], 16
    want = dec.generate([prompt], max_new_tokens=new, seed=0)
    module = RoundModule(dec.graph, models, batch=1, capacity=64)
    assert module.input_names()[-2:] == module.output_names()[-2:] == ["draft_state.lookahead.0", "draft_state.lookahead.1"]
    ctx, length = torch.zeros(1, 64, dtype=torch.long), torch.tensor([len(prompt)])
    ctx[0, : len(prompt)] = torch.tensor(prompt)
    module.sessions["target"].prefill(ctx, length)
    _, _, u, *state = module.example_inputs()  # the caches after the prefill, a generation's first draft state
    got, accepted = [], []
    while len(got) < new:
        tokens, n, _, *state = module(ctx, length, u, *state)
        step = tokens[0, : int(n) + 1]
        ctx[0, int(length) : int(length) + len(step)] = step
        length, got, accepted = length + len(step), got + step.tolist(), accepted + [int(n)]
    assert got[:new] == want.tokens[0]
    assert accepted == [row for (row,) in want.stats.accepted] and sum(accepted) > 0  # stats: per round, per row


def spec_text(propose: str, extra: str = "") -> str:
    return f'decoder d() {{\n    target = model("target")\n    propose = {propose}\n{extra}    verify = greedy\n}}\n'


def test_ngram_above_window_is_an_error():
    with pytest.raises(DecError, match=r"ngram \(4\) is larger than its window \(3\)"):
        decspec.compile(spec_text("lookahead(window = 3, ngram = 4)"), target=TableModel.random(3, 1, seed=0))


def test_an_exit_policy_needs_a_draft_model():
    with pytest.raises(DecError, match="`lookahead` drafts without a model"):
        decspec.compile(spec_text("lookahead()", "    stop = when draft.prob < 0.3\n"), target=TableModel.random(3, 1, seed=0))


@pytest.mark.parametrize("arg", ["window = 0", "window = 65", "ngram = 1", "ngram = 17", "pool = 0", "pool = 65", "k = 3"])
def test_parameters_are_bounded(arg):
    with pytest.raises(DecError):
        decspec.compile(spec_text(f"lookahead({arg})"), target=TableModel.random(3, 1, seed=0))
