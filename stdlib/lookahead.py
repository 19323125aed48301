"""Lookahead decoding (Fu et al. 2024): Jacobi iteration over a window of guessed future tokens, and a
pool of the n-grams its trajectory produces, drafted from when their first token is the context's last.

Each row keeps the last N-1 Jacobi iterates over W future positions (levels [N-1, W], oldest first)
and an n-gram pool (pool [V, G, N-1]: for each first token, the continuations of the G n-grams last
collected with it, most recent first). A round:

    levels, pool = lookahead_state[...]()                   # carried across rounds
    guess = lookahead_guess(ctx, levels)                     # the newest iterate [B, W]
    logits = model_call(ctx, guess)                          # the lookahead branch: one target call of its own
    levels', pool' = lookahead_collect(ctx, levels, pool, logits)
        # the next iterate x'_i = argmax p(. | ctx, guess[:i]); the n-grams read along the diagonals of
        # (levels, x'): (level_0[i], level_1[i+1], ..., x'[i+N-1]), each token predicted after the one before it
    d, q, m = lookahead_draft(ctx, pool')                    # the newest n-gram starting with ctx's last token
    ... verification over ctx ++ d, then lookahead_store(levels', pool')

Unlike the paper, the lookahead branch is not fused with verification into one call (that needs
the paper's 2-D attention mask over both branches): a round costs two target calls, the lookahead
one over W guessed tokens. The guess, the pool and the drafts are functions of the context and of
the target's argmax only (no draw of this round), and q is one-hot on each draft, so rejection
sampling keeps the output the target's.

    >>> pool = torch.full((1, 4, 2, 2), -1)
    >>> pool = insert(pool, torch.tensor([1]), torch.tensor([[2, 3]]))
    >>> pool = insert(pool, torch.tensor([1]), torch.tensor([[0, 0]]))
    >>> pool[0, 1].tolist()                    # most recent first
    [[0, 0], [2, 3]]
    >>> insert(pool, torch.tensor([1]), torch.tensor([[2, 3]]))[0, 1].tolist()   # seen again: moved to the front
    [[2, 3], [0, 0]]
"""
from __future__ import annotations

import torch

from decspec.compiler.lower import Lowering, Proposal
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.drafts import refuse_stop
from decspec.stdlib.registry import Component, Contract, Param, register

EMPTY = -1


