"""A draft layer chosen per context: `dynamic_exit(target, layers = [...], policy = "del" | "ucb")`.

The arm policies choose per row from the rows' own history; `model_select` gives each row its own
view's logits; the decoder is exactly lossless on layered table models while worlds play different
layers; greedy is greedy decoding; bad layers and policies are diagnostics; the compiled backends
refuse the new ops naming them and their .dec line.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import decspec
from decspec.backends.eager import dynamic_exit as rules
from decspec.backends.prefix import PrefixCache
from decspec.backends.speculation_length import Policies
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.dynamic_exit import ExitPolicy, expected_tokens
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.models.views import EarlyExit
from decspec.testing import assert_greedy_equivalent, exact_distribution, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "dynamic_exit.dec"


def inline(propose: str) -> str:
    return f'decoder d() {{\n    target  = model("target")\n    propose = {propose}\n    verify  = rejection\n}}\n'


def policy(algorithm: str, arms=(1, 2, 3), k: int = 4) -> ExitPolicy:
    p = ExitPolicy(max=k, arms=arms, algorithm=algorithm)
    p.costs = tuple(a / 4 for a in arms)
    return p


def play(p: ExitPolicy, rounds: list[tuple[list[int], list[int]]]):
    """Run the policy over rounds of (accepted [B], drafted [B]); -> the arms played, one list per round."""
    state = p.start(len(rounds[0][0]), seed=0)
    played = []
    for accepted, drafted in rounds:
        played.append(p.cap(state).tolist())
        state = p.update(state, torch.tensor(accepted), torch.tensor(drafted))
    return played, state


# --------------------------------------------------------------------------- policies


@pytest.mark.parametrize("algorithm", ["del", "ucb"])
def test_every_layer_is_played_once_in_order_first(algorithm):
    played, _ = play(policy(algorithm), [([0], [4])] * 3)
    assert played == [[0], [1], [2]]


@pytest.mark.parametrize("algorithm", ["del", "ucb"])
def test_a_cheap_layer_that_is_always_accepted_wins(algorithm):
    """Layer 1 (cost 1/4) commits 5 tokens a round; layers 2 and 3 (costlier) commit 1: the policy settles on layer 1."""
    p = policy(algorithm)
    state = p.start(1, seed=0)
    played = []
    for _ in range(40):
        arm = int(p.cap(state))
        played.append(arm)
        accepted = 4 if arm == 0 else 0
        state = p.update(state, torch.tensor([accepted]), torch.tensor([4]))
    assert played.count(0) >= 30  # UCB1 still explores now and then

def test_del_moves_to_a_deeper_layer_when_the_shallow_one_is_never_accepted():
    """DEL's tokens per cost: layer 1 accepts nothing (1 token per 2 target calls), layer 3 everything (5 per 4)."""
    p = policy("del")
    state = p.start(1, seed=0)
    played = []
    for _ in range(120):
        arm = int(p.cap(state))
        played.append(arm)
        state = p.update(state, torch.tensor([{0: 0, 1: 1, 2: 4}[arm]]), torch.tensor([4]))
    assert played[-40:].count(2) >= 36  # the confidence bonus still tries the others now and then
    assert state["trials"][0].tolist()[0] == played.count(0)  # a round with the first draft rejected tests one draft


def test_rows_follow_their_own_history():
    p = policy("del")
    history = [([4, 0], [4, 4]), ([0, 0], [4, 4]), ([0, 4], [4, 4])] + [([4, 0], [4, 4])] * 5
    state = p.start(2, seed=0)
    for accepted, drafted in history[:3]:  # row 0: only layer 1 accepted; row 1: only layer 3
        state = p.update(state, torch.tensor(accepted), torch.tensor(drafted))
    for _ in range(20):
        arm = p.cap(state)
        accepted = torch.where(arm == torch.tensor([0, 2]), 4, 0)
        state = p.update(state, accepted, torch.tensor([4, 4]))
    assert p.cap(state).tolist() == [0, 2]


def test_expected_tokens_is_the_geometric_sum():
    alpha = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert expected_tokens(alpha, 3).tolist() == [1.0, 1.875, 4.0]


