"""The IR's text form: printing is deterministic and `parse_graph(str(g))` prints identically.

The spec strategies here (`specs()`, built by hand from the registered components, without the
.dec front end) are shared with the other IR tests: `from test_ir_text import specs`.
"""
from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from decspec.compiler.builder import Builder
from decspec.compiler.ir import CTX, Graph, Meta, Op, Type, Value
from decspec.compiler.lower import lower
from decspec.compiler.passes import PIPELINE, run_pipeline
from decspec.compiler.text import IRParseError, Record, format_value, parse_graph
from decspec.dsl.diagnostics import Source, Span
from decspec.dsl.spec import Cond, Instance, Spec, Stat
from decspec.stdlib import registry

# --------------------------------------------------------------------------- spec strategies

LINE_WIDTH = 40
SOURCE = Source("\n".join("x" * LINE_WIDTH for _ in range(60)), "generated.dec")
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")


def inst(component, span=None, **args) -> Instance:
    """An Instance with every parameter bound: given args, else the default."""
    return Instance(component, tuple((p.name, args.get(p.name, p.default)) for p in component.params), span)


def model(role: str, span=None) -> Instance:
    return inst(registry.lookup("model", "model"), span, name=role)


spans = st.none() | st.builds(
    lambda line, col: Span(SOURCE, (line - 1) * (LINE_WIDTH + 1) + col - 1, (line - 1) * (LINE_WIDTH + 1) + col),
    st.integers(1, 60),
    st.integers(1, LINE_WIDTH),
)
roles = st.sampled_from(["target", "draft", "small"]) | st.text(max_size=6)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)
scalars = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(max_size=8),
)


def param_values(param) -> st.SearchStrategy:
    """Valid values for a component parameter, from its declared type and bounds."""
    low, high = param.low, param.high
    if param.type == "int":
        lo = int(low) if low is not None else -100
        return st.integers(lo, int(high) if high is not None else lo + 100)
    if param.type == "float":
        lo = float(low) if low is not None else -10.0
        return st.floats(lo, float(high) if high is not None else lo + 10.0)
    if not param.required:
        return st.just(param.default)
    raise NotImplementedError(f"no strategy for a required {param.type} parameter ({param.name})")


@st.composite
def component_instances(draw, kind: str) -> Instance:
    component = draw(st.sampled_from(registry.components(kind)))
    args = {p.name: draw(param_values(p)) for p in component.params}
    return inst(component, draw(spans), **args)


@st.composite
def stats(draw) -> Stat:
    return Stat(draw(st.sampled_from(registry.components("stat"))), draw(spans))


@st.composite
def comparisons(draw) -> Cond:
    stat, number = draw(stats()), draw(st.floats(-5, 5) | st.integers(-3, 3))
    operands = (number, stat) if draw(st.booleans()) else (stat, number)  # `0.3 > draft.prob` too
    return Cond(draw(st.sampled_from(COMPARISONS)), operands, draw(spans))


conds = st.recursive(
    comparisons(),
    lambda sub: st.one_of(
        st.builds(lambda c: Cond("not", (c,)), sub),
        st.builds(lambda op, a, b: Cond(op, (a, b)), st.sampled_from(["and", "or"]), sub, sub),
    ),
    max_leaves=6,
)


@st.composite
def specs(draw, propose: bool | None = None) -> Spec:
    """A checked-looking Spec: random sampler pipeline, with or without a draft, stop and verifier."""
    params = draw(st.lists(st.tuples(names, scalars), max_size=3, unique_by=lambda kv: kv[0]))
    slots: list[tuple[str, object]] = [("target", model(draw(roles), draw(spans)))]
    pipeline = draw(st.none() | st.lists(component_instances("sampler"), max_size=4).map(tuple))
    if pipeline is not None:
        slots.append(("sampler", pipeline))
    if propose if propose is not None else draw(st.booleans()):
        k = draw(st.integers(1, 8))
        draft = draw(st.sampled_from([d for d in registry.components("draft") if not d.needs_grammar]))  # forced: in the grammar tests
        modelless = not any(p.type == "model" for p in draft.params)  # lookup, recycle, lookahead: no draft model, so no exit policy
        if draft.name == "lookup":
            ngram = draw(st.integers(1, 16))
            slots.append(("propose", inst(draft, draw(spans), max=k, ngram=ngram, min_ngram=draw(st.integers(1, ngram)))))
        elif modelless:
            slots.append(("propose", inst(draft, draw(spans))))  # their defaults
        else:
            nested = {p.name: inst(registry.lookup("draft", "lookup"), max=2) for p in draft.params if p.type == "draft"}  # staged's inner draft
            slots.append(("propose", inst(draft, draw(spans), model=model(draw(roles)), max=k, **nested)))
            modelless = modelless or bool(nested)  # a lookup inner draft has no statistics for `stop`
        trees = draft.trees  # a token tree (stdlib/trees.py): a verifier that takes one; no stop, grammar or penalty yet
        if trees and pipeline:
            from decspec.stdlib.samplers import needs_context

            slots = [(n, tuple(x for x in v if not needs_context((x,))) if n == "sampler" else v) for n, v in slots]
        if not modelless and not trees and draw(st.booleans()):
            slots.append(("stop", inst(registry.lookup("exit", "when"), draw(spans), cond=draw(conds))))
        verifiers = component_instances("verifier")
        slots.append(("verify", draw(verifiers.filter(lambda v: v.component.trees) if trees else verifiers)))
    if not any(name == "propose" and value.component.trees for name, value in slots) and draw(st.booleans()):  # a grammar: masks after every model call (its source is checked by the lowering)
        slots.append(("grammar", inst(registry.lookup("grammar", "regex"), draw(spans), pattern=draw(st.sampled_from(["a+", "(ab|c)*d"])))))
    return Spec(draw(names), tuple(params), tuple(slots), SOURCE)


