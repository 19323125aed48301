"""Grammar size bounds (issue 16, item 5): every automaton a grammar builds is bounded while it is built,
and refused with the figure, the limit and the fix before it eats the machine.

- a regex's NFA is counted from its syntax tree (`nfa_size`, exact) as the pattern is parsed, so a
  repetition that is too large is refused at its column by `decspec check`, before anything is built;
  `NFA` itself refuses to grow past its limit, whoever emits into it;
- the subset construction counts the NFA states it visits, merges and holds, and its DFA states times byte
  classes; the product construction its pairs; the token index its masks, all before they pass a limit;
- a JSON Schema is read as a document first (nesting, NaN / Infinity / 1e400, integers Python will not
  read), schemas nest at most `MAX_NESTING` deep, and a schema's language too large is refused at the
  innermost JSON path whose language alone passes the limit.

The limits themselves are large (figures: docs/architecture.md); the tests that build automata shrink
them with monkeypatch, so every test stays small.
"""
from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.cli import main
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.grammars import automaton, index, regex
from decspec.stdlib.grammars.automaton import MAX_NFA_SIZE, NFA, determinize, product
from decspec.stdlib.grammars.errors import GrammarError, TooLarge
from decspec.stdlib.grammars.json_schema import compile_schema, schema_grammar
from decspec.stdlib.grammars.json_schema.document import MAX_DEPTH, check_document, parse
from decspec.stdlib.grammars.json_schema.normalize import MAX_NESTING
from decspec.stdlib.grammars.regex import MAX_REPEAT, compile_regex, emit, nfa_size, parse_regex
from decspec.stdlib.models.table import TableModel

# --------------------------------------------------------------------------- regex: counted while parsing

ATOMS = ["a", "[a-z]", ".", "é", "[^\\x00-\\x7f]", "[\\x00-\\U0010FFFF]", "\\d", "(?:ab|cd|e)", "(?:x|)"]


@st.composite
def patterns(draw, depth: int = 3):
    """Small regexes over the whole syntax: atoms, groups, alternations, every quantifier."""
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(ATOMS))
    parts = draw(st.lists(patterns(depth - 1), min_size=1, max_size=3))
    body = "|".join(parts) if draw(st.booleans()) else "".join(parts)
    quantifier = draw(st.sampled_from(["", "*", "+", "?", "{2}", "{0,3}", "{1,}", "{2,4}?"]))
    return f"(?:{body}){quantifier}"


@settings(max_examples=150)
@given(patterns())
def test_nfa_size_counts_exactly_what_emit_builds(pattern):
    nfa = NFA()
    start = nfa.state()
    emit(nfa, parse_regex(pattern), start)
    moves = sum(map(len, nfa.edges))
    assert nfa.size == len(nfa.eps) + moves == 1 + nfa_size(parse_regex(pattern))


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "integer", "minimum": 3}, "minItems": 1, "maxItems": 3},  # a Graph
    {"type": "object", "properties": {"a": {"type": "string", "pattern": "^x+$"}, "b": {"enum": [1, "y", None]}}},
    {"allOf": [{"type": "string", "maxLength": 4}, {"type": "string", "pattern": "a"}]},  # a Machine: a product
    {"type": "number", "multipleOf": 0.5, "maximum": 10},
])
def test_nfa_size_counts_exactly_what_a_json_schema_s_tree_builds(schema):
    from decspec.stdlib.grammars.json_schema.lower import Lowerer
    from decspec.stdlib.grammars.json_schema.refs import Index, Located

    lowerer = Lowerer(Index(schema, 2020), 2020)
    node = lowerer.value(lowerer.lower(Located(schema, "$"))).node
    nfa = NFA()
    emit(nfa, node, nfa.state())
    assert nfa.size == 1 + nfa_size(node)


@settings(max_examples=150)
@given(patterns(), st.integers(1, 100))
def test_the_nfa_refuses_to_grow_past_its_limit_while_it_is_built(pattern, limit):
    nfa = NFA(limit=limit)
    needed = 1 + nfa_size(parse_regex(pattern))
    if needed <= limit:
        emit(nfa, parse_regex(pattern), nfa.state())
        assert nfa.size == needed
    else:
        with pytest.raises(TooLarge, match=f"more than {limit:,} NFA states and moves"):
            emit(nfa, parse_regex(pattern), nfa.state())
    assert nfa.size == len(nfa.eps) + sum(map(len, nfa.edges)) <= limit  # never one state or move past it


