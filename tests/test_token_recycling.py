"""Token recycling (`propose = recycle(...)`, Luo et al. 2024): drafts walked from a matrix of the target's past top tokens.

The matrix walk and update on hand-made matrices and against a plain-Python reference; the
runtime carrying the matrix across rounds (per row, finished rows keep theirs); greedy
equivalence on table models and on the shipped target; exact losslessness when sampling (the
exact backend carries one matrix per world, and a verifier that accepts everything is caught,
which it would not be if no world ever drafted); the checker's diagnostics.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.draft_state import DraftStates
from decspec.dsl.diagnostics import DecError
from decspec.stdlib import recycling
from decspec.stdlib.models.table import TableModel
from decspec.testing import assert_greedy_equivalent, assert_lossless, broken_verifier, exact_distribution, greedy_tokens, target_distribution, tv_distance

SPEC = "specs/token_recycling.dec"


def matrix(rows: dict[int, list[int]], V: int = 6, C: int = 2) -> torch.Tensor:
    adj = recycling.empty(1, V, C)
    for t, cands in rows.items():
        adj[0, t, : len(cands)] = torch.tensor(cands)
    return adj


# --------------------------------------------------------------------------- the walk


def test_the_chain_follows_the_first_column_until_an_unseen_token():
    adj = matrix({2: [4, 1], 4: [5, 0], 5: [4, 3]})
    d, count = recycling.walk(adj, torch.tensor([2]), 5)
    assert d.tolist() == [[4, 5, 4, 5, 4]] and count.tolist() == [5]  # a cycle is walked as long as max allows
    d, count = recycling.walk(matrix({2: [4, 1], 4: [3, 0]}), torch.tensor([2]), 5)
    assert d.tolist() == [[4, 3, 0, 0, 0]] and count.tolist() == [2]  # M[3] unseen: the chain stops
    d, count = recycling.walk(matrix({}), torch.tensor([2]), 3)
    assert count.tolist() == [0] and d.abs().sum() == 0


def test_drafts_start_from_each_rows_last_token_with_one_hot_q():
    adj = torch.cat([matrix({1: [3, 0], 3: [2, 0]}), matrix({4: [1, 0]})])
    ctx = torch.tensor([[0, 1, 9, 9], [2, 4, 4, 9]])  # the tokens past each row's length are never read
    d, q, count = recycling.drafts(ctx, torch.tensor([2, 3]), adj, 3, vocab=6)
    assert count.tolist() == [2, 1] and d.tolist() == [[3, 2, 0], [1, 0, 0]]
    assert q[0, 0].tolist() == [0, 0, 0, 1, 0, 0] and q[0, 1].tolist() == [0, 0, 1, 0, 0, 0]
    assert q[0, 2].abs().sum() == 0 and q[1, 1:].abs().sum() == 0  # no distribution past the count


def test_the_tree_reads_a_column_per_sibling():
    adj = matrix({2: [4, 1], 4: [5, 0], 1: [3, 2]}, V=6, C=2)
    tokens, q, count = recycling.tree_drafts(torch.tensor([[0, 2]]), torch.tensor([2]), adj, (0, 0, 1, 2), vocab=6)
    # root reads 2: children M[2, 0] = 4, M[2, 1] = 1; then one child each: M[4, 0] = 5, M[1, 0] = 3
    assert tokens.tolist() == [[4, 1, 5, 3]] and count.tolist() == [4]
    assert torch.equal(q[0], torch.nn.functional.one_hot(tokens[0], 6).float())
    tokens, _, _ = recycling.tree_drafts(torch.tensor([[3]]), torch.tensor([1]), adj, (0, 1), vocab=6)
    assert tokens.tolist() == [[0, 0]]  # nothing read after 3 yet: placeholder nodes (verified away like any wrong draft)


# --------------------------------------------------------------------------- the update


def reference_update(adj: list[list[list[int]]], read: list[list[int]], count: list[int], logits: torch.Tensor) -> list:
    """The update in plain Python: for j = 0..count, M[read_j] = the C best tokens at position j (later j wins)."""
    out = [[list(r) for r in m] for m in adj]
    C = len(adj[0][0])
    for b, m in enumerate(out):
        for j in range(count[b] + 1):
            order = sorted(range(logits.shape[-1]), key=lambda v: (-float(logits[b, j, v]), v))[:C]
            m[read[b][j]] = order + [recycling.UNSEEN] * (C - len(order))
    return out


def test_every_scored_position_updates_its_token_rejected_drafts_included():
    adj = matrix({0: [5, 5]}, V=4, C=2)
    ctx = torch.tensor([[3, 1]])
    d, count = torch.tensor([[2, 0, 3]]), torch.tensor([2])  # two drafts: positions 0 (after 1), 1 (after 2), 2 (after 0) scored
    logits = torch.tensor([[[0.0, 1, 3, 2], [5, 0, 1, 2], [0, 9, 8, 0], [9, 9, 9, 9]]])
    new = recycling.update(adj, ctx, torch.tensor([2]), d, count, logits)
    assert new[0, 1].tolist() == [2, 3]  # read ctx's last token 1: the target's top-2 there
    assert new[0, 2].tolist() == [0, 3]  # read d_1 = 2
    assert new[0, 0].tolist() == [1, 2]  # read d_2 = 0, whatever was accepted: the old [5, 5] is replaced
    assert new[0, 3].tolist() == [-1, -1]  # d_3 = 3 was not drafted (count 2): position 3 is not read
    assert adj[0, 0].tolist() == [5, 5]  # the update builds a new matrix


def test_a_token_read_twice_keeps_its_later_candidates():
    logits = torch.tensor([[[0.0, 5, 0], [0, 0, 5], [5, 0, 0]]])
    new = recycling.update(recycling.empty(1, 3, 1), torch.tensor([[1]]), torch.tensor([1]), torch.tensor([[1, 1]]),
                           torch.tensor([2]), logits)
    assert new[0, 1].tolist() == [0]  # 1 is read at positions 0, 1 and 2: position 2's best (token 0) stays


def test_more_candidates_than_tokens_pads_with_unseen():
    new = recycling.update(recycling.empty(1, 2, 3), torch.tensor([[0]]), torch.tensor([1]), torch.zeros(1, 1, dtype=torch.long),
                           torch.tensor([0]), torch.tensor([[[1.0, 2.0], [0.0, 0.0]]]))
    assert new[0, 0].tolist() == [1, 0, recycling.UNSEEN]


@settings(max_examples=100)
@given(data=st.data(), B=st.integers(1, 3), V=st.integers(2, 6), C=st.integers(1, 4), K=st.integers(1, 4))
def test_update_equals_the_plain_python_reference(data, B, V, C, K):
    ints = lambda lo, hi, n: data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
    adj = torch.tensor([[ints(-1, V - 1, C) for _ in range(V)] for _ in range(B)])
    length = torch.tensor(ints(1, 4, B))
    ctx = torch.tensor([ints(0, V - 1, 4) for _ in range(B)])
    d = torch.tensor([ints(0, V - 1, K) for _ in range(B)])
    count = torch.tensor(ints(0, K, B))
    logits = torch.tensor([[ints(-3, 3, V) for _ in range(K + 1)] for _ in range(B)], dtype=torch.float64)
    logits += torch.arange(V, dtype=torch.float64) * -1e-3  # no ties: topk's order among equal logits is unspecified
    read = [[int(ctx[b, length[b] - 1])] + d[b].tolist() for b in range(B)]
    got = recycling.update(adj, ctx, length, d, count, logits)
    assert got.tolist() == reference_update(adj.tolist(), read, count.tolist(), logits)


# --------------------------------------------------------------------------- the runtime carries the matrix


def test_draft_states_stage_and_keep_finished_rows():
    dec = decspec.compile(SPEC, target=TableModel.random(4, 1, seed=0), candidates=2)
    states = DraftStates.start(dec.graph, dec._bound_models(), 2)
    (op,) = [op for op in dec.graph.walk() if op.name == "recycle_state"]
    (adj,) = states.get(op)
    assert adj.shape == (2, 4, 2) and (adj == recycling.UNSEEN).all()
    staged = torch.arange(16).view(2, 4, 2)
    states.stage(op, (staged,))
    states.update(torch.tensor([True, False]))  # row 1 finished: it keeps its matrix
    (adj,) = states.get(op)
    assert torch.equal(adj[0], staged[0]) and (adj[1] == recycling.UNSEEN).all()
    assert states.key().shape == (2, 8) and states.select(torch.tensor([0])).get(op)[0].shape == (1, 4, 2)


def test_rounds_learn_from_the_target_and_draft_from_it():
    target = TableModel.random(5, 1, seed=4)
    dec = decspec.compile(SPEC, target=target)
    out = dec.generate([[0, 1, 2, 3], [4]], max_new_tokens=12, seed=0)
    assert out.tokens == [greedy_tokens(target, p, 12) for p in ([0, 1, 2, 3], [4])]
    assert out.stats.drafted[0] == [0, 0]  # nothing recycled before the first round
    assert out.stats.drafted[1] == [0, 0]  # round 1 read only the last prompt token; round 2 starts from the token it added
    assert any(d > 0 for r in out.stats.drafted for d in r)  # once a token comes back, its recycled candidates are drafted
    assert out.stats.rounds < 12 and out.stats.mean_accepted > 0


greedy_cases = st.fixed_dictionaries(
    {
        "vocab": st.integers(2, 8),
        "order": st.integers(1, 2),
        "seed": st.integers(0, 10_000),
        "k": st.integers(1, 6),
        "candidates": st.integers(1, 9),
        "verify": st.sampled_from(["rejection", "greedy"]),
        "prompts": st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=8), min_size=1, max_size=3),
        "max_new_tokens": st.integers(1, 16),
    }
)


@settings(max_examples=30, deadline=None)
@given(case=greedy_cases)
def test_greedy_recycling_is_greedy_decoding(case):
    V = case["vocab"]
    target = TableModel.random(V, case["order"], seed=case["seed"], eos_token_id=1 if case["seed"] % 2 else None)
    text = open(SPEC).read().replace("verify  = rejection", f"verify  = {case['verify']}")
    prompts = [[t % V for t in p] for p in case["prompts"]]
    assert_greedy_equivalent(text, models={"target": target}, prompts=prompts, max_new_tokens=case["max_new_tokens"],
                             exact=False, k=case["k"], candidates=case["candidates"])


def test_greedy_on_the_shipped_target():
    dec = decspec.compile(SPEC, k=4)  # the shipped reference target (stdlib/models/reference)
    target = dec._bound_models()["target"]
    prompts = [dec.tokenizer.encode("def fibonacci(n):"), dec.tokenizer.encode("import os\n")]
    out = dec.generate(prompts, max_new_tokens=24, seed=0, eos_token_id=None)
    assert out.tokens == [greedy_tokens(target, p, 24) for p in prompts]
    assert out.stats.mean_accepted > 0


def tree_spec(widths: str, verify: str = "multi_rejection") -> str:
    return (open(SPEC).read().replace("candidates = candidates)", f"candidates = candidates, widths = {widths})")
            .replace("verify  = rejection", f"verify  = {verify}"))


@settings(max_examples=20, deadline=None)
@given(case=greedy_cases, widths=st.sampled_from(["[2]", "[2, 1]", "[3, 2, 1]", "[1, 1, 1, 1]"]))
def test_greedy_recycling_tree_is_greedy_decoding(case, widths):
    V = case["vocab"]
    target = TableModel.random(V, case["order"], seed=case["seed"], eos_token_id=1 if case["seed"] % 2 else None)
    verify = "multi_rejection" if case["verify"] == "rejection" else "greedy"
    prompts = [[t % V for t in p] for p in case["prompts"]]
    assert_greedy_equivalent(tree_spec(widths, verify), models={"target": target}, prompts=prompts, exact=False,
                             max_new_tokens=case["max_new_tokens"], candidates=max(3, case["candidates"]))


# --------------------------------------------------------------------------- exact losslessness


@pytest.mark.parametrize("prompt", [[1], [0, 2, 0]])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_recycling_is_exactly_lossless_when_sampling(prompt, temperature):
    target = TableModel.random(3, 1, seed=sum(prompt), eos_token_id=2 if prompt == [1] else None)
    check = assert_lossless(SPEC, models={"target": target}, prompt=prompt, max_new_tokens=4, method="exact",
                            temperature=temperature, k=2, candidates=2)
    assert check.method == "exact"


@pytest.mark.parametrize("widths", ["[2, 1]", "[3]"])
def test_the_tree_is_exactly_lossless_when_sampling(widths):
    target = TableModel.random(3, 1, seed=3)
    assert_lossless(tree_spec(widths), models={"target": target}, prompt=[0, 2], max_new_tokens=4, method="exact",
                    temperature=1.0, candidates=3)


def test_the_exact_backend_drafts_from_each_worlds_matrix():
    """A verifier that accepts every draft is lossless only when nothing is drafted: caught exactly here,
    so the exact backend's worlds did carry their matrices into later rounds and drafted from them."""
    target = TableModel.random(3, 1, seed=5)
    text = open(SPEC).read()
    with broken_verifier() as name:
        dec = decspec.compile(text.replace("verify  = rejection", f"verify  = {name}"), target=target, temperature=1.0, k=2)
        got = exact_distribution(dec, [0], 4)
    assert tv_distance(got, target_distribution(dec, [0], 4)) > 1e-3


