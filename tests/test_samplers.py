"""Sampler transforms against straightforward reference implementations."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.stdlib.samplers import epsilon_cutoff, eta_cutoff, greedy, min_p, temperature, top_k, top_p
from decspec.strategies import tied_logits

logit_rows = st.lists(st.floats(-5, 5, allow_nan=False).map(lambda x: round(x, 3)), min_size=1, max_size=8)


def kept(logits: torch.Tensor) -> list[int]:
    return [i for i, x in enumerate(logits.tolist()) if x != -math.inf]


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


@settings(max_examples=200)
@given(row=logit_rows, p=st.floats(0.0, 1.0))
def test_top_p_keeps_the_tokens_whose_more_likely_mass_is_below_p(row, p):
    probs = softmax(row)
    above = [sum(q for j, q in enumerate(probs) if row[j] > row[i]) for i in range(len(row))]  # strictly more likely
    got = kept(top_p(torch.tensor(row, dtype=torch.float64), p))
    near = [i for i, m in enumerate(above) if abs(m - p) < 1e-9]  # rounding decides these
    assert sorted(set(got) - set(near)) == [i for i, m in enumerate(above) if m < p and i not in near] or p >= 1
    assert got  # never empty


P_VALUES = st.sampled_from([0.0, 0.1, 0.25, 1 / 3, 0.5, 2 / 3, 0.75, 0.9, 0.95]) | st.floats(0.0, 1.0, exclude_max=True)


@settings(max_examples=300)
@given(x=tied_logits(), p=P_VALUES | st.just(1.0), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_top_p_ranks_by_logit_and_keeps_ties_together(x, p, dtype):
    """A kept logit is never below a dropped one (near-ties one ulp apart included), so equal logits share their
    fate; the result does not depend on token ids (a permuted row gives the permuted result)."""
    x = x.to(dtype)
    out = top_p(x, p)
    keep = out > -math.inf
    assert torch.equal(out[keep], x[keep])
    assert (keep | x.isinf().all(-1, keepdim=True)).any(-1).all()  # at least one token (unless all were removed before)
    lowest_kept = x.masked_fill(~keep, math.inf).amin(-1, keepdim=True)
    assert torch.equal(keep | x.isinf(), (x >= lowest_kept) | x.isinf())
    perm = torch.randperm(x.shape[-1], generator=torch.Generator().manual_seed(0))
    assert torch.equal(top_p(x[:, perm], p), out[:, perm])


@settings(max_examples=300)
@given(x=tied_logits(), p=P_VALUES)
def test_top_p_is_hugging_face_with_ties_kept_together(x, p):
    """Hugging Face's TopPLogitsWarper, closed under ties: the same mass formula in float32, so where its nucleus
    does not split a group of equal logits the two agree exactly; where it does, decspec keeps the whole group
    (which of the tied tokens HF keeps follows torch.sort's unstable order, docs/language.md "Samplers: ranking
    and ties"). p = 1 is left out: decspec keeps everything, HF's warper drops zero-probability tokens (its
    generate does not apply the warper at top_p = 1)."""
    transformers = pytest.importorskip("transformers")
    hf_keep = transformers.TopPLogitsWarper(p)(None, x.clone()) > -math.inf
    keep = top_p(x, p) > -math.inf
    hf_edge = x.masked_fill(~hf_keep, math.inf).amin(-1, keepdim=True)  # HF's least likely kept logit
    assert torch.equal(keep, x >= hf_edge)
    split = (x == hf_edge) & ~hf_keep  # tied with HF's last kept token, yet dropped by HF
    assert torch.equal(keep[~split.any(-1)], hf_keep[~split.any(-1)])


def test_top_p_keeps_a_tie_at_the_nucleus_edge_whole():
    # masses 0.53, 0.20, 0.20, 0.07: 0.53 < 0.6, so every token tied at 1.0 stays; HF keeps one of them
    x = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    assert kept(top_p(x, 0.6)[0]) == [0, 1, 2]
    assert kept(top_p(x, 0.5)[0]) == [0]


def test_top_p_never_keeps_a_lower_logit_than_it_drops():
    """0.5 and the float32 just below it round to one probability (3 - x rounds to -2.5 for both); ranked by rounded
    probability, ties by token id, the lower logit would be kept and the higher one dropped."""
    lo = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))
    x = torch.tensor([[3.0, lo, 0.5]])
    probs = torch.softmax(x, -1)[0]
    assert probs[1] == probs[2] and probs[0] < 0.9 < probs[0] + probs[1]
    assert kept(top_p(x, 0.9)[0]) == [0, 2]


@settings(max_examples=200)
@given(row=logit_rows, k=st.integers(1, 10))
def test_top_k_keeps_k_and_ties(row, k):
    kth = sorted(row, reverse=True)[min(k, len(row)) - 1]
    assert kept(top_k(torch.tensor(row), k)) == [i for i, x in enumerate(row) if x >= kth]


@settings(max_examples=200)
@given(row=logit_rows, p=st.floats(0.0, 1.0))
def test_min_p_keeps_tokens_above_a_fraction_of_the_top(row, p):
    probs = softmax(row)
    got = kept(min_p(torch.tensor(row, dtype=torch.float64), p))
    assert got == [i for i, q in enumerate(probs) if q >= p * max(probs) - 1e-12]
    assert got


@settings(max_examples=100)
@given(row=logit_rows)
def test_greedy_keeps_only_the_first_argmax(row):
    assert kept(greedy(torch.tensor(row))) == [row.index(max(row))]
    assert kept(temperature(torch.tensor(row), 0.0)) == [row.index(max(row))]


def test_temperature_scales_logits():
    x = torch.tensor([1.0, 2.0, 4.0])
    assert torch.allclose(temperature(x, 0.5), x * 2)


def test_top_p_zero_is_greedy_not_empty():
    x = torch.tensor([[1.0, 3.0, 2.0]])
    assert kept(top_p(x, 0.0)[0]) == [1]


# --------------------------------------------------------------------------- truncation sampling (Hewitt et al. 2022)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), V=st.integers(2, 60), e=st.sampled_from([1e-4, 3e-3, 0.02, 0.1, 0.5, 0.99]),
       scale=st.sampled_from([0.3, 3.0, 12.0]))
def test_epsilon_and_eta_cutoff_are_hugging_faces_warpers(seed, V, e, scale):
    """Against transformers' EpsilonLogitsWarper / EtaLogitsWarper (min_tokens_to_keep = 1), token for token."""
    transformers = pytest.importorskip("transformers")
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(seed)) * scale
    logits[1, 0] = -math.inf  # an already-removed token stays removed
    logits[2] = logits[2].round()  # ties, the maximum's included
    assert torch.equal(epsilon_cutoff(logits, e), transformers.EpsilonLogitsWarper(e)(None, logits.clone()))
    assert torch.equal(eta_cutoff(logits, e), transformers.EtaLogitsWarper(e)(None, logits.clone()))


