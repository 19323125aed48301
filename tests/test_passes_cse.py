"""CSE alone, on hand-built graphs: duplicate pure ops merge, random draws and sinks never do."""
from __future__ import annotations

from hypothesis import given, settings

from decspec.compiler.builder import Builder
from decspec.compiler.ir import CTX, Graph, Meta, Type
from decspec.compiler.lower import lower
from decspec.compiler.passes.cse import NAME, cse
from decspec.compiler.verify import verify
from test_ir_text import specs


def count(graph: Graph, name: str) -> int:
    return sum(op.name == name for op in graph.ops)


def loop_body(k: int = 3, duplicate: bool = True) -> Graph:
    """The draft step: probs = softmax(logits) sampled, and (when duplicate) a second
    softmax(logits) for an exit statistic, as an empty sampler pipeline lowers it."""
    b = Builder("body")
    ctx, drafts, step = b.input(CTX), b.input(Type("tok", ("B", k))), b.input(Type("i64"))
    logits = b.emit("model_call", [ctx, drafts, step], model="draft", last=True)[0]
    q = b.emit("softmax", [logits])[0]
    tok = b.emit("sample", [q, b.emit("uniform", [], shape=("B",))[0]])[0]
    stats = b.emit("softmax", [logits])[0] if duplicate else q
    stop = b.emit("compare", [b.emit("token_prob", [stats, tok])[0]], op="<", value=0.3)[0]
    return b.build((tok, stats, stop))


def round_with_loop(body: Graph, k: int = 3) -> Graph:
    b = Builder("round")
    ctx = b.input(CTX)
    tokens, _, count_ = b.emit("draft_loop", [ctx], region=body, max=k)
    b.emit("commit", [tokens, count_, count_])
    return b.build()


def test_name():
    assert NAME == "cse"


def test_duplicate_pure_ops_merge():
    b = Builder("round")
    ctx = b.input(CTX)
    logits = b.emit("model_call", [ctx], model="target", last=True)[0]
    p1, p2 = b.emit("softmax", [logits])[0], b.emit("softmax", [logits])[0]
    e1, e2 = b.emit("entropy", [p1])[0], b.emit("entropy", [p2])[0]
    b.emit("logical", [b.emit("compare", [e1], op=">", value=1.0)[0], b.emit("compare", [e2], op=">", value=1.0)[0]], op="or")
    tok = b.emit("sample", [p2, b.emit("uniform", [], shape=("B",))[0]])[0]
    b.emit("commit", [tok])
    out = verify(cse(b.build()))
    assert count(out, "softmax") == 1
    assert count(out, "entropy") == 1  # merged because its inputs merged first
    assert count(out, "compare") == 1
    sample = next(op for op in out.ops if op.name == "sample")
    softmax = next(op for op in out.ops if op.name == "softmax")
    assert sample.inputs[0] == softmax.outputs[0]  # users of the dropped softmax are rewired
    logical = next(op for op in out.ops if op.name == "logical")
    assert logical.inputs[0] == logical.inputs[1]


def test_duplicate_model_calls_merge():
    """Model calls are pure functions of the token sequence: one call serves both users."""
    b = Builder("round")
    ctx = b.input(CTX)
    l1 = b.emit("model_call", [ctx], model="target", last=True)[0]
    l2 = b.emit("model_call", [ctx], model="target", last=True)[0]
    l3 = b.emit("model_call", [ctx], model="draft", last=True)[0]
    p = b.emit("softmax", [l1])[0]
    tok = b.emit("sample", [p, b.emit("uniform", [], shape=("B",))[0]])[0]
    b.emit("token_prob", [b.emit("softmax", [l2])[0], tok])
    b.emit("token_prob", [b.emit("softmax", [l3])[0], tok])
    b.emit("commit", [tok])
    out = verify(cse(b.build()))
    assert [op.param("model") for op in out.ops if op.name == "model_call"] == ["target", "draft"]
    assert count(out, "softmax") == 2
    assert count(out, "token_prob") == 2


