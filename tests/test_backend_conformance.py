"""Every backend interprets every IR op; failures name the op, the backend and the .dec line.

Backends are listed in BACKENDS below: adding one is one line. The second half checks the
eager rules (the reference semantics) on small tensors; tests/test_backend_exact.py checks the
exact backend's distributions against them.
"""
from __future__ import annotations

import importlib
import inspect
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec.backends
from decspec.backends.eager import rules as eager
from decspec.backends.interpreter import BackendError, run_graph
from decspec.compiler.builder import Builder
from decspec.compiler.ir import CTX, Graph, Meta, Op, Type, Value
from decspec.compiler.lower import lower
from decspec.compiler.ops import OPS
from decspec.compiler.passes import run_pipeline
from decspec.dsl.diagnostics import DecError
from decspec.dsl.spec import Cond, Spec, Stat
from decspec.stdlib import registry
from test_ir_text import SOURCE, inst, model

BACKENDS = [
    "decspec.backends.eager",
    "decspec.backends.exact",
]
GENERATED = ["decspec.backends.inductor"]  # backends that emit code instead of interpreting: tests/test_backend_inductor.py


def backend(module: str):
    return importlib.import_module(module)


# --------------------------------------------------------------------------- tables


def test_every_registered_backend_is_tested():
    assert set(decspec.backends.BACKENDS) <= {backend(m).NAME for m in BACKENDS + GENERATED}


@pytest.mark.parametrize("module", GENERATED)
@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_can_be_emitted(module, op):
    from decspec.backends.inductor.codegen import NOT_YET  # ops listed as not yet emitted (docs/backends.md), with the reason

    assert backend(module).can_emit(op) or op in NOT_YET, f"the {backend(module).NAME} backend cannot emit {op!r}"


@pytest.mark.parametrize("module", BACKENDS)
@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_has_a_rule(module, op):
    assert callable(backend(module).RULES.get(op)), f"the {backend(module).NAME} backend has no rule for {op!r}"


@pytest.mark.parametrize("module", BACKENDS)
def test_no_rule_for_an_unknown_op(module):
    assert set(backend(module).RULES) <= set(OPS)


