"""Token recycling (Luo et al. 2024): drafts read from an adjacency matrix of the target's own past guesses.

Each row keeps a matrix M [V, C]: M[t] holds the C tokens the target scored highest the last time
it read token t (the candidates it "threw away" when it committed only one of them). Every round,
every position the target scored updates M, rejected drafts included; drafts walk the matrix from
the context's last token (the chain: d_1 = M[last, 0], d_2 = M[d_1, 0], ...), each with a one-hot q.

    recycle_state[candidates=C, vocab=target]() -> adj i64[B,V,C]          # the matrix going into the round
    recycle_draft[max=K, vocab=target](ctx, adj) -> d [B,K], q [B,K,V], m [B]
    ... verification: target logits [B,K+1,V] over ctx ++ d ...
    recycle_update[candidates=C](adj, ctx, d, m, logits) -> adj' i64[B,V,C]
    recycle_store[candidates=C, vocab=target](adj')                      # the matrix the next round reads

The matrix is a function of earlier rounds' target scores only, fixed before this round draws
anything, so rejection sampling (or exact match) keeps the output the target's. The runtime carries
it between rounds per row (backends/draft_state.py); the exact backend carries one per world.

    >>> adj = torch.full((1, 4, 2), -1)
    >>> adj[0, 2] = torch.tensor([3, 1]); adj[0, 3] = torch.tensor([0, 2])
    >>> d, count = walk(adj, torch.tensor([2]), 4)
    >>> d.tolist(), count.tolist()      # 2 -> 3 -> 0 -> (M[0] unknown): two drafts
    ([[3, 0, 0, 0]], [2])
"""
from __future__ import annotations

import torch

from decspec.compiler.lower import Lowering, Proposal
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.drafts import refuse_stop
from decspec.stdlib.registry import Component, Contract, Param, register

UNSEEN = -1  # M[t, :] before the target has read t in this generation


def empty(batch: int, vocab: int, candidates: int) -> torch.Tensor:
    """The matrix of a generation's first round: nothing recycled yet. -> i64[B, V, C]"""
    return torch.full((batch, vocab, candidates), UNSEEN, dtype=torch.long)


