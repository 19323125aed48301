"""Runs generated rounds inside the shared generation loop (backends/runtime.py)."""
from __future__ import annotations

import torch

from decspec.backends.inductor.codegen import build_round, calls_per_round, uniform_width
from decspec.backends.inductor.static import StaticSession
from decspec.compiler.ir import Graph


class RoundRunner:
    """One decoder's generated round, its static sessions and its uniform stream.

    runner = RoundRunner(graph, compile=False)
    runner.start(models, batch, capacity, ctx)      # static caches, prefill
    runner(ctx, state)                               # one round: sets state.committed
    """

    def __init__(self, graph: Graph, *, compile: bool = False, mode: str | None = None):
        self.fn, self.source = build_round(graph)
        self.width = uniform_width(graph)
        self.calls = calls_per_round(graph)
        if compile:
            self.fn = torch.compile(self.fn, mode=mode, dynamic=False)
        self.sessions: dict[str, StaticSession] = {}

    def start(self, models: dict, batch: int, capacity: int, ctx) -> dict[str, StaticSession]:
        self.sessions = {role: StaticSession(m, batch, capacity) for role, m in models.items()}
        for s in self.sessions.values():
            s.prefill(ctx.tokens, ctx.length)
        return self.sessions

    def __call__(self, ctx, state) -> None:
        u = torch.rand(state.batch, self.width, generator=state.generator, device=state.device)  # [B, U]
        tokens, accepted, drafted = self.fn(ctx.tokens, ctx.length, u, self.sessions)
        state.committed = (tokens, accepted, drafted)
        for role, n in self.calls.items():
            self.sessions[role].calls += n
