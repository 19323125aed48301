"""model_call semantics over a stateful cache.

In the IR a model call is a pure function of a token sequence: "the logits after ctx ++ ext".
A PrefixCache makes that cheap: it finds the longest common prefix between what the model's
cache holds and the sequence asked for, rolls back to it (O(1)), and feeds only the rest. So
rejected drafts are forgotten, a fully accepted round feeds the draft its missing token, and a
ragged prefill is just the first call. No backend needs to track which tokens a model has seen.
"""
from __future__ import annotations

import torch

from decspec.backends.tree_cache import settle
from decspec.stdlib.models.protocol import Cache, Model


def hidden_roles(graph) -> set[str]:
    """The model roles whose hidden states the graph's draft heads read (model_hidden, model_features)."""
    return {op.param("model") for op in graph.walk() if op.name in ("model_hidden", "model_features")}


class PrefixCache:
    """record_hidden: keep every fed position's hidden state from the first forward on (for a role that
    `hidden_roles` names); otherwise the first `hidden` call turns recording on and re-feeds the context."""

    def __init__(self, model: Model, batch: int, capacity: int, *, record_hidden: bool = False):
        self.model = model
        self.cache: Cache = model.new_cache(batch, capacity)
        self.tokens_fed = 0  # total tokens fed to the model (a cost statistic)
        self.calls = 0
        self.tree = None  # a token tree the last call fed (backends/tree_cache.py), settled by the next call
        self.record_hidden = record_hidden  # else set by the first `hidden` call: from then on every forward's hidden states are kept
        self.hiddens: torch.Tensor | None = None  # [B, S, C] final hidden state at each position fed, while recording

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
        if self.tree is not None:  # keep the path of the last call's token tree that seq continues with
            settle(self, seq, seq_len)
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
        kw = {}
        if last and getattr(self.model, "logits_keep", False):  # (hidden states still come for every position fed)
            kw["keep"] = T - int(count.min()) + 1  # only the positions read below: a prefill skips the head over the prompt
        result = self.model.forward(feed, cache, n_valid=count, **kw)
        out = result.logits  # [B, T, V], or [B, keep, V]: position T - keep + j at j
        shift = T - out.shape[1]
        if self.record_hidden:  # keep every fed position's hidden state: `hidden` reads it later without a forward
            if result.hidden is None:
                raise ValueError(f"{type(self.model).__name__} returns no hidden states (ModelOutput.hidden), which draft heads read")
            if self.hiddens is None:
                self.hiddens = result.hidden.new_zeros(cache.batch, cache.capacity, result.hidden.shape[-1])
            slots = start[:, None] + torch.arange(T, device=device)  # [B, T] where the forward wrote (past count: beyond the cache's length)
            self.hiddens.scatter_(1, slots[..., None].expand(-1, -1, self.hiddens.shape[-1]), result.hidden.to(self.hiddens))
        self.calls += 1
        self.tokens_fed += int(count.sum())
        rows = torch.arange(out.shape[0], device=device)
        if last:
            return out[rows, count - 1 - shift]  # [B, V]
        idx = (first - start)[:, None] + torch.arange(n + 1, device=device)  # [B, n+1]
        return out.gather(1, idx[..., None].expand(-1, -1, out.shape[-1]))

    def hidden(self, ctx_tokens: torch.Tensor, ctx_length: torch.Tensor) -> torch.Tensor:
        """The final hidden state at position L-2 of each row (L = ctx_length): the state the model's head
        turned into the distribution of the row's last token; zeros for a one-token row. -> [B, C]

        Served from the hidden states of earlier forwards when the cache holds ctx[:L-1] (after a
        verification call it does); otherwise ctx[:L-1] is fed first. The first call turns recording on.
        """
        rows = torch.arange(ctx_tokens.shape[0], device=ctx_tokens.device)
        at = (ctx_length - 2).clamp(min=0)  # [B]
        if self.tree is not None:  # a token tree's accepted path (and its hidden states) first: backends/tree_cache.py
            settle(self, ctx_tokens, ctx_length)
        if not self.record_hidden:  # start recording: forget what was fed unrecorded, so the call below re-feeds it
            self.cache.rollback(torch.zeros_like(self.cache.length))
            self.record_hidden = True
        if self.hiddens is None or not self._holds(ctx_tokens, at + 1):
            self.logits(ctx_tokens, at + 1)  # feeds ctx[:L-1] (at least one token), recording hidden states
        h = self.hiddens[rows, at]  # [B, C]
        return torch.where((ctx_length >= 2)[:, None], h, torch.zeros_like(h))

    def _holds(self, ctx_tokens: torch.Tensor, n: torch.Tensor) -> bool:
        """Whether the cache holds the first n[b] tokens of every row."""
        W = int(n.max())
        cols = torch.arange(W, device=ctx_tokens.device)[None, :]
        same = (self.cache.tokens[:, :W] == ctx_tokens[:, :W]) | (cols >= n[:, None])
        return bool((self.cache.length >= n).all() and same.all())