# --------------------------------------------------------------------------- round trips of lowered graphs


def assert_round_trips(graph: Graph) -> None:
    text = str(graph)
    again = parse_graph(text)
    assert str(again) == text
    assert str(parse_graph(str(again))) == text


@settings(max_examples=60)
@given(specs())
def test_lowered_graphs_round_trip(spec):
    graph = lower(spec)
    assert_round_trips(graph)
    for _, fn in PIPELINE:
        graph = fn(graph)
        assert_round_trips(graph)
    assert_round_trips(run_pipeline(lower(spec)))


@settings(max_examples=30)
@given(specs())
def test_printing_is_deterministic(spec):
    assert str(lower(spec)) == str(lower(spec))
    assert str(run_pipeline(lower(spec))) == str(run_pipeline(lower(spec)))


@settings(max_examples=20)
@given(specs(propose=True))
def test_parsed_graph_keeps_structure(spec):
    graph = run_pipeline(lower(spec))
    again = parse_graph(str(graph))
    assert [op.name for op in again.walk()] == [op.name for op in graph.walk()]
    assert [op.params for op in again.walk()] == [op.params for op in graph.walk()]
    assert [op.meta.loc() for op in again.walk()] == [op.meta.loc() for op in graph.walk()]
    assert again.attrs == graph.attrs or any(isinstance(v, float) and math.isnan(v) for _, v in graph.attrs)


def test_values_are_renumbered_in_print_order():
    b = Builder("round")
    ctx = b.input(CTX)
    logits = b.emit("model_call", [ctx], model="target", last=True)[0]
    probs = b.emit("softmax", [logits])[0]
    tok = b.emit("sample", [probs, b.emit("uniform", [], shape=("B",))[0]])[0]
    b.emit("commit", [tok])
    text = str(b.build())
    assert text == str(parse_graph(text))
    assert [line.split(":")[0].strip() for line in text.splitlines()[1:-2]] == ["%1", "%2", "%3", "%4"]


def test_loc_is_printed_and_read_back():
    b = Builder("round")
    ctx = b.input(CTX)
    b.meta = Meta(12, 5, "target")
    logits = b.emit("model_call", [ctx], model="target", last=True)[0]
    b.meta = Meta()
    tok = b.emit("sample", [b.emit("softmax", [logits])[0], b.emit("uniform", [], shape=("B",))[0]])[0]
    b.emit("commit", [tok])
    text = str(b.build())
    assert "loc(12:5)" in text.splitlines()[1]
    assert text.count("loc(") == 1
    assert parse_graph(text).ops[0].meta.loc() == "12:5"


# --------------------------------------------------------------------------- parse errors

GOOD = """round(%0: ctx) {
  %1: f32[B,V] = model_call[model="target", last=true](%0)
  %2: f32[B,V] = softmax(%1)
  %3: f32[B] = uniform[shape=["B"]]()
  %4: tok[B] = sample(%2, %3)
  commit(%4)
}"""


