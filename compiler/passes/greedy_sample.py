"""Sampling a one-hot distribution is an argmax: `sample(p, u) -> argmax(p)` where p is
softmax(logits_transform(...)), or the fused sampler_probs(...), with a `greedy` or `temperature(t=0)` stage.

Every sampler stage only scales or masks logits, so once a greedy stage has masked all but one
token, the distribution stays one-hot; inverse-CDF sampling from it returns that token for any u.
The uniform draw that fed the sample becomes dead and `dce` removes it, so greedy specs draw no
randomness at all.
"""
from __future__ import annotations

from decspec.compiler.ir import Graph, Op, Value

NAME = "greedy_sample"


def _is_one_hot_stage(stage) -> bool:
    return stage.name == "greedy" or (stage.name == "temperature" and dict(stage.fields).get("t") == 0)


def _one_hot(producers: dict[Value, Op], probs: Value) -> bool:
    softmax = producers.get(probs)
    if softmax is not None and softmax.name == "take_dist":  # one position of one-hot distributions is one-hot
        return _one_hot(producers, softmax.inputs[0])
    if softmax is not None and softmax.name == "sampler_probs":  # the pair, fused by fuse_sampler
        return any(_is_one_hot_stage(s) for s in softmax.param("stages"))
    if softmax is None or softmax.name != "softmax":
        return False
    transform = producers.get(softmax.inputs[0])
    return transform is not None and transform.name == "logits_transform" and any(_is_one_hot_stage(s) for s in transform.param("stages"))


def greedy_sample(graph: Graph) -> Graph:
    producers = {v: op for op in graph.ops for v in op.outputs}
    ops = []
    for op in graph.ops:
        if op.region is not None:
            op = op.replace(region=greedy_sample(op.region))
        if op.name == "sample" and _one_hot(producers, op.inputs[0]):
            op = op.replace(name="argmax", inputs=op.inputs[:1])
        ops.append(op)
    return graph.replace(ops=ops)
