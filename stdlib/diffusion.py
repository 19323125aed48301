"""Masked-diffusion decoding: the `denoise` slot and its unmasking rules.

A masked-diffusion LM (stdlib/models/diffusion_protocol.py) predicts every masked position at once. A
denoising decoder starts from the prompt followed by `max_new_tokens` mask tokens and, step by step,
samples a token at every masked position of the current block and commits some of them:

    decoder fast_dllm(block: int = 32, threshold: float = 0.9) {
        target  = model("target")                  # a DiffusionLM
        denoise = blocks(length = block, unmask = confidence(threshold), cache = "prefix")
    }

`blocks(length, steps, unmask, cache)` is semi-autoregressive block decoding (LLaDA): the generated
positions are cut into blocks of `length`, decoded left to right; a block takes `steps` denoising steps
(0: `length`, one position per step), and step s of a block with m positions still masked commits the
ceil(m / (steps - s)) best positions by the `unmask` rule's score (LLaDA's schedule), plus every
position whose score passes the rule's threshold (Fast-dLLM's parallel unmasking; at least one is
always committed). One block as long as the output is fully parallel decoding.

The scores read the model's own softmax at each masked position (after the grammar mask), as LLaDA's
low-confidence remasking and Fast-dLLM do, not the sampler pipeline's distribution: under greedy
decoding that is one-hot, and every position would be equally confident. Tokens are sampled from the
pipeline (greedy at temperature 0).

`draft_verify(length)` is lossless self-speculative decoding: its reference is the left-to-right
process that samples position i from p(x_i | x_<i, the rest masked). One call drafts every masked
position of the block from that state; one batched call (a row per draft prefix) gives the reference
conditionals; drafts are accepted by rejection sampling with residual resampling, so the output is
exactly the reference process (backends/exact/diffusion.py proves it on table models).

`plan(spec)` is what the runtime (backends/diffusion.py) and the exact analysis read:

    >>> from decspec.dsl.check import load
    >>> plan(load('decoder d { target = model("target"); denoise = blocks(length = 4, unmask = confidence(0.9)) }'))
    Denoise(length=4, steps=4, rule='confidence', threshold=0.9, cache='none', accept=None, stages=())
    >>> plan(load('decoder d { target = model("target"); denoise = blocks(length = 4, steps = 2) }')).sequential().steps
    4
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from decspec.dsl.diagnostics import DecError
from decspec.dsl.spec import Instance, Spec
from decspec.stdlib.registry import Component, Contract, Param, lookup, register
from decspec.stdlib.samplers import CONTEXT_STAGES

CACHES = ("none", "prefix", "dual")
ACCEPTS = ("rejection", "all")
RULES = ("confidence", "margin", "entropy", "left_to_right", "random")
LLADA = "Nie et al. 2025, Large Language Diffusion Models (LLaDA), Algorithm 5: semi-autoregressive low-confidence remasking"
FAST_DLLM = ("Wu et al. 2025, Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and Parallel "
             "Decoding (confidence-threshold unmasking, prefix and dual block caches)")


@dataclass(frozen=True)
class Denoise:
    """A denoising schedule, as the runtime runs it.

    length: positions per block; steps: denoising steps per block (the quota schedule); rule: the score ranking
    masked positions (RULES); threshold: a score cut beyond the quota (None: the quota only; entropy's is on
    -entropy); cache: "none" | "prefix" | "dual", refreshed at every block start; accept: None for `blocks`,
    "rejection" (lossless) or "all" for `draft_verify`; stages: the sampler pipeline tokens are drawn from.
    """

    length: int
    steps: int
    rule: str
    threshold: float | None
    cache: str
    accept: str | None
    stages: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()

    @property
    def parallel(self) -> bool:
        """Whether a step may commit more than one position (and so differs from the sequential process)."""
        return self.steps < self.length or self.threshold is not None

    def sequential(self) -> "Denoise":
        """The one-token-per-step process with the same position rule and blocks, computed afresh every step: what a
        parallel schedule approximates, and what `draft_verify` reproduces exactly."""
        return replace(self, steps=self.length, threshold=None, cache="none", accept=None)

    def describe(self) -> str:
        if self.accept is not None:
            return f"draft_verify(length={self.length}, accept={self.accept!r})"
        cut = "" if self.threshold is None else f", threshold {self.threshold:g}"
        return f"blocks(length={self.length}, steps={self.steps}, unmask={self.rule}{cut}, cache={self.cache!r})"


def plan(spec: Spec) -> Denoise:
    """The spec's denoising schedule, checked against what the runtime can honour; a DecError otherwise."""
    inst: Instance | None = spec.slot("denoise")
    if inst is None:
        raise DecError(f"decoder '{spec.name}' has no `denoise` slot", spec.span)
    stages = []
    for s in spec.slot("sampler", ()):
        if s.name in CONTEXT_STAGES:
            raise DecError(f"sampler stage '{s.name}' counts the tokens before each position, which a diffusion decoder does "
                           "not have (positions are unmasked out of order)", s.span,
                           hint="remove it; diffusion decoding takes the per-position stages (temperature, top_k, top_p, ...)")
        stages.append((s.name, tuple(s.args)))
    length = inst.arg("length")
    if inst.name == "draft_verify":
        if spec.slot("grammar") is not None:
            raise DecError("draft_verify does not take a grammar yet: its verify rows would each need the grammar's allowed "
                           "sets for their draft prefix", spec.slot("grammar").span,
                           hint="use `denoise = blocks(length = ..., unmask = left_to_right)`, the same process one position a step")
        accept = inst.arg("accept")
        if accept not in ACCEPTS:
            raise DecError(f"draft_verify's 'accept' must be one of {', '.join(map(repr, ACCEPTS))}, found {accept!r}", inst.span,
                           hint='"rejection": lossless; "all": commit every draft (one-step parallel decoding, lossy)')
        return Denoise(length, length, "left_to_right", None, "none", accept, tuple(stages))
    steps = inst.arg("steps") or length
    if steps > length:
        raise DecError(f"blocks: {steps} steps for a block of {length} positions; a step commits at least one position",
                       inst.span, hint="steps <= length (0 means length, one position per step)")
    cache = inst.arg("cache")
    if cache not in CACHES:
        raise DecError(f"blocks' 'cache' must be one of {', '.join(map(repr, CACHES))}, found {cache!r}", inst.span,
                       hint='"none": every step recomputes the whole sequence; "prefix": the positions before the block come '
                            'from a cache made at the block start; "dual": the positions after it too (Fast-dLLM)')
    rule = inst.arg("unmask")
    if isinstance(rule, str):  # the default, by name
        rule = Instance(lookup("unmask", rule), tuple((p.name, p.default) for p in lookup("unmask", rule).params), inst.span)
    return Denoise(length, steps, rule.name, _cut(rule), cache, None, tuple(stages))


