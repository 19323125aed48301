"""Eager rules of the lossy verifiers' ops (stdlib/lossy.py): acceptance by a threshold on the
target's distribution, with no draw, and the distribution at the first rejected position.

Merged into the eager table (backends/eager/rules.py), and so into the exact one: these ops draw
no randomness, so the exact backend runs them as they are.
"""
from __future__ import annotations

import torch


def accepted_prefix(ok: torch.Tensor, drafted: torch.Tensor) -> torch.Tensor:
    """Leading True count of ok [B, K], capped at drafted [B]."""
    K = ok.shape[1]
    ok = ok & (torch.arange(K, device=ok.device)[None, :] < drafted[:, None])
    return ok.long().cumprod(1).sum(1)


def typical_accepted(p: torch.Tensor, d: torch.Tensor, drafted: torch.Tensor, epsilon: float, delta: float) -> torch.Tensor:
    """Medusa's typical acceptance: d_i accepted while p_i(d_i) > min(epsilon, delta * exp(-H(p_i))).
    p: [B, K+1, V], d: [B, K], drafted: [B] -> accepted [B]"""
    K = d.shape[1]
    pk = p[:, :K]  # [B, K, V]
    pd = pk.gather(-1, d[..., None]).squeeze(-1)  # p_i(d_i): [B, K]
    entropy = -(pk * torch.log(pk.clamp_min(torch.finfo(pk.dtype).tiny))).sum(-1)  # H(p_i) in nats: [B, K]
    threshold = torch.clamp(delta * torch.exp(-entropy), max=epsilon)  # min(epsilon, delta * exp(-H))
    return accepted_prefix(pd > threshold, drafted)


def topk_accepted(p: torch.Tensor, d: torch.Tensor, drafted: torch.Tensor, k: int) -> torch.Tensor:
    """d_i accepted while p_i(d_i) > 0 and fewer than k tokens are strictly more likely than d_i.
    p: [B, K+1, V], d: [B, K], drafted: [B] -> accepted [B]"""
    K = d.shape[1]
    pk = p[:, :K]
    pd = pk.gather(-1, d[..., None]).squeeze(-1)  # [B, K]
    rank = (pk > pd[..., None]).sum(-1)  # tokens strictly more likely than d_i: [B, K]
    return accepted_prefix((pd > 0) & (rank < k), drafted)


def dist_at(p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """p[b, index[b]]: p [B, N, V], index [B] -> [B, V]"""
    return p[torch.arange(p.shape[0], device=p.device), index]


def typical_accept(state, op, p, d, drafted):
    return (typical_accepted(p, d, drafted, op.param("epsilon"), op.param("delta")),)


def topk_accept(state, op, p, d, drafted):
    return (topk_accepted(p, d, drafted, op.param("k")),)


def take_dist(state, op, p, index):
    return (dist_at(p, index),)


RULES = {"typical_accept": typical_accept, "topk_accept": topk_accept, "take_dist": take_dist}
