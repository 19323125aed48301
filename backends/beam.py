"""Beam search over the model protocol: the runtime of a spec with a `search = beam(...)` slot.

A round graph commits tokens to each row's own context; beam search instead keeps `width`
hypotheses per prompt and re-ranks them every step, so it runs here, on the host, over the same
PrefixCache the round runtime uses (one cache row per hypothesis, P * W rows in all).

One step, for P prompts of W running hypotheses each (the semantics of Hugging Face transformers'
`generate(num_beams=W, do_sample=False)`, which is the reference the tests compare with):

    logp   = stages(log_softmax(logits))          # [P*W, V]: penalty stages act on log-probs, as HF's processors do
    total  = running[:, :, None] + logp           # [P, W, V]: cumulative log-probability of every continuation
    top    = topk(total.view(P, W*V), 2W)         # the 2W best (parent beam, token) pairs, best first
    ended  = token is EOS, or max_new_tokens reached
    finished  <- best W of finished ∪ {top[j] / g**length_penalty : j < W, ended}   (g: generated length)
    running   <- best W of top with the ended ones set aside; caches reordered to their parents

Placeholder hypotheses (score NEG: at step 0 every beam but the first, which only arise again when fewer
than W continuations are alive, V < 2W) never finish; Hugging Face lets them finish with score
-1e9 / length ** length_penalty, so on such tiny vocabularies `beams` may hold fewer hypotheses than HF returns.

Diverse beam search (groups > 1; Vijayakumar et al. 2016, HF's `num_beam_groups`/`diversity_penalty`): each prompt's
W hypotheses are `groups` groups of W // groups, each a beam search of its own (its own finished set and early
stopping: the code treats prompt p's group g as pseudo-prompt p * groups + g). Within a step the groups go in order,
and group g's log-probabilities (before the penalty stages, as HF's HammingDiversityLogitsProcessor comes first) lose
diversity * (how many of groups 0..g-1's kept hypotheses took the token this step; a done group counts as taking
the pad token, the first EOS id, as HF pads it). The result: the finished hypotheses of all groups, best first.

Under a grammar (a `grammar` slot; its Matcher, or GrammarTable on the inductor backend): each hypothesis carries
its grammar state, and each step's log-probabilities are -inf where the state refuses the token (HF's
prefix_allowed_tokens_fn acts the same way on log-probabilities, unrenormalized); EOS is allowed exactly where the
grammar accepts, so a hypothesis that ends at EOS is in the language (one cut at max_new_tokens is a prefix of it).

A prompt stops taking finished hypotheses once it is *done* (HF's early stopping): with
early_stopping "true", when W are finished; otherwise when W are finished and the best running
score divided by g**length_penalty (for "never" with length_penalty > 0: by max_new_tokens**length_penalty)
cannot beat the worst finished one. Generation stops when every prompt is done, or at max_new_tokens.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from decspec.backends.prefix import PrefixCache
from decspec.backends.arguments import context_capacity, positive_int, token_ids
from decspec.backends.runtime import Interrupted, Result, Stats, normalize_prompts
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.protocol import Cache, CacheFull, Model
from decspec.stdlib.penalties import token_counts
from decspec.stdlib.samplers import apply_pipeline
from decspec.stdlib.search import BeamSearch

NEG = -1.0e9  # a placeholder beam's score: far below any real cumulative log-probability, finite so sums stay ordered
# Finished scores are float64, -inf in an empty slot: score / g**length_penalty reaches any magnitude over the allowed
# range (length_penalty in [-10, 10]: g**10 overflows float32 at g ~ 7000; -10 sends a real score below any finite NEG)
EMPTY = float("-inf")


@dataclass
class BeamResult(Result):
    """tokens: the best finished hypothesis of each prompt (as Result: prompt excluded, an ending EOS kept).
    beams: all `width` finished hypotheses of each prompt, best first; scores: their length-penalized scores."""

    beams: list[list[list[int]]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)


@dataclass
class Finished:
    """The finished hypotheses of every prompt: W slots each, kept sorted best first.

    tokens [P, W, G] generated tokens; length [P, W]; score [P, W] (length-penalized, float64; -inf when empty);
    full [P, W] whether the slot holds a hypothesis."""

    tokens: torch.Tensor
    length: torch.Tensor
    score: torch.Tensor
    full: torch.Tensor

    @classmethod
    def empty(cls, P: int, W: int, G: int) -> "Finished":
        return cls(torch.zeros(P, W, G, dtype=torch.long), torch.zeros(P, W, dtype=torch.long),
                   torch.full((P, W), EMPTY, dtype=torch.float64), torch.zeros(P, W, dtype=torch.bool))

    def add(self, tokens: torch.Tensor, length: int, score: torch.Tensor, eligible: torch.Tensor) -> None:
        """Offer candidates tokens [P, C, G] (each `length` tokens long) with length-penalized scores [P, C]; only the
        eligible [P, C] ones may enter. Keeps the W best of the old slots and the offered ones (old ones first on ties)."""
        W = self.score.shape[1]
        score = score.to(self.score.dtype).masked_fill(~eligible, EMPTY)  # never above an empty slot
        merged = torch.cat([self.score, score], 1)  # [P, W + C]
        keep = merged.topk(W, dim=1).indices  # [P, W], best first
        self.score = merged.gather(1, keep)
        self.tokens = _rows(torch.cat([self.tokens, tokens], 1), keep)
        self.length = torch.cat([self.length, torch.zeros_like(score, dtype=torch.long) + length], 1).gather(1, keep)
        self.full = torch.cat([self.full, eligible], 1).gather(1, keep)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[p, index[p, j]] for x [P, N, ...] and index [P, J] -> [P, J, ...]."""
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:]))


