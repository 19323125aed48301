"""Token trees: `tree(draft, widths)`, `multi_rejection`, `greedy` over a tree, and the tree cache.

Exact losslessness on small table models (the exact backend branches over every sibling sample and
every rejection pattern), greedy equivalence on table models and transformers, the eager rules on
hand-made trees, the PrefixCache's tree call and path commit, and the errors a spec gets.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.eager import rules as eager
from decspec.backends.exact.tree_cells import patterns
from decspec.backends.exact.tree_cells import tree_rejection as rejection_cells
from decspec.backends.prefix import PrefixCache
from decspec.backends.tree_cache import tree_logits
from decspec.compiler.ir import Op
from decspec.compiler.lower import lower
from decspec.compiler.ops_tree import tree_depth, tree_depths, tree_parents
from decspec.compiler.passes import run_pipeline
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel
from decspec.testing import assert_greedy_equivalent, assert_lossless, compositions, exact_distribution, model_pairs, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parents[1]
SPECINFER = ROOT / "specs" / "specinfer_tree.dec"
TREE_GREEDY = ROOT / "specs" / "tree_greedy.dec"


def tables(V: int = 4, seed: int = 0, order: int = 1, draft_temperature: float = 2.0) -> dict:
    return {"target": TableModel.random(V, order, seed), "draft": TableModel.random(V, order, seed + 100, temperature=draft_temperature)}


def tree_spec(widths, verify: str = "multi_rejection", sampler: str = "temperature(1.0)", extra: str = "") -> str:
    return (f'decoder t() {{\n    target = model("target")\n    draft = model("draft")\n    sampler = {sampler}\n'
            f'    propose = tree(draft, widths = {list(widths)})\n    verify = {verify}\n{extra}}}\n')


# --------------------------------------------------------------------------- shapes


def test_static_tree_shape():
    assert tree_parents([3, 2, 1]) == (0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9)
    assert tree_depths(tree_parents([3, 2, 1])) == (1,) * 3 + (2,) * 6 + (3,) * 6
    assert tree_depth(tree_parents([2, 1])) == 2 and tree_parents([1, 1, 1]) == (0, 1, 2)  # a chain


def test_ir_of_the_specs():
    graph = run_pipeline(lower(load(SPECINFER, overrides={"widths": [2, 1]})))
    names = [op.name for op in graph.ops]
    assert names.count("tree_call") == 3  # the draft at depths 0 and 1, the target once over the whole tree
    assert [op.param("first") for op in graph.ops if op.name == "tree_call"] == [0, 1, 0]
    assert "tree_rejection" in names and "tree_splice" in names
    greedy = run_pipeline(lower(load(TREE_GREEDY, overrides={"widths": [2, 1]})))
    assert {"tree_topk", "tree_match", "argmax"} <= {op.name for op in greedy.ops}
    assert not any(op.name == "uniform" for op in greedy.ops)  # greedy trees draw no randomness


def test_multi_rejection_on_a_chain_is_rejection():
    chain = 'decoder c() { target = model("target")\n draft = model("draft")\n propose = autoregressive(draft, max = 3)\n verify = %s }'
    a, b = (run_pipeline(lower(load(chain % v))) for v in ("multi_rejection", "rejection"))
    assert [op.name for op in a.ops] == [op.name for op in b.ops]


# --------------------------------------------------------------------------- exact losslessness


@pytest.mark.parametrize("widths", [(2, 1), (1, 2), (3,)])
@pytest.mark.parametrize("seed", [0, 1])
def test_multi_rejection_is_exactly_lossless(widths, seed):
    check = assert_lossless(tree_spec(widths), models=tables(4, seed), prompt=[1], max_new_tokens=3, method="exact")
    assert check.method == "exact"


@pytest.mark.parametrize("sampler", ["temperature(0.7) | top_k(3)", "top_p(0.8)", "temperature(1.5)"])
def test_multi_rejection_is_lossless_through_the_sampler_pipeline(sampler):
    assert_lossless(tree_spec((2, 1), sampler=sampler), models=tables(4, 3), prompt=[2, 0], max_new_tokens=3, method="exact")


def test_multi_rejection_with_the_target_as_draft_accepts_a_whole_path():
    models = tables(3, 5)
    models["draft"] = models["target"]
    dec = decspec.compile(tree_spec((2, 1)), models=models)
    assert_lossless(dec, prompt=[1], max_new_tokens=3, method="exact")
    out = dec.generate([[1]], max_new_tokens=30, seed=0)
    assert out.stats.mean_accepted == 2.0  # p == q: the first child is accepted at every depth


@settings(max_examples=10, deadline=None)
@given(models=model_pairs(vocab=st.integers(2, 4)), widths=st.sampled_from([(2,), (1, 1), (2, 1), (2, 2)]),
       prompt=st.lists(st.integers(0, 1), min_size=1, max_size=2))
def test_multi_rejection_lossless_on_random_tables(models, widths, prompt):
    assert_lossless(tree_spec(widths), models=models, prompt=prompt, max_new_tokens=2, method="exact")


def test_greedy_verification_of_a_sampled_tree_is_lossless():
    """`greedy` under a sampling pipeline: the target's own sample at every node, followed along the tree."""
    assert_lossless(tree_spec((2,), verify="greedy"), models=tables(3, 2), prompt=[1], max_new_tokens=3, method="exact")