def conformance_specs() -> list[Spec]:
    """Specs whose lowerings use every op but argmax, in every arity the lowering emits."""
    stat = lambda name: Stat(registry.lookup("stat", name))
    cond = Cond("or", (Cond("not", (Cond("<", (stat("prob"), 0.3)),)), Cond("and", (Cond(">", (stat("entropy"), 2.0)), Cond("<", (0.1, stat("prob")))))))
    out = [Spec("ar", (), (("target", model("target")),), SOURCE)]
    for verifier in registry.components("verifier"):
        slots = (
            ("target", model("target")),
            ("sampler", (inst(registry.lookup("sampler", "top_k"), k=3),)),
            ("propose", inst(registry.lookup("draft", "autoregressive"), model=model("draft"), max=3)),
            ("stop", inst(registry.lookup("exit", "when"), cond=cond)),
            ("verify", inst(verifier)),
        )
        out.append(Spec("spec", (), slots, SOURCE))
        lookup = inst(registry.lookup("draft", "lookup"), ngram=2, max=3)  # drafts copied from the context, no model
        out.append(Spec("lookup", (), (slots[0], slots[1], ("propose", lookup), slots[4]), SOURCE))
        recycle = inst(registry.lookup("draft", "recycle"), max=3, candidates=2)  # drafts from the target's past top tokens, no model
        out.append(Spec("recycle", (), (slots[0], slots[1], ("propose", recycle), slots[4]), SOURCE))
        ahead = inst(registry.lookup("draft", "lookahead"), window=3, ngram=2, pool=2)  # Jacobi window and n-gram pool, no model
        out.append(Spec("lookahead", (), (slots[0], slots[1], ("propose", ahead), slots[4]), SOURCE))
        out.append(Spec("grammar", (), slots + (("grammar", GRAMMAR),), SOURCE))  # masks on target and draft
        forced = inst(registry.lookup("draft", "forced"), max=3)  # the tokens the grammar forces, no model
        out.append(Spec("forced", (), (slots[0], slots[1], ("propose", forced), slots[4], ("grammar", GRAMMAR)), SOURCE))
        then = inst(registry.lookup("draft", "autoregressive"), model=model("draft"), max=2)
        chained = inst(registry.lookup("draft", "forced_then"), then=then, max=3)  # forced_then: a draft loop over ctx ++ forced
        out.append(Spec("forced_then", (), (slots[0], slots[1], ("propose", chained), slots[4], ("grammar", GRAMMAR)), SOURCE))
    out.append(Spec("ar_grammar", (), (("target", model("target")), ("grammar", GRAMMAR)), SOURCE))
    for kind in ("medusa", "hydra"):  # draft heads on the target (model_hidden, head_logits), with an exit policy
        heads = inst(registry.lookup("draft", "heads"), model=model("target"), kind=kind, max=3)
        out.append(Spec("heads", (), (("target", model("target")), ("propose", heads), ("stop", inst(registry.lookup("exit", "when"), cond=cond)),
                                      ("verify", inst(registry.lookup("verifier", "rejection")))), SOURCE))
    eagle = inst(registry.lookup("draft", "eagle"), model=model("target"), max=3, window=2)  # model_features, eagle_logits
    out.append(Spec("eagle", (), (("target", model("target")), ("propose", eagle), ("verify", inst(registry.lookup("verifier", "rejection")))), SOURCE))
    dynamic = inst(registry.lookup("draft", "dynamic_exit"), model=model("target"), layers=(1, 2), max=3, policy="ucb")  # draft_arm, model_select
    out.append(Spec("dynamic_exit", (), (("target", model("target")), ("propose", dynamic), ("verify", inst(registry.lookup("verifier", "rejection")))), SOURCE))
    skips = inst(registry.lookup("draft", "dynamic_skip"), model=model("target"), max=3, policy="search", skip=1, layers=(0, 1, 2), pool=2)  # draft_arm of the skip search
    out.append(Spec("dynamic_skip", (), (("target", model("target")), ("propose", skips), ("verify", inst(registry.lookup("verifier", "rejection")))), SOURCE))
    inner = inst(registry.lookup("draft", "lookup"), ngram=2, max=2)
    staged = inst(registry.lookup("draft", "staged"), model=model("draft"), inner=inner, max=3)  # staged_loop
    out.append(Spec("staged", (), (("target", model("target")), ("propose", staged), ("verify", inst(registry.lookup("verifier", "rejection")))), SOURCE))
    tree = inst(registry.lookup("draft", "tree"), model=model("draft"), widths=(2, 1))  # a token tree (stdlib/trees.py)
    for verifier in [c for c in registry.components("verifier") if c.trees]:
        for sampler in ("top_k", "greedy"):  # i.i.d. children; top-k children under a greedy pipeline
            stage = inst(registry.lookup("sampler", sampler), **({"k": 3} if sampler == "top_k" else {}))
            slots = (("target", model("target")), ("sampler", (stage,)), ("propose", tree), ("verify", inst(verifier)))
            out.append(Spec("tree", (), slots, SOURCE))
        distinct = inst(registry.lookup("draft", "tree"), model=model("draft"), widths=(2, 1), replacement=False)  # sample_distinct
        head_tree = inst(registry.lookup("draft", "heads"), model=model("target"), kind="medusa", tree=(2, 1), replacement=False)  # head_level
        for propose in (distinct, head_tree):
            out.append(Spec("tree", (), (("target", model("target")), ("propose", propose), ("verify", inst(verifier))), SOURCE))
        grown = inst(registry.lookup("draft", "dynamic_tree"), model=model("draft"), children=2, expand=1, depth=3)  # tree_expand
        for sampler in ("top_k", "greedy"):  # per-row shapes: parents as a value in tree_call, tree_match, tree_rejection
            stage = inst(registry.lookup("sampler", sampler), **({"k": 3} if sampler == "top_k" else {}))
            out.append(Spec("dynamic_tree", (), (("target", model("target")), ("sampler", (stage,)), ("propose", grown), ("verify", inst(verifier))), SOURCE))
        sequoia = inst(registry.lookup("draft", "sequoia"), model=model("draft"), budget=5, depth=2, acceptance=(0.6, 0.3))
        for sampler in ("top_k", "greedy"):  # an irregular static tree: per-node counts in repeat, sample_distinct, tree_topk
            stage = inst(registry.lookup("sampler", sampler), **({"k": 3} if sampler == "top_k" else {}))
            out.append(Spec("sequoia", (), (("target", model("target")), ("sampler", (stage,)), ("propose", sequoia), ("verify", inst(verifier))), SOURCE))
        reranked = inst(registry.lookup("draft", "eagle2_tree"), model=model("draft"), children=2, expand=1, depth=3, nodes=4)  # tree_rerank
        out.append(Spec("eagle2_tree", (), (("target", model("target")), ("propose", reranked), ("verify", inst(verifier))), SOURCE))
        recycled = inst(registry.lookup("draft", "recycle"), candidates=2, widths=(2, 1))  # token recycling's static tree
        out.append(Spec("recycle_tree", (), (("target", model("target")), ("propose", recycled), ("verify", inst(verifier))), SOURCE))
    # combined targets (logits_combine, stdlib/combine.py): contrastive decoding drafted by its amateur, DoLa over two layers
    contrastive = inst(registry.lookup("model", "contrastive"), expert=model("target"), amateur=model("draft"), alpha=0.1, beta=0.5, form="weighted")
    out.append(Spec("contrastive", (), (("target", contrastive), ("propose", inst(registry.lookup("draft", "autoregressive"), model=model("draft"), max=3)),
                                        ("verify", inst(registry.lookup("verifier", "rejection")))), SOURCE))
    dola = inst(registry.lookup("model", "dola"), model=model("target"), layers=(1, 2), relative_top=0.1, norm=True)
    out.append(Spec("dola", (), (("target", dola),), SOURCE))
    # exits that carry a value across draft steps (mul) and call a predictor, or cap the loop across rounds (length_cap)
    ar = inst(registry.lookup("draft", "autoregressive"), model=model("draft"), max=3)
    for stop in (inst(registry.lookup("exit", "predicted"), threshold=0.4, predictor="confidence"),
                 inst(registry.lookup("exit", "heuristic"), start=2), inst(registry.lookup("exit", "bandit"), arms=(1, 3), algorithm="exp3")):
        out.append(Spec("exit", (), (("target", model("target")), ("propose", ar), ("stop", stop),
                                     ("verify", inst(registry.lookup("verifier", "rejection")))), SOURCE))
    return out


