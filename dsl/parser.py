"""Parse .dec text into an ast.Module: the Lark grammar in dec.lark, a Transformer building
ast nodes with spans, and parse errors turned into DecError diagnostics.

    >>> module = parse('decoder d() { target = model("target") }', "d.dec")
    >>> module.items[0].body[0].value.func
    'model'
    >>> parse("decoder d() { verify rejection }", "d.dec")
    Traceback (most recent call last):
    ...
    decspec.dsl.diagnostics.DecError: d.dec:1:22: error: missing '=' in a binding
        decoder d() { verify rejection }
                             ^^^^^^^^^
      hint: a binding is `NAME = VALUE`, e.g. `verify = rejection`
"""
from __future__ import annotations

import hashlib
import math
import re
from functools import lru_cache
from importlib import resources

import lark
from lark import Lark, Token, Transformer_NonRecursive, Tree, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.lexer import PatternStr

from decspec.dsl import ast
from decspec.dsl.diagnostics import EXCERPT, DecError, Diagnostic, Source, Span
from decspec.dsl.values import INT_LIMIT
from decspec.user_cache import cache_dir, open_private, write_private

MAX_DEPTH = 100  # deeper expressions are refused, so checking never exhausts the Python stack
KEYWORDS = ("decoder", "import", "extends", "when", "and", "or", "not", "true", "false")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}
_NAMED = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string", "$END": "end of file"}
_STARTS_EXPR = {"NAME", "NUMBER", "STRING", "LPAR", "LSQB", "MINUS", "TRUE", "FALSE", "NOT"}
_OPERATORS = {"'+'", "'-'", "'*'", "'/'", "'<'", "'<='", "'>'", "'>='", "'=='", "'!='", "'or'", "'and'", "'|'", "'.'"}
_BRACKETS = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
_CLOSERS = {"(": ")", "[": "]", "{": "}"}

# Common mistakes: (message, hint) -> example texts that fail the same way. A label applies
# when the parser stops in the same LALR state on the same kind of token (see _mistake).
_MISTAKES: dict[tuple[str, str], list[str]] = {
    ("missing '=' in a binding", "a binding is `NAME = VALUE`, e.g. `verify = rejection`"): [
        'decoder d() { target model("t") }',
        "decoder d() { verify rejection }",
        "decoder d() { k 1 }",
        'decoder d() { k "s" }',
        "decoder d() { k [1] }",
        "decoder d() { stop when draft.prob < 0.3 }",
    ],
    ("bindings use '=', not ':'", "write `NAME = VALUE`, e.g. `verify = rejection`"): [
        'decoder d() { target: model("t") }',
    ],
    ("bindings use '=', not '=='", "`==` compares; write `NAME = VALUE`"): [
        "decoder d() { verify == rejection }",
    ],
    ("a parameter needs a type", "write `NAME: TYPE = DEFAULT`, e.g. `k: int = 4`"): [
        "decoder d(k = 4) {}",
        "decoder d(k) {}",
        "decoder d(k, j: int) {}",
    ],
    ("expected 'decoder' or 'import' here", "slots and bindings go inside a decoder block: `decoder NAME() { ... }`"): [
        'target = model("t")',
        "decoder d() {} verify = rejection",
        'import "a.dec" verify = rejection',
    ],
    ("'=' binds a name; use '==' to compare", None): [
        "decoder d() { stop = when draft.prob = 0.3 }",
        "decoder d() { stop = draft.prob = 0.3 }",
    ],
}


_LARK_OPTIONS = dict(parser="lalr", lexer="contextual", propagate_positions=True, maybe_placeholders=True)


@lru_cache(maxsize=None)
def _lark() -> Lark:
    """The .dec parser. Building its LALR tables costs 50-70 ms, loading them 5-10 ms, so they are kept in the
    user cache (`<cache>/parser/`), read back only when the current user alone could have written them (see
    decspec.user_cache): Lark's own `cache=True` unpickles a file of a predictable name in the shared temp dir."""
    grammar = resources.files("decspec.dsl").joinpath("dec.lark").read_text(encoding="utf-8")
    key = hashlib.sha256(repr((grammar, lark.__version__, sorted(_LARK_OPTIONS.items()))).encode()).hexdigest()[:32]
    path = cache_dir() / "parser" / f"dec-{key}.lark"
    header = f"decspec parser tables {key}\n".encode()
    with open_private(path) as f:
        if f is not None and f.read(len(header)) == header:
            try:
                return Lark.load(f)
            except Exception:  # truncated or corrupt: build again
                pass
    parser = Lark(grammar, **_LARK_OPTIONS)
    write_private(path, lambda out: (out.write(header), parser.save(out)))
    return parser