@settings(max_examples=200)
@given(inner=st.sampled_from(ATOMS), m=st.integers(1, MAX_REPEAT), n=st.integers(2, MAX_REPEAT),
       lazy=st.sampled_from(["", "?"]))
def test_a_nested_repetition_too_large_is_refused_at_its_quantifier_before_anything_is_built(inner, m, n, lazy):
    pattern = f"(?:{inner}{{{m}}}){{0,{n}}}{lazy}"
    part = nfa_size(parse_regex(inner))
    inside, outside = m * part + 1, n * (m * part + 1) + 1  # as emit builds them: copies, then an end state
    if inside > MAX_NFA_SIZE:
        column, states = pattern.index("{") + 1, inside
    elif outside > MAX_NFA_SIZE:
        column, states = pattern.rindex("{") + 1, outside
    else:
        assert nfa_size(parse_regex(pattern)) == outside
        return
    with pytest.raises(GrammarError) as e:
        parse_regex(pattern)
    assert f"at column {column}: this repetition needs {states:,} NFA states and moves" in e.value.message
    assert f"over the limit of {MAX_NFA_SIZE:,}" in e.value.message
    assert "lower the repeat bounds" in e.value.diagnostics[0].hint


def test_many_repetitions_side_by_side_are_refused_as_a_whole():
    with pytest.raises(GrammarError, match=r'regex "a\{10000\}a\{10000\}.*" needs 2,400,121 NFA states and moves, over'):
        parse_regex("a{10000}" * 120)  # 120 x (10,000 copies of a state and a move, + an end) + the start


def test_groups_nest_at_most_max_nesting_deep():
    from decspec.stdlib.grammars.regex import MAX_NESTING as GROUPS

    parse_regex("(" * GROUPS + "a" + ")" * GROUPS)
    for depth in (GROUPS + 1, 50_000):
        with pytest.raises(GrammarError, match=f"at column {GROUPS + 1}: groups nest more than {GROUPS} deep"):
            parse_regex("(" * depth + "a" + ")" * depth)


# --------------------------------------------------------------------------- automata: counted while built

def small_limits(monkeypatch, work=None, cells=None, states=None):
    for name, value in (("MAX_SUBSET_WORK", work), ("MAX_DFA_CELLS", cells), ("MAX_DFA_STATES", states)):
        if value is not None:
            monkeypatch.setattr(automaton, name, value)


def test_nullable_repetitions_and_counts_after_loops_are_refused_by_the_subset_construction_s_work(monkeypatch):
    small_limits(monkeypatch, work=20_000)
    for pattern in ("(?:a{0,10}){0,100}", "a?" * 300, "(?:[a-z]?){0,50}(?:[a-z]?){0,50}", ".*a.{10}"):
        with pytest.raises(TooLarge, match=r"its subset construction to visit more than 20,000 NFA states and moves") as e:
            compile_regex(pattern)
        assert "write such a repetition once (a{0,10000} for (?:a{0,10}){0,1000})" in e.value.diagnostics[0].hint


def test_dfa_states_are_bounded_by_states_times_byte_classes(monkeypatch):
    small_limits(monkeypatch, cells=3_000)
    compile_regex("[ab]*a[ab]{6}")  # 128 states over 4 classes
    with pytest.raises(TooLarge, match=r"more than 750 DFA states over 4 byte classes \(the limit: 3,000 states x classes\)"):
        compile_regex("[ab]*a[ab]{9}")
    small_limits(monkeypatch, cells=10**9, states=300)
    with pytest.raises(TooLarge, match=r"more than 300 DFA states \(the limit\)"):
        compile_regex("[ab]*a[ab]{9}")


def test_a_long_count_is_minimized():
    dfa = compile_regex("a{0,300}")  # as many Moore rounds as it counts: Hopcroft's algorithm, O(m log n)
    assert dfa.num_states == 301 and dfa.matches("a" * 300) and not dfa.matches("a" * 301)


def test_the_product_construction_is_bounded_as_it_pairs_states(monkeypatch):
    a, b = compile_regex("[ab]*a[ab]{5}"), compile_regex("[ab]*b[ab]{4}")  # a 6th from the end, b 5th
    assert product(a, b, keep_b=True) is not None
    small_limits(monkeypatch, cells=100)
    with pytest.raises(TooLarge, match="DFA states over 3 byte classes"):
        product(a, b, keep_b=True)


