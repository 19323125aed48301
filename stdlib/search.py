"""Search strategies: the `search` slot, decoding that keeps several hypotheses per prompt.

`search = beam(width = 4, length_penalty = 1.0, early_stopping = "false")` is beam search with
Hugging Face's semantics (`generate(num_beams=4, length_penalty=1.0, early_stopping=False,
do_sample=False)`): every step each of the `width` running hypotheses of a prompt is extended by
every token, scored by its cumulative log-probability, and the best continuations are kept; a
hypothesis that ends (EOS, or max_new_tokens) joins the prompt's finished set, ranked by
score / generated_length ** length_penalty. backends/beam.py runs it over the model protocol.

A search spec has no round graph (a round commits tokens to each row's own context; beam search
re-ranks and reorders whole hypotheses every step), so `plan` is what the rest of decspec reads:

    >>> from decspec.dsl.check import load
    >>> plan(load('decoder d { target = model("target"); search = beam(width = 2, early_stopping = "never") }'))
    BeamSearch(width=2, length_penalty=1.0, early_stopping='never', stages=())
    >>> plan(load('decoder d { target = model("target"); sampler = repetition_penalty(1.3); search = beam }')).stages
    (('repetition_penalty', (('r', 1.3),)),)
"""
from __future__ import annotations

from dataclasses import dataclass

from decspec.dsl.diagnostics import DecError
from decspec.dsl.spec import Instance, Spec
from decspec.stdlib.registry import Component, Contract, Param, register
from decspec.stdlib.samplers import CONTEXT_STAGES

_IDENTITY = {"repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}  # each penalty's no-op value
EARLY_STOPPING = ("false", "true", "never")  # Hugging Face's early_stopping: False, True, "never"


@dataclass(frozen=True)
class BeamSearch:
    """What backends/beam.py runs: the `beam` instance's arguments and the sampler stages applied to
    each step's log-probabilities ((name, ((param, value), ...)), ...), as HF's logits processors are."""

    width: int
    length_penalty: float
    early_stopping: str  # one of EARLY_STOPPING
    stages: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()

    @property
    def candidates(self) -> int:
        """Continuations kept per prompt and step before the finished ones are set aside: 2 * width, so that
        `width` unfinished ones remain even when every running hypothesis ends (one EOS token)."""
        return 2 * self.width


def plan(spec: Spec) -> BeamSearch:
    """The spec's beam search, checked against what beam search can honour; a DecError otherwise."""
    inst: Instance | None = spec.slot("search")
    if inst is None:
        raise DecError(f"decoder '{spec.name}' has no `search` slot", spec.span)
    early = inst.arg("early_stopping")
    if early not in EARLY_STOPPING:
        raise DecError(f"beam's 'early_stopping' must be one of {', '.join(map(repr, EARLY_STOPPING))}, found {early!r}", inst.span,
                       hint='"false": stop when no running beam can beat the worst finished one (HF default); "true": stop once '
                            '`width` hypotheses are finished; "never": the canonical rule')
    stages = []
    for s in spec.slot("sampler", ()):
        if s.name not in CONTEXT_STAGES:  # HF applies sampling warpers only when do_sample=True
            raise DecError(f"sampler stage '{s.name}' does not apply to beam search: beam search ranks log-probabilities "
                           "deterministically (Hugging Face ignores temperature, top_k, top_p, min_p and typical_p "
                           "without sampling)", s.span,
                           hint=f"remove it; the stages beam search applies are {', '.join(sorted(CONTEXT_STAGES))}")
        if not s.args or s.args[0][1] != _IDENTITY.get(s.name):  # repetition_penalty(1), frequency_penalty(0), presence_penalty(0) do nothing
            stages.append((s.name, tuple(s.args)))
    return BeamSearch(inst.arg("width"), float(inst.arg("length_penalty")), early, tuple(stages))


register(
    Component(
        "search",
        "beam",
        (
            Param("width", "int", 4, low=1, high=64, doc="hypotheses kept per prompt (HF `num_beams`); 1 is greedy decoding"),
            Param("length_penalty", "float", 1.0, low=-10.0, high=10.0,
                  doc="finished hypotheses rank by score / length ** length_penalty (length: generated tokens); "
                      "> 0 favours longer ones"),
            Param("early_stopping", "str", "false", doc='"false" (HF default), "true" or "never", as HF\'s early_stopping'),
        ),
        "Beam search (Hugging Face `num_beams` semantics): keep the `width` best hypotheses by cumulative log-probability "
        "of the target after the penalty stages; finished ones (EOS or max_new_tokens) rank by length-penalized score; the "
        "best per prompt is returned (`result.beams` holds all `width`). Penalty stages apply to each step's "
        "log-probabilities, as HF's logits processors do; sampling stages are refused.",
        Contract(None, "deterministic: beam search returns the highest-scoring hypotheses it finds; it does not sample "
                       "from the target's distribution"),
        cite="Graves 2012, Sequence Transduction with Recurrent Neural Networks; Sutskever et al. 2014; reference "
             "behaviour: Hugging Face transformers generate(num_beams=...)",
    )
)
