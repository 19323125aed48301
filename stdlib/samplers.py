"""Samplers: logits transforms composed with `|`, applied left to right, then softmax.

Every transform maps logits [..., V] to logits [..., V], removing tokens by setting them to
-inf. The pipeline is applied identically to the target and to every draft, so the
distribution a lossless decoder samples from is softmax(pipeline(target logits)).
"""
from __future__ import annotations

import torch

from decspec.stdlib.registry import Component, Contract, Param, register

NEG_INF = float("-inf")
T_MAX = 1e6  # temperature's upper bound: past it every realistic logit spread (< 100) is within 1e-4 of uniform
HEADROOM = 1024.0  # a tiny temperature's logits stay below finfo.max / HEADROOM: room for repetition_penalty's x100, softmax's differences
_NO_CONTRACT = Contract(None, "samplers define the target distribution; they are not checked against it")


def _at_least_f32(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Keep only the most likely token (the first one on ties)."""
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.argmax(-1, keepdim=True), True)
    return logits.masked_fill(~keep, NEG_INF)


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    """logits / t (in at least float32); t = 0 means greedy.

    In a row where logits / t would leave [-limit, limit], limit = finfo.max / HEADROOM (a tiny t; t
    underflowing the dtype), t acts as the smallest temperature the row can take: its largest |logit|
    lands at the limit. Signs and order are kept (and so the later stages' meaning: repetition_penalty is
    positively homogeneous), the gaps stay far beyond what softmax resolves, so a tiny t gives greedy's
    token (tied maxima alike), and the later stages have room (repetition_penalty's x100, softmax's
    differences) before anything overflows. No finite t makes a removed token (-inf) anything but -inf.
    """
    if t == 0:
        return greedy(logits)
    logits = _at_least_f32(logits)  # float16 would overflow at |logits / t| > 65504
    limit = torch.finfo(logits.dtype).max / HEADROOM
    scaled = logits / t  # [..., V]
    finite = logits.abs() < float("inf")  # isfinite, in ops torch-mlir lowers
    too_big = (finite & ~(scaled.abs() <= limit)).any(-1, keepdim=True)  # [..., 1] (inf and nan included)
    largest = logits.abs().masked_fill(~finite, 0).amax(-1, keepdim=True)  # [..., 1]
    smallest_t = (largest / limit).clamp_min(torch.finfo(logits.dtype).tiny)  # > 0 even for a row of zeros
    return torch.where(too_big, logits / smallest_t, scaled)


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k most likely tokens (and any tied with the k-th)."""
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep every token whose strictly more likely tokens hold less than p of the mass.

    Ranked by logit, never by rounded probabilities, so a kept token's logit is never below a dropped
    one's; tokens with equal logits are kept or dropped together (as top_k keeps ties with the k-th),
    which makes the result independent of token ids. The mass is Hugging Face's `TopPLogitsWarper`
    formula (the ascending cumulative softmax compared with 1 - p, in at least float32): the kept set
    is its set closed under ties (docs/language.md, "Samplers: ranking and ties"). At least one token
    stays (top_p(0) keeps the tied maxima); p >= 1 keeps all.

        >>> top_p(torch.tensor([2.0, 1.0, 1.0, 0.0]), 0.6).tolist()   # masses 0.53, 0.20, 0.20, 0.07
        [2.0, 1.0, 1.0, -inf]
    """
    if p >= 1.0:
        return logits
    ascending = _at_least_f32(logits).sort(dim=-1).values  # [..., V]: values only, so no order among ties is read
    mass_upto = ascending.softmax(-1).cumsum(-1)  # [..., V]: this rank and every less likely one (non-decreasing)
    n_drop = (mass_upto <= 1 - p).sum(-1, keepdim=True).clamp(max=logits.shape[-1] - 1)  # [..., 1]: a prefix
    edge = ascending.gather(-1, n_drop)  # [..., 1]: the least likely kept logit
    return logits.masked_fill(logits < edge, NEG_INF)


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least p times the most likely token's."""
    if p <= 0.0:
        return logits
    probs = torch.softmax(_at_least_f32(logits), dim=-1)
    return logits.masked_fill(probs < p * probs.amax(-1, keepdim=True), NEG_INF)


def typical_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Locally typical sampling (HF `typical_p`): keep the tokens whose surprisal -log p(x) is closest
    to the entropy H(p), in that order, until their mass reaches p (ties with the last kept stay; >= 1 token)."""
    if p >= 1.0:
        return logits
    logp = torch.log_softmax(_at_least_f32(logits), dim=-1)  # [..., V]
    probs = logp.exp()
    ent = -torch.where(probs > 0, logp * probs, 0.0).sum(-1, keepdim=True)  # H(p); HF's nansum (-inf * 0 is nan, summed as 0)
    shifted = (-logp - ent).abs()  # |surprisal - H|: -inf logits sort last (inf)
    sorted_shifted, order = shifted.sort(dim=-1, stable=True)
    cum = probs.gather(-1, order).cumsum(-1)
    last = (cum < p).sum(-1, keepdim=True).clamp(max=logits.shape[-1] - 1)  # index of the last kept token
    drop_sorted = sorted_shifted > sorted_shifted.gather(-1, last)
    drop_sorted[..., :1] = False  # min_tokens_to_keep = 1
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


TRANSFORMS = {"greedy": greedy, "temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p, "typical_p": typical_p}
CONTEXT_STAGES: set[str] = set()  # stages that read the tokens before each position (stdlib/penalties.py): f(logits, counts, **params)


def needs_context(stages) -> bool:
    """Whether a pipeline ((name, params), ...) or Records has a stage that reads the context."""
    return any(getattr(s, "name", None) in CONTEXT_STAGES or (isinstance(s, tuple) and s[0] in CONTEXT_STAGES) for s in stages)


def apply_pipeline(logits: torch.Tensor, stages: tuple[tuple[str, tuple[tuple[str, object], ...]], ...],
                   counts: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ((name, ((param, value), ...)), ...) to logits [..., V] -> logits [..., V].

    counts [..., V]: how often each token occurs before each position (prompt included), which the
    penalty stages read (see stdlib/penalties.py, `token_counts`); other stages ignore it.
    """
    for name, params in stages:
        if name in CONTEXT_STAGES:
            if counts is None:
                raise ValueError(f"sampler stage '{name}' reads the tokens before each position, and none were given")
            logits = TRANSFORMS[name](logits, counts.to(logits.dtype), **dict(params))
        else:
            logits = TRANSFORMS[name](logits, **dict(params))
    return logits


register(Component("sampler", "greedy", (), "Always the most likely token (argmax; first on ties).", _NO_CONTRACT))
register(
    Component(
        "sampler",
        "temperature",
        (Param("t", "float", low=0.0, high=T_MAX, doc="softmax temperature; 0 means greedy"),),
        "Divide logits by t. Tiny t tends to greedy (the most likely token; the tied ones alike), huge t to the uniform "
        "distribution over the tokens earlier stages kept (removed ones stay removed).",
        _NO_CONTRACT,
    )
)
register(
    Component(
        "sampler",
        "top_k",
        (Param("k", "int", low=1, doc="keep the k most likely tokens"),),
        "Keep the k most likely tokens (ties with the k-th are kept).",
        _NO_CONTRACT,
    )
)
register(
    Component(
        "sampler",
        "top_p",
        (Param("p", "float", low=0.0, high=1.0, doc="probability mass to keep"),),
        "Nucleus sampling (Holtzman et al. 2020): keep each token whose strictly more likely tokens hold less than p of "
        "the mass: ranked by logit, equal logits kept or dropped together (see [Samplers: ranking and ties]"
        "(#samplers-ranking-and-ties)); at least one token; p >= 1 keeps all.",
        _NO_CONTRACT,
        cite="Holtzman et al. 2020, The Curious Case of Neural Text Degeneration",
    )
)
register(
    Component(
        "sampler",
        "min_p",
        (Param("p", "float", low=0.0, high=1.0, doc="fraction of the top token's probability"),),
        "Keep tokens with probability >= p * max probability.",
        _NO_CONTRACT,
        cite="Nguyen et al. 2024, Min-p Sampling",
    )
)
register(
    Component(
        "sampler",
        "typical_p",
        (Param("p", "float", low=0.0, high=1.0, doc="probability mass of the most typical tokens to keep"),),
        "Locally typical sampling (Hugging Face `typical_p`): keep the tokens whose surprisal -log p(x) is closest to "
        "the entropy H(p), until their mass reaches p (at least one token; p >= 1 keeps all).",
        _NO_CONTRACT,
        cite="Meister et al. 2022, Locally Typical Sampling",
    )
)

from decspec.stdlib import penalties as _penalties  # noqa: E402  (registers the context-reading stages)

TRANSFORMS.update(_penalties.TRANSFORMS)
CONTEXT_STAGES.update(_penalties.TRANSFORMS)
