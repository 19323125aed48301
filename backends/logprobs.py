"""Log-probabilities of the committed tokens under the target's distribution after the sampler pipeline.

`generate(..., logprobs=True)`: after each round the target scores the tokens the round committed, with a cache of
its own (PrefixCache: only the new tokens are fed), and the sampler stages (the call's per-row settings, penalties
counting the context before each position) are applied to its logits, so each token gets log p(x | prefix), the
probability a lossless decoder samples it with. Under a grammar the target's logits are masked first, at the grammar
state before each token (its own GrammarSession), as the decoder's are. It works on every backend and every spec
but beam search, and costs one target forward per round over the round's new tokens (about one verification call).
`top`: also the `top` most likely tokens at each position, with theirs (OpenAI's top_logprobs); `take` may be 0
for rows that did not ask (a server's batch), which cost nothing when none did.

    >>> import decspec
    >>> from decspec.stdlib.models.table import TableModel
    >>> dec = decspec.compile("specs/autoregressive.dec", target=TableModel.random(8, 1, seed=0), temperature=1.0, top_p=1.0)
    >>> out = dec.generate([[1]], max_new_tokens=3, seed=0, logprobs=True)
    >>> len(out.logprobs[0]) == 3 and all(lp <= 0 for lp in out.logprobs[0])
    True
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from decspec.backends.grammar import GrammarSession, grammar_states, masked_logits
from decspec.backends.prefix import PrefixCache
from decspec.stdlib.penalties import token_counts
from decspec.stdlib.samplers import apply_pipeline, per_row


class Logprobs:
    """One generation's scorer. stages: ((name, ((param, value), ...)), ...), PerRow values resolved from `settings`."""

    def __init__(self, target: Any, batch: int, capacity: int, stages: tuple, settings: Mapping[str, torch.Tensor] | None,
                 grammar: Any = None):
        self.session = PrefixCache(target, batch, capacity)
        self.stages, self.settings = stages, settings
        self.grammar = None if grammar is None else GrammarSession(grammar)  # the matcher the target's logits are masked by
        self.top: list[list[list[tuple[int, float]]]] | None = None  # the last score's top tokens, per row and position

    def score(self, ctx_tokens: torch.Tensor, before: torch.Tensor, tokens: torch.Tensor, take: torch.Tensor,
              start: torch.Tensor | None = None, top: int | torch.Tensor = 0) -> list[list[float]]:
        """log p of tokens[b, :take[b]], the round's new tokens after ctx[b, :before[b]] -> per row a list; with `top`
        (one count, or one per row [B]) self.top holds each position's most likely (token, log p), best first.
        `start` [B]: where each row's generated tokens begin (what a grammar constrains)."""
        B = tokens.shape[0]
        dev = ctx_tokens.device  # the target's: the round's tokens and counts move there
        tokens, take, before = tokens.to(dev), take.to(dev), before.to(dev)
        start = None if start is None else start.to(dev)
        n = int(take.max()) if B else 0
        tops = torch.as_tensor(top).expand(B) if B else torch.zeros(0, dtype=torch.long)
        self.top = [[] for _ in range(B)]
        if n == 0:
            return [[] for _ in range(B)]
        ext = tokens[:, :n].masked_fill(torch.arange(n, device=dev)[None, :] >= take[:, None], 0)  # [B, n]; padding past a row's tokens
        logits = self.session.logits(ctx_tokens, before, ext, last=False)  # [B, n+1, V]: after ctx ++ ext[:, :j]
        if self.grammar is not None:
            if start is None:
                raise ValueError("scoring under a grammar needs where each row's generated tokens start")
            states = grammar_states(self.grammar, ctx_tokens, before, start, ext, n, last=False)  # [B, n+1]
            logits = masked_logits(self.grammar.matcher, logits, states)
        counts = token_counts(ctx_tokens, before, ext, vocab=logits.shape[-1], positions=True, dtype=logits.dtype)  # before each j
        logp = torch.log_softmax(apply_pipeline(logits, per_row(self.stages, self.settings, logits), counts).float(), -1)
        chosen = logp[:, :n].gather(-1, ext[..., None])[..., 0]  # [B, n]
        k = min(int(tops.max()), logp.shape[-1])
        if k > 0:
            values, ids = logp[:, :n].topk(k, -1)  # [B, n, k]
            for b, (t, kb) in enumerate(zip(take.tolist(), tops.tolist())):
                self.top[b] = [[(i, v) for i, v in zip(ids_j[:kb], values_j[:kb]) if v > -math.inf]  # a grammar's refusals left out
                               for ids_j, values_j in zip(ids[b, :t].tolist(), values[b, :t].tolist())] if kb else []
        return [row[:t] for row, t in zip(chosen.tolist(), take.tolist())]
