"""Search strategies: the `search` slot, decoding that keeps several hypotheses per prompt.

`search = beam(width = 4, length_penalty = 1.0, early_stopping = "false")` is beam search with
Hugging Face's semantics (`generate(num_beams=4, length_penalty=1.0, early_stopping=False,
do_sample=False)`): every step each of the `width` running hypotheses of a prompt is extended by
every token, scored by its cumulative log-probability, and the best continuations are kept; a
hypothesis that ends (EOS, or max_new_tokens) joins the prompt's finished set, ranked by
score / generated_length ** length_penalty. backends/beam.py runs it over the model protocol.
`beam(width = 6, groups = 3, diversity = 0.5)` is diverse beam search (Vijayakumar et al. 2016; HF's
`num_beam_groups`, `diversity_penalty`); with a `grammar` slot, each step's log-probabilities are masked
by the grammar (beam search under a grammar).

A beam search spec has no round graph (a round commits tokens to each row's own context; beam search
re-ranks and reorders whole hypotheses every step), so `plan` is what the rest of decspec reads:

    >>> from decspec.dsl.check import load
    >>> plan(load('decoder d { target = model("target"); search = beam(width = 2, early_stopping = "never") }'))
    BeamSearch(width=2, length_penalty=1.0, early_stopping='never', stages=(), groups=1, diversity=0.0)
    >>> plan(load('decoder d { target = model("target"); sampler = repetition_penalty(1.3); search = beam }')).stages
    (('repetition_penalty', (('r', 1.3),)),)

The sampling searches (`best_of`, `self_consistency`, `mbr`: registry.SAMPLED_SEARCHES) do have a round: they
run the spec's ordinary round graph (any sampler, propose and verify) on n copies of each prompt, then pick one
candidate per prompt (backends/rerank.py):

    >>> plan(load('decoder d { target = model("target"); search = self_consistency(n = 5, answer = "= ([0-9]+)") }'))
    Rerank(method='self_consistency', n=5, score='logprob', answer='= ([0-9]+)', utility='chrf')
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from decspec.dsl.diagnostics import DecError
from decspec.dsl.spec import Instance, Spec
from decspec.stdlib.registry import REQUIRED, SAMPLED_SEARCHES, Component, Contract, Param, register
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
    groups: int = 1  # diverse beam search: `groups` groups of width // groups hypotheses, each with its own finished set
    diversity: float = 0.0  # each group's log-probabilities minus diversity * (times earlier groups chose the token this step)

    @property
    def candidates(self) -> int:
        """Continuations kept per prompt (per group) and step before the finished ones are set aside: 2 * the group's
        width, so that that many unfinished ones remain even when every running hypothesis ends (one EOS token)."""
        return 2 * (self.width // self.groups)


@dataclass(frozen=True)
class ConstrainedBeam:
    """What backends/constrained.py runs: beam search whose hypotheses must contain every phrase of `words` (each
    a string, tokenized at generate time: `phrases`, filled by the Decoder from the target's tokenizer)."""

    width: int
    length_penalty: float
    early_stopping: str  # one of EARLY_STOPPING
    words: tuple[str, ...]
    stages: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    phrases: tuple[tuple[int, ...], ...] = ()


SCORES = ("logprob", "mean_logprob")  # best_of's ranking: the sample's summed or per-token log-probability
UTILITIES = ("chrf", "ngram_f1")  # mbr's utility (stdlib/utility.py)


@dataclass(frozen=True)
class Rerank:
    """What backends/rerank.py runs for a sampling search: `n` candidates per prompt from the spec's round, then
    best_of: the highest `score`; self_consistency: the most frequent answer (`answer`'s group in the candidate's
    text), ties to the higher `score`; mbr: the highest mean `utility` against the other candidates."""

    method: str  # one of registry.SAMPLED_SEARCHES
    n: int
    score: str = "logprob"  # one of SCORES
    answer: str = ""  # self_consistency: a regex with one group
    utility: str = "chrf"  # mbr: one of UTILITIES


def has_round(spec: Spec) -> bool:
    """Whether the spec runs a round graph: no `search` slot, or a sampling search (best_of, self_consistency, mbr); a
    `denoise` spec (masked diffusion) runs a host loop over its denoising steps instead."""
    if spec.slot("denoise") is not None:
        return False
    inst: Instance | None = spec.slot("search")
    return inst is None or inst.name in SAMPLED_SEARCHES


def plan(spec: Spec) -> BeamSearch | Rerank:
    """The spec's search, checked against what it can honour; a DecError otherwise."""
    inst: Instance | None = spec.slot("search")
    if inst is None:
        raise DecError(f"decoder '{spec.name}' has no `search` slot", spec.span)
    if inst.name in SAMPLED_SEARCHES:
        return _rerank(inst)
    if inst.name == "constrained_beam" and spec.slot("grammar") is not None:
        raise DecError("constrained_beam cannot be combined with a `grammar` slot (not written: the constraint state and "
                       "the grammar state would both steer the banks)", spec.slot("grammar").span,
                       hint="remove `grammar`, or use search = beam(...) under the grammar")
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
    if inst.name == "constrained_beam":
        words = tuple(inst.arg("words"))
        if not words or any(not w for w in words):
            raise DecError(f"constrained_beam's 'words' must be non-empty phrases, found {list(words)!r}", inst.span,
                           hint='e.g. words = ["print", "return x"]: each phrase must appear in every hypothesis')
        return ConstrainedBeam(inst.arg("width"), float(inst.arg("length_penalty")), early, words, tuple(stages))
    width, groups = inst.arg("width"), inst.arg("groups")
    if width % groups:
        raise DecError(f"beam's 'groups' ({groups}) must divide 'width' ({width}): each group keeps width // groups hypotheses",
                       inst.span, hint=f"e.g. width = {groups * max(1, width // groups)}, or groups = 1 (plain beam search)")
    diversity = float(inst.arg("diversity"))
    if (groups > 1) != (diversity > 0):
        raise DecError(f"beam's 'groups' ({groups}) and 'diversity' ({diversity:g}) go together: diverse beam search needs "
                       "groups > 1 and diversity > 0 (with diversity 0 every group would be the same beam search)", inst.span,
                       hint="e.g. beam(width = 4, groups = 2, diversity = 0.5); or neither, for plain beam search")
    return BeamSearch(width, float(inst.arg("length_penalty")), early, tuple(stages), groups, diversity)


def _rerank(inst: Instance) -> Rerank:
    """A sampling search's instance checked: its score, answer regex or utility."""
    args = dict(inst.args)
    score, utility, answer = args.get("score", "logprob"), args.get("utility", "chrf"), args.get("answer", "")
    if score not in SCORES:
        raise DecError(f"{inst.name}'s 'score' must be one of {', '.join(map(repr, SCORES))}, found {score!r}", inst.span,
                       hint='"logprob": the sample\'s summed log-probability; "mean_logprob": per token (no bias to short samples)')
    if utility not in UTILITIES:
        raise DecError(f"mbr's 'utility' must be one of {', '.join(map(repr, UTILITIES))}, found {utility!r}", inst.span,
                       hint='"chrf": character n-gram F-score of the decoded texts (Popović 2015); "ngram_f1": token n-gram F1')
    if inst.name == "self_consistency":
        try:
            groups = re.compile(answer).groups
        except re.error as e:
            raise DecError(f"self_consistency's 'answer' is not a valid regex ({e}): {answer!r}", inst.span,
                           hint='e.g. answer = "answer is (-?\\d+)": Python `re` syntax, one group around the answer') from None
        if groups != 1:
            raise DecError(f"self_consistency's 'answer' regex must have exactly one group (the answer voted on), found "
                           f"{groups}: {answer!r}", inst.span,
                           hint='put the answer in one (...) and make other groups non-capturing (?:...), e.g. "= (\\d+)"')
    return Rerank(inst.name, inst.arg("n"), score, answer, utility)


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
            Param("groups", "int", 1, low=1, high=64,
                  doc="diverse beam search (HF `num_beam_groups`): groups of width // groups hypotheses, searched one "
                      "after another each step; must divide width"),
            Param("diversity", "float", 0.0, low=0.0, high=1000.0,
                  doc="HF `diversity_penalty`: a group's log-probability of a token minus diversity * the times earlier "
                      "groups chose it this step (Hamming diversity)"),
        ),
        "Beam search (Hugging Face `num_beams` semantics): keep the `width` best hypotheses by cumulative log-probability "
        "of the target after the penalty stages; finished ones (EOS or max_new_tokens) rank by length-penalized score; the "
        "best per prompt is returned (`result.beams` holds all `width`). Penalty stages apply to each step's "
        "log-probabilities, as HF's logits processors do; sampling stages are refused. With `groups` > 1: diverse beam "
        "search (each group its own beam search of width // groups, its log-probabilities lowered by `diversity` for "
        "the tokens earlier groups chose this step; the best finished hypotheses over all groups are returned). With a "
        "`grammar` slot: beam search under the grammar (each step's log-probabilities -inf outside the language, EOS "
        "only where the grammar accepts).",
        Contract(None, "deterministic: beam search returns the highest-scoring hypotheses it finds; it does not sample "
                       "from the target's distribution"),
        cite="Graves 2012, Sequence Transduction with Recurrent Neural Networks; Sutskever et al. 2014; Vijayakumar et al. "
             "2016, Diverse Beam Search; reference behaviour: Hugging Face transformers generate(num_beams=..., "
             "num_beam_groups=..., diversity_penalty=...)",
    )
)

