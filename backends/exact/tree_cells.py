"""Cells of `tree_rejection`: the outcomes of recursive rejection over a token tree, per row.

The op's output (path, n, residual) is a function of which nodes were tried and accepted. Which
nodes are tried follows from the earlier decisions, so an outcome is a *pattern*: the sequence of
(node, accepted?) decisions of one traversal. Patterns depend only on the tree's shape:

    at a position with children c_1..c_w: for each j, reject c_1..c_{j-1}, accept c_j and continue
    with a pattern of c_j's subtree; or reject all w (the walk ends there); a leaf ends the walk.

For each pattern and row, the cell's measure is the product of a (accepted) or 1 - a (rejected)
over its decisions, a = min(1, r(c) / q_c(c)) with the target r the walk holds at that point (p at
the root, the residual after each rejection, p at the accepted node); the representative u puts
each tried node's u in the middle of [0, a) or [a, 1), and 0.5 on nodes never tried.

    >>> patterns((0, 0, 1, 2))       # two children of the root, one child under each
    [((0, True), (2, True)), ((0, True), (2, False)), ((0, False), (1, True), (3, True)), ((0, False), (1, True), (3, False)), ((0, False), (1, False))]
"""
from __future__ import annotations

from functools import lru_cache

import torch

from decspec.backends.eager.tree import accept_ratio, groups, residual, without_drawn


@lru_cache(maxsize=64)
def patterns(parents: tuple[int, ...]) -> list[tuple[tuple[int, bool], ...]]:
    """Every traversal of recursive rejection over the tree, as its (node, accepted) decisions."""
    kids: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, pos in enumerate(parents):
        kids[pos].append(i)

    def at(pos: int) -> list[tuple]:
        if not kids[pos]:
            return [()]
        out: list[tuple] = []
        for j, c in enumerate(kids[pos]):
            rejected = tuple((s, False) for s in kids[pos][:j])
            out += [rejected + ((c, True),) + rest for rest in at(c + 1)]
        return out + [tuple((s, False) for s in kids[pos])]

    return at(0)


def tree_rejection(p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor | None = None, *, op) -> tuple[torch.Tensor, torch.Tensor]:
    """p: [R, N+1, V], q: [R, N, V], tokens: [R, N] -> u: [R, C, N], prob: [R, C] (C: the tree's patterns).
    A dynamic tree (parents [R, N], each row its own shape) has each shape's patterns for its rows, padded
    to the most patterns any shape has with cells of measure 0."""
    if parents is not None:
        return _dynamic_cells(p, q, tokens, parents)
    return _cells(p, q, tokens, patterns(tuple(op.param("parents"))))


def _dynamic_cells(p, q, tokens, parents):
    shapes, which = torch.unique(parents.cpu(), dim=0, return_inverse=True)
    groups = [(which == g).nonzero().squeeze(1) for g in range(len(shapes))]
    pats = [patterns(tuple(int(x) for x in shape)) for shape in shapes]
    C = max(len(ps) for ps in pats)
    R, N = tokens.shape
    u = torch.full((R, C, N), 0.5, dtype=p.dtype)
    prob = torch.zeros(R, C, dtype=p.dtype)  # padding cells: measure 0
    for rows, ps in zip(groups, pats):
        gu, gp = _cells(p[rows], q[rows], tokens[rows], ps)
        u[rows, :len(ps)], prob[rows, :len(ps)] = gu, gp
    return u, prob


def _cells(p, q, tokens, pats):
    R, N = tokens.shape
    rows = torch.arange(R)
    u = torch.full((R, len(pats), N), 0.5, dtype=p.dtype)
    prob = torch.ones(R, len(pats), dtype=p.dtype)
    for ci, pattern in enumerate(pats):
        r = p[:, 0]
        for node, accepted in pattern:
            qc = q[:, node]
            a = accept_ratio(r, qc, tokens[rows, node])  # [R]
            if accepted:
                u[:, ci, node], prob[:, ci] = a / 2, prob[:, ci] * a
                r = p[:, node + 1]
            else:
                u[:, ci, node], prob[:, ci] = (1 + a) / 2, prob[:, ci] * (1 - a)
                r = residual(r, qc)
    return u, prob


tree_rejection.takes_op = True  # its cells depend on the tree's shape, an op param


def sample_distinct(probs: torch.Tensor, *, op) -> tuple[torch.Tensor, torch.Tensor]:
    """Siblings without replacement: one cell per ordered choice of tokens, every combination across
    the groups. Sibling j's cells are the intervals of q_j = norm(q without the group's earlier
    tokens), which depends on the cell so far, so the combinations grow element by element (cells
    of the drawn tokens get measure 0: padding).

    probs: [R, n, V] -> u: [R, C, n], prob: [R, C] (C = V^n, the measure-0 cells included)
    """
    R, n, V = probs.shape
    sizes = groups(op.param("k"), n)
    starts = {sum(sizes[:g]) for g in range(len(sizes))}  # where each group begins
    u = probs.new_zeros(R, 1, 0)  # [R, C, e]
    prob = probs.new_ones(R, 1)  # [R, C]
    drawn = torch.zeros(R, 1, V, dtype=torch.bool)  # [R, C, V]: the current group's tokens so far
    for e in range(n):
        C = u.shape[1]
        if e in starts:
            drawn = torch.zeros(R, C, V, dtype=torch.bool)
        q = without_drawn(probs[:, e, None, :].expand(R, C, V), drawn)  # [R, C, V]
        cdf = q.cumsum(-1)
        mid = (cdf - q / 2) / cdf[..., -1:]  # the middle of each token's interval
        u = torch.cat([u[:, :, None, :].expand(R, C, V, e), mid[..., None]], -1).reshape(R, C * V, e + 1)
        prob = (prob[:, :, None] * q / cdf[..., -1:]).reshape(R, C * V)
        drawn = (drawn[:, :, None, :] | torch.eye(V, dtype=torch.bool)[None, None]).reshape(R, C * V, V)
    return u, prob


sample_distinct.takes_op = True  # its cells depend on the group sizes k, an op param

CELLS = {"tree_rejection": tree_rejection, "sample_distinct": sample_distinct}
