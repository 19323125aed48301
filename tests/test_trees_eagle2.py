"""EAGLE-2's dynamic draft tree with its rerank (Li et al. 2024): `eagle2_tree(draft, children, expand, depth, nodes)`.

`tree_rerank` on hand-made trees (the path products, the kept nodes form a tree, renumbered), exact losslessness on
table models under sampling (children are top-k tokens with q one-hot, so the rerank's choice of candidates cannot
bias recursive rejection), a deliberately wrong variant shown not lossless by the same check, greedy equivalence,
and the errors a spec gets.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.eager import rules as eager
from decspec.backends.eager.tree import tree_rerank
from decspec.backends.exact import rules as exact_rules
from decspec.compiler.ir import Op
from decspec.compiler.lower import lower
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel
from decspec.testing import assert_greedy_equivalent, assert_lossless, exact_distribution, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parents[1]
EAGLE2 = ROOT / "specs" / "eagle2_tree.dec"


def tables(V: int = 4, seed: int = 0, draft_temperature: float = 2.0) -> dict:
    return {"target": TableModel.random(V, 1, seed), "draft": TableModel.random(V, 1, seed + 100, temperature=draft_temperature)}


def spec(args: str = "children = 2, expand = 2, depth = 3, nodes = 6", sampler: str = "temperature(1.0)", verify: str = "multi_rejection") -> str:
    return (f'decoder t() {{\n    target = model("target")\n    draft = model("draft")\n    sampler = {sampler}\n'
            f'    propose = eagle2_tree(draft, {args})\n    verify = {verify}\n}}\n')


def op(name, **params):
    return Op(name, (), (), tuple(params.items()))


# --------------------------------------------------------------------------- the rerank


def test_tree_rerank_keeps_the_nodes_of_highest_path_product():
    # one row, 6 nodes: 0 and 1 under the root, 2 and 3 under node 0 (position 1), 4 and 5 under node 1 (position 2)
    parents = torch.tensor([[0, 0, 1, 1, 2, 2]])
    weight = torch.tensor([[0.5, 0.4, 0.9, 0.1, 0.95, 0.05]])  # path products: 0.5, 0.4, 0.45, 0.05, 0.38, 0.02
    tokens = torch.tensor([[10, 11, 12, 13, 14, 15]])
    q = torch.arange(6.0)[None, :, None].expand(1, 6, 2)
    kept, kept_q, new_parents, count = tree_rerank(None, op("tree_rerank", nodes=4, depth=2), tokens, q, weight, parents)
    assert kept.tolist() == [[10, 11, 12, 14]]  # 0.5, 0.45, 0.4, 0.38 kept, in tree order
    assert kept_q[0, :, 0].tolist() == [0.0, 1.0, 2.0, 4.0]
    assert new_parents.tolist() == [[0, 0, 1, 2]]  # node 14's parent (old position 2, node 11) is now position 2
    assert count.tolist() == [4]


def test_tree_rerank_ties_keep_the_parent():
    parents = torch.tensor([[0, 1, 1]])  # a node with probability 1: its child ties with it
    weight = torch.tensor([[0.5, 1.0, 0.2]])
    kept, _, new_parents, _ = tree_rerank(None, op("tree_rerank", nodes=2, depth=2), torch.tensor([[1, 2, 3]]),
                                          torch.zeros(1, 3, 4), weight, parents)
    assert kept.tolist() == [[1, 2]] and new_parents.tolist() == [[0, 1]]


@settings(max_examples=60, database=None, deadline=None)
@given(st.data())
def test_the_kept_nodes_always_form_a_tree(data):
    """Random breadth-first trees and weights: every kept node's parent is kept (or is the root), before it."""
    N = data.draw(st.integers(1, 9))
    parents = [0]
    for i in range(1, N):
        parents.append(data.draw(st.integers(max(0, parents[-1]), i)))  # breadth-first: parents never decrease
    weight = torch.tensor([data.draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])) for _ in range(N)], dtype=torch.float64)[None]
    depth = max(_depths(parents))
    m = data.draw(st.integers(1, N))
    _, _, new, _ = tree_rerank(None, op("tree_rerank", nodes=m, depth=depth), torch.arange(N)[None], torch.zeros(1, N, 2),
                               weight, torch.tensor([parents]))
    assert all(0 <= p <= i for i, p in enumerate(new[0].tolist()))


