"""The eager rules of the token-tree ops (compiler/ops_tree.py), in plain PyTorch.

Positions: 0 is the root (after the context), i + 1 is node i; `parents[i]` is node i's parent
position. Every rule works for any static tree (per-node widths may differ), one depth at a time,
vectorized over rows.
"""
from __future__ import annotations

import torch

from decspec.backends.tree_cache import children_table, tree_logits, walk
from decspec.compiler.ops_tree import tree_depth


def tree_call(state, op, ctx, *levels):
    """Logits at positions first..M of the tree (one model call with a tree mask; backends/tree_cache.py)."""
    session = state.sessions[op.param("model")]
    parents = op.param("parents")
    if parents is None:  # a dynamic tree: its parents [B, M] are the last input
        *levels, parents = levels
    else:
        parents = tuple(parents)
    tokens = torch.cat(levels, 1) if levels else None
    return (tree_logits(session, ctx.tokens, ctx.length, tokens, parents, op.param("first", 0)),)


def spread(counts) -> list[int]:
    """The index of each copy when distribution i is repeated counts[i] times: [2, 0, 1] -> [0, 0, 2]."""
    return [i for i, c in enumerate(counts) for _ in range(c)]


def repeat(state, op, probs):
    times = op.param("times")
    if isinstance(times, int):
        return (probs.repeat_interleave(times, dim=1),)  # [B, n, V] -> [B, n*times, V]
    return (probs[:, spread(times)],)  # [B, n, V] -> [B, sum(times), V]: a static gather, no data-dependent size


def tree_topk(state, op, probs):
    """The k most likely tokens of each of the n distributions (first on ties), q one-hot on each. [B, n, V] -> [B, n*k], [B, n*k, V]
    (k a list: k[i] children of distribution i, [B, sum(k)])"""
    B, n, V = probs.shape
    k = op.param("k")
    most = k if isinstance(k, int) else max(k)
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices[..., :most]  # [B, n, min(most, V)]
    if order.shape[-1] < most:  # more children than tokens: the extra ones repeat the least likely
        order = torch.cat([order, order[..., -1:].expand(B, n, most - order.shape[-1])], -1)
    if isinstance(k, int):
        tokens = order.reshape(B, n * k)
    else:
        tokens = order[:, spread(k), [j for c in k for j in range(c)]]  # node i's first k[i], in node order
    q = torch.zeros(B, tokens.shape[1], V, dtype=probs.dtype, device=probs.device).scatter_(-1, tokens[..., None], 1.0)
    return tokens, q


