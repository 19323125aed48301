"""Eager rules of a draft source chosen per context (stdlib/dynamic_exit.py): `draft_arm`, `model_select`."""
from __future__ import annotations

import torch

from decspec.backends.speculation_length import cap_key


def draft_arm(state, op):
    """This round's arm per row, from the generation's arm policy (backends/speculation_length.py). The first
    call gives the policy its views' costs: each view's layers / the target's, read from the bound models."""
    policies = getattr(state, "policies", None)
    if policies is None:
        raise RuntimeError("draft_arm needs the generation loop's cross-round policies (backends/runtime.py)")
    policy, _ = policies.entries[cap_key(op)]
    if getattr(policy, "costs", ()) is None:
        depth = state.sessions[op.param("model")].model.num_layers
        policy.costs = tuple(state.sessions[v].model.num_layers / depth for v in op.param("views"))
    return (policies.cap(op).to(state.device),)


def model_select(state, op, arm, ctx, ext=None, n=None):
    """Row b's logits from model models[arm[b]]: each model some row chose is called (over the whole batch,
    which its prefix cache needs), and each row keeps its own model's. -> [B, V] (or [B, n+1, V])"""
    n = None if n is None else int(n)
    out = None
    for a in sorted(set(arm.tolist())):
        session = state.sessions[op.param("models")[a]]
        logits = session.logits(ctx.tokens, ctx.length, ext, n, last=op.param("last"))
        rows = (arm == a).view(-1, *[1] * (logits.dim() - 1))
        out = logits if out is None else torch.where(rows, logits, out)
    return (out,)


RULES = {"draft_arm": draft_arm, "model_select": model_select}
