"""Per-row random streams: a row with a seed of its own draws its uniforms as a function of (its seed, its round,
which draw), not from the batch's generator, so its tokens do not depend on which other rows share the batch, how
wide the batch is, or which slot it sits in (a seeded request in decspec serve; generate(seed=[s0, s1, ...])).

A round's draws are the `uniform` ops (eager backend) or the blocks the generated code takes them in (inductor).
Each draw is still taken from the batch's generator for every row, so the unseeded rows' streams are the ones they
would have without the seeded rows; then the seeded rows' part is overwritten with counter-based values: element j
of draw d in round r of a row seeded s is splitmix64 of a key mixed from (s, r, d), at position j + 1 of its
stream, its top 24 bits over 2**24 (exact in float32, in [0, 1), as torch.rand). A draw is named by the uniform op
(its place in the graph) and how many times that op has drawn this round, so a loop that another row keeps
running longer shifts nothing for this one.

    >>> draws = RowDraws(batch=2)
    >>> draws.seed(1, 7)
    >>> u = draws.fill(torch.zeros(2, 3), key=0)
    >>> bool((u[0] == 0).all()), bool(((0 <= u[1]) & (u[1] < 1)).all())
    (True, True)
"""
from __future__ import annotations

import numpy as np
import torch

GAMMA = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment (the golden ratio in 64 bits)


def splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function on uint64 (Steele, Lea and Flood 2014): a bijection that mixes every bit."""
    with np.errstate(over="ignore"):
        z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_uniforms(keys: np.ndarray, n: int) -> torch.Tensor:
    """keys uint64 [R] -> float32 [R, n]: element j is splitmix64(key + (j + 1) * GAMMA)'s top 24 bits / 2**24."""
    with np.errstate(over="ignore"):
        states = keys[:, None] + (np.arange(1, n + 1, dtype=np.uint64) * GAMMA)[None, :]
    bits = splitmix(states) >> np.uint64(40)
    return torch.from_numpy((bits.astype(np.float64) * 2.0**-24).astype(np.float32))


class RowDraws:
    """Which rows of a batch have their own seed, and how many rounds each has run since it was seeded."""

    def __init__(self, batch: int, graph=None):
        self.seeds = np.zeros(batch, dtype=np.uint64)
        self.seeded = torch.zeros(batch, dtype=torch.bool)
        self.rounds = np.zeros(batch, dtype=np.uint64)
        self.calls: dict[int, int] = {}  # uniform op's index -> draws it has made this round
        self.index = {id(op): i for i, op in enumerate(uniform_ops(graph))} if graph is not None else {}

    def __bool__(self) -> bool:
        return bool(self.seeded.any())

    def seed(self, b: int, seed: int | None) -> None:
        """Row b draws from `seed` (a 64-bit integer, signed or not) from its next round on; None: from the batch's
        generator again."""
        self.seeded[b] = seed is not None
        self.seeds[b] = np.uint64((seed or 0) % 2**64)
        self.rounds[b] = 0

    def carry(self, b: int, other: "RowDraws", ob: int) -> None:
        """Row b goes on with row ob of `other` (a row moved to another batch): same seed, same rounds counted."""
        self.seeded[b], self.seeds[b], self.rounds[b] = other.seeded[ob], other.seeds[ob], other.rounds[ob]

    def next_round(self, rows: torch.Tensor) -> None:
        """A round begins: the rows `rows` [B] bool (those still generating) count it."""
        self.rounds[rows.cpu().numpy()] += np.uint64(1)
        self.calls.clear()

    def fill(self, u: torch.Tensor, key: int) -> torch.Tensor:
        """u [B, ...] from the batch's generator, with the seeded rows' part replaced by draw `key` of their streams."""
        rows = self.seeded.nonzero().flatten()
        if not rows.numel():
            return u
        r = rows.numpy()
        with np.errstate(over="ignore"):
            keys = splitmix(splitmix(splitmix(self.seeds[r] ^ GAMMA) ^ self.rounds[r]) ^ np.uint64(key))
        n = u[0].numel()
        u[rows] = keyed_uniforms(keys, n).view(len(r), *u.shape[1:]).to(device=u.device, dtype=u.dtype)
        return u

    def op_key(self, op) -> int:
        """The key of this `uniform` op's next draw in the round: (its place in the graph, its draws so far)."""
        i = self.index.get(id(op), len(self.index))
        call = self.calls.get(i, 0)
        self.calls[i] = call + 1
        return (i << 20) | call


def uniform_ops(graph) -> list:
    """The graph's `uniform` ops, regions included, in a fixed order (the graph's, depth first)."""
    return [op for op in graph.walk() if op.name == "uniform"]
