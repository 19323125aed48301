"""Beam search beyond plain beam (stdlib/search.py `beam`, backends/beam.py): diverse beam search
(`groups`, `diversity`) matches Hugging Face transformers 4.46's group beam search token for token on the shipped
target (a fixture: transformers 5 dropped it), and beam search under a grammar returns only hypotheses of the
grammar's language, equals plain beam search when the grammar allows everything, and runs on the inductor backend's
step, compiled as one graph."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import decspec
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.search import plan

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = json.loads((ROOT / "tests" / "data" / "diverse_beam_hf.json").read_text())
DIVERSE = ROOT / "specs" / "diverse_beam.dec"
VOCAB = [b"a", b"b", b"c", b"ab", b"ca", None]  # a table model's tokens as bytes; id 5 the EOS
EOS = len(VOCAB) - 1


def beam_text(grammar: str | None, width: int = 4, extra: str = "") -> str:
    slot = f"grammar = {grammar}\n" if grammar else ""
    return f'decoder d {{ target = model("target"); {slot}search = beam(width = {width}{extra}) }}'


def spelled(tokens: list[int]) -> tuple[str, bool]:
    ended = bool(tokens) and tokens[-1] == EOS
    return b"".join(VOCAB[t] for t in (tokens[:-1] if ended else tokens)).decode(), ended


# --- diverse beam search: Hugging Face 4.46 ------------------------------------------------------------


@pytest.fixture(scope="module")
def target():
    from decspec.stdlib.models.pretrained import reference_models

    return reference_models()["target"]


@pytest.mark.parametrize("case", range(len(FIXTURE["cases"])))
def test_diverse_beam_matches_transformers_446(target, case, backend="eager"):
    c = FIXTURE["cases"][case]
    dec = decspec.compile(DIVERSE, target=target, width=c["width"], groups=c["groups"], diversity=c["diversity"],
                          length_penalty=c["length_penalty"], early_stopping=c["early_stopping"], repetition=c["repetition"],
                          backend=backend)
    out = dec.generate(c["prompts"], max_new_tokens=c["max_new_tokens"], eos_token_id=c["eos"])
    assert out.beams == c["beams"]
    assert out.tokens == [b[0] for b in c["beams"]]
    assert torch.allclose(torch.tensor(out.scores), torch.tensor(c["scores"]), atol=1e-4)


@pytest.mark.parametrize("case", [0, 5])
def test_the_inductor_step_matches_transformers_446(target, case):
    test_diverse_beam_matches_transformers_446(target, case, backend="inductor")


def test_the_fixture_says_how_it_was_made_and_differs_from_plain_beam(target):
    assert FIXTURE["made_by"].startswith("python tests/data/make_diverse_beam.py (transformers 4.46")
    c = FIXTURE["cases"][0]  # the groups find hypotheses plain beam search of the same width does not
    plain = decspec.compile(ROOT / "specs" / "beam_search.dec", target=target, width=c["width"])
    assert plain.generate(c["prompts"], max_new_tokens=c["max_new_tokens"], eos_token_id=c["eos"]).beams != c["beams"]


def test_groups_must_divide_width_and_come_with_a_diversity():
    with pytest.raises(DecError, match=r"'groups' \(3\) must divide 'width' \(4\)"):
        plan(load(beam_text(None, 4, ", groups = 3, diversity = 1.0")))
    with pytest.raises(DecError, match="diverse beam search needs groups > 1 and diversity > 0") as e:
        plan(load(beam_text(None, 4, ", groups = 2")))
    assert "<spec>:1:" in str(e.value)
    with pytest.raises(DecError, match="diverse beam search needs groups > 1 and diversity > 0"):
        plan(load(beam_text(None, 4, ", diversity = 0.5")))
    with pytest.raises(DecError, match=r"beam's 'groups' must be .*64"):
        load(beam_text(None, 4, ", groups = 1000, diversity = 1.0"))


# --- beam search under a grammar -----------------------------------------------------------------------


def table(seed: int = 0, v: int = len(VOCAB)) -> TableModel:
    return TableModel.random(v, 1, seed, eos_token_id=v - 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_hypothesis_matches_the_regex(seed):
    """A finite language ((ab|c){1,2}b?: at most 5 characters), so every hypothesis ends at EOS within 8 tokens."""
    dec = decspec.compile(beam_text('regex("""(ab|c){1,2}b?""")', 6), target=table(seed), vocab=VOCAB)
    out = dec.generate([[0], [1, 2]], max_new_tokens=8)
    plain = decspec.compile(beam_text(None, 6), target=table(seed)).generate([[0], [1, 2]], max_new_tokens=8)
    assert any(not re.fullmatch(r"(ab|c){1,2}b?", spelled(b)[0]) for beams in plain.beams for b in beams)  # it constrains
    for beams in out.beams:
        assert len(beams) == 6
        for b in beams:
            text, ended = spelled(b)
            assert ended and re.fullmatch(r"(ab|c){1,2}b?", text), (b, text)
    assert out.tokens == [b[0] for b in out.beams]


def test_the_scores_are_the_masked_log_probabilities():
    """A hypothesis' score is the target's log-probability of its tokens (unrenormalized: the mask only removes
    continuations) divided by its length, as plain beam search scores it."""
    model = table(3)
    out = decspec.compile(beam_text('regex("""(ab|c){1,2}b?""")', 3), target=model, vocab=VOCAB).generate([[0]], max_new_tokens=8)
    for b, score in zip(out.beams[0], out.scores[0]):
        logp = sum(torch.log(model.probs([0] + b[:i])[t]).item() for i, t in enumerate(b))
        assert score == pytest.approx(logp / len(b), abs=1e-5)


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_a_grammar_that_allows_everything_is_plain_beam_search(backend):
    vocab = [b"a", b"b", b"c", None]  # [abc]* allows every token everywhere, and EOS everywhere (every prefix matches)
    model = TableModel.random(4, 1, 5, eos_token_id=3)
    ours = decspec.compile(beam_text('regex("""[abc]*""")', 3, ", length_penalty = 0.5"), target=model, vocab=vocab,
                           backend=backend).generate([[0], [1, 2]], max_new_tokens=6)
    plain = decspec.compile(beam_text(None, 3, ", length_penalty = 0.5"), target=model).generate([[0], [1, 2]], max_new_tokens=6)
    assert ours.beams == plain.beams and sum(ours.scores, []) == pytest.approx(sum(plain.scores, []))


def test_a_grammar_and_groups_together():
    dec = decspec.compile(beam_text('regex("""(ab|c){1,2}b?""")', 4, ", groups = 2, diversity = 2.0"), target=table(4),
                          vocab=VOCAB)
    out = dec.generate([[0]], max_new_tokens=8)
    assert len(out.beams[0]) == 4 and all(re.fullmatch(r"(ab|c){1,2}b?", spelled(b)[0]) for b in out.beams[0])


def test_the_compiled_grammar_step_is_one_graph_and_agrees_with_eager():
    import torch._dynamo
    from torch._dynamo.utils import counters

    from decspec.stdlib.models.default import random_models

    target = random_models(0)["target"]  # a static cache (a table model's reads its length on the host)
    target.eos_token_id = EOS
    vocab = VOCAB + [None] * (target.vocab_size - len(VOCAB))  # the other ids are never allowed
    text = beam_text('regex("""(ab|c){1,2}b?""")', 4, ", groups = 2, diversity = 1.0")
    eager = decspec.compile(text, target=target, vocab=vocab).generate([[0], [2, 1]], max_new_tokens=8)
    assert all(re.fullmatch(r"(ab|c){1,2}b?", spelled(b)[0]) for beams in eager.beams for b in beams)
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile(text, target=target, vocab=vocab, backend="inductor",
                          backend_options={"compile": True, "dynamo_backend": "eager"})
    out = dec.generate([[0], [2, 1]], max_new_tokens=8)
    assert out.beams == eager.beams
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_the_spec_and_its_verdict():
    from decspec.compiler.analysis import losslessness
    from decspec.stdlib.search import has_round

    spec = load(ROOT / "specs" / "beam_grammar.dec")
    verdict = losslessness(spec)
    assert not has_round(spec) and verdict.deterministic and "-inf outside the grammar (json_schema(" in str(verdict)


def test_the_reference_target_under_the_json_schema(target):
    """The shipped spec on the shipped target: every hypothesis that ended is a JSON object of the schema."""
    dec = decspec.compile(ROOT / "specs" / "beam_grammar.dec", target=target, width=2)
    out = dec.generate(["Person: "], max_new_tokens=48)
    for b in out.beams[0]:
        text = target.tokenizer.decode(b[:-1] if b[-1] in (0,) else b)
        if b[-1] == 0:
            assert isinstance(json.loads(text), dict)
        else:
            assert text.startswith("{")


# --- lexically constrained beam search: Hugging Face 4.46 ----------------------------------------------

CONSTRAINED = json.loads((ROOT / "tests" / "data" / "constrained_beam_hf.json").read_text())


def contains(seq: list[int], phrase: list[int]) -> bool:
    return any(seq[i:i + len(phrase)] == phrase for i in range(len(seq)))


@pytest.mark.parametrize("case", range(len(CONSTRAINED["cases"])))
def test_constrained_beam_matches_transformers_446(target, case):
    c = CONSTRAINED["cases"][case]
    dec = decspec.compile(ROOT / "specs" / "constrained_beam.dec", target=target, width=c["width"], words=c["words"],
                          length_penalty=c["length_penalty"], early_stopping=c["early_stopping"])
    assert [list(p) for p in dec._phrases(target)] == c["phrases"]  # the words, tokenized as HF's tokenizer does
    out = dec.generate([c["prompt"]], max_new_tokens=c["max_new_tokens"], eos_token_id=c["eos"])
    assert out.beams == [c["beams"]] and out.tokens == [c["beams"][0]]
    assert torch.allclose(torch.tensor(out.scores[0]), torch.tensor(c["scores"]), atol=1e-4)


def test_the_constrained_fixture_meets_phrases_and_falls_back():
    """The cases exercise both: hypotheses that contain every phrase, and HF's fallback filling `beams` with others."""
    met = [all(contains(c["prompt"] + b, p) for p in c["phrases"]) for c in CONSTRAINED["cases"] for b in c["beams"]]
    assert any(met) and not all(met)
    assert CONSTRAINED["made_by"].startswith("python tests/data/make_constrained_beam.py (transformers 4.46")


