"""Table (n-gram) models: next-token logits looked up from the last n tokens. Exact and cheap, for tests.

A `TableModel` of order n holds logits of shape [V]*n + [V]: `logits[t1, ..., tn]` are the
next-token logits after the history ... t1, ..., tn (tn the most recent token). Order 0 is a
unigram (shape [V]): the same distribution at every position. A position with fewer than n
tokens before it (the start of a sequence) reads token 0 for every missing one, as if the
sequence were left-padded with 0s.
"""
from __future__ import annotations

from typing import Sequence

import torch

from decspec.stdlib.models.protocol import Cache, ModelOutput


class TableModel:
    """A model whose next-token logits depend only on the last `order` tokens.

    >>> model = TableModel.random(vocab=8, order=2, seed=0)
    >>> cache = model.new_cache(batch=1, capacity=16)
    >>> out = model.forward(torch.tensor([[3, 5]]), cache)
    >>> torch.allclose(out.logits[0, 1], model.logits[3, 5])
    True
    >>> torch.allclose(out.logits[0, 0], model.logits[0, 3])   # missing history reads token 0
    True
    >>> model.probs([3, 5]).shape
    torch.Size([8])
    """

    max_positions = None
    num_layers = None

    def __init__(self, logits: torch.Tensor, eos_token_id: int | None = None):
        V = logits.shape[-1]
        if any(s != V for s in logits.shape):
            raise ValueError(f"table logits must have shape [V]*(n+1), got {tuple(logits.shape)}")
        self.logits = logits
        self.vocab_size = V
        self.order = logits.dim() - 1
        self.eos_token_id = eos_token_id

    @classmethod
    def random(
        cls, vocab: int, order: int, seed: int, *, temperature: float = 1.0,
        eos_token_id: int | None = None, dtype: torch.dtype = torch.float32,
    ) -> TableModel:
        """Standard-normal logits divided by `temperature` (higher: flatter distributions)."""
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn((vocab,) * (order + 1), generator=gen, dtype=torch.float64) / temperature
        return cls(logits.to(dtype), eos_token_id=eos_token_id)

    def context(self, history: Sequence[int]) -> tuple[int, ...]:
        """The last `order` tokens of history, left-padded with token 0."""
        n = self.order
        h = [0] * n + [int(t) for t in history]
        return tuple(h[len(h) - n:]) if n else ()

    def probs(self, history: Sequence[int]) -> torch.Tensor:
        """Next-token distribution after `history`: softmax of the table at its last `order` tokens. -> [V]"""
        return torch.softmax(self.logits[self.context(history)], dim=-1)

    def new_cache(self, batch: int, capacity: int) -> Cache:
        return Cache(batch, capacity, device=self.logits.device)

    def forward(
        self,
        tokens: torch.Tensor,
        cache: Cache,
        *,
        n_valid: torch.Tensor | None = None,
        exit_layer: int | None = None,
        skip_layers: tuple[int, ...] | None = None,
        tree_mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Logits after each new token [B, T] -> [B, T, V] (the table's dtype).

        With a tree_mask, new token i's history is the cached tokens, then the new tokens it
        attends (its ancestors, in depth order), then itself.
        """
        if exit_layer is not None or skip_layers:
            raise ValueError("a table model has no layers: exit_layer / skip_layers do not apply")
        B, T = tokens.shape
        start = cache.length.clone()  # [B]
        cache.write_tokens(tokens)  # records the block; raises CacheFull before anything is written
        dev = tokens.device
        if tree_mask is None:  # a chain: the new tokens already sit at their positions in cache.tokens
            depth, path = torch.arange(T, device=dev).expand(B, T), None
        else:
            anc = tree_mask.to(torch.bool) | torch.eye(T, dtype=torch.bool, device=dev)  # [B, T, T]: i attends j
            depth = anc.sum(-1) - 1  # [B, T]
            # path[b, i, d]: the block token at depth d on i's root path (column T collects non-ancestors)
            col = torch.where(anc, depth[:, None, :], T)  # [B, T, T]
            path = torch.zeros(B, T, T + 1, dtype=torch.long, device=dev)
            path.scatter_(2, col, tokens[:, None, :].expand(B, T, T))
        if self.order:
            ctx = self.history(path, depth, start, cache.tokens)  # [B, T, n]
            logits = self.logits[tuple(ctx.unbind(-1))]  # [B, T, V]
        else:
            logits = self.logits.expand(B, T, -1).clone()
        cache.advance(T, n_valid)
        return ModelOutput(logits)

    def history(self, path: torch.Tensor | None, depth: torch.Tensor, start: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
        """The last `order` tokens up to each new token. path: [B, T, T+1] or None, depth: [B, T] -> [B, T, n]."""
        B, T = depth.shape
        back = torch.arange(self.order - 1, -1, -1, device=depth.device)  # oldest first
        rel = depth[:, :, None] - back  # [B, T, n]: depth of each context token; < 0: before the block
        pos = start[:, None, None] + rel  # its position in the sequence
        seq = cached.gather(1, pos.clamp(min=0).view(B, -1)).view(B, T, self.order)
        if path is not None:  # tree: block tokens come from each node's own root path
            seq = torch.where(rel >= 0, path.gather(2, rel.clamp(min=0)), seq)
        return torch.where(pos >= 0, seq, 0)