# --------------------------------------------------------------------------- diagnostics


def spec_text(propose: str, extra: str = "", verify: str = "greedy") -> str:
    return f'decoder d() {{\n    target = model("target")\n    propose = {propose}\n{extra}    verify = {verify}\n}}\n'


def test_an_exit_policy_needs_a_draft_model():
    with pytest.raises(DecError, match="`recycle` drafts without a model") as info:
        decspec.compile(spec_text("recycle()", "    stop = when draft.prob < 0.3\n"), target=TableModel.random(3, 1, seed=0))
    assert info.value.diagnostics[0].span is not None


@pytest.mark.parametrize("arg", ["max = 0", "max = 65", "candidates = 0", "candidates = 65", "candidates = 2.5", "width = 3"])
def test_parameters_are_bounded(arg):
    with pytest.raises(DecError):
        decspec.compile(spec_text(f"recycle({arg})"), target=TableModel.random(3, 1, seed=0))


def test_tree_diagnostics():
    target = TableModel.random(3, 1, seed=0)
    with pytest.raises(DecError, match=r"takes 3 children of a node from a matrix row of 2 candidates"):
        decspec.compile(spec_text("recycle(candidates = 2, widths = [3, 1])"), target=target)
    with pytest.raises(DecError, match="cannot verify a token tree"):
        decspec.compile(spec_text("recycle(widths = [2, 1])", verify="rejection"), target=target)
    with pytest.raises(DecError, match="at least 1"):
        decspec.compile(spec_text("recycle(widths = [2, 0])"), target=target)


