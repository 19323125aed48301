"""decspec.testing: the toolkit for property tests of decoders and of your own components.

    >>> from decspec.stdlib.models.table import TableModel
    >>> models = {"target": TableModel.random(3, 1, seed=0), "draft": TableModel.random(3, 1, seed=1)}
    >>> assert_lossless("specs/speculative.dec", models=models, k=2, max_new_tokens=3).method
    'exact'

- distributions: `exact_distribution` (a decoder's output distribution, computed exactly by the
  exact backend), `target_distribution` (the target's own, through the sampler pipeline),
  `sequence_distribution` (the same for a TableModel), `tv_distance`;
- statistics: `chi_square`, `total_variation`, `assert_samples_match`;
- assertions: `assert_lossless` (exact where it can, else chi-square at a stated false-alarm
  rate; `backend="inductor"` samples the generated round), `assert_matches_exact` (a backend's samples
  against the exact backend's distribution, lossy decoders included), `assert_greedy_equivalent`;
- `verify_spec`: the check behind `decspec verify FILE.dec`;
- hypothesis strategies (decspec.strategies, imported on first use; hypothesis is the `testing` extra):
  `distributions`, `table_models`, `model_pairs`, `sampler_pipelines`, `conditions`, `compositions`, `specs`;
- `broken_verifier`: a mutant verifier, to show that a check has teeth.

The pytest plugin `decspec.pytest_plugin` adds fixtures and `.dec` collection on top.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from decspec.backends.exact import Distribution, TooLarge, exact_distribution
from decspec.backends.exact.distribution import MAX_ROWS
from decspec.stdlib.binding import base_role
from decspec.stdlib.combine import reference_logits
from decspec.stdlib.penalties import token_counts
from decspec.stdlib.samplers import apply_pipeline
from decspec.verify import TableConfig, VerifyReport, verify_spec

Pipeline = Sequence[tuple[str, dict]]
STRATEGIES = ("Composition", "compositions", "conditions", "distributions", "model_pairs", "sampler_pipelines", "specs",
              "table_models")  # from decspec.strategies, imported on first use: only they need hypothesis


def __getattr__(name: str) -> Any:
    if name in STRATEGIES:
        try:
            from decspec import strategies
        except ImportError as e:
            raise ImportError(f"decspec.testing.{name} is a hypothesis strategy: pip install 'decspec[testing]' "
                              "(hypothesis)") from e
        return getattr(strategies, name)
    raise AttributeError(f"module 'decspec.testing' has no attribute {name!r}")

__all__ = [
    "Composition", "Distribution", "LosslessCheck", "TableConfig", "TooLarge", "VerifyReport", "assert_greedy_equivalent",
    "assert_lossless", "assert_matches_exact", "assert_samples_match", "broken_verifier", "chi_square", "compositions", "conditions", "distributions",
    "exact_distribution", "greedy_tokens", "model_pairs", "pipeline_text", "sampler_pipelines", "sequence_distribution",
    "specs", "stages", "table_models", "target_distribution", "total_variation", "tv_distance", "verify_spec",
]


def stages(pipeline: Pipeline) -> tuple:
    """[("top_k", {"k": 3}), ...] -> the stage tuples samplers.apply_pipeline takes."""
    return tuple((name, tuple(params.items())) for name, params in pipeline)


def pipeline_text(pipeline: Pipeline) -> str:
    """The .dec text of a pipeline: `temperature(t = 0.8) | top_k(k = 3)`."""
    parts = [f"{n}({', '.join(f'{k} = {v!r}' for k, v in p.items())})" if p else n for n, p in pipeline]
    return " | ".join(parts)


def sequence_distribution(model, prompt: Sequence[int], n: int, pipeline: Pipeline = ()) -> dict[tuple[int, ...], float]:
    """Exact P(x_1..x_n | prompt) under softmax(pipeline(logits)) of a TableModel, by enumeration (float64)."""
    st = stages(pipeline)
    out: dict[tuple[int, ...], float] = {}

    def walk(history: list[int], prefix: tuple[int, ...], prob: float) -> None:
        if len(prefix) == n:
            out[prefix] = prob
            return
        logits = model.logits[model.context(history)]
        counts = torch.bincount(torch.tensor(history, dtype=torch.long), minlength=logits.shape[-1]).double()  # penalties count the prompt too
        p = torch.softmax(apply_pipeline(logits.double(), st, counts), -1)
        for x in torch.nonzero(p > 0).flatten().tolist():
            walk(history + [x], prefix + (x,), prob * float(p[x]))

    walk(list(prompt), (), 1.0)
    return out


def target_distribution(decoder_or_model: Any, prompt: Sequence[int], n: int, pipeline: Pipeline | None = None,
                        eos_token_id: int | None | str = "default", max_sequences: int = 1_000_000,
                        matcher: Any = None) -> dict[tuple[int, ...], float]:
    """The exact distribution of n tokens sampled from the target alone, through the grammar mask
    (if any) and the sampler pipeline: what a lossless decoder must reproduce. Enumerates every
    sequence (float64); a row stops at EOS, which is kept (as `Decoder.generate` does).

    decoder_or_model: a Decoder (its target, its grammar, its spec's sampler pipeline and the target's
    EOS) or any model (with `pipeline`, default none, `eos_token_id`, default the model's own, and
    `matcher`, a compiled grammar, default none).
    """
    combined = None  # (a combined target's instance, the bound models): its logits are reference_logits' (stdlib/combine.py)
    if hasattr(decoder_or_model, "spec") and hasattr(decoder_or_model, "graph"):
        spec = decoder_or_model.spec
        bound, target = decoder_or_model._bound_models(), spec.slot("target")
        model = bound[base_role(target)]
        if target.name != "model":
            combined = (target, bound)
        if pipeline is None:
            pipeline = [(s.name, dict(s.args)) for s in spec.slot("sampler", ())]
        if matcher is None:
            matcher = decoder_or_model.matcher
    else:
        model = decoder_or_model
    st_ = stages(pipeline or ())
    eos = getattr(model, "eos_token_id", None) if eos_token_id == "default" else eos_token_id
    live: dict[tuple[int, ...], float] = {(): 1.0}
    states: dict[tuple[int, ...], int] = {(): matcher.start} if matcher is not None else {}  # each live sequence's grammar state
    out: dict[tuple[int, ...], float] = {}
    for step in range(n):
        if not live:  # every sequence has ended at an EOS
            break
        if len(live) > max_sequences:
            raise TooLarge(f"the target's distribution over {n} tokens has more than {max_sequences:,} sequences",
                           hint="use fewer new tokens or a smaller vocabulary")
        seqs = list(live)
        tokens = torch.tensor([list(prompt) + list(s) for s in seqs])  # [S, T]
        mask = None
        if matcher is not None:
            from decspec.backends.grammar import masked_logits

            mask = lambda logits: masked_logits(matcher, logits, torch.tensor([states[s] for s in seqs]))  # noqa: E731
        if combined is not None:  # each part masked before the combination, as a round reads them
            logits = reference_logits(combined[0], combined[1], tokens, mask)  # [S, V]
        else:
            logits = model.forward(tokens, model.new_cache(len(seqs), tokens.shape[1])).logits[:, -1].double()  # [S, V]
            logits = logits if mask is None else mask(logits)
        counts = token_counts(tokens, torch.full((len(seqs),), tokens.shape[1]), vocab=logits.shape[-1], dtype=logits.dtype)
        probs = torch.softmax(apply_pipeline(logits, st_, counts), -1)  # penalties count the prompt and the sequence so far
        grown: dict[tuple[int, ...], float] = {}
        for seq, w, row in zip(seqs, live.values(), probs.tolist()):
            for x, px in enumerate(row):
                if px > 0:
                    ended = x == eos or step == n - 1
                    (out if ended else grown)[seq + (x,)] = w * px
                    if matcher is not None and not ended:
                        states[seq + (x,)] = int(matcher.next_state([states[seq]], [x])[0])
        live = grown
    return out


def tv_distance(p: Mapping[Any, float], q: Mapping[Any, float]) -> float:
    """Total-variation distance between two distributions given as {outcome: probability}."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def chi_square(samples: Sequence[Sequence[int]], expected: dict[tuple[int, ...], float], min_expected: float = 5.0) -> tuple[float, float]:
    """Pearson chi-square of sampled sequences against expected probabilities -> (statistic, p-value).

    Bins expected fewer than `min_expected` times are pooled; a sample outside the support gives
    p = 0.
    """
    M = len(samples)
    counts = Counter(tuple(s) for s in samples)
    if any(expected.get(seq, 0.0) == 0.0 for seq in counts):
        return float("inf"), 0.0
    obs, exp = [], []
    pooled_o = pooled_e = 0.0
    for seq, p in expected.items():
        if p * M < min_expected:
            pooled_o, pooled_e = pooled_o + counts.get(seq, 0), pooled_e + p * M
        else:
            obs.append(counts.get(seq, 0))
            exp.append(p * M)
    if pooled_e > 0:
        obs.append(pooled_o)
        exp.append(pooled_e)
    if len(obs) < 2:
        return 0.0, 1.0
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    dof = len(obs) - 1
    # survival function of chi2(dof): the regularized upper incomplete gamma Q(dof/2, stat/2)
    p = torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64))
    return stat, float(p)


