"""One interpreter loop for every backend: walk the graph's ops, dispatch on a rule table.

A backend is a table {op name: rule}; a rule gets (state, op, *input values) and returns the
op's output values. A missing rule, or a failure inside one, is reported with the op, the
backend and the .dec line that produced the op.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from decspec.compiler.ir import Graph, Op
from decspec.dsl.diagnostics import DecError

Rule = Callable[..., Sequence[Any]]


class BackendError(RuntimeError):
    pass


def run_graph(graph: Graph, inputs: Sequence[Any], state: Any, rules: dict[str, Rule], backend: str) -> list[Any]:
    env = dict(zip(graph.inputs, inputs))
    for op in graph.ops:
        rule = rules.get(op.name)
        if rule is None:
            raise BackendError(f"the {backend} backend has no rule for op '{op.name}'{_where(op)}")
        try:
            outs = rule(state, op, *(env[v] for v in op.inputs))
        except (DecError, BackendError):
            raise
        except Exception as e:  # an internal failure: say where, keep the cause
            raise BackendError(f"while executing op '{op.name}'{_where(op)} on the {backend} backend: {type(e).__name__}: {e}") from e
        env.update(zip(op.outputs, outs))
    return [env[v] for v in graph.outputs]


def _where(op: Op) -> str:
    return f" (from spec line {op.meta.line}:{op.meta.col})" if op.meta.line else ""
