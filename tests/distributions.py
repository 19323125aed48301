"""Helpers for distribution tests: exact sequence distributions of table models, and a
chi-square goodness-of-fit test on sampled sequences."""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Sequence

import torch
from scipy import stats as scipy_stats

from decspec.stdlib.samplers import apply_pipeline


def sampler_stages(pipeline: Sequence[tuple[str, dict]]) -> tuple:
    return tuple((name, tuple(params.items())) for name, params in pipeline)


def pipeline_text(pipeline: Sequence[tuple[str, dict]]) -> str:
    stages = [f"{name}({', '.join(f'{k} = {v!r}' for k, v in params.items())})" if params else name for name, params in pipeline]
    return " | ".join(stages)


def exact_sequence_distribution(model, prompt: list[int], n: int, pipeline) -> dict[tuple[int, ...], float]:
    """P(x_1..x_n | prompt) under softmax(pipeline(model logits)), by enumeration (float64)."""
    stages = sampler_stages(pipeline)
    V = model.vocab_size
    out: dict[tuple[int, ...], float] = {}

    def next_probs(history):
        logits = model.logits[model.context(history)] if hasattr(model, "context") else None
        return torch.softmax(apply_pipeline(logits.float(), stages).double(), -1)

    def walk(history, prefix, prob):
        if len(prefix) == n:
            out[tuple(prefix)] = prob
            return
        p = next_probs(history)
        for x in range(V):
            if p[x] > 0:
                walk(history + [x], prefix + [x], prob * float(p[x]))

    walk(list(prompt), [], 1.0)
    return out


def chi_square_pvalue(samples: Sequence[Sequence[int]], expected: dict[tuple[int, ...], float], min_expected: float = 5.0) -> tuple[float, float]:
    """Pearson chi-square of observed sequences against expected probabilities.

    Bins with expected count < min_expected are pooled into one bin (as are sequences outside
    the support, which make the p-value 0 when seen). Returns (statistic, p-value).
    """
    M = len(samples)
    counts = Counter(tuple(s) for s in samples)
    unexpected = sum(c for seq, c in counts.items() if expected.get(seq, 0.0) == 0.0)
    if unexpected:
        return float("inf"), 0.0
    obs, exp = [], []
    pooled_o = pooled_e = 0.0
    for seq, p in expected.items():
        e = p * M
        if e < min_expected:
            pooled_o += counts.get(seq, 0)
            pooled_e += e
        else:
            obs.append(counts.get(seq, 0))
            exp.append(e)
    if pooled_e > 0:
        obs.append(pooled_o)
        exp.append(pooled_e)
    if len(obs) < 2:
        return 0.0, 1.0
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    return stat, float(scipy_stats.chi2.sf(stat, len(obs) - 1))


def total_variation(samples: Sequence[Sequence[int]], expected: dict[tuple[int, ...], float]) -> float:
    M = len(samples)
    counts = Counter(tuple(s) for s in samples)
    keys = set(counts) | set(expected)
    return 0.5 * sum(abs(counts.get(k, 0) / M - expected.get(k, 0.0)) for k in keys)


def all_sequences(V: int, n: int):
    return itertools.product(range(V), repeat=n)