def total_variation(samples: Sequence[Sequence[int]], expected: dict[tuple[int, ...], float]) -> float:
    """TV distance between the empirical distribution of samples and expected."""
    M = len(samples)
    counts = Counter(tuple(s) for s in samples)
    return 0.5 * sum(abs(counts.get(k, 0) / M - expected.get(k, 0.0)) for k in set(counts) | set(expected))


def assert_samples_match(samples: Sequence[Sequence[int]], expected: dict[tuple[int, ...], float], p_fail: float = 1e-6) -> None:
    """Fail when a chi-square test rejects `expected` at level p_fail (the false-alarm rate)."""
    stat, p = chi_square(samples, expected)
    if p < p_fail:
        raise AssertionError(f"samples do not follow the expected distribution: chi-square p={p:.3g} < {p_fail:g}, TV={total_variation(samples, expected):.4f}")


# the backends that interpret the round graph with the eager rules, which the exact backend's cells are checked
# against: the exact method checks what they sample. A backend that generates code (inductor) is checked by sampling it.
INTERPRETERS = ("eager", "exact")


def _as_decoder(decoder_or_spec: Any, models: Mapping[str, Any] | None, overrides: dict, backend: str | None = None) -> Any:
    """A Decoder as is, or a spec (path or text) compiled with `models` and parameter `overrides`; on `backend` when
    given (a Decoder on another backend is rebuilt there: the same spec, graph, models and vocabulary)."""
    if hasattr(decoder_or_spec, "spec") and hasattr(decoder_or_spec, "graph"):
        if models or overrides:
            raise TypeError("pass models and parameters to decspec.compile, or pass a spec instead of a Decoder")
        dec = decoder_or_spec
        if backend is None or backend == dec.backend.NAME:
            return dec
        from decspec.api import Decoder

        return Decoder(dec.spec, dec.graph, dec.models, backend, vocab=dec.vocab)
    import decspec

    return decspec.compile(decoder_or_spec, models=models, overrides=overrides, backend=backend or "eager")


