"""The generation loop: run the round graph until every row has its tokens.

The round graph proposes, verifies and commits; this loop owns what lives across rounds: the
committed context (static buffer, per-row lengths), one PrefixCache per model, the random
generator, per-row stopping (EOS ids, max_new_tokens, stop strings) and the statistics.
`rounds` yields what each round committed (a `Commit`, which `Decoder.stream` turns into text);
`generate` runs it to the end. Every backend runs through this loop.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Generator, Sequence

import torch

from decspec.backends.arguments import context_capacity, models_device, new_token_counts, prompts as normalize_prompts, seeds, token_ids
from decspec.backends.detokenize import RowText
from decspec.backends.draws import RowDraws
from decspec.backends.grammar import GrammarSession
from decspec.backends.interpreter import run_graph
from decspec.backends.logprobs import Logprobs
from decspec.backends.prefix import PrefixCache, hidden_roles
from decspec.backends.speculation_length import Policies
from decspec.backends.draft_state import DraftStates
from decspec.compiler.ir import Graph
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.protocol import CacheFull, Model


@dataclass
class Context:
    tokens: torch.Tensor  # [B, S] committed tokens (prompt + generated), static capacity S
    length: torch.Tensor  # [B]
    start: torch.Tensor | None = None  # [B] prompt lengths: where each row's generated tokens begin (what a grammar constrains)


@dataclass
class RoundState:
    sessions: dict[str, PrefixCache]
    generator: torch.Generator
    batch: int
    device: torch.device
    rules: dict
    backend: str
    committed: tuple | None = None
    grammars: dict[str, Any] = field(default_factory=dict)  # grammar slot -> GrammarSession (backends/grammar.py)
    policies: Any = None  # cross-round length policies (backends/speculation_length.py): the length_cap ops read them
    draft_states: Any = None  # cross-round draft state (backends/draft_state.py): recycle_state / lookahead_state read it, the stores stage it
    sampling: dict[str, torch.Tensor] | None = None  # per-row sampler values {PerRow key: [B] float64} (backends/sampling.py)
    draws: Any = None  # rows with seeds of their own (backends/draws.py RowDraws); the uniform draws read it


@dataclass
class Stats:
    """What a generate call measured.

    rounds: rounds run. accepted: per round, the drafted tokens accepted in each row that was
    still generating (rows already finished are left out). drafted: same shape, tokens drafted.
    new_tokens: tokens generated per row. wall_time: seconds for the whole call. compile_time: the part of it
    torch.compile spent compiling (dynamo and inductor, in this call's rounds); tokens_per_second leaves it out.
    """

    rounds: int = 0
    accepted: list[list[int]] = field(default_factory=list)
    drafted: list[list[int]] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    wall_time: float = 0.0
    model_calls: dict[str, int] = field(default_factory=dict)
    compile_time: float = 0.0

    @property
    def mean_accepted(self) -> float:
        """Mean drafted tokens accepted per round (per row)."""
        flat = [a for r in self.accepted for a in r]
        return sum(flat) / len(flat) if flat else 0.0

    @property
    def mean_tokens_per_round(self) -> float:
        """Mean tokens committed per round (per row): accepted drafts + the target's own token."""
        return self.mean_accepted + 1.0 if self.accepted else 0.0

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(d for r in self.drafted for d in r)
        return sum(a for r in self.accepted for a in r) / drafted if drafted else 0.0

    @property
    def generation_time(self) -> float:
        """Seconds spent generating: the call's, less what compiling took."""
        return max(0.0, self.wall_time - self.compile_time)

    @property
    def tokens_per_second(self) -> float:
        """New tokens over generation_time (compiling left out: a cold compiled call is not slow decoding)."""
        return sum(self.new_tokens) / self.generation_time if self.generation_time > 0 else 0.0

    def summary(self) -> str:
        return (
            f"rounds={self.rounds} new_tokens={sum(self.new_tokens)} "
            f"mean_accepted={self.mean_accepted:.2f} tokens/round={self.mean_tokens_per_round:.2f} "
            f"acceptance={self.acceptance_rate:.2f} time={self.wall_time:.3f}s tokens/s={self.tokens_per_second:.1f}"
            + (f" compile={self.compile_time:.1f}s" if self.compile_time else "")
        )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during generation: `result` holds the tokens the rows had when it came (whole rounds only)."""

    def __init__(self, result: "Result"):
        super().__init__(f"interrupted after {sum(result.stats.new_tokens)} new tokens")
        self.result = result


@dataclass
class Result:
    """tokens: the generated ids of each row (ragged; prompt excluded; an EOS that ended a row is kept; a stop string
    is not, see backends/detokenize.py). text: the decoded continuations, when the target carries a tokenizer (else
    None). finish_reason: per row "stop" (an EOS id or a stop string) or "length" (max_new_tokens); stopped_by: the
    EOS id or stop string that stopped it (None for "length"); both None when interrupted. logprobs: per row, each
    token's log-probability under the target's distribution after the sampler pipeline (generate(logprobs=True));
    top_logprobs: per row and token, the most likely (id, log p), best first (generate(top_logprobs=n))."""

    tokens: list[list[int]]
    stats: Stats
    text: list[str] | None = None
    finish_reason: list[str | None] | None = None
    stopped_by: list[int | str | None] | None = None
    logprobs: list[list[float]] | None = None
    top_logprobs: list[list[list[tuple[int, float]]]] | None = None


@dataclass
class Commit:
    """What one round committed. tokens: per row the ids it added ([] for rows that had ended); finished: the rows
    this round ended, each with why: ("stop", the EOS id or the stop string) or ("length", None) at max_new_tokens.
    A stop string may cut tokens committed in earlier rounds: the row's RowText says what it keeps."""

    tokens: list[list[int]]
    finished: dict[int, tuple[str, int | str | None]]
    logprobs: list[list[float]] | None = None  # per row, of `tokens` (backends/logprobs.py), when asked for
    top: list[list[list[tuple[int, float]]]] | None = None  # per row and token, the most likely (id, log p): top_logprobs


DRAFT_OPS = ("draft_loop", "ngram_lookup", "grammar_forced", "recycle_draft", "lookahead_draft", "staged_loop", "forced_then")  # the ops that propose; their `max` is the round's speculation length


def max_draft_len(graph: Graph) -> int:
    """The most tokens a round feeds past the context: a draft op's `max`, a token tree's nodes (`tree_build`,
    `recycle_tree`), or lookahead's guessed window (`lookahead_state`'s `window`)."""
    fed = [op.param("nodes") or len(op.param("parents")) if op.name in ("tree_build", "recycle_tree") else op.param("window") if op.name == "lookahead_state" else op.param("max", 0)
           for op in graph.walk() if op.name in DRAFT_OPS + ("tree_build", "recycle_tree", "lookahead_state")]  # lookahead: its guessed window too
    return max(fed, default=0)


def generate(graph: Graph, models: dict[str, Model], input_ids: Any, **kwargs: Any) -> Result:
    """The generation loop run to its end: see `rounds` for the arguments."""
    loop = rounds(graph, models, input_ids, **kwargs)
    while True:
        try:
            next(loop)
        except StopIteration as end:
            return end.value


def rounds(
    graph: Graph,
    models: dict[str, Model],
    input_ids: Any,
    *,
    max_new_tokens: int | Sequence[int],
    seed: int | None | Sequence[int | None],
    eos_token_id: int | Sequence[int] | None,
    rules: dict,
    backend: str,
    runner: Any = None,
    grammars: dict[str, Any] | None = None,
    texts: Sequence[RowText] | None = None,
    sampling: dict[str, torch.Tensor] | None = None,
    logprobs: tuple[str, tuple] | None = None,
    top_logprobs: int = 0,
) -> Generator[Commit, None, Result]:
    """The generation loop, one `Commit` yielded per round; returns the Result. Each round runs the graph through
    the interpreter with `rules`, or, when the backend generates code, through `runner` (start(models, B, capacity,
    ctx) once, then runner(ctx, state) per round; see backends/inductor). `grammars`: {slot: Matcher} the grammar
    ops read. eos_token_id: one id or several; a row ends at the first of them (kept). texts: one RowText per row
    (backends/detokenize.py), fed each round's tokens: a row ends where its text first holds one of its stop
    strings, and keeps the tokens its RowText says. sampling: per-row sampler values for a graph whose stages hold
    PerRow parameters ({key: [B] tensor}, backends/sampling.py). logprobs: (the target's role, the sampler stages) to
    score each round's tokens with (backends/logprobs.py), with `top_logprobs` alternatives. max_new_tokens: one count, or one per row. seed: the
    batch generator's, or one per row (each row its own stream, backends/draws.py)."""
    vocab = next(iter(models.values())).vocab_size
    prompts = normalize_prompts(input_ids, vocab)
    limits = new_token_counts(max_new_tokens, len(prompts))  # per row
    if texts is not None and len(texts) != len(prompts):
        raise DecError(f"{len(texts)} row texts for {len(prompts)} prompts")
    # room for the longest row, its new tokens, and a round's drafts plus padding past the end (bounded: arguments.py)
    capacity = context_capacity(len(prompts), max(map(len, prompts)), max(limits), draft_room(graph), models)
    batch_seed, row_seeds = seeds(seed, len(prompts))
    batch = Batch(graph, models, prompts, limits, capacity=capacity, seed=batch_seed, row_seeds=row_seeds,
                  eos=token_ids("eos_token_id", eos_token_id, vocab), rules=rules, backend=backend, runner=runner,
                  grammars=grammars, texts=texts, sampling=sampling, logprobs=logprobs)
    batch.top[:] = top_logprobs
    try:
        while not batch.finished:
            yield batch.step()
    except KeyboardInterrupt:  # Ctrl-C: hand back what was generated, as the exception's `result`
        raise Interrupted(batch.result()) from None
    return batch.result()


def signed64(seed: int) -> int:
    """A 64-bit seed (signed or not) as the int64 with the same bits."""
    return seed - 2**64 if seed >= 2**63 else seed


def compile_seconds() -> float:
    """Seconds torch.compile has spent compiling in this process so far (dynamo's own account: its
    `_compile.compile_inner` timings); 0 when dynamo was never loaded."""
    dynamo = sys.modules.get("torch._dynamo.utils")
    times = getattr(dynamo, "compilation_time_metrics", {}) if dynamo is not None else {}
    return float(sum(times.get("_compile.compile_inner", ())))


def host(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Integer tensors [B, ...] on the CPU, copied in one transfer (packed as int64) when they are on another device:
    a round's one sync."""
    if all(t.device.type == "cpu" for t in tensors):
        return tensors
    flat = torch.cat([t.reshape(t.shape[0], -1).to(torch.long) for t in tensors], 1).cpu()
    out, at = [], 0
    for t in tensors:
        w = math.prod(t.shape[1:])
        out.append(flat[:, at:at + w].reshape(t.shape).to(t.dtype))
        at += w
    return tuple(out)


def draft_room(graph: Graph) -> int:
    """Context positions a round may write past a row's length: its drafts, and padding."""
    return 2 * max_draft_len(graph) + 4


class Batch:
    """One generation across rounds: the committed context (static [B, capacity] buffer, per-row lengths), one
    PrefixCache per model (or the runner's sessions), the random generator, per-row stopping (EOS ids,
    max_new_tokens, stop strings), cross-round policies and draft states, and the statistics. `step()` runs one
    round and commits it. `admit(b, ...)` puts a new prompt into a row that has finished, between rounds
    (continuous batching, decspec/serve.py): its caches follow by themselves, since a PrefixCache feeds whatever
    differs from what it holds (a prompt that shares a prefix with the row's last one reuses it)."""

    def __init__(self, graph: Graph, models: dict[str, Model], prompts: list[list[int]], limits: list[int], *,
                 capacity: int, seed: int | None, eos: list[int] | None, rules: dict, backend: str, runner: Any = None,
                 grammars: dict[str, Any] | None = None, texts: Sequence[RowText] | None = None,
                 sampling: dict[str, torch.Tensor] | None = None, logprobs: tuple[str, tuple] | None = None,
                 row_seeds: Sequence[int | None] | None = None):
        self.started = time.perf_counter()
        self.graph, self.models, self.capacity = graph, models, capacity
        B = len(prompts)
        self.eos_ids = None if eos is None else torch.tensor(eos)
        self.texts = None if texts is None else list(texts)
        self.lengths = [len(p) for p in prompts]
        self.max_new_tokens = torch.tensor(limits)  # [B]; bounded by the capacity check
        # the committed context: kept on the host (stopping, text, grammars read it), and mirrored on the models'
        # device for the rounds (the same tensors when that is the CPU); `step` updates both from one read
        ctx = self.ctx = Context(torch.zeros(B, capacity, dtype=torch.long), torch.tensor(self.lengths),
                                 torch.tensor(self.lengths))
        for b, p in enumerate(prompts):
            ctx.tokens[b, : len(p)] = torch.tensor(p)
        device = models_device(models)
        self.dev = ctx if device.type == "cpu" else Context(*(x.to(device) for x in (ctx.tokens, ctx.length, ctx.start)))
        # each call draws from its own generator: concurrent calls (threads) never interleave draws, and an
        # unseeded call takes a fresh seed without touching torch's global generator
        generator = torch.Generator(device=device)
        if seed is None:
            seed = generator.seed()
        else:
            generator.manual_seed(seed)
        self.seed = signed64(seed)  # cross-round policies keep it in a tensor
        state = self.state = RoundState({}, generator, B, device, rules, backend)
        state.sampling = sampling
        state.policies = Policies.start(graph, B, self.seed)  # the hook of cross-round exit policies: caps before, updates after each round
        state.draft_states = DraftStates.start(graph, models, B)  # the hook of draft sources with cross-round state: staged in, taken after
        state.grammars = {slot: GrammarSession(m, start=ctx.start) for slot, m in (grammars or {}).items()}
        state.draws = RowDraws(B, graph)
        for b, row_seed in enumerate(row_seeds or ()):
            self.seed_row(b, row_seed)
        self.runner = runner
        if runner is None:
            hidden = hidden_roles(graph)  # recorded from the prefill on: no second prefill when the first draft reads them
            state.sessions = {r: PrefixCache(m, B, capacity, record_hidden=r in hidden) for r, m in models.items()}
        else:
            state.sessions = runner.start(models, B, capacity, self.dev)
        grammar = next(iter((grammars or {}).values()), None)
        self.scorer = None if logprobs is None else Logprobs(models[logprobs[0]], B, capacity, logprobs[1], sampling, grammar)
        self.scores: list[list[float]] = [[] for _ in range(B)]
        self.tops: list[list[list[tuple[int, float]]]] = [[] for _ in range(B)]
        self.scored = torch.ones(B, dtype=torch.bool)  # the rows whose tokens the scorer scores (admit: the request's choice)
        self.top = torch.zeros(B, dtype=torch.long)  # per row, how many most likely tokens to report beside each (admit)
        self.stats = Stats()
        self.produced = torch.zeros(B, dtype=torch.long)
        self.done = torch.zeros(B, dtype=torch.bool)
        self.prefill = torch.zeros(B, dtype=torch.long)  # per row: its prompt's length while it is fed chunk by chunk (admit)
        self.chunk = torch.zeros(B, dtype=torch.long)  # per row: positions of its prompt fed per round while it is

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    def result(self) -> Result:
        """What the rows hold now: every round so far committed whole (ctx.length moves last)."""
        ctx, lengths, stats = self.ctx, self.lengths, self.stats
        stats.wall_time = time.perf_counter() - self.started
        B = len(lengths)
        ends = [int(ctx.length[b]) if self.texts is None else lengths[b] + self.texts[b].kept for b in range(B)]
        stats.new_tokens = [ends[b] - lengths[b] for b in range(B)]
        stats.model_calls = {r: s.calls for r, s in self.state.sessions.items()}
        out = Result([ctx.tokens[b, lengths[b] : ends[b]].tolist() for b in range(B)], stats)
        if self.scorer is not None:
            out.logprobs = [self.scores[b][: ends[b] - lengths[b]] for b in range(B)]
            if bool(self.top.any()):
                out.top_logprobs = [self.tops[b][: ends[b] - lengths[b]] for b in range(B)]
        return out

    def seed_row(self, b: int, seed: int | None) -> None:
        """Row b draws from a stream of its own seeded `seed` (backends/draws.py; None: the batch's generator), and
        its cross-round policies start from that seed."""
        self.state.draws.seed(b, seed)
        if seed is not None and self.state.policies:
            rows = torch.arange(len(self.lengths)) == b
            self.state.policies.restart(rows, Policies.start(self.graph, len(self.lengths), signed64(seed)))

    def admit(self, b: int, prompt: list[int], limit: int, text: RowText | None = None,
              sampling: dict[str, float] | None = None, start: int | None = None, seed: int | None = None,
              logprobs: bool = False, top_logprobs: int = 0, chunk: int | None = None) -> None:
        """Row b, which has finished, starts over with `prompt` and up to `limit` new tokens (its stop strings in
        `text` when the batch follows text; its sampler values {PerRow key: value} when the round has them). Its
        cross-round policy and draft state start afresh; the random generator goes on. `start`: where the row's
        generated tokens begin (default: after the prompt), for a row that moves over from another batch with the
        tokens it generated there (what penalties count and a grammar constrains). `seed`: the row's own random
        stream (seed_row), so its tokens do not depend on the other rows; None: the batch's generator. `logprobs`:
        score its tokens (the batch has a scorer), with its `top_logprobs` most likely tokens beside each. `chunk`:
        a prompt longer than this is fed `chunk` positions a round (chunked prefill: the other rows' rounds stay
        short while it is); the row generates from the round that feeds its last chunk on, as if fed whole."""
        if not self.done[b]:
            raise ValueError(f"row {b} is still generating")
        if len(prompt) + limit + draft_room(self.graph) > self.capacity:
            raise DecError(f"the prompt ({len(prompt)} tokens) plus max_new_tokens ({limit}) does not fit the "
                           f"{self.capacity - draft_room(self.graph)} positions a row holds; shorten the prompt or lower "
                           "max_new_tokens")
        if (text is None) != (self.texts is None):
            raise ValueError("a row's text is given exactly when the batch follows text")
        if (logprobs or top_logprobs) and self.scorer is None:
            raise ValueError("this batch has no scorer: build it with logprobs=")
        ctx, n = self.ctx, len(prompt)
        ctx.tokens[b, :n] = torch.tensor(prompt, dtype=torch.long)
        ctx.length[b] = n
        ctx.start[b] = n if start is None else start
        first = n if chunk is None or n <= chunk or ctx.start[b] != n else chunk  # a moved row with tokens: fed whole
        self.prefill[b], self.chunk[b] = (n, chunk) if first < n else (0, 0)
        if first < n:  # the rounds until its last chunk read a context that ends early, and commit nothing for it
            ctx.length[b] = ctx.start[b] = first
        self.lengths[b] = n
        self.max_new_tokens[b], self.produced[b] = limit, 0
        if self.texts is not None:
            self.texts[b] = text
        self.scores[b], self.tops[b] = [], []
        self.scored[b], self.top[b] = bool(logprobs or top_logprobs), int(top_logprobs)
        for key, value in (sampling or {}).items():
            self.state.sampling[key][b] = value
        rows = torch.arange(len(self.lengths)) == b
        if self.state.policies:
            self.state.policies.restart(rows, Policies.start(self.graph, len(self.lengths), self.seed))
        if self.state.draft_states:
            self.state.draft_states.restart(rows, DraftStates.start(self.graph, self.models, len(self.lengths)))
        self.seed_row(b, seed)
        self.done[b] = bool(self.prefill[b])  # a row still being fed rides along, as a finished row does
        self._mirror(rows=b)

    def release(self, b: int) -> None:
        """Row b ends now (a cancelled request): its slot is free for `admit` after this round."""
        self.done[b] = True
        self.prefill[b] = 0

    def feeding(self, b: int) -> bool:
        """Whether row b's prompt is still being fed (chunked prefill: admit's `chunk`)."""
        return bool(self.prefill[b])

    def prompt_of(self, b: int) -> list[int]:
        """Row b's whole context: its prompt and what it generated (the whole prompt while it is still being fed)."""
        return self.ctx.tokens[b, : int(self.prefill[b]) or int(self.ctx.length[b])].tolist()

    def _feed(self) -> None:
        """Chunked prefill, before a round: each row being fed reads `chunk` more of its prompt; the one whose prompt
        is then whole generates from this round on (its generated tokens start after it)."""
        ctx, rows = self.ctx, self.prefill > 0
        ctx.length[rows] = torch.minimum(ctx.length + self.chunk, self.prefill)[rows]
        ctx.start[rows] = ctx.length[rows]  # nothing generated yet (what penalties count and a grammar constrains)
        whole = rows & (ctx.length == self.prefill)
        self.done[whole] = False
        self.prefill[whole] = 0
        self._mirror()

    def _mirror(self, rows: int | None = None) -> None:
        """Copy the host's context to the device's: its lengths, and row `rows`'s tokens (admit) when given."""
        ctx, dev = self.ctx, self.dev
        if dev is ctx:
            return
        if rows is not None:
            dev.tokens[rows].copy_(ctx.tokens[rows], non_blocking=True)
        dev.length.copy_(ctx.length, non_blocking=True)
        dev.start.copy_(ctx.start, non_blocking=True)

    def step(self) -> Commit:
        """Run one round over every row and commit what the rows that are still generating accepted."""
        ctx, state, stats, done = self.ctx, self.state, self.stats, self.done
        state.committed = None
        if bool(self.prefill.any()):
            self._feed()
        state.draws.next_round(~done)
        try:
            if self.runner is None:
                run_graph(self.graph, [self.dev], state, state.rules, state.backend)
            else:
                before = compile_seconds()
                self.runner(self.dev, state)
                stats.compile_time += compile_seconds() - before
        except CacheFull as e:
            raise DecError(f"the KV cache is full ({e}); lower max_new_tokens or shorten the prompt") from None
        tokens, accepted, drafted = host(*state.committed)  # [B, N], [B], [B]: the round's one read of the device
        B = tokens.shape[0]
        active = ~done
        stats.rounds += 1
        stats.accepted.append(accepted[active].tolist())
        stats.drafted.append(drafted[active].tolist())
        if state.policies:
            state.policies.update(accepted.cpu(), drafted.cpu(), active)
        if state.draft_states:
            state.draft_states.update(active)
        take = torch.minimum(accepted + 1, self.max_new_tokens - self.produced).masked_fill(done, 0)  # [B]
        N = tokens.shape[1]
        cols = torch.arange(N)
        hit = torch.zeros(B, dtype=torch.bool)
        if self.eos_ids is not None:
            is_eos = torch.isin(tokens, self.eos_ids) & (cols[None, :] < take[:, None])
            hit = is_eos.any(1)
            take = torch.where(hit, is_eos.int().argmax(1) + 1, take)
        keep = cols[None, :] < take[:, None]
        pos = (ctx.length[:, None] + cols[None, :]).clamp(max=self.capacity - 1)
        ctx.tokens.scatter_(1, pos, torch.where(keep, tokens, ctx.tokens.gather(1, pos)))
        if self.dev is not ctx:  # the same commit on the device's copy
            self.dev.tokens.scatter_(1, pos.to(self.dev.tokens.device), ctx.tokens.gather(1, pos).to(self.dev.tokens.device))
        ctx.length += take
        self._mirror()
        self.produced += take
        ended = active & (hit | (self.produced >= self.max_new_tokens))
        done |= ended
        new = [row[:t] for row, t in zip(tokens.tolist(), take.tolist())]
        scored = top = None
        if self.scorer is not None:
            scored = self.scorer.score(self.dev.tokens, self.dev.length - take.to(self.dev.length.device), tokens,
                                       take * self.scored, self.dev.start, self.top)
            top = self.scorer.top if bool(self.top.any()) else None
        for b, row in enumerate(scored or ()):
            self.scores[b] += row
        for b, row in enumerate(top or ()):
            self.tops[b] += row
        finished = {b: ("stop", new[b][-1]) if hit[b] else ("length", None) for b in ended.nonzero().flatten().tolist()}
        for b in active.nonzero().flatten().tolist() if self.texts is not None else ():
            stop = self.texts[b].feed(new[b], last=b in finished)
            if stop is not None:  # a stop string: it ends the row, whatever else did
                finished[b] = ("stop", stop)
                done[b] = True
        return Commit(new, finished, scored, top)
