"""Eager rules of a draft source chosen per context (stdlib/dynamic_exit.py): `draft_arm`, `model_select`."""
from __future__ import annotations

from decspec.backends.speculation_length import cap_key, where_rows


def draft_arm(state, op):
    """This round's arm per row, from the generation's arm policy (backends/speculation_length.py). The first
    call gives the policy its views' costs: each view's layers / the target's, read from the bound models."""
    policies = getattr(state, "policies", None)
    if policies is None:
        raise RuntimeError("draft_arm needs the generation loop's cross-round policies (backends/runtime.py)")
    set_view_costs(policies, op, state.sessions)
    return (policies.cap(op).to(state.device),)


def set_view_costs(policies, op, sessions) -> None:
    """Give draft_arm's policy its views' costs (each view's layers / the model's), once, from the bound sessions
    (a PrefixCache or a static session: both hold `.model`). The inductor runner calls it before a round's caps."""
    policy, _ = policies.entries[cap_key(op)]
    if getattr(policy, "costs", ()) is None:
        depth = sessions[op.param("model")].model.num_layers
        policy.costs = tuple(sessions[v].model.num_layers / depth for v in op.param("views"))


def model_select(state, op, arm, ctx, ext=None, n=None):
    """Row b's logits from model models[arm[b]]: each model some row chose is called (over the whole batch,
    which its prefix cache needs), and each row keeps its own model's. -> [B, V] (or [B, n+1, V])"""
    n = None if n is None else int(n)
    out = None
    for a in sorted(set(arm.tolist())):
        session = state.sessions[op.param("models")[a]]
        logits = session.logits(ctx.tokens, ctx.length, ext, n, last=op.param("last"))
        out = logits if out is None else where_rows(arm == a, logits, out)
    return (out,)


RULES = {"draft_arm": draft_arm, "model_select": model_select}
