"""Greedy speculative decoding reproduces greedy autoregressive decoding token for token."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel


def greedy_reference(model: TableModel, prompt: list[int], n: int, eos: int | None) -> list[int]:
    """Greedy decoding straight from the table (argmax, first on ties)."""
    history, out = list(prompt), []
    while len(out) < n:
        x = int(model.logits[model.context(history)].argmax())
        out.append(x)
        history.append(x)
        if x == eos:
            break
    return out


cases = st.fixed_dictionaries(
    {
        "vocab": st.integers(2, 12),
        "order": st.integers(1, 2),
        "k": st.integers(1, 6),
        "confidence": st.sampled_from([0.0, 0.2, 0.5, 0.9]),
        "target_seed": st.integers(0, 10_000),
        "draft_seed": st.integers(0, 10_000),
        "max_new_tokens": st.integers(1, 12),
        "prompts": st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=5), min_size=1, max_size=4),
        "use_eos": st.booleans(),
    }
)


@settings(max_examples=40)
@given(case=cases)
def test_speculative_greedy_equals_greedy(case):
    V = case["vocab"]
    prompts = [[t % V for t in p] for p in case["prompts"]]
    eos = 1 if case["use_eos"] else None
    target = TableModel.random(V, case["order"], seed=case["target_seed"], eos_token_id=eos)
    draft = TableModel.random(V, case["order"], seed=case["draft_seed"])
    spec = decspec.compile("specs/speculative_greedy.dec", target=target, draft=draft, k=case["k"], confidence=case["confidence"])
    plain = decspec.compile("specs/autoregressive.dec", target=target, temperature=0.0)
    n = case["max_new_tokens"]
    fast = spec.generate(prompts, max_new_tokens=n, seed=0)
    slow = plain.generate(prompts, max_new_tokens=n, seed=1)
    expected = [greedy_reference(target, p, n, eos) for p in prompts]
    assert slow.tokens == expected
    assert fast.tokens == expected
    assert fast.stats.rounds <= slow.stats.rounds


def test_a_perfect_draft_is_always_accepted():
    target = TableModel.random(6, 1, seed=0)
    dec = decspec.compile("specs/speculative_greedy.dec", target=target, draft=target, k=4, confidence=0.0)
    out = dec.generate([[1, 2]], max_new_tokens=20, seed=0)
    assert out.tokens == [greedy_reference(target, [1, 2], 20, None)]
    assert out.stats.mean_accepted == 4.0  # every round: 4 drafts + 1 bonus (the last round is cut to 20)


def test_greedy_equivalence_on_the_builtin_transformer():
    models = random_models()
    prompts = [[5, 6, 7], [9], [100, 200, 300, 400]]
    spec = decspec.compile("specs/speculative_greedy.dec", models=models, k=3, confidence=0.0)
    plain = decspec.compile("specs/autoregressive.dec", models=models, temperature=0.0)
    assert spec.generate(prompts, max_new_tokens=12).tokens == plain.generate(prompts, max_new_tokens=12).tokens
