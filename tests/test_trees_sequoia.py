"""Sequoia's optimal static tree (Chen et al. 2024): `sequoia(draft, budget, depth, acceptance)`.

The dynamic program against brute force over every small tree, the shape as breadth-first parents, the irregular
tree ops it needs (each node its own number of children), exact losslessness on table models (sampled and
greedy), a deliberately wrong variant shown not lossless by the same check, and the errors a spec gets.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch

import decspec
from decspec.backends.eager import rules as eager
from decspec.backends.eager.tree import repeat, sample_distinct, tree_topk
from decspec.backends.exact import rules as exact_rules
from decspec.compiler.ir import Op
from decspec.compiler.lower import lower
from decspec.compiler.ops_tree import tree_depth
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.table import TableModel
from decspec.backends.eager.tree import residual, without_drawn
from decspec.stdlib.sequoia import expected_accepted, measure_acceptance, sequoia_graph, sequoia_parents, sequoia_value
from decspec.testing import assert_greedy_equivalent, assert_lossless, exact_distribution, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parents[1]
SEQUOIA = ROOT / "specs" / "sequoia_tree.dec"


def tables(V: int = 4, seed: int = 0, draft_temperature: float = 2.0) -> dict:
    return {"target": TableModel.random(V, 1, seed), "draft": TableModel.random(V, 1, seed + 100, temperature=draft_temperature)}


def spec(args: str, sampler: str = "temperature(1.0)", verify: str = "multi_rejection") -> str:
    return (f'decoder t() {{\n    target = model("target")\n    draft = model("draft")\n    sampler = {sampler}\n'
            f'    propose = sequoia(draft, {args})\n    verify = {verify}\n}}\n')


def op(name, **params):
    return Op(name, (), (), tuple(params.items()))


# --------------------------------------------------------------------------- the dynamic program


def brute_force(acceptance, budget: int, depth: int) -> float:
    """The best sum over nodes of the product of p_rank along the path, over every tree of at most `budget` nodes
    and `depth` levels (a node's k-th child has rank k), by enumerating the trees."""

    @lru_cache(maxsize=None)
    def forests(n: int, d: int, k: int) -> frozenset:
        """Values of every forest of children k, k+1, ... of one node, with at most n nodes and d levels below it."""
        out = {0.0}
        if d == 0 or k >= len(acceptance):
            return frozenset(out)
        for a in range(1, n + 1):  # child k's subtree takes a nodes
            for below in forests(a - 1, d - 1, 0):
                for rest in forests(n - a, d, k + 1):
                    out.add(acceptance[k] * (1 + below) + rest)
        return frozenset(out)

    return max(forests(budget, depth, 0))


@pytest.mark.parametrize("acceptance", [(0.6, 0.3), (0.8, 0.1, 0.05), (0.4, 0.4, 0.2), (0.2, 0.5), (0.9,), (0.3, 0.25, 0.2, 0.15)])
@pytest.mark.parametrize("budget, depth", [(1, 1), (3, 2), (5, 2), (6, 3), (7, 4)])
def test_the_program_finds_the_best_tree(acceptance, budget, depth):
    best = brute_force(acceptance, budget, depth)
    assert sequoia_value(acceptance, budget, depth) == pytest.approx(best, abs=1e-12)
    parents = sequoia_parents(acceptance, budget, depth)  # the shape the argmaxes give reaches that value
    assert expected_accepted(parents, acceptance) == pytest.approx(best, abs=1e-12)
    assert len(parents) <= budget and tree_depth(parents) <= depth
    assert all(0 <= p <= i for i, p in enumerate(parents))  # breadth-first: a node's parent comes before it
    assert all(parents.count(pos) <= len(acceptance) for pos in range(len(parents) + 1))  # a rank per child


def test_a_better_tree_than_the_full_ones():
    """Sequoia's point: at 8 nodes the best tree beats every full tree of the same budget (widths [2, 1, 1, 1]:
    8 nodes, the best `widths` tree here)."""
    p = (0.6, 0.2, 0.1)
    best = sequoia_value(p, 8, 4)
    full = expected_accepted((0, 0, 1, 2, 3, 4, 5, 6), p)  # widths [2, 1, 1, 1]
    chain = expected_accepted((0, 1, 2, 3), p)
    assert best > full > chain
    shape = sequoia_parents(p, 8, 4)
    assert len({shape.count(pos) for pos in range(1, len(shape) + 1) if shape.count(pos)}) > 1  # nodes with their own counts


def test_the_tree_is_a_networkx_tree_with_ranks_and_reach():
    p = (0.6, 0.3)
    tree = sequoia_graph(p, 5, 2)
    import networkx as nx

    assert nx.is_arborescence(tree) and tree.number_of_nodes() == 6
    assert sorted(tree.nodes[c]["rank"] for c in tree.successors(0)) == [1, 2]
    assert sum(tree.nodes[v]["reach"] for v in tree.nodes if v) == pytest.approx(sequoia_value(p, 5, 2))
    assert sequoia_parents(p, 5, 2) == (0, 0, 1, 1, 2)


def test_one_rate_gives_a_chain_and_zero_rates_an_empty_tree():
    assert sequoia_parents((0.9,), 8, 3) == (0, 1, 2)  # one child per node: the depth bounds the chain
    assert sequoia_parents((0.0, 0.0), 4, 2) == ()


# --------------------------------------------------------------------------- measured acceptance


def exact_rates(p: torch.Tensor, q: torch.Tensor) -> tuple[float, float]:
    """p_1 and p_2 of two siblings drawn without replacement, by enumeration over the first sibling:
    p_1 = sum min(p, q); p_2 = sum_x1 q(x1) (1 - a(x1)) sum min(r_2, q_2), r_2 = norm(max(0, p - q)),
    q_2 = q without x1, renormalized. p, q: [T, V] -> the averages over the T positions"""
    p1 = torch.minimum(p, q).sum(-1)
    p2 = torch.zeros_like(p1)
    r2 = residual(p, q)
    for x in range(p.shape[-1]):
        drawn = torch.zeros_like(q, dtype=torch.bool)
        drawn[:, x] = True
        a = torch.where(q[:, x] > 0, (p[:, x] / q[:, x]).clamp(max=1), torch.ones_like(p1))
        p2 += q[:, x] * (1 - a) * torch.minimum(r2, without_drawn(q, drawn)).sum(-1)
    return p1.mean().item(), p2.mean().item()


def test_measured_acceptance_matches_the_exact_rates():
    target, draft = TableModel.random(5, 1, 0), TableModel.random(5, 1, 100, temperature=2.0)
    sequences = [[1, 2, 3, 4, 0, 1], [3, 3, 2]]
    measured = measure_acceptance(target, draft, sequences, ranks=2, samples=3000, seed=1)
    dists = {}
    for role, model in (("p", target), ("q", draft)):
        dists[role] = torch.cat([model.forward(torch.tensor([s]), model.new_cache(1, len(s))).logits[0].double().softmax(-1) for s in sequences])
    exact = exact_rates(dists["p"], dists["q"])
    n = 3000 * 9  # trials: 9 positions, 3000 samples each
    for got, want in zip(measured, exact):
        assert abs(got - want) <= 4 * (want * (1 - want) / n) ** 0.5 + 1e-9, (measured, exact)
    assert measure_acceptance(target, draft, sequences, ranks=2, samples=3000, seed=1) == measured  # seeded
    greedy = measure_acceptance(target, draft, sequences, ranks=3, temperature=0)
    top = torch.sort(dists["q"], dim=-1, descending=True, stable=True).indices[:, :3]
    assert greedy == tuple((top == dists["p"].argmax(-1, keepdim=True)).double().mean(0).tolist())
    assert sequoia_parents(tuple(round(x, 2) for x in measured), 6, 3)  # a usable acceptance vector


# --------------------------------------------------------------------------- irregular tree ops


def test_per_node_counts_in_repeat_topk_and_sample_distinct():
    q = torch.tensor([[[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]])  # [B=1, n=2, V=3]
    (rep,) = repeat(None, op("repeat", times=(0, 2)), q)
    assert torch.equal(rep, q[:, [1, 1]])
    tokens, one_hot = tree_topk(None, op("tree_topk", k=(2, 1)), q)
    assert tokens.tolist() == [[1, 2, 0]] and torch.equal(one_hot.argmax(-1), tokens)
    probs = q[:, [0, 0, 1]]  # siblings in groups of 2 and 1
    u = torch.tensor([[0.05, 0.5, 0.99]])
    tokens, qs = sample_distinct(None, op("sample_distinct", k=(2, 1)), probs, u)
    assert tokens.tolist() == [[0, 1, 2]]  # group 1: 0 (u below 0.1), then 1 from q without 0; group 2 from its own q
    assert torch.allclose(qs[0, 1], torch.tensor([0.0, 0.6, 0.3]) / 0.9) and torch.equal(qs[0, 2], q[0, 1])


# --------------------------------------------------------------------------- losslessness


@pytest.mark.parametrize("args", ["budget = 5, depth = 2, acceptance = [0.6, 0.3]", "budget = 4, depth = 3, acceptance = [0.7, 0.2]"])
@pytest.mark.parametrize("seed", [0, 1])
def test_sequoia_is_exactly_lossless(args, seed):
    check = assert_lossless(spec(args), models=tables(4, seed), prompt=[1], max_new_tokens=3, method="exact")
    assert check.method == "exact" and check.tv <= 1e-12


def test_sequoia_greedy_equals_target_greedy():
    assert_greedy_equivalent(spec("budget = 8, depth = 4, acceptance = [0.6, 0.2, 0.1]", sampler="greedy", verify="greedy"),
                             models=tables(5, 7, draft_temperature=1.0), prompts=[[1], [2, 3, 4]], max_new_tokens=12)


def undepleted(state, op_, probs, u):
    """A deliberately wrong draw: siblings without replacement, but each reported as drawn from q itself."""
    tokens, _ = eager.RULES["sample_distinct"](state, op_, probs, u)
    return tokens, probs


def test_siblings_reported_with_the_wrong_q_fail_the_exact_check(monkeypatch):
    models = tables(3, 0)
    honest = decspec.compile(SEQUOIA, models=models, backend="exact")
    expected = target_distribution(honest, [1], 3)
    assert tv_distance(exact_distribution(honest, [1], 3), expected) <= 1e-12
    monkeypatch.setitem(exact_rules.RULES, "sample_distinct", exact_rules.exact(undepleted, "sample_distinct"))
    wrong = decspec.compile(SEQUOIA, models=models, backend="exact")
    assert tv_distance(exact_distribution(wrong, [1], 3), expected) > 1e-3


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("args, message", [
    ("acceptance = [0.7, 0.5]", "sum to 1.2: at most one child of a node is accepted"),
    ("acceptance = []", "'acceptance' is empty"),
    ("acceptance = [0.0]", "rates are all 0"),
])
def test_bad_acceptance_names_the_call(args, message):
    with pytest.raises(DecError, match=message) as err:
        lower(load(spec(args)))
    assert err.value.diagnostics[0].span.line == 5  # the propose line


def test_out_of_range_parameters_are_refused_by_the_checker():
    with pytest.raises(DecError, match="budget"):
        lower(load(spec("budget = 0")))
    with pytest.raises(DecError, match="acceptance"):
        lower(load(spec("acceptance = [1.5]")))
