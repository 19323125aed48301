"""model_call semantics over a stateful cache.

In the IR a model call is a pure function of a token sequence: "the logits after ctx ++ ext".
A PrefixCache makes that cheap: it finds the longest common prefix between what the model's
cache holds and the sequence asked for, rolls back to it (O(1)), and feeds only the rest. So
rejected drafts are forgotten, a fully accepted round feeds the draft its missing token, and a
ragged prefill is just the first call. No backend needs to track which tokens a model has seen.
"""
from __future__ import annotations

import torch

from decspec.stdlib.models.protocol import Cache, Model


class PrefixCache:
    def __init__(self, model: Model, batch: int, capacity: int):
        self.model = model
        self.cache: Cache = model.new_cache(batch, capacity)
        self.tokens_fed = 0  # total tokens fed to the model (a cost statistic)
        self.calls = 0

    def logits(self, ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, ext: torch.Tensor | None = None, n: int | None = None, *, last: bool = True) -> torch.Tensor:
        """Logits after ctx ++ ext[:, :n].

        ctx_tokens: [B, S], ctx_length: [B], ext: [B, N].
        last=True -> [B, V] (next-token logits after the whole sequence);
        last=False -> [B, n+1, V] (after ctx, after ctx ++ ext[:1], ..., after ctx ++ ext[:n]).
        """
        device = ctx_tokens.device
        n = 0 if ext is None else (ext.shape[1] if n is None else int(n))
        seq_len = ctx_length + n  # [B]
        first = seq_len - 1 if last else ctx_length - 1  # first position whose logits are needed
        W = int(seq_len.max())
        seq = ctx_tokens[:, :W].clone()  # [B, W]: each row's ctx followed by its ext
        if n:
            seq.scatter_(1, ctx_length[:, None] + torch.arange(n, device=device), ext[:, :n])
        cache = self.cache
        held = torch.minimum(cache.length, seq_len)
        cols = torch.arange(W, device=device)
        differs = (cache.tokens[:, :W] != seq) & (cols[None, :] < held[:, None])
        lcp = torch.where(differs.any(1), differs.int().argmax(1), held)  # [B]
        start = torch.minimum(lcp, first)
        cache.rollback(start)
        count = seq_len - start  # [B] tokens each row must feed (>= 1)
        T = int(count.max())
        feed_pos = (start[:, None] + torch.arange(T, device=device)).clamp(max=W - 1)  # [B, T]
        feed = seq.gather(1, feed_pos)
        out = self.model.forward(feed, cache, n_valid=count).logits  # [B, T, V]
        self.calls += 1
        self.tokens_fed += int(count.sum())
        rows = torch.arange(out.shape[0], device=device)
        if last:
            return out[rows, count - 1]  # [B, V]
        idx = (first - start)[:, None] + torch.arange(n + 1, device=device)  # [B, n+1]
        return out.gather(1, idx[..., None].expand(-1, -1, out.shape[-1]))