def _worst(got: Mapping, expected: Mapping, n: int = 3) -> str:
    keys = sorted(set(got) | set(expected), key=lambda s: -abs(got.get(s, 0.0) - expected.get(s, 0.0)))[:n]
    return "; ".join(f"{list(s)}: decoder {got.get(s, 0.0):.6g}, target {expected.get(s, 0.0):.6g}" for s in keys)


@dataclass(frozen=True)
class LosslessCheck:
    """How `assert_lossless` decided. method: "exact" (tv: the TV distance, tol: the threshold) or
    "statistical" (p: the chi-square p-value, p_fail: the false-alarm rate)."""

    method: str
    tv: float
    tol: float | None = None
    p: float | None = None
    p_fail: float | None = None


def assert_lossless(decoder_or_spec: Any, *, models: Mapping[str, Any] | None = None, prompt: Sequence[int] = (1,),
                    max_new_tokens: int = 3, method: str = "auto", tol: float = 1e-12, p_fail: float = 1e-6,
                    samples: int = 4000, seed: int | Sequence[int] = 0, max_rows: int = MAX_ROWS, backend: str | None = None,
                    **overrides: Any) -> LosslessCheck:
    """Assert that a decoder samples the n tokens after `prompt` from the target's distribution
    (after the sampler pipeline), and return how that was decided.

    method="exact": the exact backend's distribution must be within `tol` (total variation, or the
    computation's own float64 error bound if larger) of the target's. That is the distribution of the
    round graph, which the eager backend samples. method="statistical": `samples` continuations (one
    batched generate of the prompt repeated, every row drawing its own uniforms) must pass a
    chi-square test against the target's distribution; a lossless decoder fails it with probability
    `p_fail` (the false-alarm rate). method="auto": exact, unless the exact distribution needs more
    than `max_rows` rows, or the samples come from generated code.

    seed: generate's, for the statistical samples: one integer (the batch's generator), or a list of
    `samples` seeds (every row a stream of its own, backends/draws.py).

    backend: where the statistical samples come from: None, the decoder's own (a spec: eager);
    "inductor", the generated round (a spec is compiled for it, a Decoder rebuilt on it with the same
    models). The exact method does not run a generated round, so on inductor "auto" means
    statistical and "exact" is refused. A Decoder compiled with backend_options={"compile": True}
    samples its compiled round.

        assert_lossless("specs/speculative.dec", models={"target": t, "draft": d}, k=3)
        assert_lossless(decoder, prompt=[5, 2], max_new_tokens=4, method="statistical")
        assert_lossless("specs/entropy_exit.dec", models={"target": t, "draft": d}, backend="inductor")
    """
    if method not in ("auto", "exact", "statistical"):
        raise ValueError(f"method must be 'auto', 'exact' or 'statistical', not {method!r}")
    dec = _as_decoder(decoder_or_spec, models, overrides, backend)
    generated = dec.backend.NAME not in INTERPRETERS
    if method == "exact" and generated:
        raise ValueError(f"method='exact' computes the round graph's distribution on the exact backend; it does not run the "
                         f"{dec.backend.NAME} backend's generated round: use method='statistical' (or 'auto') to sample it")
    expected = target_distribution(dec, prompt, max_new_tokens)
    if method == "exact" or (method == "auto" and not generated):
        try:
            got = exact_distribution(dec, prompt, max_new_tokens, max_rows=max_rows)
        except TooLarge:
            if method == "exact":
                raise
        else:
            tv, threshold = tv_distance(got, expected), max(tol, got.error_bound)
            if not tv <= threshold:
                raise AssertionError(f"decoder '{dec.spec.name}' is not lossless: exact TV distance to the target {tv:.3g} > {threshold:.3g} "
                                     f"(prompt {list(prompt)}, {max_new_tokens} new tokens); largest differences: {_worst(got, expected)}")
            return LosslessCheck("exact", tv, tol=threshold)
    return _sampled_check(dec, expected, "the target", prompt, max_new_tokens, p_fail, samples, seed)


