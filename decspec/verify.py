"""`decspec verify FILE.dec`: the losslessness analysis, checked exactly on random table models.

For each of N random configurations (vocabulary 2..5, unigram or bigram tables for the target
and every other model role, a short prompt, a few new tokens) the exact backend computes the
decoder's output distribution and compares it with the target's own distribution after the same
sampler pipeline. The report gives the largest total-variation distance and the configuration
that shows it, and whether that agrees with the analysis.

    >>> report = verify_spec("specs/speculative.dec", overrides={"k": 2}, configs=2)
    >>> report.verdict.lossless, report.observed_lossless, report.exit_code
    (True, True, 0)
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from decspec.api import Decoder
from decspec.backends.arguments import positive_int, shown
from decspec.backends.exact import TooLarge, exact_distribution
from decspec.backends.exact.distribution import MAX_ROWS
from decspec.compiler.analysis import Verdict, losslessness
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.dsl.diagnostics import DecError
from decspec.dsl.spec import Spec
from decspec.stdlib.binding import base_role
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.stdlib.registry import SAMPLED_SEARCHES


@dataclass(frozen=True)
class TableConfig:
    """Random table models for a spec's model roles, a prompt and a number of new tokens."""

    vocab: int
    order: int  # 0: unigram tables, 1: bigram
    seeds: tuple[tuple[str, int], ...]  # (role, seed) for every model role, the target first
    draft_temperature: float  # other roles' tables are flatter (> 1) or sharper (< 1) than the target's
    prompt: tuple[int, ...]
    max_new_tokens: int
    eos: int | None = None  # the EOS id of every table (a grammar spec's: the last id of its vocabulary)

    @classmethod
    def random(cls, rng: random.Random, roles: tuple[str, ...], max_new_tokens: int, vocab: tuple[int, int] = (2, 5),
               eos: int | None = None) -> "TableConfig":
        V = rng.randint(*vocab)
        prompt = tuple(rng.randrange(V) for _ in range(rng.randint(1, 2)))
        seeds = tuple((role, rng.randrange(10**6)) for role in roles)
        return cls(V, rng.randint(0, 1), seeds, rng.choice([0.5, 1.0, 2.0]), prompt, max_new_tokens, eos)

    def models(self) -> dict[str, LayeredTableModel]:
        (target, seed), *others = self.seeds
        # LayeredTableModel: TableModel.random's tables, with layers and draft heads for the specs that derive drafts from the target
        out = {target: LayeredTableModel.random(self.vocab, self.order, seed, eos_token_id=self.eos)}
        out.update((role, LayeredTableModel.random(self.vocab, self.order, s, temperature=self.draft_temperature, eos_token_id=self.eos))
                   for role, s in others)
        return out

    def __str__(self) -> str:
        seeds = ", ".join(f"{role}={seed}" for role, seed in self.seeds)
        temp = f" (draft temperature {self.draft_temperature})" if len(self.seeds) > 1 else ""
        return f"V={self.vocab}, {self.order + 1}-gram tables, prompt {list(self.prompt)}, {self.max_new_tokens} new tokens, seeds {seeds}{temp}"


