"""Exact output distributions of masked-diffusion decoders, and their distance from the sequential process.

A world is a canvas (the prompt and the generated positions, mask_id where still masked) with its
probability. A step of `blocks(...)` runs the runtime's own step functions (backends/diffusion.py) over
every joint outcome of the tokens sampled at the block's masked positions (a product of the positions'
distributions: the runtime samples them independently), commits what the unmasking rule chooses for that
outcome, and merges the worlds that reach the same canvas. A step of `draft_verify` follows its drafts
left to right: a draft d at position i is accepted with probability min(1, p(d) / q(d)), and the rejected
mass is spread over the residual max(p - q, 0), normalized. Rows end after the first block that holds an
EOS, and are cut after it, as the runtime does.

Parallel unmasking approximates the process that commits one position per step; `schedule_tv` measures
how far, exactly, on a table diffusion model (stdlib/models/diffusion_table.py):

    >>> from decspec.dsl.check import load
    >>> from decspec.stdlib.diffusion import plan
    >>> from decspec.stdlib.models.diffusion_table import DiffusionTableModel
    >>> model = DiffusionTableModel.random(vocab=2, seed=0)
    >>> parallel = plan(load('decoder d { target = model("t"); denoise = blocks(length = 3, steps = 1) }'))
    >>> dist = diffusion_distribution(parallel, model, [0], 3)
    >>> round(sum(dist.values()), 12), len(dist)
    (1.0, 8)
    >>> schedule_tv(parallel, model, [0], 3) > 0       # three positions at once: not the sequential process
    True
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any, Sequence

import torch

from decspec.backends.diffusion import blocks_of, choose, distributions, ended, quota, scores
from decspec.backends.exact.distribution import EPS, Distribution
from decspec.backends.exact.rows import TooLarge
from decspec.stdlib.diffusion import Denoise

MAX_OUTCOMES = 1 << 16  # joint outcomes of one step's masked positions (per world)
MAX_WORLDS = 200_000


def diffusion_distribution(plan: Denoise, model: Any, prompt: Sequence[int], max_new_tokens: int,
                           eos: Sequence[int] | None = None, grammar: Any = None, max_worlds: int = MAX_WORLDS) -> Distribution:
    """{generated tokens (cut after the first EOS): probability} of `plan` on a DiffusionLM (float64)."""
    mask, P, N = model.mask_id, len(prompt), max_new_tokens
    worlds: dict[tuple[int, ...], float] = {tuple(prompt) + (mask,) * N: 1.0}
    out = Distribution()
    steps = 0
    for bs, be in blocks_of(P, N, plan.length):
        step = 0
        while any(mask in w[bs:be] for w in worlds):
            grown: dict[tuple[int, ...], float] = defaultdict(float)
            for canvas, weight in worlds.items():
                if mask not in canvas[bs:be]:
                    grown[canvas] += weight
                    continue
                branches = (_draft_verify(plan, model, canvas, bs, be) if plan.accept is not None
                            else _blocks(plan, model, canvas, P, bs, be, step, grammar))
                for new, w in branches:
                    grown[new] += weight * w
            if len(grown) > max_worlds:
                raise TooLarge(f"the exact distribution of {plan.describe()} holds more than {max_worlds:,} canvases after "
                               f"{steps + 1} steps", rows=len(grown), hint="use fewer new tokens or a smaller vocabulary")
            worlds, step, steps = dict(grown), step + 1, steps + 1
        if eos:  # rows with an EOS end here, cut after it
            for canvas in [c for c in worlds if any(t in eos for t in c[P:be])]:
                key = tuple(ended(canvas[P:be], eos))
                out[key] = out.get(key, 0.0) + worlds.pop(canvas)
    for canvas, w in worlds.items():
        key = tuple(ended(canvas[P:], eos))
        out[key] = out.get(key, 0.0) + w
    out.error_bound = max(1, steps) * (plan.length + 2) * (model.vocab_size + 4) * EPS
    out.rounds = steps
    return out


def _blocks(plan: Denoise, model: Any, canvas: tuple[int, ...], P: int, bs: int, be: int, step: int,
            grammar: Any) -> list[tuple[tuple[int, ...], float]]:
    """The canvases one `blocks` step leads to from `canvas`, with their probabilities."""
    mask, L, n = model.mask_id, len(canvas), be - bs
    x = torch.tensor([canvas])
    cache, (start, end) = None, (0, L)
    if plan.cache != "none":  # made at the block's start, when all of it was masked
        fresh = x.clone()
        fresh[:, bs:be] = mask
        cache, (start, end) = model.prefill(fresh), ((bs, L) if plan.cache == "prefix" else (bs, be))
    logits = model.denoise(x, cache=cache, start=start, end=end)[:, bs - start:be - start]  # [1, n, V]
    allowed = grammar.allowed(x, P, bs, be) if grammar is not None else None
    p, c = distributions(logits, plan.stages, mask, allowed)  # [1, n, V]
    masked = x[0, bs:be] == mask
    if plan.rule == "random":
        return _random_order(plan, canvas, P, bs, be, step, p[0], masked, grammar, x)
    support = [torch.nonzero(p[0, j] > 0).flatten().tolist() if masked[j] else [canvas[bs + j]] for j in range(n)]
    count = 1
    for s in support:
        count *= len(s)
    if count > MAX_OUTCOMES:
        raise TooLarge(f"one step of {plan.describe()} has {count:,} joint outcomes over {int(masked.sum())} masked positions "
                       f"(at most {MAX_OUTCOMES:,})", rows=count, hint="use a shorter block or a smaller vocabulary")
    tokens = torch.tensor(list(itertools.product(*support)), dtype=torch.long).reshape(count, n)  # [C, n]
    weight = torch.ones(count, dtype=torch.float64)
    for j in range(n):
        if masked[j]:
            weight = weight * p[0, j, tokens[:, j]]
    M = masked[None, :].expand(count, n)
    rank = choose(scores(plan.rule, c.expand(count, n, -1), tokens, torch.arange(bs, be)), M, quota(M, plan, step),
                  plan.threshold)
    if grammar is not None:
        rank = grammar.fitting(x.expand(count, L), P, bs, rank, tokens)
    block = torch.where(rank > 0, tokens, x[:, bs:be])
    return [(canvas[:bs] + tuple(row) + canvas[be:], float(w)) for row, w in zip(block.tolist(), weight)]


def _random_order(plan: Denoise, canvas: tuple[int, ...], P: int, bs: int, be: int, step: int, p: torch.Tensor,
                  masked: torch.Tensor, grammar: Any, x: torch.Tensor) -> list[tuple[tuple[int, ...], float]]:
    """`unmask = random`: every ordered choice of the step's quota of masked positions, equally likely (a uniformly random
    order), then the tokens of the chosen ones (p [n, V]); the order is the commit order a grammar reads."""
    open_ = [j for j in range(be - bs) if masked[j]]
    k = int(quota(masked[None, :], plan, step)[0])
    orders = list(itertools.permutations(open_, k))
    out = []
    for order in orders:
        for chosen in itertools.product(*(torch.nonzero(p[j] > 0).flatten().tolist() for j in order)):
            w = 1.0 / len(orders)
            tokens = x[:, bs:be].clone()
            rank = torch.zeros_like(tokens)
            for place, (j, t) in enumerate(zip(order, chosen)):
                w *= float(p[j, t])
                tokens[0, j], rank[0, j] = t, place + 1
            if grammar is not None:
                rank = grammar.fitting(x, P, bs, rank, tokens)
            block = torch.where(rank > 0, tokens, x[:, bs:be])[0].tolist()
            out.append((canvas[:bs] + tuple(block) + canvas[be:], w))
    if len(out) > MAX_OUTCOMES:
        raise TooLarge(f"one step of {plan.describe()} has {len(out):,} outcomes (at most {MAX_OUTCOMES:,})", rows=len(out),
                       hint="use a shorter block or a smaller vocabulary")
    return out


def _draft_verify(plan: Denoise, model: Any, canvas: tuple[int, ...], bs: int, be: int) -> list[tuple[tuple[int, ...], float]]:
    """The canvases one `draft_verify` step leads to: drafts d_i ~ q_i (the marginals at `canvas`) accepted left to right
    with probability min(1, p_i(d_i) / q_i(d_i)) (p_i: the conditional given the accepted drafts before i); the first
    rejection resamples position i from max(p_i - q_i, 0), normalized, and ends the step."""
    mask = model.mask_id
    q, _ = distributions(model.denoise(torch.tensor([canvas]))[0, bs:be], plan.stages, mask)  # [n, V]
    out: list[tuple[tuple[int, ...], float]] = []

    def follow(y: tuple[int, ...], i: int, w: float) -> None:
        if i == be:
            out.append((y, w))
            return
        qi = q[i - bs]
        pi = q[i - bs] if plan.accept == "all" else distributions(model.denoise(torch.tensor([y]))[0, i], plan.stages, mask)[0]
        rejected = 0.0
        for d in torch.nonzero(qi > 0).flatten().tolist():
            a = 1.0 if plan.accept == "all" else min(1.0, float(pi[d] / qi[d]))
            rejected += float(qi[d]) * (1.0 - a)
            if a > 0:
                follow(y[:i] + (d,) + y[i + 1:], i + 1, w * float(qi[d]) * a)
        residual = (pi - qi).clamp_min(0)
        if rejected > 0 and float(residual.sum()) > 0:
            residual = residual / residual.sum()
            for t in torch.nonzero(residual > 0).flatten().tolist():
                out.append((y[:i] + (t,) + y[i + 1:], w * rejected * float(residual[t])))

    first = next(i for i in range(bs, be) if canvas[i] == mask)
    follow(canvas, first, 1.0)
    return out


def decoder_tv(decoder: Any, prompt: Sequence[int], max_new_tokens: int) -> tuple[Distribution, Distribution, float]:
    """(the decoder's exact distribution, its sequential process's, their TV distance), for a compiled `denoise` Decoder."""
    from decspec.stdlib.models.protocol import eos_token_ids
    from decspec.testing import tv_distance

    target = decoder._bound_models()[decoder.spec.slot("target").arg("name")]
    eos, grammar = eos_token_ids(target), decoder._diffusion_grammar()
    got = diffusion_distribution(decoder.denoise, target, prompt, max_new_tokens, eos, grammar)
    ref = diffusion_distribution(decoder.denoise.sequential(), target, prompt, max_new_tokens, eos, grammar)
    return got, ref, tv_distance(got, ref)


def schedule_tv(plan: Denoise, model: Any, prompt: Sequence[int], max_new_tokens: int, eos: Sequence[int] | None = None,
                grammar: Any = None) -> float:
    """The total-variation distance between `plan`'s output distribution and the sequential process's
    (`plan.sequential()`: one position per step, the same rule and blocks, no cache), both exact."""
    from decspec.testing import tv_distance

    got = diffusion_distribution(plan, model, prompt, max_new_tokens, eos, grammar)
    ref = diffusion_distribution(plan.sequential(), model, prompt, max_new_tokens, eos, grammar)
    return tv_distance(got, ref)
