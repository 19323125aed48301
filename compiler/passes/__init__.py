"""The pass pipeline: named, pure functions Graph -> Graph, run in order.

    >>> [name for name, _ in PIPELINE]
    ['fold_sampler', 'cse', 'greedy_sample', 'fuse_sampler', 'dce', 'draft_schedule']

Why this order: `fold_sampler` first, so a pipeline that folds away (`temperature(1.0)`) leaves a
bare `softmax(logits)` that `cse` can merge with the exit policy's, and `temperature(0)` is
already `greedy` for what follows; `cse` next, so identical samplers are one op before anything
matches on them; `greedy_sample` before `fuse_sampler`, as it matches the unfused
softmax(logits_transform) pair (it understands the fused op too, so the pipeline is idempotent);
`fuse_sampler` late, so every pass before it sees the plain pair; `dce` last, to drop the draws
`greedy_sample` freed and the transforms `fuse_sampler` absorbed; `draft_schedule` after the graph
is final, as it only annotates how a compiling backend runs each draft loop.

`run_pipeline(graph, until="cse")` stops after that pass (what `decspec ir --after cse` prints);
`log` receives (pass name, graph) after each pass.
"""
from __future__ import annotations

from typing import Callable

from decspec.compiler.ir import Graph
from decspec.compiler.passes.cse import cse
from decspec.compiler.passes.dce import dce
from decspec.compiler.passes.draft_schedule import draft_schedule
from decspec.compiler.passes.fold_sampler import fold_sampler
from decspec.compiler.passes.fuse_sampler import fuse_sampler
from decspec.compiler.passes.greedy_sample import greedy_sample

Pass = Callable[[Graph], Graph]

PIPELINE: list[tuple[str, Pass]] = [
    ("fold_sampler", fold_sampler),
    ("cse", cse),
    ("greedy_sample", greedy_sample),
    ("fuse_sampler", fuse_sampler),
    ("dce", dce),
    ("draft_schedule", draft_schedule),
]


def pass_names() -> list[str]:
    return [name for name, _ in PIPELINE]


def run_pipeline(graph: Graph, *, until: str | None = None, log: Callable[[str, Graph], None] | None = None, check: bool = False) -> Graph:
    if until is not None and until not in pass_names() and until != "lower":
        raise KeyError(until)
    if until == "lower":
        return graph
    for name, fn in PIPELINE:
        graph = fn(graph)
        if check:
            from decspec.compiler.verify import verify

            verify(graph)
        if log is not None:
            log(name, graph)
        if name == until:
            break
    return graph
