"""Samplers: logits transforms composed with `|`, applied left to right, then softmax.

Every transform maps logits [..., V] to logits [..., V], removing tokens by setting them to
-inf. The pipeline is applied identically to the target and to every draft, so the
distribution a lossless decoder samples from is softmax(pipeline(target logits)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

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


def temperature(logits: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """logits / t (in at least float32); t = 0 means greedy.

    In a row where logits / t would leave [-limit, limit], limit = finfo.max / HEADROOM (a tiny t; t
    underflowing the dtype), t acts as the smallest temperature the row can take: its largest |logit|
    lands at the limit. Signs and order are kept (and so the later stages' meaning: repetition_penalty is
    positively homogeneous), the gaps stay far beyond what softmax resolves, so a tiny t gives greedy's
    token (tied maxima alike), and the later stages have room (repetition_penalty's x100, softmax's
    differences) before anything overflows. No finite t makes a removed token (-inf) anything but -inf.
    t may be a per-row tensor (see PerRow): rows with t = 0 are greedy.
    """
    if isinstance(t, torch.Tensor):
        zero = t == 0
        scaled = _divide(logits, torch.where(zero, 1.0, t))
        return torch.where(zero, greedy(logits).to(scaled.dtype), scaled)
    if t == 0:
        return greedy(logits)
    return _divide(logits, t)


def _divide(logits: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """temperature's logits / t for t > 0, bounded as its docstring says."""
    logits = _at_least_f32(logits)  # float16 would overflow at |logits / t| > 65504
    limit = torch.finfo(logits.dtype).max / HEADROOM
    scaled = logits / _like(t, logits)
    finite = logits.abs() < float("inf")  # isfinite, in ops torch-mlir lowers
    too_big = (finite & ~(scaled.abs() <= limit)).any(-1, keepdim=True)  # [..., 1] (inf and nan included)
    largest = logits.abs().masked_fill(~finite, 0).amax(-1, keepdim=True)  # [..., 1]
    smallest_t = (largest / limit).clamp_min(torch.finfo(logits.dtype).tiny)  # > 0 even for a row of zeros
    return torch.where(too_big, logits / smallest_t, scaled)