register(Component(
    "search", "constrained_beam",
    (Param("width", "int", 4, low=1, high=64, doc="hypotheses kept per prompt (HF `num_beams`)"),
     Param("words", "list[str]", (), doc="phrases every hypothesis must contain (at least one), each tokenized with the target's "
                                                "tokenizer (no special tokens); for a target without one, token ids "
                                                'separated by spaces ("12 7")'),
     Param("length_penalty", "float", 1.0, low=-10.0, high=10.0, doc="as beam's"),
     Param("early_stopping", "str", "false", doc="as beam's")),
    "Lexically constrained beam search (HF 4.46 `force_words_ids`, phrasal constraints): beam search whose candidates "
    "each step also include every continuation that advances a phrase, kept by banks of progress (how much of the "
    "phrases a hypothesis has met) so that hypotheses meeting more phrases survive; a hypothesis finishes at EOS only "
    "once it contains every phrase. If fewer than `width` hypotheses meet them by max_new_tokens, the others fill "
    "`result.beams` (HF's fallback). Runs on the host (backends/constrained.py).",
    Contract(None, "deterministic: constrained beam search returns the highest-scoring hypotheses it finds that contain "
                   "the phrases; it does not sample from the target's distribution"),
    cite="Hokamp & Liu 2017, Lexically Constrained Decoding for Sequence Generation Using Grid Beam Search; Post & Vilar "
         "2018, Fast Lexically Constrained Decoding with Dynamic Beam Allocation; reference behaviour: Hugging Face "
         "transformers 4.46 generate(num_beams=..., force_words_ids=...)",
))