def length_normalized(score: torch.Tensor, length: int | torch.Tensor, length_penalty: float) -> torch.Tensor:
    """A finished hypothesis' rank: cumulative log-probability / generated_length ** length_penalty (float64:
    finite over the allowed range, length_penalty in [-10, 10]). length: an int, or a 0-d tensor (a compiled step)."""
    return score.double() / torch.as_tensor(length, dtype=torch.float64, device=score.device) ** length_penalty


def done_after_step(search: BeamSearch, finished: Finished, best_running: torch.Tensor, generated: int | torch.Tensor,
                    max_new_tokens: int) -> torch.Tensor:
    """Which prompts can no longer improve their finished set after a step that left `generated` tokens. -> [P] bool

    "true": W hypotheses are finished. Otherwise also the best running hypothesis' score, divided by the length
    it is assumed to end at (now; for "never" with length_penalty > 0, max_new_tokens, the most favourable),
    must not beat the worst finished one."""
    full = finished.full.all(1)
    if search.early_stopping == "true":
        return full
    ends_at = max_new_tokens if search.early_stopping == "never" and search.length_penalty > 0 else generated
    best = length_normalized(best_running, ends_at, search.length_penalty)
    return full & (best <= finished.score.min(1).values)


def _reorderable(cache: Cache) -> bool:
    """Whether `cache.reorder` is trusted to move every per-row buffer (see Cache.reorder)."""
    return type(cache) is Cache or type(cache).reorder is not Cache.reorder