@settings(max_examples=60)
@given(patterns(), st.integers(50, 2_000), st.integers(50, 2_000))
def test_a_bound_refuses_or_changes_nothing(pattern, work, cells):
    full = compile_regex(pattern)
    with pytest.MonkeyPatch.context() as mp:
        small_limits(mp, work=work, cells=cells)
        try:
            bounded = compile_regex(pattern)
        except TooLarge:
            return
    assert (bounded.transitions == full.transitions).all() and (bounded.accepting == full.accepting).all()


def test_the_token_index_refuses_masks_past_its_byte_limit_before_walking(monkeypatch):
    from decspec.stdlib.grammars.index import TokenIndex

    dfa, vocab = compile_regex("[ab]{0,40}"), [b"a", b"b", b"ab", None]
    monkeypatch.setattr(index, "token_walk", lambda *a: pytest.fail("walked"))
    monkeypatch.setattr(index, "MAX_MASK_BYTES", 100)
    with pytest.raises(GrammarError, match=r"token masks need 164 bytes \(41 states x 4 tokens, a bit each\), over the limit of 100"):
        TokenIndex.build(dfa, vocab, eos_id=3)


# --------------------------------------------------------------------------- JSON Schema documents

json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                           max_leaves=12)


def paths_in(value, path="$"):
    """Every JSON path in `value`, with its container and key (None, None for the root)."""
    from decspec.stdlib.grammars.json_schema.refs import child_path

    out = [(path, None, None)]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        out += [(p, c if c is not None else value, k if c is not None else key) for p, c, k in paths_in(item, child_path(path, key))]
    return out