@dataclass
class VerifyReport:
    """checked: (configuration, TV distance to the target, tolerance) per configuration run;
    skipped: configurations whose exact distribution was too large."""

    file: str
    spec: Spec
    verdict: Verdict
    checked: list[tuple[TableConfig, float, float]] = field(default_factory=list)
    skipped: list[TableConfig] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def worst(self) -> tuple[TableConfig, float, float]:
        return max(self.checked, key=lambda c: c[1])

    @property
    def observed_lossless(self) -> bool:
        return all(tv <= tol for _, tv, tol in self.checked)

    @property
    def agrees(self) -> bool:
        return self.observed_lossless == self.verdict.lossless

    @property
    def exit_code(self) -> int:
        """1 when the spec claims to be lossless and is not; else 0 (a lossy verdict is never unsafe)."""
        return 1 if self.verdict.lossless and not self.observed_lossless else 0

    def __str__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.spec.params)
        cfg, tv, tol = self.worst
        V = sorted({c.vocab for c, _, _ in self.checked})
        lines = [
            f"{self.file}: decoder {self.spec.name}({params})",
            f"analysis: {self.verdict}",
            f"exact check on {len(self.checked)} random table-model configurations (V {V[0]}..{V[-1]}, "
            f"{self.checked[0][0].max_new_tokens} new tokens):",
            "    V  gram  prompt    TV distance to the target",
        ]
        lines += [f"  {c.vocab:>3}  {c.order + 1:>4}  {str(list(c.prompt)):<8}  {t:.3g}" for c, t, _ in self.checked]
        if self.skipped:
            lines.append(f"  ({len(self.skipped)} more skipped: their exact distribution needs too many rows)")
        lines.append(f"max TV distance: {tv:.3g} (tolerance {tol:.3g}), at {cfg}")
        if not self.verdict.lossless:  # a lossy spec is not a failure: its measured distance is the result
            mean = sum(t for _, t, _ in self.checked) / len(self.checked)
            lines.append(f"lossy (declared): TV = {tv:.3g} (max; mean {mean:.3g} over {len(self.checked)} configurations, exact backend)")
        if self.verdict.lossless and self.observed_lossless:
            verdict = "lossless, exactly: agrees with the analysis"
        elif self.verdict.lossless:
            verdict = f"NOT lossless: the analysis says lossless, but the output differs from the target's by TV {tv:.3g}"
        elif self.observed_lossless:
            verdict = "no configuration showed a difference from the target (the analysis says lossy, a conservative claim)"
        else:
            verdict = f"lossy: TV distance to the target up to {tv:.3g}; agrees with the analysis"
        lines.append(f"verdict: {verdict} ({self.seconds:.1f} s)")
        return "\n".join(lines)



class NotVerifiable(DecError):
    """A spec the exact check does not apply to (deterministic, or a context-free grammar): `decspec verify` says
    why; the pytest plugin skips it with that reason."""

def verify_spec(spec: Any, overrides: Mapping[str, Any] | None = None, *, decoder: str | None = None, configs: int = 8,
                seed: int = 0, max_new_tokens: int = 3, tol: float = 1e-12, max_rows: int = MAX_ROWS,
                vocab: tuple[int, int] = (2, 5)) -> VerifyReport:
    """Check a spec's losslessness verdict exactly on `configs` random table-model configurations.

    spec: a path or spec text; overrides: its parameters (`{"k": 2}`). A configuration counts as
    lossless when the TV distance is within `tol` (or the computation's own error bound, if larger).
    """
    from decspec.dsl.check import load
    from decspec.testing import target_distribution, tv_distance

    configs, max_new_tokens = positive_int("configs", configs), positive_int("max_new_tokens", max_new_tokens)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DecError(f"seed must be an integer (got {shown(seed)})")
    start = time.perf_counter()
    checked = load(spec, overrides=overrides, decoder=decoder)
    if checked.slot("search") is not None and checked.slot("search").name in SAMPLED_SEARCHES:
        raise NotVerifiable(f"decoder '{checked.name}' reranks samples (search = {checked.slot('search').name}): its output is "
                            "not a sample from the target's distribution, so there is nothing to compare with it",
                            checked.slot("search").span,
                            hint="`decspec check` gives its verdict; remove `search` to verify the round that draws the candidates")
    if checked.slot("search") is not None:
        raise NotVerifiable(f"decoder '{checked.name}' is deterministic (beam search): it does not sample from the target, so there "
                       "is no distribution to compare with the target's", checked.slot("search").span,
                       hint="`decspec check` gives its verdict; tests/test_beam_search.py compares it with Hugging Face's "
                            "generate(num_beams=...) token for token")
    if checked.slot("denoise") is not None:  # judged against its sequential process, on table diffusion models
        from decspec.verify_diffusion import verify_diffusion_spec

        return verify_diffusion_spec(spec, checked=checked, configs=configs, seed=seed, max_new_tokens=max_new_tokens, tol=tol)
    graph = run_pipeline(lower(checked))
    spelling = grammar_vocabulary(checked, random.Random(seed)) if checked.slot("grammar") is not None else None
    if spelling is not None:  # tables over the bytes the grammar's own strings use (and the EOS, last)
        vocab = (len(spelling), len(spelling))
    first = base_role(checked.slot("target"))  # a combined target's first model (stdlib/combine.py)
    roles = (first,) + tuple(r for r in checked.models if r != first)
    report = VerifyReport(str(spec) if "\n" not in str(spec) else "<spec>", checked, losslessness(checked))
    rng = random.Random(seed)
    smallest = (float("inf"), "", "")  # the configuration too large by the least: (rows, configuration, why)
    for _ in range(configs):
        cfg = TableConfig.random(rng, roles, max_new_tokens, vocab, eos=None if spelling is None else len(spelling) - 1)
        dec = Decoder(checked, graph, cfg.models(), vocab=spelling)
        try:
            got = exact_distribution(dec, cfg.prompt, cfg.max_new_tokens, max_rows=max_rows)
        except TooLarge as e:
            report.skipped.append(cfg)
            smallest = min(smallest, (e.rows, str(cfg), e.diagnostics[0].message), key=lambda t: t[0])
            continue
        expected = target_distribution(dec, cfg.prompt, cfg.max_new_tokens)
        report.checked.append((cfg, tv_distance(got, expected), max(tol, got.error_bound)))
    if not report.checked:
        raise DecError(f"decoder '{checked.name}' is too large for the exact check on all {configs} configurations tried; "
                       f"the smallest ({smallest[1]}): {smallest[2]}", hint=_smaller(spec, checked, overrides, decoder, max_new_tokens))
    report.seconds = time.perf_counter() - start
    return report