def assert_matches_exact(decoder_or_spec: Any, *, models: Mapping[str, Any] | None = None, prompt: Sequence[int] = (1,),
                         max_new_tokens: int = 3, p_fail: float = 1e-6, samples: int = 4000, seed: int | Sequence[int] = 0,
                         max_rows: int = MAX_ROWS, backend: str | None = None, **overrides: Any) -> LosslessCheck:
    """Assert that a backend samples the distribution the exact backend computes for the same decoder:
    the target's for a lossless decoder, and for a lossy one (`verify = typical`) the distribution its
    components declare, which `assert_lossless` would reject. A chi-square test of `samples`
    continuations from `backend` (None: the decoder's own) at false-alarm rate `p_fail`; raises
    TooLarge when the exact distribution needs more than `max_rows` rows.

        assert_matches_exact("specs/typical_acceptance.dec", models={"target": t, "draft": d}, backend="inductor")
    """
    dec = _as_decoder(decoder_or_spec, models, overrides, backend)
    expected = exact_distribution(dec, prompt, max_new_tokens, max_rows=max_rows)
    return _sampled_check(dec, expected, "the exact backend's distribution", prompt, max_new_tokens, p_fail, samples, seed)


def _sampled_check(dec: Any, expected: Mapping[tuple[int, ...], float], reference: str, prompt: Sequence[int],
                   max_new_tokens: int, p_fail: float, samples: int, seed: int | Sequence[int]) -> LosslessCheck:
    """`samples` continuations of `prompt` from one batched generate (each row its own uniforms) against `expected`."""
    out = dec.generate([list(prompt)] * samples, max_new_tokens=max_new_tokens, seed=seed)
    _, p = chi_square(out.tokens, expected)
    tv = total_variation(out.tokens, expected)
    if p < p_fail:
        raise AssertionError(f"decoder '{dec.spec.name}' on the {dec.backend.NAME} backend does not sample from {reference}: "
                             f"chi-square p={p:.3g} < {p_fail:g} (the false-alarm rate), TV of {samples} samples {tv:.4f} "
                             f"(prompt {list(prompt)}, {max_new_tokens} new tokens)")
    return LosslessCheck("statistical", tv, p=p, p_fail=p_fail)


