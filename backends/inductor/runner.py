"""Runs generated rounds inside the shared generation loop (backends/runtime.py)."""
from __future__ import annotations

import torch

from decspec.backends.inductor import codegen
from decspec.backends.inductor.static import StaticSession
from decspec.compiler.ir import Graph
from decspec.compiler.passes.draft_schedule import draft_schedule


class RoundRunner:
    """One decoder's generated round, its static sessions and its uniform stream.

    runner = RoundRunner(graph, compile=False)
    runner.start(models, batch, capacity, ctx)      # static caches, prefill
    runner(ctx, state)                               # one round: sets state.committed
    """

    def __init__(self, graph: Graph, *, compile: bool = False, mode: str | None = None, schedule: str | None = None):
        if schedule is not None:  # override the draft_schedule pass's choice ("unrolled" | "host")
            graph = draft_schedule(graph, force=schedule)
        self.namespace, self.source = codegen.build_round(graph)
        self.graph = graph
        self.width = codegen.uniform_width(graph)
        self.schedule = codegen.schedule(graph)
        # unrolled: round_fn is one graph; host: round_fn is the Python loop over the compiled step and verify functions
        compiled = ("draft_first", "draft_next", "verify") if self.schedule == "host" else ("round_fn",)
        if compile:
            for name in compiled:
                self.namespace[name] = torch.compile(self.namespace[name], mode=mode, dynamic=False)
        self.fn = self.namespace["round_fn"]
        self.sessions: dict[str, StaticSession] = {}

    def start(self, models: dict, batch: int, capacity: int, ctx) -> dict[str, StaticSession]:
        self.sessions = {role: StaticSession(m, batch, capacity) for role, m in models.items()}
        for s in self.sessions.values():
            s.prefill(ctx.tokens, ctx.length)
        return self.sessions

    def __call__(self, ctx, state) -> None:
        u = torch.rand(state.batch, self.width, generator=state.generator, device=state.device)  # [B, U]
        m = self.sessions
        if state.grammars:  # grammar sessions sit beside the models' (codegen.grammar_key)
            m = {**m, **{codegen.grammar_key(slot): g for slot, g in state.grammars.items()}}
        tokens, accepted, drafted, steps = self.fn(ctx.tokens, ctx.length, u, m)
        state.committed = (tokens, accepted, drafted)
        for role, n in codegen.calls_per_round(self.graph, steps).items():
            self.sessions[role].calls += n