def test_progress_replays_phrases_as_hf_does():
    from decspec.backends.constrained import Progress

    phrases = ((1, 2, 3), (4,))
    s = Progress.of(phrases, [1, 2])
    assert (s.current, s.matched, s.pending, s.bank) == (0, 2, [1], 2)  # bank: 0 met * 3 + (3 - 1 remaining)
    assert s.advances() == [3]
    s = Progress.of(phrases, [1, 2, 4])  # a wrong token: phrase 0 starts over, last in line; 4 is not tried as a start
    assert (s.current, s.pending, s.met) == (None, [1, 0], 0) and s.advances() == [4, 1]
    s = Progress.of(phrases, [4, 1, 2, 3])
    assert s.complete and s.met == 2 and s.bank == 6


def test_constrained_hypotheses_that_end_contain_the_words():
    model = TableModel.random(len(VOCAB), 1, 8, eos_token_id=EOS, temperature=0.7)  # EOS reachable within 8 tokens
    dec = decspec.compile(ROOT / "specs" / "constrained_beam.dec", target=model, words=["1 2", "3"])
    out = dec.generate([[0], [2]], max_new_tokens=8)
    ended = [b for beams in out.beams for b in beams if b[-1] == EOS]
    assert ended and all(contains(b, [1, 2]) and contains(b, [3]) for b in ended)
    plain = decspec.compile(beam_text(None, 4), target=model).generate([[0], [2]], max_new_tokens=8)
    assert plain.beams != out.beams


def test_constrained_beam_errors():
    with pytest.raises(DecError, match="constrained_beam's 'words' must be non-empty phrases"):
        plan(load('decoder d { target = model("target"); search = constrained_beam(words = []) }'))
    dec = decspec.compile(ROOT / "specs" / "constrained_beam.dec", target=table(0), words=["hello"])
    with pytest.raises(DecError, match="is text, but the target has no tokenizer"):
        dec.generate([[0]], max_new_tokens=2)
    dec = decspec.compile(ROOT / "specs" / "constrained_beam.dec", target=table(0), words=["99"])
    with pytest.raises(DecError, match="not a phrase of the target's vocabulary"):
        dec.generate([[0]], max_new_tokens=2)
    with pytest.raises(DecError, match="the exact backend cannot run the `search` slot"):
        decspec.compile(ROOT / "specs" / "constrained_beam.dec", target=table(0), backend="exact")
    with pytest.raises(DecError, match="constrained_beam cannot be combined with a `grammar` slot"):
        plan(load('decoder d { target = model("target"); grammar = regex("a"); search = constrained_beam(words = ["a"]) }'))
