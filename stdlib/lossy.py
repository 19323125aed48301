"""Lossy verifiers: accept drafts the target finds plausible enough, instead of exactly.

Both accept a prefix of the drafts by a threshold on the target's distribution p at each drafted
position (p: softmax of the sampler pipeline over the target's logits, as every verifier sees it),
with no draw; the token after the accepted prefix is then sampled from p at that position (the
bonus token from p_m after a full accept). The output is not the target's distribution: drafts
the threshold lets through are kept at the draft's rates. `decspec verify` measures by how much
(the exact TV distance on table models); `decspec check` says lossy, and why.

Under a greedy sampler p is one-hot, so both accept exactly the drafts that equal the target's
argmax and add the target's argmax: greedy decoding, token for token (the analysis says lossless).
"""
from __future__ import annotations

from decspec.stdlib.registry import Component, Contract, Param, register

_GREEDY = "under a greedy sampler p is one-hot: only the target's own argmax passes, and the added token is the argmax"


def _target_probs(lw, ctx, target, proposal):
    logits = lw.model_logits([ctx, proposal.tokens], lw.role(target), last=False)  # [B, K+1, V]
    return lw.probs(logits)


def _accept_then_sample(lw, ctx, target, proposal, op: str, **params):
    """n = op(p, d, m): the accepted prefix; then x ~ p_n (a bonus token after a full accept)."""
    b = lw.b
    p = _target_probs(lw, ctx, target, proposal)
    n = b.emit(op, [p, proposal.tokens, proposal.count], **params)[0]
    x = lw.sample(b.emit("take_dist", [p, n])[0])  # [B]: the target's token after the accepted prefix
    return b.emit("splice", [proposal.tokens, n, x])[0], n


def lower_typical(lw, inst, ctx, target, proposal):
    # accept d_i while p_i(d_i) > min(epsilon, delta * exp(-H(p_i))); then x ~ p_n
    return _accept_then_sample(lw, ctx, target, proposal, "typical_accept", epsilon=float(inst.arg("epsilon")), delta=float(inst.arg("delta")))


def lower_topk_match(lw, inst, ctx, target, proposal):
    # accept d_i while fewer than k tokens are strictly more likely under p_i (and p_i(d_i) > 0); then x ~ p_n
    return _accept_then_sample(lw, ctx, target, proposal, "topk_accept", k=inst.arg("k"))


register(
    Component(
        "verifier",
        "typical",
        (
            Param("epsilon", "float", default=0.3, low=0.0, high=1.0, doc="hard threshold: a draft with p > epsilon is always accepted"),
            Param("delta", "float", default=0.09, low=0.0, high=1.0, doc="entropy-dependent threshold: delta * exp(-H(p))"),
        ),
        "Medusa's typical acceptance: accept d_i while the target's p_i(d_i) > min(epsilon, delta * exp(-H(p_i))) "
        "(H in nats, p after the sampler pipeline); the token after the accepted prefix is sampled from p at that "
        "position (Medusa's default; its `fast` mode takes the argmax, which `sampler = greedy` gives). The defaults are "
        "Medusa's `evaluate_posterior` arguments (its generate loop passes epsilon = 0.09, delta = 0.3).",
        Contract(False, "typical acceptance keeps every draft the target finds plausible enough, at the draft's rates: "
                        "the output is biased towards the draft (Cai et al. 2024)", greedy=_GREEDY),
        lower_typical,
        cite="Cai et al. 2024, Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding Heads",
    )
)
register(
    Component(
        "verifier",
        "topk_match",
        (Param("k", "int", default=2, low=1, high=1024, doc="a draft is accepted while it is among the target's k most likely tokens"),),
        "Top-k acceptance: accept d_i while fewer than k tokens are strictly more likely than d_i under the target's "
        "p_i (and p_i(d_i) > 0); the token after the accepted prefix is sampled from p at that position.",
        Contract(False, "any of the target's k most likely tokens is kept at the draft's rate, not the target's", greedy=_GREEDY),
        lower_topk_match,
    )
)
