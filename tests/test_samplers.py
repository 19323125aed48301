"""Sampler transforms against straightforward reference implementations."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.stdlib.samplers import greedy, min_p, temperature, top_k, top_p

logit_rows = st.lists(st.floats(-5, 5, allow_nan=False).map(lambda x: round(x, 3)), min_size=1, max_size=8)


def kept(logits: torch.Tensor) -> list[int]:
    return [i for i, x in enumerate(logits.tolist()) if x != -math.inf]


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


@settings(max_examples=200)
@given(row=logit_rows, p=st.floats(0.0, 1.0))
def test_top_p_keeps_the_smallest_prefix_reaching_p(row, p):
    probs = softmax(row)
    order = sorted(range(len(row)), key=lambda i: (-probs[i], i))  # stable: ties by index
    keep, mass = [], 0.0
    for i in order:
        if keep and mass >= p:
            break
        keep.append(i)
        mass += probs[i]
    got = kept(top_p(torch.tensor(row, dtype=torch.float64), p))
    assert sorted(got) == sorted(keep) or abs(mass - p) < 1e-9  # boundary ties are float-rounding dependent
    assert got  # never empty


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
