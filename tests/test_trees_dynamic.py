"""Dynamic token trees (DySpec, Xiong et al. 2024; EAGLE-2, Li et al. 2024): `dynamic_tree(draft, children,
expand, depth)` with `multi_rejection` or `greedy`.

The tree grows by cumulative draft probability under a node budget: level sizes are static (children,
then expand * children per depth), and which nodes of the last level get the children is chosen per row
(`tree_expand`), so the shape is a value, parents i64[B,N], read by the tree attention, the verifier,
the exact cells and the cache. Exact losslessness on table models, a deliberately wrong variant (siblings
reranked by draft probability, as EAGLE-2 reranks) shown not lossless by the same check, greedy
equivalence at T=0, and the per-row rules on hand-made trees.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import decspec
from decspec.backends.eager import rules as eager
from decspec.backends.eager.tree import tree_expand
from decspec.backends.exact import rules as exact_rules
from decspec.backends.exact.tree_cells import patterns
from decspec.backends.exact.tree_cells import tree_rejection as rejection_cells
from decspec.backends.prefix import PrefixCache
from decspec.backends.tree_cache import ancestors_rows, depths_rows, tree_logits
from decspec.compiler.ir import Op
from decspec.compiler.lower import lower
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel
from decspec.testing import assert_greedy_equivalent, assert_lossless, exact_distribution, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parents[1]
DYNAMIC = ROOT / "specs" / "dynamic_tree.dec"


def tables(V: int = 4, seed: int = 0, order: int = 1, draft_temperature: float = 2.0) -> dict:
    return {"target": TableModel.random(V, order, seed), "draft": TableModel.random(V, order, seed + 100, temperature=draft_temperature)}


def spec(verify: str = "multi_rejection", sampler: str = "temperature(1.0)", args: str = "children = 2, expand = 1, depth = 2") -> str:
    return (f'decoder t() {{\n    target = model("target")\n    draft = model("draft")\n    sampler = {sampler}\n'
            f'    propose = dynamic_tree(draft, {args})\n    verify = {verify}\n}}\n')


def op(name, **params):
    return Op(name, (), (), tuple(params.items()))


# --------------------------------------------------------------------------- exact losslessness


@pytest.mark.parametrize("args", [dict(children=2, expand=1, depth=2), dict(children=2, expand=1, depth=3),
                                  dict(children=2, expand=2, depth=2), dict(children=1, expand=1, depth=3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_dynamic_tree_is_exactly_lossless(args, seed):
    check = assert_lossless(DYNAMIC, models=tables(3, seed), prompt=[1], max_new_tokens=3, method="exact", **args)
    assert check.method == "exact" and check.tv <= 1e-12


@pytest.mark.parametrize("sampler", ["temperature(0.7)", "temperature(1.0) | top_k(2)"])
def test_dynamic_tree_without_replacement_is_exactly_lossless(sampler):
    text = spec(sampler=sampler, args="children = 2, expand = 1, depth = 2, replacement = false")
    check = assert_lossless(text, models=tables(4, 3), prompt=[1], max_new_tokens=3, method="exact")
    assert check.tv <= 1e-12


def test_greedy_verification_of_a_sampled_dynamic_tree_is_lossless():
    check = assert_lossless(spec(verify="greedy", sampler="greedy"), models=tables(4, 2), prompt=[2], max_new_tokens=3, method="exact")
    assert check.tv <= 1e-12


def rerank_siblings(state, op_, *ins):
    """A deliberately wrong dynamic tree: after drafting, the last level's siblings are sorted by their draft
    probability (EAGLE-2's reranking, which under sampling makes the first sibling tried not a draw from q)."""
    tokens, q, count = eager.RULES["tree_build"](state, op_, *ins)
    if op_.param("nodes") is None:
        return tokens, q, count
    c = op_.param("nodes") - ins[-3].shape[1]  # the last level's size
    last, q_last = tokens[:, -c:], q[:, -c:]
    order = torch.sort(q_last.gather(-1, last[..., None]).squeeze(-1), dim=1, descending=True, stable=True).indices
    tokens = torch.cat([tokens[:, :-c], last.gather(1, order)], 1)
    q = torch.cat([q[:, :-c], q_last.gather(1, order[..., None].expand(-1, -1, q.shape[-1]))], 1)
    return tokens, q, count


def test_reranked_siblings_fail_the_exact_check(monkeypatch):
    models = tables(3, 0)
    honest = decspec.compile(DYNAMIC, models=models, backend="exact")
    expected = target_distribution(honest, [1], 3)
    assert tv_distance(exact_distribution(honest, [1], 3), expected) <= 1e-12
    monkeypatch.setitem(exact_rules.RULES, "tree_build", exact_rules.exact(rerank_siblings, "tree_build"))
    wrong = decspec.compile(DYNAMIC, models=models, backend="exact")
    assert tv_distance(exact_distribution(wrong, [1], 3), expected) > 1e-3


# --------------------------------------------------------------------------- greedy equivalence


@pytest.mark.parametrize("args", ["children = 2, expand = 1, depth = 3", "children = 3, expand = 2, depth = 3"])
def test_dynamic_tree_greedy_equals_target_greedy_on_tables(args):
    assert_greedy_equivalent(spec(verify="greedy", sampler="greedy", args=args), models=tables(5, 7, draft_temperature=1.0),
                             prompts=[[1], [2, 3, 4]], max_new_tokens=12)


def test_dynamic_tree_greedy_equals_target_greedy_on_transformers():
    """The transformer's KV cache: each row's tree fed with its own mask, its accepted path committed in place."""
    assert_greedy_equivalent(spec(verify="greedy", sampler="greedy", args="children = 2, expand = 1, depth = 3"),
                             models=random_models(seed=0), prompts=[[1, 2, 3], [7]], max_new_tokens=6, exact=False)


def test_temperature_zero_with_multi_rejection_equals_greedy():
    assert_greedy_equivalent(spec(sampler="temperature(0)", args="children = 2, expand = 2, depth = 3"),
                             models=tables(5, 4, draft_temperature=1.0), prompts=[[0], [3, 1]], max_new_tokens=10)


# --------------------------------------------------------------------------- the shape is per row


def test_tree_expand_picks_the_highest_cumulative_probability_per_row():
    V = 3
    tokens = torch.tensor([[0, 1, 2], [0, 1, 2]])  # the level's nodes (the last 3 of a tree of 4)
    q = torch.eye(V)[None].expand(2, 3, V) * torch.tensor([[0.9, 0.5, 0.8], [0.2, 0.5, 0.6]])[..., None]  # q(token) per node
    score = torch.tensor([[0.5, 0.9, 0.6], [1.0, 1.0, 0.5]])
    q_next = torch.rand(2, 3, V)
    parents = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]])
    new, q_sel, child = tree_expand(None, op("tree_expand", k=2, c=2), tokens, q, q_next, score, parents)
    # cumulative: row 0: [0.45, 0.45, 0.48] -> node 3 (pos 4), then the tie 1 vs 2 to the earlier (pos 2);
    #             row 1: [0.2, 0.5, 0.3] -> node 2 (pos 3), then node 3 (pos 4)
    assert new.tolist() == [[0, 1, 1, 1, 4, 4, 2, 2], [0, 1, 1, 1, 3, 3, 4, 4]]
    assert torch.equal(q_sel[0], q_next[0, [2, 0]]) and torch.equal(q_sel[1], q_next[1, [1, 2]])
    assert torch.allclose(child, torch.tensor([[0.48, 0.48, 0.45, 0.45], [0.5, 0.5, 0.3, 0.3]]))


