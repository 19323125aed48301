"""`decspec verify` and `decspec check` for masked-diffusion decoders (the `denoise` slot).

A diffusion decoder is judged against its sequential process: the same blocks and unmasking rule, one
position per step, no cache (`Denoise.sequential`; for `draft_verify`, the left-to-right process). On
random table diffusion models (stdlib/models/diffusion_table.py: vocabulary 2..4, a short prompt, a few
new tokens) the exact backend computes both output distributions (backends/exact/diffusion.py) and
reports their total-variation distance: 0 (to float64 rounding) for a lossless schedule, the price of
parallel unmasking or of an approximate cache otherwise.

    >>> report = verify_diffusion_spec("specs/diffusion_speculative.dec", configs=2)
    >>> report.verdict.lossless, report.observed_lossless, report.exit_code
    (True, True, 0)
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Mapping

from decspec.backends.exact import TooLarge
from decspec.compiler.analysis import Verdict, losslessness
from decspec.dsl.diagnostics import DecError
from decspec.dsl.spec import Spec
from decspec.verify import VerifyReport


@dataclass(frozen=True)
class DiffusionConfig:
    """A random table diffusion model for the spec's target, a prompt and a number of new tokens."""

    vocab: int  # tokens the model predicts (the mask is one more id)
    seed: int
    temperature: float  # the table's logits: standard normal / temperature
    prompt: tuple[int, ...]
    max_new_tokens: int
    eos: int | None = None

    @classmethod
    def random(cls, rng: random.Random, max_new_tokens: int, vocab: tuple[int, int] = (2, 4), eos: int | None = None,
               ) -> "DiffusionConfig":
        V = rng.randint(*vocab)
        prompt = tuple(rng.randrange(V) for _ in range(rng.randint(1, 2)))
        return cls(V, rng.randrange(10**6), rng.choice([0.5, 1.0, 2.0]), prompt, max_new_tokens, eos)

    def model(self) -> Any:
        from decspec.stdlib.models.diffusion_table import DiffusionTableModel

        return DiffusionTableModel.random(self.vocab, self.seed, temperature=self.temperature, eos_token_id=self.eos)

    def __str__(self) -> str:
        return (f"V={self.vocab} (+ mask), table temperature {self.temperature}, prompt {list(self.prompt)}, "
                f"{self.max_new_tokens} new tokens, seed {self.seed}")


@dataclass
class DiffusionReport(VerifyReport):
    """A verify report whose reference is the sequential process (`reference`, its description), not a target table:
    checked holds (configuration, TV distance from the sequential process, tolerance) per configuration run."""

    reference: str = ""

    def __str__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.spec.params)
        cfg, tv, tol = self.worst
        lines = [f"{self.file}: decoder {self.spec.name}({params})", f"analysis: {self.verdict}",
                 f"exact check on {len(self.checked)} random table diffusion models ({self.checked[0][0].max_new_tokens} new "
                 f"tokens), against the sequential process {self.reference}:",
                 "    V  temp  prompt    TV distance from the sequential process"]
        lines += [f"  {c.vocab:>3}  {c.temperature:>4}  {str(list(c.prompt)):<8}  {t:.3g}" for c, t, _ in self.checked]
        if self.skipped:
            lines.append(f"  ({len(self.skipped)} more skipped: their exact distribution is too large)")
        lines.append(f"max TV distance: {tv:.3g} (tolerance {tol:.3g}), at {cfg}")
        if self.verdict.lossless and self.observed_lossless:
            verdict = "lossless, exactly: the sequential process itself (TV 0 to float64 rounding); agrees with the analysis"
        elif self.verdict.lossless:
            verdict = f"NOT lossless: the analysis says lossless, but the output differs from the sequential process by TV {tv:.3g}"
        elif self.observed_lossless:
            verdict = "no configuration showed a difference from the sequential process (the analysis says lossy, a conservative claim)"
        else:
            mean = sum(t for _, t, _ in self.checked) / len(self.checked)
            verdict = f"lossy: TV {tv:.3g} from the sequential process (max; mean {mean:.3g}); agrees with the analysis"
        lines.append(f"verdict: {verdict} ({self.seconds:.1f} s)")
        return "\n".join(lines)