def test_topk_children_with_multi_rejection_are_lossless_under_greedy():
    assert_lossless(tree_spec((2, 1), sampler="greedy"), models=tables(4, 1), prompt=[1], max_new_tokens=4, method="exact")


def test_exact_cells_partition_u_space():
    parents = tree_parents((2, 1))
    assert len(patterns(parents)) == 5
    assert len(patterns(tree_parents((3, 2, 1)))) == 1 + 3 * (1 + 2 * 2)
    g = torch.Generator().manual_seed(0)
    R, N, V = 6, len(parents), 4
    p = torch.softmax(torch.randn(R, N + 1, V, generator=g, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(R, N, V, generator=g, dtype=torch.float64), -1)
    tokens = torch.randint(0, V, (R, N), generator=g)
    op = Op("tree_rejection", (), (), (("parents", parents),))
    u, prob = rejection_cells(p, q, tokens, op=op)
    assert torch.allclose(prob.sum(1), torch.ones(R, dtype=torch.float64))
    # each cell's representative reproduces the cell's pattern under the eager rule
    for ci, pattern in enumerate(patterns(parents)):
        path, n, _ = eager.RULES["tree_rejection"](None, op, p, q, tokens, u[:, ci])
        accepted = [node for node, ok in pattern if ok]
        live = prob[:, ci] > 0
        assert (n[live] == len(accepted)).all()
        for d, node in enumerate(accepted):
            assert (path[live, d] == node).all()


def test_multi_rejection_reproduces_p_statistically_where_exact_is_too_big():
    """V = 8 and a 3-2 tree: 8^9 draft outcomes per round, beyond the exact backend; chi-square instead."""
    models = tables(8, 4, order=1, draft_temperature=1.5)
    check = assert_lossless(tree_spec((3, 2)), models=models, prompt=[1], max_new_tokens=2, method="statistical", samples=2000)
    assert check.method == "statistical"


# --------------------------------------------------------------------------- greedy equivalence


@pytest.mark.parametrize("widths", [[3, 2, 1], [2, 2], [4]])
def test_tree_greedy_equals_target_greedy_on_tables(widths):
    assert_greedy_equivalent(TREE_GREEDY, models=tables(5, 7, draft_temperature=1.0), prompts=[[1], [2, 3, 4]],
                             max_new_tokens=12, widths=widths)


def test_tree_greedy_equals_target_greedy_on_transformers():
    """The transformer's KV cache: the tree is fed with a tree mask, its accepted path committed in place."""
    models = random_models(seed=0)
    assert_greedy_equivalent(TREE_GREEDY, models=models, prompts=[[1, 2, 3], [7]], max_new_tokens=6, exact=False, widths=[2, 1])


def test_tree_greedy_accepts_more_than_the_top1_chain():
    """Report: accepted tokens per round of the tree vs. a chain of the same depth (greedy, table models)."""
    models = tables(6, 11, draft_temperature=1.0)
    chain = decspec.compile('decoder c() { target = model("target")\n draft = model("draft")\n sampler = greedy\n'
                            ' propose = autoregressive(draft, max = 3)\n verify = greedy }', models=models)
    tree = decspec.compile(TREE_GREEDY, models=models, widths=[3, 2, 1])
    prompts = [[i] for i in range(4)]
    a = chain.generate(prompts, max_new_tokens=24, seed=0)
    b = tree.generate(prompts, max_new_tokens=24, seed=0)
    assert a.tokens == b.tokens
    assert b.stats.mean_accepted >= a.stats.mean_accepted


# --------------------------------------------------------------------------- eager rules


def op(name, **params):
    return Op(name, (), (), tuple(params.items()))


def test_tree_match_follows_the_target():
    parents = tree_parents((2, 1))  # nodes 0, 1 under the root; 2 under 0; 3 under 1
    tokens = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]])
    t = torch.tensor([[6, 0, 8, 0, 1],  # root -> 6 (node 1), then node 1's child must be t[2] = 8: node 3; then t[4]
                      [5, 7, 0, 0, 0],  # node 0, then t[1] = 7: node 2
                      [9, 0, 0, 0, 0]])  # nothing matches
    path, n, end = eager.RULES["tree_match"](None, op("tree_match", parents=parents), tokens, t)
    assert n.tolist() == [2, 2, 0] and end.tolist() == [4, 3, 0]
    assert path[0].tolist() == [1, 3] and path[1].tolist() == [0, 2]
    (new,) = eager.RULES["tree_splice"](None, op("tree_splice"), tokens, path, n, t.gather(1, end[:, None]).squeeze(1))
    assert [row[: k + 1] for row, k in zip(new.tolist(), n.tolist())] == [[6, 8, 1], [5, 7, 0], [9]]


