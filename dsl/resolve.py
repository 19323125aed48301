"""Resolve .dec expressions against the registry: names, calls, pipelines, `when` conditions,
constant folding and type checks. Errors are collected, never raised; a failed value is BAD.

An expression is always evaluated with what its place expects: a scalar type (`int`, ...),
a component kind (`sampler`, `model`, ...) or `cond`. A Name resolves, in order, to a decoder
parameter, a binding of the block (evaluated lazily, once per expected kind), or a registered
component of the expected kind whose parameters all have defaults.

    >>> from decspec.dsl.parser import parse
    >>> body = parse("decoder d() { x = top_p(0.5 + 0.25) | greedy }").items[0].body
    >>> r = Resolver({b.name: (b, Scope({}, "d")) for b in body}, [])
    >>> [str(i) for i in r.binding("x", "sampler", body[0].name_span)]
    ['top_p(p=0.75)', 'greedy']
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from decspec.dsl import ast
from decspec.dsl.diagnostics import Diagnostic, Span, did_you_mean
from decspec.dsl.spec import Cond, Instance, Stat
from decspec.dsl.values import INT_LIMIT, KIND_NOUNS, Mismatch, a, coerce, describe, expected
from decspec.stdlib import registry

BAD: Any = type("Bad", (), {"__repr__": lambda self: "BAD"})()  # a value whose error is already reported
_ARITH = ("+", "-", "*", "/")
_COMPARE = ("<", "<=", ">", ">=", "==", "!=")
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


@dataclass(frozen=True)
class Scope:
    """Where an expression was written: the bound parameters of the decoder it belongs to."""

    params: Mapping[str, Any]
    decoder: str


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def bind_arguments(names: Sequence[str], call: ast.Call, what: str, errors: list[Diagnostic]) -> dict[str, ast.Expr]:
    """Match a call's positional and keyword arguments to parameter names.

    Reports too many positional arguments, unknown keywords (with did-you-mean) and arguments
    given twice; `what` names the callee in messages (`top_p`, `decoder 'base'`).
    """
    given: dict[str, ast.Expr] = {}
    for i, arg in enumerate(call.args):
        if i >= len(names):
            takes = f"{len(names)} argument" + ("" if len(names) == 1 else "s")
            errors.append(Diagnostic(f"too many arguments: {what} takes {takes}", arg.span,
                                     hint=f"parameters: {', '.join(names)}" if names else None))
            break
        given[names[i]] = arg
    for kw in call.kwargs:
        if kw.name not in names:
            hint = did_you_mean(kw.name, names) or (f"parameters: {', '.join(names)}" if names else f"{what} takes no arguments")
            errors.append(Diagnostic(f"{what} has no parameter '{kw.name}'", kw.span, hint=hint))
        elif kw.name in given:
            errors.append(Diagnostic(f"argument '{kw.name}' given twice", kw.span))
        else:
            given[kw.name] = kw.value
    return given


def check_bounds(param: registry.Param, value: Any, what: str) -> str | None:
    """A message when a number (or an item of a list of numbers) lies outside the parameter's inclusive
    bounds, else None."""
    if isinstance(value, tuple):
        return next((m for v in value if (m := check_bounds(param, v, what))), None)
    if not is_number(value):
        return None
    low, high = param.low, param.high
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    return f"{what}'s '{param.name}' must be {bounds_text(low, high)}, found {value}"


def bounds_text(low: float | None, high: float | None) -> str:
    """'between 0.0 and 1.0', 'at least 1', 'at most 2'."""
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


class Resolver:
    """Evaluates expressions of one decoder, given its bindings (own and inherited)."""

    def __init__(self, bindings: Mapping[str, tuple[ast.Binding, Scope]], errors: list[Diagnostic]):
        self.bindings = bindings
        self.errors = errors
        self.used: set[str] = set()
        self._cache: dict[tuple[str, str], Any] = {}
        self._active: list[str] = []

    def error(self, message: str, span: Span | None, hint: str | None = None) -> Any:
        self.errors.append(Diagnostic(message, span, hint=hint))
        return BAD

    # --- entry points ---------------------------------------------------------------------

    def value(self, expr: ast.Expr, want: str, scope: Scope) -> Any:
        """The value of `expr` where `want` (a scalar type, a component kind or `cond`) is expected."""
        if want in registry.KINDS:
            return self.component(expr, want, scope)
        if want == "cond":
            return self.condition(expr, scope)
        return self.typed(expr, want, scope)

    def binding(self, name: str, want: str, use: Span | None) -> Any:
        """The value of a binding of the block, evaluated once per expected kind."""
        key = (name, want)
        if key in self._cache:
            return self._cache[key]
        b, scope = self.bindings[name]
        self.used.add(name)
        if name in self._active:
            cycle = " -> ".join(self._active[self._active.index(name):] + [name])
            return self.error(f"binding '{name}' refers to itself ({cycle})", use)
        self._active.append(name)
        try:
            result = self.value(b.value, want, scope) if want != "scalar" else self.constant(b.value, "a value", scope)
        finally:
            self._active.pop()
        self._cache[key] = result
        return result

    # --- scalars --------------------------------------------------------------------------

    def typed(self, expr: ast.Expr, want: str, scope: Scope) -> Any:
        value = self.constant(expr, expected(want), scope)
        if value is BAD:
            return BAD
        try:
            return coerce(value, want)
        except Mismatch as e:
            if isinstance(expr, ast.ListLit) and want.startswith("list[") and isinstance(value, tuple):
                item_type = want[5:-1]
                for item, v in zip(expr.items, value):
                    if not _fits(v, item_type):
                        return self.error(f"expected {expected(item_type)} in this list, found {describe(v)}", item.span)
            return self.error(f"expected {expected(want)}, found {e.found}", expr.span)

    def constant(self, expr: ast.Expr, want: str, scope: Scope) -> Any:
        """Fold a scalar expression to a Python value (lists become tuples); `want` is for messages."""
        if isinstance(expr, (ast.Num, ast.Str, ast.Bool)):
            return expr.value
        if isinstance(expr, ast.ListLit):
            items = [self.constant(item, "a list item", scope) for item in expr.items]
            return BAD if any(i is BAD for i in items) else tuple(items)
        if isinstance(expr, ast.Name):
            if expr.id in scope.params:
                return scope.params[expr.id]
            if expr.id in registry.SLOTS and expr.id in self.bindings:
                return self.error(f"expected {want}, found '{expr.id}', {expected(registry.SLOTS[expr.id])}", expr.span)
            if expr.id in self.bindings:
                return self.binding(expr.id, "scalar", expr.span)
            kinds = [k for k in registry.KINDS if registry.lookup(k, expr.id)]
            if kinds:
                return self.error(f"expected {want}, found {expected(kinds[0])} '{expr.id}'", expr.span)
            return self.error(f"unknown name '{expr.id}'", expr.span, did_you_mean(expr.id, [*scope.params, *self.bindings]))
        if isinstance(expr, ast.UnOp):
            operand = self.constant(expr.operand, "a number" if expr.op == "-" else "a bool", scope)
            return self.fold_unary(expr, operand)
        if isinstance(expr, ast.BinOp):
            left = self.constant(expr.left, "a value", scope)
            right = self.constant(expr.right, "a value", scope)
            return self.fold_binary(expr, left, right)
        return self.error(f"expected {want}, found {self.what(expr)}", expr.span)

    def fold_unary(self, expr: ast.UnOp, operand: Any) -> Any:
        if operand is BAD:
            return BAD
        if expr.op == "-":
            return -operand if is_number(operand) else self.error(f"'-' needs a number, found {describe(operand)}", expr.operand.span)
        return (not operand) if isinstance(operand, bool) else self.error(f"'not' needs a bool, found {describe(operand)}", expr.operand.span)

    def fold_binary(self, expr: ast.BinOp, left: Any, right: Any) -> Any:
        if left is BAD or right is BAD:
            return BAD
        op = expr.op
        if op in _ARITH:
            if op == "+" and isinstance(left, str) and isinstance(right, str):
                return left + right
            for side, v in ((expr.left, left), (expr.right, right)):
                if not is_number(v):
                    return self.error(f"'{op}' needs numbers, found {describe(v)}", side.span)
            if op == "/" and right == 0:
                return self.error("division by zero", expr.right.span)
            result = left / right if op == "/" else left + right if op == "+" else left - right if op == "-" else left * right
            if isinstance(result, int) and abs(result) >= INT_LIMIT:
                return self.error("integer too large for 64 bits", expr.span)
            if isinstance(result, float) and not math.isfinite(result):
                return self.error(f"'{op}' overflows a 64-bit float here (the result would be infinite)", expr.span,
                                  hint="floats reach about 1.8e308; every parameter has a finite range")
            if result == 0 and op in ("*", "/") and left != 0 and (op == "/" or right != 0):
                return self.error(f"'{op}' underflows a 64-bit float here (the result would be 0)", expr.span,
                                  hint="the smallest positive float is about 4.9e-324; write 0 if 0 is meant")
            return result
        if op in _COMPARE:
            if op in ("==", "!=") and type(left) is type(right) and not is_number(left):
                return (left == right) == (op == "==")
            for side, v in ((expr.left, left), (expr.right, right)):
                if not is_number(v):
                    return self.error(f"'{op}' compares numbers, found {describe(v)}", side.span)
            return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right,
                    "==": left == right, "!=": left != right}[op]
        for side, v in ((expr.left, left), (expr.right, right)):
            if not isinstance(v, bool):
                return self.error(f"'{op}' needs bools, found {describe(v)}", side.span)
        return (left and right) if op == "and" else (left or right)

    # --- components -----------------------------------------------------------------------

    def component(self, expr: ast.Expr, kind: str, scope: Scope) -> Any:
        """An Instance of `kind` (for samplers: an Instance or a tuple of them, a pipeline)."""
        if isinstance(expr, ast.Call):
            return self.call(expr, kind, scope)
        if isinstance(expr, ast.Name):
            return self.component_name(expr, kind, scope)
        if isinstance(expr, ast.Attr) and kind == "stat":
            return self.stat(expr)
        if isinstance(expr, ast.Pipe):
            if kind != "sampler":
                return self.error(f"pipelines `|` combine samplers, but {expected(kind)} is expected here", expr.span)
            stages: list[Any] = []
            for stage in expr.stages:
                value = self.component(stage, "sampler", scope)
                stages.extend(value if isinstance(value, tuple) else [value])
            return BAD if any(s is BAD for s in stages) else tuple(stages)
        if isinstance(expr, ast.When):
            if kind != "exit":
                return self.error(f"`when` makes an exit policy and belongs in the `stop` slot; {expected(kind)} is expected here", expr.span)
            cond = self.condition(expr.cond, scope)
            return BAD if cond is BAD else Instance(registry.lookup("exit", "when"), (("cond", cond),), expr.span)
        return self.error(f"expected {expected(kind)}, found {self.what(expr)}", expr.span)

    def component_name(self, expr: ast.Name, kind: str, scope: Scope) -> Any:
        name = expr.id
        if name in scope.params:
            if scope.params[name] is BAD:
                return BAD
            return self.error(f"expected {expected(kind)}, found parameter '{name}', {describe(scope.params[name])}", expr.span)
        if name in self.bindings:
            slot_kind = registry.SLOTS.get(name, kind)
            if slot_kind != kind:  # a slot holds its own kind; say so where it is used
                return self.error(f"expected {expected(kind)}, found '{name}', {expected(slot_kind)}", expr.span)
            return self.binding(name, kind, expr.span)
        comp = registry.lookup(kind, name)
        if comp is not None:
            if any(p.required for p in comp.params):
                return self.error(f"'{name}' needs arguments: {comp.signature}", expr.span,
                                  hint=f"write {name}({', '.join(p.name for p in comp.params if p.required)} = ...)")
            return Instance(comp, tuple((p.name, p.default) for p in comp.params), expr.span)
        return self.unknown(name, kind, expr.span, [*scope.params, *self.bindings])

    def unknown(self, name: str, kind: str, span: Span, local: Sequence[str]) -> Any:
        other = [k for k in registry.KINDS if registry.lookup(k, name)]
        if other:
            return self.error(f"'{name}' is {expected(other[0])}, but {expected(kind)} is expected here", span)
        hint = did_you_mean(name, [*local, *registry.names(kind)])
        if hint is None and registry.names(kind):
            hint = f"known {KIND_NOUNS[kind]}s: {', '.join(registry.names(kind))}"
        return self.error(f"unknown {KIND_NOUNS[kind]} '{name}'", span, hint)

    def call(self, expr: ast.Call, kind: str, scope: Scope) -> Any:
        comp = registry.lookup(kind, expr.func)
        if comp is None:
            if expr.func in self.bindings:
                return self.error(f"'{expr.func}' is a binding, not a component, and cannot be called", expr.func_span)
            return self.unknown(expr.func, kind, expr.func_span, [])
        given = bind_arguments([p.name for p in comp.params], expr, comp.name, self.errors)
        args, ok = [], True
        for p in comp.params:
            if p.name not in given:
                if p.required:
                    self.error(f"missing argument '{p.name}' for {comp.signature}", expr.span)
                    ok = False
                args.append((p.name, p.default))
                continue
            arg = given[p.name]
            value = self.value(arg, p.type, scope)
            message = check_bounds(p, value, comp.name)
            if message:
                origin = f"the value comes from parameter '{arg.id}'" if isinstance(arg, ast.Name) and arg.id in scope.params else None
                value = self.error(message, arg.span, origin)
            ok = ok and value is not BAD
            args.append((p.name, value))
        return Instance(comp, tuple(args), expr.span) if ok else BAD

    # --- conditions -----------------------------------------------------------------------

    def condition(self, expr: ast.Expr, scope: Scope) -> Any:
        """A `when` condition: a Cond (or a constant bool)."""
        term = self.cond_term(expr, scope)
        if term is BAD or isinstance(term, (Cond, bool)):
            return term
        if isinstance(term, Stat):
            return self.error(f"'{term}' is a draft statistic, not a condition", expr.span,
                              hint=f"compare it with a number, e.g. {term} < 0.3")
        return self.error(f"expected a condition, found {describe(term)}", expr.span,
                          hint="e.g. draft.prob < 0.3")

    def cond_term(self, expr: ast.Expr, scope: Scope) -> Any:
        """A Cond, Stat, number or bool; comparisons keep the statistic on the left."""
        if isinstance(expr, ast.Attr):
            return self.stat(expr)
        if isinstance(expr, ast.Name) and expr.id not in scope.params and expr.id in self.bindings \
                and expr.id not in registry.SLOTS:
            return self.binding(expr.id, "cond", expr.span)
        if isinstance(expr, ast.BinOp):
            left, right = self.cond_term(expr.left, scope), self.cond_term(expr.right, scope)
            if left is BAD or right is BAD:
                return BAD
            if not any(isinstance(v, (Cond, Stat)) for v in (left, right)):
                return self.fold_binary(expr, left, right)
            return self.combine(expr, left, right)
        if isinstance(expr, ast.UnOp):
            operand = self.cond_term(expr.operand, scope)
            if isinstance(operand, Cond) and expr.op == "not":
                return Cond("not", (operand,), expr.span)
            if isinstance(operand, (Cond, Stat)):
                return self.error(f"'{expr.op}' cannot apply to {self.what_term(operand)}", expr.operand.span)
            return self.fold_unary(expr, operand)
        return self.constant(expr, "a number or a draft statistic", scope)

    def combine(self, expr: ast.BinOp, left: Any, right: Any) -> Any:
        op = expr.op
        if op in _COMPARE:
            for side, v in ((expr.left, left), (expr.right, right)):
                if not (isinstance(v, Stat) or is_number(v)):
                    return self.error(f"'{op}' compares a draft statistic with a number, found {self.what_term(v)}", side.span)
            if isinstance(left, Stat) and isinstance(right, Stat):
                return self.error(f"'{op}' compares a draft statistic with a number, found two statistics", expr.span)
            stat, number, side = (right, left, expr.left) if isinstance(right, Stat) else (left, right, expr.right)
            low, high = stat.component.values or (None, None)
            if (low is not None and number < low) or (high is not None and number > high):
                origin = f"the value comes from '{side.id}'" if isinstance(side, ast.Name) else None
                return self.error(f"draft.{stat.component.name} lies {bounds_text(low, high)}; a threshold of {number} "
                                  "is outside it", side.span, origin)
            if isinstance(right, Stat):  # keep the statistic on the left; numbers are floats
                return Cond(_FLIP[op], (right, float(left)), expr.span)
            return Cond(op, (left, float(right)), expr.span)
        if op in ("and", "or"):
            for side, v in ((expr.left, left), (expr.right, right)):
                if not isinstance(v, (Cond, bool)):
                    return self.error(f"'{op}' needs conditions, found {self.what_term(v)}", side.span)
            if isinstance(left, bool) or isinstance(right, bool):
                const, other = (left, right) if isinstance(left, bool) else (right, left)
                return other if const == (op == "and") else const
            return Cond(op, (left, right), expr.span)
        return self.error(f"'{op}' cannot apply to draft statistics; compare them with numbers instead", expr.span)

    def stat(self, expr: ast.Attr) -> Any:
        if expr.obj.id != "draft":
            return self.error(f"conditions read statistics of the draft, not of '{expr.obj.id}'", expr.obj.span,
                              hint=f"e.g. draft.{registry.names('stat')[0] if registry.names('stat') else 'prob'}")
        comp = registry.lookup("stat", expr.attr)
        if comp is None:
            stats = registry.names("stat")
            return self.error(f"unknown draft statistic '{expr.attr}'", expr.span,
                              did_you_mean(expr.attr, stats) or f"known statistics: {', '.join(stats)}")
        return Stat(comp, expr.span)

    # --- naming things in messages --------------------------------------------------------

    def what(self, expr: ast.Expr) -> str:
        """What an expression is, for 'expected X, found Y'."""
        if isinstance(expr, ast.Num):
            return "a number"
        if isinstance(expr, ast.Str):
            return "a string"
        if isinstance(expr, ast.Bool):
            return "a bool"
        if isinstance(expr, ast.ListLit):
            return "a list"
        if isinstance(expr, ast.Attr):
            return "a draft statistic"
        if isinstance(expr, ast.Pipe):
            return "a sampler pipeline"
        if isinstance(expr, ast.When):
            return "an exit policy (`when ...`)"
        if isinstance(expr, ast.Call):
            kinds = [k for k in registry.KINDS if registry.lookup(k, expr.func)]
            return expected(kinds[0]) if len(kinds) == 1 else f"a call to '{expr.func}'"
        if isinstance(expr, ast.BinOp):
            return "a number" if expr.op in _ARITH else "a condition"
        if isinstance(expr, ast.UnOp):
            return "a number" if expr.op == "-" else "a condition"
        return a("value")

    @staticmethod
    def what_term(value: Any) -> str:
        if isinstance(value, Stat):
            return "a draft statistic"
        if isinstance(value, Cond):
            return "a condition"
        return describe(value)


def _fits(value: Any, type_: str) -> bool:
    try:
        coerce(value, type_)
        return True
    except Mismatch:
        return False
