"""Table diffusion models: every masked position's logits a function of the whole visible sequence. Exact and
cheap, for the exact analysis of diffusion decoders and their tests.

A `DiffusionTableModel` over V tokens (the mask token one of them, never predicted) gives, for a sequence
(the tokens of its attended positions, left padding dropped), logits [L, V] drawn from a generator seeded
by the sequence itself: any two calls on the same visible sequence agree, and the logits at a masked
position depend on every other position, as a bidirectional model's do.

A cached call (`denoise(..., cache=prefill(old), start=s, end=e)`) stands for keys and values of the
positions outside [s, e) computed from `old` (in a bidirectional model they depend on every position,
the window's included): its logits are keyed by the current sequence, the old one and the window, so
they equal the uncached logits exactly when nothing changed since the prefill, and are other random
logits when something did — the approximation an approximate diffusion cache makes, at its most visible.

    >>> m = DiffusionTableModel.random(vocab=3, seed=0)
    >>> x = torch.tensor([[0, m.mask_id, m.mask_id]])
    >>> m.denoise(x).shape, bool(torch.isinf(m.denoise(x)[..., m.mask_id]).all())
    (torch.Size([1, 3, 4]), True)
    >>> torch.equal(m.denoise(x, cache=m.prefill(x), start=1), m.denoise(x)[:, 1:])   # nothing changed: the same
    True
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TableCache:
    """What `prefill` kept: the tokens and attended positions the cache's keys and values were computed from."""

    tokens: torch.Tensor  # [B, L]
    attend: torch.Tensor  # [B, L] bool


class DiffusionTableModel:
    """A masked-diffusion model whose logits are looked up (lazily drawn) per visible sequence.

    vocab: the tokens the model predicts (ids 0..vocab-1); the mask token is id `vocab`, so vocab_size is vocab + 1.
    temperature: logits are standard normal / temperature (lower: sharper, more confident positions).
    """

    def __init__(self, vocab: int, seed: int, *, temperature: float = 1.0, eos_token_id: int | None = None,
                 max_length: int = 64):
        if vocab < 1:
            raise ValueError(f"a table diffusion model needs at least one token, got vocab={vocab}")
        self.vocab_size = vocab + 1
        self.mask_id = vocab
        self.max_length = max_length
        self.seed = seed
        self.temperature = temperature
        self.eos_token_id = eos_token_id
        self.calls = 0  # denoise calls, for tests of the runtime's call counts
        self._table: dict[tuple, torch.Tensor] = {}

    @classmethod
    def random(cls, vocab: int, seed: int, **kwargs) -> "DiffusionTableModel":
        return cls(vocab, seed, **kwargs)

    def logits(self, visible: tuple[int, ...], stale: tuple | None = None) -> torch.Tensor:
        """Logits [len(visible), vocab_size] (float64) of one visible sequence; `stale`: (the sequence a cache saw, start,
        end) when it differs from `visible`. The mask token's logit is -inf."""
        key = (visible, stale)
        if key not in self._table:
            digest = hashlib.blake2b(repr((self.seed, key)).encode(), digest_size=8).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
            out = torch.randn(len(visible), self.vocab_size, generator=gen, dtype=torch.float64) / self.temperature
            out[:, self.mask_id] = float("-inf")
            self._table[key] = out
        return self._table[key]

    def denoise(self, tokens: torch.Tensor, *, attend: torch.Tensor | None = None, cache: TableCache | None = None,
                start: int = 0, end: int | None = None) -> torch.Tensor:
        """tokens [B, L] -> logits [B, end - start, V] (float32); see the module docstring for the cache."""
        B, L = tokens.shape
        end = L if end is None else end
        attend = torch.ones(B, L, dtype=torch.bool) if attend is None else attend.bool()
        self.calls += 1
        out = torch.full((B, L, self.vocab_size), float("-inf"), dtype=torch.float64)
        for b in range(B):
            seen = attend[b].cpu()
            visible = tuple(tokens[b].cpu()[seen].tolist())
            stale = None
            if cache is not None:  # the cached keys and values outside the window saw the sequence as it was at prefill
                before = tuple(cache.tokens[b].cpu()[seen].tolist())
                pad = int((~seen[:start]).sum())  # the window in attended positions: left padding does not move it
                stale = None if before == visible else (before, start - pad, end - pad)
            out[b, seen] = self.logits(visible, stale)
        return out[:, start:end].float()

    def prefill(self, tokens: torch.Tensor, *, attend: torch.Tensor | None = None) -> TableCache:
        B, L = tokens.shape
        return TableCache(tokens.clone(), torch.ones(B, L, dtype=torch.bool) if attend is None else attend.bool().clone())
