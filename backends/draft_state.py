"""The runtime hook of draft sources that keep state across rounds (token recycling's matrix, lookahead's window and pool).

A round graph whose draft source learns from the target holds a state op, `recycle_state[...]()`
or `lookahead_state[...]()` (the state going into the round, per row: one or more tensors [B, ...]),
and its sink, `recycle_store[...](new)` or `lookahead_store[...](new...)` (the state after it). The
generation loop keeps one `DraftStates` per generate call, as it keeps the length policies
(backends/speculation_length.py):

    states = DraftStates.start(graph, models, batch)   # one state per state op, its initial value
    ...round: the state op's rule reads states.get(op); the store's rule stages the new value
    states.update(active)                               # after the round: active rows take the staged value

The exact backend keeps one state per world: a round's rows stage theirs (`advance` maps them onto
the round's final rows), and worlds merge only when their states agree (`key`), as with the
length policies. The eager rules of the ops that read and store the state live here too.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from decspec.backends.arguments import models_device
from decspec.backends.speculation_length import where_rows
from decspec.compiler.ir import Graph, Op
from decspec.compiler.text import format_params
from decspec.stdlib import lookahead, recycling

State = tuple[torch.Tensor, ...]  # one state: tensors [B, ...]
INITIAL: dict[str, Callable[..., State]] = {}  # state op -> initial(batch, vocab, **params) (the state ops below)


def state_key(op: Op) -> str:
    """A state op (NAME_state) and its sink (NAME_store) with the same params name the same state."""
    return f"{op.name.rsplit('_', 1)[0]}:" + format_params(tuple((k, v) for k, v in op.params))


def staged_key(key: str) -> str:
    """Where a generated round leaves the new value of state `key` in its `m` (backends/inductor)."""
    return key + ":staged"


class DraftStates:
    """{state_key: tensor [B, ...]} for one generation, and the values a round staged."""

    def __init__(self, entries: dict[str, State]):
        self.entries = entries
        self.staged: dict[str, State] = {}

    @classmethod
    def start(cls, graph: Graph, models: dict[str, Any], batch: int) -> "DraftStates":
        entries = {}
        for op in graph.walk():
            if op.name in INITIAL:
                params = {k: v for k, v in op.params if k != "vocab"}
                entries[state_key(op)] = INITIAL[op.name](batch, models[op.param("vocab")].vocab_size, **params)
        device = models_device(models)  # kept where the rounds read and write them
        return cls({k: tuple(x.to(device) for x in v) for k, v in entries.items()})

    def __bool__(self) -> bool:
        return bool(self.entries)

    def get(self, op: Op) -> State:
        return self.entries[state_key(op)]

    def stage(self, op: Op, value: State) -> None:
        self.staged[state_key(op)] = tuple(value)

    def update(self, active: torch.Tensor | None = None) -> None:
        """After a round: each active row takes the state its round staged (finished rows keep theirs)."""
        for key, new in self.staged.items():
            if active is not None:
                new = tuple(where_rows(active, n, o) for n, o in zip(new, self.entries[key]))
            self.entries[key] = new
        self.staged = {}

    def advance(self, align: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """The exact backend, after a round: one state per row of the round (staged values mapped onto its final rows)."""
        missing = set(self.entries) - set(self.staged)
        if missing:
            raise RuntimeError(f"the round did not store the draft state(s) {sorted(missing)}")
        self.entries, self.staged = {k: tuple(align(x) for x in v) for k, v in self.staged.items()}, {}

    def restart(self, rows: torch.Tensor, fresh: "DraftStates") -> None:
        """The rows set in rows [B] (bool) take their state from `fresh` (a new generation's start): rows admitted anew."""
        for key, values in self.entries.items():
            self.entries[key] = tuple(where_rows(rows, f, v) for v, f in zip(values, fresh.entries[key]))

    def select(self, rows: torch.Tensor) -> "DraftStates":
        """The states of the given rows (rows [R] index the current batch)."""
        return DraftStates({k: tuple(x[rows] for x in v) for k, v in self.entries.items()})

    def key(self) -> torch.Tensor | None:
        """Each row's state as one float64 row [B, F] (None without states): rows with equal keys share a future."""
        parts = [x.reshape(x.shape[0], -1).double() for k in sorted(self.entries) for x in self.entries[k]]
        return torch.cat(parts, 1) if parts else None


def _states(state, op) -> DraftStates:
    states = getattr(state, "draft_states", None)
    if states is None:
        raise RuntimeError(f"{op.name} needs the generation loop's draft states (backends/runtime.py)")
    return states


# --------------------------------------------------------------------------- eager rules


def read_state(state, op):
    """The state each row carries into this round (in an exact round: each row's world's)."""
    value = _states(state, op).get(op)
    rows = getattr(state, "rows", None)  # an exact round: states are per world, rows name theirs
    if rows is not None and value[0].shape[0] != len(rows):
        value = tuple(x[rows.world] for x in value)
    return tuple(x.to(state.device) for x in value)


def store_state(state, op, *value):
    _states(state, op).stage(op, value)
    return ()


def recycle_draft(state, op, ctx, adj):
    vocab = state.sessions[op.param("vocab")].model.vocab_size
    return recycling.drafts(ctx.tokens, ctx.length, adj, op.param("max"), vocab)


def recycle_tree(state, op, ctx, adj):
    vocab = state.sessions[op.param("vocab")].model.vocab_size
    return recycling.tree_drafts(ctx.tokens, ctx.length, adj, op.param("parents"), vocab)


def recycle_update(state, op, adj, ctx, d, count, logits):
    return (recycling.update(adj, ctx.tokens, ctx.length, d, count, logits),)


def recycle_store(state, op, adj):
    return store_state(state, op, adj)


INITIAL["recycle_state"] = lambda batch, vocab, candidates: (recycling.empty(batch, vocab, candidates),)

def lookahead_guess(state, op, ctx, levels):
    return (lookahead.guess(ctx.tokens, ctx.length, levels),)


def lookahead_collect(state, op, ctx, levels, pool, logits):
    return lookahead.collect(ctx.tokens, ctx.length, levels, pool, logits)


def lookahead_draft(state, op, ctx, pool):
    vocab = state.sessions[op.param("vocab")].model.vocab_size
    return lookahead.drafts(ctx.tokens, ctx.length, pool, op.param("max"), vocab)


INITIAL["lookahead_state"] = lookahead.initial

RULES = {
    "lookahead_state": read_state,
    "lookahead_guess": lookahead_guess,
    "lookahead_collect": lookahead_collect,
    "lookahead_draft": lookahead_draft,
    "lookahead_store": store_state,
    "recycle_state": read_state,
    "recycle_draft": recycle_draft,
    "recycle_tree": recycle_tree,
    "recycle_update": recycle_update,
    "recycle_store": recycle_store,
}
