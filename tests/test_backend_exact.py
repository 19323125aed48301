"""The exact backend: cells agree with the eager rules, tiny graphs give known distributions,
rows that reach the same tokens merge, weights sum to 1, and it means what eager samples."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.eager import rules as eager
from decspec.backends.exact import RULES, TooLarge, exact_distribution
from decspec.backends.exact import cells
from decspec.compiler.builder import Builder
from decspec.compiler.ir import CTX, Op
from decspec.compiler.ops import OPS
from decspec.stdlib.models.table import TableModel
from decspec.testing import chi_square, distributions, greedy_tokens, sequence_distribution, tv_distance


def eager_rule(name: str, *inputs):
    return eager.RULES[name](None, Op(name, (), ()), *inputs)[0]


# --------------------------------------------------------------------------- cells


def test_every_op_that_consumes_a_draw_has_cells():
    assert {name for name, d in OPS.items() if d.draws} == set(cells.CELLS)


@settings(max_examples=40)
@given(st.lists(distributions(st.integers(2, 5)), min_size=1, max_size=3), st.integers(1, 2))
def test_sample_cells_are_the_tokens_intervals(rows, elements):
    V = max(len(p) for p in rows)
    probs = torch.stack([torch.cat([p, p.new_zeros(V - len(p))]) for p in rows])  # [R, V]
    probs = probs[:, None].expand(-1, elements, -1) if elements > 1 else probs  # [R, (E,) V]
    u, prob = cells.sample(probs)
    assert torch.allclose(prob.sum(1), torch.ones(len(rows), dtype=torch.float64), atol=1e-15)
    R, C = prob.shape
    flat = probs.reshape(R, -1, V)
    for c in range(C):
        tokens = eager_rule("sample", probs, u[:, c])  # the eager rule at the cell's representative
        expected = torch.ones(R, dtype=torch.float64)
        for e, tok in enumerate(tokens.reshape(R, -1).T):
            expected = expected * flat[torch.arange(R), e, tok]
        live = prob[:, c] > 0
        assert torch.allclose(prob[live, c], expected[live], atol=1e-15)  # each cell is the tokens its u draws


def test_sample_cells_match_a_uniform_grid():
    probs = torch.tensor([[0.1, 0.2, 0.0, 0.3, 0.4]], dtype=torch.float64)
    _, prob = cells.sample(probs)
    n = 10_000
    grid = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    counts = torch.bincount(eager_rule("sample", probs.expand(n, -1), grid), minlength=5)
    assert (counts / n - prob[0]).abs().max() <= 1 / n


@st.composite
def proposals(draw):
    """(p [R, K+1, V], q [R, K, V], drafts [R, K], drafted [R]) with drafts in q's support."""
    R, K, V = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 4))
    dist = lambda: draw(distributions(V))
    p = torch.stack([torch.stack([dist() for _ in range(K + 1)]) for _ in range(R)])
    q = torch.stack([torch.stack([dist() for _ in range(K)]) for _ in range(R)])
    drafts = torch.tensor([[draw(st.sampled_from(torch.nonzero(q[r, i]).flatten().tolist())) for i in range(K)] for r in range(R)])
    drafted = torch.tensor([draw(st.integers(1, K)) for _ in range(R)])
    return p, q, drafts, drafted


@settings(max_examples=60)
@given(proposals(), st.lists(st.floats(0, 1, exclude_max=True), min_size=4, max_size=4))
def test_rejection_accept_cells_partition_u_by_the_accepted_count(proposal, some_u):
    p, q, drafts, drafted = proposal
    R, K = drafts.shape
    u, prob = cells.rejection_accept(p, q, drafts, drafted)
    assert torch.allclose(prob.sum(1), torch.ones(R, dtype=torch.float64), atol=1e-15)
    for j in range(K + 1):
        n = eager_rule("rejection_accept", p, q, drafts, drafted, u[:, j])
        live = prob[:, j] > 0
        assert (n[live] == j).all()  # the representative of cell j accepts exactly j drafts
    # any u falls in the cell of the count eager gives it: P(n = j) = prod_{i<j} a_i (1 - a_j)
    n = eager_rule("rejection_accept", p, q, drafts, drafted, torch.tensor([some_u[:K]] * R, dtype=torch.float64))
    assert (prob[torch.arange(R), n] > 0).all()


# --------------------------------------------------------------------------- tiny graphs


def sampling_graph():
    """One token from the target, through softmax: the smallest round with a draw."""
    b = Builder("round")
    ctx = b.input(CTX)
    probs = b.emit("softmax", [b.emit("model_call", [ctx], model="target", last=True)[0]])[0]
    b.emit("commit", [b.emit("sample", [probs, b.emit("uniform", [], shape=("B",))[0]])[0]])
    return b.build()


