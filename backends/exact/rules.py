"""The exact backend's rule table: the eager rules, run over weighted rows instead of samples.

Every rule is the eager rule itself, wrapped to map its per-row inputs onto the current rows
(`Run.align`). Three kinds of op differ:

- `uniform` yields a symbolic `Draw`: nothing is drawn.
- an op that consumes a draw (`sample`, `rejection_accept`: their `draws` in compiler/ops.py)
  splits each row into one row per cell of its u-space partition (backends/exact/cells.py) and
  runs its eager rule at each cell's representative u.
- `draft_loop` runs the eager loop's steps (eager.Drafted) and maps what it carries onto the rows
  after each step, since the step's draws split them.

`model_call` returns float64 logits, so every probability is computed in float64. Outside an
exact round (`decspec.compile(..., backend="exact").generate(...)`) the same table samples:
`uniform` draws from the generator and every rule is the eager rule, in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import wraps
from typing import Callable

import torch

from decspec.backends.eager import rules as eager
from decspec.backends.exact.cells import CELLS
from decspec.backends.exact.tree_cells import CELLS as _TREE_CELLS
from decspec.backends.exact.rows import Run, per_row
from decspec.backends.interpreter import run_graph
from decspec.compiler.ops import OPS

CELLS.update(_TREE_CELLS)  # token trees: backends/exact/tree_cells.py


@dataclass(frozen=True)
class Draw:
    """A uniform draw left symbolic: its consumer enumerates its cells instead of reading it."""

    shape: tuple


def exact(rule: Callable, name: str) -> Callable:
    """The eager rule over the rows of an exact round: per-row inputs aligned to the current rows
    and, for an op that consumes a draw, the rows split at the op's cells first."""
    d = OPS[name].draws[0] if OPS[name].draws else None
    cells = CELLS.get(name)
    if d is not None and cells is None:
        raise NotImplementedError(f"the exact backend has no cells for op '{name}', which consumes a uniform draw")

    def align(state: Run, op, ins: tuple) -> tuple:
        return tuple(state.align(x) if per_row(v.type) else x for x, v in zip(ins, op.inputs))

    @wraps(rule)
    def run(state, op, *ins):
        if not isinstance(state, Run):
            return rule(state, op, *ins)
        ins = align(state, op, ins)
        if d is not None and isinstance(ins[d], Draw):
            extra = {"op": op} if getattr(cells, "takes_op", False) else {}  # cells that depend on an op param (a tree's shape)
            u = state.split(*cells(*ins[:d], *ins[d + 1:], **extra))  # cells: u [R, C, *draw shape], prob [R, C]
            ins = align(state, op, ins[:d] + (u,) + ins[d + 1:])
        return rule(state, op, *ins)

    return run


def uniform(state, op):
    if not isinstance(state, Run):
        return eager.uniform(state, op)
    return (Draw(tuple(op.param("shape"))),)


@wraps(eager.model_call)
def model_call(state, op, *ins):
    (logits,) = eager.model_call(state, op, *ins)
    return (logits.double(),)


@wraps(eager.draft_loop)
def draft_loop(state, op, ctx, cap=None):
    if not isinstance(state, Run):
        return eager.draft_loop(state, op, ctx, cap)
    carry = eager.Drafted.start(state.batch, op.param("max"), state.device, None if cap is None else state.align(cap), op.param("carry", ()))
    for i in range(op.param("max")):
        outs = run_graph(op.region, [state.align(ctx), carry.drafts, torch.tensor(i), *(state.align(c) for c in carry.carried)],
                         state, state.rules, state.backend)
        # the step's draws split the rows: map the step's outputs and the carried buffers onto them
        fields = (carry.drafts, carry.probs, carry.alive, carry.count, carry.cap)
        carry = eager.Drafted(*(state.align(x) for x in fields), tuple(state.align(c) for c in carry.carried))
        if carry.record(i, [state.align(x) for x in outs], len(carry.carried)):
            break
    return carry.drafts, carry.probs, carry.count


@wraps(eager.RULES["head_logits"])
def head_logits(state, op, *ins):
    (logits,) = eager.RULES["head_logits"](state, op, *ins)
    return (logits.double(),)  # as model_call's: every probability in float64


@wraps(eager.RULES["eagle_logits"])
def eagle_logits(state, op, *ins):
    (logits,) = eager.RULES["eagle_logits"](state, op, *ins)
    return (logits.double(),)  # as model_call's


RULES = {name: exact(rule, name) for name, rule in dict(eager.RULES, model_call=model_call, draft_loop=draft_loop,
                                                       head_logits=head_logits, eagle_logits=eagle_logits).items()}
RULES["uniform"] = uniform


@wraps(eager.RULES["tree_call"])
def tree_call(state, op, *ins):
    (logits,) = eager.RULES["tree_call"](state, op, *ins)
    return (logits.double(),)  # as model_call's


RULES["tree_call"] = exact(tree_call, "tree_call")


@wraps(eager.RULES["head_level"])
def head_level(state, op, *ins):
    (logits,) = eager.RULES["head_level"](state, op, *ins)
    return (logits.double(),)  # as model_call's (Medusa heads drafting a tree level)


RULES["head_level"] = exact(head_level, "head_level")


@wraps(eager.RULES["model_select"])
def model_select(state, op, *ins):
    (logits,) = eager.RULES["model_select"](state, op, *ins)
    return (logits.double(),)  # as model_call's


RULES["model_select"] = exact(model_select, "model_select")
