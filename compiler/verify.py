"""The IR verifier: run after every pass in tests.

Checks that every value is defined before use, that each op's output types follow its type rule,
that every randomness-consuming input comes straight from its own `uniform` (one draw, one
consumer), and that a round ends in exactly one `commit`.
"""
from __future__ import annotations

from decspec.compiler.ir import Graph, Value
from decspec.compiler.ops import OPS, IRTypeError


class IRVerifyError(ValueError):
    pass


def verify(graph: Graph, *, is_round: bool = True) -> Graph:
    """Raise IRVerifyError naming the op at fault; return the graph unchanged when it is sound."""
    _check(graph, set(), is_round)
    return graph


def _check(graph: Graph, outer: set[Value], is_round: bool) -> None:
    defined: set[Value] = set(graph.inputs)
    uniform_users: dict[Value, int] = {}
    uniforms: set[Value] = set()
    commits = 0
    for op in graph.ops:
        where = f"op {op.name}" + (f" (spec line {op.meta.line})" if op.meta.line else "")
        if op.name not in OPS:
            raise IRVerifyError(f"{where}: unknown op")
        d = OPS[op.name]
        for v in op.inputs:
            if v not in defined:
                raise IRVerifyError(f"{where}: uses a value of type {v.type} that is not defined before it")
            if v in uniforms:
                uniform_users[v] = uniform_users.get(v, 0) + 1
        try:
            expected = d.rule(dict(op.params), [v.type for v in op.inputs])
            if d.region_rule is not None and op.region is not None:
                d.region_rule(dict(op.params), op.region)
        except IRTypeError as e:
            raise IRVerifyError(f"{where}: {e}") from None
        except Exception as e:  # a rule tripping over a malformed op is still the op's fault
            raise IRVerifyError(f"{where}: malformed op ({type(e).__name__}: {e})") from None
        got = [v.type for v in op.outputs]
        if expected != got:
            raise IRVerifyError(f"{where}: outputs {', '.join(map(str, got))} but its rule gives {', '.join(map(str, expected))}")
        for i in d.draws:
            src = graph.producer(op.inputs[i])
            if src is None or src.name != "uniform":
                raise IRVerifyError(f"{where}: input {i} must come straight from a uniform draw")
        if d.has_region != (op.region is not None):
            raise IRVerifyError(f"{where}: {'needs' if d.has_region else 'must not have'} a region")
        if op.region is not None:
            _check(op.region, defined, is_round=False)
        if op.name == "uniform":
            uniforms.update(op.outputs)
        if d.effect == "sink" and not is_round:
            raise IRVerifyError(f"{where}: a sink may not appear inside a region")
        commits += op.name == "commit"
        defined.update(op.outputs)
    for v, n in uniform_users.items():
        if n > 1:
            raise IRVerifyError(f"a uniform draw of type {v.type} is consumed {n} times; each draw may feed one op")
    for v in graph.outputs:
        if v not in defined:
            raise IRVerifyError(f"{graph.name} yields a value that is not defined")
    if is_round and commits != 1:
        raise IRVerifyError(f"a round must end in exactly one commit, found {commits}")
