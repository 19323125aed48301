"""Log-probabilities of the committed tokens under the target's distribution after the sampler pipeline.

`generate(..., logprobs=True)`: after each round the target scores the tokens the round committed, with a cache of
its own (PrefixCache: only the new tokens are fed), and the sampler stages (the call's per-row settings, penalties
counting the context before each position) are applied to its logits, so each token gets log p(x | prefix), the
probability a lossless decoder samples it with. It works on every backend and every spec without a grammar, and
costs one target forward per round over the round's new tokens (about one verification call).

    >>> import decspec
    >>> from decspec.stdlib.models.table import TableModel
    >>> dec = decspec.compile("specs/autoregressive.dec", target=TableModel.random(8, 1, seed=0), temperature=1.0, top_p=1.0)
    >>> out = dec.generate([[1]], max_new_tokens=3, seed=0, logprobs=True)
    >>> len(out.logprobs[0]) == 3 and all(lp <= 0 for lp in out.logprobs[0])
    True
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from decspec.backends.prefix import PrefixCache
from decspec.stdlib.penalties import token_counts
from decspec.stdlib.samplers import apply_pipeline, per_row


class Logprobs:
    """One generation's scorer. stages: ((name, ((param, value), ...)), ...), PerRow values resolved from `settings`."""

    def __init__(self, target: Any, batch: int, capacity: int, stages: tuple, settings: Mapping[str, torch.Tensor] | None):
        self.session = PrefixCache(target, batch, capacity)
        self.stages, self.settings = stages, settings

    def score(self, ctx_tokens: torch.Tensor, before: torch.Tensor, tokens: torch.Tensor, take: torch.Tensor) -> list[list[float]]:
        """log p of tokens[b, :take[b]], the round's new tokens after ctx[b, :before[b]] -> per row a list."""
        n = int(take.max())
        if n == 0:
            return [[] for _ in range(tokens.shape[0])]
        ext = tokens[:, :n].masked_fill(torch.arange(n)[None, :] >= take[:, None], 0)  # [B, n]; padding past a row's tokens
        logits = self.session.logits(ctx_tokens, before, ext, last=False)  # [B, n+1, V]: after ctx ++ ext[:, :j]
        counts = token_counts(ctx_tokens, before, ext, vocab=logits.shape[-1], positions=True, dtype=logits.dtype)  # before each j
        logp = torch.log_softmax(apply_pipeline(logits, per_row(self.stages, self.settings, logits), counts).float(), -1)
        chosen = logp[:, :n].gather(-1, ext[..., None])[..., 0]  # [B, n]
        return [row[:t] for row, t in zip(chosen.tolist(), take.tolist())]
