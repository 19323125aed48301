"""decspec.testing: tools for property tests of decoders (the start of the public toolkit).

    >>> from decspec.stdlib.models.table import TableModel
    >>> target = TableModel.random(4, 1, seed=0)
    >>> expected = sequence_distribution(target, [1], 2, [("temperature", {"t": 0.8})])
    >>> round(sum(expected.values()), 12)
    1.0

Today: exact sequence distributions of table models, a chi-square goodness-of-fit test, total
variation, and a deliberately broken verifier to show a check has teeth. Hypothesis strategies, `assert_lossless` and the exact backend are later work.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Sequence

import torch

from decspec.stdlib.samplers import apply_pipeline

Pipeline = Sequence[tuple[str, dict]]


def stages(pipeline: Pipeline) -> tuple:
    """[("top_k", {"k": 3}), ...] -> the stage tuples samplers.apply_pipeline takes."""
    return tuple((name, tuple(params.items())) for name, params in pipeline)


def pipeline_text(pipeline: Pipeline) -> str:
    """The .dec text of a pipeline: `temperature(t = 0.8) | top_k(k = 3)`."""
    parts = [f"{n}({', '.join(f'{k} = {v!r}' for k, v in p.items())})" if p else n for n, p in pipeline]
    return " | ".join(parts)


def sequence_distribution(model, prompt: Sequence[int], n: int, pipeline: Pipeline = ()) -> dict[tuple[int, ...], float]:
    """Exact P(x_1..x_n | prompt) under softmax(pipeline(logits)) of a TableModel, by enumeration (float64)."""
    st = stages(pipeline)
    out: dict[tuple[int, ...], float] = {}

    def walk(history: list[int], prefix: tuple[int, ...], prob: float) -> None:
        if len(prefix) == n:
            out[prefix] = prob
            return
        logits = model.logits[model.context(history)]
        p = torch.softmax(apply_pipeline(logits.double(), st), -1)
        for x in torch.nonzero(p > 0).flatten().tolist():
            walk(history + [x], prefix + (x,), prob * float(p[x]))

    walk(list(prompt), (), 1.0)
    return out


def chi_square(samples: Sequence[Sequence[int]], expected: dict[tuple[int, ...], float], min_expected: float = 5.0) -> tuple[float, float]:
    """Pearson chi-square of sampled sequences against expected probabilities -> (statistic, p-value).

    Bins expected fewer than `min_expected` times are pooled; a sample outside the support gives
    p = 0.
    """
    M = len(samples)
    counts = Counter(tuple(s) for s in samples)
    if any(expected.get(seq, 0.0) == 0.0 for seq in counts):
        return float("inf"), 0.0
    obs, exp = [], []
    pooled_o = pooled_e = 0.0
    for seq, p in expected.items():
        if p * M < min_expected:
            pooled_o, pooled_e = pooled_o + counts.get(seq, 0), pooled_e + p * M
        else:
            obs.append(counts.get(seq, 0))
            exp.append(p * M)
    if pooled_e > 0:
        obs.append(pooled_o)
        exp.append(pooled_e)
    if len(obs) < 2:
        return 0.0, 1.0
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    dof = len(obs) - 1
    # survival function of chi2(dof): the regularized upper incomplete gamma Q(dof/2, stat/2)
    p = torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64))
    return stat, float(p)


def total_variation(samples: Sequence[Sequence[int]], expected: dict[tuple[int, ...], float]) -> float:
    """TV distance between the empirical distribution of samples and expected."""
    M = len(samples)
    counts = Counter(tuple(s) for s in samples)
    return 0.5 * sum(abs(counts.get(k, 0) / M - expected.get(k, 0.0)) for k in set(counts) | set(expected))


def assert_samples_match(samples: Sequence[Sequence[int]], expected: dict[tuple[int, ...], float], p_fail: float = 1e-6) -> None:
    """Fail when a chi-square test rejects `expected` at level p_fail (the false-alarm rate)."""
    stat, p = chi_square(samples, expected)
    if p < p_fail:
        raise AssertionError(f"samples do not follow the expected distribution: chi-square p={p:.3g} < {p_fail:g}, TV={total_variation(samples, expected):.4f}")


def _lower_accept_all(lw, inst, ctx, target, proposal):
    """Broken on purpose: accept every drafted token, then add the bonus token from p."""
    b = lw.b
    p = lw.probs(b.emit("model_call", [ctx, proposal.tokens], model=lw.role(target), last=False)[0])
    n = b.emit("match_len", [proposal.tokens, proposal.tokens, proposal.count])[0]  # = drafted
    bonus = b.emit("rejection_residual", [p, proposal.probs, n, proposal.count])[0]  # n == drafted: p_m
    return b.emit("splice", [proposal.tokens, n, lw.sample(bonus)])[0], n


@contextmanager
def broken_verifier(name: str = "accept_all"):
    """Register, for the duration of a `with` block, a verifier that accepts every draft while
    *claiming* to be lossless: a mutant to show that a distribution check has teeth.

        with broken_verifier():
            dec = decspec.compile(spec_text_using("verify = accept_all"), ...)
    """
    from decspec.stdlib.registry import Component, Contract, register, unregister

    register(Component("verifier", name, (), "accepts every draft (deliberately wrong)", Contract(True, "claims to be lossless, and is not"), _lower_accept_all))
    try:
        yield name
    finally:
        unregister("verifier", name)
