"""Skip-layer sets chosen per context: `dynamic_skip(target, skips = ["1 2", ...], policy = "del" | "ucb")` (SWIFT, CLaSp).

The arms are layer-skipped views of the target, each costing its kept layers / the target's; the decoder is
exactly lossless on layered table models while worlds play different skip sets; greedy is greedy decoding;
bad skip sets are diagnostics at the draft source; the compiled backend refuses the ops naming their line.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import decspec
from decspec.backends.eager import dynamic_exit as rules
from decspec.backends.speculation_length import Policies
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.dynamic_exit import SkipSearch
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.models.views import SkipLayers
from decspec.testing import assert_greedy_equivalent, exact_distribution, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "swift_dynamic.dec"


def inline(propose: str) -> str:
    return f'decoder d() {{\n    target  = model("target")\n    propose = {propose}\n    verify  = rejection\n}}\n'


# --------------------------------------------------------------------------- the search policy


def search(pool: int = 2, arms=("1_2", "1_3", "2_3", "1_4", "2_4", "3_4")) -> SkipSearch:
    p = SkipSearch(max=4, arms=arms, pool=pool)
    p.costs = tuple(0.5 for _ in arms)
    return p


def test_the_search_pool_is_seeded_random_and_each_member_is_measured_first():
    p = search(pool=3)
    pools = {s: tuple(p.start(1, seed=s)["pool"][0].tolist()) for s in range(8)}
    assert len(set(pools.values())) > 1 and tuple(p.start(1, seed=3)["pool"][0].tolist()) == pools[3]
    state = p.start(1, seed=0)
    played = []
    for _ in range(3):  # every round 0 accepted: no member is better, each is played once in pool order
        played.append(int(p.cap(state)))
        state = p.update(state, torch.tensor([0]), torch.tensor([4]))
    assert tuple(played) == pools[0]


def test_the_worst_member_is_replaced_by_a_one_layer_mutation_of_the_best():
    p = search(pool=2)
    sets = [set(a.split("_")) for a in p.arms]
    for seed in range(6):
        state = p.start(1, seed=seed)
        first, second = state["pool"][0].tolist()
        state = p.update(state, torch.tensor([4]), torch.tensor([4]))  # the first member: all 4 accepted
        state = p.update(state, torch.tensor([0]), torch.tensor([4]))  # the second: none
        kept, new = state["pool"][0].tolist()
        assert kept == first and new not in (first, second)
        assert len(sets[new] - sets[first]) == 1 and len(sets[new]) == 2  # one skipped layer swapped
        assert int(p.cap(state)) == new  # the newcomer is measured next


def test_the_search_plays_its_best_measured_member_when_all_are_measured():
    p = search(pool=3, arms=("1_2", "1_3", "2_3"))  # the pool is every arm: no mutation is possible
    state = p.start(1, seed=0)
    order = state["pool"][0].tolist()
    for a in (1, 3, 2):
        state = p.update(state, torch.tensor([a]), torch.tensor([4]))
    assert sorted(state["pool"][0].tolist()) == [0, 1, 2] and int(p.cap(state)) == order[1]


def test_the_search_arms_are_every_set_of_r_layers():
    dec = decspec.compile(SPEC, models={"target": LayeredTableModel.random(3, 1, seed=0)}, policy="search", skip=2, layers=[0, 1, 3])
    text = str(dec.graph)
    assert 'draft_arm[policy="skip_search", max=4, arms=["0_1", "0_3", "1_3"], pool=3' in text
    assert sorted(dec._bound_models()) == ["target", "target/skip0_1", "target/skip0_3", "target/skip1_3"]


# --------------------------------------------------------------------------- lowering, binding, costs


def test_the_round_reads_its_arm_and_selects_the_skip_view():
    text = str(run_pipeline(lower(load(SPEC, overrides={"skips": ["2 1", "3_2"]}))))
    assert 'draft_arm[policy="exit_layer", max=4, arms=["1_2", "2_3"], algorithm="del", model="target"' in text
    assert 'model_select[models=["target/skip1_2", "target/skip2_3"], last=true]' in text


def test_the_binder_makes_one_skip_view_per_set():
    dec = decspec.compile(SPEC, models={"target": LayeredTableModel.random(3, 1, seed=0)}, skips=["1 2", "0,3", "2"])
    bound = dec._bound_models()
    assert sorted(bound) == ["target", "target/skip0_3", "target/skip1_2", "target/skip2"]
    assert all(isinstance(bound[r], SkipLayers) for r in bound if r != "target")
    assert [bound[r].skip for r in ("target/skip1_2", "target/skip0_3", "target/skip2")] == [(1, 2), (0, 3), (2,)]


def test_the_arm_costs_are_the_kept_layers_over_the_targets():
    dec = decspec.compile(SPEC, models={"target": LayeredTableModel.random(3, 1, seed=0)}, skips=["1 2 3", "2"])
    graph = dec.graph
    policies = Policies.start(graph, 1, seed=0)
    (op,) = [o for o in graph.walk() if o.name == "draft_arm"]
    bound = dec._bound_models()
    state = SimpleNamespace(policies=policies, device=torch.device("cpu"), sessions={r: SimpleNamespace(model=m) for r, m in bound.items()})
    assert rules.draft_arm(state, op)[0].tolist() == [0]
    assert policies.entries[next(iter(policies.entries))][0].costs == (0.25, 0.75)  # 1 of 4 layers kept, 3 of 4


def test_a_skip_view_runs_the_target_without_its_layers():
    target = LayeredTableModel.random(3, 1, seed=3)
    dec = decspec.compile(SPEC, models={"target": target}, skips=["1 2"])
    view = dec._bound_models()["target/skip1_2"]
    assert view.num_layers == 2 and target.layers_to_run(None, view.skip) == [0, 3]


# --------------------------------------------------------------------------- losslessness


@pytest.mark.parametrize("algorithm", ["del", "ucb"])
@pytest.mark.parametrize("V, order, temperature", [(3, 1, 1.0), (2, 0, 0.7)])
def test_exactly_lossless_while_worlds_play_different_skip_sets(algorithm, V, order, temperature, monkeypatch):
    played = []
    original = rules.draft_arm

    def spy(state, op):
        (arm,) = original(state, op)
        played.append(arm.tolist())
        return (arm,)

    monkeypatch.setitem(decspec.backends.exact.RULES, "draft_arm", decspec.backends.exact.rules.exact(spy, "draft_arm"))
    models = {"target": LayeredTableModel.random(V, order, seed=V + order)}
    dec = decspec.compile(SPEC, models=models, policy=algorithm, temperature=temperature, k=1, skips=["1 2 3", "0 2", "3"])
    got = exact_distribution(dec, [1], 6)
    assert got.rounds >= 4
    assert any(len(set(arms)) > 1 for arms in played), "no round had worlds playing different skip sets"
    assert tv_distance(got, target_distribution(dec, [1], 6)) <= max(1e-12, got.error_bound)


@pytest.mark.parametrize("V, order, temperature", [(3, 1, 1.0), (2, 0, 0.7)])
def test_exactly_lossless_while_the_search_mutates_its_pool(V, order, temperature, monkeypatch):
    pools = []
    original = SkipSearch.update

    def spy(self, state, accepted, drafted):
        new = original(self, state, accepted, drafted)
        pools.append((state["pool"].tolist(), new["pool"].tolist()))
        return new

    monkeypatch.setattr(SkipSearch, "update", spy)
    models = {"target": LayeredTableModel.random(V, order, seed=V + order)}
    dec = decspec.compile(SPEC, models=models, policy="search", skip=2, layers=[0, 1, 2, 3], pool=2, temperature=temperature, k=1)
    got = exact_distribution(dec, [1], 6)
    assert any(old != new for old, new in pools), "the search never replaced a pool member"
    assert tv_distance(got, target_distribution(dec, [1], 6)) <= max(1e-12, got.error_bound)


def test_exactly_lossless_with_an_exit_condition_and_a_top_k_sampler():
    models = {"target": LayeredTableModel.random(3, 1, seed=5, eos_token_id=2)}
    src = ('decoder d(s: list[str] = ["0 1", "2"]) {\n    target  = model("target")\n    sampler = top_k(2)\n'
           '    propose = dynamic_skip(target, skips = s, max = 3, policy = "ucb")\n    stop    = when draft.prob < 0.6\n'
           '    verify  = rejection\n}\n')
    dec = decspec.compile(src, models=models)
    got = exact_distribution(dec, [0], 4)
    assert tv_distance(got, target_distribution(dec, [0], 4)) <= max(1e-12, got.error_bound)


@pytest.mark.parametrize("algorithm", ["del", "ucb", "search"])
def test_greedy_is_greedy_decoding(algorithm):
    over = dict(skip=2, layers=[0, 1, 2, 3], pool=2) if algorithm == "search" else {}
    assert_greedy_equivalent(SPEC, models={"target": random_models(seed=1)["target"]}, prompts=[[1], [2, 3], [4]],
                             max_new_tokens=10, temperature=0.0, policy=algorithm, exact=False, **over)


def test_the_skip_views_that_draft_are_the_ones_called():
    dec = decspec.compile(SPEC, models={"target": random_models(seed=1)["target"]}, skips=["1", "1 2"], policy="ucb")
    calls = dec.generate([[1, 2, 3]], max_new_tokens=24, seed=0).stats.model_calls
    assert calls["target/skip1"] > 0 and calls["target/skip1_2"] > 0 and not any(r.startswith("target/skip2") for r in calls)


# --------------------------------------------------------------------------- diagnostics


@pytest.mark.parametrize("propose, message", [
    ('dynamic_skip(target, skips = ["1 9"])', "skip set '1 9' skips layer 9, but model 'target' has 4 layers"),
    ('dynamic_skip(target, skips = ["0 1 2 3"])', "skips all 4 layers"),
    ('dynamic_skip(target, skips = ["1 2", "2 1"])', "skip sets must differ from each other"),
    ('dynamic_skip(target, skips = [])', "dynamic_skip needs at least one skip set"),
    ('dynamic_skip(target, skips = ["one"])', "skip set 'one' is not a list of layer numbers"),
    ('dynamic_skip(target, policy = "greedy")', "unknown dynamic_skip policy 'greedy'"),
    ('dynamic_skip(early_exit(target, layer = 2))', "dynamic_skip drafts from a model bound by name"),
    ('dynamic_skip(target, policy = "search")', "searches sets of skip = 0 layers"),
    ('dynamic_skip(target, skip = 3, layers = [1, 2, 3])', "searches sets of skip = 3 layers among layers"),
    ('dynamic_skip(target, skip = 7, layers = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])', "would bind 6435 views"),
    ('dynamic_skip(target, skip = 1, layers = [1, 5])', "skips layer 5, but model 'target' has 4 layers"),
])
def test_bad_input_is_a_diagnostic_at_the_draft_source(propose, message):
    with pytest.raises(DecError, match=message) as info:
        decspec.compile(inline(propose), models={"target": LayeredTableModel.random(3, 1, seed=0)})._bound_models()
    assert "3:15" in str(info.value)  # the propose line, the call's column


def test_a_model_that_cannot_skip_layers_is_a_diagnostic():
    with pytest.raises(DecError, match="dynamic_skip needs a model that can run any subset of its layers"):
        decspec.compile(inline("dynamic_skip(target)"), models={"target": TableModel.random(3, 1, seed=0)})._bound_models()


def test_the_inductor_round_plays_the_same_skip_sets_as_eager():
    """As tests/test_dynamic_exit.py: masked arms over the skip-set views give the eager tokens and acceptances."""
    from test_dynamic_exit import same_on_inductor_as_eager

    same_on_inductor_as_eager(SPEC)


def test_the_module_examples_run():
    import doctest

    from decspec.stdlib import dynamic_exit

    result = doctest.testmod(dynamic_exit, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0