_N = Param("n", "int", 8, low=1, high=64, doc="candidates sampled per prompt (the round runs n copies of each prompt in one batch)")
_SCORE = Param("score", "str", "logprob", doc='"logprob": the candidate\'s summed log-probability under the target after '
                                             'the grammar mask and sampler pipeline; "mean_logprob": per token')
_RERANKS = ("reranks samples: it returns the best of n samples by a score, not a sample from the target's distribution "
            "(the candidates themselves follow the spec's round)")

register(Component(
    "search", "best_of", (_N, _SCORE),
    "Best-of-n: sample n candidates per prompt with the spec's round (any sampler, propose and verify), return the one "
    "the target scores highest: its log-probability after the grammar mask and sampler pipeline (the distribution the "
    "round samples from, as generate(logprobs=True) reports it), summed or per token. `result.candidates` holds all n, "
    "`result.candidate_scores` their scores.",
    Contract(False, _RERANKS),
    cite="Stiennon et al. 2020 and Nakano et al. 2021 (best-of-n sampling); scored by the target's own log-probability",
))
register(Component(
    "search", "self_consistency",
    (_N, Param("answer", "str", REQUIRED, doc="a regex with one group: the answer is its last match's group in the candidate's "
                                               "text (stripped); candidates without a match do not vote"), _SCORE),
    "Self-consistency: sample n candidates per prompt with the spec's round, extract each one's answer, return a "
    "candidate with the most frequent answer — the highest-scoring of those (ties between answers too go to the "
    "higher-scoring candidate); with no answer found, the highest-scoring candidate. `result.answers` holds each "
    "candidate's answer.",
    Contract(False, _RERANKS.replace("the best of n samples by a score", "a sample with the majority answer")),
    cite="Wang et al. 2022, Self-Consistency Improves Chain of Thought Reasoning in Language Models",
))
register(Component(
    "search", "mbr",
    (_N, Param("utility", "str", "chrf", doc='"chrf": chrF (character 6-grams, beta 2) of the decoded texts; "ngram_f1": '
                                            'token 1..4-gram F1')),
    "Minimum Bayes risk decoding: sample n candidates per prompt with the spec's round, return the one with the highest "
    "mean utility against the other n - 1 (the samples stand in for the model's distribution as pseudo-references). "
    "`result.candidate_scores` holds each candidate's mean utility.",
    Contract(False, _RERANKS.replace("the best of n samples by a score", "the sample of least expected risk")),
    cite="Kumar & Byrne 2004, Minimum Bayes-Risk Decoding for Statistical Machine Translation; Eikema & Aziz 2020; "
         "Freitag et al. 2022; chrF: Popović 2015",
))
