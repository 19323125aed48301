"""The .dec parser: AST shape, spans, syntax diagnostics, and robustness on arbitrary text."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decspec.dsl import ast
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError, Source, Span
from decspec.dsl.parser import KEYWORDS, MAX_DEPTH, parse

EXAMPLE = '''# specs/speculative.dec
import "base.dec"
decoder speculative(k: int = 4, temperature: float = 0.8) {
    target  = model("target")
    draft   = model("draft")            # a local binding (not a slot)
    sampler = temperature(temperature) | top_p(0.95)
    propose = autoregressive(draft, max = k)
    stop    = when draft.prob < 0.3 or draft.entropy > 2.5
    verify  = rejection
}
decoder greedy_spec(k: int = 4) extends speculative(k = k, temperature = 0.0) {
    sampler = greedy
    verify  = greedy
}
'''


def text(span: Span) -> str:
    return span.source.text[span.start:span.end]


def value_of(src: str) -> ast.Expr:
    """The expression bound to `x` in a one-binding decoder."""
    return parse(f"decoder d() {{ x = {src} }}").items[0].body[0].value


def error_of(src: str):
    with pytest.raises(DecError) as info:
        parse(src, "bad.dec")
    (diagnostic,) = info.value.diagnostics
    return diagnostic


# --- shape -----------------------------------------------------------------------------------


def test_example_items_and_params():
    module = parse(EXAMPLE, "speculative.dec")
    imp, spec, greedy = module.items
    assert imp == ast.Import("base.dec", None)
    assert [spec.name, greedy.name] == ["speculative", "greedy_spec"]
    assert [(p.name, str(p.type), p.default.value) for p in spec.params] == [("k", "int", 4), ("temperature", "float", 0.8)]
    assert [b.name for b in spec.body] == ["target", "draft", "sampler", "propose", "stop", "verify"]
    assert spec.base is None
    assert greedy.base.func == "speculative" and greedy.base.args == ()
    assert [(kw.name, type(kw.value).__name__) for kw in greedy.base.kwargs] == [("k", "Name"), ("temperature", "Num")]


def test_example_expressions():
    spec = parse(EXAMPLE).items[1]
    body = {b.name: b.value for b in spec.body}
    assert body["target"] == ast.Call("model", (ast.Str("target", None),), (), None, None)
    assert isinstance(body["sampler"], ast.Pipe) and [s.func for s in body["sampler"].stages] == ["temperature", "top_p"]
    propose = body["propose"]
    assert propose.args == (ast.Name("draft", None),)
    assert propose.kwargs == (ast.KwArg("max", ast.Name("k", None), None),)
    cond = body["stop"].cond
    assert cond.op == "or" and cond.left.op == "<" and cond.right.op == ">"
    assert cond.left.left == ast.Attr(ast.Name("draft", None), "prob", None)
    assert body["verify"] == ast.Name("rejection", None)


def test_spans_point_at_their_text():
    spec = parse(EXAMPLE).items[1]
    body = {b.name: b for b in spec.body}
    assert text(spec.name_span) == "speculative"
    assert text(spec.span).startswith("decoder speculative(") and text(spec.span).endswith("rejection\n}")
    assert text(spec.params[0].span) == "k: int = 4"
    assert text(spec.params[1].type.span) == "float"
    assert text(body["verify"].name_span) == "verify"
    assert text(body["verify"].value.span) == "rejection"
    assert text(body["propose"].value.span) == "autoregressive(draft, max = k)"
    assert text(body["propose"].value.func_span) == "autoregressive"
    assert text(body["propose"].value.kwargs[0].span) == "max = k"
    assert text(body["sampler"].value.span) == "temperature(temperature) | top_p(0.95)"
    assert text(body["stop"].value.span) == "when draft.prob < 0.3 or draft.entropy > 2.5"
    assert text(body["stop"].value.cond.right.left.span) == "draft.entropy"
    assert text(body["target"].value.args[0].span) == '"target"'
    assert text(parse(EXAMPLE).items[0].span) == 'import "base.dec"'
    assert str(body["stop"].name_span) == "<spec>:8:5"


@pytest.mark.parametrize("src, value", [
    ("4", 4), ("0.95", 0.95), ("1e-3", 1e-3), ("2E3", 2000.0), (".5", 0.5), ("3.", 3.0),
    ('"a\\"b\\n"', 'a"b\n'), ("'it\\'s'", "it's"), ('"\\\\"', "\\"), ("true", True), ("false", False),
])
def test_literals(src, value):
    node = value_of(src)
    assert node.value == value and type(node.value) is type(value)


def test_lists_and_unary():
    assert value_of("[]") == ast.ListLit((), None)
    assert value_of("[1, [2], 'x',]") == ast.ListLit((ast.Num(1, None), ast.ListLit((ast.Num(2, None),), None), ast.Str("x", None)), None)
    neg = value_of("-1e-3")
    assert neg == ast.UnOp("-", ast.Num(1e-3, None), None) and text(neg.span) == "-1e-3"
    assert value_of("not true") == ast.UnOp("not", ast.Bool(True, None), None)


def test_precedence():
    n = lambda v: ast.Num(v, None)  # noqa: E731
    assert value_of("1 + 2 * 3") == ast.BinOp("+", n(1), ast.BinOp("*", n(2), n(3), None), None)
    assert value_of("(1 + 2) * 3") == ast.BinOp("*", ast.BinOp("+", n(1), n(2), None), n(3), None)
    assert value_of("1 - 2 - 3") == ast.BinOp("-", ast.BinOp("-", n(1), n(2), None), n(3), None)
    assert value_of("1 < 2 + 3").op == "<"
    logic = value_of("a or b and not c")
    assert logic.op == "or" and logic.right.op == "and" and logic.right.right.op == "not"
    assert value_of("x <= 1").op == "<=" and value_of("x != 1").op == "!=" and value_of("x == 1").op == "=="


def test_pipes_flatten_and_when():
    pipe = value_of("(a | b) | c(1)")
    assert [type(s).__name__ for s in pipe.stages] == ["Name", "Name", "Call"]
    when = value_of("when not (draft.prob >= 0.5)")
    assert isinstance(when, ast.When) and when.cond.op == "not"


def test_calls_positional_and_keyword():
    call = value_of("f(1, 'a', x = 2, y = [3])")
    assert [a.value for a in call.args] == [1, "a"]
    assert [k.name for k in call.kwargs] == ["x", "y"]
    assert value_of("f()") == ast.Call("f", (), (), None, None)


def test_optional_separators_comments_and_parens():
    src = "decoder d { a = 1; b = 2 c = 3 ;}  # trailing\n# only a comment\ndecoder e() extends d {}"
    d, e = parse(src).items
    assert [b.name for b in d.body] == ["a", "b", "c"] and d.params == ()
    assert e.base.func == "d" and e.base.args == () and text(e.base.span) == "d"


def test_list_param_types():
    (p,) = parse("decoder d(arms: list[int] = [2, 4, 8]) {}").items[0].params
    assert str(p.type) == "list[int]" and len(p.default.items) == 3


def test_parse_keeps_source_name():
    module = parse("decoder d() {}", "x.dec")
    assert module.source == Source("decoder d() {}", "x.dec")


# --- diagnostics -----------------------------------------------------------------------------

CASES = [
    # (text, line:col, message, hint or None)
    ("decoder d() {\n  verify rejection\n}", "2:10", "missing '=' in a binding", "`NAME = VALUE`"),
    ('decoder d() {\n  target: model("t")\n}', "2:9", "bindings use '=', not ':'", None),
    ('decoder a() {}\ndecoder d() {\n  x = 1; target model("t")\n}', "3:17", "missing '=' in a binding", None),
    ("decoder d(j: int, k) {}", "1:20", "a parameter needs a type", None),
    ("decoder d() { verify == rejection }", "1:23", "bindings use '=', not '=='", None),
    ('decoder d() {\n  target = model("t")\n', "1:13", "'{' is never closed", "add a matching '}'"),
    ('decoder d() { target = model("t"', "1:29", "'(' is never closed", "')'"),
    ('target = model("t")', "1:1", "expected 'decoder' or 'import' here", "inside a decoder block"),
    ('decoder d() {}\nverify = rejection', "2:1", "expected 'decoder' or 'import' here", "inside a decoder block"),
    ("decoder d() { when = 1 }", "1:15", "'when' is a keyword and cannot be used as a name", None),
    ("decoder and() {}", "1:9", "'and' is a keyword and cannot be used as a name", None),
    ("decoder d(true: int) {}", "1:11", "'true' is a keyword and cannot be used as a name", None),
    ("decoder d() { x = f(not = 1) }", "1:25", "expected a value, found '='", None),
    ("decoder d(k = 4) {}", "1:13", "a parameter needs a type", "k: int = 4"),
    ("decoder d() { x = f(1 2) }", "1:23", "expected ')' or ',', found '2'", None),
    ("decoder d() { x = [1, 2 }", "1:25", "expected ',' or ']', found '}'", None),
    ("decoder d() { x = }", "1:19", "expected a value, found '}'", None),
    ("decoder d() { x = @ }", "1:19", "expected a value, found '@'", None),
    ("decoder d() { x = 1 < 2 < 3 }", "1:25", "expected a name, ';' or '}', found '<'", None),
    ("decoder d() { stop = when draft.prob = 0.3 }", "1:38", "'=' binds a name; use '==' to compare", None),
    ("decoder d() { x = f(a = 1, 2) }", "1:28", "positional argument after a keyword argument", None),
    ('decoder d() { x = "abc }', "1:19", "unterminated string", None),
    ('decoder d() { x = "a\\q" }', "1:21", "unknown escape '\\q' in string", None),
    ("decoder d() { x = 1 } }", "1:23", "expected ';', 'decoder', 'import' or end of file, found '}'", None),
    ("decoder", "1:8", "expected a name, found end of file", None),
    ("decoder d() { x = y. }", "1:22", "expected a name, found '}'", None),
    ("decoder d() extends { }", "1:21", "expected a name, found '{'", None),
    ("import base", "1:8", "expected a string, found 'base'", None),
]


@pytest.mark.parametrize("src, where, message, hint", CASES)
def test_syntax_diagnostics(src, where, message, hint):
    d = error_of(src)
    assert d.message == message
    assert f"{d.span.line}:{d.span.col}" == where
    assert str(d.span).startswith("bad.dec:")
    if hint:
        assert hint in d.hint


def test_rendered_syntax_error():
    with pytest.raises(DecError) as info:
        parse("decoder d() {\n    verify rejection\n}", "spec.dec")
    assert str(info.value) == (
        "spec.dec:2:12: error: missing '=' in a binding\n"
        "        verify rejection\n"
        "               ^^^^^^^^^\n"
        "  hint: a binding is `NAME = VALUE`, e.g. `verify = rejection`"
    )


@pytest.mark.parametrize("keyword", KEYWORDS)
def test_keywords_are_not_names(keyword):
    assert "keyword" in error_of(f"decoder d() {{ {keyword} = 1 }}").message
    assert value_of(f"{keyword}_x") == ast.Name(f"{keyword}_x", None)  # a longer name is fine


def test_nesting_limits():
    assert value_of("(" * 2000 + "1" + ")" * 2000) == ast.Num(1, None)
    assert value_of("-" * (MAX_DEPTH - 5) + "1").op == "-"
    for deep in ("-" * 5000 + "1", "[" * 500 + "]" * 500, " or ".join(["a"] * 3000), "f(" * 400 + ")" * 400):
        d = error_of(f"decoder d() {{ x = {deep} }}")
        assert d.message.startswith("expression nested too deeply") and d.span is not None


# --- robustness: nothing but DecError, always with a position ---------------------------------

SPECISH = list("(){}[]=,.:;|<>!+-*/#\"'\\ \n\t_09aeE") + [
    "decoder", "import", "extends", "when", "and", "or", "not", "true", "false", " d ", "k", "target",
    "sampler", "verify", "propose", "stop", "model(", "draft.prob", "0.3", "1e-3", '"t"', "int", "list[",
    "rejection", "greedy", "top_p", "autoregressive(", "==", "<=", "{\n", "}\n",
]

ROBUST = settings(max_examples=300, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def assert_only_decerror(src: str) -> None:
    for run in (lambda: parse(src, "fuzz.dec"), lambda: load(Source(src, "fuzz.dec"))):
        try:
            run()
        except DecError as e:
            assert e.diagnostics and all(d.span is not None for d in e.diagnostics), str(e)
            str(e)  # rendering never fails


@ROBUST
@given(st.text(max_size=200))
def test_arbitrary_text(src):
    assert_only_decerror(src)


@ROBUST
@given(st.lists(st.sampled_from(SPECISH), max_size=60).map("".join))
def test_spec_like_text(src):
    assert_only_decerror(src)


def _mutate(src: str, data) -> str:
    """Delete, insert, swap or duplicate characters or whitespace-separated tokens."""
    by_char = data.draw(st.booleans(), "by char")
    pieces = list(src) if by_char else src.split(" ")
    for _ in range(data.draw(st.integers(1, 4), "mutations")):
        kind = data.draw(st.sampled_from(["delete", "insert", "swap", "duplicate"]), "kind")
        i = data.draw(st.integers(0, max(0, len(pieces) - 1)), "at")
        if kind == "delete" and pieces:
            del pieces[i]
        elif kind == "insert":
            pieces.insert(i, data.draw(st.sampled_from(SPECISH), "inserted"))
        elif kind == "swap" and len(pieces) > 1:
            j = data.draw(st.integers(0, len(pieces) - 1), "with")
            pieces[i], pieces[j] = pieces[j], pieces[i]
        elif kind == "duplicate" and pieces:
            pieces.insert(i, pieces[i])
    return ("" if by_char else " ").join(pieces)


VALID = EXAMPLE.replace('import "base.dec"\n', "")


@ROBUST
@given(st.data())
def test_mutated_valid_specs(data):
    assert_only_decerror(_mutate(VALID, data))


def test_valid_example_loads():
    spec = load(VALID)
    assert spec.name == "greedy_spec"


# --------------------------------------------------------------------------- triple-quoted strings


def test_triple_quoted_strings_are_raw_and_may_span_lines():
    text = 'decoder d() {\n    x = """a\\d+\n"quoted" \'\'"""\n    y = \'\'\'{"k": "\\n"}\'\'\'\n    z = ""\n}'
    x, y, z = (b.value for b in parse(text).items[0].body)
    assert x.value == 'a\\d+\n"quoted" \'\'' and (x.span.line, x.span.col) == (2, 9)
    assert y.value == '{"k": "\\n"}' and z.value == ""


def test_an_unterminated_triple_quoted_string():
    with pytest.raises(DecError) as info:
        parse('decoder d() {\n    g = regex("""abc)\n}')
    (diag,) = info.value.diagnostics
    assert diag.message == "unterminated triple-quoted string" and (diag.span.line, diag.span.col) == (2, 15)
    assert '"""' in diag.hint