def test_rows_draft_different_shapes(monkeypatch):
    dec = decspec.compile(DYNAMIC, models=tables(6, 5, draft_temperature=1.0), depth=3)
    expand, seen = eager.RULES["tree_expand"], []
    monkeypatch.setitem(eager.RULES, "tree_expand", lambda state, op_, *ins: seen.append(out := expand(state, op_, *ins)) or out)
    dec.generate([[i] for i in range(6)], max_new_tokens=8, seed=0)
    seen = [out[0] for out in seen]  # each round's parents
    assert seen and any(len({tuple(r) for r in p.tolist()}) > 1 for p in seen)  # some round had rows of different shapes


def test_dynamic_rules_equal_the_static_rules_on_a_shared_shape():
    from decspec.compiler.ops_tree import tree_parents

    g = torch.Generator().manual_seed(0)
    parents = tree_parents((2, 2))
    B, N, V = 3, len(parents), 4
    p = torch.softmax(torch.randn(B, N + 1, V, generator=g), -1)
    q = torch.softmax(torch.randn(B, N, V, generator=g), -1)
    tokens = torch.randint(0, V, (B, N), generator=g)
    u = torch.rand(B, N, generator=g)
    rows = torch.tensor([parents] * B)
    static = eager.RULES["tree_rejection"](None, op("tree_rejection", parents=parents), p, q, tokens, u)
    dynamic = eager.RULES["tree_rejection"](None, op("tree_rejection", depth=2), p, q, tokens, u, rows)
    assert all(torch.equal(a, b) for a, b in zip(static, dynamic))
    t = torch.randint(0, V, (B, N + 1), generator=g)
    t[:, 0] = tokens[:, 1]  # the root's second child matches
    static = eager.RULES["tree_match"](None, op("tree_match", parents=parents), tokens, t)
    dynamic = eager.RULES["tree_match"](None, op("tree_match", depth=2), tokens, t, rows)
    assert all(torch.equal(a, b) for a, b in zip(static, dynamic))
    u_s, prob_s = rejection_cells(p.double(), q.double(), tokens, op=op("tree_rejection", parents=parents))
    u_d, prob_d = rejection_cells(p.double(), q.double(), tokens, rows, op=op("tree_rejection", depth=2))
    assert torch.equal(u_s, u_d) and torch.equal(prob_s, prob_d)


