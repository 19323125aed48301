"""Verifiers: which drafted tokens the target accepts, and the token it adds."""
from __future__ import annotations

from decspec.stdlib.registry import Component, Contract, register

REJECTION = register(
    Component(
        "verifier",
        "rejection",
        (),
        "Speculative sampling: accept d_i with probability min(1, p(d_i)/q(d_i)); on the first rejection "
        "sample from norm(max(0, p - q)); after a full accept sample a bonus token from p.",
        Contract(True, "rejection sampling (Leviathan et al. 2023) reproduces p exactly for any draft q"),
        cite="Leviathan et al. 2023; Chen et al. 2023",
    )
)
GREEDY = register(
    Component(
        "verifier",
        "greedy",
        (),
        "Exact match: the target samples its own token at each draft position (argmax under a greedy "
        "sampler); drafts are accepted while they equal it, and the first differing target token is kept.",
        Contract(True, "every emitted token is the target's own sample; drafts only decide how many per round"),
    )
)
