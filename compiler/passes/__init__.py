"""The pass pipeline: named, pure functions Graph -> Graph, run in order.

    >>> [name for name, _ in PIPELINE]
    ['cse', 'greedy_sample', 'dce']

`run_pipeline(graph, until="cse")` stops after that pass (what `decspec ir --after cse` prints);
`log` receives (pass name, graph) after each pass.
"""
from __future__ import annotations

from typing import Callable

from decspec.compiler.ir import Graph
from decspec.compiler.passes.cse import cse
from decspec.compiler.passes.dce import dce
from decspec.compiler.passes.greedy_sample import greedy_sample

Pass = Callable[[Graph], Graph]

PIPELINE: list[tuple[str, Pass]] = [("cse", cse), ("greedy_sample", greedy_sample), ("dce", dce)]


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