def _cut(rule: Instance) -> float | None:
    """The score a position must pass to be committed beyond the quota, or None when the threshold is off."""
    if rule.name == "confidence" or rule.name == "margin":
        t = float(rule.arg("threshold"))
        return None if t >= 1.0 else t
    if rule.name == "entropy":  # the score is -entropy
        t = float(rule.arg("threshold"))
        return None if t <= 0.0 else -t
    return None


_RULE_CONTRACT = Contract(None, "an unmasking rule orders positions; the schedule that uses it carries the contract")
_PARALLEL = ("lossy: parallel unmasking commits several positions sampled independently from one step's marginals; "
             "it approximates the sequential one-token-per-step process (`decspec verify` gives the exact TV)")

register(Component(
    "unmask", "confidence",
    (Param("threshold", "float", 1.0, low=0.0, high=1.0,
           doc="also commit every position whose sampled token has probability > threshold (1.0: never; Fast-dLLM uses 0.9)"),),
    "Rank masked positions by the model's probability of the token sampled there (LLaDA's low-confidence remasking: the "
    "least confident stay masked); with a threshold < 1, every position above it is committed too (Fast-dLLM).",
    _RULE_CONTRACT, cite=f"{LLADA}; {FAST_DLLM}"))
register(Component(
    "unmask", "margin",
    (Param("threshold", "float", 1.0, low=0.0, high=1.0,
           doc="also commit every position whose top-1 minus top-2 probability is > threshold (1.0: never)"),),
    "Rank masked positions by the margin between the model's two most likely tokens there.",
    _RULE_CONTRACT, cite="Kim et al. 2025, Train for the Worst, Plan for the Best (top probability margin)"))
register(Component(
    "unmask", "entropy",
    (Param("threshold", "float", 0.0, low=0.0, high=20.0,
           doc="also commit every position whose entropy (nats) is < threshold (0: never)"),),
    "Rank masked positions by the entropy of the model's distribution there, lowest first.",
    _RULE_CONTRACT, cite="Ben-Hamu et al. 2025, Accelerated Sampling from Masked Diffusion Models via Entropy Bounded Unmasking"))
