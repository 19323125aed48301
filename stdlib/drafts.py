"""Draft sources: where proposed tokens come from."""
from __future__ import annotations

from decspec.stdlib.registry import Component, Contract, Param, register

AUTOREGRESSIVE = register(
    Component(
        "draft",
        "autoregressive",
        (
            Param("model", "model", doc="the draft model"),
            Param("max", "int", default=4, low=1, high=64, doc="most tokens drafted per round"),
        ),
        "Sample up to `max` tokens from a draft model, one at a time, through the same sampler pipeline.",
        Contract(True, "drafts are sampled from the draft's own distribution q, which the verifier sees"),
        cite="Leviathan et al. 2023; Chen et al. 2023",
    )
)
