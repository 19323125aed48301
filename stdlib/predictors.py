"""Acceptance predictors, and the exit policy that stops drafting on their estimate.

`stop = predicted(threshold = 0.5, predictor = "confidence")` stops a row after the draft step at
which the predictor's estimate that the *next* draft would be accepted falls below `threshold`
(SpecDec++, Huang et al. 2024; DISCO, Mamou et al. 2024: a classifier over draft features decides
whether to keep drafting). A predictor is a plain function registered by name from Python:

    >>> from decspec.stdlib.predictors import register_predictor
    >>> register_predictor("sharp", lambda f: f["prob"] ** 2, "the draft's probability, squared")
    >>> stop = 'predicted(threshold = 0.3, predictor = "sharp")'   # usable in any spec from now on

It receives the step's features, `{"prob", "entropy", "cumprob": f32[B], "step": i64[]}` (the
draft statistics of the same names, and the draft step, from 0), and returns a tensor [B] in
[0, 1] (values outside are clamped). It runs inside the round on every backend, so it should be
torch code without host synchronization to compile without graph breaks. Lossless for any
predictor: the estimate depends only on the draft's own tokens and probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from decspec.dsl.diagnostics import DecError, did_you_mean
from decspec.stdlib.registry import Component, Contract, Param, lookup, register

Features = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Predictor:
    name: str
    fn: Callable[[Features], torch.Tensor]
    doc: str = ""


PREDICTORS: dict[str, Predictor] = {}


def register_predictor(name: str, fn: Callable[[Features], torch.Tensor], doc: str = "") -> None:
    """Make `predictor = "NAME"` available to `predicted(...)`; a second registration replaces the first."""
    PREDICTORS[name] = Predictor(name, fn, doc)


def unregister_predictor(name: str) -> None:
    PREDICTORS.pop(name, None)


def predict(name: str, prob: torch.Tensor, entropy: torch.Tensor, cumprob: torch.Tensor, step) -> torch.Tensor:
    """The registered predictor's estimate, clamped into [0, 1]. -> [B]"""
    features = {"prob": prob, "entropy": entropy, "cumprob": cumprob, "step": torch.as_tensor(step)}
    return PREDICTORS[name].fn(features).to(prob.dtype).clamp(0, 1)


def _confidence(f: Features) -> torch.Tensor:
    return f["prob"]


def _calibrated(f: Features) -> torch.Tensor:
    # logistic in the draft's confidence and entropy; hand-set coefficients (not fitted: fit your own on your
    # models and register it), monotone in the direction acceptance moves: up with prob, down with entropy
    return torch.sigmoid(CALIBRATION[0] + CALIBRATION[1] * f["prob"] + CALIBRATION[2] * f["entropy"])


CALIBRATION = (-0.5, 2.5, -0.3)

register_predictor("confidence", _confidence, "the draft's own probability of its token (HF's assistant confidence, DISCO's first feature)")
register_predictor("calibrated", _calibrated, "sigmoid(a + b * prob + c * entropy), hand-set coefficients")


def lower_predicted(lw, inst, logits, token):
    name = inst.arg("predictor")
    if name not in PREDICTORS:
        raise DecError(f"unknown predictor '{name}'", inst.span,
                       hint=did_you_mean(name, sorted(PREDICTORS)) or f"register it with decspec.stdlib.predictors.register_predictor; known: {', '.join(sorted(PREDICTORS))}")
    b = lw.b
    probs = b.emit("softmax", [logits])[0]  # the draft's own distribution, as every draft statistic reads it
    prob = lookup("stat", "prob").lower(lw, probs, token)
    entropy = lookup("stat", "entropy").lower(lw, probs, token)
    cumprob = lookup("stat", "cumprob").lower(lw, probs, token)
    estimate = b.emit("predict_accept", [prob, entropy, cumprob, lw.draft_step()], predictor=name)[0]
    return b.emit("compare", [estimate], op="<", value=float(inst.arg("threshold")))[0]


register(
    Component(
        "exit",
        "predicted",
        (
            Param("threshold", "float", default=0.5, low=0.0, high=1.0, doc="stop once the estimated acceptance of the next draft is below this"),
            Param("predictor", "str", default="confidence", doc="a predictor registered with register_predictor (stdlib/predictors.py)"),
        ),
        "Stop drafting after the step at which a predictor's estimate that the next draft is accepted falls below "
        "`threshold`. Predictors are Python functions of the step's draft statistics, registered by name: "
        "\"confidence\" (default: draft.prob), \"calibrated\" (logistic in draft.prob and draft.entropy, hand-set).",
        Contract(True, "the stop decision depends only on the draft's own tokens and probabilities (through the predictor)"),
        lower_predicted,
        cite="Huang et al. 2024, SpecDec++: Boosting Speculative Decoding via Adaptive Candidate Lengths; "
             "Mamou et al. 2024, Dynamic Speculation Lookahead (DISCO)",
    )
)
