"""Fusion of the sampler: `softmax(logits_transform[stages](x))` becomes `sampler_probs[stages](x)`.

One op per sampled distribution: identical stages on target and draft give the same op
definition, which a compiling backend compiles once and shares. A bare `softmax` (no sampler
stages, or the exit policy's statistics) stays a softmax. The `logits_transform` is left for
`dce` to remove once nothing else reads it. Runs after `greedy_sample`, which matches the
unfused pair (and also understands `sampler_probs`).
"""
from __future__ import annotations

from decspec.compiler.ir import Graph, Op, Value

NAME = "fuse_sampler"


def fuse_sampler(graph: Graph) -> Graph:
    return _fuse(graph, {})


def _fuse(graph: Graph, producers: dict[Value, Op]) -> Graph:
    producers = dict(producers)
    ops: list[Op] = []
    for op in graph.ops:
        if op.region is not None:
            op = op.replace(region=_fuse(op.region, producers))
        transform = producers.get(op.inputs[0]) if op.name == "softmax" else None
        if transform is not None and transform.name == "logits_transform":
            op = op.replace(name="sampler_probs", inputs=transform.inputs, params=transform.params)
        producers.update((v, op) for v in op.outputs)
        ops.append(op)
    return graph.replace(ops=ops)