def greedy_tokens(model: Any, prompt: Sequence[int], n: int, eos_token_id: int | None = None) -> list[int]:
    """Greedy decoding of one model (argmax of its logits, first on ties), straight from full forwards."""
    history, out = list(prompt), []
    while len(out) < n:
        logits = model.forward(torch.tensor([history]), model.new_cache(1, len(history))).logits[0, -1]
        x = int(logits.argmax())
        out.append(x)
        history.append(x)
        if x == eos_token_id:
            break
    return out


def assert_greedy_equivalent(decoder_or_spec: Any, *, models: Mapping[str, Any] | None = None,
                             prompts: Sequence[Sequence[int]] = ((1,),), max_new_tokens: int = 8,
                             eos_token_id: int | None | str = "default", exact: bool = True, seed: int = 0,
                             max_rows: int = MAX_ROWS, backend: str | None = None, **overrides: Any) -> None:
    """Assert that a decoder reproduces greedy decoding of its target token for token, on a
    (ragged) batch of prompts, generating on `backend` (None: the decoder's own; a spec: eager). With
    `exact`, also that the decoder is deterministic: its exact output distribution is a point mass on
    the greedy tokens (skipped when too large).

        assert_greedy_equivalent("specs/speculative_greedy.dec", models=models, prompts=[[1], [2, 3]])
    """
    dec = _as_decoder(decoder_or_spec, models, overrides, backend)
    target = dec._bound_models()[base_role(dec.spec.slot("target"))]
    eos = getattr(target, "eos_token_id", None) if eos_token_id == "default" else eos_token_id
    expected = [greedy_tokens(target, p, max_new_tokens, eos) for p in prompts]
    got = dec.generate([list(p) for p in prompts], max_new_tokens=max_new_tokens, seed=seed, eos_token_id=eos).tokens
    for b, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            at = next((i for i, (x, y) in enumerate(zip(g, e)) if x != y), min(len(g), len(e)))
            raise AssertionError(f"decoder '{dec.spec.name}' differs from greedy decoding on prompt {list(prompts[b])} "
                                 f"at new token {at}: got {g}, greedy gives {e}")
    if exact:
        for p, e in zip(prompts, expected):
            try:
                dist = exact_distribution(dec, p, max_new_tokens, eos_token_id=eos, max_rows=max_rows)
            except TooLarge:
                return
            if dist.get(tuple(e), 0.0) < 1 - dist.error_bound:
                raise AssertionError(f"decoder '{dec.spec.name}' is not deterministic on prompt {list(p)}: greedy decoding gives {e} "
                                     f"with probability {dist.get(tuple(e), 0.0):.6g}; {_worst(dist, {tuple(e): 1.0})}")


def _lower_accept_all(lw, inst, ctx, target, proposal):
    """Broken on purpose: accept every drafted token, then add the bonus token from p."""
    b = lw.b
    p = lw.probs(lw.model_logits([ctx, proposal.tokens], lw.role(target), last=False))
    n = b.emit("match_len", [proposal.tokens, proposal.tokens, proposal.count])[0]  # = drafted
    bonus = b.emit("rejection_residual", [p, proposal.probs, n, proposal.count])[0]  # n == drafted: p_m
    return b.emit("splice", [proposal.tokens, n, lw.sample(bonus)])[0], n


@contextmanager
def broken_verifier(name: str = "accept_all", *, claims_lossless: bool = True):
    """Register, for the duration of a `with` block, a verifier that accepts every draft. By
    default it *claims* to be lossless: a mutant to show that a distribution check has teeth.
    With claims_lossless=False its contract says lossy, as an honest lossy component would.

        with broken_verifier():
            dec = decspec.compile(spec_text_using("verify = accept_all"), ...)
    """
    from decspec.stdlib.registry import Component, Contract, register, unregister

    contract = Contract(True, "claims to be lossless, and is not") if claims_lossless else Contract(False, "accepts every draft: the output follows the draft, not the target")
    register(Component("verifier", name, (), "accepts every draft (deliberately wrong)", contract, _lower_accept_all))
    try:
        yield name
    finally:
        unregister("verifier", name)
