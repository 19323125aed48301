"""Static-shape model calls: what a compiled round uses instead of a PrefixCache.

In the IR, `model_call` is "the logits after ctx ++ ext[:, :n]". The eager backend answers it with
a PrefixCache (longest common prefix, rollback, feed the rest): general, but the number of tokens
fed depends on the data, which a compiled graph cannot have. A compiled round instead knows, from
the graph alone, how far behind each model's cache can be at the start of a round, and feeds a
fixed window:

- a model that was fed f of the round's K drafted tokens last round holds the committed context
  up to position L - 2 - (K - f) at the start of this one (L = committed length; the last committed
  token is never fed before it is committed);
- so its first call in a round feeds the w = 1 + K - f positions L - w .. L - 1 of the context,
  then the ext tokens it asks for; later calls in the round feed only the new ext tokens.

Positions re-fed that the cache already held are rewritten with the same values; positions past
what the round commits are garbage that the next round overwrites before anything attends them.
Every shape is a function of the graph only, so a compiled round never recompiles.

A call over tokens the round never commits (lookahead's branch over W guessed tokens: codegen.GUESSES)
leaves them at positions L .. L+W-1, where the drafts go. It counts as feeding no draft (f = 0), so
only a later call over the drafts sets f; in lookahead's round the verification call comes after it,
re-feeds L-1 (every call outside the draft loop re-feeds its window) and rewrites L .. L+K-1 with the
K drafts: the next round's window is w = 1 again. The guesses left at L+K .. L+W-1 are at or past the
next round's L'-1 (L' <= L+K+1), the first position its first call feeds; a call writes its whole
block before any position in it is attended, so they are garbage like any other.
"""
from __future__ import annotations

import torch


