"""Exact output distributions: the generation loop of backends/runtime.py, run over worlds.

A world is one sequence of generated tokens, with its probability. Each round runs the round
graph once over every live world (the exact rules split them at every draw), stops each
resulting row as runtime.generate stops a row (max_new_tokens; at an EOS, which is kept and
ends the row), and merges the rows that reach the same tokens into one world.

    >>> import decspec
    >>> from decspec.stdlib.models.table import TableModel
    >>> target, draft = TableModel.random(3, 1, seed=0), TableModel.random(3, 1, seed=1)
    >>> dec = decspec.compile("specs/speculative.dec", target=target, draft=draft, k=2)
    >>> dist = exact_distribution(dec, [1], max_new_tokens=2)     # {(t1, t2): probability}
    >>> from decspec.testing import target_distribution, tv_distance
    >>> tv_distance(dist, target_distribution(dec, [1], 2)) < 1e-12   # lossless: the target's own
    True
"""
from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

import torch

from decspec.backends.arguments import positive_int, token_ids
from decspec.stdlib.models.protocol import eos_token_ids
from decspec.backends.exact.rows import Rows, Run, TooLarge
from decspec.backends.exact.rules import RULES
from decspec.backends.interpreter import run_graph
from decspec.backends.runtime import Context, max_draft_len, normalize_prompts
from decspec.backends.speculation_length import Policies
from decspec.backends.draft_state import DraftStates
from decspec.compiler.ir import Graph
from decspec.dsl.diagnostics import DecError

NAME = "exact"
EPS = 2.0**-52
MAX_ROWS = 2_000_000  # rows of one round
MAX_BYTES = 4 << 30  # 4 GiB: about what one round's rows may hold (`row_bytes` each)
PROBES = 16  # one-row runs of the first round that estimate its rows before any is enumerated (at most)


def row_bytes(capacity: int, roles: int, drafts: int, vocab: int) -> int:
    """About what one row of an exact round holds at its peak: its context and each model's cache record (int64
    per position, twice: a split copies every per-row value) and float64 probabilities over a round's drafts."""
    return 8 * (2 * capacity * (1 + roles) + 4 * (drafts + 2) * (vocab + 1))


class Distribution(dict):
    """{generated tokens: probability} for one prompt (tokens as `Result.tokens` gives them).

    error_bound: a first-order bound on the total-variation distance between these float64
    figures and the exact distribution of the decoder's own float64 computation. Each split of a
    row multiplies its weight by cell measures computed in float64 with absolute error at most
    (K + 2)(V + 4) eps in total over the cells (softmax, ratios p/q, residual normalization,
    products over K drafts), and the errors of successive splits add up: error_bound = draws on
    the longest path x (K + 2)(V + 4) eps.
    rounds: rounds run. peak_rows: the most rows a round held (what the computation cost).
    """

    error_bound: float = 0.0
    rounds: int = 0
    peak_rows: int = 0


