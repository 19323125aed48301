"""Beam search (`search = beam(...)`, stdlib/search.py, backends/beam.py): Hugging Face's generate(num_beams=...)
token for token on the shipped target, exhaustive search on table models, the finished-hypothesis bookkeeping,
cache reordering, and the errors a search spec can meet."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

import decspec
from decspec.backends import beam as beam_module
from decspec.backends.beam import Finished, done_after_step, length_normalized
from decspec.cli import main
from decspec.compiler.lower import lower
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.search import BeamSearch, plan

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "beam_search.dec"
NEWLINE = 199  # "\n" in the shipped tokenizer: an EOS that beams reach within a few tokens


def beam_text(width: int = 4, length_penalty: float = 1.0, early_stopping: str = "false", extra: str = "") -> str:
    return (f'decoder d {{ target = model("target"); {extra}\n'
            f'search = beam(width = {width}, length_penalty = {length_penalty}, early_stopping = "{early_stopping}") }}')


# --- the finished-hypothesis bookkeeping -----------------------------------------------------------


def test_length_normalized_divides_by_length_to_the_penalty():
    score = torch.tensor([-6.0, -3.0])
    assert length_normalized(score, 3, 1.0).tolist() == [-2.0, -1.0]
    assert length_normalized(score, 4, 0.5).tolist() == [-3.0, -1.5]
    assert length_normalized(score, 5, 0.0).tolist() == [-6.0, -3.0]  # no penalty: the raw cumulative log-probability


def test_finished_keeps_the_best_eligible_hypotheses_sorted():
    fin = Finished.empty(1, 2, 3)
    tok = lambda *rows: torch.tensor([rows])  # [1, C, G]
    fin.add(tok([1, 0, 0], [2, 0, 0], [3, 0, 0]), 1, torch.tensor([[-1.0, -0.5, -0.1]]), torch.tensor([[True, True, False]]))
    assert fin.full.tolist() == [[True, True]] and fin.score.tolist() == [[-0.5, -1.0]]  # the ineligible -0.1 never enters
    assert fin.tokens[0, :, 0].tolist() == [2, 1] and fin.length.tolist() == [[1, 1]]
    fin.add(tok([4, 5, 0], [6, 7, 0]), 2, torch.tensor([[-0.75, -2.0]]), torch.tensor([[True, True]]))
    assert fin.score.tolist() == [[-0.5, -0.75]] and fin.tokens[0, 1, :2].tolist() == [4, 5] and fin.length.tolist() == [[1, 2]]
    fin.add(tok([8, 9, 0]), 2, torch.tensor([[-0.5]]), torch.tensor([[True]]))  # a tie keeps the hypothesis found first
    assert fin.tokens[0, :, 0].tolist() == [2, 8]


def test_finished_slots_stay_empty_until_filled():
    fin = Finished.empty(2, 3, 4)
    fin.add(torch.zeros(2, 2, 4, dtype=torch.long), 1, torch.tensor([[-1.0, -2.0], [-1.0, -2.0]]), torch.tensor([[True, False], [False, False]]))
    assert fin.full.tolist() == [[True, False, False], [False, False, False]]


@pytest.mark.parametrize("early, penalty, best, done", [
    ("true", 1.0, 0.0, True),       # W finished: done, whatever the running beams could still reach
    ("false", 1.0, -2.5, True),     # best running -2.5 / 2 generated = -1.25 <= worst finished -1.0: cannot improve
    ("false", 1.0, -1.0, False),    # -1.0 / 2 = -0.5 beats -1.0
    ("false", 1.0, -3.5, True),     # -3.5 / 2 = -1.75
    ("never", 1.0, -3.5, False),    # "never" with a positive penalty assumes the longest end, max_new_tokens 4: -0.875
    ("never", 0.0, -0.9, False),    # no length penalty: the raw score, -0.9 beats -1.0
    ("never", 0.0, -1.2, True),
])
def test_done_after_step(early, penalty, best, done):
    search = BeamSearch(2, penalty, early)
    fin = Finished.empty(1, 2, 4)  # W = 2 finished, scores -0.8 and -1.0; 2 tokens generated of max_new_tokens 4
    fin.add(torch.zeros(1, 2, 4, dtype=torch.long), 2, torch.tensor([[-0.8, -1.0]]), torch.tensor([[True, True]]))
    assert done_after_step(search, fin, torch.tensor([best]), 2, 4).tolist() == [done]
    not_full = Finished.empty(1, 2, 4)
    assert done_after_step(search, not_full, torch.tensor([-100.0]), 2, 4).tolist() == [False]  # never done before W finish


# --- exhaustive search on table models --------------------------------------------------------------


def sequences(V: int, G: int, eos: int | None):
    """Every continuation beam search can finish: up to G tokens, ending at the first EOS or at G."""
    for n in range(1, G + 1):
        for seq in itertools.product(range(V), repeat=n):
            if eos is not None and eos in seq[:-1]:
                continue
            if n < G and (eos is None or seq[-1] != eos):
                continue
            yield list(seq)


def log_prob(model: TableModel, prompt: list[int], seq: list[int]) -> float:
    return sum(math.log(float(model.probs(prompt + seq[:i])[t])) for i, t in enumerate(seq))


def assert_ranked(beams, scores, every, score):
    """beams are exactly the hypotheses `every`, each with its score (within float32 error), best first. Hypotheses
    whose scores tie exactly in real arithmetic (a bigram table scores permuted transitions alike) may come in
    either order."""
    assert sorted(beams) == sorted(every)
    assert scores == pytest.approx([score(b) for b in beams], abs=1e-5)
    assert all(a >= b for a, b in zip(scores, scores[1:]))


@pytest.mark.parametrize("eos, penalty", [(None, 0.0), (2, 1.0), (2, 0.5)])
def test_a_beam_wider_than_every_prefix_finds_every_hypothesis_in_order(eos, penalty):
    """With width >= V**G every prefix stays on the beam: the finished set is every hypothesis, ranked by
    log p / length ** length_penalty (found by enumeration here)."""
    V, G, prompt = 3, 3, [1]
    model = TableModel.random(V, 1, seed=3, eos_token_id=eos)
    dec = decspec.compile(beam_text(V ** G, penalty, "never"), target=model)
    out = dec.generate([prompt], max_new_tokens=G)
    assert_ranked(out.beams[0], out.scores[0], list(sequences(V, G, eos)), lambda s: log_prob(model, prompt, s) / len(s) ** penalty)
    assert out.tokens[0] == out.beams[0][0]


@pytest.mark.parametrize("stage, penalize", [
    ("repetition_penalty(1.5)", lambda lp: lp * 1.5),  # log-probs are negative: HF multiplies them by r
    ("presence_penalty(0.7)", lambda lp: lp - 0.7),
])
def test_penalty_stages_act_on_log_probabilities(stage, penalize):
    """Every hypothesis, exhaustively: each step's log-probability of a token already in the sequence (prompt
    included) is penalized after the log-softmax, as HF's processors do under beam search."""
    V, G, prompt = 3, 3, [1, 1]
    model = TableModel.random(V, 1, seed=5)
    dec = decspec.compile(beam_text(V ** G, 0.0, "never", extra=f"sampler = {stage}"), target=model)
    out = dec.generate([prompt], max_new_tokens=G)

    def score(seq):
        total = 0.0
        for i, t in enumerate(seq):
            history = prompt + seq[:i]
            lp = math.log(float(model.probs(history)[t]))
            total += penalize(lp) if t in history else lp
        return total

    assert_ranked(out.beams[0], out.scores[0], list(sequences(V, G, None)), score)


