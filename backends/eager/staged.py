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
    """tokens [B, S] with drafts[b, :count[b]] [B, K] at length[b] onward (clamped to the buffer), a new tensor."""
    K = drafts.shape[1]
    cols = torch.arange(K, device=drafts.device)[None, :]
    pos = (length[:, None] + cols).clamp(max=tokens.shape[1] - 1)  # [B, K]
    return tokens.scatter(1, pos, torch.where(cols < count[:, None], drafts, tokens.gather(1, pos)))


def staged_loop(state, op, ctx):
    """Inner rounds until every row holds `max` drafts: -> drafts [B, K], q [B, K, V], count [B] (= K).

    The loop stops once every row is full, but the draws of the inner rounds it skips are still taken (and
    dropped): a round consumes the random stream as its graph says, `max` inner rounds, as the inductor
    backend's round (which runs them all, masked) takes it, so the same seed gives the same tokens on both."""
    align = getattr(state, "align", lambda x: x)  # the exact backend's rows split inside the body
    K = op.param("max")
    drafts = torch.zeros(state.batch, K, dtype=torch.long, device=state.device)
    count = torch.zeros(state.batch, dtype=torch.long, device=state.device)
    probs = None
    for run in range(K):  # every inner round adds at least one token
        tokens, p, n = run_graph(op.region, [extended(align(ctx), drafts, count)], state, state.rules, state.backend)
        ctx, drafts, count, tokens, p, n = (align(x) for x in (ctx, drafts, count, tokens, p, n))
        probs = p.new_zeros(*drafts.shape, p.shape[-1]) if probs is None else align(probs)
        drafts, probs, count = append(drafts, probs, count, tokens, p, n)
        if bool((count >= K).all()):
            skip_draws(state, op.region, K - 1 - run)
            break
    return drafts, probs, count


def append(drafts: torch.Tensor, probs: torch.Tensor, count: torch.Tensor, tokens: torch.Tensor, p: torch.Tensor,
           n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One inner round's tokens [B, J+1] (tokens[:, :n+1] are the draft's) and p [B, J+1, V] put after each row's
    count [B] drafts in drafts [B, K] and probs [B, K, V], up to K. Masks, not index writes: the compiled round
    (inductor) computes the same. -> drafts, probs, count (at most K)"""
    cols = torch.arange(drafts.shape[1], device=drafts.device)[None, :]  # [1, K]
    for j in range(tokens.shape[1]):  # token j goes to position count + j, while j <= n and there is room
        hit = (cols == (count + j)[:, None]) & (j <= n)[:, None]  # [B, K]
        drafts = torch.where(hit, tokens[:, j, None], drafts)
        probs = torch.where(hit[..., None], p[:, j, None, :], probs)
    return drafts, probs, (count + n + 1).clamp(max=drafts.shape[1])


def skip_draws(state, region, runs: int) -> None:
    """Take and drop the uniform draws of `runs` runs of `region` (its nested loops' bodies `max` times each), in the
    order running it would take them. On the exact backend a uniform is symbolic: nothing is drawn."""
    for _ in range(runs):
        for op in region.ops:
            if op.name == "uniform":
                state.rules["uniform"](state, op)
            if op.region is not None:
                skip_draws(state, op.region, op.param("max", 1))


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