@dataclass
class Beams:
    """The running hypotheses of P prompts, W each. ctx [P*W, S]: row p*W + j holds prompt p ++ hypothesis j's tokens;
    length [P*W]; running [P, W] cumulative log-probabilities (NEG: a placeholder); generated [P, W, G] their tokens;
    finished (Finished); done [P] prompts that take no more finished hypotheses; rows [P*W]: the row each hypothesis
    continued in the last step (what the caches are reordered by)."""

    ctx: torch.Tensor
    length: torch.Tensor
    running: torch.Tensor
    generated: torch.Tensor
    finished: Finished
    done: torch.Tensor
    rows: torch.Tensor
    gstate: torch.Tensor  # [P*W] each hypothesis' grammar state (zeros without a grammar; -1: after a refused token)

    @classmethod
    def start(cls, prompts: list[list[int]], W: int, G: int, capacity: int, device: torch.device, gstart: int = 0) -> "Beams":
        P = len(prompts)
        ctx = torch.zeros(P * W, capacity, dtype=torch.long)
        for p, row in enumerate(prompts):
            ctx[p * W:(p + 1) * W, :len(row)] = torch.tensor(row)
        length = torch.tensor([len(row) for row in prompts]).repeat_interleave(W)  # [P*W]
        running = torch.full((P, W), NEG)
        running[:, 0] = 0.0  # step 0: every hypothesis is the prompt; only the first one's continuations count
        fin = Finished.empty(P, W, G)
        return cls(ctx.to(device), length.to(device), running.to(device), torch.zeros(P, W, G, dtype=torch.long, device=device),
                   Finished(*(x.to(device) for x in (fin.tokens, fin.length, fin.score, fin.full))),
                   torch.zeros(P, dtype=torch.bool, device=device), torch.arange(P * W, device=device),
                   torch.full((P * W,), gstart, dtype=torch.long, device=device))

    def flat(self) -> tuple[torch.Tensor, ...]:
        f = self.finished
        return (self.ctx, self.length, self.running, self.generated, f.tokens, f.length, f.score, f.full, self.done, self.rows,
                self.gstate)

    @classmethod
    def of(cls, flat: tuple[torch.Tensor, ...]) -> "Beams":
        ctx, length, running, generated, ft, fl, fs, ff, done, rows, gstate = flat
        return cls(ctx, length, running, generated, Finished(ft, fl, fs, ff), done, rows, gstate)

    def take(self, prompts: torch.Tensor, rows: torch.Tensor) -> "Beams":
        """The hypotheses of some (pseudo-)prompts: prompts [Q] and their rows [Q*W] (a diverse step's group)."""
        per_prompt = lambda x: x.index_select(0, prompts)
        per_row = lambda x: x.index_select(0, rows)
        f = self.finished
        return Beams(per_row(self.ctx), per_row(self.length), per_prompt(self.running), per_prompt(self.generated),
                     Finished(*map(per_prompt, (f.tokens, f.length, f.score, f.full))), per_prompt(self.done),
                     per_row(self.rows), per_row(self.gstate))

    @classmethod
    def interleave(cls, parts: list[tuple["Beams", torch.Tensor]]) -> "Beams":
        """The Beams of P prompts from their groups' parts, part g holding pseudo-prompts p * groups + g (P of them) and
        their rows: [(Beams, the part's rows in the whole), ...] in group order; each part's `rows` (its parents, as
        rows of the part) are mapped back to rows of the whole. Stacks and transposes (no scatter into a buffer)."""
        def prompts(xs):  # [groups, P, ...] -> [P * groups, ...]
            return torch.stack(xs, 1).flatten(0, 1)

        def rows(xs):  # [groups, P * Wg, ...] -> [P * groups * Wg, ...]
            P = parts[0][0].running.shape[0]
            return torch.stack([x.view(P, -1, *x.shape[1:]) for x in xs], 1).flatten(0, 2)

        bs = [b for b, _ in parts]
        return cls(rows([b.ctx for b in bs]), rows([b.length for b in bs]), prompts([b.running for b in bs]),
                   prompts([b.generated for b in bs]),
                   Finished(*(prompts([getattr(b.finished, k) for b in bs]) for k in ("tokens", "length", "score", "full"))),
                   prompts([b.done for b in bs]), rows([whole.index_select(0, b.rows) for b, whole in parts]),
                   rows([b.gstate for b in bs]))


