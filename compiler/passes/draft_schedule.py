"""How a compiling backend runs each draft loop: `schedule="unrolled"` or `schedule="host"`.

- unrolled: the loop becomes `max` copies of its body in the round's one graph, with a per-row
  `alive` mask. No host round trip, no data-dependent control flow: the best case for CUDA graphs
  and for a loop that always runs to `max`. A step after every row has stopped still costs a
  draft forward.
- host: the body is compiled once as a step function (step 0, which re-feeds the context window,
  separately) and a Python loop calls it, stopping as soon as no row is drafting. One host sync
  (`alive.any()`) per step; steps nobody needs are never run.

A loop without an exit policy always runs to `max`: unrolled. A loop whose exit policy can stop it
early: host once `max` exceeds UNROLL_MAX, where the wasted masked steps outweigh a sync per step
(see docs/backends.md for the measurement behind the number). A schedule already set is kept, so
the pass is idempotent. Loops nested in regions (none today) are left unrolled.

The eager and exact backends ignore the parameter: they interpret the loop and always stop early.
"""
from __future__ import annotations

from decspec.compiler.ir import Graph

NAME = "draft_schedule"

UNROLL_MAX = 3  # the longest early-exiting draft loop still unrolled (measured on CPU: unrolled wins at k = 2, the host loop at k = 4)


def choose(max_steps: int, has_exit: bool) -> str:
    return "host" if has_exit and max_steps > UNROLL_MAX else "unrolled"


def draft_schedule(graph: Graph, force: str | None = None) -> Graph:
    """Annotate each top-level draft loop; `force` ("unrolled" | "host") overrides the choice
    (the inductor backend's `schedule` option)."""
    if force not in (None, "unrolled", "host"):
        raise ValueError(f"unknown draft loop schedule {force!r}; expected 'unrolled' or 'host'")
    ops = []
    for i, op in enumerate(graph.ops):
        if op.name == "draft_loop" and (force is not None or op.param("schedule") is None):
            has_exit = len(op.inputs) == 2 or any(v.type.dtype == "bool" for v in op.region.outputs)  # a length cap, or a stop flag
            opens = all(o.name == "length_cap" for o in graph.ops[:i])  # only the cap it reads comes before it
            schedule = force or choose(op.param("max"), has_exit) if opens else "unrolled"  # the host loop drives a loop that opens the round
            op = op.replace(params=tuple(p for p in op.params if p[0] != "schedule") + (("schedule", schedule),))
        ops.append(op)
    return graph.replace(ops=ops)