def test_the_analysis_says_why():
    verdict = decspec.compile(SPEC, target=TableModel.random(3, 1, seed=0)).verdict
    text = str(verdict)
    assert verdict.lossless and "propose = recycle" in text and "earlier rounds" in text


# --------------------------------------------------------------------------- the inductor and mlir backends

PROMPTS = [[5, 6, 7, 8, 5, 6, 7], [9, 10, 9, 10, 9], [11], [3, 4, 5, 3, 4, 5, 3, 4]]  # ragged, repetitive, one token


def test_inductor_equals_eager_and_compiles_to_one_graph():
    from torch._dynamo.utils import counters

    from decspec.stdlib.models.default import random_models

    models = {"target": random_models(seed=3)["target"]}
    a = decspec.compile(SPEC, models=models, k=3).generate(PROMPTS, max_new_tokens=14, seed=0)
    assert any(d > 0 for r in a.stats.drafted for d in r)
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile(SPEC, models=models, k=3, backend="inductor")
    dec.backend_options = {"compile": True}
    b = dec.generate(PROMPTS, max_new_tokens=14, seed=0)
    assert a.tokens == b.tokens and a.stats.accepted == b.stats.accepted and a.stats.drafted == b.stats.drafted
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]  # the matrix is an input, not a graph break


def test_mlir_export_carries_the_matrix_and_refuses_the_tree():
    """The exported round (RoundModule) takes the matrix as an input after the caches and returns the round's new one;
    the tree form is refused naming `recycle_tree` and its line (the inductor generator does not emit it)."""
    from decspec.backends.mlir.export import check_exportable
    from decspec.backends.mlir.round import RoundModule
    from decspec.stdlib.models.default import random_models

    models = {"target": random_models(seed=3)["target"]}
    dec = decspec.compile(SPEC, models=models, k=3)
    check_exportable(dec.graph)
    module = RoundModule(dec.graph, models, batch=1, capacity=64)
    assert module.input_names()[-1] == module.output_names()[-1] == "draft_state.recycle.0"
    args = module.example_inputs()
    adj = module(*args)[-1]
    assert adj.shape == args[-1].shape == (1, 512, 8) and not torch.equal(adj, args[-1])  # the round learned
    tree = decspec.compile(spec_text("recycle(widths = [2, 1])"), target=TableModel.random(3, 1, seed=0))
    with pytest.raises(DecError, match=r"cannot export op 'recycle_tree' \(spec line 3:15\)"):
        check_exportable(tree.graph)