def test_one_draw_per_token_gives_the_product_of_the_tables():
    model = TableModel(torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.6, 0.3], [1.0, 0.0, 0.0]], dtype=torch.float64)))
    dist = exact_distribution(sampling_graph(), [1], 2, models={"target": model})
    expected = {(0, 0): 0.05, (0, 1): 0.05, (1, 0): 0.06, (1, 1): 0.36, (1, 2): 0.18, (2, 0): 0.3}
    assert dist.keys() == expected.keys()  # zero-probability tokens never appear
    assert all(math.isclose(dist[s], p, abs_tol=1e-15) for s, p in expected.items())
    assert dist.rounds == 2 and dist.peak_rows == 6  # round 2: one row per (first token, second token)


def test_a_graph_without_draws_is_a_point_mass():
    target = TableModel.random(5, 2, seed=3)
    dec = decspec.compile("specs/speculative_greedy.dec", target=target, draft=TableModel.random(5, 2, seed=4), k=3)
    dist = exact_distribution(dec, [1, 2], 6)
    assert dict(dist) == {tuple(greedy_tokens(target, [1, 2], 6)): 1.0}
    assert dist.error_bound == 0.0


# --------------------------------------------------------------------------- speculative decoding


def speculative(V=3, k=2, seed=0, **params):
    target = TableModel.random(V, 1, seed=seed, eos_token_id=params.pop("eos", None))
    draft = TableModel.random(V, 1, seed=seed + 1, temperature=2.0)
    return target, decspec.compile("specs/speculative.dec", target=target, draft=draft, k=k, **params)


def test_rows_reaching_the_same_tokens_merge_and_weights_sum_to_one():
    target, dec = speculative(V=3, k=3, temperature=1.0, top_p=1.0)
    dist = exact_distribution(dec, [1], 3)
    assert len(dist) == 27  # every 3-token sequence once, however many rounds and drafts led to it
    assert dist.peak_rows > 27
    assert abs(sum(dist.values()) - 1) <= dist.error_bound
    assert 0 < dist.error_bound < 1e-12
    assert tv_distance(dist, sequence_distribution(target, [1], 3)) < 1e-12


def test_a_graph_and_models_work_as_well_as_a_decoder():
    target, dec = speculative()
    by_graph = exact_distribution(dec.graph, [0], 2, models=dec.models)
    assert dict(by_graph) == dict(exact_distribution(dec, [0], 2))


def test_the_exact_distribution_is_what_eager_samples_eos_and_exit_included():
    """The same semantics as backends/runtime.py: per-row stopping at EOS, exit policies, k > tokens left."""
    target = TableModel.random(3, 1, seed=5, eos_token_id=2)
    draft = TableModel.random(3, 1, seed=6, temperature=2.0)
    spec = 'decoder d() {\n target = model("target")\n draft = model("draft")\n propose = autoregressive(draft, max = 3)\n' \
           ' stop = when draft.prob < 0.5\n verify = rejection\n}'
    dec = decspec.compile(spec, target=target, draft=draft)
    dist = exact_distribution(dec, [1], 4)
    assert any(len(s) < 4 for s in dist) and all(s[-1] == 2 for s in dist if len(s) < 4)
    samples = dec.generate([[1]] * 4000, max_new_tokens=4, seed=0).tokens
    assert chi_square(samples, dist)[1] > 1e-6


def test_the_exact_table_samples_too():
    target, dec = speculative(k=3)
    sampled = decspec.compile("specs/speculative.dec", backend="exact", models=dec.models, k=3)
    assert sampled.backend.NAME == "exact"
    out = sampled.generate([[1]] * 3000, max_new_tokens=3, seed=0)
    assert chi_square(out.tokens, exact_distribution(dec, [1], 3))[1] > 1e-6


def test_too_many_rows_is_a_diagnostic():
    _, dec = speculative(V=4, k=4)
    with pytest.raises(TooLarge, match="more than 100 rows"):
        exact_distribution(dec, [1], 3, max_rows=100)


def test_rules_keep_the_eager_signatures():
    import inspect

    for name, rule in RULES.items():
        assert inspect.signature(rule) == inspect.signature(eager.RULES[name]), name


def test_a_draw_over_too_many_combinations_is_refused_before_it_is_built():
    """`sample` over several positions at once has V^positions cells per row: counted first, refused past the bound
    (a greedy verifier at temperature 1 with 21 positions of 23 tokens asked for 190 GB before)."""
    from decspec.backends.exact.cells import MAX_CELLS, sample
    from decspec.backends.exact.rows import TooLarge

    with pytest.raises(TooLarge, match=f"more than {MAX_CELLS:,} cells in one draw"):
        sample(torch.full((1, 21, 23), 1 / 23, dtype=torch.float64))
    u, prob = sample(torch.full((2, 3, 4), 0.25, dtype=torch.float64))  # 4^3 cells per row: built
    assert u.shape == (2, 64, 3) and torch.allclose(prob.sum(1), torch.ones(2, dtype=torch.float64))
