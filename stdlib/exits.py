"""Exit policies: when to stop drafting within a round (always bounded by the draft's `max`).

`when COND` lowers COND over draft statistics (`draft.prob`, `draft.entropy`, `draft.cumprob`) to elementwise
ops yielding a per-row stop flag after each draft step. Statistics read the draft model's own
distribution, softmax(logits) before the sampler pipeline: under `sampler = greedy` the sampled
distribution is one-hot, but the draft's confidence is still informative.
"""
from __future__ import annotations

from decspec.dsl.diagnostics import DecError
from decspec.dsl.spec import Cond, Stat
from decspec.stdlib.registry import Component, Contract, Param, register

_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def lower_when(lw, inst, logits, token):
    return lower_condition(lw, inst.arg("cond"), inst.span, logits, token)


def lower_condition(lw, cond, span, logits, token):
    """The per-row stop flag of a condition on draft statistics, after drafting `token` from `logits`."""
    if not isinstance(cond, Cond):
        raise DecError("this `when` condition does not depend on the draft; compare a draft statistic, e.g. draft.prob < 0.3", span)
    probs = lw.b.emit("softmax", [logits])[0]  # the draft's own distribution: [B, V]
    return _lower_cond(lw, cond, probs, token)


def _lower_cond(lw, cond: Cond, probs, token):
    b = lw.b
    if cond.op == "not":
        return b.emit("logical_not", [_lower_cond(lw, cond.operands[0], probs, token)])[0]
    if cond.op in ("and", "or"):
        left, right = (_lower_cond(lw, c, probs, token) for c in cond.operands)
        return b.emit("logical", [left, right], op=cond.op)[0]
    left, right = cond.operands
    op = cond.op
    if not isinstance(left, Stat):
        left, right, op = right, left, _FLIP[op]
    if not isinstance(left, Stat) or isinstance(right, (Stat, Cond)):
        raise DecError("a comparison in `when` needs one draft statistic and one number", cond.span)
    value = left.component.lower(lw, probs, token)
    return b.emit("compare", [value], op=op, value=float(right))[0]


def _lower_prob(lw, probs, token):
    return lw.b.emit("token_prob", [probs, token])[0]


def _lower_entropy(lw, probs, token):
    return lw.b.emit("entropy", [probs])[0]


def _lower_cumprob(lw, probs, token):
    """prod_{j <= i} q_j(d_j): a value the draft loop carries from step to step (1 before step 0)."""
    before = lw.carried("cumprob", 1.0)
    now = lw.b.emit("mul", [before, _lower_prob(lw, probs, token)])[0]
    lw.carry_next("cumprob", now)
    return now


register(
    Component(
        "exit",
        "when",
        (Param("cond", "cond", doc="a condition on draft statistics, e.g. draft.prob < 0.3"),),
        "Stop drafting after the step whose statistics satisfy the condition (that step's token is kept).",
        Contract(True, "the stop decision depends only on the draft's own tokens and probabilities"),
        lower_when,
    )
)
ENTROPY_MAX = 32.0  # nats: ln V for V tokens is at most ln 2**32 ~ 22.2 for any vocabulary an id can index

register(Component("stat", "prob", (), "The draft model's own probability of the token it drafted (softmax of its logits, before the sampler pipeline).", Contract(None, ""), _lower_prob,
                   values=(0.0, 1.0)))
register(Component("stat", "cumprob", (), "The product of the draft model's own probabilities of the tokens drafted so far this round, "
                   "this step's included (Dynamic Depth Decoding: stop when it falls below a threshold).", Contract(None, ""), _lower_cumprob,
                   cite="Brown et al. 2024, Dynamic Depth Decoding: Faster Speculative Decoding for LLMs", values=(0.0, 1.0)))
register(Component("stat", "entropy", (), "Entropy in nats of the draft model's own distribution at this step (before the sampler pipeline); "
                   "at most ln V for V tokens.", Contract(None, ""), _lower_entropy, values=(0.0, ENTROPY_MAX)))
