"""Lexically constrained beam search (`search = constrained_beam(width, words = [...])`, stdlib/search.py): beam search
whose hypotheses must contain every phrase of `words`, with Hugging Face transformers 4.46's semantics
(`generate(num_beams=width, force_words_ids=[...], num_return_sequences=width)`: its ConstrainedBeamSearchScorer,
after Hokamp & Liu 2017's grid beam search and Post & Vilar 2018's dynamic beam allocation), which
tests/test_search_beams.py matches token for token through a fixture.

Progress (`Progress`) is replayed from each hypothesis's whole sequence, prompt included: phrases are met one at a
time, a phrase in progress that meets a wrong token goes back to the end of the pending list (its progress lost, and
that token not tried as the start of another phrase), a pending phrase starts at its first token (the first such
in the pending order). A hypothesis's *bank* is how far it got: met phrases * longest phrase length + the tokens
matched of the one in progress.

One step, per prompt of W hypotheses (cumulative scores `running`, the first W-1 placeholders at -1e9 at step 0):

    total   = running[:, None] + stages(log_softmax(logits))          # [W, V]
    top     = the best 2W (hypothesis, token) pairs
    EOS pairs among the first W finish if their hypothesis meets every phrase (others are dropped);
    the first W other pairs are the candidates; then every hypothesis not done adds, for each token that advances it
    (the next token of the phrase in progress, or the first token of each pending phrase), that continuation
    (if not a candidate already) with its score total[h, token];
    candidates sort by bank * 100 + score, descending; the new W: the best of each bank in that order, then the
    second best of each, and so on.

The prompt is done as in beam search (HF 4.46's is_done, with the best of the 2W pairs' scores). At the end, the
running hypotheses that meet every phrase finish; if fewer than W did, all the others finish too (HF's fallback,
so `beams` can hold hypotheses that miss a phrase: they rank by score like the rest). Runs on the host over a
PrefixCache on every backend that takes beam search (a per-hypothesis Python state each step; no compiled step).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from decspec.backends.arguments import context_capacity, positive_int, token_ids
from decspec.backends.beam import BeamResult, _reorderable
from decspec.backends.prefix import PrefixCache
from decspec.backends.runtime import Stats, normalize_prompts
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.protocol import CacheFull, Model
from decspec.stdlib.penalties import token_counts
from decspec.stdlib.samplers import apply_pipeline

NEG = -1.0e9  # HF's placeholder score


@dataclass
class Progress:
    """Which phrases a token sequence has met (the module docstring). pending: phrase indices not started, in the
    order they are tried; met: count of phrases met; current: the phrase in progress and how many of its tokens matched."""

    phrases: tuple[tuple[int, ...], ...]
    pending: list[int] = field(default_factory=list)
    met: int = 0
    current: int | None = None
    matched: int = 0

    @classmethod
    def of(cls, phrases: tuple[tuple[int, ...], ...], tokens: Sequence[int]) -> "Progress":
        state = cls(phrases, list(range(len(phrases))))
        for t in tokens:
            if state.complete:
                break
            state.add(t)
        return state

    @property
    def complete(self) -> bool:
        return self.current is None and not self.pending

    def add(self, token: int) -> None:
        if self.current is not None:
            phrase = self.phrases[self.current]
            if token == phrase[self.matched]:
                self.matched += 1
                if self.matched == len(phrase):
                    self.met, self.current = self.met + 1, None
            else:  # the phrase starts over, at the end of the pending list
                self.pending.append(self.current)
                self.current = None
            return
        for i, c in enumerate(self.pending):
            if token == self.phrases[c][0]:
                del self.pending[i]
                if len(self.phrases[c]) == 1:
                    self.met += 1
                else:
                    self.current, self.matched = c, 1
                return

    def advances(self) -> list[int]:
        """The tokens that make progress: the next of the phrase in progress, else each pending phrase's first."""
        if self.current is not None:
            return [self.phrases[self.current][self.matched]]
        return [self.phrases[c][0] for c in self.pending]

    @property
    def bank(self) -> int:
        longest = max(map(len, self.phrases))
        return self.met * longest + (longest - (len(self.phrases[self.current]) - self.matched) if self.current is not None else 0)