def parse(text: str | Source, name: str = "<spec>") -> ast.Module:
    """Parse .dec text into an ast.Module; every syntax error is a DecError with a position.

        >>> m = parse("import 'base.dec'\\ndecoder d(k: int = 4) extends base(k = k) {}")
        >>> [type(i).__name__ for i in m.items], m.items[1].base.func
        (['Import', 'DecoderDef'], 'base')

    A Source whose `quotable` is limited (a file something named) becomes quotable as a whole once it
    parses; a syntax error in it quotes only what parsed, up to the offending token (see `_as_far_as_parsed`).
    """
    source = text if isinstance(text, Source) else Source(text, name)
    try:
        tree = _lark().parse(source.text)
        parsed = source.quoting(None)
        _check_depth(tree, parsed)
        return _ToAst(parsed).transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, DecError):
            raise e.orig_exc from None
        raise DecError("cannot parse this spec", Span(source, 0, len(source.text))) from None
    except UnexpectedInput as e:
        shown = _as_far_as_parsed(source, e)
        diagnostic = _diagnose(e, shown)
        if shown.quotable == 0:  # nothing parsed: likely not a spec at all
            diagnostic = Diagnostic(f"not a .dec spec: {diagnostic.message}", diagnostic.span, hint=diagnostic.hint)
        raise DecError(diagnostic) from None
    except (LarkError, RecursionError):
        raise DecError("cannot parse this spec", Span(source, 0, len(source.text))) from None


_SKIPPED = re.compile(r"(?:[ \t\r\n\f]+|#[^\n]*)*")  # what the lexer ignores (dec.lark's WS and COMMENT)


def _as_far_as_parsed(source: Source, e: UnexpectedInput) -> Source:
    """The source quotable as far as it parsed as .dec: up to the offending token (at most EXCERPT characters
    of it) when the parser accepted a token before it, else nothing. Text handed to parse() stays quotable."""
    if source.quotable is None:
        return source
    token = getattr(e, "token", None)
    if token is not None and token.type == "$END":  # all of it lexed and parsed: a spec cut short
        return source.quoting(len(source.text))
    start = token.start_pos if token is not None else e.pos_in_stream
    end = token.end_pos if token is not None else start + 1
    first = _SKIPPED.match(source.text).end()
    return source.quoting(min(end, start + EXCERPT) if start > first else 0)


def _check_depth(tree: Tree, source: Source) -> None:
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            span = Span(source, node.meta.start_pos, node.meta.end_pos)
            raise DecError(f"expression nested too deeply (more than {MAX_DEPTH} levels)", span)
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))


# --- parse errors -------------------------------------------------------------------------


def _diagnose(e: UnexpectedInput, source: Source) -> Diagnostic:
    if isinstance(e, UnexpectedToken):
        return _unexpected_token(e, source)
    if isinstance(e, UnexpectedCharacters):
        span = Span(source, e.pos_in_stream, e.pos_in_stream + 1)
        char = source.text[e.pos_in_stream]
        if char in "\"'":
            at = e.pos_in_stream
            if source.text[max(at - 2, 0):at] == char * 2:  # `""` lexed as an empty string: an open triple quote
                return Diagnostic("unterminated triple-quoted string", Span(source, at - 2, at + 1), hint=f"close it with {char * 3}")
            return Diagnostic("unterminated string", span, hint=f"close it with {char} on the same line")
        allowed = {t for t in e.allowed if t not in ("WS", "COMMENT")}
        shown = source.excerpt(e.pos_in_stream, e.pos_in_stream + 1)
        return Diagnostic(f"expected {_expected(allowed)}, found " + (repr(char) if shown else "a character no token starts with"), span)
    return Diagnostic("cannot parse this spec", Span(source, 0, len(source.text)))