def exact_distribution(
    decoder_or_graph: Any,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    models: Mapping[str, Any] | None = None,
    eos_token_id: int | Sequence[int] | None | str = "default",
    max_rows: int = MAX_ROWS,
    grammars: Mapping[str, Any] | None = None,
) -> Distribution:
    """The exact distribution of the tokens a decoder generates after `prompt`.

    decoder_or_graph: a `Decoder` (its graph, bound models and grammar; EOS defaults to the target's),
    or a round `Graph` with `models` ({role: model}) and, when it has grammar ops, `grammars` ({slot:
    Matcher}). Raises TooLarge (a DecError) when a round would need more than `max_rows` rows, or more than
    MAX_BYTES of them (`row_bytes` each): before enumerating, when the first round's estimated rows
    (`estimate_rows`) already do, else at the draw that passes the limit.
    """
    if getattr(decoder_or_graph, "denoise", None) is not None and models is None:  # a diffusion decoder: no round graph
        return decoder_or_graph.distribution(prompt, max_new_tokens, eos_token_id=eos_token_id)  # backends/exact/diffusion.py
    graph, models, eos, grammars = _unpack(decoder_or_graph, models, eos_token_id, grammars)
    vocab = next(iter(models.values())).vocab_size
    (prompt,) = normalize_prompts([prompt], vocab)
    max_new_tokens, eos = positive_int("max_new_tokens", max_new_tokens), token_ids("eos_token_id", eos, vocab)
    K = max_draft_len(graph)
    capacity = len(prompt) + max_new_tokens + 2 * K + 4
    per_draw = (K + 2) * (vocab + 4) * EPS
    size = row_bytes(capacity, len(models), K, vocab)
    limit = min(max_rows, MAX_BYTES // size)
    # before enumerating anything: the first round's rows, estimated from a few one-row runs of it
    estimate = estimate_rows(graph, models, prompt, capacity, grammars, limit)
    if estimate > limit:
        raise _too_large(f"in its first round (about {estimate:,.0f}, estimated before enumerating)", estimate, limit, size, max_rows)

    out = Distribution()
    gen = torch.full((1, max_new_tokens), -1, dtype=torch.long)  # [W, N]: each live world's tokens, -1 past its length
    length = torch.zeros(1, dtype=torch.long)  # [W]
    weight = torch.ones(1, dtype=torch.float64)  # [W]
    depth = torch.zeros(1, dtype=torch.long)  # [W]: draws on the world's path
    policies = Policies.start(graph, 1, seed=0)  # cross-round length policies: each world follows its own history
    states = DraftStates.start(graph, models, 1)  # cross-round draft states (token recycling's matrix): one per world too
    while gen.shape[0]:
        try:
            rows, (new, accepted, drafted), _ = _round(graph, models, _context(prompt, gen, length, capacity), capacity, limit,
                                                    grammars, policies, states)
        except TooLarge as e:
            raise _too_large(f"in round {out.rounds + 1} ({gen.shape[0]:,} sequences so far; one draw split them into {e.rows:,})",
                             e.rows, limit, size, max_rows) from None
        out.rounds += 1
        out.peak_rows = max(out.peak_rows, len(rows))
        w = rows.world  # [R]
        policies = policies.select(w)
        policies.update(accepted, drafted)
        gen, length, done = _stop(gen[w], length[w], new, accepted, max_new_tokens, eos)
        keys = [k for k in (policies.key(), states.key()) if k is not None]
        gen, length, done, weight, depth, first = _merge(gen, length, done, weight[w] * rows.weight, depth[w] + rows.draws,
                                                         torch.cat(keys, 1) if keys else None)
        policies = policies.select(first[~done])
        states = states.select(first[~done])
        for seq, n, p, d in zip(gen[done].tolist(), length[done].tolist(), weight[done].tolist(), depth[done].tolist()):
            out[tuple(seq[:n])] = out.get(tuple(seq[:n]), 0.0) + p  # a sequence can end in different rounds
            out.error_bound = max(out.error_bound, d * per_draw)
        gen, length, weight, depth = gen[~done], length[~done], weight[~done], depth[~done]
    return out


def _too_large(where: str, rows: float, limit: int, size: int, max_rows: int) -> TooLarge:
    """TooLarge with the figures: the rows, what they would hold, the limit and what sets it."""
    why = "max_rows" if limit == max_rows else f"{_bytes(MAX_BYTES)} of rows"
    return TooLarge(f"the exact distribution needs more than {limit:,} rows {where}: about {_bytes(rows * size)} "
                    f"at about {size:,} bytes a row (the limit: {why})",
                    hint="use a smaller vocabulary, speculation length or max_new_tokens", rows=rows, limit=limit)


def _bytes(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def estimate_rows(graph: Graph, models: dict, prompt: list[int], capacity: int, grammars: Mapping[str, Any],
                  limit: float | None = None, probes: int = PROBES, seed: int = 0) -> float:
    """About how many rows the first round splits into: Knuth's estimate of a tree's leaves, averaged over up
    to `probes` runs of the round on one row that follows a uniformly chosen live cell at every draw (each run's
    product of the live cells it met is an unbiased estimate). Given a `limit`, stops early once the mean of two or
    more runs is below limit / 64: far enough below to decide. Each run costs a one-row round."""
    rng = random.Random(seed)
    gen, length = torch.zeros((1, 0), dtype=torch.long), torch.zeros(1, dtype=torch.long)
    total = 0
    for n in range(1, probes + 1):
        run = _round(graph, models, _context(prompt, gen, length, capacity), capacity, MAX_ROWS, grammars,
                     Policies.start(graph, 1, seed=0), DraftStates.start(graph, models, 1), probe=rng)[2]
        total += run.estimate
        if limit is not None and n >= 2 and total / n < limit / 64:
            break
    return total / n


def _context(prompt: list[int], gen: torch.Tensor, length: torch.Tensor, capacity: int) -> Context:
    """The committed context of each world: the prompt, then its tokens. -> tokens [W, capacity], length [W]"""
    tokens = torch.zeros(gen.shape[0], capacity, dtype=torch.long)
    tokens[:, : len(prompt)] = torch.tensor(prompt)
    tokens[:, len(prompt) : len(prompt) + gen.shape[1]] = gen.clamp(min=0)
    return Context(tokens, len(prompt) + length, torch.full_like(length, len(prompt)))


def _round(graph: Graph, models: dict, ctx: Context, capacity: int, max_rows: int, grammars: Mapping[str, Any],
           policies: Policies | None = None, states: DraftStates | None = None, probe: random.Random | None = None) -> tuple:
    """Run the round graph once over every world, splitting rows at every draw. `states` (one per
    world before the round) holds one per row of the round after it. -> (rows, committed, run);
    with `probe`, one row follows random cells instead (`estimate_rows`)."""
    run = Run(Rows.start(ctx.tokens.shape[0]), models, capacity, RULES, NAME, max_rows, dict(grammars))
    run.policies = policies
    run.draft_states = states
    run.probe = probe
    run_graph(graph, [ctx], run, RULES, NAME)
    if states:
        states.advance(run.align)
    return run.rows, run.committed, run


def _merge(gen, length, done, weight, depth, state=None):
    """Rows that reach the same tokens (and, with cross-round length policies, the same policy
    state [R, F]) are one world: sum their weights.

    gen: [R, N] (-1 past each row's length), length, done, weight, depth: [R]
    -> the same for [W] worlds, and first [W]: a row of each world
    """
    key = torch.cat([gen, done[:, None].long()], 1)  # [R, N+1], entries in -1 .. V-1
    base = int(key.max()) + 2
    if state is not None:  # a world's future depends on its policy state too
        key = torch.cat([key.double(), state], 1)
    elif base ** key.shape[1] < 2**62:  # one int64 per row: a 1-D unique is much faster than unique(dim=0)
        key = ((key + 1) * base ** torch.arange(key.shape[1] - 1, -1, -1)).sum(1)
    _, world = torch.unique(key, dim=0 if key.dim() == 2 else None, return_inverse=True)  # [R]
    W, R = int(world.max()) + 1, gen.shape[0]
    first = torch.full((W,), R).scatter_reduce_(0, world, torch.arange(R), "amin")  # a row of each world
    merged_weight = torch.zeros(W, dtype=torch.float64).index_add_(0, world, weight)
    merged_depth = torch.zeros(W, dtype=torch.long).scatter_reduce_(0, world, depth, "amax")
    return gen[first], length[first], done[first], merged_weight, merged_depth, first


def _stop(gen, length, tokens, accepted, max_new_tokens: int, eos: tuple[int, ...] | None):
    """Per-row stopping, as runtime.rounds does it: keep min(accepted + 1, tokens left) new
    tokens, fewer when an EOS id comes first (the EOS is kept and ends the row).

    gen: [R, N], length: [R], tokens: [R, T], accepted: [R] -> (gen [R, N], length [R], done [R])
    """
    take = torch.minimum(accepted + 1, max_new_tokens - length)  # [R]
    cols = torch.arange(tokens.shape[1])
    done = torch.zeros_like(take, dtype=torch.bool)
    if eos is not None:
        is_eos = torch.isin(tokens, torch.tensor(eos)) & (cols[None, :] < take[:, None])
        done = is_eos.any(1)
        take = torch.where(done, is_eos.int().argmax(1) + 1, take)
    kept = torch.where(cols[None, :] < take[:, None], tokens, -1)  # [R, T]
    gen = torch.cat([gen, gen.new_full(tokens.shape, -1)], 1)  # room for a round's tokens past the end
    gen.scatter_(1, length[:, None] + cols[None, :], kept)
    length = length + take
    return gen[:, :max_new_tokens], length, done | (length >= max_new_tokens)


def _unpack(decoder_or_graph: Any, models: Mapping[str, Any] | None, eos: Any,
            grammars: Mapping[str, Any] | None) -> tuple[Graph, dict, int | None, dict]:
    if isinstance(decoder_or_graph, Graph):
        if not models:
            raise DecError("exact_distribution of a graph needs its models: models={'target': ..., ...}")
        graph, bound = decoder_or_graph, dict(models)
        first = next(iter(bound.values()))
    else:  # a Decoder
        graph = decoder_or_graph.graph
        if graph is not None and decoder_or_graph.search is not None:  # a sampling search: not the round's distribution
            raise DecError(f"search = {decoder_or_graph.spec.slot('search').name}(...) picks one of n samples per prompt: its "
                           "output does not follow the round's distribution, which is all the exact backend enumerates",
                           decoder_or_graph.spec.slot("search").span,
                           hint="remove `search` to enumerate what one candidate follows; call generate(...) for the search")
        if graph is None:  # a `search` spec (beam search): deterministic, nothing to enumerate
            raise DecError("beam search is deterministic: it has one output per prompt, not a distribution to enumerate",
                           decoder_or_graph.spec.slot("search").span, hint="call generate(...)")
        if models is None:
            bound = decoder_or_graph._bound_models()
        else:  # the caller's models, and the views the spec derives from them (early_exit, ...)
            from decspec.stdlib.binding import bind_models

            bound = bind_models(decoder_or_graph.spec, models)
        first = bound[decoder_or_graph.spec.models[0]]
        if grammars is None:
            grammars = decoder_or_graph._bound_grammars()
    if isinstance(eos, str) and eos == "default":  # the target's own EOS ids, as generate takes them
        eos = eos_token_ids(first)
    return graph, bound, eos, dict(grammars or {})