class Hypotheses:
    """A prompt's finished hypotheses, kept as HF's BeamHypotheses keeps them: at most W, the worst dropped."""

    def __init__(self, W: int, length_penalty: float, early_stopping: str, max_new_tokens: int):
        self.W, self.length_penalty, self.early, self.G = W, length_penalty, early_stopping, max_new_tokens
        self.beams: list[tuple[float, list[int]]] = []
        self.worst = 1e9

    def add(self, tokens: list[int], score: float, generated: int) -> None:
        s = score / generated ** self.length_penalty
        if len(self.beams) < self.W or s > self.worst:
            self.beams.append((s, tokens))
            if len(self.beams) > self.W:
                ranked = sorted((b[0], i) for i, b in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(s, self.worst)

    def done(self, best: float, generated: int) -> bool:
        if len(self.beams) < self.W:
            return False
        if self.early == "true":
            return True
        length = self.G if self.early == "never" and self.length_penalty > 0 else generated
        return self.worst >= best / length ** self.length_penalty

    def ranked(self) -> list[tuple[float, list[int]]]:
        """Best first; among equal scores the one added last first (HF pops from an ascending sort)."""
        return sorted(self.beams, key=lambda b: b[0])[::-1]


def _select(W: int, scores: torch.Tensor, tokens: list[int], parents: list[int], banks: list[int]) -> list[int]:
    """Indices of the W candidates kept: sorted by bank * 100 + score, descending, then dealt out bank by bank."""
    zipped = torch.tensor(banks) * 100 + scores  # float32, as HF's
    order = zipped.sort(descending=True).indices.tolist()
    rank, counter, bank = [], -1, banks[order[0]]
    for i in order:  # the position within each run of one bank (runs, as HF counts: a bank can recur after another)
        counter, bank = (counter + 1, bank) if banks[i] == bank else (0, banks[i])
        rank.append(counter)
    dealt = sorted(range(len(order)), key=lambda j: rank[j])  # stable: by rank within the run, then sort order
    return [order[j] for j in dealt][:W]


def constrained_generate(search, target: Model, input_ids: Any, *, max_new_tokens: int,
                         eos_token_id: int | Sequence[int] | None) -> BeamResult:
    """search: stdlib/search.py ConstrainedBeam (width, length_penalty, early_stopping, stages, phrases)."""
    start = time.perf_counter()
    V = target.vocab_size
    prompts = normalize_prompts(input_ids, V)
    G, eos = positive_int("max_new_tokens", max_new_tokens), token_ids("eos_token_id", eos_token_id, V)
    pad = eos[0] if eos else 0
    eos = set(eos or ())
    P, W = len(prompts), search.width
    phrases = search.phrases
    capacity = context_capacity(P * W, max(map(len, prompts)), G, 4, {"target": target})
    session = PrefixCache(target, P * W, capacity)
    reorder = _reorderable(session.cache)
    seqs = [list(prompts[p]) for p in range(P) for _ in range(W)]  # [P*W] prompt ++ hypothesis
    running = torch.full((P, W), NEG)
    running[:, 0] = 0.0
    hyps = [Hypotheses(W, search.length_penalty, search.early_stopping, G) for _ in range(P)]
    done = [False] * P
    stats = Stats()
    for t in range(G):
        ctx = torch.zeros(P * W, capacity, dtype=torch.long)
        for r, s in enumerate(seqs):
            ctx[r, :len(s)] = torch.tensor(s)
        length = torch.tensor([len(s) for s in seqs])
        try:
            logits = session.logits(ctx, length).float().cpu()  # [P*W, V]
        except CacheFull as e:
            raise DecError(f"the KV cache is full ({e}); lower max_new_tokens or shorten the prompt") from None
        logp = torch.log_softmax(logits, -1)
        if search.stages:
            logp = apply_pipeline(logp, search.stages, token_counts(ctx, length, vocab=V))
        total = logp.view(P, W, V) + running[:, :, None]  # [P, W, V]
        rows = list(range(P * W))
        for p in range(P):
            if done[p]:  # HF pads a done prompt's hypotheses; they take no more finished ones
                seqs[p * W:(p + 1) * W] = [s + [pad] for s in seqs[p * W:(p + 1) * W]]
                continue
            top, index = total[p].reshape(-1).topk(2 * W)
            cand_scores, cand_tokens, cand_parents = [], [], []
            for rank, (score, i) in enumerate(zip(top.tolist(), index.tolist())):
                parent, token = divmod(i, V)
                seq = seqs[p * W + parent]
                if token in eos:
                    if rank < W and Progress.of(phrases, seq).complete:
                        hyps[p].add(seq[len(prompts[p]):] + [token], score, t + 1)
                else:
                    cand_scores.append(top[rank])
                    cand_tokens.append(token)
                    cand_parents.append(parent)
                if len(cand_tokens) == W:
                    break
            known = [seqs[p * W + j] + [tok] for j, tok in zip(cand_parents, cand_tokens)]
            states = [Progress.of(phrases, s) for s in known]
            for j in range(W):  # every hypothesis's continuations that advance a phrase
                base = Progress.of(phrases, seqs[p * W + j])
                if base.complete:
                    continue
                for tok in base.advances():
                    seq = seqs[p * W + j] + [tok]
                    if seq in known:
                        continue
                    known.append(seq)
                    states.append(Progress.of(phrases, seq))
                    cand_scores.append(total[p, j, tok])
                    cand_tokens.append(tok)
                    cand_parents.append(j)
            keep = _select(W, torch.stack(cand_scores), cand_tokens, cand_parents, [s.bank for s in states])
            new = [seqs[p * W + cand_parents[k]] + [cand_tokens[k]] for k in keep]
            for j, k in enumerate(keep):
                rows[p * W + j] = p * W + cand_parents[k]
                running[p, j] = cand_scores[k]
            seqs[p * W:(p + 1) * W] = new
            done[p] = hyps[p].done(float(top[0]), t + 1)
        if reorder:
            session.cache.reorder(torch.tensor(rows))
        stats.rounds += 1
        if all(done):
            break
    for p in range(P):  # the running hypotheses finish: those that meet every phrase, else all (HF's fallback)
        if done[p]:
            continue
        met = [j for j in range(W) if Progress.of(phrases, seqs[p * W + j]).complete]
        for j in met + ([j for j in range(W) if j not in met] if len(met) < W else []):
            gen = seqs[p * W + j][len(prompts[p]):]
            hyps[p].add(gen, float(running[p, j]), len(gen))
    stats.wall_time = time.perf_counter() - start
    stats.model_calls = {"target": session.calls}
    ranked = [h.ranked() for h in hyps]
    beams = [[b for _, b in r] for r in ranked]
    stats.new_tokens = [len(b[0]) for b in beams]
    return BeamResult([b[0] for b in beams], stats, beams=beams, scores=[[s for s, _ in r] for r in ranked])
