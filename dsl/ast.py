"""The .dec abstract syntax tree. Every node keeps the Span it was parsed from.

Built by `decspec.dsl.parser.parse`; checked and resolved by `decspec.dsl.check`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from decspec.dsl.diagnostics import Source, Span


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Str:
    value: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span = field(compare=False)


@dataclass(frozen=True)
class ListLit:
    items: tuple["Expr", ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Name:
    id: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Attr:
    """`draft.prob`: an attribute of a name (used in `when` conditions)."""

    obj: Name
    attr: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class KwArg:
    name: str
    value: "Expr"
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[KwArg, ...]
    span: Span = field(compare=False)
    func_span: Span = field(compare=False)


@dataclass(frozen=True)
class Pipe:
    """`a | b | c`: a pipeline of sampler stages, applied left to right."""

    stages: tuple["Expr", ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class When:
    """`when COND`: an exit policy that stops drafting once COND holds."""

    cond: "Expr"
    span: Span = field(compare=False)


@dataclass(frozen=True)
class BinOp:
    """Arithmetic (+ - * /), comparisons (< <= > >= == !=) and logic (and, or)."""

    op: str
    left: "Expr"
    right: "Expr"
    span: Span = field(compare=False)


@dataclass(frozen=True)
class UnOp:
    op: str  # "-" or "not"
    operand: "Expr"
    span: Span = field(compare=False)


Expr = Union[Num, Str, Bool, ListLit, Name, Attr, Call, Pipe, When, BinOp, UnOp]


@dataclass(frozen=True)
class TypeExpr:
    """`int`, `float`, `str`, `bool`, `list[int]`, ..."""

    name: str
    args: tuple["TypeExpr", ...]
    span: Span = field(compare=False)

    def __str__(self) -> str:
        return self.name + (f"[{', '.join(map(str, self.args))}]" if self.args else "")


@dataclass(frozen=True)
class ParamDecl:
    name: str
    type: TypeExpr
    default: Expr | None
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Binding:
    """`name = expr` inside a decoder block: a slot (target, sampler, propose, stop, verify)
    or a local binding that later expressions may refer to (e.g. `draft = model("draft")`)."""

    name: str
    value: Expr
    span: Span = field(compare=False)
    name_span: Span = field(compare=False)


@dataclass(frozen=True)
class DecoderDef:
    """`decoder NAME(params) [extends BASE(args)] { bindings }`."""

    name: str
    params: tuple[ParamDecl, ...]
    base: Call | None
    body: tuple[Binding, ...]
    span: Span = field(compare=False)
    name_span: Span = field(compare=False)


@dataclass(frozen=True)
class Import:
    """`import "other.dec"`: makes the decoders of another file available (e.g. as a base)."""

    path: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Module:
    items: tuple[Import | DecoderDef, ...]
    source: Source = field(compare=False)
