"""The checked form of a decoder: what the lowering to IR consumes.

`decspec.dsl.check` turns an ast.Module into a Spec: names resolved against the registry,
parameters type-checked and bound (defaults, then API/CLI overrides), arithmetic folded,
`extends` resolved. Nothing here can fail later for a reason the user could have fixed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from decspec.dsl.diagnostics import Source, Span
from decspec.stdlib.registry import Component


@dataclass(frozen=True)
class Instance:
    """A component applied to arguments, e.g. `top_p(0.95)` or `autoregressive(draft, max=4)`.

    args holds every parameter of the component by name, defaults filled in. Values are Python
    scalars/lists/tuples for scalar params, an Instance for component-typed params (a model), a
    Cond for an exit condition.
    """

    component: Component
    args: tuple[tuple[str, Any], ...]
    span: Span | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        return self.component.kind

    @property
    def name(self) -> str:
        return self.component.name

    def arg(self, name: str) -> Any:
        return dict(self.args)[name]

    def __str__(self) -> str:
        shown = ", ".join(f"{k}={_show(v)}" for k, v in self.args)
        return f"{self.name}({shown})" if self.args else self.name


@dataclass(frozen=True)
class Stat:
    """`draft.prob`: a statistic of the draft step, registered as a component of kind "stat"."""

    component: Component
    span: Span | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"draft.{self.component.name}"


@dataclass(frozen=True)
class Cond:
    """A folded condition tree: op in (<, <=, >, >=, ==, !=, and, or, not); leaves are Stat or float."""

    op: str
    operands: tuple["CondTerm", ...]
    span: Span | None = field(default=None, compare=False)

    def __str__(self) -> str:
        if self.op == "not":
            return f"not ({self.operands[0]})"
        left, right = self.operands
        wrap = lambda t: f"({t})" if isinstance(t, Cond) and t.op in ("and", "or") else str(t)
        return f"{wrap(left)} {self.op} {wrap(right)}"


CondTerm = Union[Cond, Stat, float, int, bool]


@dataclass(frozen=True)
class Spec:
    """One checked decoder, ready to lower.

    slots: "target" -> Instance (kind model); "sampler" -> tuple[Instance, ...] (kind sampler,
    applied left to right; empty = plain softmax); "propose" -> Instance (kind draft) or absent;
    "stop" -> Instance (kind exit) or absent; "verify" -> Instance (kind verifier) or absent;
    "search" -> Instance (kind search, `beam(...)`) or absent: beam search, which has no round graph (backends/beam.py).
    params: the decoder's own parameters with their bound values.
    models: the model roles the spec names (the `name` of every model(...) instance), in order.
    """

    name: str
    params: tuple[tuple[str, Any], ...]
    slots: tuple[tuple[str, Any], ...]
    source: Source = field(compare=False)
    span: Span | None = field(default=None, compare=False)
    warnings: tuple[Any, ...] = field(default=(), compare=False)

    def slot(self, name: str, default: Any = None) -> Any:
        return dict(self.slots).get(name, default)

    @property
    def models(self) -> tuple[str, ...]:
        roles: list[str] = []

        def visit(v: Any) -> None:
            if isinstance(v, Instance):
                if v.kind == "model" and v.name == "model":  # derived models (early_exit(...)) name their base model in their args
                    role = v.arg("name")
                    if role not in roles:
                        roles.append(role)
                for _, a in v.args:
                    visit(a)
            elif isinstance(v, tuple):
                for a in v:
                    visit(a)

        for _, value in self.slots:
            visit(value)
        return tuple(roles)


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v).replace("'", '"')
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)
