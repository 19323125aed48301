"""The IR verifier: accepts every lowered graph after every pass; rejects broken graphs with a
message that names the op at fault."""
from __future__ import annotations

import pytest
from hypothesis import given, settings

from decspec.compiler.builder import Builder
from decspec.compiler.ir import CTX, Graph, Meta, Op, Type, Value
from decspec.compiler.lower import lower
from decspec.compiler.passes import PIPELINE, run_pipeline
from decspec.compiler.text import parse_graph
from decspec.compiler.verify import IRVerifyError, verify
from test_ir_text import specs

# --------------------------------------------------------------------------- lowered graphs are sound


@settings(max_examples=60)
@given(specs())
def test_every_lowered_graph_verifies_after_every_pass(spec):
    graph = verify(lower(spec))
    for _, fn in PIPELINE:
        graph = verify(fn(graph))
    seen: list[str] = []
    run_pipeline(lower(spec), check=True, log=lambda name, g: seen.append(name) or verify(g))
    assert seen == [name for name, _ in PIPELINE]


@settings(max_examples=20)
@given(specs())
def test_parsed_graphs_verify(spec):
    verify(parse_graph(str(lower(spec))))
    verify(parse_graph(str(run_pipeline(lower(spec)))))


def test_verify_returns_the_graph():
    graph = sound_round().build()
    assert verify(graph) is graph


# --------------------------------------------------------------------------- hand-made bad graphs


def sound_round() -> Builder:
    """ctx -> model_call -> softmax -> sample(probs, uniform) -> commit, left open for more ops."""
    b = Builder("round")
    ctx = b.input(CTX)
    logits = b.emit("model_call", [ctx], model="target", last=True)[0]
    probs = b.emit("softmax", [logits])[0]
    tok = b.emit("sample", [probs, b.emit("uniform", [], shape=("B",))[0]])[0]
    b.emit("commit", [tok])
    return b


def ops_named(b: Builder, name: str) -> list[Op]:
    return [op for op in b.ops if op.name == name]


def swap(b: Builder, old: Op, new: Op) -> Graph:
    return Graph(b.name, tuple(b.inputs), [new if op is old else op for op in b.ops])


def rejects(graph: Graph, *fragments: str) -> str:
    with pytest.raises(IRVerifyError) as info:
        verify(graph)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def f32(*shape) -> Value:
    return Value(Type("f32", shape))


def test_use_of_an_unbound_value():
    b = sound_round()
    stray = f32("B", "V")
    b.emit("softmax", [stray])
    rejects(b.build(), "op softmax", "not defined")


def test_use_of_a_value_from_another_round():
    other = sound_round()
    b = sound_round()
    foreign = ops_named(other, "softmax")[0].outputs[0]
    b.emit("entropy", [foreign])
    rejects(b.build(), "op entropy", "not defined")


def test_region_may_not_use_outer_values():
    """Regions are closed: the draft body sees only the values the loop passes in."""
    outer = Builder("round")
    ctx = outer.input(CTX)
    b = Builder("body")
    b.input(CTX)
    drafts, step = b.input(Type("tok", ("B", 2))), b.input(Type("i64"))
    logits = b.emit("model_call", [ctx, drafts, step], model="draft", last=True)[0]  # outer ctx!
    probs = b.emit("softmax", [logits])[0]
    tok = b.emit("sample", [probs, b.emit("uniform", [], shape=("B",))[0]])[0]
    body = b.build((tok, probs))
    tokens, _, count = outer.emit("draft_loop", [ctx], region=body, max=2)
    outer.emit("commit", [tokens, count, count])
    rejects(outer.build(), "op model_call", "not defined")


def test_yield_of_an_undefined_value():
    b = Builder("body")
    b.input(CTX)
    graph = b.build((f32("B"),))
    with pytest.raises(IRVerifyError, match="body yields a value that is not defined"):
        verify(graph, is_round=False)


def test_wrong_output_type():
    b = sound_round()
    softmax = ops_named(b, "softmax")[0]
    bad = softmax.replace(outputs=(f32("B"),))
    rejects(swap(b, softmax, bad), "op softmax", "outputs f32[B]", "rule gives f32[B,V]")


def test_wrong_output_count():
    b = sound_round()
    softmax = ops_named(b, "softmax")[0]
    bad = softmax.replace(outputs=softmax.outputs + (f32("B", "V"),))
    rejects(swap(b, softmax, bad), "op softmax", "outputs")


def test_type_rule_violation_names_the_op():
    b = Builder("round")
    ctx = b.input(CTX)
    probs = b.emit("softmax", [b.emit("model_call", [ctx], model="target", last=True)[0]])[0]
    u = b.emit("uniform", [], shape=("B", 3))[0]  # wrong shape for a [B, V] draw
    tok = Value(Type("tok", ("B",)))
    b.ops.append(Op("sample", (probs, u), (tok,)))
    b.emit("commit", [tok])
    rejects(b.build(), "op sample", "uniform must be f32['B']")


def test_failure_names_the_spec_line():
    b = sound_round()
    b.meta = Meta(7, 3, "rejection")
    b.emit("softmax", [f32("B", "V")])
    rejects(b.build(), "op softmax (spec line 7)")


@pytest.mark.parametrize("source", ["graph input", "softmax", "token_prob"])
def test_sample_draw_must_come_from_uniform(source):
    b = Builder("round")
    ctx = b.input(CTX)
    extra = b.input(Type("f32", ("B",)))
    probs = b.emit("softmax", [b.emit("model_call", [ctx], model="target", last=True)[0]])[0]
    tok0 = b.emit("argmax", [probs])[0]
    u = {
        "graph input": lambda: extra,
        "softmax": lambda: b.emit("softmax", [extra])[0],
        "token_prob": lambda: b.emit("token_prob", [probs, tok0])[0],
    }[source]()
    tok = b.emit("sample", [probs, u])[0]
    b.emit("commit", [tok])
    rejects(b.build(), "op sample", "input 1 must come straight from a uniform draw")