def test_tree_rejection_tries_siblings_and_updates_the_residual():
    parents = (0, 0)  # two children of the root
    V = 3
    p = torch.tensor([[[0.2, 0.8, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # [1, 3, V]: root, node 0, node 1
    q = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]])  # both drawn from q
    tokens = torch.tensor([[0, 1]])
    rule = eager.RULES["tree_rejection"]
    o = op("tree_rejection", parents=parents)
    # child 0 (token 0): a = min(1, 0.2 / 0.5) = 0.4; u = 0.3 accepts, descend to p at node 0 (a leaf)
    path, n, r = rule(None, o, p, q, tokens, torch.tensor([[0.3, 0.9]]))
    assert n.tolist() == [1] and path.tolist() == [[0]] and torch.allclose(r, p[:, 1])
    # u = 0.5 rejects: r = norm(max(0, p - q)) = [0, 1, 0]; child 1 (token 1): a = min(1, 1 / 0.5) = 1, accepted
    path, n, r = rule(None, o, p, q, tokens, torch.tensor([[0.5, 0.99]]))
    assert n.tolist() == [1] and path.tolist() == [[1]] and torch.allclose(r, p[:, 2])
    # both rejected: only possible when the second child's token has no residual mass
    tokens = torch.tensor([[0, 0]])
    path, n, r = rule(None, o, p, q, tokens, torch.tensor([[0.5, 0.0]]))
    assert n.tolist() == [0] and torch.allclose(r, torch.tensor([[0.0, 1.0, 0.0]]))
    assert V == r.shape[-1]


def test_tree_topk_repeat_and_build():
    probs = torch.tensor([[[0.1, 0.6, 0.3]], ])  # [1, 1, 3]
    tok, q = eager.RULES["tree_topk"](None, op("tree_topk", k=2), probs)
    assert tok.tolist() == [[1, 2]] and q[0].argmax(-1).tolist() == [1, 2] and (q.sum(-1) == 1).all()
    tok4, _ = eager.RULES["tree_topk"](None, op("tree_topk", k=4), probs)  # more children than tokens
    assert tok4.tolist() == [[1, 2, 0, 0]]
    (rep,) = eager.RULES["repeat"](None, op("repeat", times=3), torch.arange(4.0).view(1, 2, 2))
    assert rep[0, :, 0].tolist() == [0, 0, 0, 2, 2, 2]
    tokens, qq, count = eager.RULES["tree_build"](None, op("tree_build"), tok, q, torch.tensor([[7, 8]]), q)
    assert tokens.tolist() == [[1, 2, 7, 8]] and qq.shape == (1, 4, 3) and count.tolist() == [4]


# --------------------------------------------------------------------------- the tree cache


@pytest.mark.parametrize("kind", ["table", "transformer"])
def test_tree_call_gives_each_node_its_root_path_logits(kind):
    model = TableModel.random(7, 2, seed=3) if kind == "table" else random_models(seed=1)["target"]
    V = model.vocab_size
    parents = tree_parents((2, 2))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (2, len(parents)), generator=g)
    ctx = torch.zeros(2, 64, dtype=torch.long)
    ctx[0, :5], ctx[1, :3] = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 5, 4])
    length = torch.tensor([5, 3])
    pc = PrefixCache(model, 2, 64)
    pc.logits(ctx, length - 2)  # a cache that holds part of the context already
    got = tree_logits(pc, ctx, length, tokens, parents)  # [B, N+1, V]
    for b in range(2):
        for pos in range(len(parents) + 1):
            path, node = [], pos - 1
            while node >= 0:
                path.insert(0, int(tokens[b, node]))
                node = parents[node] - 1
            seq = ctx[b, : int(length[b])].tolist() + path
            fresh = PrefixCache(model, 1, 64).logits(torch.tensor([seq + [0] * (64 - len(seq))]), torch.tensor([len(seq)]))
            assert torch.allclose(got[b, pos], fresh[0], atol=1e-4), (b, pos)