register(Component(
    "unmask", "left_to_right", (),
    "Commit masked positions in order, leftmost first: with one position per step, autoregressive decoding with a "
    "bidirectional model (the reference process of `draft_verify`).",
    _RULE_CONTRACT, cite=LLADA))

register(Component(
    "unmask", "random", (),
    "Commit masked positions in a uniformly random order (LLaDA's random remasking; the order of MDLM's ancestral "
    "sampler): which positions a step commits does not depend on the model.",
    _RULE_CONTRACT, cite=f"{LLADA} (random remasking); Sahoo et al. 2024, Simple and Effective Masked Diffusion Language Models"))

register(Component(
    "denoise", "blocks",
    (Param("length", "int", 32, low=1, high=4096, doc="positions per block (semi-autoregressive); as long as the output: one block"),
     Param("steps", "int", 0, low=0, high=4096, doc="denoising steps per block, <= length (0: length, one position per step)"),
     Param("unmask", "unmask", "confidence", doc="which masked positions a step commits (an unmasking rule)"),
     Param("cache", "str", "none", doc='"none", "prefix" or "dual": which positions come from a cache refreshed at each block start')),
    "Semi-autoregressive block decoding of a masked-diffusion model: blocks left to right; each step samples every masked "
    "position of the block and commits ceil(masked / steps left) of them, best by the unmasking rule's score, plus those "
    "past its threshold. A cache makes the positions before (\"prefix\") or outside (\"dual\") the block read keys and "
    "values computed at the block's start, an approximation (Fast-dLLM).",
    Contract(False, _PARALLEL), cite=f"{LLADA}; {FAST_DLLM}"))
register(Component(
    "denoise", "draft_verify",
    (Param("length", "int", 8, low=1, high=4096, doc="positions per block: the most drafts one step verifies"),
     Param("accept", "str", "rejection", doc='"rejection" (lossless) or "all" (commit every draft: one-step parallel decoding, lossy)')),
    "Self-speculative diffusion decoding: one call drafts every masked position of the block from its marginals; one "
    "batched call (a row per draft prefix) gives p(x_i | x_<i, the rest masked) for each; drafts are accepted left to right "
    "by rejection sampling, and the first rejected one is resampled from the residual. The output is exactly the "
    "left-to-right one-token-per-step process.",
    Contract(True, "lossless: rejection sampling against p(x_i | x_<i, the rest masked) reproduces the left-to-right "
                   "one-token-per-step process exactly"),
    cite="Gao et al. 2025, Self Speculative Decoding for Diffusion Large Language Models; Leviathan et al. 2023 "
         "(rejection sampling with residual resampling)"))


def losslessness(spec: Spec) -> tuple[bool, list[str]]:
    """(lossless, reasons) of a `denoise` spec, against its sequential process (`Denoise.sequential`): the
    one-position-per-step process with the same rule and blocks (for `draft_verify`: left to right)."""
    p = plan(spec)
    pipeline = " | ".join(str(s) for s in spec.slot("sampler", ())) or "softmax"
    grammar = spec.slot("grammar")
    masked = f"the grammar mask ({grammar.name}) and " if grammar is not None else ""
    reference = (f"the sequential process ({p.sequential().describe()}: one position per step) after {masked}the sampler "
                 f"pipeline ({pipeline})")
    if p.accept == "rejection":
        return True, [f"output follows {reference}",
                      "denoise = draft_verify: rejection sampling of every block draft against p(x_i | x_<i, the rest masked), "
                      "the first rejection resampled from the residual, reproduces it exactly"]
    if p.accept == "all":
        return False, [f"denoise = draft_verify(accept = \"all\"): every draft of a step is committed, sampled independently "
                       f"from one call's marginals; lossy: it approximates {reference} (`decspec verify` gives the exact TV)"]
    reasons = []
    if p.parallel:
        reasons.append(f"denoise = {p.describe()}: parallel unmasking commits several positions per step, sampled "
                       f"independently from one call's marginals; it approximates {reference}")
    if p.cache != "none":
        reasons.append(f"cache = {p.cache!r}: positions outside the recomputed window read keys and values made at the block's "
                       "start, before its positions were unmasked (an approximation)")
    if not reasons:
        return True, [f"denoise = {p.describe()}: {reference} itself"]
    return False, reasons