GRAMMAR = inst(registry.lookup("grammar", "regex"), pattern="(ab|c)+d?")


def grammars(graph: Graph) -> dict:
    """The matcher a conformance graph's grammar ops read, over the tables' 5-token vocabulary (id 4: EOS)."""
    if not any(op.name == "grammar_state" for op in graph.walk()):
        return {}
    from decspec.stdlib.grammars import compile_grammar

    return {"grammar": compile_grammar("regex", GRAMMAR.arg("pattern"), [b"a", b"b", b"c", b"d", None], eos_id=4)}


@pytest.mark.parametrize("module", BACKENDS)
def test_rules_accept_the_inputs_lowered_ops_pass(module):
    rules = backend(module).RULES
    seen = set()
    for spec in conformance_specs():
        for graph in (lower(spec), run_pipeline(lower(spec))):  # the pipeline fuses logits_transform into sampler_probs
            for op in graph.walk():
                inspect.signature(rules[op.name]).bind(None, op, *op.inputs)  # (state, op, *inputs)
                seen.add(op.name)
    assert seen | {"argmax"} == set(OPS)  # argmax appears only after greedy_sample, under a greedy pipeline


@pytest.mark.parametrize("module", BACKENDS)
def test_every_backend_runs_the_lowered_ops(module):
    """Each backend's rules generate with every conformance spec (the exact backend samples too)."""
    from decspec.backends.runtime import generate
    from decspec.stdlib.models.layered_table import LayeredTableModel
    from decspec.stdlib.models.views import EarlyExit, SkipLayers

    be = backend(module)
    models = {"target": LayeredTableModel.random(5, 1, seed=0), "draft": LayeredTableModel.random(5, 1, seed=1)}  # + layers, heads
    models.update({f"target/exit{i}": EarlyExit(models["target"], i) for i in (1, 2)})  # the views dynamic_exit (and dola) read
    models.update({f"target/skip{i}": SkipLayers(models["target"], (i,)) for i in (0, 1, 2)})  # and dynamic_skip

    for spec in conformance_specs():
        for graph in (lower(spec), run_pipeline(lower(spec))):
            out = generate(graph, models, [[1, 2], [3]], max_new_tokens=4, seed=0, eos_token_id=None, rules=be.RULES, backend=be.NAME,
                           grammars=grammars(graph))
            assert [len(row) for row in out.tokens] == [4, 4]


