"""Dead-op elimination: keep only ops a sink (commit) or a region's yield depends on.

Model calls are pure functions of the token sequence in decspec's semantics, so an unused one is
dead too; so is an unused uniform draw.
"""
from __future__ import annotations

from decspec.compiler.ir import Graph, Op, Value
from decspec.compiler.ops import OPS

NAME = "dce"


def dce(graph: Graph) -> Graph:
    live: set[Value] = set(graph.outputs)
    kept: list[Op] = []
    for op in reversed(graph.ops):
        if OPS[op.name].effect == "sink" or any(v in live for v in op.outputs):
            if op.region is not None:
                op = op.replace(region=dce(op.region))
            kept.append(op)
            live.update(op.inputs)
    return graph.replace(ops=list(reversed(kept)))
