"""Prompt lookup (`propose = lookup(...)`, Saxena 2023): drafts copied from the context.

The lookup itself on hand-made contexts and against a plain-Python reference (eager rule and
inductor kernel alike); greedy equivalence; exact losslessness under sampling; the inductor
backend's tokens equal eager's, compiled into one graph; the checker's diagnostics.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.eager import rules as eager
from decspec.backends.inductor import kernels
from decspec.backends.runtime import Context
from decspec.compiler.ir import Op
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel
from decspec.testing import assert_greedy_equivalent, assert_lossless, greedy_tokens

SPEC = "specs/prompt_lookup.dec"
S = 24  # context capacity of the hand-made contexts


def reference(row: list[int], k: int, ngram: int, min_ngram: int, earliest: bool = False) -> list[int]:
    """The lookup in plain Python: the latest (earliest: the first) earlier occurrence of the longest suffix that has one."""
    L = len(row)
    for n in range(min(ngram, L - 1), min_ngram - 1, -1):
        starts = range(L - n) if earliest else range(L - n - 1, -1, -1)
        for i in starts:  # i + n < L: a token follows the match
            if row[i:i + n] == row[L - n:]:
                return row[i + n:i + n + k]
    return []


def lookup(rows: list[list[int]], k: int = 4, ngram: int = 3, min_ngram: int = 1, vocab: int = 10, earliest: bool = False):
    """Both implementations on a padded batch; they must agree. -> (drafts per row, q [B, K, V])"""
    tokens = torch.tensor([r + [7] * (S - len(r)) for r in rows])  # padding that would match, were it read
    length = torch.tensor([len(r) for r in rows])
    state = SimpleNamespace(sessions={"target": SimpleNamespace(model=SimpleNamespace(vocab_size=vocab))})
    params = (("max", k), ("ngram", ngram), ("min_ngram", min_ngram), ("vocab", "target")) + ((("earliest", True),) if earliest else ())
    op = Op("ngram_lookup", (), (), params)
    d, q, count = eager.ngram_lookup(state, op, Context(tokens, length))
    d2, q2, count2 = kernels.ngram_lookup(tokens, length, k, ngram, min_ngram, vocab, earliest)
    assert torch.equal(d, d2) and torch.equal(q, q2) and torch.equal(count, count2)
    assert d.shape == (len(rows), k) and q.shape == (len(rows), k, vocab)
    assert (d[torch.arange(k)[None, :] >= count[:, None]] == 0).all()  # nothing past the count
    return [r[:c].tolist() for r, c in zip(d, count)], q


def test_the_most_recent_match_wins():
    drafts, _ = lookup([[1, 2, 3, 9, 8, 1, 2, 3, 7, 5, 6, 1, 2, 3]])
    assert drafts == [[7, 5, 6, 1]]


def test_earliest_takes_the_first_match():
    drafts, _ = lookup([[1, 2, 3, 9, 8, 1, 2, 3, 7, 5, 6, 1, 2, 3]], earliest=True)
    assert drafts == [[9, 8, 1, 2]]


def test_longer_ngrams_first_then_shorter():
    # "2 3" last occurs before 4, but the 3-gram "1 2 3" occurs only before 5: the 3-gram wins
    assert lookup([[1, 2, 3, 5, 6, 2, 3, 4, 1, 2, 3]])[0] == [[5, 6, 2, 3]]
    # no earlier "8 2 3", no earlier "2 3"... only the 1-gram "3" (followed by 6)
    assert lookup([[3, 6, 6, 8, 2, 3]], ngram=3)[0] == [[6, 6, 8, 2]]
    assert lookup([[3, 6, 6, 8, 2, 3]], ngram=3, min_ngram=2)[0] == [[]]  # min_ngram stops the fallback


def test_drafts_stop_where_the_context_ends():
    assert lookup([[1, 2, 3, 1, 2]])[0] == [[3, 1, 2]]  # "1 2" at 0, then only three tokens follow
    assert lookup([[5, 5, 5, 5]])[0] == [[5]]  # the latest "5 5 5" is followed by one token
    assert lookup([[4, 5, 4]], k=1)[0] == [[5]]


def test_no_match_means_no_drafts():
    drafts, q = lookup([[1, 2, 3, 4], [6], [2, 2]])
    assert drafts == [[], [], [2]]
    assert q[:2].abs().sum() == 0  # rows without drafts carry no draft distribution
    assert q[2, 0].tolist() == [0.0, 0.0, 1.0] + [0.0] * 7 and q[2, 1:].abs().sum() == 0  # one-hot on each draft


@settings(max_examples=150)
@given(
    rows=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=S), min_size=1, max_size=4),
    k=st.integers(1, 6),
    ngram=st.integers(1, 5),
    data=st.data(),
)
def test_lookup_equals_the_plain_python_reference(rows, k, ngram, data):
    min_ngram = data.draw(st.integers(1, ngram))
    earliest = data.draw(st.booleans())
    drafts, _ = lookup(rows, k, ngram, min_ngram, vocab=4, earliest=earliest)
    assert drafts == [reference(r, k, ngram, min_ngram, earliest) for r in rows]


# --------------------------------------------------------------------------- decoding

greedy_cases = st.fixed_dictionaries(
    {
        "vocab": st.integers(2, 8),
        "order": st.integers(1, 2),
        "seed": st.integers(0, 10_000),
        "k": st.integers(1, 6),
        "ngram": st.integers(1, 4),
        "verify": st.sampled_from(["rejection", "greedy"]),
        "prompts": st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=8), min_size=1, max_size=3),
        "max_new_tokens": st.integers(1, 16),
    }
)


@settings(max_examples=40)
@given(case=greedy_cases)
def test_greedy_lookup_is_greedy_decoding(case):
    """temperature 0 with rejection (one-hot p and q), or the exact-match verifier: the target's greedy tokens."""
    V = case["vocab"]
    target = TableModel.random(V, case["order"], seed=case["seed"], eos_token_id=1 if case["seed"] % 2 else None)
    text = open(SPEC).read().replace("verify  = rejection", f"verify  = {case['verify']}")
    prompts = [[t % V for t in p] for p in case["prompts"]]
    assert_greedy_equivalent(text, models={"target": target}, prompts=prompts, max_new_tokens=case["max_new_tokens"],
                             exact=False, k=case["k"], ngram=case["ngram"])


