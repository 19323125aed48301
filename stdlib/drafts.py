"""Draft sources: where proposed tokens come from.

A draft source lowers to ops that produce a Proposal: tokens d [B,K], the probabilities q [B,K,V]
each d_i was sampled from, and per-row draft counts m [B] (an exit policy may stop rows early).
"""
from __future__ import annotations

from decspec.compiler.ir import CTX, Type
from decspec.compiler.lower import Lowering, Proposal
from decspec.stdlib.registry import Component, Contract, Param, register


def lower_autoregressive(lw: Lowering, inst, ctx):
    """Draft loop: step i feeds ctx ++ d[:i] to the draft, samples d_i ~ q_i, asks the exit policy."""
    k = inst.arg("max")
    role = lw.role(inst.arg("model"))
    outer = lw.nested("body")
    b = lw.b
    body_ctx = b.input(CTX)
    drafts = b.input(Type("tok", ("B", k)))
    step = b.input(Type("i64"))
    logits = b.emit("model_call", [body_ctx, drafts, step], model=role, last=True)[0]  # [B, V]
    q = lw.probs(logits)  # [B, V]
    token = lw.sample(q)  # [B]
    stop = lw.stop_flag(logits, token)
    body = b.build((token, q) if stop is None else (token, q, stop))
    lw.restore(outer)
    tokens, probs, count = lw.b.emit("draft_loop", [ctx], region=body, max=k)
    return Proposal(tokens, probs, count, k)


register(
    Component(
        "draft",
        "autoregressive",
        (
            Param("model", "model", doc="the draft model"),
            Param("max", "int", default=4, low=1, high=64, doc="most tokens drafted per round"),
        ),
        "Sample up to `max` tokens from a draft model, one at a time, through the same sampler pipeline.",
        Contract(True, "each draft token is sampled from the draft's own distribution q, which the verifier receives"),
        lower_autoregressive,
        cite="Leviathan et al. 2023; Chen et al. 2023",
    )
)