def test_the_next_call_keeps_the_accepted_path_in_the_cache():
    model = random_models(seed=2)["target"]
    parents = tree_parents((2, 1))
    tokens = torch.tensor([[10, 11, 12, 13]])
    ctx = torch.zeros(1, 64, dtype=torch.long)
    ctx[0, :4] = torch.tensor([1, 2, 3, 4])
    pc = PrefixCache(model, 1, 64)
    tree_logits(pc, ctx, torch.tensor([4]), tokens, parents)
    fed = pc.tokens_fed
    ctx[0, 4:7] = torch.tensor([11, 13, 20])  # the path node 1 -> node 3, then a new token
    logits = pc.logits(ctx, torch.tensor([7]))
    assert pc.tokens_fed - fed == 1  # only the token after the path: the path's K/V were moved, not recomputed
    assert pc.cache.tokens[0, :7].tolist() == [1, 2, 3, 4, 11, 13, 20]
    fresh = PrefixCache(model, 1, 64).logits(ctx, torch.tensor([7]))
    assert torch.allclose(logits, fresh, atol=1e-4)


def test_target_feeds_only_the_bonus_and_the_tree_each_round():
    dec = decspec.compile(TREE_GREEDY, models=random_models(seed=3), widths=[2, 1])
    from decspec.backends import runtime

    sessions = {}
    original = runtime.PrefixCache

    class Spy(original):
        def __init__(self, model, batch, capacity, **kw):
            super().__init__(model, batch, capacity, **kw)
            sessions[len(sessions)] = self

    runtime.PrefixCache = Spy
    try:
        out = dec.generate([[1, 2, 3]], max_new_tokens=12, seed=0)
    finally:
        runtime.PrefixCache = original
    target = next(s for s in sessions.values() if s.model is dec._bound_models()["target"])
    rounds = out.stats.rounds
    assert target.tokens_fed == 3 + 4 + (rounds - 1) * (1 + 4)  # prompt + tree, then bonus + tree every later round


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("widths, message", [([], "'widths' is empty"), ([2, 0], "at least 1 at every depth, found 0"),
                                             ([16, 16], "has 272 nodes")])
def test_bad_widths_name_the_call(widths, message):
    with pytest.raises(DecError, match=message) as info:
        lower(load(tree_spec(widths)))
    assert info.value.diagnostics[0].span.line == 5


def test_a_chain_verifier_refuses_a_tree():
    with pytest.raises(DecError, match="verifier 'rejection' cannot verify a token tree") as info:
        lower(load(tree_spec((2, 1), verify="rejection")))
    assert info.value.diagnostics[0].span.line == 6
    assert "multi_rejection" in str(info.value) and "greedy" in str(info.value)


