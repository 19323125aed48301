"""Grammar-constrained diffusion decoding: which tokens a masked position may hold, when positions are unmasked
in any order.

The N generated positions must spell a string of the grammar, padded with EOS: tokens after the first EOS
are EOS too. Over the grammar's token automaton (a regular grammar's Matcher, stdlib/grammars) with one
state added, END (entered by EOS from an accepting state, left by nothing but EOS), the known positions fix
their transitions and the masked ones are wildcards over every token. A token t is allowed at masked
position i iff some state s reachable at i (forward from the start, through positions < i) moves by t to a
state from which positions > i can still reach acceptance (backward from the accepting states and END):

    F_0 = {start};  F_{i+1} = delta(F_i, x_i)          (x_i masked: every token)
    B_N = accepting | {END};  B_i = {s : delta(s, x_i) in B_{i+1}}
    allowed(i) = {t : delta(s, t) in B_{i+1} for some s in F_i}

Each position's set is exact given the others as they are, but two positions unmasked in one step may not
fit together: a step commits its positions in rank order and leaves masked any whose token no longer fits
(the first always fits). With one position per step this is exactly the masked process: every step samples
from the model's distribution restricted to the tokens that can still complete.

    >>> from decspec.stdlib.grammars import compile_grammar
    >>> m = compile_grammar("regex", "ab|ba", [b"a", b"b", None], eos_id=2)
    >>> g = DiffusionGrammar(m, mask_id=3, vocab_size=4)
    >>> g.allowed_row([3, 3, 3]).astype(int).tolist()      # N = 3: "ab" or "ba", then EOS
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]]
    >>> g.allowed_row([3, 1, 3]).astype(int).tolist()[0]   # "?b?": only "ab"
    [1, 0, 0, 0]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from decspec.dsl.diagnostics import DecError


class DiffusionGrammar:
    """A regular grammar's token automaton, extended with END, as the diffusion decoder reads it."""

    def __init__(self, matcher: Any, mask_id: int, vocab_size: int):
        from decspec.stdlib.grammars.index import TokenIndex

        if not isinstance(matcher, TokenIndex):  # a Lark/JSON/recursive-schema matcher interns states as it goes
            raise DecError("grammar-constrained diffusion decoding needs a regular grammar (regex, choice, a non-recursive "
                           "JSON Schema): a position is filled in any order, which needs the whole finite automaton",
                           hint="use a regular grammar, or a causal spec for a context-free one")
        if matcher.eos_id is None:
            raise DecError("grammar-constrained diffusion decoding pads the output with EOS, and the grammar has no EOS id")
        S, V, eos = int(matcher.num_states), vocab_size, int(matcher.eos_id)
        self.mask_id, self.eos, self.end = mask_id, eos, S
        known = min(V, int(matcher.vocab_size))
        delta = np.full((S + 1, V), -1, dtype=np.int64)
        ids = torch.arange(known)
        for s in range(S):
            delta[s, :known] = np.asarray(matcher.next_state(torch.full((known,), s), ids), dtype=np.int64)
            delta[s, eos] = S if matcher.is_accepting(s) else -1
        delta[S, eos] = S
        if mask_id < V:
            delta[:, mask_id] = -1
        self.delta = delta
        self.start = int(matcher.start)
        self.accepting = np.array([matcher.is_accepting(s) for s in range(S)] + [True])
        wild = np.zeros((S + 1, S + 1), dtype=bool)  # wild[s, s']: some token moves s to s'
        src, tok = np.nonzero(delta >= 0)
        wild[src, delta[src, tok]] = True
        self.wild = wild

    def _backward(self, gen: Sequence[int]) -> list[np.ndarray]:
        """B_i for i = 0..N: the states from which positions i.. can still complete."""
        N = len(gen)
        back = [np.zeros(self.end + 1, dtype=bool) for _ in range(N + 1)]
        back[N] = self.accepting.copy()
        for i in range(N - 1, -1, -1):
            nxt = back[i + 1]
            if gen[i] == self.mask_id:
                back[i] = (self.wild & nxt[None, :]).any(1)
            else:
                d = self.delta[:, gen[i]]
                back[i] = (d >= 0) & nxt[d.clip(0)]
        return back

    def allowed_row(self, gen: Sequence[int]) -> np.ndarray:
        """bool [N, V]: the tokens each masked position of `gen` (the generated positions, mask_id where unknown) may
        hold; a known position allows every token but the mask."""
        gen = [int(t) for t in gen]
        back = self._backward(gen)
        if not back[0][self.start]:
            raise DecError(f"no {len(gen)} tokens after the prompt spell a string of the grammar (padded with EOS) that "
                           "also holds the tokens already there", hint="raise max_new_tokens")
        out = np.ones((len(gen), self.delta.shape[1]), dtype=bool)
        if self.mask_id < out.shape[1]:
            out[:, self.mask_id] = False
        here = np.zeros(self.end + 1, dtype=bool)
        here[self.start] = True
        for i, t in enumerate(gen):
            if t == self.mask_id:
                d = self.delta[here]  # [k, V]
                out[i] = ((d >= 0) & back[i + 1][d.clip(0)]).any(0)
                here = (self.wild[here]).any(0)
            else:
                d = self.delta[here, t]
                here = np.zeros_like(here)
                here[d[d >= 0]] = True
        return out

    def allowed(self, x: torch.Tensor, P: int, bs: int, be: int) -> torch.Tensor:
        """bool [B, be - bs, V]: allowed(i) for the canvas positions bs..be-1 of each row (generated positions from P)."""
        rows = [self.allowed_row(r)[bs - P:be - P] for r in x[:, P:].tolist()]
        return torch.from_numpy(np.stack(rows))

    def fitting(self, x: torch.Tensor, P: int, bs: int, rank: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """rank [B, n] (0: not committed, else 1 + place) with every position whose token no longer fits, once the ones
        ranked before it are committed, set to 0 (left masked)."""
        rank = rank.clone()
        for b in range(rank.shape[0]):
            picked = [int(j) for j in torch.argsort(rank[b]) if rank[b, j] > 0]
            if len(picked) < 2:
                continue
            gen = x[b, P:].tolist()
            for k, j in enumerate(picked):
                t = int(tokens[b, j])
                if k > 0 and not self.allowed_row(gen)[bs - P + j, t]:
                    rank[b, j] = 0
                    continue
                gen[bs - P + j] = t
        return rank

    def matches(self, tokens: Sequence[int]) -> bool:
        """Whether a generated row (cut after its EOS, or full length) is accepted: a string of the grammar, then EOS."""
        s = self.start
        for t in tokens:
            s = int(self.delta[s, int(t)]) if s >= 0 else -1
        return s >= 0 and bool(self.accepting[s])