def test_rejection_accept_draw_must_come_from_uniform():
    b = Builder("round")
    b.input(CTX)
    p, q = b.input(Type("f32", ("B", 3, "V"))), b.input(Type("f32", ("B", 2, "V")))
    d, m = b.input(Type("tok", ("B", 2))), b.input(Type("i64", ("B",)))
    not_a_draw = b.emit("token_prob", [q, d])[0]  # f32[B, 2], the right type, the wrong source
    n = b.emit("rejection_accept", [p, q, d, m, not_a_draw])[0]
    b.emit("commit", [b.emit("splice", [d, n, b.emit("take", [d, n])[0]])[0], n, m])
    rejects(b.build(), "op rejection_accept", "input 4 must come straight from a uniform draw")


def test_one_uniform_feeding_two_ops():
    b = Builder("round")
    ctx = b.input(CTX)
    probs = b.emit("softmax", [b.emit("model_call", [ctx], model="target", last=True)[0]])[0]
    u = b.emit("uniform", [], shape=("B",))[0]
    first = b.emit("sample", [probs, u])[0]
    draft_probs = b.emit("softmax", [b.emit("model_call", [ctx], model="draft", last=True)[0]])[0]
    b.emit("sample", [draft_probs, u])  # the same draw again: the two samples would be correlated
    b.emit("commit", [first])
    rejects(b.build(), "uniform", "consumed 2 times")


def test_uniform_used_by_a_non_drawing_op_counts_too():
    b = sound_round()
    u = ops_named(b, "uniform")[0].outputs[0]
    b.emit("compare", [u], op="<", value=0.5)
    rejects(b.build(), "uniform", "consumed 2 times")


def test_round_without_commit():
    b = sound_round()
    b.ops = [op for op in b.ops if op.name != "commit"]
    rejects(b.build(), "exactly one commit", "found 0")


def test_round_with_two_commits():
    b = sound_round()
    b.emit("commit", list(ops_named(b, "sample")[0].outputs))
    rejects(b.build(), "exactly one commit", "found 2")


def test_region_needs_no_commit():
    b = Builder("body")
    b.input(CTX)
    verify(b.build(), is_round=False)


def test_unknown_op():
    b = sound_round()
    probs = ops_named(b, "softmax")[0].outputs[0]
    b.ops.append(Op("frobnicate", (probs,), (f32("B", "V"),)))
    rejects(b.build(), "op frobnicate", "unknown op")


def draft_body(k: int = 2) -> Graph:
    b = Builder("body")
    ctx, drafts, step = b.input(CTX), b.input(Type("tok", ("B", k))), b.input(Type("i64"))
    probs = b.emit("softmax", [b.emit("model_call", [ctx, drafts, step], model="draft", last=True)[0]])[0]
    tok = b.emit("sample", [probs, b.emit("uniform", [], shape=("B",))[0]])[0]
    return b.build((tok, probs))


def test_loop_without_region():
    b = Builder("round")
    ctx = b.input(CTX)
    tokens, _, count = b.emit("draft_loop", [ctx], max=2)  # no region
    b.emit("commit", [tokens, count, count])
    rejects(b.build(), "op draft_loop", "needs a region")


def test_plain_op_with_region():
    b = sound_round()
    softmax = ops_named(b, "softmax")[0]
    rejects(swap(b, softmax, softmax.replace(region=draft_body())), "op softmax", "must not have a region")


def test_errors_inside_a_region_name_the_op():
    body = draft_body()
    sample = next(op for op in body.ops if op.name == "sample")
    stray = f32("B")
    bad_body = body.replace(ops=[sample.replace(inputs=(sample.inputs[0], stray)) if op is sample else op for op in body.ops])
    b = Builder("round")
    ctx = b.input(CTX)
    tokens, _, count = b.emit("draft_loop", [ctx], region=bad_body, max=2)
    b.emit("commit", [tokens, count, count])
    rejects(b.build(), "op sample", "not defined")


def test_loop_with_a_region_verifies():
    b = Builder("round")
    ctx = b.input(CTX)
    tokens, _, count = b.emit("draft_loop", [ctx], region=draft_body(), max=2)
    b.emit("commit", [tokens, count, count])
    verify(b.build())


def test_cycles_are_refused_when_the_graph_is_built():
    a, c = f32("B", "V"), f32("B", "V")
    with pytest.raises(ValueError, match="cycle"):
        Graph("round", (), [Op("softmax", (a,), (c,)), Op("softmax", (c,), (a,))])


@pytest.mark.parametrize(
    "op",
    [
        Op("compare", (), (Value(Type("bool", ())),), (("op", "<"), ("value", 0.3))),
        Op("entropy", (), (f32(),)),
        Op("uniform", (), (f32(),), (("shape", 3),)),
        Op("splice", (tok := Value(Type("tok", ("B",))), tok, tok), (Value(Type("tok", ("B", 2))),)),
    ],
    ids=lambda op: op.name,
)
def test_malformed_op_is_a_verify_error(op):
    rejects(Graph("round", tuple(dict.fromkeys(op.inputs)), [op]), f"op {op.name}")


def test_draft_loop_body_signature_is_checked():
    body = Builder("body")
    body.input(CTX)
    b = Builder("round")
    ctx = b.input(CTX)
    tokens, _, count = b.emit("draft_loop", [ctx], region=body.build(), max=2)  # body yields nothing
    b.emit("commit", [tokens, count, count])
    rejects(b.build(), "op draft_loop")