def test_width_1_is_greedy_decoding():
    model = TableModel.random(7, 2, seed=1, eos_token_id=6)
    prompts = [[1, 2, 3], [4], [5, 5]]
    greedy = decspec.compile('decoder g { target = model("target"); sampler = greedy }', target=model)
    beam = decspec.compile(beam_text(1), target=model)
    assert beam.generate(prompts, max_new_tokens=10).tokens == greedy.generate(prompts, max_new_tokens=10, seed=0).tokens


def test_a_ragged_batch_equals_each_prompt_alone():
    target = random_models(seed=0)["target"]
    dec = decspec.compile(beam_text(3), target=target)
    prompts = [[5, 9, 2, 7, 1], [3], [8, 8, 4]]
    batch = dec.generate(prompts, max_new_tokens=6)
    alone = [dec.generate([p], max_new_tokens=6) for p in prompts]
    assert batch.beams == [a.beams[0] for a in alone]
    assert torch.allclose(torch.tensor(batch.scores), torch.tensor([a.scores[0] for a in alone]), atol=1e-5)


def test_without_a_trusted_reorder_the_cache_refeeds_and_agrees(monkeypatch):
    """A cache whose class has no `reorder` of its own is not reordered: the prefix cache re-feeds each row from its
    longest common prefix with the new hypothesis. Same beams, more tokens fed."""
    target = random_models(seed=0)["target"]
    dec = decspec.compile(beam_text(3), target=target)
    fed = {}
    real = beam_module.PrefixCache

    class Counting(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            fed[len(fed)] = self

    monkeypatch.setattr(beam_module, "PrefixCache", Counting)
    fast = dec.generate([[5, 9, 2], [3]], max_new_tokens=6)
    monkeypatch.setattr(beam_module, "_reorderable", lambda cache: False)
    slow = dec.generate([[5, 9, 2], [3]], max_new_tokens=6)
    assert slow.beams == fast.beams
    assert fed[1].tokens_fed > fed[0].tokens_fed == 3 * 3 + 3 * 1 + 5 * 6  # prefill W copies of each prompt, then a token per row


def test_repetition_penalty_changes_the_beams():
    target = random_models(seed=0)["target"]
    prompt = [[5, 9, 2, 7, 1, 5, 9, 2, 7, 1]]
    plain = decspec.compile(SPEC, target=target, width=2).generate(prompt, max_new_tokens=6)
    penalized = decspec.compile(SPEC, target=target, width=2, repetition=50.0).generate(prompt, max_new_tokens=6)
    assert plain.scores != penalized.scores
    assert not set(penalized.tokens[0]) & set(prompt[0])  # log-probs of seen tokens times 50: never worth it here


# --- cache reordering --------------------------------------------------------------------------------


def reorder_then_step(model, cache, rows: list[list[int]], index: list[int], token: int) -> torch.Tensor:
    model.forward(torch.tensor(rows), cache)
    cache.reorder(torch.tensor(index))
    return model.forward(torch.tensor([[token]] * len(rows)), cache).logits[:, -1]


def fresh(model, row: list[int]) -> torch.Tensor:
    return model.forward(torch.tensor([row]), model.new_cache(1, 16)).logits[0, -1]


def test_kv_cache_reorder_copies_whole_rows():
    model = random_models(seed=0)["target"]
    rows = [[1, 2, 3], [4, 5, 6]]
    got = reorder_then_step(model, model.new_cache(2, 16), rows, [1, 1], 7)
    for b in range(2):
        assert torch.allclose(got[b], fresh(model, rows[1] + [7]), atol=1e-5)
    cache = model.new_cache(2, 16)
    got = reorder_then_step(model, cache, rows, [1, 0], 7)
    assert torch.allclose(got[0], fresh(model, rows[1] + [7]), atol=1e-5) and torch.allclose(got[1], fresh(model, rows[0] + [7]), atol=1e-5)
    assert cache.tokens[0, :4].tolist() == [4, 5, 6, 7] and cache.length.tolist() == [4, 4]


def test_hf_cache_reorder_copies_whole_rows():
    transformers = pytest.importorskip("transformers")
    from decspec.stdlib.models.hf import HFModel

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = HFModel(transformers.LlamaForCausalLM(config).eval())
    rows = [[1, 2, 3], [4, 5, 6]]
    got = reorder_then_step(model, model.new_cache(2, 16), rows, [1, 0], 7)
    assert torch.allclose(got[0], fresh(model, rows[1] + [7]), atol=1e-5) and torch.allclose(got[1], fresh(model, rows[0] + [7]), atol=1e-5)


def test_beam_search_over_the_hf_adapter_matches_transformers():
    """The same search through decspec's HF adapter (HFCache.reorder on a DynamicCache) as transformers' own."""
    transformers = pytest.importorskip("transformers")
    from decspec.stdlib.models.hf import HFModel

    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.5, eos_token_id=2)
    hf = transformers.LlamaForCausalLM(config).eval()
    prompts = [[5, 9, 12, 7], [3, 8]]
    ours = decspec.compile(beam_text(3, 0.5), target=HFModel(hf)).generate(prompts, max_new_tokens=8)
    theirs, scores = hf_beams(hf, prompts, 3, 8, 0.5, False, 2, 1.0)
    assert ours.beams == theirs
    assert torch.allclose(torch.tensor(ours.scores), torch.tensor(scores), atol=1e-4)