class HostGrammar:
    """A Matcher (stdlib/grammars/matcher.py) behind GrammarTable's two tensor methods, on the host."""

    def __init__(self, matcher):
        self.matcher = matcher

    def allowed(self, states: torch.Tensor) -> torch.Tensor:
        """bool [N, V]: what each state allows (a dead state -1: whatever the start state allows; its score is -inf)."""
        return self.matcher.mask(states.cpu().clamp(min=0)).to(states.device)

    def next_state(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        nxt = torch.as_tensor(self.matcher.next_state(states.cpu().clamp(min=0), tokens.cpu()), dtype=torch.long)
        return torch.where(states.cpu() < 0, -1, nxt).to(states.device)


def grammar_masked(grammar, logp: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """logp [N, V] with -inf where states [N] refuse the token (ids past the grammar's vocabulary: refused)."""
    allowed = grammar.allowed(states)  # [N, Vg]
    V = logp.shape[-1]
    if allowed.shape[-1] < V:
        allowed = torch.cat([allowed, allowed.new_zeros(allowed.shape[0], V - allowed.shape[-1])], 1)
    return logp.masked_fill(~allowed[:, :V], float("-inf"))


def step(search: BeamSearch, logits: torch.Tensor, beams: Beams, t: torch.Tensor, G: int,
         eos_ids: torch.Tensor | None, grammar=None) -> Beams:
    """One step of beam search (the module docstring) from the running hypotheses' next-token logits [P*W, V]; t: the
    step (a 0-d tensor, so a compiled step is one graph for every t). grammar: None, a GrammarTable or a HostGrammar.
    Pure tensor code: the eager loop and the compiled step (beam_step) both run it. -> the new Beams (its `rows`: the
    caches' reorder). With groups > 1, P counts pseudo-prompts (prompt, group) and W is a group's width."""
    logp = torch.log_softmax(logits.float(), -1)
    if grammar is not None:
        logp = grammar_masked(grammar, logp, beams.gstate)
    if search.groups == 1:
        return _advance(search, _staged(search, logp, beams), beams, t, G, eos_ids, grammar)
    PG, W = beams.running.shape
    groups, V, dev = search.groups, logp.shape[-1], logp.device
    P = PG // groups
    chosen = torch.zeros(P, V, device=dev)  # [P, V] how many kept hypotheses of the earlier groups took each token
    pad = eos_ids[0] if eos_ids is not None else torch.tensor(0, device=dev)
    parts = []  # each group reads only its own rows (and `chosen`): the parts are put together once, at the end
    for g in range(groups):
        prompts = torch.arange(P, device=dev) * groups + g  # [P] group g's pseudo-prompts
        rows = (prompts[:, None] * W + torch.arange(W, device=dev)).view(-1)  # [P*W] their rows
        part = beams.take(prompts, rows)
        lp = logp.index_select(0, rows) - search.diversity * chosen.repeat_interleave(W, 0)  # Hamming diversity
        new = _advance(search, _staged(search, lp, part), part, t, G, eos_ids, grammar)
        took = new.ctx.gather(1, part.length[:, None]).view(P, W)  # [P, W] each kept hypothesis' new token
        took = torch.where(part.done[:, None], pad, took)  # HF: a group already done takes the pad token
        chosen = chosen.scatter_add(1, took, torch.ones_like(took, dtype=chosen.dtype))
        parts.append((new, rows))
    return Beams.interleave(parts)


def _staged(search: BeamSearch, logp: torch.Tensor, beams: Beams) -> torch.Tensor:
    """The penalty stages on log-probabilities [N, V], reading each hypothesis' context."""
    if not search.stages:
        return logp
    return apply_pipeline(logp, search.stages, token_counts(beams.ctx, beams.length, vocab=logp.shape[-1]))


def _advance(search: BeamSearch, logp: torch.Tensor, beams: Beams, t: torch.Tensor, G: int,
             eos_ids: torch.Tensor | None, grammar) -> Beams:
    """The selection half of a step: from each hypothesis' scored next tokens logp [P*W, V] to the new Beams."""
    P, W = beams.running.shape
    V = logp.shape[-1]
    K = min(search.candidates, W * V)  # fewer only for a vocabulary of one token
    dev = logp.device
    total = (logp.view(P, W, V) + beams.running[:, :, None]).view(P, W * V)
    top, index = total.topk(K, dim=1)  # [P, K], best first
    parent, token = index // V, index % V
    seqs = _rows(beams.generated, parent).index_copy(2, t.reshape(1), token[:, :, None])  # [P, K, G]: step t's token added
    at_eos = torch.isin(token, eos_ids) if eos_ids is not None else torch.zeros_like(token, dtype=torch.bool)
    ended = (t + 1 == G) | at_eos
    # only the W best continuations may finish (the other W are there to keep W running); done prompts take none;
    # nor do continuations of a placeholder beam (score NEG: step 0's copies, or too few live ones when V < 2W), nor
    # ones the grammar refused (-inf)
    eligible = ended & (torch.arange(K, device=dev) < W)[None, :] & ~beams.done[:, None] & (top > NEG / 2)
    f = beams.finished
    finished = Finished(f.tokens, f.length, f.score, f.full)
    finished.add(seqs, t + 1, length_normalized(top, t + 1, search.length_penalty), eligible)
    # [P, W]: the best continuations not ending at EOS (at the last step, the best ones: what a diverse step's later
    # groups count, as HF's running beams; adding NEG to all of them would tie them in float32)
    keep = (top + at_eos.float() * NEG).topk(W, dim=1).indices
    running = top.gather(1, keep) + ended.gather(1, keep).float() * NEG
    rows = ((torch.arange(P, device=dev) * W)[:, None] + parent.gather(1, keep)).view(-1)  # [P*W] the row each continues
    kept = token.gather(1, keep).view(-1)  # [P*W]
    ctx = beams.ctx.index_select(0, rows).scatter(1, beams.length[:, None], kept.view(-1, 1))
    gstate = beams.gstate.index_select(0, rows)
    if grammar is not None:
        gstate = grammar.next_state(gstate, kept)
    done = beams.done | done_after_step(search, finished, running[:, 0], t + 1, G)
    return Beams(ctx, beams.length + 1, running, _rows(seqs, keep), finished, done, rows, gstate)


def beam_step(session, flat: tuple[torch.Tensor, ...], t: torch.Tensor, search: BeamSearch, G: int,
              eos_ids: torch.Tensor | None, grammar=None) -> tuple[torch.Tensor, ...]:
    """One step with static shapes, what the inductor backend compiles (one graph for every step): feed each
    hypothesis' last token (StaticSession: position L - 1, window 1), `step`, then reorder the cache's rows to the
    kept hypotheses' parents, in place. flat: Beams.flat(). -> the new Beams.flat()"""
    beams = Beams.of(flat)
    logits = session.feed(beams.ctx, beams.length, None, -1, 0)[:, -1]  # [P*W, V]
    beams = step(search, logits, beams, t, G, eos_ids, grammar)
    session.cache.reorder(beams.rows)
    return beams.flat()


def beam_generate(search: BeamSearch, target: Model, input_ids: Any, *, max_new_tokens: int,
                  eos_token_id: int | Sequence[int] | None, static: bool = False, compile: bool = False,
                  mode: str | None = None, dynamo_backend: str = "inductor", grammar=None) -> BeamResult:
    """Beam search with the target model; see the module docstring for one step.

    input_ids: what Decoder.generate takes (a [B, T] tensor, ragged id lists). Prompts may differ in length.
    static: the inductor backend's step (beam_step: a static cache, one fed position per hypothesis, the reorder in the
    step),
    torch.compile'd with `compile` (mode, dynamo_backend: its options); else the eager loop over a PrefixCache.
    grammar: the spec's Matcher, or None; the static step masks with its GrammarTable on the device where it has one."""
    from decspec.backends.arguments import models_device
    from decspec.backends.runtime import compile_seconds

    start = time.perf_counter()
    V = target.vocab_size
    prompts = normalize_prompts(input_ids, V)
    max_new_tokens, eos = positive_int("max_new_tokens", max_new_tokens), token_ids("eos_token_id", eos_token_id, V)
    device = models_device({"target": target})
    eos_ids = None if eos is None else torch.tensor(eos, device=device)
    longest = max(len(p) for p in prompts)
    P, W, G = len(prompts), search.width, max_new_tokens
    capacity = context_capacity(P * W, longest, G, 4, {"target": target})  # bounded before allocating (arguments.py)
    groups = search.groups  # pseudo-prompts (prompt, group) of W // groups hypotheses each
    pseudo = [row for row in prompts for _ in range(groups)]
    beams = Beams.start(pseudo, W // groups, G, capacity, device, 0 if grammar is None else grammar.start)
    if grammar is not None:
        from decspec.backends.grammar import device_table

        table = device_table(grammar, device) if static else None
        grammar = table if table is not None else HostGrammar(grammar)
    stats = Stats()
    if static:
        from decspec.backends.inductor.static import StaticSession

        session = StaticSession(target, P * W, capacity)
        session.prefill(beams.ctx, beams.length)
        if not _reorderable(session.cache):
            raise DecError(f"{type(target).__name__}'s cache does not reorder its rows (Cache.reorder), which beam search "
                           "needs on the inductor backend", hint="use backend='eager'")
        fn = torch.compile(beam_step, dynamic=False, mode=mode, backend=dynamo_backend) if compile else beam_step
    else:
        session = PrefixCache(target, P * W, capacity)
        reorder = _reorderable(session.cache)
    steps = 0  # steps completed: every running hypothesis holds this many tokens
    try:
        for t in range(G):
            try:
                if static:
                    before = compile_seconds()
                    beams = Beams.of(fn(session, beams.flat(), torch.tensor(t, device=device), search, G, eos_ids, grammar))
                    stats.compile_time += compile_seconds() - before
                    session.calls += 1
                else:
                    beams = step(search, session.logits(beams.ctx, beams.length).float(), beams, torch.tensor(t), G, eos_ids,
                                 grammar)
                    if reorder:
                        session.cache.reorder(beams.rows)
            except CacheFull as e:
                raise DecError(f"the KV cache is full ({e}); lower max_new_tokens or shorten the prompt") from None
            stats.rounds += 1
            steps = t + 1
            if bool(beams.done.all()):  # the step's one read of the device
                break
    except KeyboardInterrupt:  # Ctrl-C: each prompt's best finished hypothesis if it is done, else its best running one
        finished, done, generated = beams.finished, beams.done.cpu(), beams.generated.cpu()
        best = [finished.tokens[q, 0, :int(finished.length[q, 0])].tolist() if bool(done[q]) and bool(finished.full[q, 0])
                else generated[q, 0, :steps].tolist() for q in range(0, P * groups, groups)]  # each prompt's first group
        stats.wall_time = time.perf_counter() - start
        stats.new_tokens = [len(b) for b in best]
        raise Interrupted(Result(best, stats)) from None
    stats.wall_time = time.perf_counter() - start
    stats.model_calls = {"target": session.calls}
    finished = Finished(*(x.cpu() for x in (beams.finished.tokens, beams.finished.length, beams.finished.score,
                                             beams.finished.full)))
    hyps, scores = [], []
    for p in range(P):  # every group's finished hypotheses, best first (a stable sort: ties keep group order)
        found = [(float(finished.score[q, j]), finished.tokens[q, j, :int(finished.length[q, j])].tolist())
                 for q in range(p * groups, (p + 1) * groups) for j in range(W // groups) if finished.full[q, j]]
        found.sort(key=lambda h: -h[0])
        hyps.append([h for _, h in found])
        scores.append([sc for sc, _ in found])
    stats.new_tokens = [len(b[0]) for b in hyps]
    return BeamResult([b[0] for b in hyps], stats, beams=hyps, scores=scores)