# --------------------------------------------------------------------------- the interpreter's errors


def one_op_graph(name: str, input_types: list[Type], meta: Meta = Meta(), **params) -> Graph:
    b = Builder("round")
    inputs = [b.input(t) for t in input_types]
    b.meta = meta
    outputs = b.emit(name, inputs, **params)
    return b.build(outputs)


@pytest.mark.parametrize("module", BACKENDS)
def test_missing_rule_names_the_op_and_the_backend(module):
    be = backend(module)
    rules = {k: v for k, v in be.RULES.items() if k != "softmax"}
    graph = one_op_graph("softmax", [Type("f32", ("B", "V"))], Meta(7, 3))
    with pytest.raises(BackendError) as info:
        run_graph(graph, [torch.zeros(1, 3)], None, rules, be.NAME)
    message = str(info.value)
    assert "'softmax'" in message and be.NAME in message and "7:3" in message


def test_missing_rule_without_a_position():
    graph = one_op_graph("entropy", [Type("f32", ("B", "V"))])
    with pytest.raises(BackendError, match=r"^the toy backend has no rule for op 'entropy'$"):
        run_graph(graph, [torch.ones(1, 2) / 2], None, {}, "toy")


@pytest.mark.parametrize("module", BACKENDS)
def test_failure_inside_a_rule_names_the_op_and_the_spec_line(module):
    be = backend(module)
    graph = one_op_graph("take", [Type("tok", ("B", 3)), Type("i64", ("B",))], Meta(7, 3))
    tokens, index = torch.tensor([[4, 5, 6]]), torch.tensor([9])  # index out of range
    with pytest.raises(BackendError) as info:
        run_graph(graph, [tokens, index], None, be.RULES, be.NAME)
    message = str(info.value)
    assert "op 'take'" in message and "spec line 7:3" in message and be.NAME in message
    assert info.value.__cause__ is not None  # the original error is kept


def test_dec_errors_pass_through_unchanged():
    err = DecError("the user's fault")

    def rule(state, op, x):
        raise err

    graph = one_op_graph("softmax", [Type("f32", ("B", "V"))], Meta(2, 1))
    with pytest.raises(DecError) as info:
        run_graph(graph, [torch.zeros(1, 2)], None, {"softmax": rule}, "toy")
    assert info.value is err


def test_run_graph_returns_the_graph_outputs():
    graph = one_op_graph("softmax", [Type("f32", ("B", "V"))])
    (probs,) = run_graph(graph, [torch.zeros(2, 4)], None, eager.RULES, "eager")
    assert torch.allclose(probs, torch.full((2, 4), 0.25))


# --------------------------------------------------------------------------- eager rules


def op(name: str, **params) -> Op:
    return Op(name, (), (), tuple(params.items()))


def call(name: str, *inputs, state=None, **params):
    return eager.RULES[name](state, op(name, **params), *inputs)


BEFORE_ONE = float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))  # the largest float32 < 1


