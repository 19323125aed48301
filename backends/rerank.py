"""The sampling searches (`search = best_of(...)`, `self_consistency(...)`, `mbr(...)`; stdlib/search.py Rerank):
n candidates per prompt from the spec's ordinary round, then one picked per prompt.

The round is the spec's own graph on whatever backend it compiled for (a speculative round too: its candidates
follow the target's distribution as the spec's verdict says), run once over a batch holding each prompt n times
(prompt p's candidates are rows p*n .. p*n + n - 1), so the n samples cost one batched generation:

    result = run(replicated prompts, ...)                # the round runtime (backends/runtime.py rounds)
    score  = sum (or mean) of each candidate's log p     # after the grammar mask and sampler pipeline (logprobs.py)
    best_of:           argmax score
    self_consistency:  the majority answer (the answer regex's group in the text); its best-scoring candidate
    mbr:               argmax_i mean_{j != i} utility(c_i, c_j)        (stdlib/utility.py)

Ties go to the candidate sampled first (the lower row).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from decspec.backends.runtime import Result
from decspec.stdlib.search import Rerank
from decspec.stdlib.utility import chrf, mbr_scores, ngram_f1


@dataclass
class RerankResult(Result):
    """tokens/text: the chosen candidate of each prompt. candidates: per prompt its n candidates (token ids, in the
    order sampled); candidate_texts: their texts (the ids in decimal without a tokenizer or vocabulary); candidate_scores: per
    candidate its score (best_of, self_consistency: its log-probability, summed or per token; mbr: its mean utility);
    chosen: per prompt the index of the chosen candidate; answers: self_consistency's extracted answer per candidate
    (None where the regex does not match)."""

    candidates: list[list[list[int]]] = field(default_factory=list)
    candidate_texts: list[list[str]] | None = None
    candidate_scores: list[list[float]] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)
    answers: list[list[str | None]] | None = None


def replicate(rows: Sequence[Any], n: int) -> list[Any]:
    """[a, b] -> [a]*n + [b]*n: each prompt's candidates next to each other."""
    return [r for r in rows for _ in range(n)]


def answer_of(pattern: re.Pattern, text: str) -> str | None:
    """The answer in a candidate's text: the group of the regex's last match, stripped; None without a match."""
    last = None
    for last in pattern.finditer(text):
        pass
    return None if last is None or last.group(1) is None else last.group(1).strip()


def majority(answers: Sequence[str | None], scores: Sequence[float]) -> int:
    """Self-consistency's pick: among the candidates whose answer is the most frequent one (ties between answers to
    the one with the higher best score), the highest-scoring; the highest-scoring overall when none has an answer."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return best(scores)
    top = max(votes.values())
    mine = [i for i, a in enumerate(answers) if a is not None and votes[a] == top]
    return max(mine, key=lambda i: (scores[i], -i))


def best(scores: Sequence[float]) -> int:
    """The first index of the highest score."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def pick(search: Rerank, tokens: list[list[int]], texts: list[str] | None, logprobs: list[list[float]] | None,
         ) -> tuple[int, list[float], list[str | None] | None]:
    """One prompt's candidates -> (the chosen index, each candidate's score, self-consistency's answers)."""
    if search.method == "mbr":
        if search.utility == "chrf":
            scores = mbr_scores(texts, chrf)
        else:
            scores = mbr_scores(tokens, ngram_f1)
        return best(scores), scores, None
    scores = [sum(lp) / (len(lp) if search.score == "mean_logprob" else 1) if lp else 0.0 for lp in logprobs]
    if search.method == "best_of":
        return best(scores), scores, None
    pattern = re.compile(search.answer)
    answers = [answer_of(pattern, t) for t in texts]
    return majority(answers, scores), scores, answers


def rerank(search: Rerank, run: Callable[..., Result], prompts: list[list[int]], max_new_tokens: int | list[int],
           settings: dict[str, torch.Tensor] | None, decode: Callable[[list[int]], str]) -> RerankResult:
    """Sample search.n candidates per prompt with `run(prompts, max_new_tokens, settings, scored)` (the spec's rounds
    over the replicated batch; `scored`: whether to report log-probabilities), then pick one per prompt."""
    n, P = search.n, len(prompts)
    limits = replicate(max_new_tokens, n) if isinstance(max_new_tokens, list) else max_new_tokens
    per_row = None if settings is None else {k: v.repeat_interleave(n) for k, v in settings.items()}
    out = run(replicate(prompts, n), limits, per_row, search.method != "mbr")
    texts = [decode(t) for t in out.tokens]
    result = RerankResult([], out.stats, candidate_texts=[], finish_reason=[], stopped_by=[],
                          answers=[] if search.method == "self_consistency" else None)
    for p in range(P):
        rows = range(p * n, (p + 1) * n)
        tokens = [out.tokens[r] for r in rows]
        text = [texts[r] for r in rows]
        chosen, scores, answers = pick(search, tokens, text, [out.logprobs[r] for r in rows] if out.logprobs else None)
        result.tokens.append(tokens[chosen])
        result.candidates.append(tokens)
        result.candidate_scores.append(scores)
        result.chosen.append(chosen)
        result.finish_reason.append(out.finish_reason[p * n + chosen] if out.finish_reason else None)
        result.stopped_by.append(out.stopped_by[p * n + chosen] if out.stopped_by else None)
        result.candidate_texts.append(text)
        if answers is not None:
            result.answers.append(answers)
    result.stats.new_tokens = [len(t) for t in result.tokens]
    return result