class StaticSession:
    """One model and its cache, called with static shapes.

    feed(seq_tokens, L, lo, hi, ...) runs the virtual sequence ctx ++ ext at positions L + lo .. L + hi - 1
    (lo may be negative: -w re-feeds w context positions) and returns the logits there.
    """

    def __init__(self, model, batch: int, capacity: int, keep_hidden: bool = False):
        self.model = model
        self.cache = model.new_cache(batch, capacity)
        # with keep_hidden, every forward's final hidden states [B, S, C] (made at the first forward): `hidden_at` reads them
        self.keep_hidden = keep_hidden
        self.hiddens: torch.Tensor | None = None
        self.calls = 0  # counted by the runner, outside compiled code (a Python int would be a guard)
        self.tokens_fed = 0
        self._static = hasattr(model, "forward_at")

    def prefill(self, ctx_tokens: torch.Tensor, ctx_length: torch.Tensor) -> None:
        """Feed every row's context except its last token (ragged, with n_valid). ctx_tokens: [B, S], ctx_length: [B]."""
        n = (ctx_length - 1).clamp(min=0)  # [B]
        T = max(int(n.max()), 1)
        self.cache.rollback(torch.zeros_like(n))
        kw = {"keep": 1} if getattr(self.model, "logits_keep", False) else {}  # the prefill's logits are never read
        out = self.model.forward(ctx_tokens[:, :T], self.cache, n_valid=n, **kw)
        self.keep(out, torch.zeros_like(n), T)
        self.calls += 1
        self.tokens_fed += int(n.sum())

    def feed(self, ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, ext: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
        """Logits at positions L + lo .. L + hi - 1 of ctx ++ ext. -> [B, hi - lo, V]

        ctx_tokens: [B, S]; ctx_length: [B] (L); ext: [B, K] or None; lo < hi, static ints.
        A row whose context is shorter than -lo feeds from position 0 instead (and reads its logits
        at the shifted index).
        """
        B = ctx_tokens.shape[0]
        T = hi - lo
        start = (ctx_length + lo).clamp(min=0)  # [B]
        pos = start[:, None] + torch.arange(T, device=ctx_tokens.device)[None, :]  # [B, T] positions fed
        from_ctx = ctx_tokens.gather(1, pos.clamp(max=ctx_tokens.shape[1] - 1))
        if ext is not None:
            j = (pos - ctx_length[:, None]).clamp(0, ext.shape[1] - 1)  # index into ext of positions >= L
            tokens = torch.where(pos < ctx_length[:, None], from_ctx, ext.gather(1, j))
        else:
            tokens = from_ctx
        if self._static:
            out = self.model.forward_at(tokens, self.cache, start)  # logits: [B, T, V]
        else:
            self.cache.rollback(start)
            out = self.model.forward(tokens, self.cache)
        self.keep(out, start, T)
        logits = out.logits
        shift = (start - (ctx_length + lo))[:, None]  # [B, 1]: > 0 only for rows that started at 0
        idx = (torch.arange(T, device=pos.device)[None, :] - shift).clamp(0, T - 1)  # [B, T]
        return logits.gather(1, idx[..., None].expand(B, T, logits.shape[-1]))

    def feed_tree(self, ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, tokens: torch.Tensor | None, parents,
                  first: int, w: int) -> torch.Tensor:
        """`tree_call` with static shapes: logits at positions first..M of the token tree `tokens` [B, M] under ctx
        (position 0 after ctx, i+1 after ctx ++ node i's root path). -> [B, M+1-first, V]

        One block of T = w + M entries: the context's last w positions (fewer for a row with a shorter context:
        it starts at 0), then the M nodes, under a tree mask (the chain causal, a node attending the chain and its
        ancestors; its RoPE position is its depth past the context). parents: node i's parent position, a tuple
        (a static tree) or [B, M] (a dynamic tree). The nodes land in the cache past the context, and the next
        round's first call re-feeds its window over them (w = 1 + the tree's depth: codegen.windows), so no path
        needs moving: what the round committed is fed again as context.
        """
        from decspec.backends.tree_cache import tree_block

        dev = ctx_tokens.device
        M = 0 if tokens is None else tokens.shape[1]
        T = w + M
        start = (ctx_length - w).clamp(min=0)  # [B]
        chain = ctx_length - start  # [B] context positions each row feeds (w, or all of a shorter context)
        fed, mask = tree_block(ctx_tokens, start, chain, tokens, parents, T)
        if self._static:
            out = self.model.forward_at(fed, self.cache, start, tree_mask=mask)
        else:
            self.cache.rollback(start)
            out = self.model.forward(fed, self.cache, tree_mask=mask)
        self.keep(out, start, T)
        idx = chain[:, None] - 1 + first + torch.arange(M + 1 - first, device=dev)[None, :]  # [B, M+1-first]
        return out.logits.gather(1, idx[..., None].expand(-1, -1, out.logits.shape[-1]))

    def keep_path(self, ctx_length: torch.Tensor, path: torch.Tensor, n: torch.Tensor) -> None:
        """After a tree verification, the kept hidden states of the accepted path [B, D] (n [B] of it) move from
        their nodes' slots (node c sat at slot L + c: feed_tree) to the path's positions L .. L + n - 1, so that
        `hidden_at` reads the last accepted token's next round, as after a chain (the K/V need no move: the next
        round's window re-feeds the path)."""
        if not self.keep_hidden or self.hiddens is None or path.shape[1] == 0:
            return
        C = self.hiddens.shape[-1]
        d = torch.arange(path.shape[1], device=path.device)[None, :]  # [1, D]
        src = (ctx_length[:, None] + path).clamp(max=self.cache.capacity - 1)  # [B, D]
        dst = (ctx_length[:, None] + d).clamp(max=self.cache.capacity - 1)
        moved = self.hiddens.gather(1, src[..., None].expand(-1, -1, C))  # read every source before writing
        old = self.hiddens.gather(1, dst[..., None].expand(-1, -1, C))
        keep = (d < n[:, None])[..., None]
        self.hiddens.scatter_(1, dst[..., None].expand(-1, -1, C), torch.where(keep, moved, old))

    def feed_step(self, ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, ext: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """feed(ctx_tokens, ctx_length, ext, i - 1, i) for a step number i >= 1 held in a 0-d tensor:
        feeds ext[:, i - 1] at position L + i - 1. -> logits [B, 1, V]"""
        start = ctx_length + (i - 1)  # [B]
        tokens = ext.index_select(1, (i - 1).reshape(1))  # [B, 1]
        if self._static:
            out = self.model.forward_at(tokens, self.cache, start)
        else:
            self.cache.rollback(start)
            out = self.model.forward(tokens, self.cache)
        self.keep(out, start, 1)
        return out.logits

    def keep(self, out, start: torch.Tensor, T: int) -> None:
        """With keep_hidden, record out.hidden [B, T, C] at positions start .. start + T - 1."""
        if not self.keep_hidden:
            return
        if out.hidden is None:
            raise ValueError(f"{type(self.model).__name__} returns no hidden states (ModelOutput.hidden), which draft heads read")
        if self.hiddens is None:
            self.hiddens = out.hidden.new_zeros(self.cache.batch, self.cache.capacity, out.hidden.shape[-1])
        pos = (start[:, None] + torch.arange(T, device=start.device)[None, :]).clamp(max=self.cache.capacity - 1)  # [B, T]
        self.hiddens.scatter_(1, pos[..., None].expand(-1, -1, self.hiddens.shape[-1]), out.hidden.to(self.hiddens))

    def hidden_at(self, ctx_length: torch.Tensor) -> torch.Tensor:
        """The kept hidden state at position L-2 of each row (zeros where L < 2). -> [B, C]

        At a round's start a role that verifies every draft (window 1) holds ctx[:L-1]: the previous
        round's verification (or the prefill) computed position L-2 with the committed tokens.
        """
        at = (ctx_length - 2).clamp(min=0)
        h = self.hiddens.gather(1, at[:, None, None].expand(-1, 1, self.hiddens.shape[-1])).squeeze(1)  # [B, C]
        return torch.where((ctx_length >= 2)[:, None], h, torch.zeros_like(h))