def initial(batch: int, vocab: int, window: int, ngram: int, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A generation's first state: no iterate yet (the first guess comes from the context), an empty pool."""
    return (torch.full((batch, ngram - 1, window), EMPTY, dtype=torch.long),
            torch.full((batch, vocab, pool, ngram - 1), EMPTY, dtype=torch.long))


def filled(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Levels with the unset ones (first round) taken from the context: its last W tokens, cyclically
    when it is shorter (the paper starts from tokens of the prompt). -> [B, N-1, W]"""
    W = levels.shape[-1]
    L = ctx_length.clamp(min=1)[:, None]  # [B, 1]
    pos = (L - W + torch.arange(W, device=levels.device)[None, :]) % L  # [B, W]
    start = ctx_tokens.gather(1, pos)  # [B, W]
    return torch.where(levels < 0, start[:, None, :], levels)


def guess(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The newest iterate: the tokens the lookahead branch feeds after the context. -> [B, W]"""
    return filled(ctx_tokens, ctx_length, levels)[:, -1]


def insert(pool: torch.Tensor, first: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """Put each row's n-gram (first, cont...) at the front of pool[first] (moved there if present; the
    oldest falls off). pool [B,V,G,N-1], first [B], cont [B,N-1] -> pool' (a new tensor)

    No sort and no indexed assignment: the staying entries' new slots are a running count, and the row
    goes back with one scatter (static shapes, a stable order, what torch.compile and torch-mlir lower)."""
    B, _, G, M = pool.shape
    index = first[:, None, None, None].expand(B, 1, G, M)
    cur = pool.gather(1, index)[:, 0]  # [B, G, M]: pool[first]
    stay = ~(cur == cont[:, None, :]).all(-1)  # [B, G]: the entries that stay (a copy of cont moves to the front)
    slot = stay.long().cumsum(1)  # [B, G]: a staying entry's slot, after cont at 0, in its order (>= G: it falls off)
    to = (torch.arange(G, device=pool.device)[None, :, None] == slot[:, None, :]) & stay[:, None, :]  # [B, G to, G from]
    moved = (to[..., None] * cur[:, None]).sum(2)  # [B, G, M]: each slot's one source, if any
    row = torch.where(to.any(-1)[..., None], moved, EMPTY)
    row = torch.cat([cont[:, None, :], row[:, 1:]], 1)
    return pool.scatter(1, index, row[:, None])


def collect(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, levels: torch.Tensor, pool: torch.Tensor,
            logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Jacobi step and the n-grams of its trajectory. levels [B,N-1,W], pool [B,V,G,N-1],
    logits [B,W+1,V] (the target after ctx ++ guess) -> (levels', pool')"""
    W, N = levels.shape[-1], levels.shape[1] + 1
    new = logits[:, :W].argmax(-1)  # [B, W]: x'_i = argmax p(. | ctx, guess[:i])
    traj = torch.cat([filled(ctx_tokens, ctx_length, levels), new[:, None, :]], 1)  # [B, N, W], oldest first
    for i in range(W - N + 1):  # the diagonal from column i: each token was predicted after the one before it
        gram = torch.stack([traj[:, lvl, i + lvl] for lvl in range(N)], 1)  # [B, N]
        pool = insert(pool, gram[:, 0], gram[:, 1:])
    return traj[:, 1:], pool


def drafts(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, pool: torch.Tensor, k: int, vocab: int):
    """The newest pooled n-gram whose first token is each row's last token: its next k tokens, one-hot q.
    -> d [B,K], q [B,K,V] (zero rows past the count), count [B] (k, or 0 without such an n-gram)"""
    last = ctx_tokens.gather(1, (ctx_length - 1).clamp(min=0)[:, None])[:, 0]  # [B]
    best = pool[torch.arange(pool.shape[0], device=pool.device), last, 0, :k]  # [B, K]
    found = (best >= 0).all(-1)  # [B]
    count = torch.where(found, k, 0)
    d = torch.where(found[:, None], best, 0)
    drafted = torch.arange(k, device=d.device)[None, :] < count[:, None]
    q = torch.nn.functional.one_hot(d, vocab).to(torch.float32) * drafted[..., None]
    return d, q, count


def lower_lookahead(lw: Lowering, inst, ctx):
    W, N, G = inst.arg("window"), inst.arg("ngram"), inst.arg("pool")
    if N > W:
        raise DecError(f"lookahead's ngram ({N}) is larger than its window ({W}): no diagonal of the window holds an n-gram",
                       inst.span, hint=f"use window >= {N}")
    refuse_stop(lw, "lookahead", "remove `stop`; lookahead drafts one pooled n-gram (ngram - 1 tokens) or nothing")
    role = lw.vocab_role()
    b = lw.b
    levels, pool = b.emit("lookahead_state", [], window=W, ngram=N, pool=G, vocab=role)
    (window,) = b.emit("lookahead_guess", [ctx, levels])
    logits = lw.model_logits([ctx, window], role, last=False)  # [B, W+1, V]: the lookahead branch
    levels, pool = b.emit("lookahead_collect", [ctx, levels, pool, logits])
    tokens, probs, count = b.emit("lookahead_draft", [ctx, pool], max=N - 1, vocab=role)

    def learn(lw: Lowering, verify) -> None:
        with lw.b.located(inst.span, inst.name) as b:
            b.emit("lookahead_store", [levels, pool], window=W, ngram=N, pool=G, vocab=role)

    return Proposal(tokens, probs, count, N - 1, learn=learn)


register(
    Component(
        "draft",
        "lookahead",
        (
            Param("window", "int", default=5, low=1, high=64, doc="W: future positions the Jacobi iteration guesses"),
            Param("ngram", "int", default=4, low=2, high=16, doc="N: n-gram size (drafts are its last N-1 tokens; N-1 Jacobi levels are kept)"),
            Param("pool", "int", default=8, low=1, high=64, doc="n-grams kept per first token, most recent first"),
        ),
        "Lookahead decoding: each round, a target call over the context and a window of W guessed tokens makes the next "
        "Jacobi iterate (argmax at each position); the n-grams along the diagonals of the last N-1 iterates and the new one "
        "enter a per-row pool keyed by their first token, and the newest pooled n-gram starting with the context's last "
        "token is drafted (its N-1 following tokens; none when there is none). No draft model; the lookahead branch is a "
        "target call of its own, not fused with verification.",
        Contract(True, "the window, the pool and the drafts are functions of the context and of the target's argmax only, "
                       "fixed before the round draws anything; each draft token comes with its draft distribution q, one-hot "
                       "on the token, which the verifier receives"),
        lower_lookahead,
        cite="Fu et al. 2024, Break the Sequential Dependency of LLM Inference Using Lookahead Decoding",
    )
)
