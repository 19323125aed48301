"""Exit policies that decide how many tokens to draft: `draft.cumprob` (carried across draft steps),
`predicted(...)` (registered acceptance predictors), and the cross-round policies `heuristic(...)`
and `bandit(...)` (a per-row length cap chosen on the host between rounds).

Claims: every one is lossless (exactly, on table models, over several rounds so that the
cross-round caps follow each world's own history; statistically where the exact backend is too
big), greedy speculation with each is greedy decoding, the inductor backend computes what eager
does (both draft schedules), and a compiled round never recompiles whatever lengths a policy picks.
"""
from __future__ import annotations

import re

import pytest
import torch

import decspec
from decspec.backends.speculation_length import Policies
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.predictors import register_predictor, unregister_predictor
from decspec.stdlib.speculation_length import Bandit, Heuristic
from decspec.testing import (assert_greedy_equivalent, assert_samples_match, exact_distribution, sequence_distribution,
                             target_distribution, tv_distance)

SPECS = ["entropy_exit", "dynamic_depth", "heuristic_schedule", "bandit", "predicted_exit"]
CROSS_ROUND = ["heuristic_schedule", "bandit"]


def spec(name: str) -> str:
    return f"specs/{name}.dec"


def pair(V: int, seed: int = 0, order: int = 1) -> dict:
    return {"target": TableModel.random(V, order, seed), "draft": TableModel.random(V, order, seed + 50, temperature=1.5)}


# --------------------------------------------------------------------------- heuristic = Hugging Face's schedule


def hf_schedule(start: int, rounds: list[tuple[int, int]]) -> list[int]:
    """transformers' AssistedCandidateGenerator: int(num_assistant_tokens) drafted per round, then
    update_candidate_strategy: += 2 if num_matches == candidates else max(1, n - 1)."""
    n, out = float(start), []
    for matches, candidates in rounds:
        out.append(int(n))
        n = n + 2 if matches == candidates else max(1.0, n - 1)
    return out + [int(n)]


@pytest.mark.parametrize("start", [1, 4, 5])
def test_heuristic_follows_transformers_update_candidate_strategy(start):
    rounds = [(5, 5), (2, 7), (0, 6), (0, 5), (0, 4), (0, 3), (0, 2), (1, 1), (3, 3), (0, 5)]
    policy, state, caps = Heuristic(max=64, start=start), None, []
    state = policy.start(1, seed=0)
    for matches, candidates in rounds:
        caps.append(int(policy.cap(state)))
        state = policy.update(state, torch.tensor([matches]), torch.tensor([candidates]))
    caps.append(int(policy.cap(state)))
    assert caps == hf_schedule(start, rounds)


def test_heuristic_grows_by_two_while_everything_is_accepted():
    """Draft = target under greedy: every draft is accepted, so rounds draft 5, 7, 9, ... up to k, per row."""
    target = TableModel.random(6, 1, 0)
    dec = decspec.compile(spec("heuristic_schedule"), target=target, draft=target, temperature=0.0, k=10)
    stats = dec.generate([[1], [2, 3]], max_new_tokens=40, seed=0, eos_token_id=None).stats
    assert [r[0] for r in stats.drafted[:5]] == [5, 7, 9, 10, 10]
    assert all(a == d for ra, rd in zip(stats.accepted, stats.drafted) for a, d in zip(ra, rd))


def test_heuristic_shrinks_per_row():
    policy = Heuristic(max=8, start=3)
    state = policy.start(2, seed=0)
    state = policy.update(state, torch.tensor([3, 0]), torch.tensor([3, 3]))
    assert policy.cap(state).tolist() == [5, 2]
    for _ in range(4):
        state = policy.update(state, torch.tensor([0, 0]), torch.tensor([1, 1]))
    assert policy.cap(state).tolist() == [1, 1]  # never below 1


# --------------------------------------------------------------------------- bandit


