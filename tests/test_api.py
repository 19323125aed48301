"""decspec.compile / Decoder.generate: binding, overrides, batching, stopping, stats, bad input."""
from __future__ import annotations

import pytest
import torch

import decspec
from decspec.backends.runtime import Stats
from decspec import DecError
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel

SPEC = "specs/speculative.dec"


@pytest.fixture(scope="module")
def tables():
    return TableModel.random(8, 1, seed=0), TableModel.random(8, 1, seed=1)


def test_overrides_and_models_from_keywords(tables):
    target, draft = tables
    dec = decspec.compile(SPEC, target=target, draft=draft, k=2, temperature=1.0)
    assert dict(dec.spec.params)["k"] == 2
    assert next(op for op in dec.graph.ops if op.name == "draft_loop").param("max") == 2
    assert dec.verdict.lossless


def test_inline_spec_text(tables):
    target, _ = tables
    dec = decspec.compile('decoder d() {\n target = model("target")\n sampler = greedy\n}', target=target)
    first = int(target.logits[1].argmax())
    assert dec.generate([[1]], max_new_tokens=3).tokens[0] == [first, int(target.logits[first].argmax()), int(target.logits[int(target.logits[first].argmax())].argmax())]


def test_seed_makes_generation_reproducible(tables):
    target, draft = tables
    dec = decspec.compile(SPEC, target=target, draft=draft)
    a = dec.generate([[1, 2], [3]], max_new_tokens=16, seed=7)
    b = dec.generate([[1, 2], [3]], max_new_tokens=16, seed=7)
    c = dec.generate([[1, 2], [3]], max_new_tokens=16, seed=8)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_ragged_rows_are_independent_of_their_batch(tables):
    """Greedy: a row's output does not depend on the other rows or on padding."""
    target, draft = tables
    dec = decspec.compile("specs/speculative_greedy.dec", target=target, draft=draft, k=3)
    prompts = [[1, 2, 3, 4, 5], [6], [7, 0]]
    together = dec.generate(prompts, max_new_tokens=10).tokens
    alone = [dec.generate([p], max_new_tokens=10).tokens[0] for p in prompts]
    assert together == alone


def test_input_forms(tables):
    target, draft = tables
    dec = decspec.compile("specs/speculative_greedy.dec", target=target, draft=draft)
    flat = dec.generate([1, 2, 3], max_new_tokens=4).tokens
    tensor = dec.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4).tokens
    assert flat == tensor and len(flat[0]) == 4


def test_per_row_eos_and_max_new_tokens():
    target = TableModel.random(6, 1, seed=4, eos_token_id=None)
    greedy_next = lambda t: int(target.logits[t].argmax())
    eos = greedy_next(greedy_next(2))  # row [2] emits EOS as its second token
    target.eos_token_id = eos
    dec = decspec.compile("specs/speculative_greedy.dec", target=target, draft=target, k=4, confidence=0.0)
    out = dec.generate([[2], [eos]], max_new_tokens=9)
    assert out.tokens[0][-1] == eos and len(out.tokens[0]) == 2
    assert eos not in out.tokens[1][:-1] and len(out.tokens[1]) <= 9
    assert out.stats.new_tokens == [len(r) for r in out.tokens]
    no_eos = dec.generate([[2]], max_new_tokens=9, eos_token_id=None)
    assert len(no_eos.tokens[0]) == 9


def test_stats(tables):
    target, draft = tables
    dec = decspec.compile(SPEC, target=target, draft=draft, k=3)
    out = dec.generate([[1]] * 4, max_new_tokens=12, seed=0)
    s = out.stats
    assert s.rounds == len(s.accepted) == len(s.drafted)
    assert all(0 <= a <= d <= 3 for r_a, r_d in zip(s.accepted, s.drafted) for a, d in zip(r_a, r_d))
    assert 0.0 <= s.mean_accepted <= 3.0  # no assertion on wall_time / tokens_per_second: timings belong in benchmarks
    assert s.new_tokens == [12] * 4
    plain = decspec.compile("specs/autoregressive.dec", target=target).generate([[1]], max_new_tokens=5)
    assert plain.stats.rounds == 5 and plain.stats.mean_accepted == 0.0 and plain.stats.compile_time == 0  # nothing compiled
    made = Stats(new_tokens=[30, 10], wall_time=5.0, compile_time=3.0)  # set by hand, not measured
    assert made.generation_time == 2.0 and "tokens/s=20.0 compile=3.0s" in made.summary()  # compiling left out of tokens/s


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t, d: decspec.compile(SPEC, target=t).generate([[1]]), r"needs model\(s\) 'draft'"),
        (lambda t, d: decspec.compile(SPEC, target=t, draft=TableModel.random(9, 1, seed=0)).generate([[1]]), "vocabularies differ"),
        (lambda t, d: decspec.compile(SPEC, target=t, draft=d, kk=3), "unknown parameter 'kk'"),
        (lambda t, d: decspec.compile(SPEC, target=t, draft=d, k=0), "k"),
        (lambda t, d: decspec.compile(SPEC, target=t, draft=d).generate([[1, 99]]), "outside the model's vocabulary"),
        (lambda t, d: decspec.compile(SPEC, target=t, draft=d).generate([[]]), "prompt 0 is empty"),
        (lambda t, d: decspec.compile(SPEC, target=t, draft=d).generate([[1]], max_new_tokens=0), "max_new_tokens"),
        (lambda t, d: decspec.compile(SPEC, target=t, draft=d).generate("hello"), "no tokenizer"),
        (lambda t, d: decspec.compile("specs/missing.dec"), "missing.dec"),
        (lambda t, d: decspec.compile(SPEC, backend="inductr"), "unknown backend"),
    ],
)
def test_bad_input_is_a_clear_error(tables, call, message):
    with pytest.raises(DecError, match=message):
        call(*tables)


def test_prompt_longer_than_the_model():
    dec = decspec.compile(SPEC, models=random_models())
    with pytest.raises(DecError, match="2048 positions of model 'target'"):
        dec.generate([[1] * 2040], max_new_tokens=20)


def test_decoder_distribution_is_exact():
    from decspec.stdlib.models.table import TableModel

    target, draft = TableModel.random(3, 1, seed=0), TableModel.random(3, 1, seed=1)
    dec = decspec.compile(SPEC, target=target, draft=draft, k=2)
    dist = dec.distribution([1], max_new_tokens=2)
    assert abs(sum(dist.values()) - 1) < 1e-12 and all(len(seq) == 2 for seq in dist)