def test_good_text_parses():
    assert str(parse_graph(GOOD)) == GOOD


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(GOOD.replace("commit(%4)", "commit(%9)"), id="undefined value"),
        pytest.param(GOOD.replace("softmax(%1)", "softmax(%3)"), id="forward reference"),
        pytest.param(GOOD.replace("%3: f32[B] = uniform", "%2: f32[B] = uniform"), id="defined twice"),
        pytest.param(GOOD.replace("round(%0: ctx)", "round()"), id="undefined input"),
        pytest.param(GOOD.replace("  commit(%4)\n", "  commit(%4)\n  yield %7\n"), id="yield of undefined value"),
    ],
)
def test_undefined_values_are_parse_errors(text):
    with pytest.raises(IRParseError, match="%"):
        parse_graph(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(GOOD[:-1], id="missing closing brace"),
        pytest.param(GOOD.replace("f32[B,V] = softmax", "f32[B,V] softmax"), id="missing ="),
        pytest.param(GOOD.replace("%2, %3", "%2 %3"), id="missing comma"),
        pytest.param(GOOD.replace("last=true", "last=yes please"), id="bad param value"),
        pytest.param(GOOD.replace("[shape=", "[shape"), id="param without value"),
        pytest.param(GOOD.replace("%4: tok[B]", "%4 tok[B]"), id="missing type colon"),
        pytest.param(GOOD + "\ntrailing", id="trailing text"),
        pytest.param("round(%0: ctx) { commit(%0) } }", id="extra brace"),
        pytest.param("this is not IR", id="prose"),
    ],
)
def test_malformed_text_is_a_parse_error(text):
    with pytest.raises(IRParseError):
        parse_graph(text)


def test_unbound_value_prints_but_does_not_parse():
    stray = Value(Type("f32", ("B", "V")))
    graph = Graph("round", (), [Op("softmax", (stray,), (Value(Type("f32", ("B", "V"))),))])
    text = str(graph)
    assert "<unbound f32[B,V]>" in text
    with pytest.raises(IRParseError):
        parse_graph(text)


def test_parse_error_is_a_value_error():
    assert issubclass(IRParseError, ValueError)


# --------------------------------------------------------------------------- param values


def read_back(value):
    """Print a value as a graph attribute, parse the graph, return the attribute."""
    graph = parse_graph(f"round[v={format_value(value)}]() {{\n}}")
    return graph.attr("v")


def same(a, b) -> bool:
    """Structural equality with lists read as tuples and nan equal to nan."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, Record):
        return isinstance(b, Record) and a.name == b.name and same(a.fields, b.fields)
    return type(a) is type(b) and a == b


def lone_none_list(v) -> bool:
    if isinstance(v, Record):
        return any(lone_none_list(x) for _, x in v.fields)
    if isinstance(v, (list, tuple)):
        return tuple(v) == (None,) or any(lone_none_list(x) for x in v)
    return False


KEYWORDS = {"true", "false", "none", "inf", "nan"}
record_names = names.filter(lambda n: n not in KEYWORDS)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # inf, -inf, nan, -0.0, subnormals
    st.text(),  # quotes, backslashes, newlines, non-ASCII
)
values = st.recursive(
    leaves,
    lambda sub: st.one_of(
        st.lists(sub, max_size=4),
        st.lists(sub, max_size=4).map(tuple),
        st.builds(Record, record_names, st.lists(st.tuples(names, sub), max_size=3).map(tuple)),
    ),
    max_leaves=12,
)


@settings(max_examples=200)
@given(values)
def test_param_values_round_trip(value):
    assume(not lone_none_list(value))  # see test_list_of_one_none_round_trips
    back = read_back(value)
    assert format_value(back) == format_value(value)
    assert same(value, back)


@pytest.mark.parametrize(
    "value",
    [
        math.inf,
        -math.inf,
        -0.0,
        1e-05,
        1e300,
        5e-324,
        0.1 + 0.2,
        2**70,
        'say "hi"',
        "back\\slash",
        "new\nline\ttab",
        "é ∞ 🙂",
        "inf",
        "true",
        "none",
        [1, [2.5, [], ["x", None]], "y"],
        (),
        [None, None],
        Record("temperature", (("t", 0.8),)),
        Record("greedy"),
        [Record("top_k", (("k", 3),)), Record("top_p", (("p", 0.95),))],
        Record("nested", (("inner", Record("r", (("xs", [math.inf, -1],),))),)),
    ],
    ids=repr,
)
def test_param_value_examples_round_trip(value):
    back = read_back(value)
    assert format_value(back) == format_value(value)
    assert same(value, back)


def test_nan_round_trips():
    assert math.isnan(read_back(math.nan))


def test_record_prints_like_a_call():
    assert format_value(Record("top_p", (("p", 0.95),))) == "top_p(p=0.95)"
    assert format_value(Record("greedy")) == "greedy()"
    assert format_value([1.0, "a", True, None]) == '[1.0, "a", true, none]'


def test_list_of_one_none_round_trips():
    assert read_back([None]) == (None,)


def test_unprintable_param_value_is_a_type_error():
    with pytest.raises(TypeError, match="cannot print"):
        format_value(object())