def test_doctests():
    import doctest

    from decspec.stdlib import search

    assert doctest.testmod(search).failed == 0


# --- Hugging Face transformers on the shipped target ------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    transformers = pytest.importorskip("transformers")
    from decspec.stdlib.models.pretrained import REFERENCE, reference_models

    hf = transformers.AutoModelForCausalLM.from_pretrained(REFERENCE / "target", dtype=torch.float32).eval()
    return hf, reference_models()["target"]


def hf_beams(hf, prompts, width, max_new_tokens, length_penalty, early_stopping, eos, repetition):
    """HF's generate(num_beams=width, do_sample=False) on left-padded prompts -> (beams per prompt, best first; their
    scores, or None for width 1, where HF runs greedy search). A finished hypothesis is cut after its EOS (HF pads after it)."""
    T = max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, num_beams=width, num_return_sequences=width, do_sample=False,
                          length_penalty=length_penalty, early_stopping=early_stopping, max_new_tokens=max_new_tokens,
                          eos_token_id=eos, pad_token_id=0, repetition_penalty=repetition, return_dict_in_generate=True,
                          output_scores=True)
    rows = []
    for row in out.sequences[:, T:].tolist():
        if eos in row:
            end = row.index(eos) + 1
            assert set(row[end:]) <= {0, eos}  # only padding after the hypothesis
            row = row[:end]
        rows.append(row)
    scores = getattr(out, "sequences_scores", None)
    scores = None if scores is None else scores.view(len(prompts), width).tolist()
    return [rows[i * width:(i + 1) * width] for i in range(len(prompts))], scores


