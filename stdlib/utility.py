"""Utilities for minimum Bayes risk decoding (`search = mbr(...)`): how similar a hypothesis is to a reference,
in [0, 1], 1 for identical texts. Written from the published definitions.

chrF (Popović 2015, "chrF: character n-gram F-score for automatic MT evaluation"): over character n-grams of
orders 1..6 (whitespace removed, as sacrebleu's default), precision P_n = matched / hypothesis n-grams and recall
R_n = matched / reference n-grams, the matches clipped (an n-gram counts at most as often as in the other text);
chrP and chrR are the arithmetic means of P_n and R_n over the orders both texts have n-grams of, and

    chrF_beta = (1 + beta^2) * chrP * chrR / (beta^2 * chrP + chrR),   beta = 2 (recall weighs twice as much)

    >>> round(chrf("ab", "abc"), 4)   # P_1 = 1, R_1 = 2/3; P_2 = 1, R_2 = 1/2: chrP = 1, chrR = 7/12
    0.6364

ngram_f1: the same over token ids instead of characters, orders 1..4 and beta = 1, each order's F1 averaged
(a BLEU-like overlap that is symmetric and needs no brevity penalty):

    >>> round(ngram_f1([1, 2, 3], [1, 2, 4]), 4)   # F1_1 = 2/3, F1_2 = 1/2, F1_3 = 0: (2/3 + 1/2 + 0) / 3
    0.3889
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

CHRF_ORDER, CHRF_BETA = 6, 2.0
NGRAM_ORDER = 4


def _ngrams(seq: Sequence, n: int) -> Counter:
    return Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))


def _overlaps(hyp: Sequence, ref: Sequence, order: int) -> list[tuple[float, float]]:
    """(P_n, R_n) for every order 1..order at which both sequences have n-grams."""
    out = []
    for n in range(1, order + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        if not h or not r:
            continue
        matched = sum((h & r).values())  # clipped: min of the two counts per n-gram
        out.append((matched / sum(h.values()), matched / sum(r.values())))
    return out


def _f(p: float, r: float, beta: float) -> float:
    b2 = beta * beta
    return (1 + b2) * p * r / (b2 * p + r) if p + r > 0 else 0.0


def chrf(hyp: str, ref: str, order: int = CHRF_ORDER, beta: float = CHRF_BETA) -> float:
    """chrF of hypothesis text `hyp` against reference text `ref` (the module docstring), in [0, 1]."""
    h, r = "".join(hyp.split()), "".join(ref.split())
    pr = _overlaps(h, r, order)
    if not pr:  # an empty text: only another empty one matches it
        return float(h == r)
    return _f(sum(p for p, _ in pr) / len(pr), sum(r_ for _, r_ in pr) / len(pr), beta)


def ngram_f1(hyp: Sequence[int], ref: Sequence[int], order: int = NGRAM_ORDER) -> float:
    """Mean over the orders 1..order both sequences reach of the clipped token n-gram F1, in [0, 1]."""
    pr = _overlaps(list(hyp), list(ref), order)
    if not pr:
        return float(list(hyp) == list(ref))
    return sum(_f(p, r, 1.0) for p, r in pr) / len(pr)


def mbr_scores(candidates: Sequence, utility) -> list[float]:
    """Each candidate's mean utility against the others (its expected utility when the n samples stand in for the
    model's distribution; 0 for a lone candidate): utility(candidate i as hypothesis, candidate j as reference)."""
    n = len(candidates)
    if n == 1:
        return [0.0]
    return [sum(utility(candidates[i], candidates[j]) for j in range(n) if j != i) / (n - 1) for i in range(n)]