def test_rounds_without_drafts_commit_the_targets_token():
    target = TableModel.random(5, 1, seed=4)
    dec = decspec.compile(SPEC, target=target)
    out = dec.generate([[0, 1, 2, 3], [4]], max_new_tokens=12, seed=0)
    assert out.tokens == [greedy_tokens(target, p, 12) for p in ([0, 1, 2, 3], [4])]
    assert out.stats.drafted[0] == [0, 0]  # nothing to look up in the first round
    assert any(d > 0 for r in out.stats.drafted for d in r)  # a greedy table repeats itself: lookup catches on
    assert out.stats.rounds < 12 and out.stats.mean_accepted > 0


@pytest.mark.parametrize("prompt", [[1], [0, 2, 0], [1, 1, 2, 1]])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_lookup_is_exactly_lossless_when_sampling(prompt, temperature):
    target = TableModel.random(3, 1, seed=sum(prompt), eos_token_id=2 if prompt == [1] else None)
    for earliest in (False, True):
        check = assert_lossless(SPEC, models={"target": target}, prompt=prompt, max_new_tokens=4, method="exact",
                                temperature=temperature, k=3, ngram=2, earliest=earliest)
        assert check.method == "exact"


def test_the_analysis_says_why():
    verdict = decspec.compile(SPEC, target=TableModel.random(3, 1, seed=0)).verdict
    text = str(verdict)
    assert verdict.lossless and "propose = lookup" in text and "one-hot" in text
    assert "draft alike" not in text  # there is no draft model to apply the sampler to


# --------------------------------------------------------------------------- the inductor backend

PROMPTS = [[5, 6, 7, 8, 5, 6, 7], [9, 10, 9, 10, 9], [11], [3, 4, 5, 3, 4, 5, 3, 4]]  # ragged, repetitive, no match


def test_inductor_equals_eager_token_for_token():
    models = {"target": random_models(seed=3)["target"]}
    for overrides in ({"k": 1}, {"k": 4, "ngram": 2}, {"k": 4, "ngram": 2, "earliest": True}):
        eager_dec = decspec.compile(SPEC, models=models, overrides=overrides)
        gen = decspec.compile(SPEC, models=models, overrides=overrides, backend="inductor")
        a = eager_dec.generate(PROMPTS, max_new_tokens=14, seed=0)
        b = gen.generate(PROMPTS, max_new_tokens=14, seed=0)
        assert a.tokens == b.tokens
        assert a.stats.accepted == b.stats.accepted and a.stats.drafted == b.stats.drafted


def test_compiled_lookup_is_one_graph():
    from torch._dynamo.utils import counters

    models = {"target": random_models(seed=3)["target"]}
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile(SPEC, models=models, k=3, backend="inductor")
    dec.backend_options = {"compile": True}
    out = dec.generate(PROMPTS, max_new_tokens=12, seed=0)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert out.tokens == decspec.compile(SPEC, models=models, k=3).generate(PROMPTS, max_new_tokens=12, seed=0).tokens
    assert len({d for row in out.stats.drafted for d in row}) > 1  # the drafted count varied, the graph did not


# --------------------------------------------------------------------------- diagnostics


def spec_text(propose: str, extra: str = "") -> str:
    return f'decoder d() {{\n    target = model("target")\n    propose = {propose}\n{extra}    verify = greedy\n}}\n'


def test_min_ngram_above_ngram_is_an_error():
    with pytest.raises(DecError, match="min_ngram \\(3\\) is larger than its ngram \\(2\\)"):
        decspec.compile(spec_text("lookup(ngram = 2, min_ngram = 3)"), target=TableModel.random(3, 1, seed=0))


def test_an_exit_policy_needs_a_draft_model():
    with pytest.raises(DecError, match="`lookup` drafts without a model") as info:
        decspec.compile(spec_text("lookup()", "    stop = when draft.prob < 0.3\n"), target=TableModel.random(3, 1, seed=0))
    assert info.value.diagnostics[0].span is not None


@pytest.mark.parametrize("arg", ["ngram = 0", "ngram = 17", "max = 0", "max = 65", "min_ngram = 0"])
def test_parameters_are_bounded(arg):
    with pytest.raises(DecError):
        decspec.compile(spec_text(f"lookup({arg})"), target=TableModel.random(3, 1, seed=0))
