"""A small random bidirectional transformer behind the DiffusionLM protocol: for runtime tests and benchmarks
of diffusion decoders before (or without) a trained masked-diffusion model. Its predictions mean nothing.

It has real keys and values, so its cache is a real approximate cache: `denoise(tokens, cache=prefill(old),
start=s, end=e)` recomputes positions s..e-1 only (their queries, keys and values), attending to the
cached keys and values of every other position, computed from `old`.

    >>> m = RandomDiffusionLM(vocab=16, seed=0)
    >>> x = torch.tensor([[1, 2, m.mask_id, m.mask_id]])
    >>> m.denoise(x).shape
    torch.Size([1, 4, 17])
    >>> torch.allclose(m.denoise(x, cache=m.prefill(x), start=2), m.denoise(x)[:, 2:], atol=1e-5)   # nothing changed
    True
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class RandomDiffusionLM(torch.nn.Module):
    """vocab: tokens predicted (ids 0..vocab-1); the mask token is id `vocab`, so vocab_size = vocab + 1."""

    def __init__(self, vocab: int, seed: int = 0, *, d_model: int = 64, layers: int = 2, heads: int = 4, max_length: int = 256,
                 eos_token_id: int | None = None):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.vocab_size, self.mask_id, self.max_length, self.eos_token_id = vocab + 1, vocab, max_length, eos_token_id
        self.heads, self.d = heads, d_model
        rand = lambda *shape, scale=1.0: torch.nn.Parameter(torch.randn(*shape, generator=gen) * scale)  # noqa: E731
        self.embed = rand(vocab + 1, d_model, scale=1.0)
        self.pos = rand(max_length, d_model, scale=0.1)
        self.qkv = torch.nn.ParameterList([rand(d_model, 3 * d_model, scale=d_model ** -0.5) for _ in range(layers)])
        self.out = torch.nn.ParameterList([rand(d_model, d_model, scale=d_model ** -0.5) for _ in range(layers)])
        self.mlp = torch.nn.ParameterList([rand(d_model, d_model, scale=d_model ** -0.5) for _ in range(layers)])
        self.head = rand(d_model, vocab + 1, scale=3 * d_model ** -0.5)

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, d] -> [B, H, L, d/H]
        B, L, _ = t.shape
        return t.view(B, L, self.heads, self.d // self.heads).transpose(1, 2)

    @torch.no_grad()
    def _run(self, tokens, attend, cache, start, end):
        B, L = tokens.shape
        attend = torch.ones(B, L, dtype=torch.bool) if attend is None else attend.bool()
        positions = (attend.long().cumsum(1) - 1).clamp_min(0)[:, start:end]  # left padding does not shift a row
        h = self.embed[tokens[:, start:end]] + self.pos[positions]  # [B, n, d]
        bias = torch.zeros(B, 1, 1, L).masked_fill(~attend[:, None, None, :], float("-inf"))
        kept = []
        for i, (qkv, out, mlp) in enumerate(zip(self.qkv, self.out, self.mlp)):
            q, k, v = (self._split(t) for t in (F.layer_norm(h, (self.d,)) @ qkv).chunk(3, -1))
            if cache is not None:  # the other positions' keys and values, from the prefill
                K, V = cache[i][0].clone(), cache[i][1].clone()
                K[:, :, start:end], V[:, :, start:end] = k, v
                k, v = K, V
            kept.append((k, v))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d // self.heads) + bias, -1)
            h = h + (att @ v).transpose(1, 2).reshape(B, end - start, self.d) @ out
            h = h + torch.tanh(F.layer_norm(h, (self.d,)) @ mlp)
        return F.layer_norm(h, (self.d,)) @ self.head, kept

    def denoise(self, tokens, *, attend=None, cache=None, start: int = 0, end: int | None = None) -> torch.Tensor:
        end = tokens.shape[1] if end is None else end
        if cache is None:
            return self._run(tokens, attend, None, 0, tokens.shape[1])[0][:, start:end].float()
        return self._run(tokens, attend, cache, start, end)[0].float()

    def prefill(self, tokens, *, attend=None):
        return self._run(tokens, attend, None, 0, tokens.shape[1])[1]