@pytest.mark.parametrize(
    "probs, u, expected",
    [
        ([0.25, 0.25, 0.5], 0.0, 0),
        ([0.25, 0.25, 0.5], 0.2499, 0),
        ([0.25, 0.25, 0.5], 0.25, 1),  # intervals are [cdf_{i-1}, cdf_i)
        ([0.25, 0.25, 0.5], 0.75, 2),
        ([0.25, 0.25, 0.5], BEFORE_ONE, 2),
        ([0.0, 0.0, 1.0], 0.0, 2),  # leading zeros are skipped even at u = 0
        ([0.5, 0.0, 0.5], 0.5, 2),  # an empty interval is never hit
        ([0.5, 0.5, 0.0, 0.0], BEFORE_ONE, 1),  # trailing zeros are never hit
        ([2.0, 6.0], 0.3, 1),  # unnormalized: u scales by the total
    ],
)
def test_sample_inverse_cdf(probs, u, expected):
    (tok,) = call("sample", torch.tensor([probs]), torch.tensor([u]))
    assert tok.tolist() == [expected]
    assert tok.dtype == torch.long


@settings(max_examples=60)
@given(
    st.lists(st.floats(0.0, 1.0) | st.just(0.0), min_size=2, max_size=12).filter(lambda p: sum(p) > 1e-6),
    st.floats(0.0, 1.0, exclude_max=True) | st.just(BEFORE_ONE) | st.just(1 - 2**-53),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_sample_never_picks_a_zero_probability_token(weights, u, dtype):
    probs = torch.tensor(weights, dtype=dtype)
    probs = probs / probs.sum()
    (tok,) = call("sample", probs[None], torch.tensor([u], dtype=dtype))
    assert probs[tok.item()] > 0


def test_sample_on_a_uniform_grid_reproduces_the_probabilities():
    probs = torch.tensor([0.1, 0.2, 0.0, 0.3, 0.4])
    n = 1000
    u = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    (tok,) = call("sample", probs.expand(n, -1), u)
    counts = torch.bincount(tok, minlength=5)
    assert counts[2] == 0
    assert (counts - probs * n).abs().max() <= 1


def test_sample_batched_positions():
    probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])  # [B=1, K=3, V=2]
    (tok,) = call("sample", probs, torch.tensor([[0.9, 0.1, 0.6]]))
    assert tok.tolist() == [[0, 1, 1]]


def test_uniform_shape_range_and_generator():
    state = lambda: SimpleNamespace(batch=3, device="cpu", generator=torch.Generator().manual_seed(5))
    (u,) = call("uniform", state=state(), shape=("B", 4))
    assert u.shape == (3, 4) and u.dtype == torch.float32
    assert ((u >= 0) & (u < 1)).all()
    assert torch.equal(u, call("uniform", state=state(), shape=("B", 4))[0])  # the state's generator


