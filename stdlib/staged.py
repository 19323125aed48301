"""Staged drafting: the draft's own tokens made by speculative decoding of the draft with a smaller draft.

    propose = staged(draft, inner = lookup(ngram = 2, max = 4), max = 8)
    propose = staged(draft, inner = autoregressive(early_exit(target, layer = 1), max = 2), max = 8)

Spector & Ré 2023 ("Accelerating LLM Inference with Staged Speculative Decoding") speed up the draft
itself: its tokens come from speculative sampling against a second-stage draft (their Katz n-gram
model), so one draft call scores several tokens. It lowers to

    staged_loop[max=K](ctx) ^stage(ctx') {              # ctx' = ctx ++ the drafts so far, per row
        d2, q2, m2 = <inner draft source over ctx'>      # e.g. ngram_lookup, or a draft loop
        p = softmax(pipeline(model_call[draft](ctx', d2, last=false)))   # [B, J+1, V]
        n = rejection_accept(p, q2, d2, m2, u); x ~ rejection_residual(p, q2, n, m2)
        yield splice(d2, n, x), p, n
    }

and the loop appends each inner round's n + 1 tokens, with p at each of their positions, until every
row holds K drafts. The outer verifier receives q = p, the first-stage draft's own distribution at
every drafted position, and inner rejection sampling makes each drafted token distributed exactly as
that q given the tokens before it (Leviathan et al. 2023, Theorem 1): to the outer round the staged
draft is indistinguishable from `autoregressive(draft, max = K)`, so outer verification stays
lossless. Every round drafts exactly K tokens (the last inner round's surplus is cut): how many come
is fixed before any is drawn. `stop` applies to the inner draft source, when it reads a model.
"""
from __future__ import annotations

from decspec.compiler.ir import CTX
from decspec.compiler.lower import Lowering, Proposal
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.registry import Component, Contract, Param, register


INNER = ("lookup", "autoregressive")  # the inner draft sources staged takes


def lower_staged(lw: Lowering, inst, ctx):
    k, inner = inst.arg("max"), inst.arg("inner")
    if inner.name not in INNER:  # a chain, no state across rounds, no second staging: what the inner round verifies
        raise DecError(f"staged's inner draft source must be {' or '.join(INNER)}, found '{inner.name}'", inner.span,
                       hint="use lookup(...) or autoregressive(model, ...) as the inner draft")
    role = lw.role(inst.arg("model"))
    outer = lw.nested("stage")
    b = lw.b
    inner_ctx = b.input(CTX)  # ctx ++ the drafts so far, per row
    with b.located(inner.span, inner.name):
        proposal: Proposal = inner.component.lower(lw, inner, inner_ctx)
    b = lw.b
    # the inner round: the first-stage draft verifies the inner drafts by rejection sampling, as `rejection` does
    p = lw.probs(lw.model_logits([inner_ctx, proposal.tokens], role, last=False))  # [B, J+1, V]: the draft's q at each position
    u = b.emit("uniform", [], shape=("B", proposal.max))[0]
    n = b.emit("rejection_accept", [p, proposal.probs, proposal.tokens, proposal.count, u])[0]
    residual = b.emit("rejection_residual", [p, proposal.probs, n, proposal.count])[0]
    tokens = b.emit("splice", [proposal.tokens, n, lw.sample(residual)])[0]  # [B, J+1]: tokens[:, :n+1] are the draft's
    body = b.build((tokens, p, n))
    lw.restore(outer)
    drafts, probs, count = lw.b.emit("staged_loop", [ctx], region=body, max=k)
    return Proposal(drafts, probs, count, k)


register(
    Component(
        "draft",
        "staged",
        (
            Param("model", "model", doc="the first-stage draft model: its distribution q is what the verifier receives"),
            Param("inner", "draft", doc="the second-stage draft source that drafts for `model` (lookup, or autoregressive with a smaller model)"),
            Param("max", "int", default=8, low=1, high=64, doc="tokens drafted per round"),
        ),
        "Staged drafting: the draft's `max` tokens are produced by speculative sampling of `model` with the inner draft "
        "source, one `model` call per inner round scoring the inner drafts; each drafted token carries `model`'s own "
        "distribution q at its position.",
        Contract(True, "inner rejection sampling draws each draft token exactly from the first-stage draft's distribution q, "
                       "which the verifier receives; the round always drafts `max` tokens"),
        lower_staged,
        cite="Spector & Ré 2023, Accelerating LLM Inference with Staged Speculative Decoding",
    )
)
