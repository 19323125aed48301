"""The runtime hook of cross-round exit policies: per-row speculation lengths chosen between rounds.

A round graph whose exit policy works across rounds (`heuristic`, `bandit`) holds a
`length_cap[policy=..., max=K, ...]()` op feeding its draft loop. The generation loop keeps one
`Policies` per generate call:

    policies = Policies.start(graph, batch, seed)     # one length policy per length_cap op
    ...round: the length_cap rule reads policies.cap(op) -> i64[B]; a compiled round gets the
              same tensors as inputs (policies.caps(), keyed by cap_key(op))
    policies.update(accepted, drafted, active)        # on the host, after the round

The cap is an input of the round, like the context: the compiled graph sees a tensor [B] of a
fixed shape, so no speculation length the policy picks can make it recompile. The states are
tensors [B, ...] per row; the exact backend indexes them by world (`select`) and merges only
worlds whose states agree (`key`).
"""
from __future__ import annotations

from typing import Iterator

import torch

from decspec.compiler.ir import Graph, Op
from decspec.compiler.text import format_params
from decspec.stdlib.speculation_length import LengthPolicy, State, make_policy


def cap_key(op: Op) -> str:
    """How a round finds this length_cap op's tensor among its inputs (`m` of a generated round)."""
    return "length_cap:" + format_params(tuple((k, v) for k, v in op.params))


def cap_ops(graph: Graph) -> Iterator[Op]:
    return (op for op in graph.walk() if op.name in ("length_cap", "draft_arm"))  # draft_arm: a per-row draft source (stdlib/dynamic_exit.py)


def where_rows(rows: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per-row state [B, ...]: `new` in the rows where rows [B] (bool) is set, `old` elsewhere (on old's device)."""
    return torch.where(rows.to(old.device).view(-1, *[1] * (old.dim() - 1)), new.to(old.device), old)


class Policies:
    """{cap_key: (length policy, per-row state)} for one generation."""

    def __init__(self, entries: dict[str, tuple[LengthPolicy, State]]):
        self.entries = entries

    @classmethod
    def start(cls, graph: Graph, batch: int, seed: int) -> "Policies":
        entries = {}
        for op in cap_ops(graph):
            params = {k: v for k, v in op.params if k != "policy"}
            policy = make_policy(op.param("policy"), **params)
            entries[cap_key(op)] = (policy, policy.start(batch, seed))
        return cls(entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def cap(self, op: Op) -> torch.Tensor:
        policy, state = self.entries[cap_key(op)]
        return policy.cap(state)

    def caps(self) -> dict[str, torch.Tensor]:
        return {key: policy.cap(state) for key, (policy, state) in self.entries.items()}

    def update(self, accepted: torch.Tensor, drafted: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """After a round: each active row's policy learns what its round did (finished rows keep their state)."""
        for key, (policy, state) in self.entries.items():
            new = policy.update(state, accepted, drafted)
            if active is not None:
                new = {n: where_rows(active, v, state[n]) for n, v in new.items()}
            self.entries[key] = (policy, new)

    def restart(self, rows: torch.Tensor, fresh: "Policies") -> None:
        """The rows set in rows [B] (bool) take their state from `fresh` (a new generation's start): rows admitted anew."""
        for key, (policy, state) in self.entries.items():
            self.entries[key] = (policy, {n: where_rows(rows, fresh.entries[key][1][n], v) for n, v in state.items()})

    def select(self, rows: torch.Tensor) -> "Policies":
        """The states of the given rows (rows [R] index the current batch)."""
        return Policies({k: (p, {n: v[rows] for n, v in s.items()}) for k, (p, s) in self.entries.items()})

    def key(self) -> torch.Tensor | None:
        """Each row's state as one float64 row [B, F] (None without policies): rows with equal keys share a future."""
        parts = [v.reshape(v.shape[0], -1).double() for key in sorted(self.entries) for _, v in sorted(self.entries[key][1].items())]
        return torch.cat(parts, 1) if parts else None