def test_softmax_argmax_token_prob():
    logits = torch.tensor([[0.0, math.log(3.0), float("-inf")]])
    (p,) = call("softmax", logits)
    assert torch.allclose(p, torch.tensor([[0.25, 0.75, 0.0]]))
    assert call("argmax", torch.tensor([[0.4, 0.4, 0.2]]))[0].tolist() == [0]  # first on ties
    assert torch.allclose(call("token_prob", p, torch.tensor([1]))[0], torch.tensor([0.75]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampler_probs_is_softmax_of_logits_transform(dtype):
    """The fused op is the pair, bit for bit, and keeps float64 as float64 like softmax."""
    from decspec.compiler.text import Record

    logits = torch.randn(3, 2, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    stages = (Record("temperature", (("t", 0.7),)), Record("top_k", (("k", 3),)))
    (fused,) = call("sampler_probs", logits, stages=stages)
    (pair,) = call("softmax", call("logits_transform", logits, stages=stages)[0])
    assert fused.dtype == dtype and torch.equal(fused, pair)


def test_entropy():
    V = 8
    (h,) = call("entropy", torch.stack([torch.full((V,), 1 / V), torch.eye(V)[3], torch.tensor([0.5, 0.5] + [0.0] * (V - 2))]))
    assert torch.isfinite(h).all()
    assert torch.allclose(h, torch.tensor([math.log(V), 0.0, math.log(2)]), atol=1e-6)


@pytest.mark.parametrize(
    "cmp, expected",
    [("<", [True, False, False]), ("<=", [True, True, False]), (">", [False, False, True]), (">=", [False, True, True]), ("==", [False, True, False]), ("!=", [True, False, True])],
)
def test_compare(cmp, expected):
    (out,) = call("compare", torch.tensor([0.1, 0.3, 0.9]), op=cmp, value=0.3)
    assert out.tolist() == expected and out.dtype == torch.bool


def test_logical():
    a, b = torch.tensor([True, True, False, False]), torch.tensor([True, False, True, False])
    assert call("logical", a, b, op="and")[0].tolist() == [True, False, False, False]
    assert call("logical", a, b, op="or")[0].tolist() == [True, True, True, False]
    assert call("logical_not", a)[0].tolist() == [False, False, True, True]


def rows(*ps) -> torch.Tensor:
    return torch.tensor(ps, dtype=torch.float32)


def test_rejection_accept_counts_the_accepted_prefix():
    # V = 2, K = 3, B = 4: p_i(d_i) / q_i(d_i) is 1 at every position except where noted
    q = rows([[0.5, 0.5]] * 3, [[0.5, 0.5]] * 3, [[0.5, 0.5]] * 3, [[0.5, 0.5]] * 3)
    p = q.clone()
    p = torch.cat([p, torch.full((4, 1, 2), 0.5)], dim=1)  # [B, K+1, V]
    d = torch.zeros(4, 3, dtype=torch.long)
    p[1, 1] = torch.tensor([0.0, 1.0])  # row 1: p(d_1) = 0, rejected at 1
    p[2, 0] = torch.tensor([0.25, 0.75])  # row 2: ratio 0.5 at 0
    drafted = torch.tensor([3, 3, 3, 2])  # row 3 drafted only 2
    u = torch.full((4, 3), 0.9)
    u[2, 0] = 0.4  # 0.4 < 0.5: accepted
    (n,) = call("rejection_accept", p, q, d, drafted, u)
    assert n.tolist() == [3, 1, 3, 2]
    u[2, 0] = 0.6  # 0.6 >= 0.5: rejected
    assert call("rejection_accept", p, q, d, drafted, u)[0].tolist() == [3, 1, 0, 2]


def test_rejection_accept_stops_at_the_first_rejection():
    q = rows([[0.5, 0.5]] * 3)
    p = torch.cat([rows([[0.5, 0.5], [0.0, 1.0], [0.5, 0.5]]), rows([[0.5, 0.5]])], dim=1)
    d = torch.zeros(1, 3, dtype=torch.long)  # accept, reject, accept
    assert call("rejection_accept", p, q, d, torch.tensor([3]), torch.zeros(1, 3))[0].tolist() == [1]


def test_rejection_residual_is_the_normalized_positive_part():
    p = rows([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])  # [B=1, K+1=2, V=3]
    q = rows([[0.2, 0.2, 0.6]])  # [B=1, K=1, V=3]
    (r,) = call("rejection_residual", p, q, torch.tensor([0]), torch.tensor([1]))
    assert torch.allclose(r, torch.tensor([[0.75, 0.25, 0.0]]))
    assert torch.allclose(r.sum(-1), torch.ones(1))


def test_rejection_residual_falls_back_to_p_when_the_residual_is_zero():
    p = rows([[0.2, 0.8], [0.5, 0.5]])
    q = rows([[0.2, 0.8]])  # p_0 == q_0: max(0, p - q) is all zero
    (r,) = call("rejection_residual", p, q, torch.tensor([0]), torch.tensor([1]))
    assert torch.allclose(r, torch.tensor([[0.2, 0.8]]))
    assert torch.isfinite(r).all()


def test_rejection_residual_gives_the_bonus_distribution_after_a_full_accept():
    p = rows([[0.5, 0.5, 0.0], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], [[0.5, 0.5, 0.0], [0.6, 0.2, 0.2], [0.3, 0.3, 0.4]])
    q = rows([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1]], [[0.9, 0.1, 0.0], [0.1, 0.8, 0.1]])
    n, drafted = torch.tensor([2, 1]), torch.tensor([2, 1])  # row 0 all of K=2, row 1 all of its 1
    (r,) = call("rejection_residual", p, q, n, drafted)
    assert torch.allclose(r, torch.stack([p[0, 2], p[1, 1]]))


def test_match_len():
    d = torch.tensor([[1, 2, 3], [1, 2, 3], [7, 2, 3]])
    t = torch.tensor([[1, 2, 0, 9], [1, 2, 3, 4], [1, 2, 3, 4]])
    (n,) = call("match_len", d, t, torch.tensor([3, 2, 3]))
    assert n.tolist() == [2, 2, 0]


def test_take():
    (x,) = call("take", torch.tensor([[5, 6, 7], [8, 9, 10]]), torch.tensor([2, 0]))
    assert x.tolist() == [7, 8]


def test_splice():
    d = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3]])
    (out,) = call("splice", d, torch.tensor([0, 1, 3]), torch.tensor([9, 9, 9]))
    assert out.shape == (3, 4)
    assert [row[: n + 1] for row, n in zip(out.tolist(), [0, 1, 3])] == [[9], [1, 9], [1, 2, 3, 9]]


