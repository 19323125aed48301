"""Exit policies: when to stop drafting within a round (always bounded by the draft's `max`)."""
from __future__ import annotations

from decspec.stdlib.registry import Component, Contract, Param, register

WHEN = register(
    Component(
        "exit",
        "when",
        (Param("cond", "cond", doc="a condition on draft statistics, e.g. draft.prob < 0.3"),),
        "Stop drafting after the step whose statistics satisfy the condition (that step's token is kept).",
        Contract(True, "the stop decision depends only on the draft's own tokens and probabilities"),
    )
)

PROB = register(
    Component("stat", "prob", (), "q(d): the probability the draft gave the token it drafted.", Contract(None, ""))
)
ENTROPY = register(
    Component("stat", "entropy", (), "H(q) in nats: the entropy of the draft's distribution at this step.", Contract(None, ""))
)
