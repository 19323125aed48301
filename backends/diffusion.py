"""The runtime of masked-diffusion decoders (the `denoise` slot, stdlib/diffusion.py): a host loop over the
DiffusionLM protocol (stdlib/models/diffusion_protocol.py).

A batch of prompts is left-padded to one length P and followed by N = max_new_tokens mask tokens: the
canvas x [B, P + N], with `attend` [B, P + N] marking real positions. Blocks of `length` positions are
decoded left to right (the last one shorter when `length` does not divide N: nothing is rounded). One
step of `blocks(...)`:

    logits = model.denoise(x, attend=attend)[:, block]           # [B, n, V]   (n: the block's positions)
    p, c = sampled(logits), scored(logits)                       # the sampler pipeline's / the model's softmax
    t ~ p at every position                                      # [B, n]
    score = rule(c, t)                                           # confidence c[t], margin, -entropy, -position
    commit the ceil(masked / steps left) best masked positions, and those with score > threshold

`draft_verify` (lossless self-speculative decoding) drafts every masked position of the block from one
call, reads p(x_i | x_<i, the rest masked) for every draft prefix from one batched call (one row per
prefix), and accepts the drafts left to right by rejection sampling (accept d with probability
min(1, p(d) / q(d)); the first rejected one is resampled from max(p - q, 0), normalized).

A row ends after the first block that holds an EOS; its tokens after that EOS are dropped (the EOS is
kept). The exact backend (backends/exact/diffusion.py) runs the same step functions over every outcome.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from decspec.backends.arguments import positive_int, token_ids
from decspec.backends.runtime import Interrupted, Result, Stats, normalize_prompts
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.diffusion import Denoise
from decspec.stdlib.models.diffusion_protocol import is_diffusion
from decspec.stdlib.samplers import apply_pipeline


@dataclass
class DiffusionStats(Stats):
    """Stats of a diffusion decoder: `rounds` counts denoising steps (every row's, in step); committed: per step, the
    positions committed by each row that had masked positions left in the block; model_calls: the target's denoise
    and prefill calls."""

    committed: list[list[int]] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> float:
        """Mean positions committed per denoising step and live row (1.0 for the sequential process)."""
        flat = [c for step in self.committed for c in step]
        return sum(flat) / len(flat) if flat else 0.0


# --------------------------------------------------------------------------- the step's math, shared with the exact backend


def distributions(logits: torch.Tensor, stages: tuple, mask_id: int, allowed: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [..., V] -> (p: the sampler pipeline's distribution, c: the model's softmax), both [..., V] float64, over
    the tokens a position may hold (never the mask; only `allowed` ones [..., V] bool, when a grammar constrains it)."""
    logits = logits.double().clone()
    if mask_id < logits.shape[-1]:  # a model may predict the mask token too (or, as DiffusionTransformer, have no logit for it)
        logits[..., mask_id] = float("-inf")
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    c = torch.softmax(logits, -1)
    p = torch.softmax(apply_pipeline(logits, stages), -1)
    return p, c


def scores(rule: str, c: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The unmasking rule's score of each position (higher: committed first). c [..., n, V], tokens [..., n] (the sampled
    ones), positions [n] -> [..., n] float64."""
    if rule == "confidence":  # the model's probability of the sampled token
        return c.gather(-1, tokens[..., None]).squeeze(-1)
    if rule == "margin":  # top-1 minus top-2 probability
        top = c.topk(min(2, c.shape[-1]), -1).values
        return top[..., 0] - (top[..., 1] if top.shape[-1] > 1 else 0.0)
    if rule == "entropy":  # -H(c), 0 log 0 = 0
        return (c * torch.log(c.clamp_min(1e-300))).sum(-1)
    if rule == "left_to_right":
        return (-positions.double()).expand(tokens.shape)
    raise DecError(f"unknown unmasking rule {rule!r}")


def choose(score: torch.Tensor, masked: torch.Tensor, quota: torch.Tensor, cut: float | None) -> torch.Tensor:
    """Which masked positions a step commits, best first: score [R, n], masked [R, n] bool, quota [R] (>= 1 where any
    position is masked) -> rank [R, n] long: 0 for a position not committed, else 1 + its place in score order (the
    first committed is 1; ties go to the leftmost)."""
    n = score.shape[-1]
    key = torch.where(masked, score, torch.tensor(float("-inf"), dtype=score.dtype))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices  # [R, n]: stable, so ties keep position order
    place = torch.empty_like(order)
    place.scatter_(-1, order, torch.arange(n).expand_as(order))  # each position's place in that order
    take = place < quota[:, None]
    if cut is not None:
        take = take | (score > cut)
    take = take & masked
    return torch.where(take, place + 1, torch.zeros_like(place))


def quota(masked: torch.Tensor, plan: Denoise, step: int) -> torch.Tensor:
    """LLaDA's schedule: ceil(masked / steps left) positions this step. masked [R, n] bool -> [R] long. A block shorter
    than `length` (the last one) takes proportionally fewer steps: ceil(steps * n / length)."""
    n = masked.shape[-1]
    left = max(1, -(-plan.steps * n // plan.length) - step)
    return (masked.sum(-1) + left - 1) // left


def sample(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws: p [..., V], u [...] in [0, 1) -> tokens [...] (the first token whose CDF passes u)."""
    cdf = p.cumsum(-1)
    idx = torch.searchsorted(cdf.contiguous(), (u[..., None] * cdf[..., -1:]).contiguous(), right=True).squeeze(-1)
    return idx.clamp_max(p.shape[-1] - 1)


def ended(row: Sequence[int], eos: Sequence[int] | None) -> list[int]:
    """A generated row cut after its first EOS (kept)."""
    for i, t in enumerate(row):
        if eos and t in eos:
            return list(row[:i + 1])
    return list(row)


def blocks_of(P: int, N: int, length: int) -> list[tuple[int, int]]:
    """The canvas positions [start, end) of each block: N generated positions after P, `length` each (the last shorter)."""
    return [(P + s, P + min(s + length, N)) for s in range(0, N, length)]


# --------------------------------------------------------------------------- the runtime


class Draws:
    """Uniforms for a batch: one generator for all rows (seed), or one per row (seeds), as generate's `seed` gives."""

    def __init__(self, seed: Any, rows: int):
        if isinstance(seed, (list, tuple)):
            self.gens = [torch.Generator().manual_seed(s) if s is not None else _fresh() for s in seed]
        else:
            self.gens = [torch.Generator().manual_seed(seed) if seed is not None else _fresh()]
        self.rows = rows

    def __call__(self, *shape: int) -> torch.Tensor:
        """Uniforms [rows, *shape] float64."""
        if len(self.gens) == 1:
            return torch.rand(self.rows, *shape, generator=self.gens[0], dtype=torch.float64)
        return torch.stack([torch.rand(*shape, generator=g, dtype=torch.float64) for g in self.gens])


def _fresh() -> torch.Generator:
    g = torch.Generator()
    g.seed()
    return g


def denoise_generate(plan: Denoise, model: Any, input_ids: Any, *, max_new_tokens: int, eos_token_id: Any,
                     seed: Any = None, grammar: Any = None, role: str = "target") -> Result:
    """Run a denoising schedule on a DiffusionLM; see the module docstring. grammar: a DiffusionGrammar
    (backends/diffusion_grammar.py) the generated positions must spell, or None."""
    if not is_diffusion(model):
        raise DecError(f"model '{role}' is {type(model).__name__}, not a masked-diffusion model: a `denoise` decoder needs "
                       "denoise(tokens) -> logits at every position (stdlib/models/diffusion_protocol.py)",
                       hint=f"bind a DiffusionLM to '{role}' (e.g. reference_diffusion()), or decode with a causal spec")
    start = time.perf_counter()
    V, mask = model.vocab_size, model.mask_id
    prompts = normalize_prompts(input_ids, V)
    if any(mask in p for p in prompts):
        raise DecError(f"a prompt holds the mask token ({mask}); the decoder masks the positions to generate itself")
    N, eos = positive_int("max_new_tokens", max_new_tokens), token_ids("eos_token_id", eos_token_id, V)
    B, P = len(prompts), max(len(p) for p in prompts)
    if P + N > model.max_length:
        raise DecError(f"the prompt ({P} tokens) and max_new_tokens ({N}) exceed the model's max_length ({model.max_length})",
                       hint="lower max_new_tokens or shorten the prompt")
    x = torch.full((B, P + N), mask, dtype=torch.long)
    attend = torch.ones(B, P + N, dtype=torch.bool)
    for b, p in enumerate(prompts):
        x[b, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        attend[b, :P - len(p)] = False
    draws = Draws(seed, B)
    stats = DiffusionStats()
    live = torch.ones(B, dtype=torch.bool)
    calls = 0
    try:
        for bs, be in blocks_of(P, N, plan.length):
            step = 0
            cache, window = None, (0, P + N)
            if plan.cache != "none":
                cache, calls = model.prefill(x, attend=attend), calls + 1
                window = (bs, P + N) if plan.cache == "prefix" else (bs, be)
            while bool((active := ((x[:, bs:be] == mask).any(1) & live)).any()):
                if plan.accept is not None:
                    committed, c = _draft_verify_step(plan, model, x, attend, bs, be, draws, live)
                else:
                    logits = model.denoise(x, attend=attend, cache=cache, start=window[0], end=window[1])
                    committed = _blocks_step(plan, logits[:, bs - window[0]:be - window[0]], x, mask, bs, be, step, draws, live,
                                             grammar, P)
                    c = 1
                calls += c
                stats.committed.append([int(n) for n, a in zip(committed, active) if a])  # rows with positions left in the block
                step += 1
            if eos:
                live &= ~torch.isin(x[:, P:be], torch.tensor(eos)).any(1)
            if not bool(live.any()):
                break
    except KeyboardInterrupt:  # Ctrl-C: each row's positions known so far from the first on (whole steps only)
        raise Interrupted(_result(x, P, mask, eos, stats, calls, role, start)) from None
    return _result(x, P, mask, eos, stats, calls, role, start)


def _result(x: torch.Tensor, P: int, mask: int, eos: Sequence[int] | None, stats: DiffusionStats, calls: int, role: str,
            start: float) -> Result:
    """Each row's generated positions up to its first still-masked one (all of them once its blocks are done; blocks a
    finished batch never reached stay masked), cut after its first EOS."""
    rows = []
    for r in x[:, P:].tolist():
        rows.append(ended(r[:next((i for i, t in enumerate(r) if t == mask), len(r))], eos))
    stats.rounds = len(stats.committed)
    stats.model_calls = {role: calls}
    stats.new_tokens = [len(r) for r in rows]
    stats.wall_time = time.perf_counter() - start
    finish = ["stop" if eos and r and r[-1] in eos else "length" for r in rows]
    return Result(rows, stats, finish_reason=finish, stopped_by=[r[-1] if f == "stop" else None for r, f in zip(rows, finish)])


def _blocks_step(plan: Denoise, logits: torch.Tensor, x: torch.Tensor, mask: int, bs: int, be: int, step: int, draws: Draws,
                 live: torch.Tensor, grammar: Any, P: int) -> torch.Tensor:
    """One step of `blocks`: logits [B, n, V] of the block's positions; commits into x; -> positions committed per row [B]."""
    n = logits.shape[1]
    block = x[:, bs:be]
    masked = (block == mask) & live[:, None]  # [B, n]
    allowed = grammar.allowed(x, P, bs, be) if grammar is not None else None  # [B, n, V]
    p, c = distributions(logits, plan.stages, mask, allowed)
    tokens = sample(p, draws(n))  # [B, n]
    score = draws(n) if plan.rule == "random" else scores(plan.rule, c, tokens, torch.arange(bs, be))  # random: a random order
    rank = choose(score, masked, quota(masked, plan, step), plan.threshold)
    if grammar is not None:  # positions allowed one at a time may not fit together: commit in rank order, skip misfits
        rank = grammar.fitting(x, P, bs, rank, tokens)
    x[:, bs:be] = torch.where(rank > 0, tokens, block)
    return (rank > 0).sum(-1)


def _draft_verify_step(plan: Denoise, model: Any, x: torch.Tensor, attend: torch.Tensor, bs: int, be: int, draws: Draws,
                       live: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One step of `draft_verify`: draft every masked position of the block (a suffix, left to right), verify the drafts
    against p(x_i | x_<i, the rest masked); commits into x -> (positions committed per row [B], model calls)."""
    B, mask = x.shape[0], model.mask_id
    n = be - bs
    masked = (x[:, bs:be] == mask) & live[:, None]  # [B, n]: a suffix of the block in each live row
    q, _ = distributions(model.denoise(x, attend=attend)[:, bs:be], plan.stages, mask)  # [B, n, V]
    drafts = torch.where(masked, sample(q, draws(n)), x[:, bs:be])  # [B, n]
    if plan.accept == "all":  # every draft committed: the block in one step (lossy)
        x[:, bs:be] = drafts
        return masked.sum(1), 1
    # row (b, k) holds the drafts of positions before bs + k: position k's conditional p(x_k | x_<k, the rest masked)
    pos = torch.arange(n)
    prefix = torch.where((pos[None, :, None] > pos[None, None, :]) & masked[:, None, :], drafts[:, None, :],
                         x[:, None, bs:be])  # [B, n(k), n]
    rows = x[:, None, :].expand(B, n, x.shape[1]).clone()
    rows[:, :, bs:be] = prefix
    logits = model.denoise(rows.reshape(B * n, -1), attend=attend[:, None, :].expand(B, n, -1).reshape(B * n, -1))
    p, _ = distributions(logits.reshape(B, n, -1, logits.shape[-1])[:, pos, bs + pos], plan.stages, mask)  # [B, n, V]
    d = torch.where(masked, drafts, 0)[..., None]  # positions not drafted (known, or an ended row's) read any id
    pd, qd = p.gather(-1, d).squeeze(-1), q.gather(-1, d).squeeze(-1)
    u = draws(n)
    ok = (u * qd < pd) | ~masked  # accept with probability min(1, p(d) / q(d))
    reject = torch.where((~ok).any(1), (~ok).int().argmax(1), torch.full((B,), n))  # [B]: the first rejected position
    residual = (p - q).clamp_min(0)  # [B, n, V]: resampled from at the first rejection
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p)  # p == q: never rejected; any row will do
    fix = sample(residual, draws(n))
    keep = pos[None, :] < reject[:, None]
    new = torch.where(keep, drafts, torch.where(pos[None, :] == reject[:, None], fix, x[:, bs:be]))
    x[:, bs:be] = new
    return (masked & (pos[None, :] <= reject[:, None])).sum(1), 2


# --------------------------------------------------------------------------- binding and arguments


def check_model_kinds(spec: Any, models: Any) -> None:
    """A DecError when a bound model is of the wrong kind for the spec: a causal model for a `denoise` decoder, or a
    masked-diffusion model (without next-token forward) for a causal one; it names the role and the fix."""
    denoising = spec.slot("denoise") is not None
    for role in spec.models:
        m = models.get(role)
        if m is None:
            continue
        if denoising and not is_diffusion(m):
            raise DecError(f"model '{role}' is {type(m).__name__}, a causal model, but decoder '{spec.name}' denoises "
                           "(`denoise = ...`): it needs a masked-diffusion model, one that predicts every masked position",
                           spec.slot("denoise").span,
                           hint=f"bind a DiffusionLM to '{role}' (stdlib/models/diffusion_protocol.py: denoise, prefill, "
                                "mask_id, max_length), or decode this model with a causal spec (e.g. autoregressive)")
        if not denoising and is_diffusion(m) and not hasattr(m, "new_cache"):
            raise DecError(f"model '{role}' is {type(m).__name__}, a masked-diffusion model, but decoder '{spec.name}' decodes "
                           "left to right and needs next-token logits (forward, new_cache)",
                           hint=f"decode it with a diffusion spec (specs/fast_dllm.dec, specs/semi_ar_blocks.dec), or bind a "
                                f"causal model to '{role}'")


def check_arguments(spec: Any, stop: Any, logprobs: bool, max_new_tokens: Any) -> None:
    """What generate takes that a diffusion decoder does not honour (yet), refused at the `denoise` slot."""
    at = spec.slot("denoise").span
    if stop is not None:
        raise DecError("a diffusion decoder does not take stop strings: it unmasks positions out of order, so there is no "
                       "first position the text reaches", at, hint="end rows with eos_token_id=[...] instead")
    if logprobs:
        raise DecError("a diffusion decoder does not report logprobs yet", at)
    if isinstance(max_new_tokens, list):
        raise DecError("a diffusion decoder takes one max_new_tokens for every prompt: the rows share one canvas", at)


def with_settings(plan: Denoise, spec: Any, settings: Any) -> Denoise:
    """The plan with a call's sampler settings (backends/sampling.py `sampler_settings`: {"stage@i": per-row values}) in
    its stages; one value for every row (the rows share the denoising steps, not their samplers, but per-row stages are
    not done yet)."""
    if not settings:
        return plan
    from decspec.backends.sampling import settable

    stages = list(plan.stages)
    for key, values in settings.items():
        name, i = key.split("@")
        if bool((values != values[0]).any()):
            raise DecError(f"a diffusion decoder takes one {name} for every row of a call (got {values.tolist()})",
                           spec.slot("denoise").span, hint="call generate once per setting")
        param = settable()[name][0]
        value = float(values[0]) if settable()[name][1].type == "float" else int(values[0])
        stages[int(i)] = (name, tuple((k, value if k == param else v) for k, v in stages[int(i)][1]))
    return replace(plan, stages=tuple(stages))


def default_model() -> Any:
    """The shipped masked-diffusion model (stdlib/models/diffusion.py), or a DecError saying there is none."""
    try:
        from decspec.stdlib.models.diffusion import reference_diffusion
    except ImportError:
        raise DecError("no masked-diffusion model ships with decspec yet, so a `denoise` decoder has no default target",
                       hint="pass one: decspec.compile(spec, target=model), a DiffusionLM (stdlib/models/diffusion_protocol.py); "
                            "stdlib/models/diffusion_table.py has a tiny table one") from None
    return reference_diffusion()
