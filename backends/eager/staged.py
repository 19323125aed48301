"""The rules of staged drafting (stdlib/staged.py: `staged_loop`) and of forced drafts followed by another draft source
(stdlib/drafts.py: `forced_then`), for the eager and exact backends alike.

Each step runs the body, one inner speculative round, over each row's context followed by the drafts it
has so far, and appends the n + 1 tokens the round produced (with the first-stage draft's distribution
at each, which the body yields) until every row has `max` drafts. On the exact backend the body's
draws split the rows: what the loop carries is mapped onto the new rows after each step (Run.align).
"""
from __future__ import annotations

import torch

from decspec.backends.interpreter import run_graph
from decspec.backends.runtime import Context


def extended(ctx: Context, drafts: torch.Tensor, count: torch.Tensor) -> Context:
    """ctx ++ drafts[:, :count] per row. tokens [B, S], drafts [B, K], count [B] -> Context (length + count)."""
    return Context(extended_tokens(ctx.tokens, ctx.length, drafts, count), ctx.length + count, ctx.start)


def extended_tokens(tokens: torch.Tensor, length: torch.Tensor, drafts: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """A copy of tokens [B, S] with drafts[:, :count] [B, K] written after each row's length [B] (static shapes)."""
    K = drafts.shape[1]
    cols = torch.arange(K, device=drafts.device)[None, :]
    pos = (length[:, None] + cols).clamp(max=tokens.shape[1] - 1)  # [B, K]
    tokens = tokens.clone()
    tokens.scatter_(1, pos, torch.where(cols < count[:, None], drafts, tokens.gather(1, pos)))
    return tokens


def staged_loop(state, op, ctx):
    """Inner rounds until every row holds `max` drafts: -> drafts [B, K], q [B, K, V], count [B] (= K)."""
    align = getattr(state, "align", lambda x: x)  # the exact backend's rows split inside the body
    K = op.param("max")
    drafts = torch.zeros(state.batch, K, dtype=torch.long, device=state.device)
    count = torch.zeros(state.batch, dtype=torch.long, device=state.device)
    probs = None
    for _ in range(K):  # every inner round adds at least one token
        tokens, p, n = run_graph(op.region, [extended(align(ctx), drafts, count)], state, state.rules, state.backend)
        ctx, drafts, count, tokens, p, n = (align(x) for x in (ctx, drafts, count, tokens, p, n))
        probs = p.new_zeros(*drafts.shape, p.shape[-1]) if probs is None else align(probs)
        for j in range(tokens.shape[1]):  # token j of the inner round goes to position count + j, while j <= n and there is room
            pos = count + j
            put = (j <= n) & (pos < K)
            at = pos.clamp(max=K - 1)
            rows = torch.arange(drafts.shape[0], device=drafts.device)
            drafts[rows, at] = torch.where(put, tokens[:, j], drafts[rows, at])
            probs[rows, at] = torch.where(put[:, None], p[:, j], probs[rows, at])
        count = torch.minimum(count + n + 1, torch.tensor(K))
        if bool((count >= K).all()):
            break
    return drafts, probs, count


def forced_then(state, op, ctx, forced, forced_q, forced_n):
    """The forced drafts, then the body's over ctx ++ forced[:forced_n]: -> drafts [B, max], q [B, max, V], count [B]."""
    from decspec.backends.eager.rules import mark_drafted

    align = getattr(state, "align", lambda x: x)  # the exact backend's rows split inside the body
    tokens, q, n = run_graph(op.region, [extended(ctx, forced, forced_n)], state, state.rules, state.backend)
    forced, forced_q, forced_n, tokens, q, n = (align(x) for x in (forced, forced_q, forced_n, tokens, q, n))
    drafts, probs, count = forced_then_drafts(forced, forced_q, forced_n, tokens, q, n, op.param("max"))
    return mark_drafted(drafts, count), probs, count


def forced_then_drafts(forced, forced_q, forced_n, tokens, q, n, k: int):
    """Row b's forced drafts forced[b, :forced_n[b]], then the body's tokens[b, :n[b]] (q likewise), in a block of k
    (static shapes: also the inductor backend's kernel). -> drafts [B, k] (0 past the count), q [B, k, V], count [B]"""
    B, K1 = forced.shape
    drafts = torch.zeros(B, k, dtype=torch.long, device=forced.device)
    probs = q.new_zeros(B, k, q.shape[-1])
    drafts[:, :K1], probs[:, :K1] = forced, forced_q.to(q)
    rows = torch.arange(B, device=forced.device)
    for j in range(tokens.shape[1]):  # the body's token j goes right after the row's forced ones
        put = j < n
        at = (forced_n + j).clamp(max=k - 1)
        drafts[rows, at] = torch.where(put, tokens[:, j], drafts[rows, at])
        probs[rows, at] = torch.where(put[:, None], q[:, j], probs[rows, at])
    return drafts, probs, forced_n + n


RULES = {"staged_loop": staged_loop, "forced_then": forced_then}
