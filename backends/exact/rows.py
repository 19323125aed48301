"""The rows of an exact round, and the state the rules see while the round graph runs over them.

A row is one world (a committed context) under one choice of every uniform draw made so far in
the round, with that choice's probability. Rows only ever split: a draw splits each row into one
row per cell of the draw's consumer (backends/exact/cells.py). The round graph runs over all rows
at once, as one batch.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from decspec.backends.grammar import GrammarSession
from decspec.backends.interpreter import BackendError
from decspec.backends.prefix import PrefixCache
from decspec.backends.runtime import Context
from decspec.compiler.ir import CTX, Type
from decspec.dsl.diagnostics import DecError


class TooLarge(DecError):
    """The exact distribution needs more rows than allowed (a smaller V, k or max_new_tokens fits).

    rows: the rows it would take (at least; for an estimate, about), limit: the most allowed."""

    def __init__(self, message: str, *, hint: str | None = None, rows: float = 0, limit: int = 0):
        super().__init__(message, hint=hint)
        self.rows, self.limit = rows, limit


def per_row(t: Type) -> bool:
    """Values of this type hold one entry per row (the context, and every [B, ...] tensor)."""
    return t == CTX or (len(t.shape) > 0 and t.shape[0] == "B")


@dataclass(frozen=True)
class Rows:
    world: torch.Tensor  # [R] the world each row belongs to
    weight: torch.Tensor  # [R] float64: the probability of the row's draws, given its world
    draws: int = 0  # draws made so far in the round (every row has made the same ones)

    @classmethod
    def start(cls, worlds: int) -> "Rows":
        return cls(torch.arange(worlds), torch.ones(worlds, dtype=torch.float64))

    def __len__(self) -> int:
        return self.world.shape[0]

    def split(self, u: torch.Tensor, prob: torch.Tensor, max_rows: int) -> tuple["Rows", torch.Tensor, torch.Tensor]:
        """One row per (row, cell) of positive measure. u: [R, C, *s], prob: [R, C] -> (rows, parent [N], u [N, *s])."""
        live = prob > 0  # [R, C]
        if not bool(live.any(1).all()):
            raise BackendError("a draw whose every outcome has probability 0 (NaN or all-zero probabilities)")
        parent, cell = live.nonzero(as_tuple=True)
        if parent.shape[0] > max_rows:
            raise TooLarge(f"the exact distribution needs more than {max_rows:,} rows in one round",
                           hint="use a smaller vocabulary, speculation length or max_new_tokens", rows=parent.shape[0], limit=max_rows)
        return Rows(self.world[parent], self.weight[parent] * prob[parent, cell], self.draws + 1), parent, u[parent, cell]


class _Sessions(dict):
    """One PrefixCache per model role, made on first use for the current rows."""

    def __init__(self, run: "Run"):
        super().__init__()
        self.run = run

    def __missing__(self, role: str) -> PrefixCache:
        cache = self[role] = PrefixCache(self.run.models[role], self.run.batch, self.run.capacity)
        return cache


class Run:
    """The `state` every rule receives during an exact round, in the place of runtime.RoundState
    (sessions, grammars, batch, device, rules, committed).

    A draw splits the rows in place. Values computed before the split still have the old row
    count, and `align` maps them onto the current rows: row counts only grow, so a count names
    the row set a value was computed for.
    """

    def __init__(self, rows: Rows, models: dict[str, Any], capacity: int, rules: dict, backend: str, max_rows: int,
                 grammars: dict[str, Any] | None = None):
        self.rows = rows
        self.models = models
        self.capacity = capacity
        self.rules = rules
        self.backend = backend
        self.max_rows = max_rows
        self.device = torch.device("cpu")
        self.generator = None  # never used: no rule draws randomness here
        self.committed: tuple | None = None
        self.policies = None  # the worlds' cross-round length policies (backends/speculation_length.py), one row per world
        self.draft_states = None  # the worlds' cross-round draft states (backends/draft_state.py), one row per world
        self.sessions = _Sessions(self)
        # one GrammarSession per grammar; it starts over whenever a split changes the row count
        self.grammars = {slot: GrammarSession(m) for slot, m in (grammars or {}).items()}
        self._splits: list[tuple[int, torch.Tensor]] = []  # (row count before, each new row's parent), in order
        self._ancestor: dict[int, torch.Tensor] = {}  # row count -> each current row's ancestor then (made on demand)
        self._aligned: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(value) -> (value, aligned value)
        self.probe: random.Random | None = None  # set: one row follows one random live cell per draw (`estimate`)
        self.estimate = 1  # with `probe`: the product of the live cells met, Knuth's estimate of the round's rows

    @property
    def batch(self) -> int:
        return len(self.rows)

    def align(self, x: Any) -> Any:
        """A per-row value (tensor [R', ...] or Context) computed for an earlier row set -> the current rows."""
        if isinstance(x, Context):
            return Context(self.align(x.tokens), self.align(x.length), None if x.start is None else self.align(x.start))
        if not isinstance(x, torch.Tensor) or x.shape[0] == self.batch:
            return x
        if id(x) not in self._aligned:  # values feed several ops: align each once
            self._aligned[id(x)] = (x, x[self._ancestors(x.shape[0])])
        return self._aligned[id(x)][1]

    def _ancestors(self, count: int) -> torch.Tensor:
        """Each current row's ancestor in the row set that had `count` rows."""
        if count not in self._ancestor:
            idx = None
            for before, parent in reversed(self._splits):
                idx = parent if idx is None else parent[idx]
                if before == count:
                    break
            else:
                raise BackendError(f"a per-row value has {count} rows, but no row set of this round had that many")
            self._ancestor[count] = idx
        return self._ancestor[count]

    def split(self, u: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """Split the rows at a draw with cells u [R, C, *s] of measure prob [R, C]; -> each new row's u [N, *s]."""
        if self.probe is not None:  # one row, one live cell of each draw, chosen uniformly
            live = (prob[0] > 0).nonzero().flatten()
            if not len(live):
                raise BackendError("a draw whose every outcome has probability 0 (NaN or all-zero probabilities)")
            self.estimate *= len(live)
            return u[:, int(live[self.probe.randrange(len(live))])]
        before = self.batch
        self.rows, parent, u = self.rows.split(u, prob, self.max_rows)
        if self.batch != before:
            self._splits.append((before, parent))
            self._ancestor.clear()
            self._aligned.clear()
            self.sessions.clear()
        return u
