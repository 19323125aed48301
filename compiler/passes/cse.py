"""Common-subexpression elimination: one op per (name, inputs, params), never for random ops.

Two `softmax(%3)` become one; two `uniform` draws stay two (each is fresh randomness), and so do
sinks. Regions are simplified inside, and loop ops themselves are never merged.
"""
from __future__ import annotations

from decspec.compiler.ir import Graph, Op, Value
from decspec.compiler.ops import OPS

NAME = "cse"


def cse(graph: Graph) -> Graph:
    return _cse(graph, {})


def _cse(graph: Graph, subst: dict[Value, Value]) -> Graph:
    seen: dict[tuple, Op] = {}
    ops: list[Op] = []
    for op in graph.ops:
        inputs = tuple(subst.get(v, v) for v in op.inputs)
        region = _cse(op.region, subst) if op.region is not None else None
        op = op.replace(inputs=inputs, region=region)
        if OPS[op.name].effect in ("pure", "model") and region is None:
            key = (op.name, inputs, op.params)
            if key in seen:
                subst.update(zip(op.outputs, seen[key].outputs))
                continue
            seen[key] = op
        ops.append(op)
    outputs = tuple(subst.get(v, v) for v in graph.outputs)
    return graph.replace(ops=ops, outputs=outputs)