def walk(adj: torch.Tensor, last: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chain d_i = M[d_{i-1}, 0] from d_0 = last, stopping at an unseen token.
    adj [B,V,C], last [B] -> drafts [B,K] (0 past the count), count [B]"""
    B = adj.shape[0]
    rows = torch.arange(B, device=adj.device)
    drafts = torch.zeros(B, k, dtype=torch.long, device=adj.device)
    count = torch.zeros(B, dtype=torch.long, device=adj.device)
    alive = torch.ones(B, dtype=torch.bool, device=adj.device)
    cur = last
    for i in range(k):
        nxt = adj[rows, cur, 0]  # [B]
        alive = alive & (nxt >= 0)
        drafts[:, i] = torch.where(alive, nxt, 0)
        count += alive.long()
        cur = nxt.clamp(min=0)
    return drafts, count


def drafts(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, adj: torch.Tensor, k: int, vocab: int):
    """recycle_draft: the chain from each row's last token, with one-hot q (zero rows past the count).
    -> d [B,K], q [B,K,V], count [B]"""
    last = ctx_tokens.gather(1, (ctx_length - 1).clamp(min=0)[:, None])[:, 0]  # [B]
    d, count = walk(adj, last, k)
    drafted = torch.arange(k, device=d.device)[None, :] < count[:, None]  # [B, K]
    q = torch.nn.functional.one_hot(d, vocab).to(torch.float32) * drafted[..., None]
    return d, q, count


def sibling_rank(parents: tuple[int, ...]) -> list[int]:
    """Each node's place among its parent's children (0: the first): the matrix column it reads."""
    seen: dict[int, int] = {}
    rank = []
    for p in parents:
        rank.append(seen.get(p, 0))
        seen[p] = rank[-1] + 1
    return rank


def tree_drafts(ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, adj: torch.Tensor, parents: tuple[int, ...], vocab: int):
    """recycle_tree: the static tree over the matrix: the j-th child of a node reading token t is M[t, j]
    (the root reads the context's last token); a node under an unseen row holds token 0, which only costs
    a wasted node. -> tokens [B,N] (breadth-first), one-hot q [B,N,V], count [B] (= N)"""
    B, N = adj.shape[0], len(parents)
    rows = torch.arange(B, device=adj.device)
    last = ctx_tokens.gather(1, (ctx_length - 1).clamp(min=0)[:, None])[:, 0]  # [B]
    tokens = torch.zeros(B, N, dtype=torch.long, device=adj.device)
    for n, (p, j) in enumerate(zip(parents, sibling_rank(parents))):
        at = last if p == 0 else tokens[:, p - 1]  # the token the parent reads
        tokens[:, n] = adj[rows, at, j].clamp(min=0)
    q = torch.nn.functional.one_hot(tokens, vocab).to(torch.float32)
    return tokens, q, torch.full((B,), N, dtype=torch.long, device=adj.device)


def update(adj: torch.Tensor, ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, d: torch.Tensor, count: torch.Tensor,
           logits: torch.Tensor) -> torch.Tensor:
    """recycle_update: M[t_j] = the C tokens of highest logit at every position j <= count the target
    scored, where t_0 is the context's last token and t_j = d_j (rejected drafts included); a token
    read twice keeps its later position's candidates. adj [B,V,C], logits [B,K+1,V] -> adj' [B,V,C]"""
    B, V, C = adj.shape
    rows = torch.arange(B, device=adj.device)
    last = ctx_tokens.gather(1, (ctx_length - 1).clamp(min=0)[:, None])  # [B, 1]
    read = torch.cat([last, d], 1)  # [B, K+1]: the token each scored position read
    top = logits.topk(min(C, V), dim=-1).indices  # [B, K+1, min(C, V)], best first
    if C > V:
        top = torch.cat([top, top.new_full((*top.shape[:2], C - V), UNSEEN)], -1)
    out = adj.clone()
    for j in range(read.shape[1]):
        scored = (j <= count)[:, None]  # [B, 1]
        out[rows, read[:, j]] = torch.where(scored, top[:, j], out[rows, read[:, j]])
    return out


def lower_recycle(lw: Lowering, inst, ctx):
    """recycle_state -> recycle_draft (or recycle_tree); after verification (`learn`), recycle_update -> recycle_store."""
    from decspec.compiler.ops_tree import tree_depth, tree_parents
    from decspec.stdlib.trees import _refuse_slots, check_widths

    k, c, widths = inst.arg("max"), inst.arg("candidates"), tuple(inst.arg("widths"))
    refuse_stop(lw, "recycle", "remove `stop`; recycle drafts only as far as the matrix has seen the chain's tokens")
    vocab = lw.vocab_role()  # the matrix is over the target's vocabulary (every bound model shares it)
    b = lw.b
    parents = None
    if widths:
        widths = check_widths(widths, inst.span, "recycle's 'widths'")
        if max(widths) > c:
            raise DecError(f"recycle's tree takes {max(widths)} children of a node from a matrix row of {c} candidates", inst.span,
                           hint=f"use candidates >= {max(widths)}")
        _refuse_slots(lw)
        parents = tree_parents(widths)
    (adj,) = b.emit("recycle_state", [], candidates=c, vocab=vocab)
    if parents is None:
        tokens, probs, count = b.emit("recycle_draft", [ctx, adj], max=k, vocab=vocab)
    else:
        tokens, probs, count = b.emit("recycle_tree", [ctx, adj], parents=parents, vocab=vocab)

    def learn(lw: Lowering, verify) -> None:
        scored = [logits for logits, read in lw.read_at.items() if read[:2] == [ctx, tokens]]
        scored += [op.outputs[0] for op in lw.b.ops if op.name == "tree_call" and list(op.inputs) == [ctx, tokens]]
        if not scored:
            raise DecError(f"`recycle` learns from the target's scores of the drafts, which verifier '{verify.name}' does not "
                           "compute over ctx ++ drafts", verify.span, hint="verify with `rejection` or `greedy`")
        with lw.b.located(inst.span, inst.name) as b:
            (new,) = b.emit("recycle_update", [adj, ctx, tokens, count, scored[-1]], candidates=c)
            b.emit("recycle_store", [new], candidates=c, vocab=vocab)

    if parents is not None:
        return Proposal(tokens, probs, count, tree_depth(parents), parents=parents, learn=learn)
    return Proposal(tokens, probs, count, k, learn=learn)


register(
    Component(
        "draft",
        "recycle",
        (
            Param("max", "int", default=4, low=1, high=64, doc="most tokens drafted per round (the chain's length)"),
            Param("candidates", "int", default=8, low=1, high=64, doc="top tokens kept per matrix row (the chain reads the first)"),
            Param("widths", "list[int]", default=(), doc="a static tree instead of a chain: every node at depth d gets widths[d] "
                  "children, M[t, 0..widths[d]-1] for the token t it reads (each <= candidates); replaces `max`"),
        ),
        "Token recycling: an adjacency matrix M[V, candidates], per row, holds for each token the target's top "
        "`candidates` next tokens from the last time the target read it (every scored position, rejected drafts "
        "included, updates it after each round); the drafts walk its first column from the context's last token, "
        "d_1 = M[last, 0], d_2 = M[d_1, 0], ..., up to `max`, stopping at a token the target has not read yet. With `widths`, "
        "the paper's static tree instead: a node reading token t gets the children M[t, 0..w-1], verified in one tree call by "
        "`greedy` or `multi_rejection`. No draft model.",
        Contract(True, "the matrix is a function of earlier rounds' target scores only, fixed before the round draws anything; "
                       "each draft token comes with its draft distribution q, one-hot on the token, which the verifier receives"),
        lower_recycle,
        cite="Luo et al. 2024, Turning Trash into Treasure: Accelerating Inference of Large Language Models with Token Recycling",
    )
)
