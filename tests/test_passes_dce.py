"""DCE alone, on hand-built graphs: only what the commit (or a region's yield) needs survives."""
from __future__ import annotations

from hypothesis import given, settings

from decspec.compiler.builder import Builder
from decspec.compiler.ir import CTX, Graph, Type
from decspec.compiler.lower import lower
from decspec.compiler.passes.dce import NAME, dce
from decspec.compiler.verify import verify
from test_ir_text import specs


def names(graph: Graph) -> list[str]:
    return [op.name for op in graph.ops]


def sampling_round(*, dead: bool) -> Graph:
    """ctx -> target logits -> softmax -> sample -> commit; with `dead`, also an unused draft
    call, an unused uniform, an unused entropy chain."""
    b = Builder("round")
    ctx = b.input(CTX)
    logits = b.emit("model_call", [ctx], model="target", last=True)[0]
    probs = b.emit("softmax", [logits])[0]
    if dead:
        b.emit("model_call", [ctx], model="draft", last=True)
        b.emit("uniform", [], shape=("B",))
        b.emit("logical_not", [b.emit("compare", [b.emit("entropy", [probs])[0]], op=">", value=2.0)[0]])
    tok = b.emit("sample", [probs, b.emit("uniform", [], shape=("B",))[0]])[0]
    b.emit("commit", [tok])
    return b.build()


def loop_body(k: int = 3, *, dead: bool) -> Graph:
    b = Builder("body")
    ctx, drafts, step = b.input(CTX), b.input(Type("tok", ("B", k))), b.input(Type("i64"))
    logits = b.emit("model_call", [ctx, drafts, step], model="draft", last=True)[0]
    q = b.emit("softmax", [logits])[0]
    tok = b.emit("sample", [q, b.emit("uniform", [], shape=("B",))[0]])[0]
    if dead:
        b.emit("entropy", [q])
        b.emit("uniform", [], shape=("B",))
    return b.build((tok, q))


def round_with_loop(body: Graph, k: int = 3) -> Graph:
    b = Builder("round")
    ctx = b.input(CTX)
    tokens, _, count = b.emit("draft_loop", [ctx], region=body, max=k)
    b.emit("commit", [tokens, count, count])
    return b.build()


def test_name():
    assert NAME == "dce"


def test_dead_ops_are_removed():
    out = verify(dce(sampling_round(dead=True)))
    assert str(out) == str(sampling_round(dead=False))


def test_unused_model_call_is_removed():
    out = dce(sampling_round(dead=True))
    assert [op.param("model") for op in out.ops if op.name == "model_call"] == ["target"]


def test_unused_uniform_is_removed():
    out = dce(sampling_round(dead=True))
    assert names(out).count("uniform") == 1


def test_live_ops_are_kept_in_order():
    graph = sampling_round(dead=False)
    assert str(dce(graph)) == str(graph)
    assert names(dce(graph)) == ["model_call", "softmax", "uniform", "sample", "commit"]


def test_commit_is_never_removed():
    b = Builder("round")
    tok = b.input(Type("tok", ("B",)))
    b.emit("commit", [tok])
    assert names(dce(b.build())) == ["commit"]


def test_graph_without_commit_empties():
    """Nothing is live without a sink (the verifier rejects such a round; DCE just follows liveness)."""
    b = Builder("round")
    ctx = b.input(CTX)
    b.emit("softmax", [b.emit("model_call", [ctx], model="target", last=True)[0]])
    assert names(dce(b.build())) == []


def test_dead_ops_inside_a_region_are_removed():
    out = verify(dce(round_with_loop(loop_body(dead=True))))
    assert str(out) == str(round_with_loop(loop_body(dead=False)))
    body = out.ops[0].region
    assert names(body) == ["model_call", "softmax", "uniform", "sample"]


def test_region_yields_stay_live():
    out = dce(round_with_loop(loop_body(dead=False)))
    body = out.ops[0].region
    assert len(body.outputs) == 2
    produced = {v for op in body.ops for v in op.outputs}
    assert set(body.outputs) <= produced


def test_unused_loop_is_removed():
    b = Builder("round")
    ctx = b.input(CTX)
    b.emit("draft_loop", [ctx], region=loop_body(dead=False), max=3)
    probs = b.emit("softmax", [b.emit("model_call", [ctx], model="target", last=True)[0]])[0]
    b.emit("commit", [b.emit("sample", [probs, b.emit("uniform", [], shape=("B",))[0]])[0]])
    assert "draft_loop" not in names(dce(b.build()))


def test_does_not_mutate_its_input():
    for graph in (sampling_round(dead=True), round_with_loop(loop_body(dead=True))):
        before = str(graph)
        ops = graph.ops
        out = dce(graph)
        assert str(graph) == before
        assert graph.ops is ops
        assert str(out) != before


def test_is_idempotent():
    for graph in (sampling_round(dead=True), round_with_loop(loop_body(dead=True))):
        once = dce(graph)
        assert str(dce(once)) == str(once)


@settings(max_examples=30)
@given(specs())
def test_lowered_graphs(spec):
    graph = lower(spec)
    before = str(graph)
    once = verify(dce(graph))
    assert str(graph) == before
    assert str(dce(once)) == str(once)
    # a freshly lowered graph has nothing dead: every op feeds the commit
    assert str(once) == before
