"""Samplers: logits transforms composed with `|`, applied left to right, then softmax.

Every transform maps logits [..., V] to logits [..., V], removing tokens by setting them to
-inf. The pipeline is applied identically to the target and to every draft, so the
distribution a lossless decoder samples from is softmax(pipeline(target logits)).
"""
from __future__ import annotations

import torch

from decspec.stdlib.registry import Component, Contract, Param, register

NEG_INF = float("-inf")
_NO_CONTRACT = Contract(None, "samplers define the target distribution; they are not checked against it")


def _at_least_f32(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Keep only the most likely token (the first one on ties)."""
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.argmax(-1, keepdim=True), True)
    return logits.masked_fill(~keep, NEG_INF)


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    """logits / t; t = 0 means greedy."""
    return greedy(logits) if t == 0 else logits / t


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k most likely tokens (and any tied with the k-th)."""
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest most-likely set whose probability reaches p (always >= 1 token)."""
    if p >= 1.0:
        return logits
    probs = torch.softmax(_at_least_f32(logits), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # probability of strictly more likely tokens
    drop_sorted = (mass_before >= p) & (mass_before > 0)  # the most likely token (mass_before 0) always stays: top_p(0) is greedy
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least p times the most likely token's."""
    if p <= 0.0:
        return logits
    probs = torch.softmax(_at_least_f32(logits), dim=-1)
    return logits.masked_fill(probs < p * probs.amax(-1, keepdim=True), NEG_INF)


TRANSFORMS = {"greedy": greedy, "temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}


def apply_pipeline(logits: torch.Tensor, stages: tuple[tuple[str, tuple[tuple[str, object], ...]], ...]) -> torch.Tensor:
    """Apply ((name, ((param, value), ...)), ...) to logits [..., V] -> logits [..., V]."""
    for name, params in stages:
        logits = TRANSFORMS[name](logits, **dict(params))
    return logits


register(Component("sampler", "greedy", (), "Always the most likely token (argmax; first on ties).", _NO_CONTRACT))
register(
    Component(
        "sampler",
        "temperature",
        (Param("t", "float", low=0.0, doc="softmax temperature; 0 means greedy"),),
        "Divide logits by t.",
        _NO_CONTRACT,
    )
)
register(
    Component(
        "sampler",
        "top_k",
        (Param("k", "int", low=1, doc="keep the k most likely tokens"),),
        "Keep the k most likely tokens (ties with the k-th are kept).",
        _NO_CONTRACT,
    )
)
register(
    Component(
        "sampler",
        "top_p",
        (Param("p", "float", low=0.0, high=1.0, doc="probability mass to keep"),),
        "Nucleus sampling (Holtzman et al. 2020): the smallest most-likely set with mass >= p.",
        _NO_CONTRACT,
        cite="Holtzman et al. 2020, The Curious Case of Neural Text Degeneration",
    )
)
register(
    Component(
        "sampler",
        "min_p",
        (Param("p", "float", low=0.0, high=1.0, doc="fraction of the top token's probability"),),
        "Keep tokens with probability >= p * max probability.",
        _NO_CONTRACT,
        cite="Nguyen et al. 2024, Min-p Sampling",
    )
)
