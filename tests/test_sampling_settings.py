"""Per-call, per-row sampler settings (issue 17, item 2): `generate(..., temperature=0.7, top_p=[0.9, 1.0])` sets the
numbers of the spec's sampler stages for one call without recompiling (backends/sampling.py).

- a per-row value computes, bit for bit, what the same constant computes (hypothesis over stages, values, logits);
- a call with values gives the tokens the spec compiled with those values gives (eager and inductor);
- a torch.compile'd round takes new values without recompiling (dynamo's counters);
- what cannot be set says why: unknown names, stages the spec has not got, bad values, the exact backend, beam
  search, and temperature > 0 on a spec lossless only because it is greedy.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decspec
from decspec import DecError
from decspec.backends.sampling import settable
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.penalties import token_counts
from decspec.stdlib.samplers import PerRow, apply_pipeline, per_row

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
V = 8


def tables():
    return {"target": TableModel.random(V, 1, seed=0), "draft": TableModel.random(V, 1, seed=1, temperature=2.0)}


VALUES = {
    "temperature": st.one_of(st.just(0.0), st.just(1.0), st.floats(1e-3, 10)),
    "top_k": st.integers(1, V + 2),
    "top_p": st.one_of(st.just(0.0), st.just(1.0), st.floats(0, 1)),
    "min_p": st.one_of(st.just(0.0), st.floats(0, 1)),
    "typical_p": st.one_of(st.just(1.0), st.floats(0, 1)),
    "epsilon_cutoff": st.one_of(st.just(0.0), st.floats(0, 1)),
    "eta_cutoff": st.one_of(st.just(0.0), st.floats(0, 1)),
    "repetition_penalty": st.floats(0.01, 100),
    "frequency_penalty": st.floats(-2, 2),
    "presence_penalty": st.floats(-2, 2),
}


@st.composite
def pipelines_and_rows(draw):
    names = draw(st.lists(st.sampled_from(sorted(VALUES)), min_size=1, max_size=4))
    B = draw(st.integers(1, 3))
    rows = [[draw(VALUES[n]) for n in names] for _ in range(B)]
    logits = torch.tensor(draw(st.lists(st.lists(st.sampled_from([-3.0, -1.0, 0.0, 0.5, 2.0, 7.0, float("-inf")]), min_size=V, max_size=V),
                                        min_size=B, max_size=B)))
    logits[:, 0] = 1.0  # at least one finite logit per row
    return names, rows, logits


@SETTINGS
@given(pipelines_and_rows())
def test_a_per_row_value_computes_what_the_constant_does(case):
    names, rows, logits = case
    B = logits.shape[0]
    param = {n: p for n, (p, _) in settable().items()}
    open_stages = tuple((n, ((param[n], PerRow(f"{n}@{i}", n, 0)),)) for i, n in enumerate(names))
    values = {f"{n}@{i}": torch.tensor([float(rows[b][i]) for b in range(B)], dtype=torch.float64) for i, n in enumerate(names)}
    tokens = torch.tensor([[1, 1, 3, 0, 5]] * B)
    counts = token_counts(tokens, torch.tensor([5 - b for b in range(B)]), vocab=V)
    got = apply_pipeline(logits, per_row(open_stages, values, logits), counts)
    for b in range(B):
        constant = tuple((n, ((param[n], rows[b][i]),)) for i, n in enumerate(names))
        want = apply_pipeline(logits[b:b + 1], constant, counts[b:b + 1])
        assert torch.equal(got[b:b + 1], want.to(got.dtype)), (names, rows[b])


SPECS = {  # spec, {setting: the spec's parameter that sets the same stage}
    "specs/speculative.dec": {"temperature": "temperature", "top_p": "top_p"},
    "specs/penalties.dec": {"repetition_penalty": "repetition", "temperature": "temperature", "typical_p": "mass"},
    "specs/prompt_lookup.dec": {"temperature": "temperature"},
}


@pytest.mark.parametrize("backend", ["eager", "inductor"])
@pytest.mark.parametrize("spec", list(SPECS))
def test_a_call_gives_the_tokens_of_the_spec_compiled_with_its_values(spec, backend):
    names = SPECS[spec]
    dec = decspec.compile(spec, models=tables(), backend=backend)
    prompts = [[1, 2, 1, 2], [3]]

    @settings(max_examples=6, deadline=None)
    @given(st.fixed_dictionaries({n: VALUES[n] for n in names}), st.integers(0, 2**32))
    def check(values, seed):
        compiled = decspec.compile(spec, models=tables(), backend=backend, overrides={names[n]: v for n, v in values.items()})
        want = compiled.generate(prompts, max_new_tokens=10, seed=seed)
        got = dec.generate(prompts, max_new_tokens=10, seed=seed, **values)
        assert got.tokens == want.tokens
        deltas = list(dec.stream(prompts, max_new_tokens=10, seed=seed, **values))
        assert [[t for d in deltas if d.row == b for t in d.tokens] for b in range(2)] == want.tokens

    check()


def test_settings_per_row():
    """Row 0 greedy, row 1 hot: row 0 is the greedy decoding of its prompt, whatever row 1 draws."""
    dec = decspec.compile("specs/speculative.dec", models=tables(), k=3)
    greedy = decspec.compile("specs/speculative.dec", models=tables(), k=3, temperature=0.0)
    want = greedy.generate([[1, 2]], max_new_tokens=12, seed=0).tokens[0]
    for seed in range(3):
        got = dec.generate([[1, 2], [1, 2]], max_new_tokens=12, seed=seed, temperature=[0.0, 5.0], top_p=[0.5, 1.0])
        assert got.tokens[0] == want
    hot = {tuple(dec.generate([[1, 2], [1, 2]], max_new_tokens=12, seed=s, temperature=[0.0, 5.0]).tokens[1]) for s in range(4)}
    assert len(hot) > 1


def test_new_values_do_not_recompile_the_compiled_round():
    from torch._dynamo.utils import counters

    models = random_models(seed=3)
    prompts = [[1, 2, 3], [4]]
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile("specs/speculative.dec", models=models, k=3, backend="inductor")
    dec.backend_options = {"compile": True}
    dec.generate(prompts, max_new_tokens=8, seed=0, temperature=0.7)  # warm-up: compiles once
    graphs = counters["stats"]["unique_graphs"]
    last = dec.generate(prompts, max_new_tokens=8, seed=0, temperature=[0.0, 1.5], top_p=[1.0, 0.2])
    assert counters["stats"]["unique_graphs"] == graphs == 1 and not counters["graph_break"]
    eager = decspec.compile("specs/speculative.dec", models=models, k=3)
    assert last.tokens == eager.generate(prompts, max_new_tokens=8, seed=0, temperature=[0.0, 1.5], top_p=[1.0, 0.2]).tokens


@pytest.mark.parametrize("kwargs, message", [
    ({"temprature": 0.5}, "unexpected keyword argument 'temprature'\n.*did you mean 'temperature'"),
    ({"beams": 2}, "per-call sampler settings are"),
    ({"top_k": 5}, "has no top_k stage to set .*temperature\\(t=0.8\\) \\| top_p\\(p=0.95\\)"),
    ({"temperature": "hot"}, r"temperature must be a finite number \(got 'hot' \(a str\)\)"),
    ({"temperature": True}, "temperature must be a finite number"), ({"temperature": math.nan}, "finite number"),
    ({"temperature": -1.0}, r"temperature=-1.0 is outside temperature's range \[0, 1e\+06\]"),
    ({"top_p": 1.5}, r"top_p=1.5 is outside"), ({"top_p": [0.5]}, "top_p has 1 values for 2 prompts"),
    ({"top_p": [0.5, None]}, r"top_p\[1\] must be a finite number \(got None\)"),
])
def test_bad_settings_say_what_is_wrong(kwargs, message):
    dec = decspec.compile("specs/speculative.dec", models=tables())
    with pytest.raises(DecError, match=message):
        dec.generate([[1], [2]], max_new_tokens=2, **kwargs)
    with pytest.raises(DecError, match=message):
        dec.stream([[1], [2]], max_new_tokens=2, **kwargs)


def test_what_cannot_take_settings():
    top_k = decspec.compile('decoder d() {\n target = model("target")\n sampler = top_k(3)\n}', models={"target": tables()["target"]})
    with pytest.raises(DecError, match=r"top_k must be an integer \(got 2.5 \(a float\)\)"):
        top_k.generate([[1]], top_k=2.5)
    assert len(top_k.generate([[1]], top_k=V + 5, max_new_tokens=3).tokens[0]) == 3
    with pytest.raises(DecError, match="has no temperature stage"):
        decspec.compile("specs/speculative_greedy.dec", models=tables()).generate([[1]], temperature=0.5)
    with pytest.raises(DecError, match="run on the eager and inductor backends, not on exact"):
        decspec.compile("specs/speculative.dec", models=tables(), backend="exact").generate([[1]], temperature=0.5)
    with pytest.raises(DecError, match="beam search .* does not take per-call sampler settings"):
        decspec.compile("specs/beam_search.dec", models={"target": tables()["target"]}).generate([[1]], temperature=0.5)
    greedy_only = decspec.compile("specs/typical_acceptance.dec", models=tables(), temperature=0.0)
    assert greedy_only.verdict.lossless
    with pytest.raises(DecError, match="temperature > 0 would make decoder 'typical_acceptance' lossy: verify = typical"):
        greedy_only.generate([[1]], temperature=[0.5])
    greedy_only.generate([[1]], temperature=0.0, max_new_tokens=3)  # staying greedy is fine


# --------------------------------------------------------------------------- logprobs, per-row max_new_tokens


def direct_logprobs(target, prompt, row, stages):
    """log p of each token of `row` under an order-1 table target after `stages` (penalties count all before it)."""
    from decspec.stdlib.penalties import token_counts

    seq, out = list(prompt) + list(row), []
    for j, t in enumerate(row):
        before = seq[:len(prompt) + j]
        counts = token_counts(torch.tensor([before]), torch.tensor([len(before)]), vocab=V)
        logits = apply_pipeline(target.logits[before[-1]][None], stages, counts)
        out.append(float(torch.log_softmax(logits.float(), -1)[0, t]))
    return out


@pytest.mark.parametrize("backend", ["eager", "exact", "inductor"])
def test_logprobs_are_the_targets_after_the_pipeline(backend):
    models = tables()
    dec = decspec.compile("specs/penalties.dec", models=models, k=3, backend=backend)
    prompts = [[1, 2, 1], [3]]
    out = dec.generate(prompts, max_new_tokens=[5, 8], seed=4, logprobs=True)
    assert [len(r) for r in out.tokens] == [5, 8]
    stages = (("repetition_penalty", (("r", 1.2),)), ("temperature", (("t", 0.8),)), ("typical_p", (("p", 0.95),)))
    for b in range(2):
        assert out.logprobs[b] == pytest.approx(direct_logprobs(models["target"], prompts[b], out.tokens[b], stages), abs=1e-5)
    if backend != "exact":  # per-call settings: eager and inductor
        hot = dec.generate(prompts, max_new_tokens=6, seed=4, logprobs=True, temperature=[1.5, 0.3], repetition_penalty=2.0)
        for b, t in enumerate([1.5, 0.3]):
            mine = (("repetition_penalty", (("r", 2.0),)), ("temperature", (("t", t),)), ("typical_p", (("p", 0.95),)))
            assert hot.logprobs[b] == pytest.approx(direct_logprobs(models["target"], prompts[b], hot.tokens[b], mine), abs=1e-5)


def test_logprobs_stream_with_their_tokens_and_are_cut_with_them():
    target = TableModel.random(V, 1, seed=2)
    target.tokenizer = type("Letters", (), {"decode": staticmethod(lambda ids: "".join("abcdefgh"[i] for i in ids)), "name": "letters",
                                            "chat_template": None})()
    dec = decspec.compile("specs/speculative.dec", target=target, draft=TableModel.random(V, 1, seed=3), k=3)
    full = dec.generate([[1]], max_new_tokens=12, seed=1, logprobs=True)
    stream = dec.stream([[1]], max_new_tokens=12, seed=1, logprobs=True)
    deltas = list(stream)
    assert [lp for d in deltas for lp in d.logprobs] == full.logprobs[0] == stream.result.logprobs[0]
    assert all(len(d.logprobs) == len(d.tokens) for d in deltas)
    stop = full.text[0][4:6]
    cut = dec.generate([[1]], max_new_tokens=12, seed=1, logprobs=True, stop=stop)
    assert cut.logprobs[0] == full.logprobs[0][:len(cut.tokens[0])]
    greedy = decspec.compile("specs/speculative_greedy.dec", models=tables()).generate([[1]], max_new_tokens=4, logprobs=True)
    assert greedy.logprobs == [[0.0] * 4]  # a greedy pipeline: the kept token has all the mass


GRAMMAR = 'decoder g() {\n target = model("target")\n draft = model("draft")\n grammar = regex("[ab]+c?")\n' \
          ' propose = autoregressive(draft, max = 2)\n verify = rejection\n}'


def test_logprobs_under_a_grammar_multiply_to_the_exact_probability_of_the_sequence():
    """Under a grammar the target is masked before the sampler: the logprobs of a generated sequence sum to the log of
    the probability the exact backend computes for it (a speculative decoder, so the draft's drafts are in play)."""
    models = {"target": TableModel.random(V, 1, seed=0, eos_token_id=V - 1),
              "draft": TableModel.random(V, 1, seed=1, eos_token_id=V - 1)}
    vocab = [bytes([c]) for c in b"abcdefg"] + [None]
    dist = decspec.compile(GRAMMAR, models=models, vocab=vocab, backend="exact").distribution([1], 4)
    dec = decspec.compile(GRAMMAR, models=models, vocab=vocab)
    for seed in range(6):
        out = dec.generate([[1], [1]], max_new_tokens=4, seed=seed, logprobs=True)
        for tokens, scores in zip(out.tokens, out.logprobs):
            assert len(scores) == len(tokens) and math.exp(sum(scores)) == pytest.approx(dist[tuple(tokens)], rel=1e-5)


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_a_row_with_its_own_seed_draws_the_same_whatever_rows_share_its_call(backend):
    """generate(seed=[...]): each seeded row draws from its own stream (backends/draws.py), so its tokens are the same
    alone, in another slot beside other rows, and beside a row with another seed; rows without a seed differ."""
    dec = decspec.compile("specs/speculative.dec", models=tables(), k=3, backend=backend)
    alone = dec.generate([[1]], max_new_tokens=16, seed=[5]).tokens[0]
    crowded = dec.generate([[3, 4], [2], [1]], max_new_tokens=16, seed=[None, 9, 5]).tokens
    assert crowded[2] == alone
    assert dec.generate([[1], [1]], max_new_tokens=16, seed=[5, 5]).tokens == [alone, alone]
    unseeded = {tuple(dec.generate([[1]], max_new_tokens=16, seed=[None]).tokens[0]) for _ in range(4)}
    assert len(unseeded) > 1
    with pytest.raises(DecError, match="seed is a list of 1 seeds for 2 prompts"):
        dec.generate([[1], [2]], seed=[1])
    with pytest.raises(DecError, match=r"seed 1 must be an integer in \[-2\*\*63, 2\*\*64\)"):
        dec.generate([[1], [2]], seed=[1, 2.5])


def test_what_logprobs_and_per_row_counts_refuse():
    dec = decspec.compile("specs/speculative.dec", models=tables())
    with pytest.raises(DecError, match=r"logprobs must be True or False \(got 'yes' \(a str\)\)"):
        dec.generate([[1]], logprobs="yes")
    with pytest.raises(DecError, match="does not report logprobs"):
        decspec.compile("specs/beam_search.dec", models={"target": tables()["target"]}).generate([[1]], logprobs=True)
    with pytest.raises(DecError, match="max_new_tokens has 1 counts for 2 prompts"):
        dec.generate([[1], [2]], max_new_tokens=[3])
    with pytest.raises(DecError, match=r"max_new_tokens\[1\] must be a positive integer \(got 0\)"):
        dec.generate([[1], [2]], max_new_tokens=[3, 0])
    with pytest.raises(DecError, match="takes one max_new_tokens for every prompt"):
        decspec.compile("specs/beam_search.dec", models={"target": tables()["target"]}).generate([[1], [2]], max_new_tokens=[2, 3])


def test_top_logprobs_are_the_most_likely_tokens_after_the_pipeline():
    """top_logprobs=n: at each position the n most likely tokens under the target after the pipeline, best first,
    computed here from the table; streamed deltas carry their tokens' entries; n past the vocabulary gives all of it."""
    models = tables()
    dec = decspec.compile("specs/penalties.dec", models=models, k=3)
    stages = (("repetition_penalty", (("r", 1.2),)), ("temperature", (("t", 0.8),)), ("typical_p", (("p", 0.95),)))
    out = dec.generate([[1, 2]], max_new_tokens=6, seed=2, top_logprobs=3)
    assert out.logprobs is not None and len(out.top_logprobs[0]) == 6
    seq = [1, 2] + out.tokens[0]
    for j, alts in enumerate(out.top_logprobs[0]):
        before = seq[:2 + j]
        counts = token_counts(torch.tensor([before]), torch.tensor([len(before)]), vocab=V)
        logp = torch.log_softmax(apply_pipeline(models["target"].logits[before[-1]][None], stages, counts).float(), -1)[0]
        best = logp.topk(3)
        finite = [(i, v) for i, v in zip(best.indices.tolist(), best.values.tolist()) if v > -math.inf]
        assert [a for a, _ in alts] == [i for i, _ in finite] and [v for _, v in alts] == pytest.approx([v for _, v in finite], abs=1e-5)
    deltas = list(dec.stream([[1, 2]], max_new_tokens=6, seed=2, top_logprobs=3))
    assert [a for d in deltas for a in d.top_logprobs] == out.top_logprobs[0]
    assert all(len(a) <= V for a in dec.generate([[1]], max_new_tokens=3, top_logprobs=20).top_logprobs[0])
    assert dec.generate([[1]], max_new_tokens=3).top_logprobs is None
    with pytest.raises(DecError, match=r"top_logprobs must be an integer in \[0, 20\] \(got 21 \(an int\)\)"):
        dec.generate([[1]], top_logprobs=21)
