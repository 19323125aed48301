"""The sampling searches (stdlib/search.py `best_of`, `self_consistency`, `mbr`; backends/rerank.py): the candidates
are exactly the spec's ordinary round run on n copies of each prompt (speculative rounds included, eager and
inductor), the pick follows each method's definition, the MBR utilities equal values computed by hand from their
published definitions, and bad parameters are DecErrors at the spec."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

import decspec
from decspec.backends.rerank import answer_of, best, majority, replicate
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.search import plan
from decspec.stdlib.utility import chrf, mbr_scores, ngram_f1

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [[1, 2], [3]]
DIGITS = [b"0", b"1", b"2", b"=", b" ", None]  # a table model's tokens as text; id 5 the EOS
ROUND = 'target = model("target"); sampler = temperature(1.0)'


def searched(search: str, round: str = ROUND) -> str:
    return f"decoder d {{ {round}; search = {search} }}"


def tables(v: int = 6, seed: int = 0) -> dict:
    return {"target": TableModel.random(v, 1, seed, eos_token_id=v - 1),
            "draft": TableModel.random(v, 1, seed + 100, temperature=2.0, eos_token_id=v - 1)}


# --- the utilities, against their definitions ----------------------------------------------------------


def test_chrf_against_hand_computed_values():
    assert chrf("abc", "abc") == 1.0 and chrf("a b c", "abc") == 1.0  # whitespace is not compared
    assert chrf("abc", "xyz") == 0.0
    # "ab" vs "abc": P_1 = 1, R_1 = 2/3; P_2 = 1, R_2 = 1/2 (orders 3..6: "ab" has none): chrP = 1, chrR = 7/12
    p, r = 1.0, 7 / 12
    assert chrf("ab", "abc") == pytest.approx(5 * p * r / (4 * p + r))
    assert chrf("abc", "ab") == pytest.approx(5 * r * p / (4 * r + p))  # recall weighs more: not symmetric
    # "abab" vs "abba": 1-grams all match (1, 1); 2-grams {ab:2, ba:1} vs {ab, bb, ba}: 2 of 3 each way;
    # 3-grams {aba, bab} vs {abb, bba}: none; 4-grams: none. chrP = chrR = (1 + 2/3 + 0 + 0) / 4 = 5/12 = chrF
    assert chrf("abab", "abba") == pytest.approx(5 / 12)
    assert chrf("", "") == 1.0 and chrf("", "a") == 0.0


def test_ngram_f1_against_hand_computed_values():
    assert ngram_f1([1, 2, 3], [1, 2, 3]) == 1.0
    # 1-grams 2 of 3 each way (F1 2/3), 2-grams {12, 23} vs {12, 24}: 1 of 2 (1/2), 3-grams: 0; mean of the three
    assert ngram_f1([1, 2, 3], [1, 2, 4]) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # clipped: hypothesis [7, 7, 7] against [7]: 1-gram precision 1/3, recall 1 -> F1 1/2; no common higher order
    assert ngram_f1([7, 7, 7], [7]) == pytest.approx(0.5)
    assert ngram_f1([], []) == 1.0 and ngram_f1([1], []) == 0.0


def test_mbr_scores_average_the_utility_against_the_other_candidates():
    cands = [[1, 2, 3], [1, 2, 4], [5, 6]]
    u = mbr_scores(cands, ngram_f1)
    assert u[0] == pytest.approx((ngram_f1([1, 2, 3], [1, 2, 4]) + 0.0) / 2)
    assert u[2] == 0.0 and best(u) == 0  # the first of the two tied consensus candidates
    assert mbr_scores([[1]], ngram_f1) == [0.0]


# --- the picks ---------------------------------------------------------------------------------------


def test_answer_is_the_last_match_and_majority_breaks_ties_by_score():
    import re

    pat = re.compile(r"answer is (-?\d+)")
    assert answer_of(pat, "answer is 3, no: answer is 41 ") == "41" and answer_of(pat, "none") is None
    assert majority(["4", "5", "4", None, "5"], [-1.0, -0.5, -3.0, 0.0, -2.0]) == 1  # 4 and 5 tie on votes: best score
    assert majority(["4", "5", "4"], [-1.0, -0.5, -3.0]) == 0  # the majority, its best-scoring candidate
    assert majority([None, None], [-2.0, -1.0]) == 1  # no answers: the best score
    assert best([-1.0, -0.5, -0.5]) == 1  # ties: the first sampled


# --- end to end ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["logprob", "mean_logprob"])
def test_best_of_runs_the_round_on_n_copies_and_picks_the_highest_score(score):
    models = tables()
    n = 4
    ours = decspec.compile(searched(f'best_of(n = {n}, score = "{score}")'), models=models).generate(PROMPTS, max_new_tokens=6, seed=3)
    plain = decspec.compile(searched("best_of").split("; search")[0] + " }", models=models)
    ref = plain.generate(replicate(PROMPTS, n), max_new_tokens=6, seed=3, logprobs=True)  # the same batch, the same draws
    for p in range(len(PROMPTS)):
        rows = range(p * n, (p + 1) * n)
        assert ours.candidates[p] == [ref.tokens[r] for r in rows]
        want = [sum(ref.logprobs[r]) / (len(ref.logprobs[r]) if score == "mean_logprob" else 1) for r in rows]
        assert ours.candidate_scores[p] == pytest.approx(want)
        assert ours.tokens[p] == ours.candidates[p][ours.chosen[p]] and ours.chosen[p] == best(ours.candidate_scores[p])
    assert len(set(map(tuple, ours.candidates[0]))) > 1  # the candidates are samples, not copies


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_best_of_over_speculative_sampling(backend):
    """specs/best_of_n.dec: the candidates come from a speculative round (draft + rejection), on either backend."""
    dec = decspec.compile(ROOT / "specs" / "best_of_n.dec", models=tables(), n=3, backend=backend)
    out = dec.generate(PROMPTS, max_new_tokens=8, seed=0)
    assert [len(c) for c in out.candidates] == [3, 3] and out.stats.rounds > 0 and out.stats.model_calls.get("draft")
    assert all(out.tokens[p] == out.candidates[p][out.chosen[p]] for p in range(2))
    if backend == "inductor":  # the same draws: the same candidates as eager
        eager = decspec.compile(ROOT / "specs" / "best_of_n.dec", models=tables(), n=3).generate(PROMPTS, max_new_tokens=8, seed=0)
        assert out.candidates == eager.candidates and out.tokens == eager.tokens


def test_self_consistency_votes_on_the_answers_in_the_text():
    dec = decspec.compile(searched('self_consistency(n = 12, answer = """=(\\d)""")'), target=tables()["target"], vocab=DIGITS)
    out = dec.generate([[0], [4]], max_new_tokens=10, seed=1)
    for p in range(2):
        texts, answers = out.candidate_texts[p], out.answers[p]
        assert answers == [answer_of(__import__("re").compile(r"=(\d)"), t) for t in texts]
        assert any(a is not None for a in answers)
        votes = {a: answers.count(a) for a in answers if a is not None}
        assert votes[answers[out.chosen[p]]] == max(votes.values())
    assert out.text == [t[c] for t, c in zip(out.candidate_texts, out.chosen)]


@pytest.mark.parametrize("utility", ["chrf", "ngram_f1"])
def test_mbr_picks_the_highest_mean_utility(utility):
    dec = decspec.compile(ROOT / "specs" / "mbr.dec", target=tables()["target"], vocab=DIGITS, n=6, utility=utility)
    out = dec.generate([[0], [4]], max_new_tokens=6, seed=2)
    for p in range(2):
        items = out.candidate_texts[p] if utility == "chrf" else out.candidates[p]
        assert out.candidate_scores[p] == pytest.approx(mbr_scores(items, chrf if utility == "chrf" else ngram_f1))
        assert out.chosen[p] == best(out.candidate_scores[p])


def test_without_a_vocabulary_the_text_is_the_ids():
    out = decspec.compile(ROOT / "specs" / "self_consistency.dec", target=tables()["target"], n=2).generate([[1]], max_new_tokens=3, seed=0)
    assert out.candidate_texts[0] == [" ".join(map(str, c)) for c in out.candidates[0]]


def test_per_call_sampler_settings_and_ragged_lengths_reach_every_copy():
    dec = decspec.compile(searched("best_of(n = 3)"), models=tables())
    out = dec.generate(PROMPTS, max_new_tokens=[2, 5], seed=0, temperature=0.0)  # greedy: the n copies agree
    assert [len(c) for c in out.candidates[0]] == [2, 2, 2] and [len(c) for c in out.candidates[1]] == [5, 5, 5]
    assert all(len(set(map(tuple, c))) == 1 for c in out.candidates)


# --- what a sampling search claims, and refuses --------------------------------------------------------


def test_the_verdict_says_it_reranks_samples():
    dec = decspec.compile(ROOT / "specs" / "best_of_n.dec", models=tables())
    text = str(dec.verdict)
    assert text.startswith("lossy") and "reranks samples" in text and "verify = rejection" in text
    assert not dec.verdict.deterministic and dec.graph is not None


@pytest.mark.parametrize("search, message", [
    ("best_of(n = 0)", r"best_of's 'n' must be .*1"),
    ("best_of(n = 100000)", r"best_of's 'n' must be .*64"),
    ('best_of(score = "reward")', r"best_of's 'score' must be one of 'logprob', 'mean_logprob'"),
    ('mbr(utility = "bleurt")', r"mbr's 'utility' must be one of 'chrf', 'ngram_f1'"),
    ('self_consistency(answer = """answer is \\d+""")', "must have exactly one group .* found 0"),
    ('self_consistency(answer = "(a)(b)")', "must have exactly one group .* found 2"),
    ('self_consistency(answer = "(unclosed")', "'answer' is not a valid regex"),
])
def test_bad_parameters_name_the_place_and_the_fix(search, message):
    with pytest.raises(DecError, match=message) as e:
        plan(load(searched(search)))
    assert "<spec>:1:" in str(e.value)  # at the search component


def test_beam_still_refuses_speculation_but_the_sampling_searches_take_it():
    spec = 'target = model("target"); draft = model("draft"); propose = autoregressive(draft); verify = rejection'
    with pytest.raises(DecError, match="(?s)'search' cannot be combined with 'propose'.*sampling searches"):
        load(searched("beam(width = 2)", spec))
    assert plan(load(searched("mbr(n = 2)", spec))).n == 2


def test_refusals_at_generate_the_exact_backend_and_verify(capsys):
    dec = decspec.compile(searched("best_of(n = 2)"), models=tables())
    with pytest.raises(DecError, match="give one seed for the call"):
        dec.generate(PROMPTS, max_new_tokens=2, seed=[1, 2])
    with pytest.raises(DecError, match="does not report logprobs"):
        dec.generate(PROMPTS, max_new_tokens=2, logprobs=True)
    with pytest.raises(DecError, match="picks one of n samples per prompt"):
        dec.distribution([1], 2)
    from decspec.cli import main

    assert main(["verify", str(ROOT / "specs" / "mbr.dec")]) == 1
    assert "reranks samples" in capsys.readouterr().err
    assert math.isfinite(dec.generate(PROMPTS, max_new_tokens=2, seed=0).candidate_scores[0][0])


def test_doctests():
    import doctest

    import decspec.stdlib.utility

    assert doctest.testmod(decspec.stdlib.utility).failed == 0


def test_stop_strings_are_refused_with_the_reason():
    from decspec.stdlib.models.pretrained import reference_models

    dec = decspec.compile(ROOT / "specs" / "self_consistency.dec", target=reference_models()["target"], n=2)
    with pytest.raises(DecError, match="self_consistency does not take stop strings yet"):
        dec.generate("x = ", max_new_tokens=2, stop=["\n"])
