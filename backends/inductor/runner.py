"""Runs generated rounds inside the shared generation loop (backends/runtime.py)."""
from __future__ import annotations

import torch

from decspec.backends.draft_state import staged_key
from decspec.backends.grammar import device_table, grammar_states
from decspec.backends.eager.dynamic_exit import set_view_costs
from decspec.backends.prefix import hidden_roles
from decspec.backends.inductor import codegen
from decspec.backends.inductor.static import StaticSession
from decspec.compiler.ir import Graph
from decspec.compiler.passes.draft_schedule import draft_schedule


class RoundRunner:
    """One decoder's generated round. The runner holds code only: each generation's static sessions
    (model caches, kept hidden states) are made by `start` and live in that generation's RoundState,
    so two generations never share a cache.

    runner = RoundRunner(graph, compile=False)
    state.sessions = runner.start(models, batch, capacity, ctx)   # static caches, prefill
    runner(ctx, state)                                            # one round: sets state.committed

    `serial`: whether calls must not overlap. A torch.compile'd round may own static buffers (CUDA
    graphs replay into the same outputs) and dynamo's compile caches are not thread-safe, so the
    Decoder runs a compiled runner's generations one at a time; the uncompiled round is plain Python.
    """

    def __init__(self, graph: Graph, *, compile: bool = False, mode: str | None = None, schedule: str | None = None,
                 device_grammars: bool = True, dynamo_backend: str = "inductor", device_forced: bool | None = None):
        if schedule is not None:  # override the draft_schedule pass's choice ("unrolled" | "host")
            graph = draft_schedule(graph, force=schedule)
        self.namespace, self.source = codegen.build_round(graph)
        self.graph = graph
        self.width = codegen.uniform_width(graph)
        self.blocks = codegen.uniform_blocks(graph)
        self.schedule = codegen.schedule(graph)
        # unrolled: round_fn is one graph; host: round_fn is the Python loop over the compiled step and verify functions
        compiled = ("draft_first", "draft_next", "verify") if self.schedule == "host" else ("round_fn",)
        if compile:
            for name in compiled:
                self.namespace[name] = torch.compile(self.namespace[name], mode=mode, dynamic=False, backend=dynamo_backend)
        self.fn = self.namespace["round_fn"]
        self.serial = compile
        self.device_grammars = device_grammars  # regular grammars' masks and states on the device (False: on the host)
        self.shapes: set[tuple[int, ...]] = set()  # the (batch, capacity) shapes compiled so far: a new one compiles
        self.arm_ops = [op for op in graph.walk() if op.name == "draft_arm"]
        self.forced_slots = {op.param("grammar") for op in graph.walk() if op.name == "grammar_forced"}
        # forced drafts walked on the device (GrammarTable.forced_tokens) or on the host (a graph break); None: on the
        # device unless inductor compiles the round for a CPU, where gcc 12 fails on the fused walk (docs/backends.md)
        self.device_forced = device_forced
        self.inductor_compiled = compile and dynamo_backend == "inductor"  # on a CPU that means gcc's C++ kernels

    def forced_on_device(self, device: torch.device) -> bool:
        """Whether this round walks forced drafts on the device (the `device_forced` option; None: see __init__)."""
        if self.device_forced is not None:
            return self.device_forced
        return not (self.inductor_compiled and device.type == "cpu")

    def start(self, models: dict, batch: int, capacity: int, ctx) -> dict[str, StaticSession]:
        hidden = hidden_roles(self.graph)  # roles whose heads draft
        sessions = {role: StaticSession(m, batch, capacity, keep_hidden=role in hidden) for role, m in models.items()}
        for s in sessions.values():
            s.prefill(ctx.tokens, ctx.length)
        return sessions

    def __call__(self, ctx, state) -> None:
        # [B, U], drawn block by block in the eager backend's order: the same seed gives the same tokens as eager
        # (for loops that run to max; an exit policy makes eager skip the draws of steps it does not run)
        draws = getattr(state, "draws", None)  # rows with seeds of their own (backends/draws.py): block i is their draw i
        blocks = [torch.rand(state.batch, w, generator=state.generator, device=state.device) for w in self.blocks]
        u = torch.cat([draws.fill(x, i) for i, x in enumerate(blocks)] if draws else blocks, 1) \
            if self.blocks else torch.empty(state.batch, 0, device=state.device)
        m = state.sessions  # this generation's own caches (start)
        if state.grammars:  # grammar sessions sit beside the models' (codegen.grammar_key), with their device tables
            m = {**m, **{codegen.grammar_key(slot): g for slot, g in state.grammars.items()}}
            for slot, session in state.grammars.items():
                table = device_table(session.matcher, state.device) if self.device_grammars else None
                if table is not None:  # the host walks the committed tokens (once a round); the device, the drafts
                    key = codegen.grammar_key(slot)
                    m[key + ":table"] = table
                    m[key + ":start"] = grammar_states(session, ctx.tokens, ctx.length, session.start).to(state.device)
                    if slot in self.forced_slots and self.forced_on_device(state.device):  # (GrammarTable.forced_tokens, once)
                        m[key + ":forced"] = table.forced_tokens()
        for op in self.arm_ops:  # a per-row view policy needs its views' costs (layers / the target's), set once
            set_view_costs(state.policies, op, state.sessions)
        if state.policies:  # this round's length caps [B], chosen on the host: inputs of a fixed shape (codegen.cap_key)
            m = {**m, **{key: cap.to(state.device) for key, cap in state.policies.caps().items()}}
        if getattr(state, "sampling", None):  # the call's per-row sampler values [B]: inputs, so new values never recompile
            m = {**m, codegen.SETTINGS_KEY: {k: v.to(state.device) for k, v in state.sampling.items()}}
        if state.draft_states:  # cross-round draft state [B, ...] in (codegen.STATE_OPS), the round's new value back (STORE_OPS)
            m = {**m, **{key: tuple(x.to(state.device) for x in v) for key, v in state.draft_states.entries.items()}}
        shape = tuple(ctx.tokens.shape)
        if self.serial and shape not in self.shapes:  # its first call compiles (minutes on a CPU): say so while it does
            from decspec.progress import status

            with status(f"compiling the round with torch.compile (batch {shape[0]}, capacity {shape[1]})"):
                out = self.fn(ctx.tokens, ctx.length, u, m)
            self.shapes.add(shape)
        else:
            out = self.fn(ctx.tokens, ctx.length, u, m)
        tokens, accepted, drafted, steps = out
        for key in state.draft_states.entries if state.draft_states else ():
            state.draft_states.staged[key] = m[staged_key(key)]
        state.committed = (tokens, accepted, drafted)
        for role, n in codegen.calls_per_round(self.graph, steps).items():
            state.sessions[role].calls += n