def test_ucb_rewards_lie_in_the_unit_interval():
    p = policy("ucb", k=4)
    _, state = play(p, [([a], [d]) for d in range(5) for a in range(d + 1)])
    assert float((state["total"] / state["plays"].clamp(min=1)).max()) <= 1.0
    assert p.scale() == pytest.approx(5 / 2)  # layer 1 at 4 drafts: 5 tokens for 1 + 4/4 target calls


# --------------------------------------------------------------------------- lowering and rules


def test_the_round_reads_its_arm_and_selects_the_view():
    text = str(run_pipeline(lower(load(SPEC))))
    assert 'draft_arm[policy="exit_layer", max=4, arms=[2, 3, 4], algorithm="del", model="target"' in text
    assert 'model_select[models=["target/exit2", "target/exit3", "target/exit4"], last=true]' in text


def test_the_binder_makes_one_view_per_layer():
    dec = decspec.compile(SPEC, models={"target": LayeredTableModel.random(3, 1, seed=0)})
    bound = dec._bound_models()
    assert sorted(bound) == ["target", "target/exit2", "target/exit3", "target/exit4"]
    assert [bound[f"target/exit{i}"].layer for i in (2, 3, 4)] == [2, 3, 4]


def test_model_select_gives_each_row_its_own_views_logits():
    target = random_models(seed=2)["target"]
    views = {f"v{i}": EarlyExit(target, i) for i in (1, 3)}
    tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    length = torch.tensor([3, 2])
    ctx = SimpleNamespace(tokens=tokens, length=length)
    state = SimpleNamespace(sessions={r: PrefixCache(m, 2, 8) for r, m in views.items()})
    op = SimpleNamespace(param=lambda name: {"models": ("v1", "v3"), "last": True}[name])
    (got,) = rules.model_select(state, op, torch.tensor([1, 0]), ctx)
    fresh = {r: PrefixCache(m, 2, 8).logits(tokens, length) for r, m in views.items()}
    assert torch.allclose(got[0], fresh["v3"][0]) and torch.allclose(got[1], fresh["v1"][1])
    assert not torch.allclose(fresh["v1"], fresh["v3"])


def test_the_arm_policy_gets_its_costs_from_the_bound_models():
    dec = decspec.compile(SPEC, models={"target": LayeredTableModel.random(3, 1, seed=0)}, layers=[1, 3])
    graph = dec.graph
    policies = Policies.start(graph, 1, seed=0)
    (op,) = [o for o in graph.walk() if o.name == "draft_arm"]
    bound = dec._bound_models()
    state = SimpleNamespace(policies=policies, device=torch.device("cpu"), sessions={r: SimpleNamespace(model=m) for r, m in bound.items()})
    assert rules.draft_arm(state, op)[0].tolist() == [0]
    assert policies.entries[next(iter(policies.entries))][0].costs == (0.25, 0.75)


# --------------------------------------------------------------------------- losslessness


@pytest.mark.parametrize("algorithm", ["del", "ucb"])
@pytest.mark.parametrize("V, order, temperature", [(3, 1, 1.0), (2, 0, 0.7)])
def test_exactly_lossless_while_worlds_play_different_layers(algorithm, V, order, temperature, monkeypatch):
    played = []
    original = rules.draft_arm

    def spy(state, op):
        (arm,) = original(state, op)
        played.append(arm.tolist())
        return (arm,)

    monkeypatch.setitem(decspec.backends.exact.RULES, "draft_arm", decspec.backends.exact.rules.exact(spy, "draft_arm"))
    models = {"target": LayeredTableModel.random(V, order, seed=V + order)}
    dec = decspec.compile(SPEC, models=models, policy=algorithm, temperature=temperature, k=1, layers=[1, 2, 3])
    got = exact_distribution(dec, [1], 6)
    assert got.rounds >= 4
    assert any(len(set(arms)) > 1 for arms in played), "no round had worlds playing different layers"
    assert tv_distance(got, target_distribution(dec, [1], 6)) <= max(1e-12, got.error_bound)


def test_exactly_lossless_with_an_exit_condition_and_layers_from_a_parameter():
    models = {"target": LayeredTableModel.random(3, 1, seed=5, eos_token_id=2)}
    src = ('decoder d(ls: list[int] = [2, 4]) {\n    target  = model("target")\n    sampler = top_k(2)\n'
           '    propose = dynamic_exit(target, layers = ls, max = 3, policy = "ucb")\n    stop    = when draft.prob < 0.6\n'
           '    verify  = rejection\n}\n')
    dec = decspec.compile(src, models=models)
    got = exact_distribution(dec, [0], 4)
    assert tv_distance(got, target_distribution(dec, [0], 4)) <= max(1e-12, got.error_bound)


