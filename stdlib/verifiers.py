"""Verifiers: which drafted tokens the target accepts, and the token it adds.

A verifier lowers to ops that score the proposal with one target call over ctx ++ d and return
(new tokens [B,K+1], accepted [B]): the round commits new_tokens[:, :accepted+1].
"""
from __future__ import annotations

from decspec.stdlib.registry import Component, Contract, register


def _target_probs(lw, ctx, target, proposal):
    logits = lw.model_logits([ctx, proposal.tokens], lw.role(target), last=False)  # [B, K+1, V]
    return lw.probs(logits)


def lower_rejection(lw, inst, ctx, target, proposal):
    b = lw.b
    p = _target_probs(lw, ctx, target, proposal)
    u = b.emit("uniform", [], shape=("B", proposal.max))[0]
    # accept d_i while u_i < p_i(d_i) / q_i(d_i)
    n = b.emit("rejection_accept", [p, proposal.probs, proposal.tokens, proposal.count, u])[0]
    # rejected at n: x ~ norm(max(0, p_n - q_n)); all accepted: bonus x ~ p_m
    residual = b.emit("rejection_residual", [p, proposal.probs, n, proposal.count])[0]
    x = lw.sample(residual)
    return b.emit("splice", [proposal.tokens, n, x])[0], n


def lower_greedy(lw, inst, ctx, target, proposal):
    if proposal.parents is not None:  # a token tree: follow the nodes that match (stdlib/trees.py)
        from decspec.stdlib.trees import lower_tree_greedy

        return lower_tree_greedy(lw, inst, ctx, target, proposal)
    b = lw.b
    p = _target_probs(lw, ctx, target, proposal)
    t = lw.sample(p)  # the target's own token at every position: [B, K+1]
    n = b.emit("match_len", [proposal.tokens, t, proposal.count])[0]
    x = b.emit("take", [t, n])[0]
    return b.emit("splice", [proposal.tokens, n, x])[0], n


register(
    Component(
        "verifier",
        "rejection",
        (),
        "Speculative sampling: accept d_i with probability min(1, p(d_i)/q(d_i)); on the first rejection "
        "sample from norm(max(0, p - q)); after a full accept sample a bonus token from p.",
        Contract(True, "rejection sampling (Leviathan et al. 2023) reproduces p exactly for any draft q"),
        lower_rejection,
        cite="Leviathan et al. 2023, Fast Inference from Transformers via Speculative Decoding; Chen et al. 2023",
    )
)
register(
    Component(
        "verifier",
        "greedy",
        (),
        "Exact match: the target samples its own token at each draft position (its argmax under a greedy "
        "sampler); drafts are accepted while they equal it, and the first differing target token is kept. "
        "Over a token tree: the longest path whose every node is the target's token at its parent.",
        Contract(True, "every emitted token is the target's own sample; drafts only decide how many come per round"),
        lower_greedy,
        trees=True,
    )
)