def _like(value: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """A parameter as a Python number meets x: a per-row float64 tensor is cast to x's dtype first, as torch casts a
    scalar, so a per-row value computes bit for bit what the same constant does."""
    return value.to(x.dtype) if isinstance(value, torch.Tensor) else value


def top_k(logits: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Keep the k most likely tokens (and any tied with the k-th)."""
    if isinstance(k, torch.Tensor):  # per row: the k-th largest of a descending sort (k >= V keeps all)
        at = (k.long() - 1).clamp(0, logits.shape[-1] - 1).expand(*logits.shape[:-1], 1)
        kth = logits.sort(dim=-1, descending=True).values.gather(-1, at)
        return logits.masked_fill(logits < kth, NEG_INF)
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p(logits: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
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
    if isinstance(p, torch.Tensor):  # per row: p >= 1 keeps all
        return torch.where(p >= 1.0, logits, _nucleus(logits, 1 - p))  # 1 - p in float64, as for a constant
    if p >= 1.0:
        return logits
    return _nucleus(logits, 1 - p)


def _nucleus(logits: torch.Tensor, drop_mass: float | torch.Tensor) -> torch.Tensor:
    """top_p's masking, given 1 - p."""
    ascending = _at_least_f32(logits).sort(dim=-1).values  # [..., V]: values only, so no order among ties is read
    mass_upto = ascending.softmax(-1).cumsum(-1)  # [..., V]: this rank and every less likely one (non-decreasing)
    n_drop = (mass_upto <= _like(drop_mass, mass_upto)).sum(-1, keepdim=True).clamp(max=logits.shape[-1] - 1)  # [..., 1]: a prefix
    edge = ascending.gather(-1, n_drop)  # [..., 1]: the least likely kept logit
    return logits.masked_fill(logits < edge, NEG_INF)


def min_p(logits: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Keep tokens whose probability is at least p times the most likely token's (p <= 0 keeps all)."""
    if not isinstance(p, torch.Tensor) and p <= 0.0:
        return logits
    probs = torch.softmax(_at_least_f32(logits), dim=-1)
    return logits.masked_fill(probs < _like(p, probs) * probs.amax(-1, keepdim=True), NEG_INF)


def typical_p(logits: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Locally typical sampling (HF `typical_p`): keep the tokens whose surprisal -log p(x) is closest
    to the entropy H(p), in that order, until their mass reaches p (ties with the last kept stay; >= 1 token)."""
    if isinstance(p, torch.Tensor):  # per row: p >= 1 keeps all
        return torch.where(p >= 1.0, logits, _typical(logits, p))
    if p >= 1.0:
        return logits
    return _typical(logits, p)


def _typical(logits: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(_at_least_f32(logits), dim=-1)  # [..., V]
    probs = logp.exp()
    ent = -torch.where(probs > 0, logp * probs, 0.0).sum(-1, keepdim=True)  # H(p); HF's nansum (-inf * 0 is nan, summed as 0)
    shifted = (-logp - ent).abs()  # |surprisal - H|: -inf logits sort last (inf)
    sorted_shifted, order = shifted.sort(dim=-1, stable=True)
    cum = probs.gather(-1, order).cumsum(-1)
    last = (cum < _like(p, cum)).sum(-1, keepdim=True).clamp(max=logits.shape[-1] - 1)  # index of the last kept token
    drop_sorted = sorted_shifted > sorted_shifted.gather(-1, last)
    drop_sorted[..., :1] = False  # min_tokens_to_keep = 1
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def epsilon_cutoff(logits: torch.Tensor, e: float | torch.Tensor) -> torch.Tensor:
    """Epsilon sampling (Hewitt et al. 2022; Hugging Face `epsilon_cutoff`): drop the tokens whose probability is
    below e; the most likely token (and any tied with it) always stays. e <= 0 keeps all."""
    if not isinstance(e, torch.Tensor) and e <= 0.0:
        return logits
    probs = torch.softmax(_at_least_f32(logits), dim=-1)
    return _cut_below(logits, probs, _like(e, probs))


def eta_cutoff(logits: torch.Tensor, e: float | torch.Tensor) -> torch.Tensor:
    """Eta sampling (Hewitt et al. 2022; Hugging Face `eta_cutoff`): drop the tokens whose probability is below
    eta = min(e, sqrt(e) * exp(-H(p))), H the entropy of the distribution in nats, so a flat distribution cuts
    less; the most likely token (and any tied with it) always stays. e <= 0 keeps all."""
    if not isinstance(e, torch.Tensor) and e <= 0.0:
        return logits
    logp = torch.log_softmax(_at_least_f32(logits), dim=-1)
    probs = logp.exp()
    entropy = -torch.where(probs > 0, probs * logp, 0.0).sum(-1, keepdim=True)  # [..., 1]: 0 * -inf counts 0
    e = _like(e, probs)
    eta = torch.minimum(torch.as_tensor(e, dtype=probs.dtype), (e ** 0.5) * torch.exp(-entropy))
    return _cut_below(logits, probs, eta)


def _cut_below(logits: torch.Tensor, probs: torch.Tensor, cut: float | torch.Tensor) -> torch.Tensor:
    """Mask the tokens with probs < cut, except the tied maxima (at least one token stays, as HF's min_tokens_to_keep=1)."""
    drop = (probs < cut) & (logits < logits.amax(-1, keepdim=True))
    return logits.masked_fill(drop, NEG_INF)


@dataclass(frozen=True)
class PerRow:
    """A sampler parameter given per call (`Decoder.generate(..., temperature=[0.2, 1.0])`) rather than by the spec:
    row b's value is settings[key][b], a float64 [B] tensor the runtime hands the round (backends/sampling.py);
    `default` is the spec's constant. No pass folds a stage holding one (its value is not known when compiling).

    key: "stage@position" in the pipeline (the same stage twice keeps two values); setting: the call's name for it.
    """

    key: str
    setting: str
    default: float | int

    def __repr__(self) -> str:  # what generated round code reads back (backends/inductor/codegen.py)
        return f"PerRow({self.key!r}, {self.setting!r}, {self.default!r})"


def per_row(stages: tuple, settings: Mapping[str, torch.Tensor] | None, like: torch.Tensor) -> tuple:
    """Stages ((name, ((param, value), ...)), ...) with every PerRow value resolved: the rows' values of its key, shaped
    [B, 1, ..., 1] to broadcast over `like` [B, ..., V], or its default when the call set none."""
    def value(v: Any) -> Any:
        if not isinstance(v, PerRow) or settings is None or v.key not in settings:
            return v.default if isinstance(v, PerRow) else v
        rows = settings[v.key]
        if rows.shape[0] != like.shape[0]:
            raise ValueError(f"a per-row sampler setting has {rows.shape[0]} rows; the logits it applies to have {like.shape[0]}")
        return rows.view(-1, *([1] * (like.dim() - 1)))

    return tuple((name, tuple((k, value(v)) for k, v in params)) for name, params in stages)


TRANSFORMS = {"greedy": greedy, "temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p, "typical_p": typical_p,
              "epsilon_cutoff": epsilon_cutoff, "eta_cutoff": eta_cutoff}
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

register(
    Component(
        "sampler",
        "epsilon_cutoff",
        (Param("e", "float", low=0.0, high=1.0, doc="probability below which a token is dropped; 0 keeps all"),),
        "Epsilon sampling (Hugging Face `epsilon_cutoff`): drop the tokens with probability < e; the most likely token "
        "(and any tied with it) always stays.",
        _NO_CONTRACT,
        cite="Hewitt, Manning & Liang 2022, Truncation Sampling as Language Model Desmoothing",
    )
)
register(
    Component(
        "sampler",
        "eta_cutoff",
        (Param("e", "float", low=0.0, high=1.0, doc="the cut's scale; 0 keeps all"),),
        "Eta sampling (Hugging Face `eta_cutoff`): drop the tokens with probability < min(e, sqrt(e) * exp(-H)), H the "
        "distribution's entropy in nats (a flatter distribution cuts less); the most likely token (and any tied with "
        "it) always stays.",
        _NO_CONTRACT,
        cite="Hewitt, Manning & Liang 2022, Truncation Sampling as Language Model Desmoothing",
    )
)

from decspec.stdlib import penalties as _penalties  # noqa: E402  (registers the context-reading stages)

TRANSFORMS.update(_penalties.TRANSFORMS)
CONTEXT_STAGES.update(_penalties.TRANSFORMS)