def _depths(parents):
    depth = [0]
    for p in parents:
        depth.append(depth[p] + 1)
    return depth[1:]


# --------------------------------------------------------------------------- losslessness


@pytest.mark.parametrize("args", ["children = 2, expand = 2, depth = 3, nodes = 6", "children = 3, expand = 1, depth = 3, nodes = 4",
                                  "children = 2, expand = 1, depth = 2, nodes = 2"])
@pytest.mark.parametrize("sampler", ["temperature(1.0)", "temperature(0.7) | top_k(3)"])
def test_eagle2_tree_is_exactly_lossless(args, sampler):
    check = assert_lossless(spec(args, sampler), models=tables(4, 1), prompt=[1], max_new_tokens=3, method="exact")
    assert check.method == "exact" and check.tv <= 1e-12


def drafted_from_q(state, op_, probs):
    """A deliberately wrong top-k: the children the draft's most likely tokens, but reported as i.i.d. draws from q."""
    tokens, _ = eager.RULES["tree_topk"](state, op_, probs)
    return tokens, probs.repeat_interleave(op_.param("k"), dim=1)


def test_top_children_reported_as_samples_fail_the_exact_check(monkeypatch):
    models = tables(3, 0)
    honest = decspec.compile(EAGLE2, models=models, backend="exact")
    expected = target_distribution(honest, [1], 3)
    assert tv_distance(exact_distribution(honest, [1], 3), expected) <= 1e-12
    monkeypatch.setitem(exact_rules.RULES, "tree_topk", exact_rules.exact(drafted_from_q, "tree_topk"))
    wrong = decspec.compile(EAGLE2, models=models, backend="exact")
    assert tv_distance(exact_distribution(wrong, [1], 3), expected) > 1e-3


@pytest.mark.parametrize("args", ["children = 2, expand = 2, depth = 3, nodes = 6", "children = 3, expand = 2, depth = 4, nodes = 8"])
def test_eagle2_tree_greedy_equals_target_greedy_on_tables(args):
    assert_greedy_equivalent(spec(args, sampler="greedy", verify="greedy"), models=tables(5, 7, draft_temperature=1.0),
                             prompts=[[1], [2, 3, 4]], max_new_tokens=12)


def test_eagle2_tree_greedy_equals_target_greedy_on_transformers():
    """Each row's reranked tree fed with its own mask and its accepted path committed in the KV cache."""
    assert_greedy_equivalent(spec(sampler="greedy", verify="greedy"), models=random_models(seed=0), prompts=[[1, 2, 3], [7]],
                             max_new_tokens=6, exact=False)


def test_the_rerank_keeps_a_different_tree_per_row(monkeypatch):
    dec = decspec.compile(EAGLE2, models=tables(6, 5, draft_temperature=1.0))
    rerank, seen = eager.RULES["tree_rerank"], []
    monkeypatch.setitem(eager.RULES, "tree_rerank", lambda state, op_, *ins: seen.append(out := rerank(state, op_, *ins)) or out)
    dec.generate([[i] for i in range(6)], max_new_tokens=6, seed=0)
    seen = [out[2] for out in seen]  # each round's kept parents
    assert any(len({tuple(r) for r in parents.tolist()}) > 1 for parents in seen)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("args, message", [
    ("children = 2, expand = 1, depth = 2, nodes = 5", "keeps nodes = 5 of the 4 it drafts"),
    ("children = 2, expand = 3, depth = 2, nodes = 2", "eagle2_tree expands 3 nodes per depth"),
])
def test_bad_sizes_name_the_call(args, message):
    with pytest.raises(DecError, match=message) as err:
        lower(load(spec(args)))
    assert err.value.diagnostics[0].span.line == 5  # the propose line


def test_depth_one_keeps_the_top_children():
    graph = lower(load(spec("children = 3, expand = 1, depth = 1, nodes = 2")))
    assert not any(op.name == "tree_rerank" for op in graph.walk())
    assert [op.param("k") for op in graph.walk() if op.name == "tree_topk"] == [2]