def test_ucb_plays_every_arm_once_then_the_best():
    policy = Bandit(max=8, arms=(1, 2, 4, 8), algorithm="ucb")
    state, played = policy.start(1, seed=0), []
    for _ in range(400):
        cap = int(policy.cap(state))
        played.append(cap)
        accepted = min(cap, 2)  # two tokens accepted at most: arm 2 (3 tokens for 1 + 0.2) is the best
        state = policy.update(state, torch.tensor([accepted]), torch.tensor([cap]))
    assert played[:4] == [1, 2, 4, 8]
    late = played[200:]
    assert max(set(late), key=late.count) == 2  # UCB1 exploits the best arm most (its exploration term fades slowly)


def test_bandit_rewards_lie_in_the_unit_interval():
    policy = Bandit(max=8, arms=(1, 2, 4, 8), draft_cost=0.1)
    drafted = torch.tensor([1, 2, 4, 8, 8, 0])
    r = policy.reward(torch.tensor([1, 2, 4, 8, 0, 0]), drafted)
    assert (r >= 0).all() and (r <= 1 + 1e-12).all() and r.max() == pytest.approx(1.0)


def test_exp3_is_seeded_and_deterministic():
    def caps(seed: int) -> list[int]:
        policy = Bandit(max=8, arms=(1, 2, 4, 8), algorithm="exp3", gamma=0.3)
        state, out = policy.start(3, seed=seed), []
        for t in range(20):
            cap = policy.cap(state)
            out += cap.tolist()
            state = policy.update(state, torch.minimum(cap, torch.tensor([1, 3, 8])), cap)
        return out

    assert caps(0) == caps(0)
    assert caps(0) != caps(1)
    assert set(caps(0)) == {1, 2, 4, 8}  # EXP3 explores every arm


def test_bandit_in_a_decoder_is_deterministic_given_the_seed():
    dec = decspec.compile(spec("bandit"), models=pair(5), algorithm="exp3")
    a = dec.generate([[1], [2]], max_new_tokens=24, seed=3)
    b = dec.generate([[1], [2]], max_new_tokens=24, seed=3)
    assert a.tokens == b.tokens and a.stats.drafted == b.stats.drafted


def test_bandit_arms_must_fit_the_draft():
    text = open(spec("bandit")).read().replace("max = 8", "max = 4")
    with pytest.raises(DecError, match="bandit arm 8 is longer than the draft's max = 4"):
        decspec.compile(text, models=pair(4))
    with pytest.raises(DecError, match="unknown bandit algorithm"):
        decspec.compile(spec("bandit"), models=pair(4), algorithm="thompson")


# --------------------------------------------------------------------------- draft.cumprob and predicted


def test_cumprob_is_the_product_of_the_drafts_own_probabilities():
    """Greedy drafts from a bigram table: the row stops after the first step at which the product of
    the draft's probabilities of its tokens falls below the threshold."""
    V, k, threshold = 6, 6, 0.05
    models = pair(V, seed=2)
    draft = models["draft"]
    dec = decspec.compile(spec("dynamic_depth"), models=models, temperature=0.0, k=k, threshold=threshold)
    out = dec.generate([[1]], max_new_tokens=1, seed=0)
    prev, product, expected = 1, 1.0, 0
    for _ in range(k):
        probs = torch.softmax(draft.logits[prev].double(), -1)
        token = int(probs.argmax())
        product *= float(probs[token])
        expected += 1
        if product < threshold:
            break
        prev = token
    assert out.stats.drafted[0] == [expected]


def test_a_registered_predictor_decides_and_sees_the_features():
    seen = []

    def stop_after_two(f):
        seen.append(sorted(f))
        return (f["step"] < 1).to(f["prob"].dtype).expand_as(f["prob"])  # 'accept' only after step 0

    register_predictor("two_steps", stop_after_two)
    try:
        dec = decspec.compile(spec("predicted_exit"), models=pair(5), predictor="two_steps")
        stats = dec.generate([[1], [2, 3]], max_new_tokens=12, seed=0).stats
        assert {d for row in stats.drafted for d in row} == {2}
        assert seen[0] == ["cumprob", "entropy", "prob", "step"]
    finally:
        unregister_predictor("two_steps")


