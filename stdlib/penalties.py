"""Penalty samplers: sampler stages that read the tokens before each position.

Each is `f(logits [..., V], counts [..., V], **params) -> logits`, where counts[..., x] is how often
token x occurs in everything before that position: the prompt, the generated tokens and, at a
drafted or verified position i, the drafts d[:i] before it. That is what makes speculation with
penalties lossless: the target's distribution at verified position i is penalized with
ctx ++ d[:i], the context it would have had if d[:i] had been generated one at a time.

All three count the prompt too (as Hugging Face's `repetition_penalty` does; vLLM counts only
generated tokens for `frequency_penalty` / `presence_penalty`). The IR op reads the context as
`model_call` does (`logits_transform(logits, ctx[, ext[, n]])`); `token_counts` builds counts.

    >>> logits = torch.tensor([[2.0, -1.0, 0.5]])
    >>> counts = token_counts(torch.tensor([[0, 1, 1]]), torch.tensor([3]), vocab=3)
    >>> repetition_penalty(logits, counts, r=2.0).tolist()
    [[1.0, -2.0, 0.5]]
    >>> frequency_penalty(logits, counts, a=0.5).tolist(), presence_penalty(logits, counts, a=0.5).tolist()
    ([[1.5, -2.0, 0.5]], [[1.5, -1.5, 0.5]])
"""
from __future__ import annotations

import torch

from decspec.stdlib.registry import Component, Contract, Param, register

_NO_CONTRACT = Contract(None, "samplers define the target distribution; they are not checked against it")


def repetition_penalty(logits: torch.Tensor, counts: torch.Tensor, r: float | torch.Tensor) -> torch.Tensor:
    """CTRL / Hugging Face: a token seen before has its logit divided by r when positive, multiplied by r when negative.
    r, a: a number, or a per-row float64 tensor (samplers.PerRow), cast to the logits' dtype as torch casts a number."""
    r = r.to(logits.dtype) if isinstance(r, torch.Tensor) else r
    seen = counts > 0
    return _finite(torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits), logits)


def frequency_penalty(logits: torch.Tensor, counts: torch.Tensor, a: float | torch.Tensor) -> torch.Tensor:
    """OpenAI: logit - a * count."""
    return _finite(logits - (a.to(logits.dtype) if isinstance(a, torch.Tensor) else a) * counts, logits)


def presence_penalty(logits: torch.Tensor, counts: torch.Tensor, a: float | torch.Tensor) -> torch.Tensor:
    """OpenAI: logit - a * [count > 0]."""
    return _finite(logits - (a.to(logits.dtype) if isinstance(a, torch.Tensor) else a) * (counts > 0).to(logits.dtype), logits)


def _finite(out: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """A finite logit stays finite: a penalty that overflows the dtype (float16's 65504, after repeated penalties)
    saturates at its largest value instead of becoming inf, which softmax would turn into NaN. -inf (a masked token)
    stays -inf."""
    big = torch.finfo(out.dtype).max
    finite = logits.abs() < float("inf")  # not torch.isfinite: torch-mlir has no linalg lowering of it
    return torch.where(finite, out.clamp(-big, big), out)


TRANSFORMS = {"repetition_penalty": repetition_penalty, "frequency_penalty": frequency_penalty, "presence_penalty": presence_penalty}


def token_counts(tokens: torch.Tensor, length: torch.Tensor, ext: torch.Tensor | None = None, n=None, *, vocab: int,
                 positions: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """How often each token occurs before the position(s) a model_call reads, with static shapes.

    tokens [B, S] (the first length[b] are the row's context), ext [B, N] (drafts), n: an int or a
    0-d tensor (only ext[:, :n] counts; default all). positions=False: the one position after
    ctx ++ ext[:, :n] -> [B, V]; positions=True: every position j = 0..N after ctx ++ ext[:, :j] -> [B, N+1, V].
    """
    B, S = tokens.shape
    valid = torch.arange(S, device=tokens.device)[None, :] < length[:, None]  # [B, S]
    counts = torch.zeros(B, vocab, dtype=dtype, device=tokens.device).scatter_add_(1, tokens.where(valid, 0), valid.to(dtype))  # [B, V]
    if ext is None:
        return counts[:, None] if positions else counts
    N = ext.shape[1]
    onehot = torch.zeros(B, N, vocab, dtype=dtype, device=tokens.device).scatter_(2, ext[..., None], 1.0)  # [B, N, V]
    if positions:
        before = torch.cat([onehot.new_zeros(B, 1, vocab), onehot.cumsum(1)], 1)  # [B, N+1, V]: ext tokens before j
        return counts[:, None] + before
    if n is not None:
        onehot = onehot * (torch.arange(N, device=tokens.device) < n).to(dtype)[None, :, None]
    return counts + onehot.sum(1)


register(
    Component(
        "sampler",
        "repetition_penalty",
        (Param("r", "float", low=0.01, high=100.0, doc="penalty; 1 is none, > 1 discourages repeats"),),
        "Repetition penalty (Hugging Face semantics): every token that occurs in the context (prompt included) or earlier "
        "in the round's drafts has its logit divided by r if positive, multiplied by r if negative.",
        _NO_CONTRACT,
        cite="Keskar et al. 2019, CTRL: A Conditional Transformer Language Model for Controllable Generation",
    )
)
register(
    Component(
        "sampler",
        "frequency_penalty",
        (Param("a", "float", low=-2.0, high=2.0, doc="subtracted once per earlier occurrence"),),
        "Frequency penalty (OpenAI semantics): logit - a * count, count = occurrences of the token before this position "
        "(prompt included).",
        _NO_CONTRACT,
        cite="OpenAI API reference, frequency_penalty",
    )
)
register(
    Component(
        "sampler",
        "presence_penalty",
        (Param("a", "float", low=-2.0, high=2.0, doc="subtracted from every token that occurred before"),),
        "Presence penalty (OpenAI semantics): logit - a * [count > 0], count = occurrences of the token before this "
        "position (prompt included).",
        _NO_CONTRACT,
        cite="OpenAI API reference, presence_penalty",
    )
)
