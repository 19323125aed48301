"""Cells: where the output of an op that consumes a uniform draw changes, as a function of the draw.

The exact backend draws no randomness. For an op whose input `u` comes from a `uniform` (the
op's `draws` in compiler/ops.py), a cell function partitions u-space into cells on which the
op's output is constant, and returns one representative u inside each cell with the cell's
measure. The backend then runs the op's own eager rule at the representative, weighted by the
measure: this partition is the only op-specific knowledge the exact backend has.

A cell function takes the op's other inputs (in order) and returns

    u:    [R, C, *draw shape]  a representative draw inside each cell
    prob: [R, C]               the cell's measure (0 marks padding); each row sums to 1

    >>> probs = torch.tensor([[0.25, 0.0, 0.75]], dtype=torch.float64)
    >>> u, prob = sample(probs)
    >>> prob.tolist(), u.tolist()              # token 1 has an empty interval
    ([[0.25, 0.0, 0.75]], [[0.125, 0.25, 0.625]])
"""
from __future__ import annotations

import torch

MAX_CELLS = 8_000_000  # rows x cells of one draw, before the cells of zero measure are dropped (the rows limit is 2,000,000)


def sample(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample(probs, u)` draws, at every element, the token whose interval [cdf_{v-1}, cdf_v)
    (scaled by the total) holds u: one cell per token per element, every combination across elements.

    probs: [R, *E, V] -> u: [R, V^|E|, *E], prob: [R, V^|E|]
    """
    R, V = probs.shape[0], probs.shape[-1]
    elements = probs[0, ..., 0].numel() if R else 1
    if R * V ** elements > MAX_CELLS:  # every combination of V tokens at each element: counted before any is built
        from decspec.backends.exact.rows import TooLarge

        raise TooLarge(f"the exact distribution needs more than {MAX_CELLS:,} cells in one draw ({R:,} rows x {V} tokens at "
                       f"each of {elements} positions)", hint="use a smaller vocabulary, speculation length or max_new_tokens",
                       rows=R * V ** elements, limit=MAX_CELLS)
    cdf = probs.cumsum(-1)
    total = cdf[..., -1:]
    mid = ((cdf - probs / 2) / total).reshape(R, -1, V)  # [R, E, V]: the middle of each token's interval
    mass = (probs / total).reshape(R, -1, V)  # [R, E, V]: its width
    u = mid.new_zeros(R, 1, 0)  # [R, C, e]: combinations over the first e elements
    prob = mass.new_ones(R, 1)  # [R, C]
    for e in range(mid.shape[1]):
        C = u.shape[1]
        u = torch.cat([u[:, :, None, :].expand(R, C, V, e), mid[:, e, None, :, None].expand(R, C, V, 1)], -1).reshape(R, C * V, e + 1)
        prob = (prob[:, :, None] * mass[:, e, None, :]).reshape(R, C * V)
    return u.reshape(R, -1, *probs.shape[1:-1]), prob


def rejection_accept(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, drafted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`rejection_accept` accepts d_i iff u_i * q_i(d_i) < p_i(d_i), i.e. u_i < a_i = min(1, p_i(d_i) / q_i(d_i)),
    and returns the accepted prefix length capped at drafted: n = j iff u_i < a_i for i < j and
    u_j >= a_j (or j = drafted). One cell per j in 0..K.

    p: [R, K+1, V], q: [R, K, V], drafts: [R, K], drafted: [R] -> u: [R, K+1, K], prob: [R, K+1]
    """
    R, K = drafts.shape
    pd = p[:, :K].gather(-1, drafts[..., None]).squeeze(-1)  # p_i(d_i): [R, K]
    qd = q.gather(-1, drafts[..., None]).squeeze(-1)  # q_i(d_i): [R, K]
    a = torch.where(qd > 0, (pd / qd.clamp_min(torch.finfo(qd.dtype).tiny)).clamp(max=1), (pd > 0).to(pd.dtype))
    i = torch.arange(K, device=a.device)[None, None, :]  # [1, 1, K]: the draft position
    j = torch.arange(K + 1, device=a.device)[None, :, None]  # [1, K+1, 1]: the cell (accepted count)
    accept, reject = (a / 2)[:, None, :], ((1 + a) / 2)[:, None, :]  # the middles of [0, a) and [a, 1)
    u = torch.where(i < j, accept, torch.where(i == j, reject, torch.full_like(accept, 0.5)))  # past j: any u
    ones = a.new_ones(R, 1)
    accepted_before = torch.cat([ones, a.cumprod(-1)], -1)  # [R, K+1]: prod_{i<j} a_i
    rejected_at = torch.cat([1 - a, a.new_zeros(R, 1)], -1)  # [R, K+1]: 1 - a_j
    cells = torch.arange(K + 1, device=a.device)[None, :]
    prob = torch.where(cells < drafted[:, None], accepted_before * rejected_at, torch.where(cells == drafted[:, None], accepted_before, 0.0))
    return u, prob


CELLS = {"sample": sample, "rejection_accept": rejection_accept}