GRAMMAR_TOKENS = 12  # at most this many byte tokens (and the EOS) in a grammar spec's tables


def grammar_vocabulary(spec: Spec, rng: random.Random) -> list[bytes | None]:
    """A small vocabulary that can spell a regular grammar: the distinct bytes of a shortest accepted string and of
    a few random ones (up to GRAMMAR_TOKENS; the shortest string's bytes first), two of its two-byte pieces (so
    tokens span several bytes, as a real vocabulary's do: forced drafts jump over them), and the EOS last.
    Context-free grammars (lark, json, recursive schemas) are refused: their strings are not enumerated here."""
    from decspec.stdlib.grammars import GrammarError
    from decspec.stdlib.grammars.automaton import ByteDFA, random_examples
    from decspec.stdlib.grammars.compile import grammar_automaton
    from decspec.stdlib.structured import grammar_source

    inst = spec.slot("grammar")
    src = grammar_source(inst)
    try:
        dfa = grammar_automaton(src.kind, src.source)
    except GrammarError as e:
        raise DecError(str(e), inst.span) from None
    if not isinstance(dfa, ByteDFA):
        raise NotVerifiable(f"decspec verify checks grammar specs on byte tables spelled from the grammar's strings, which a "
                       f"context-free grammar ('{inst.name}') does not give it yet", inst.span,
                       hint="compile it on tables you design, decspec.compile(spec, models=..., vocab=[...]), and pass the "
                            "Decoder to decspec.testing.assert_lossless (see tests/test_grammar_decoding.py)")
    shortest = dfa.shortest_example()
    own = list(dict.fromkeys(shortest))  # every one is needed to spell it
    order = list(dict.fromkeys(own + list(b"".join(random_examples(dfa, rng, 4, limit=16)))))[:max(GRAMMAR_TOKENS, len(own))]
    pieces = list(dict.fromkeys(shortest[i:i + 2] for i in range(len(shortest) - 1)))
    vocab: list[bytes | None] = [bytes([b]) for b in order] + [p for p in pieces if p[0] in order and p[1] in order][:2]
    return vocab + [None]


def _smaller(source: Any, spec: Spec, overrides: Mapping[str, Any] | None, decoder: str | None, max_new_tokens: int) -> str:
    """What would make a decoder's exact check smaller, in terms of the parameters it has: the integer parameters
    that, halved, shorten what a round drafts (found by lowering the spec again), and max_new_tokens."""
    from decspec.backends.runtime import max_draft_len
    from decspec.dsl.check import load

    drafted = max_draft_len(run_pipeline(lower(spec)))
    shorter = []
    for name, v in spec.params:
        if isinstance(v, int) and not isinstance(v, bool) and v > 1:
            try:
                halved = load(source, overrides={**(overrides or {}), name: v // 2}, decoder=decoder)
            except DecError:
                continue
            if max_draft_len(run_pipeline(lower(halved))) < drafted:
                shorter.append((name, v))
    if shorter:
        name, v = shorter[0]
        ways = [f"draft fewer tokens per round: lower {' or '.join(n for n, _ in shorter)}, e.g. `decspec verify FILE.dec {name}={v // 2}`"]
    else:
        ways = [f"draft fewer tokens per round (the spec fixes its draft length, {drafted}: change it in the file)"]
    if max_new_tokens > 1:
        ways.append(f"generate fewer tokens (--max-new-tokens, now {max_new_tokens})")
    return "; or ".join(ways)