def test_an_unknown_predictor_is_reported_at_the_spec():
    with pytest.raises(DecError, match="unknown predictor 'confidance'") as info:
        decspec.compile(spec("predicted_exit"), models=pair(4), predictor="confidance")
    assert "confidence" in str(info.value) and "predicted_exit.dec:13" in str(info.value)


# --------------------------------------------------------------------------- losslessness


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("V, temperature", [(3, 1.0), (4, 0.7)])
def test_exactly_lossless_over_several_rounds(name, V, temperature):
    """4 new tokens: cross-round caps change between rounds, and each world follows its own history."""
    dec = decspec.compile(spec(name), models=pair(V, seed=V), temperature=temperature)
    got = exact_distribution(dec, [1], 4)
    assert got.rounds >= 2
    assert tv_distance(got, target_distribution(dec, [1], 4)) <= max(1e-12, got.error_bound)


def test_exact_worlds_keep_their_own_policy_state():
    """Two worlds that reach the same tokens with different histories are not merged: their next caps differ."""
    graph = run_pipeline(lower(load(spec("heuristic_schedule"))))
    policies = Policies.start(graph, 2, seed=0)
    policies.update(torch.tensor([5, 1]), torch.tensor([5, 5]))
    (op,) = [o for o in graph.walk() if o.name == "length_cap"]
    assert policies.cap(op).tolist() == [7, 4]
    key = policies.key()
    assert not torch.equal(key[0], key[1])
    assert policies.select(torch.tensor([1, 1])).cap(op).tolist() == [4, 4]


def test_exp3_bandit_is_lossless_statistically():
    """EXP3 with 8 arms up to 8 tokens is too big to enumerate at V = 5 over 4 tokens: chi-square of samples."""
    models = pair(5, seed=7, order=0)
    dec = decspec.compile(spec("bandit"), models=models, algorithm="exp3")
    out = dec.generate([[1]] * 3000, max_new_tokens=3, seed=0)
    assert len({d for row in out.stats.drafted for d in row}) > 1
    assert_samples_match(out.tokens, sequence_distribution(models["target"], [1], 3, []))


@pytest.mark.parametrize("name", SPECS)
def test_greedy_speculation_is_greedy_decoding(name):
    assert_greedy_equivalent(spec(name), models=pair(6, seed=1), prompts=[[1], [2, 3], [4]], max_new_tokens=10,
                             temperature=0.0, exact=False)


# --------------------------------------------------------------------------- inductor


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("schedule", ["unrolled", "host"])
def test_inductor_equals_eager_at_temperature_zero(name, schedule):
    models = pair(6, seed=4)
    eager = decspec.compile(spec(name), models=models, temperature=0.0)
    dec = decspec.compile(spec(name), models=models, temperature=0.0, backend="inductor")
    dec.backend_options = {"schedule": schedule}
    prompts = [[1, 2], [3], [4, 5, 0]]
    a, b = eager.generate(prompts, max_new_tokens=12, seed=0), dec.generate(prompts, max_new_tokens=12, seed=0)
    assert a.tokens == b.tokens
    assert a.stats.drafted == b.stats.drafted and a.stats.accepted == b.stats.accepted


def test_the_cap_is_an_input_of_the_generated_round():
    from decspec.backends.inductor import emit_python

    source = emit_python(run_pipeline(lower(load(spec("heuristic_schedule")))))
    read = re.search(r"(v\d+) = m\['length_cap:policy=\"heuristic\", max=16, start=5'\]", source)
    assert read, source
    assert f"cap={read.group(1)}" in source  # the draft loop takes the cap the round read from its inputs


