"""Builder: emit ops one by one, with types inferred from the op table and spans from the spec."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from decspec.compiler.ir import Graph, Meta, Op, Type, Value
from decspec.compiler.ops import opdef


class Builder:
    def __init__(self, name: str = "round", attrs: tuple[tuple[str, Any], ...] = ()):
        self.name = name
        self.attrs = attrs
        self.inputs: list[Value] = []
        self.ops: list[Op] = []
        self.meta = Meta()

    def input(self, type_: Type) -> Value:
        v = Value(type_)
        self.inputs.append(v)
        return v

    def at(self, span: Any, component: str | None = None) -> "Builder":
        """Tag the ops emitted from now on with a .dec span (anything with .line/.col)."""
        self.meta = Meta(span.line, span.col, component) if span is not None else Meta(component=component)
        return self

    @contextmanager
    def located(self, span: Any, component: str | None = None) -> Iterator["Builder"]:
        """Like `at`, for a block only: the ops emitted after it get the caller's span back."""
        caller = self.meta
        self.at(span, component)
        try:
            yield self
        finally:
            self.meta = caller

    def emit(self, name: str, inputs: list[Value] | tuple[Value, ...], region: Graph | None = None, **params: Any) -> tuple[Value, ...]:
        d = opdef(name)
        params_t = tuple(params.items())
        out_types = d.rule(dict(params_t), [v.type for v in inputs])
        outputs = tuple(Value(t) for t in out_types)
        self.ops.append(Op(name, tuple(inputs), outputs, params_t, region, self.meta))
        return outputs

    def build(self, outputs: tuple[Value, ...] = ()) -> Graph:
        return Graph(self.name, tuple(self.inputs), self.ops, outputs, self.attrs)