def _unexpected_token(e: UnexpectedToken, source: Source) -> Diagnostic:
    token = e.token
    expected = set(e.accepts or e.expected)
    if token.type == "$END":
        end = token.end_pos if token.end_pos is not None else 0
        unclosed = _unclosed_bracket(source.text)
        if unclosed is not None and f"'{_CLOSERS[unclosed[0]]}'" in {_human(t) for t in expected}:
            opener, at = unclosed
            return Diagnostic(f"'{opener}' is never closed", Span(source, at, at + 1),
                              hint=f"add a matching '{_CLOSERS[opener]}'")
        return Diagnostic(f"expected {_expected(expected)}, found end of file", Span(source, end, end))
    span = Span(source, token.start_pos, token.end_pos)
    if token.value in KEYWORDS and "NAME" in expected:
        return Diagnostic(f"'{token.value}' is a keyword and cannot be used as a name", span,
                          hint="pick another name, e.g. '" + token.value + "_'")
    label = _mistake(e)
    if label:
        return Diagnostic(label[0], span, hint=label[1])
    return Diagnostic(f"expected {_expected(expected)}, found {_found(token, source)}", span)


def _mistake(e: UnexpectedToken) -> tuple[str, str | None] | None:
    """The labelled common mistake this error matches: the parser stopped in the same LALR
    state on the same kind of token as in one of the label's examples.

    This is Lark's `UnexpectedInput.match_examples` keyed on the state alone: Lark's own
    version also compares the depth of the parser stack, so a mistake in a decoder's second
    binding would not match an example that makes it in the first.
    """
    position = getattr(e.state, "position", None)
    return _mistake_table().get((position, e.token.type))


@lru_cache(maxsize=None)
def _mistake_table() -> dict[tuple[object, str], tuple[str, str | None]]:
    table: dict[tuple[object, str], tuple[str, str | None]] = {}
    for label, examples in _MISTAKES.items():
        for example in examples:
            try:
                _lark().parse(example)
            except UnexpectedToken as err:
                table.setdefault((err.state.position, err.token.type), label)
    return table


def _unclosed_bracket(text: str) -> tuple[str, int] | None:
    """The innermost bracket still open at the end of the text, as (bracket, offset)."""
    stack: list[Token] = []
    try:
        for tok in _lark().lex(text):
            if tok.type in _BRACKETS:
                stack.append(tok)
            elif stack and tok.type == _BRACKETS[stack[-1].type]:
                stack.pop()
    except LarkError:
        return None
    return (stack[-1].value, stack[-1].start_pos) if stack else None


@lru_cache(maxsize=None)
def _human(terminal: str) -> str:
    if terminal in _NAMED:
        return _NAMED[terminal]
    for t in _lark().terminals:
        if t.name == terminal and isinstance(t.pattern, PatternStr):
            return f"'{t.pattern.value}'"
    return terminal.lower()


def _expected(terminals: set[str]) -> str:
    """Human names of the expected terminals: 'a value' for any expression start; operators
    (always possible after a value) only when nothing else is."""
    value = _STARTS_EXPR <= terminals
    if value:
        terminals = terminals - _STARTS_EXPR - {"WHEN"}
    names = {_human(t) for t in terminals}
    if names - _OPERATORS:
        names -= _OPERATORS
    names = sorted(names | ({"a value"} if value else set()),
                   key=lambda n: (n == "end of file", n.startswith("'"), n))
    if not names:
        return "something else"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _found(token: Token, source: Source) -> str:
    """The offending token: quoted (at most EXCERPT characters) where its source may be quoted, else its kind."""
    if token.type == "STRING":
        return "a string"
    shown = source.excerpt(token.start_pos, token.end_pos)
    if shown is not None:
        return f"'{shown}'"
    return _NAMED.get(token.type) or _human(token.type)


# --- parse tree -> AST ---------------------------------------------------------------------