PROMPTS = ["def fibonacci(n):", "import os\n", "class Foo:\n    def"]  # 3 different lengths: a ragged, left-padded batch in HF


@pytest.mark.parametrize("width, length_penalty, early_stopping, eos, repetition, n_prompts", [
    (1, 1.0, False, 0, 1.0, 3),          # width 1: HF's greedy search
    (2, 1.0, False, 0, 1.0, 3),          # the shipped EOS, rarely reached: hypotheses end at max_new_tokens
    (4, 1.0, False, NEWLINE, 1.0, 3),    # an EOS reached early: finished hypotheses of different lengths
    (4, 0.5, False, NEWLINE, 1.0, 3),
    (3, 1.0, True, NEWLINE, 1.0, 3),
    (4, 2.0, "never", NEWLINE, 1.0, 3),
    (4, -0.5, False, NEWLINE, 1.0, 3),
    (4, 1.0, False, 0, 1.3, 1),          # one prompt: HF would also penalize the padding of a ragged batch
], ids=lambda v: str(v))
def test_matches_transformers_beam_search(shipped, width, length_penalty, early_stopping, eos, repetition, n_prompts,
                                          backend="eager"):
    hf, target = shipped
    prompts = [target.tokenizer.encode_prompt(t) for t in PROMPTS[:n_prompts]]
    G = 10
    dec = decspec.compile(SPEC, target=target, width=width, length_penalty=length_penalty,
                          early_stopping=str(early_stopping).lower(), repetition=repetition, backend=backend)
    ours = dec.generate(prompts, max_new_tokens=G, eos_token_id=eos)
    theirs, scores = hf_beams(hf, prompts, width, G, length_penalty, early_stopping, eos, repetition)
    assert ours.beams == theirs
    assert ours.tokens == [b[0] for b in theirs]
    assert ours.text == [target.tokenizer.decode(t) for t in ours.tokens]
    if scores is not None:
        assert torch.allclose(torch.tensor(ours.scores), torch.tensor(scores), atol=1e-4)
    if eos == NEWLINE:  # the configuration exercises finishing: some hypothesis ended at the EOS before max_new_tokens
        assert any(len(b) < G and b[-1] == eos for beams in ours.beams for b in beams)