def test_compiled_round_with_a_cross_round_policy_never_recompiles():
    """The heuristic changes every row's speculation length from round to round; the compiled round keeps one graph."""
    from torch._dynamo.utils import counters

    from decspec.stdlib.models.default import random_models

    torch._dynamo.reset()
    counters.clear()
    models = random_models(seed=3)
    overrides = dict(k=4, start=2, temperature=0.0)
    eager = decspec.compile(spec("heuristic_schedule"), models=models, **overrides)
    dec = decspec.compile(spec("heuristic_schedule"), models=models, backend="inductor", **overrides)
    dec.backend_options = {"compile": True, "schedule": "unrolled"}
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    first = dec.generate(prompts, max_new_tokens=16, seed=0)
    graphs = counters["stats"]["unique_graphs"]
    second = dec.generate([[5, 6], [7, 8, 9], [12]], max_new_tokens=16, seed=1)
    assert counters["stats"]["unique_graphs"] == graphs == 1
    assert not counters["graph_break"]
    assert first.tokens == eager.generate(prompts, max_new_tokens=16, seed=0).tokens
    assert len({d for row in first.stats.drafted + second.stats.drafted for d in row}) > 1  # the caps did vary


# --------------------------------------------------------------------------- a cross-round length and a `when` condition together


def until_source(stop: str, verify: str = "rejection", k: int = 4) -> str:
    return f"""decoder assisted(temperature: float = 1.0) {{
        target  = model("target")
        draft   = model("draft")
        sampler = temperature(temperature)
        propose = autoregressive(draft, max = {k})
        stop    = {stop}
        verify  = {verify}
    }}"""


UNTIL = ["heuristic(start = 2, until = draft.prob < 0.5)", "bandit(arms = [1, 3], until = draft.entropy > 0.9)"]


@pytest.mark.parametrize("stop", UNTIL)
def test_until_is_exactly_lossless_over_several_rounds(stop):
    dec = decspec.compile(until_source(stop, k=3), models=pair(3, seed=3))
    got = exact_distribution(dec, [1], 4)
    assert got.rounds >= 2
    assert tv_distance(got, target_distribution(dec, [1], 4)) <= max(1e-12, got.error_bound)


def test_until_stops_rows_within_the_length_the_policy_chose():
    """Hugging Face's assisted generation (heuristic schedule + assistant_confidence_threshold): fewer drafts
    than the heuristic alone, never more than its cap, and the heuristic still sees drafted vs accepted."""
    models = pair(6, seed=2)
    prompts = [[1, 2], [3], [4, 5, 0]]
    alone = decspec.compile(until_source("heuristic(start = 5)", k=8), models=models).generate(prompts, max_new_tokens=24, seed=0)
    both = decspec.compile(until_source("heuristic(start = 5, until = draft.prob < 0.4)", k=8), models=models).generate(
        prompts, max_new_tokens=24, seed=0)
    assert sum(map(sum, both.stats.drafted)) < sum(map(sum, alone.stats.drafted))
    assert both.stats.drafted[0][0] <= 5  # the first round's cap


@pytest.mark.parametrize("schedule", ["unrolled", "host"])
def test_until_greedy_is_greedy_decoding_and_inductor_equals_eager(schedule):
    source = until_source("heuristic(start = 3, until = draft.prob < 0.4)", verify="greedy", k=6)
    models = pair(6, seed=4)
    assert_greedy_equivalent(source, models=models, prompts=[[1], [2, 3], [4]], max_new_tokens=10, temperature=0.0, exact=False)
    eager = decspec.compile(source, models=models, temperature=0.0)
    dec = decspec.compile(source, models=models, temperature=0.0, backend="inductor")
    dec.backend_options = {"schedule": schedule}
    prompts = [[1, 2], [3], [4, 5, 0]]
    a, b = eager.generate(prompts, max_new_tokens=12, seed=0), dec.generate(prompts, max_new_tokens=12, seed=0)
    assert a.tokens == b.tokens
    assert a.stats.drafted == b.stats.drafted and a.stats.accepted == b.stats.accepted


def test_until_errors():
    with pytest.raises(DecError, match="stops every round after its first draft"):
        decspec.compile(until_source("heuristic(until = true)"), models=pair(3))
    with pytest.raises(DecError, match="draft statistic"):
        decspec.compile(until_source("bandit(until = draft.prob)"), models=pair(3))