def without_drawn(q: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
    """q with the drawn tokens removed, renormalized; uniform over the tokens left when q has no mass
    left on them (a distribution every later sibling can still be drawn from). q: [..., V], drawn: [..., V] bool"""
    left = q.masked_fill(drawn, 0)
    mass = left.sum(-1, keepdim=True)
    free = (~drawn).to(q.dtype)
    return torch.where(mass > 0, left / mass.clamp_min(torch.finfo(q.dtype).tiny), free / free.sum(-1, keepdim=True).clamp_min(1))


def groups(k, n: int) -> list[int]:
    """sample_distinct's group sizes over n siblings: k each (an int), or the list k itself."""
    return [k] * (n // k) if isinstance(k, int) else list(k)


def sample_distinct(state, op, probs, u):
    """Siblings without replacement (RSD, Jeon et al. 2024), in consecutive groups (of k, or of the sizes k lists):
    sibling j of a group is drawn from q_j = norm(q with siblings 0..j-1 removed) by inverse CDF, which is
    Gumbel-top-k's distribution drawn one at a time. probs, u: [B, n, V], [B, n] -> tokens [B, n], q_j of each [B, n, V]"""
    from decspec.backends.eager.rules import sample_tokens

    B, n, V = probs.shape
    sizes = groups(op.param("k"), n)
    if max(sizes) > V:
        raise ValueError(f"sample_distinct draws {max(sizes)} distinct siblings from a vocabulary of {V} tokens: "
                         f"use widths of at most {V} (at most {V} children per node) with replacement = false")
    starts = [sum(sizes[:g]) for g in range(len(sizes))]
    drawn = torch.zeros(B, len(sizes), V, dtype=torch.bool, device=probs.device)
    tokens = torch.zeros(B, n, dtype=torch.long, device=probs.device)
    qs = torch.zeros_like(probs)
    for j in range(max(sizes)):  # sibling j of every group that has one, together
        gs = [g for g, size in enumerate(sizes) if size > j]
        at = [starts[g] + j for g in gs]
        q = without_drawn(probs[:, at], drawn[:, gs])  # [B, G, V]
        tok = sample_tokens(q, u[:, at])  # [B, G]
        drawn[:, gs] = drawn[:, gs].scatter(-1, tok[..., None], True)
        tokens[:, at], qs[:, at] = tok, q
    return tokens, qs


def head_level(state, op, hidden):
    """Medusa head `depth`'s logits, one level of a head tree. hidden: [B, C] -> [B, 1, V]"""
    model = state.sessions[op.param("model")].model
    return (model.medusa(hidden)[:, op.param("depth"), None],)


def tree_build(state, op, *levels):
    """Levels (tokens [B, n_d], q [B, n_d, V]) -> tokens [B, N], q [B, N, V], drafted [B] (= N).
    A dynamic tree's parents (the last input) are its shape, a value the verifier reads beside these."""
    if op.param("nodes") is not None:  # a dynamic tree: its parents are the last input
        levels = levels[:-1]
    tokens = torch.cat(levels[0::2], 1)
    q = torch.cat(levels[1::2], 1)
    return tokens, q, torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device)


def tree_match(state, op, tokens, t, *rest):
    """The longest root path whose node at each depth equals the target's token at its parent's position."""
    if op.param("parents") is None:  # a dynamic tree: the same walk, each row over its own parents [B, N]
        (parents,) = rest
        B, D = tokens.shape[0], op.param("depth")
        want = torch.zeros(B, D, dtype=torch.long, device=tokens.device)
        path = torch.zeros(B, D, dtype=torch.long, device=tokens.device)
        n = torch.zeros(B, dtype=torch.long, device=tokens.device)
        pos = torch.zeros_like(n)
        for d in range(D):  # the target's token at the path's end so far decides the next step
            want[:, d] = t.gather(1, pos[:, None]).squeeze(1)
            path, n, pos = walk(tokens, parents, want, torch.full_like(n, d + 1))
        return path, n, pos
    parents = tuple(op.param("parents"))
    D = tree_depth(parents)
    B = tokens.shape[0]
    table = children_table(parents).to(tokens.device)
    pos = torch.zeros(B, dtype=torch.long, device=tokens.device)
    n = torch.zeros_like(pos)
    alive = torch.ones(B, dtype=torch.bool, device=tokens.device)
    path = torch.zeros(B, D, dtype=torch.long, device=tokens.device)
    for d in range(D):
        kids = table[pos]  # [B, W]
        want = t.gather(1, pos[:, None])  # [B, 1]: the target's token after the path so far
        ok = (kids >= 0) & (tokens.gather(1, kids.clamp(min=0)) == want) & alive[:, None]
        found = ok.any(1)
        child = kids.gather(1, ok.int().argmax(1, keepdim=True)).squeeze(1)
        path[:, d] = torch.where(found, child, 0)
        n += found
        pos = torch.where(found, child + 1, pos)
        alive &= found
    return path, n, pos


def accept_ratio(r: torch.Tensor, q: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """a = min(1, r(tok) / q(tok)) (1 where q(tok) = 0 < r(tok), 0 where both are 0). r, q: [B, V], tok: [B] -> [B]"""
    rd = r.gather(1, tok[:, None]).squeeze(1)
    qd = q.gather(1, tok[:, None]).squeeze(1)
    return torch.where(qd > 0, (rd / qd.clamp_min(torch.finfo(qd.dtype).tiny)).clamp(max=1), (rd > 0).to(rd.dtype))


def residual(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, r - q)), or r itself when that has no mass (r == q: the rejection had probability 0). [B, V]"""
    res = (r - q).clamp_min(0)
    mass = res.sum(-1, keepdim=True)
    return torch.where(mass > 0, res / mass.clamp_min(torch.finfo(mass.dtype).tiny), r)


def tree_rejection(state, op, p, q, tokens, u, *rest):
    """Recursive rejection over siblings (SpecInfer, Miao et al. 2024): at the current position with
    target r, try its children c in order, accept iff u_c * q_c(c) < r(c) (probability min(1, r/q));
    on a rejection r <- norm(max(0, r - q_c)); descend into an accepted child (r = p there); stop when
    every child is rejected or at a leaf. p: [B, N+1, V], q: [B, N, V], tokens, u: [B, N]
    -> path [B, D], n [B], r [B, V] (the next token's distribution: the residual, or p at a leaf)"""
    if op.param("parents") is None:
        return _tree_rejection_rows(p, q, tokens, u, rest[0], op.param("depth"))
    parents = tuple(op.param("parents"))
    D = tree_depth(parents)
    B = tokens.shape[0]
    rows = torch.arange(B, device=tokens.device)
    table = children_table(parents).to(tokens.device)  # [N+1, W]
    pos = torch.zeros(B, dtype=torch.long, device=tokens.device)
    n = torch.zeros_like(pos)
    path = torch.zeros(B, D, dtype=torch.long, device=tokens.device)
    r = p[:, 0]  # [B, V]
    alive = torch.ones(B, dtype=torch.bool, device=tokens.device)  # still descending
    for d in range(D):
        kids = table[pos]  # [B, W]
        accepted = torch.zeros_like(alive)
        for j in range(kids.shape[1]):
            c = kids[:, j]
            trying = alive & ~accepted & (c >= 0)
            c = c.clamp(min=0)
            tok, qc = tokens[rows, c], q[rows, c]  # [B], [B, V]
            acc = trying & (u[rows, c] * qc.gather(1, tok[:, None]).squeeze(1) < r.gather(1, tok[:, None]).squeeze(1))
            rej = trying & ~acc
            r = torch.where(rej[:, None], residual(r, qc), r)
            r = torch.where(acc[:, None], p[rows, c + 1], r)
            path[:, d] = torch.where(acc, c, path[:, d])
            pos = torch.where(acc, c + 1, pos)
            accepted |= acc
        n += accepted
        alive &= accepted
    return path, n, r


def _tree_rejection_rows(p, q, tokens, u, parents, D: int):
    """`tree_rejection` over a dynamic tree, each row its own parents [B, N]: node i is a child of the
    current position iff parents[:, i] == pos, tried in index order (the order the siblings were drawn)."""
    B, N = tokens.shape
    rows = torch.arange(B, device=tokens.device)
    pos = torch.zeros(B, dtype=torch.long, device=tokens.device)
    n = torch.zeros_like(pos)
    path = torch.zeros(B, D, dtype=torch.long, device=tokens.device)
    r = p[:, 0]
    alive = torch.ones(B, dtype=torch.bool, device=tokens.device)
    for d in range(D):
        accepted = torch.zeros_like(alive)
        for c in range(N):
            trying = alive & ~accepted & (parents[:, c] == pos)
            tok, qc = tokens[:, c], q[:, c]
            acc = trying & (u[:, c] * qc.gather(1, tok[:, None]).squeeze(1) < r.gather(1, tok[:, None]).squeeze(1))
            rej = trying & ~acc
            r = torch.where(rej[:, None], residual(r, qc), r)
            r = torch.where(acc[:, None], p[:, c + 1], r)
            path[:, d] = torch.where(acc, c, path[:, d])
            pos = torch.where(acc, c + 1, pos)  # later nodes' parents are > c, so no sibling after c is tried at the new pos
            accepted |= acc
        n += accepted
        alive &= accepted
    return path, n, r


def tree_expand(state, op, tokens, q, q_next, score=None, parents=None):
    """A dynamic tree's expansion (DySpec, EAGLE-2): the level's nodes (the last n of the tree so far)
    score their path's draft probability score * q(token); the k of highest score (first on ties) get
    c children each. -> parents [B, M+k*c], q_next of the expanded nodes [B, k, V], child scores [B, k*c]"""
    B, n = tokens.shape
    k, c = op.param("k"), op.param("c")
    s = q.gather(-1, tokens[..., None]).squeeze(-1)  # [B, n]
    if score is not None:
        s = score * s
    if parents is None:  # the first level: the root's children
        parents = torch.zeros(B, n, dtype=torch.long, device=tokens.device)
    M = parents.shape[1]
    chosen = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]  # [B, k]
    new = (M - n + 1 + chosen).repeat_interleave(c, dim=1)  # the chosen nodes' positions, once per child
    q_sel = q_next.gather(1, chosen[..., None].expand(-1, -1, q_next.shape[-1]))
    return torch.cat([parents, new], 1), q_sel, s.gather(1, chosen).repeat_interleave(c, dim=1)


def tree_rerank(state, op, tokens, q, weight, parents):
    """EAGLE-2's rerank: score = the product of weight along each node's root path; keep the m of highest score
    (first on ties), in tree order, their parents renumbered. A node's score is at most its parent's (weights
    are probabilities) and its index is larger, so the kept nodes form a tree.
    tokens, weight, parents: [B, N], q: [B, N, V] -> tokens [B, m], q [B, m, V], parents [B, m], drafted [B] (m)"""
    B, N = tokens.shape
    m = op.param("nodes")
    weight = weight.clamp(max=1)
    score = weight
    for _ in range(op.param("depth") - 1):  # each pass settles one more depth: score = weight * the parent's score
        score = weight * torch.cat([torch.ones_like(score[:, :1]), score], 1).gather(1, parents)
    keep = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :m].sort(dim=1).values  # [B, m], in tree order
    position = torch.zeros(B, N + 1, dtype=torch.long, device=tokens.device)  # old position -> new (the root stays 0)
    position.scatter_(1, keep + 1, torch.arange(1, m + 1, device=tokens.device).expand(B, m))
    kept_q = q.gather(1, keep[..., None].expand(B, m, q.shape[-1]))
    return tokens.gather(1, keep), kept_q, position.gather(1, parents.gather(1, keep)), torch.full((B,), m, dtype=torch.long, device=tokens.device)


def tree_splice(state, op, tokens, path, n, x):
    """tokens[path[:, :n]] followed by x. -> [B, D+1]"""
    out = torch.cat([tokens.gather(1, path), tokens.new_zeros(tokens.shape[0], 1)], 1)
    out.scatter_(1, n[:, None], x[:, None])
    return (out,)


RULES = {
    "tree_call": tree_call,
    "repeat": repeat,
    "tree_topk": tree_topk,
    "sample_distinct": sample_distinct,
    "head_level": head_level,
    "tree_build": tree_build,
    "tree_match": tree_match,
    "tree_rejection": tree_rejection,
    "tree_splice": tree_splice,
    "tree_expand": tree_expand,
    "tree_rerank": tree_rerank,
}
