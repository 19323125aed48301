"""The decspec IR: typed, immutable ops in a networkx DiGraph, with a stable text form.

A Graph is one decoding *round* (propose -> verify -> commit). Values are SSA; ops are frozen
dataclasses; passes build new graphs. Ops that repeat a body (the draft loop) carry a region:
a closed Graph whose inputs are passed explicitly.

    >>> from decspec.compiler.builder import Builder
    >>> b = Builder("round")
    >>> ctx = b.input(CTX)
    >>> logits = b.emit("model_call", [ctx], model="target", last=True)[0]
    >>> probs = b.emit("softmax", [logits])[0]
    >>> tok = b.emit("sample", [probs, b.emit("uniform", [], shape=("B",))[0]])[0]
    >>> _ = b.emit("commit", [tok])
    >>> print(b.build())
    round(%0: ctx) {
      %1: f32[B,V] = model_call[model="target", last=true](%0)
      %2: f32[B,V] = softmax(%1)
      %3: f32[B] = uniform[shape=["B"]]()
      %4: tok[B] = sample(%2, %3)
      commit(%4)
    }
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx

Dim = int | str  # a static size, or a symbol: "B" (batch), "V" (vocabulary), "K+1", ...


@dataclass(frozen=True)
class Type:
    """dtype is one of: tok (token ids, int64), i64, f32, bool, ctx (the committed context)."""

    dtype: str
    shape: tuple[Dim, ...] = ()

    def __str__(self) -> str:
        if self.dtype == "ctx":
            return "ctx"
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


CTX = Type("ctx")

_ids = itertools.count()


@dataclass(frozen=True)
class Value:
    type: Type
    id: int = field(default_factory=lambda: next(_ids))


@dataclass(frozen=True)
class Meta:
    """Where an op came from: the .dec position and the component that lowered it."""

    line: int | None = None
    col: int | None = None
    component: str | None = None

    def loc(self) -> str | None:
        return None if self.line is None else f"{self.line}:{self.col}"


@dataclass(frozen=True)
class Op:
    name: str
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    params: tuple[tuple[str, Any], ...] = ()
    region: "Graph | None" = None
    meta: Meta = field(default=Meta(), compare=False)

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def replace(self, **changes: Any) -> "Op":
        fields = dict(name=self.name, inputs=self.inputs, outputs=self.outputs, params=self.params, region=self.region, meta=self.meta)
        fields.update(changes)
        return Op(**fields)


class Graph:
    """An immutable list of ops in a deterministic topological order, with its dependency DiGraph.

    inputs: the values the round receives (the committed context); a region's inputs are the
    values its parent op passes in each iteration. outputs: values a region yields (empty for a
    round, whose effect is its `commit` op). attrs: facts about the whole graph (spec name, params).
    """

    def __init__(self, name: str, inputs: tuple[Value, ...], ops: tuple[Op, ...] | list[Op], outputs: tuple[Value, ...] = (), attrs: tuple[tuple[str, Any], ...] = ()):
        self.name = name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.attrs = tuple(attrs)
        ops = tuple(ops)
        producer = {v: i for i, op in enumerate(ops) for v in op.outputs}
        dag = nx.DiGraph()
        dag.add_nodes_from(range(len(ops)))
        for j, op in enumerate(ops):
            for v in op.inputs:
                if v in producer:
                    dag.add_edge(producer[v], j, value=v)
        if not nx.is_directed_acyclic_graph(dag):
            raise ValueError(f"graph {name!r} has a cycle")
        order = list(nx.lexicographical_topological_sort(dag, key=lambda i: i))
        self.ops: tuple[Op, ...] = tuple(ops[i] for i in order)
        remap = {old: new for new, old in enumerate(order)}
        self.dag = nx.relabel_nodes(dag, remap)

    def attr(self, name: str, default: Any = None) -> Any:
        return dict(self.attrs).get(name, default)

    def producer(self, value: Value) -> Op | None:
        return next((op for op in self.ops if value in op.outputs), None)

    def walk(self) -> Iterator[Op]:
        """Every op, regions included (pre-order)."""
        for op in self.ops:
            yield op
            if op.region is not None:
                yield from op.region.walk()

    def replace(self, **changes: Any) -> "Graph":
        fields = dict(name=self.name, inputs=self.inputs, ops=self.ops, outputs=self.outputs, attrs=self.attrs)
        fields.update(changes)
        return Graph(**fields)

    def __str__(self) -> str:
        from decspec.compiler.text import print_graph

        return print_graph(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Graph) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))