def test_stop_and_grammar_on_a_tree_are_not_yet():
    with pytest.raises(DecError, match="not supported yet") as info:
        lower(load(tree_spec((2,), extra="    stop = when draft.prob < 0.3\n")))
    assert info.value.diagnostics[0].span.line == 7
    with pytest.raises(DecError, match="grammar over a token tree is not supported yet"):
        lower(load(tree_spec((2,), extra='    grammar = regex("a+")\n')))


TREE_SPECS = ("specinfer_tree", "rsd_tree", "tree_greedy", "dynamic_tree", "sequoia_tree", "eagle2_tree")


@pytest.mark.parametrize("name", TREE_SPECS)
@pytest.mark.parametrize("models", ["tables", "transformer"])
def test_the_inductor_round_runs_trees_with_the_eager_tokens(name, models):
    """Issue 18, item 1: static and dynamic token trees as generated rounds (static.py feed_tree: the tree in one
    static block under a tree mask; the committed path fed again by the next round's window). Same seed, same tokens
    and acceptances as the eager backend, greedy and sampled, on table models (no static step: rollback, then a
    tree-masked forward) and on transformers (forward_at with a tree mask), over ragged prompts."""
    pair = {"target": TableModel.random(6, 1, seed=0), "draft": TableModel.random(6, 1, seed=1, temperature=2.0)} \
        if models == "tables" else random_models(seed=2)
    prompts = [[1, 2, 3, 4], [5], [2, 4]]
    for temperature, seed in ((0.0, 0), (1.0, 3), (1.0, 4)):
        kw = {} if name == "tree_greedy" else {"temperature": temperature}
        path = ROOT / "specs" / f"{name}.dec"
        eager = decspec.compile(path, models=pair, **kw).generate(prompts, max_new_tokens=10, seed=seed)
        emitted = decspec.compile(path, models=pair, backend="inductor", **kw).generate(prompts, max_new_tokens=10, seed=seed)
        assert emitted.tokens == eager.tokens and emitted.stats.accepted == eager.stats.accepted
    assert any(a > 0 for r in eager.stats.accepted for a in r)  # drafts were accepted: the trees' paths mattered


@pytest.mark.parametrize("name, dynamo", [("specinfer_tree", "inductor"), ("dynamic_tree", "eager"), ("sequoia_tree", "eager"),
                                                 ("eagle2_tree", "eager")])
def test_a_compiled_tree_round_is_one_graph(name, dynamo):
    """torch.compile of a tree round: one graph, no graph break, no recompile on a second call; the eager tokens (the
    dynamic tree, Sequoia's irregular one and EAGLE-2's reranked one through dynamo's own eager backend: the same graphs
    and breaks, without inductor's compile time)."""
    from torch._dynamo.utils import counters

    pair = random_models(seed=2)
    prompts = [[5, 6, 7, 8], [9], [10, 11, 12]]
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile(ROOT / "specs" / f"{name}.dec", models=pair, backend="inductor", temperature=1.0)
    dec.backend_options = {"compile": True, "dynamo_backend": dynamo}
    for seed in (3, 4):
        eager = decspec.compile(ROOT / "specs" / f"{name}.dec", models=pair, temperature=1.0)
        assert dec.generate(prompts, max_new_tokens=12, seed=seed).tokens == eager.generate(prompts, max_new_tokens=12, seed=seed).tokens
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_compositions_draw_trees_with_tree_verifiers_only():
    seen = set()

    @settings(max_examples=80, database=None)
    @given(compositions())
    def check(c):
        if c.draft[0] == "tree":
            seen.add(c.verifier[0])
            assert c.exit is None
            lower(load(c.text))

    check()
    assert seen and seen <= {"greedy", "multi_rejection"}


def test_exact_distribution_merges_sibling_outcomes():
    dec = decspec.compile(tree_spec((2, 1)), models=tables(4, 0))
    dist = exact_distribution(dec, [1], 3)
    assert tv_distance(dist, target_distribution(dec, [1], 3)) < 1e-12
    assert dist.peak_rows > 4 ** 3  # the rows really branched over the sibling samples
