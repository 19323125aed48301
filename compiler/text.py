"""The IR's text form: a deterministic printer and a parser that reads it back.

    round[spec="autoregressive"](%0: ctx) {
      %1: f32[B,V] = model_call[model="target", last=true](%0)  loc(4:15)
      ...
      commit(%4)
    }

Values are renumbered %0, %1, ... in printing order, so printing is stable across runs and
print(parse(print(g))) == print(g).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from lark import Lark, Transformer, v_args
from lark.exceptions import LarkError

from decspec.compiler.ir import Graph, Meta, Op, Type, Value


@dataclass(frozen=True)
class Record:
    """A named group of params, printed `name(k=v, ...)`: e.g. one sampler stage."""

    name: str
    fields: tuple[tuple[str, Any], ...] = ()


# --------------------------------------------------------------------------- printing


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            return "nan"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, Record):
        return f"{v.name}({format_params(v.fields)})"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if v is None:
        return "none"
    raise TypeError(f"cannot print IR param value {v!r}")


def format_params(params: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in params)


def print_graph(graph: Graph) -> str:
    names: dict[Value, str] = {}

    def name(v: Value) -> str:
        if v not in names:
            names[v] = f"%{len(names)}"
        return names[v]

    lines: list[str] = []

    def emit_graph(g: Graph, indent: str, head: str) -> None:
        attrs = f"[{format_params(g.attrs)}]" if g.attrs else ""
        args = ", ".join(f"{name(v)}: {v.type}" for v in g.inputs)
        lines.append(f"{indent}{head}{g.name}{attrs}({args}) {{")
        for op in g.ops:
            emit_op(op, indent + "  ")
        if g.outputs:
            lines.append(f"{indent}  yield {', '.join(names[v] for v in g.outputs)}")
        lines.append(f"{indent}}}")

    def emit_op(op: Op, indent: str) -> None:
        ins = ", ".join(names[v] if v in names else f"<unbound {v.type}>" for v in op.inputs)
        outs = ", ".join(f"{name(v)}: {v.type}" for v in op.outputs)
        params = f"[{format_params(op.params)}]" if op.params else ""
        text = f"{outs + ' = ' if outs else ''}{op.name}{params}({ins})"
        loc = op.meta.loc()
        suffix = f"  loc({loc})" if loc else ""
        if op.region is None:
            lines.append(f"{indent}{text}{suffix}")
        else:
            emit_graph(op.region, indent, f"{text}{suffix} ^")

    emit_graph(graph, "", "")
    return "\n".join(lines)


# --------------------------------------------------------------------------- parsing

_GRAMMAR = r"""
start: graph
graph: NAME [attrs] "(" [arg ("," arg)*] ")" "{" op* [yield_] "}"
attrs: "[" [param ("," param)*] "]"
arg: VAR ":" type
yield_: "yield" VAR ("," VAR)*
op: [outs "="] NAME [attrs] "(" [VAR ("," VAR)*] ")" [loc] [region]
region: "^" graph
outs: arg ("," arg)*
loc: "loc" "(" INT ":" INT ")"
type: NAME ("[" [DIM ("," DIM)*] "]")?
param: NAME "=" value
?value: SIGNED_INT -> int_
      | SIGNED_FLOAT -> float_
      | "inf" -> inf | "-inf" -> ninf | "nan" -> nan
      | ESCAPED_STRING -> string
      | "true" -> true | "false" -> false | "none" -> none
      | "[" "]" -> empty_list
      | "[" value ("," value)* "]" -> list_
      | NAME "(" [param ("," param)*] ")" -> record
VAR: "%" /[0-9]+/
DIM: /[A-Za-z0-9_]+([+\-*][A-Za-z0-9_]+)*/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
%import common.INT
%import common.SIGNED_INT
%import common.SIGNED_FLOAT
%import common.ESCAPED_STRING
%import common.WS
%ignore WS
"""


class IRParseError(ValueError):
    pass


@v_args(inline=True)
class _ToValues(Transformer):
    def int_(self, t):
        return int(t)

    def float_(self, t):
        return float(t)

    def inf(self):
        return math.inf

    def ninf(self):
        return -math.inf

    def nan(self):
        return math.nan

    def string(self, t):
        return json.loads(t)

    def true(self):
        return True

    def false(self):
        return False

    def none(self):
        return None

    def empty_list(self):
        return ()

    def list_(self, *items):
        return tuple(items)

    def param(self, name, value):
        return (str(name), value)

    def record(self, name, *params):
        return Record(str(name), tuple(p for p in params if p is not None))

    def attrs(self, *params):
        return tuple(p for p in params if p is not None)

    def type(self, name, *dims):
        shape = tuple(int(d) if str(d).isdigit() else str(d) for d in dims if d is not None)
        return Type(str(name), shape)

    def loc(self, line, col):
        return Meta(int(line), int(col))


_parser = Lark(_GRAMMAR, parser="lalr", transformer=_ToValues(), maybe_placeholders=True)


def parse_graph(text: str) -> Graph:
    """Read the printed form back into a Graph."""
    try:
        tree = _parser.parse(text)
    except LarkError as e:
        raise IRParseError(str(e)) from None
    env: dict[str, Value] = {}
    return _build_graph(tree.children[0], env)


def _build_graph(tree, env: dict[str, Value]) -> Graph:
    name, attrs, *rest = tree.children
    args = [c for c in rest if getattr(c, "data", None) == "arg"]
    ops = [c for c in rest if getattr(c, "data", None) == "op"]
    yields = [c for c in rest if getattr(c, "data", None) == "yield_"]
    inputs = tuple(_define(a, env) for a in args)
    built = [_build_op(o, env) for o in ops]
    outputs = tuple(_use(str(v), env) for v in yields[0].children) if yields else ()
    return Graph(str(name), inputs, built, outputs, attrs or ())


def _build_op(tree, env: dict[str, Value]) -> Op:
    outs, name, params, *rest = tree.children
    *vars_, meta, region_tree = rest
    vars_ = [v for v in vars_ if v is not None]
    meta = meta or Meta()
    inputs = tuple(_use(str(v), env) for v in vars_)
    region = _build_graph(region_tree.children[0], env) if region_tree is not None else None
    outputs = tuple(_define(a, env) for a in outs.children) if outs is not None else ()
    return Op(str(name), inputs, outputs, params or (), region, meta)


def _define(arg, env: dict[str, Value]) -> Value:
    var, type_ = arg.children
    if str(var) in env:
        raise IRParseError(f"{var} is defined twice")
    env[str(var)] = v = Value(type_)
    return v


def _use(var: str, env: dict[str, Value]) -> Value:
    if var not in env:
        raise IRParseError(f"{var} is used before it is defined")
    return env[var]