def test_different_params_do_not_merge():
    b = Builder("round")
    ctx = b.input(CTX)
    p = b.emit("softmax", [b.emit("model_call", [ctx], model="target", last=True)[0]])[0]
    tok = b.emit("sample", [p, b.emit("uniform", [], shape=("B",))[0]])[0]
    x = b.emit("token_prob", [p, tok])[0]
    b.emit("compare", [x], op="<", value=0.3)
    b.emit("compare", [x], op=">", value=0.3)
    b.emit("compare", [x], op="<", value=0.4)
    b.emit("commit", [tok])
    assert count(cse(b.build()), "compare") == 3


def test_uniform_draws_never_merge():
    b = Builder("round")
    ctx = b.input(CTX)
    p = b.emit("softmax", [b.emit("model_call", [ctx], model="target", last=True)[0]])[0]
    t1 = b.emit("sample", [p, b.emit("uniform", [], shape=("B",))[0]])[0]
    b.emit("sample", [p, b.emit("uniform", [], shape=("B",))[0]])
    b.emit("uniform", [], shape=("B",))  # a third, unused: CSE leaves it (DCE's job)
    b.emit("commit", [t1])
    out = verify(cse(b.build()))
    assert count(out, "uniform") == 3
    assert count(out, "sample") == 2  # different draws, so the samples differ too


def test_commit_is_kept():
    b = Builder("round")
    tok = b.input(Type("tok", ("B",)))
    b.emit("commit", [tok])
    out = cse(b.build())
    assert [op.name for op in out.ops] == ["commit"]


def test_duplicates_inside_a_region_merge():
    out = verify(cse(round_with_loop(loop_body(duplicate=True))))
    body = out.ops[0].region
    assert count(body, "softmax") == 1
    assert count(body, "uniform") == 1
    # the body's yield follows the merge
    softmax = next(op for op in body.ops if op.name == "softmax")
    assert body.outputs[1] == softmax.outputs[0]


def test_region_and_outer_ops_stay_apart():
    """A region is closed: an op inside never merges with an identical-looking op outside,
    and two loops are never merged with each other."""
    b = Builder("round")
    ctx = b.input(CTX)
    t1, _, n1 = b.emit("draft_loop", [ctx], region=loop_body(), max=3)
    t2, _, n2 = b.emit("draft_loop", [ctx], region=loop_body(), max=3)
    b.emit("match_len", [t1, t2, n2])
    b.emit("commit", [t1, n1, n1])
    out = verify(cse(b.build()))
    assert count(out, "draft_loop") == 2
    for loop in (op for op in out.ops if op.name == "draft_loop"):
        assert count(loop.region, "softmax") == 1


def test_does_not_mutate_its_input():
    graph = round_with_loop(loop_body())
    before = str(graph)
    ops = graph.ops
    out = cse(graph)
    assert str(graph) == before
    assert graph.ops is ops
    assert out is not graph
    assert str(out) != before


def test_is_idempotent():
    once = cse(round_with_loop(loop_body()))
    assert str(cse(once)) == str(once)


def test_graph_without_duplicates_is_unchanged():
    graph = round_with_loop(loop_body(duplicate=False))
    assert str(cse(graph)) == str(graph)


def test_merged_op_keeps_the_first_ops_meta():
    b = Builder("round")
    ctx = b.input(CTX)
    logits = b.emit("model_call", [ctx], model="target", last=True)[0]
    b.meta = Meta(3, 1)
    p1 = b.emit("softmax", [logits])[0]
    b.meta = Meta(9, 1)
    p2 = b.emit("softmax", [logits])[0]
    tok = b.emit("sample", [p2, b.emit("uniform", [], shape=("B",))[0]])[0]
    b.emit("token_prob", [p1, tok])
    b.emit("commit", [tok])
    softmax = next(op for op in cse(b.build()).ops if op.name == "softmax")
    assert softmax.meta.line == 3


@settings(max_examples=30)
@given(specs())
def test_lowered_graphs(spec):
    graph = lower(spec)
    before = str(graph)
    once = verify(cse(graph))
    assert str(graph) == before
    assert str(cse(once)) == str(once)
    assert count(once, "uniform") == count(graph, "uniform")
    assert sum(op.name == "uniform" for op in once.walk()) == sum(op.name == "uniform" for op in graph.walk())
    assert count(once, "commit") == 1