@pytest.mark.parametrize("algorithm", ["del", "ucb"])
def test_greedy_is_greedy_decoding(algorithm):
    assert_greedy_equivalent(SPEC, models={"target": random_models(seed=1)["target"]}, prompts=[[1], [2, 3], [4]],
                             max_new_tokens=10, temperature=0.0, policy=algorithm, exact=False)


def test_the_views_that_draft_are_the_ones_called():
    dec = decspec.compile(SPEC, models={"target": random_models(seed=1)["target"]}, layers=[1, 3])
    calls = dec.generate([[1, 2, 3]], max_new_tokens=24, seed=0).stats.model_calls
    assert calls["target/exit1"] > 0 and calls["target/exit3"] > 0 and "target/exit2" not in calls


# --------------------------------------------------------------------------- diagnostics


@pytest.mark.parametrize("propose, message", [
    ("dynamic_exit(target, layers = [2, 9])", "dynamic_exit at layer 9, but model 'target' has 4 layers"),
    ("dynamic_exit(target, layers = [2, 2])", "dynamic_exit's layers must differ from each other"),
    ("dynamic_exit(target, layers = [])", "dynamic_exit needs at least one layer"),
    ("dynamic_exit(target, layers = [0, 1])", "exit layers >= 1, found 0"),
    ("dynamic_exit(target, policy = \"greedy\")", "unknown dynamic_exit policy 'greedy'"),
    ("dynamic_exit(early_exit(target, layer = 2))", "dynamic_exit drafts from a model bound by name"),
])
def test_bad_input_is_a_diagnostic_at_the_draft_source(propose, message):
    with pytest.raises(DecError, match=message) as info:
        decspec.compile(inline(propose), models={"target": LayeredTableModel.random(3, 1, seed=0)})._bound_models()
    assert "3:15" in str(info.value)  # the propose line, the call's column


def test_a_model_without_layers_is_a_diagnostic():
    with pytest.raises(DecError, match="dynamic_exit needs a model with layers"):
        decspec.compile(inline("dynamic_exit(target)"), models={"target": TableModel.random(3, 1, seed=0)})._bound_models()


def test_the_inductor_round_plays_the_same_arms_as_eager():
    """Issue 18, item 3: the arm is a round input (chosen on the host between rounds, as a length cap) and
    model_select calls every view over the batch, each row keeping its own's (masked arms, kernels.select_rows): the
    eager tokens and acceptances, greedy and sampled, on the shipped target (rows play different arms over rounds)."""
    same_on_inductor_as_eager(SPEC)


def test_the_inductor_round_counts_every_view_it_calls():
    """Masked arms call every view in every draft step; the stats say so (codegen.called_roles), where eager's count
    only the views some row chose."""
    from decspec.stdlib.models.pretrained import reference_models

    stats = decspec.compile(SPEC, target=reference_models()["target"], backend="inductor").generate(
        ["def f(x):"], max_new_tokens=12).stats
    views = [r for r in stats.model_calls if r != "target"]
    assert len(views) == 3 and all(stats.model_calls[v] == 4 * stats.rounds + 1 for v in views)  # k = 4 steps, + prefill


def same_on_inductor_as_eager(spec) -> None:
    """`spec` on the shipped target, eager and inductor: the same tokens and acceptances, greedy and sampled."""
    from decspec.stdlib.models.pretrained import reference_models

    target = reference_models()["target"]
    prompts = ["def add(a, b):", "class Stack:", "import os\n"]
    for temperature, seed in ((0.0, 0), (1.0, 3)):
        eager = decspec.compile(spec, target=target, temperature=temperature).generate(prompts, max_new_tokens=24, seed=seed)
        emitted = decspec.compile(spec, target=target, temperature=temperature, backend="inductor").generate(
            prompts, max_new_tokens=24, seed=seed)
        assert emitted.tokens == eager.tokens and emitted.stats.accepted == eager.stats.accepted
