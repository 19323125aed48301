"""Losslessness: prove or refute, from the components' contracts, that a decoder samples from
the target's distribution (after the sampler pipeline), and say why.

    >>> print(Verdict(True, ["plain sampling from the target"]))
    lossless
      - plain sampling from the target
"""
from __future__ import annotations

from dataclasses import dataclass

from decspec.dsl.spec import Instance, Spec
from decspec.stdlib.registry import SAMPLED_SEARCHES


@dataclass(frozen=True)
class Verdict:
    lossless: bool
    reasons: list[str]
    deterministic: bool = False  # a search (beam search): one output per prompt, no claim about sampling from the target

    def __str__(self) -> str:
        head = "deterministic" if self.deterministic else "lossless" if self.lossless else "lossy"
        return head + "".join(f"\n  - {r}" for r in self.reasons)


def pipeline_text(sampler: tuple[Instance, ...]) -> str:
    return " | ".join(str(s) for s in sampler) if sampler else "softmax"


_SLOT_OF = {"draft": "propose", "exit": "stop", "verifier": "verify"}


def _short(grammar: Instance) -> str:
    """A grammar as the verdict names it: `regex(pattern="[a-z]+")`, long sources cut."""
    text = str(grammar)
    return text if len(text) <= 60 else text[:57] + "..."


def _because(c: Instance, greedy: bool = False) -> str:
    contract = c.component.contract
    return f"{_SLOT_OF[c.kind]} = {c.name}: {contract.greedy if greedy and contract.greedy else contract.reason}"


def is_greedy(sampler: tuple[Instance, ...]) -> bool:
    """A `greedy` or `temperature(0)` stage makes softmax(pipeline(logits)) one-hot: every later stage keeps the one finite logit."""
    return any(s.name == "greedy" or (s.name == "temperature" and s.arg("t") == 0) for s in sampler)


def losslessness(spec: Spec) -> Verdict:
    search: Instance | None = spec.slot("search")
    if search is not None and search.name in SAMPLED_SEARCHES:  # picks one of n samples of the round: not the target's law
        candidates = _round_verdict(spec)
        return Verdict(False, [f"search = {search}: {search.component.contract.reason}",
                               f"each candidate: {'; '.join(candidates.reasons)} ({'lossless' if candidates.lossless else 'lossy'})"])
    if search is not None:  # beam search maximizes; it is checked against its reference (HF num_beams), not a distribution
        stages = tuple(spec.slot("sampler", ()))
        scored = f"log-probabilities after {pipeline_text(stages)}" if stages else "log-probabilities"
        if spec.slot("grammar") is not None:
            scored += f", -inf outside the grammar ({_short(spec.slot('grammar'))})"
        if search.name == "constrained_beam":
            scored += f", among hypotheses that contain the phrases {list(search.arg('words'))} (HF's fallback aside)"
        return Verdict(False, [f"search = {search}: beam search keeps the highest-scoring hypotheses by the target's {scored}; "
                               "it does not sample from the target's distribution"], deterministic=True)
    if spec.slot("denoise") is not None:  # masked diffusion: judged against its sequential one-position-per-step process
        from decspec.stdlib.diffusion import losslessness as diffusion_losslessness

        return Verdict(*diffusion_losslessness(spec))
    return _round_verdict(spec)


def _round_verdict(spec: Spec) -> Verdict:
    """The verdict on what one round samples, from the contracts of its sampler, grammar, propose, stop and verify."""
    sampler = tuple(spec.slot("sampler", ()))
    grammar: Instance | None = spec.slot("grammar")
    masked = f"the grammar mask ({_short(grammar)}) and " if grammar is not None else ""
    target: Instance = spec.slot("target")
    whose = "the target's distribution" if target.name == "model" else f"the combined distribution target = {target}"
    target_dist = f"{whose} after {masked}the sampler pipeline ({pipeline_text(sampler)})"
    propose: Instance | None = spec.slot("propose")
    if propose is None:
        return Verdict(True, [f"autoregressive sampling from {target_dist}"])
    parts = [c for c in (propose, spec.slot("stop"), spec.slot("verify")) if c is not None]
    greedy = is_greedy(sampler)
    broken = [c for c in parts if c.component.contract.lossless is False and not (greedy and c.component.contract.greedy)]
    if broken:
        return Verdict(False, [_because(c) for c in broken])
    reasons = [_because(c, greedy) for c in parts]
    drafts_from_a_model = any(p.type == "model" for p in propose.component.params)  # lookup copies from the context
    reasons.insert(0, f"output follows {target_dist}" + (", applied to target and draft alike" if drafts_from_a_model else ""))
    return Verdict(True, reasons)