def test_exact_cells_of_mixed_shapes_partition_u_space():
    """Rows of different shapes: each gets its shape's patterns (padding cells have measure 0), summing to 1."""
    g = torch.Generator().manual_seed(1)
    rows = torch.tensor([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 1, 2]])
    p = torch.softmax(torch.randn(3, 5, 3, generator=g), -1).double()
    q = torch.softmax(torch.randn(3, 4, 3, generator=g), -1).double()
    tokens = torch.randint(0, 3, (3, 4), generator=g)
    u, prob = rejection_cells(p, q, tokens, rows, op=op("tree_rejection", depth=2))
    assert torch.allclose(prob.sum(1), torch.ones(3, dtype=torch.float64))
    counts = [len(patterns(tuple(r))) for r in rows.tolist()]
    assert [int((prob[i] > 0).sum()) <= counts[i] for i in range(3)] == [True] * 3
    assert torch.all(prob[2, counts[2]:] == 0) and u.shape[1] == max(counts)


@pytest.mark.parametrize("kind", ["table", "transformer"])
def test_tree_call_gives_each_row_its_own_root_paths(kind):
    model = TableModel.random(7, 2, seed=3) if kind == "table" else random_models(seed=1)["target"]
    V = model.vocab_size
    parents = torch.tensor([[0, 0, 1, 1, 3], [0, 0, 2, 2, 2]])  # two rows, two shapes
    assert depths_rows(parents).tolist() == [[0, 1, 1, 2, 2, 3], [0, 1, 1, 2, 2, 2]]
    assert ancestors_rows(parents)[0, 4].tolist() == [True, False, True, False, False]
    g = torch.Generator().manual_seed(0)
    tokens = torch.stack([torch.randperm(V, generator=g)[:5] for _ in range(2)])  # distinct: a path is found by its tokens
    ctx = torch.zeros(2, 64, dtype=torch.long)
    ctx[0, :5], ctx[1, :3] = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 5, 4])
    length = torch.tensor([5, 3])
    pc = PrefixCache(model, 2, 64)
    pc.logits(ctx, length - 2)
    got = tree_logits(pc, ctx, length, tokens, parents)  # [B, N+1, V]
    for b in range(2):
        for pos in range(6):
            path, node = [], pos - 1
            while node >= 0:
                path.insert(0, int(tokens[b, node]))
                node = int(parents[b, node]) - 1
            seq = ctx[b, : int(length[b])].tolist() + path
            fresh = PrefixCache(model, 1, 64).logits(torch.tensor([seq + [0] * (64 - len(seq))]), torch.tensor([len(seq)]))
            assert torch.allclose(got[b, pos], fresh[0], atol=1e-4), (b, pos)
    # the next call keeps each row's accepted path: row 0 node 0 -> node 2 -> node 4, row 1 node 1 -> node 2
    ctx[0, 5:9] = torch.stack([tokens[0, 0], tokens[0, 2], tokens[0, 4], torch.tensor(1)])  # then a new token
    ctx[1, 3:6] = torch.stack([tokens[1, 1], tokens[1, 2], torch.tensor(2)])
    new = torch.tensor([9, 6])
    fed = pc.tokens_fed
    logits = pc.logits(ctx, new)
    assert pc.tokens_fed - fed == 2  # one token per row: the paths' K/V were moved, not recomputed
    fresh = PrefixCache(model, 2, 64).logits(ctx, new)
    assert torch.allclose(logits, fresh, atol=1e-4)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("args, message", [("children = 0", "'children' must be at least 1"),
                                           ("children = 2, expand = 3", "expands 3 nodes per depth"),
                                           ("children = 16, expand = 16, depth = 3", "has 528 nodes")])
def test_bad_params_name_the_call(args, message):
    with pytest.raises(DecError, match=message) as info:
        lower(load(spec(args=args)))
    assert info.value.diagnostics[0].span.line == 5