@pytest.mark.parametrize("width, length_penalty, early_stopping, eos, repetition, n_prompts", [
    (4, 1.0, False, NEWLINE, 1.0, 3),
    (3, 1.0, True, NEWLINE, 1.0, 3),
    (4, 1.0, False, 0, 1.3, 1),
], ids=lambda v: str(v))
def test_the_inductor_step_matches_transformers_beam_search(shipped, width, length_penalty, early_stopping, eos, repetition,
                                                            n_prompts):
    """The inductor backend's static step (beam_step: a static cache, the reorder inside the step), uncompiled."""
    test_matches_transformers_beam_search(shipped, width, length_penalty, early_stopping, eos, repetition, n_prompts,
                                          backend="inductor")


def test_the_compiled_step_is_one_graph_for_every_step_and_prompt_length():
    import torch._dynamo
    from torch._dynamo.utils import counters

    models = random_models(0)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    eager = decspec.compile(SPEC, models=models, repetition=1.3).generate(prompts, max_new_tokens=8)
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile(SPEC, models=models, repetition=1.3, backend="inductor",
                          backend_options={"compile": True, "dynamo_backend": "eager"})
    out = dec.generate(prompts, max_new_tokens=8)
    assert out.beams == eager.beams and out.stats.rounds == eager.stats.rounds == 8
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    dec.generate([[1, 2], [3, 4, 5, 6, 7, 8, 9]], max_new_tokens=8)  # other prompt lengths, same capacity bucket
    assert counters["stats"]["unique_graphs"] == 1


def test_beam_search_takes_only_the_step_options():
    dec = decspec.compile(SPEC, models=random_models(0), backend="inductor", backend_options={"schedule": "host"})
    with pytest.raises(DecError, match="beam search on the inductor backend takes the options 'compile'"):
        dec.generate([[1, 2]], max_new_tokens=2)


# --- errors and what the tools say ------------------------------------------------------------------


def test_width_must_be_positive():
    with pytest.raises(DecError, match=r"beam's 'width' must be .*1.*found 0"):
        load(beam_text(0))


def test_search_excludes_speculation_slots():
    text = ('decoder d { target = model("target"); draft = model("draft")\n'
            'propose = autoregressive(draft); verify = rejection; search = beam(width = 2) }')
    with pytest.raises(DecError) as e:
        load(text)
    assert "'search' cannot be combined with 'propose'" in str(e.value) and "'search' cannot be combined with 'verify'" in str(e.value)
    assert "<spec>:2:1" in str(e.value)  # at the propose slot


def test_sampling_stages_are_refused():
    with pytest.raises(DecError, match="sampler stage 'temperature' does not apply to beam search") as e:
        decspec.compile(beam_text(2, extra="sampler = temperature(0.7)"), target=TableModel.random(4, 0, seed=0))
    assert "<spec>:1:" in str(e.value)


def test_early_stopping_must_be_a_known_value():
    with pytest.raises(DecError, match=r"'early_stopping' must be one of 'false', 'true', 'never', found 'maybe'"):
        plan(load(beam_text(2, early_stopping="maybe")))


def test_the_exact_backend_refuses_with_the_line():
    with pytest.raises(DecError) as e:
        decspec.compile(SPEC, backend="exact")
    text = str(e.value)
    assert "the exact backend cannot run the `search` slot" in text and "beam_search.dec:11:" in text and 'backend="eager"' in text


def test_the_mlir_export_refuses_with_the_line(capsys):
    pytest.importorskip("torch_mlir")
    assert main(["emit", str(SPEC), "--format", "mlir"]) == 1
    err = capsys.readouterr().err
    assert "cannot export the `search` slot to MLIR" in err and "beam_search.dec:11:" in err


def test_no_round_graph_and_no_distribution():
    with pytest.raises(DecError, match="has no round graph"):
        lower(load(SPEC))
    dec = decspec.compile(SPEC, target=TableModel.random(4, 0, seed=0))
    assert dec.graph is None
    with pytest.raises(DecError, match="beam search is deterministic"):
        dec.distribution([1], 2)


def test_cli_check_says_deterministic_and_verify_refuses(capsys):
    assert main(["check", str(SPEC), "width=2"]) == 0
    out = capsys.readouterr().out
    assert "deterministic" in out and "does not sample from the target's distribution" in out and "lossless" not in out
    assert main(["verify", str(SPEC)]) == 1
    assert "no distribution to compare" in capsys.readouterr().err
    assert main(["ir", str(SPEC)]) == 1
    assert "has no round graph" in capsys.readouterr().err