def verify_diffusion_spec(spec: Any, overrides: Mapping[str, Any] | None = None, *, decoder: str | None = None,
                          configs: int = 8, seed: int = 0, max_new_tokens: int = 3, tol: float = 1e-12,
                          vocab: tuple[int, int] = (2, 4), checked: Spec | None = None) -> DiffusionReport:
    """The exact TV distance of a `denoise` spec from its sequential process on `configs` random table diffusion models."""
    from decspec.api import Decoder
    from decspec.backends.exact.diffusion import decoder_tv
    from decspec.dsl.check import load

    start = time.perf_counter()
    checked = checked or load(spec, overrides=overrides, decoder=decoder)
    rng = random.Random(seed)
    spelling = _spelling(checked, rng)
    if spelling is not None:  # the grammar's own bytes, EOS last
        vocab = (len(spelling), len(spelling))
    report = DiffusionReport(str(spec) if "\n" not in str(spec) else "<spec>", checked, losslessness(checked))
    for _ in range(configs):
        cfg = DiffusionConfig.random(rng, max_new_tokens, vocab, eos=None if spelling is None else len(spelling) - 1)
        dec = Decoder(checked, None, {checked.slot("target").arg("name"): cfg.model()}, vocab=spelling)
        report.reference = dec.denoise.sequential().describe()
        try:
            got, _, tv = decoder_tv(dec, list(cfg.prompt), cfg.max_new_tokens)
        except TooLarge:
            report.skipped.append(cfg)
            continue
        report.checked.append((cfg, tv, max(tol, got.error_bound)))
    if not report.checked:
        raise DecError(f"decoder '{checked.name}' is too large for the exact check on all {configs} configurations tried",
                       hint="use a shorter block or fewer new tokens (--max-new-tokens)")
    report.seconds = time.perf_counter() - start
    return report


def _spelling(spec: Spec, rng: random.Random) -> list | None:
    """None without a grammar; with one, the table vocabulary: the bytes of the grammar's shortest string (at most 3 more of a random one),
    single-byte tokens only, and EOS last: small, so every joint outcome of a block can be enumerated."""
    from decspec.stdlib.grammars.automaton import random_examples
    from decspec.stdlib.grammars.compile import grammar_automaton
    from decspec.stdlib.structured import grammar_source

    if spec.slot("grammar") is None:
        return None
    from decspec.stdlib.grammars.automaton import ByteDFA
    from decspec.verify import NotVerifiable

    src = grammar_source(spec.slot("grammar"))
    dfa = grammar_automaton(src.kind, src.source)
    if not isinstance(dfa, ByteDFA):
        raise NotVerifiable(f"grammar-constrained diffusion decoding needs a regular grammar, and '{spec.slot('grammar').name}' "
                            "is context-free", spec.slot("grammar").span)
    own = list(dict.fromkeys(dfa.shortest_example()))
    extra = [b for b in dict.fromkeys(b"".join(random_examples(dfa, rng, 2, limit=8))) if b not in own][:3]
    return [bytes([b]) for b in own + extra] + [None]


def check_line(spec: Spec) -> str:
    """`decspec check`'s line for a diffusion spec: the exact TV from the sequential process on one small table."""
    try:
        report = verify_diffusion_spec(None, checked=spec, configs=1, max_new_tokens=4, vocab=(3, 3))
    except DecError as e:
        return f"exact TV from the sequential process: not computed ({e.diagnostics[0].message})"
    cfg, tv, tol = report.worst
    head = "lossless" if report.verdict.lossless else "lossy"
    return f"{head}: TV {tv:.3g} from the sequential process {report.reference} (exact; table diffusion model, {cfg})"
