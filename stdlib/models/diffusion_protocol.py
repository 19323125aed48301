"""The protocol of masked-diffusion language models: predict every masked position at once.

A causal model (protocol.py) maps new tokens to the next token's logits. A masked-diffusion model
(MDLM, LLaDA) reads a whole sequence in which some positions hold the mask token and predicts, at
every position, the token that belongs there; attention is bidirectional, so position i sees the
positions after it too:

    out = model.denoise(tokens)                       # tokens: [B, L] (mask_id where unknown) -> [B, L, V]
    cache = model.prefill(tokens)                     # K/V of every position, computed over the whole sequence
    out = model.denoise(tokens, cache=cache, start=s, end=e)   # -> [B, e - s, V]: positions s..e-1 recomputed,
                                                      # the others read from the cache (an approximation)

Logits at position i are the model's prediction of the token at i (not shifted, unlike a causal
model's); the decoder reads them only where tokens[b, i] == mask_id. `attend` [B, L] (bool) marks the
positions that exist: a batch of prompts of different lengths is padded on the left, and padded
positions are neither attended to nor predicted.

The cache is what approximate diffusion caches reuse (Fast-dLLM's prefix and dual cache, dKV-Cache):
the keys and values of positions outside [start, end) are those computed by the last `prefill`, so
they do not see tokens unmasked since. A decoder that refreshes the cache at every step computes
exactly `denoise(tokens)`; how often it refreshes is the decoder's cache policy, not the model's.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class DiffusionLM(Protocol):
    vocab_size: int  # V: logits' last dimension
    mask_id: int  # the mask token; never a token the decoder emits (its logit is never sampled)
    max_length: int  # the longest sequence (prompt + generated) the model attends over

    def denoise(
        self,
        tokens: torch.Tensor,  # [B, L] long; mask_id at unknown positions
        *,
        attend: torch.Tensor | None = None,  # [B, L] bool: real positions (None: all)
        cache: Any = None,  # what prefill returned; with it only positions [start, end) are computed
        start: int = 0,
        end: int | None = None,
    ) -> torch.Tensor:  # [B, (end or L) - start, V] float32 logits
        ...

    def prefill(self, tokens: torch.Tensor, *, attend: torch.Tensor | None = None) -> Any:
        """The keys and values of every position of tokens [B, L], for denoise(..., cache=)."""
        ...


def is_diffusion(model: object) -> bool:
    """Whether a bound model predicts masked positions (a DiffusionLM) rather than the next token."""
    return isinstance(model, DiffusionLM)