def test_commit_records_the_round():
    state = SimpleNamespace()
    assert call("commit", torch.tensor([[4, 5, 0]]), torch.tensor([1]), torch.tensor([2]), state=state) == ()
    tokens, accepted, drafted = state.committed
    assert tokens.tolist() == [[4, 5, 0]] and accepted.tolist() == [1] and drafted.tolist() == [2]
    call("commit", torch.tensor([6, 7]), state=state)  # the single-token form
    tokens, accepted, drafted = state.committed
    assert tokens.tolist() == [[6], [7]] and accepted.tolist() == [0, 0] and drafted.tolist() == [0, 0]


def test_draft_loop_stops_rows_after_their_stop_step():
    """Row 0 drafts token step+1 and stops once it drafts a token >= 2; row 1 drafts 0 forever."""
    V, K = 6, 4
    calls = []

    def model_call(state, op, ctx, drafts, step):
        calls.append(int(step))
        logits = torch.full((2, V), -1e9)
        logits[0, int(step) + 1] = 0.0
        logits[1, 0] = 0.0
        return (logits,)

    b = Builder("body")
    ctx, drafts, step = b.input(CTX), b.input(Type("tok", ("B", K))), b.input(Type("i64"))
    probs = b.emit("softmax", [b.emit("model_call", [ctx, drafts, step], model="draft", last=True)[0]])[0]
    tok = b.emit("sample", [probs, b.emit("uniform", [], shape=("B",))[0]])[0]
    stop = b.emit("compare", [tok], op=">=", value=2)[0]
    body = b.build((tok, probs, stop))
    state = SimpleNamespace(batch=2, device="cpu", generator=torch.Generator().manual_seed(0), backend="eager", rules=dict(eager.RULES, model_call=model_call))
    loop = Op("draft_loop", (Value(CTX),), (), (("max", K),), body)
    drafts, q, count = eager.draft_loop(state, loop, object())
    assert count.tolist() == [2, K]
    assert drafts[0, :2].tolist() == [1, 2] and drafts[1].tolist() == [0] * K
    assert q.shape == (2, K, V) and torch.allclose(q[1, :, 0], torch.ones(K))
    assert calls == list(range(K))

    calls.clear()
    state.rules["model_call"] = lambda state, op, ctx, drafts, step: (torch.tensor([[-1e9, -1e9, 0.0] + [-1e9] * (V - 3)] * 2),)
    _, q, count = eager.draft_loop(state, loop, object())
    assert count.tolist() == [1, 1]  # every row stopped: the loop ends early
    assert q[:, 1:].abs().sum() == 0