@settings(max_examples=100)
@given(row=logit_rows, e=st.floats(0.0, 1.0))
def test_eta_cutoff_is_its_definition(row, e):
    """eta = min(e, sqrt(e) exp(-H)): tokens below it go, the maxima stay; the same cut computed in plain Python."""
    probs = softmax(row)
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    eta = min(e, math.sqrt(e) * math.exp(-entropy))
    expect = [i for i, (x, p) in enumerate(zip(row, probs)) if x == max(row) or not p < eta - 1e-6]
    got = kept(eta_cutoff(torch.tensor(row, dtype=torch.float64), e))
    assert set(got) >= {i for i in expect if abs(probs[i] - eta) > 1e-6} and set(got) <= set(expect) | {
        i for i, p in enumerate(probs) if abs(p - eta) <= 1e-6}
    assert kept(eta_cutoff(torch.tensor(row), 0.0)) == list(range(len(row)))


def test_speculation_under_eta_cutoff_is_exactly_lossless():
    """The cut applies to target and draft alike, so rejection sampling keeps the cut target's distribution exactly."""
    from decspec.stdlib.models.table import TableModel
    from decspec.testing import assert_lossless

    spec = ('decoder d(k: int = 2) { target = model("target"); draft = model("draft"); '
            'sampler = temperature(0.9) | eta_cutoff(0.2) | epsilon_cutoff(0.05); propose = autoregressive(draft, max = k); verify = rejection }')
    models = {"target": TableModel.random(4, 1, seed=3), "draft": TableModel.random(4, 1, seed=4, temperature=2.0)}
    assert assert_lossless(spec, models=models, k=2, prompt=[1, 2], method="exact").method == "exact"
