"""Constant folding of sampler parameters: a (pattern, rewrite) table over the `stages` of each
`logits_transform`, applied until nothing matches.

    >>> from decspec.compiler.text import Record
    >>> fold_stages((Record("temperature", (("t", 1.0),)), Record("top_k", (("k", 5),)), Record("greedy")))
    (Record(name='greedy', fields=()),)

A `logits_transform` left with no stages is removed; its users read its input directly.

Every rule rewrites stages into ones that compute the very same logits (or the same argmax under a
following `greedy`) in floating point too, assuming finite logits, as models return. Left out on
purpose, because they hold only in exact arithmetic: `temperature(t>0) | greedy` (rounding in
logits / t can turn a near-tie into a tie and change which token is "first on ties") and merging two
temperatures (t1 * t2 rounds). `top_p(0)` is not greedy: it keeps every tied maximum. `top_k(k >= V)` folds only when V is a static size.
"""
from __future__ import annotations

from typing import Any, Callable

from decspec.compiler.ir import Dim, Graph, Op, Value
from decspec.compiler.text import Record
from decspec.stdlib.samplers import PerRow, needs_context

NAME = "fold_sampler"

GREEDY = Record("greedy")

Matcher = Callable[[Record, Dim], bool]  # (stage, V) -> matches
Rewrite = Callable[[tuple[Record, ...]], tuple[Record, ...]]  # the matched stages -> their replacement


def stage(name: str, when: Callable[[dict[str, Any], Dim], bool] = lambda fields, V: True) -> Matcher:
    """Match one stage by name and, optionally, a predicate over its fields and V. A stage whose parameter is given per
    call (PerRow, backends/sampling.py) is not a constant: it matches nothing."""
    return lambda s, V: s.name == name and not any(isinstance(v, PerRow) for _, v in s.fields) and when(dict(s.fields), V)


def one_of(*names: str) -> Matcher:
    return lambda s, V: s.name in names


def drop(matched: tuple[Record, ...]) -> tuple[Record, ...]:
    return ()


def keep_last(matched: tuple[Record, ...]) -> tuple[Record, ...]:
    return matched[-1:]


def keep_first(matched: tuple[Record, ...]) -> tuple[Record, ...]:
    return matched[:1]


RULES: list[tuple[tuple[Matcher, ...], Rewrite]] = [
    # temperature(t=1): logits / 1 is logits, exactly
    ((stage("temperature", lambda f, V: f["t"] == 1),), drop),
    # top_p(p>=1): samplers.top_p returns its input unchanged (the whole mass is kept)
    ((stage("top_p", lambda f, V: f["p"] >= 1),), drop),
    # min_p(p<=0): samplers.min_p returns its input unchanged (every probability is >= 0)
    ((stage("min_p", lambda f, V: f["p"] <= 0),), drop),
    # top_k(k>=V): samplers.top_k returns its input unchanged; only when V is a static size
    ((stage("top_k", lambda f, V: isinstance(V, int) and f["k"] >= V),), drop),
    # temperature(t=0): samplers.temperature defines it as greedy
    ((stage("temperature", lambda f, V: f["t"] == 0),), lambda matched: (GREEDY,)),
    # top_k | greedy: the first argmax is >= the k-th largest, so it stays, unchanged; others stay or become -inf
    ((stage("top_k"), stage("greedy")), keep_last),
    # top_p | greedy: top_p ranks by logit and keeps every logit >= its edge, the largest one always: the first argmax stays
    ((stage("top_p"), stage("greedy")), keep_last),
    # min_p(p<=1) | greedy: the first argmax has the largest probability m >= p * m, so it stays, unchanged
    ((stage("min_p", lambda f, V: f["p"] <= 1), stage("greedy")), keep_last),
    # greedy | top_k/top_p/min_p/greedy: one finite logit is left; each of these keeps it and only masks -inf ones
    ((stage("greedy"), one_of("top_k", "top_p", "min_p", "greedy")), keep_first),
    # typical_p(p>=1): samplers.typical_p returns its input unchanged
    ((stage("typical_p", lambda f, V: f["p"] >= 1),), drop),
    # repetition_penalty(r=1), frequency_penalty(a=0), presence_penalty(a=0): logits / 1, logits * 1, logits - 0 are exact
    ((stage("repetition_penalty", lambda f, V: f["r"] == 1),), drop),
    ((stage("frequency_penalty", lambda f, V: f["a"] == 0),), drop),
    ((stage("presence_penalty", lambda f, V: f["a"] == 0),), drop),
    # greedy | typical_p: one finite logit is left, with surprisal 0 = H; typical_p keeps it and masks only -inf ones
    ((stage("greedy"), stage("typical_p")), keep_first),
]


def fold_stages(stages: tuple[Record, ...], V: Dim = "V") -> tuple[Record, ...]:
    """Rewrite the first match of the first rule that matches anywhere, until none does."""
    stages = tuple(stages)
    changed = True
    while changed:
        changed = False
        for pattern, rewrite in RULES:
            n = len(pattern)
            for i in range(len(stages) - n + 1):
                window = stages[i:i + n]
                if all(match(s, V) for match, s in zip(pattern, window)):
                    stages = stages[:i] + tuple(rewrite(window)) + stages[i + n:]
                    changed = True
                    break
            if changed:
                break
    return stages


def fold_sampler(graph: Graph) -> Graph:
    return _fold(graph, {})


def _fold(graph: Graph, subst: dict[Value, Value]) -> Graph:
    ops: list[Op] = []
    for op in graph.ops:
        op = op.replace(inputs=tuple(subst.get(v, v) for v in op.inputs))
        if op.region is not None:
            op = op.replace(region=_fold(op.region, subst))
        if op.name == "logits_transform":
            stages = fold_stages(op.param("stages"), op.inputs[0].type.shape[-1])
            if not stages:
                subst[op.outputs[0]] = op.inputs[0]
                continue
            op = op.replace(params=tuple((k, stages if k == "stages" else v) for k, v in op.params))
            if not needs_context(stages):  # no penalty left: the context inputs are dead, and CSE may merge equal transforms
                op = op.replace(inputs=op.inputs[:1])
        ops.append(op)
    return graph.replace(ops=ops, outputs=tuple(subst.get(v, v) for v in graph.outputs))