def _unescape(token: Token, source: Source) -> str:
    if token.value[:3] in ('"""', "'''"):  # triple-quoted: raw, may span lines (regexes, inline JSON)
        return token.value[3:-3]
    body, out, i = token.value[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            esc = body[i + 1]
            if esc not in _ESCAPES:
                at = token.start_pos + 1 + i
                raise DecError(f"unknown escape '\\{esc}' in string", Span(source, at, at + 2),
                               hint="known escapes: " + " ".join("\\" + e for e in _ESCAPES))
            out.append(_ESCAPES[esc])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _binary(op: str):
    def build(self, meta, children):
        left, right = children
        return ast.BinOp(op, left, right, self._span(meta))
    return v_args(meta=True)(build)


class _ToAst(Transformer_NonRecursive):
    """Bottom-up: parse-tree nodes to ast nodes, each with the Span of the text it came from."""

    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def _span(self, meta) -> Span:
        return Span(self.source, meta.start_pos, meta.end_pos)

    def _tok(self, token: Token) -> Span:
        return Span(self.source, token.start_pos, token.end_pos)

    @v_args(meta=True)
    def start(self, meta, items):
        return ast.Module(tuple(items), self.source)

    @v_args(meta=True)
    def import_stmt(self, meta, children):
        return ast.Import(_unescape(children[0], self.source), self._span(meta))

    @v_args(meta=True)
    def decoder(self, meta, children):
        name, params, base, *body = children
        return ast.DecoderDef(str(name), tuple(params or ()), base, tuple(body), self._span(meta), self._tok(name))

    def params(self, children):
        return list(children)

    @v_args(meta=True)
    def param(self, meta, children):
        name, type_, *default = children
        return ast.ParamDecl(str(name), type_, default[0] if default else None, self._span(meta))

    @v_args(meta=True)
    def type(self, meta, children):
        name, *args = children
        return ast.TypeExpr(str(name), tuple(args), self._span(meta))

    def extends(self, children):
        (base,) = children
        if isinstance(base, ast.Name):
            return ast.Call(base.id, (), (), base.span, base.span)
        return base

    @v_args(meta=True)
    def binding(self, meta, children):
        name, value = children
        return ast.Binding(str(name), value, self._span(meta), self._tok(name))

    @v_args(meta=True)
    def when(self, meta, children):
        return ast.When(children[0], self._span(meta))

    @v_args(meta=True)
    def pipe(self, meta, children):
        stages: list = []
        for stage in children:
            stages.extend(stage.stages if isinstance(stage, ast.Pipe) else [stage])
        return ast.Pipe(tuple(stages), self._span(meta))

    or_ = _binary("or")
    and_ = _binary("and")
    lt, le, gt, ge, eq, ne = (_binary(op) for op in ("<", "<=", ">", ">=", "==", "!="))
    add, sub, mul, div = (_binary(op) for op in "+-*/")

    @v_args(meta=True)
    def not_(self, meta, children):
        return ast.UnOp("not", children[0], self._span(meta))

    @v_args(meta=True)
    def neg(self, meta, children):
        return ast.UnOp("-", children[0], self._span(meta))

    def number(self, children):
        (tok,) = children
        text = tok.value
        if any(c in text for c in ".eE"):
            value = float(text)
            if math.isinf(value):  # 1e400: float() would say inf
                raise DecError("number too large for a 64-bit float (it would be infinite)", self._tok(tok),
                               hint="floats reach about 1.8e308; every parameter has a finite range")
            if value == 0 and any(c in "123456789" for c in text.lower().split("e")[0]):  # 1e-400: float() would say 0
                raise DecError("number too small for a 64-bit float (it would be 0)", self._tok(tok),
                               hint="the smallest positive float is about 4.9e-324; write 0 if 0 is meant")
            return ast.Num(value, self._tok(tok))
        if len(text.lstrip("0")) > 19 or int(text) >= INT_LIMIT:
            raise DecError("integer too large for 64 bits", self._tok(tok))
        return ast.Num(int(text), self._tok(tok))

    def string(self, children):
        (tok,) = children
        return ast.Str(_unescape(tok, self.source), self._tok(tok))

    @v_args(meta=True)
    def true(self, meta, children):
        return ast.Bool(True, self._span(meta))

    @v_args(meta=True)
    def false(self, meta, children):
        return ast.Bool(False, self._span(meta))

    @v_args(meta=True)
    def list(self, meta, children):
        return ast.ListLit(tuple(children), self._span(meta))

    def name(self, children):
        (tok,) = children
        return ast.Name(str(tok), self._tok(tok))

    @v_args(meta=True)
    def attr(self, meta, children):
        obj, attr = children
        return ast.Attr(ast.Name(str(obj), self._tok(obj)), str(attr), self._span(meta))

    @v_args(meta=True)
    def call(self, meta, children):
        func, *args = children
        positional = [a for a in args if not isinstance(a, ast.KwArg)]
        keywords = [a for a in args if isinstance(a, ast.KwArg)]
        if keywords:
            first_kw = args.index(keywords[0])
            late = next((a for a in args[first_kw:] if not isinstance(a, ast.KwArg)), None)
            if late is not None:
                raise DecError("positional argument after a keyword argument", late.span,
                               hint="put positional arguments first, or name this one")
        return ast.Call(str(func), tuple(positional), tuple(keywords), self._span(meta), self._tok(func))

    @v_args(meta=True)
    def kwarg(self, meta, children):
        name, value = children
        return ast.KwArg(str(name), value, self._span(meta))