@settings(max_examples=200)
@given(json_values, st.data(), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_a_number_json_cannot_hold_is_refused_at_its_path_as_text_and_as_values(document, data, bad):
    document = {"enum": [document]}
    path, container, key = data.draw(st.sampled_from(paths_in(document)[2:]))  # inside the enum value
    container[key] = bad
    with pytest.raises(GrammarError) as values:
        check_document(document)
    with pytest.raises(GrammarError) as text:
        parse(json.dumps(document))  # Python writes NaN, Infinity, -Infinity: not JSON
    for e in (values, text):
        assert e.value.message.startswith(f"{path}: ") and "is not a JSON number (JSON has no NaN or Infinity)" in e.value.message


@pytest.mark.parametrize("text, message", [
    ('{"enum": [NaN, 1]}', "$.enum[0]: NaN is not a JSON number"),
    ('{"const": Infinity}', "$.const: Infinity is not a JSON number"),
    ('{"const": {"a": [-Infinity]}}', "$.const.a[0]: -Infinity is not a JSON number"),
    ('{"enum": [1e400]}', "$.enum[0]: 1e400 is beyond the range of a double (it reads as infinity)"),
    ('{"maximum": -1e999}', "$.maximum: -1e999 is beyond the range of a double"),
    ('{"maximum": 1' + "0" * 5000 + "}", "$.maximum: an integer of 5,001 digits is over the limit of 4,300"),
])
def test_numbers_json_cannot_hold_are_refused_by_every_entry_point(text, message, tmp_path, capsys):
    with pytest.raises(GrammarError, match=re.escape(message)):
        schema_grammar(text)
    with pytest.raises(GrammarError, match=re.escape(message)):
        compile_schema(text)
    (tmp_path / "s.json").write_text(text)
    spec = tmp_path / "s.dec"
    spec.write_text('decoder s() {\n    target = model("target")\n    grammar = json_schema("s.json")\n}\n')
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert f"s.dec:3:15: error: JSON schema file 's.json': {message}" in err and "Traceback" not in err


@settings(max_examples=100)
@given(st.integers(1, 2 * MAX_DEPTH), st.lists(st.sampled_from(["list", "dict"]), min_size=1, max_size=4))
def test_documents_nest_at_most_max_depth_deep(depth, shapes):
    value, path = 1, "$"
    for level in range(depth):  # from the inside out
        value = [value] if shapes[level % len(shapes)] == "list" else {"k": value}
    for level in range(depth - 1, depth - 1 - MAX_DEPTH, -1):  # the path from the root to the container at MAX_DEPTH
        path += "[0]" if shapes[level % len(shapes)] == "list" else ".k"
    if depth <= MAX_DEPTH:
        check_document(value)
        return
    with pytest.raises(GrammarError, match=re.escape(f"{path}: the document nests arrays and objects more than {MAX_DEPTH} deep")):
        check_document(value)
    with pytest.raises(GrammarError, match=f"nests arrays and objects more than {MAX_DEPTH} deep"):
        parse(json.dumps(value))


@pytest.mark.parametrize("opening, closing", [('{"items":', "}"), ('{"not":', "}"), ('{"allOf":[', "]}"),
                                              ('{"properties":{"a":', "}}"), ('{"enum":[', "]}")])
def test_a_schema_nested_50000_deep_is_a_clear_error_at_a_line_and_column(opening, closing):
    text = opening * 50_000 + "{}" + closing * 50_000
    with pytest.raises(GrammarError, match=r"line 1 column \d+: the JSON nests arrays and objects more than 64 deep"):
        schema_grammar(text)
    with pytest.raises(GrammarError):
        check_document(json.loads(opening * 300 + "{}" + closing * 300))  # read (under json's own limit), then refused


def test_python_values_with_no_json_form_are_refused():
    for value, message in (({"enum": [{1, 2}]}, r"\$.enum\[0\]: a set is not a JSON value"),
                           ({"properties": {1: {}}}, r"\$.properties: an object key must be a string, got int 1")):
        with pytest.raises(GrammarError, match=message):
            check_document(value)


def ref_chain(length: int, link=lambda ref: {"$ref": ref}) -> dict:
    defs = {f"a{i}": link(f"#/$defs/a{i + 1}") for i in range(length)}
    return {"$defs": {**defs, f"a{length}": {"type": "integer"}}, "$ref": "#/$defs/a0"}


@pytest.mark.parametrize("schema", [
    ref_chain(200),
    ref_chain(200, lambda ref: {"properties": {"x": {"$ref": ref}}}),
    json.loads('{"not":' * 60 + "{}" + "}" * 60),
    ref_chain(200, lambda ref: {"allOf": [{"$ref": ref}]}),
])
def test_schemas_nest_at_most_max_nesting_deep_whatever_the_path(schema):
    with pytest.raises(GrammarError, match=f"schemas nest more than {MAX_NESTING} deep here"):
        compile_schema(schema)


# --------------------------------------------------------------------------- JSON Schema languages

@pytest.mark.parametrize("schema, path", [
    ({"properties": {"a": {"type": "string", "maxLength": 10_000}}}, "$.properties.a"),
    ({"type": "array", "maxItems": 1000, "items": {"type": "string", "maxLength": 100}}, "$"),
    ({"type": "string", "pattern": "(a{10000}){10000}"}, "$.pattern"),
    (ref_chain(30, lambda ref: {"items": {"$ref": ref}}), None),  # each level copies the one inside: 2^30
])
def test_a_schema_s_language_too_large_is_refused_at_the_innermost_path_before_it_is_built(schema, path, monkeypatch):
    built = []
    determinize = regex.determinize
    monkeypatch.setattr(regex, "determinize", lambda nfa, start: built.append(len(nfa.eps)) or determinize(nfa, start))
    with pytest.raises(GrammarError, match="over the limit of 2,000,000") as e:
        compile_schema(schema)
    where = e.value.message.partition(":")[0]
    assert where == path if path else where.startswith("$.$defs.a")
    assert max(built, default=0) < 20_000  # only the small parts were built (a string of 100 characters: 13,201)


def test_counts_are_bounded_alone_and_together(monkeypatch):
    from decspec.stdlib.grammars.json_schema import containers

    with pytest.raises(GrammarError, match=r"\$: minContains 1000000000 is over the limit of 1000"):
        compile_schema({"type": "array", "contains": {"type": "integer"}, "minContains": 10**9})
    monkeypatch.setattr(containers, "MAX_NFA_SIZE", 2_000)
    counts = {"type": "array", "minItems": 100, "contains": {"type": "integer"}, "minContains": 50,
              "allOf": [{"contains": {"type": "string"}, "minContains": 50}]}  # each count small, their product not
    with pytest.raises(TooLarge, match=r"\$: the grammar is too large: its automaton needs more than 2,000 counting states"):
        compile_schema(counts)


def test_a_regex_grammar_too_large_is_refused_by_check_at_the_spec_s_position(tmp_path, capsys):
    spec = tmp_path / "r.dec"
    spec.write_text('decoder r() {\n    target = model("target")\n    grammar = regex("""(a{10000}){10000}""")\n}\n')
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert ('r.dec:3:15: error: regex "(a{10000}){10000}" at column 11: this repetition needs 200,010,001 NFA states '
            "and moves (10,000 copies of a part of 20,001), over the limit of 2,000,000") in err
    with pytest.raises(DecError, match="r.dec:3:15"):
        decspec.compile(spec, target=TableModel.random(3, 0, seed=0, eos_token_id=2), vocab=[b"a", b"b", None])
