"""JSON strings: a language over *decoded* characters (a `pattern`, a `format`, a literal, a length) becomes
the JSON string texts whose value is in it, every way of writing each character included: itself when
JSON allows it raw, a short escape (`\\n`, `\\"`, `\\/`), `\\uXXXX` in either case, or an escaped
surrogate pair. The translation is exact: a text is accepted iff its decoded value is in the language.

    >>> from decspec.stdlib.grammars.json_schema.lang import matches
    >>> slash = string_of(pattern_tree("^a/$"))
    >>> [matches(slash, s) for s in ('"a/"', '"a\\\\/"', '"\\\\u0061/"', '"a"', '"a/b"')]
    [True, True, True, False, False]

`pattern` is an ECMA-262 regex that matches *anywhere* in the value (JSON Schema's rule); `^` and `$` anchor
it at the start / end. `.` excludes the line terminators `\\n \\r \\u2028 \\u2029` and `\\s` is ECMA's
white space (Unicode spaces and the BOM), as in ECMA. Syntax whose meaning differs between Python `re`
(the dialect of regex.py) and ECMA is refused: `[]`, `[^]`, `{,n}`, `\\a`, `\\U`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from decspec.stdlib.grammars.automaton import ByteDFA
from decspec.stdlib.grammars.errors import GrammarError
from decspec.stdlib.grammars.json_schema.lang import EMPTY, EPSILON, Graph, Machine, alt, any_char, chars, rep, seq, text
from decspec.stdlib.grammars.regex import MAX_CODEPOINT, Alt, Chars, Parser, Repeat, Seq, negate, normalize

SHORT_ESCAPES = {0x22: '"', 0x5C: "\\", 0x2F: "/", 0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t"}
NOT_RAW = normalize([(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])  # must be escaped in a JSON string
ECMA_DOT = negate(normalize([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]))
ECMA_SPACE = normalize([(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                        (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)])
QUOTE = text('"')


def both(a, b):
    """The code points in both range sets."""
    return negate(normalize([*negate(a), *negate(b)]))


def hex_digit(lo: int, hi: int) -> Chars:
    """One hex digit (either case) with a value in lo..hi."""
    out = []
    for v in range(lo, hi + 1):
        out += [(48 + v, 48 + v)] if v < 10 else [(87 + v, 87 + v), (55 + v, 55 + v)]
    return chars(*out)


def hex_range(lo: int, hi: int, width: int = 4):
    """`width` hex digits whose value is in lo..hi."""
    if width == 0:
        return EPSILON
    unit = 16 ** (width - 1)
    a, b = lo // unit, hi // unit
    rest_lo, rest_hi = lo % unit, hi % unit
    if a == b:
        return seq(hex_digit(a, a), hex_range(rest_lo, rest_hi, width - 1))
    parts, first, last = [], a, b
    if rest_lo:
        parts.append(seq(hex_digit(a, a), hex_range(rest_lo, unit - 1, width - 1)))
        first += 1
    if rest_hi != unit - 1:
        parts.append(seq(hex_digit(b, b), hex_range(0, rest_hi, width - 1)))
        last -= 1
    if first <= last:
        parts.append(seq(hex_digit(first, last), rep(hex_digit(0, 15), width - 1, width - 1)))
    return alt(*parts)


def surrogates(lo: int, hi: int):
    """The escaped surrogate pairs of the code points lo..hi (all above 0xFFFF)."""
    high = lambda cp: 0xD800 + ((cp - 0x10000) >> 10)  # noqa: E731
    low = lambda cp: 0xDC00 + ((cp - 0x10000) & 0x3FF)  # noqa: E731
    pair = lambda h1, h2, l1, l2: seq(text("\\u"), hex_range(h1, h2), text("\\u"), hex_range(l1, l2))  # noqa: E731
    if high(lo) == high(hi):
        return pair(high(lo), high(lo), low(lo), low(hi))
    parts = [pair(high(lo), high(lo), low(lo), 0xDFFF), pair(high(hi), high(hi), 0xDC00, low(hi))]
    if high(lo) + 1 <= high(hi) - 1:
        parts.append(pair(high(lo) + 1, high(hi) - 1, 0xDC00, 0xDFFF))
    return alt(*parts)


@lru_cache(maxsize=4096)
def encode(ranges) -> object:
    """One decoded character from `ranges`, as the JSON string text that writes it (every way)."""
    parts = [Chars(both(ranges, negate(NOT_RAW)))]
    for code, letter in SHORT_ESCAPES.items():
        if any(lo <= code <= hi for lo, hi in ranges):
            parts.append(text("\\" + letter))
    for lo, hi in both(ranges, ((0, 0xFFFF),)):
        parts.append(seq(text("\\u"), hex_range(lo, hi)))
    for lo, hi in both(ranges, ((0x10000, MAX_CODEPOINT),)):
        parts.append(surrogates(lo, hi))
    return alt(*parts)


@lru_cache(maxsize=4096)
def encode_plainly(ranges) -> object:
    """One decoded character from `ranges`, written one way: itself, or its short or `\\u00xx` escape."""
    parts = [Chars(both(ranges, negate(NOT_RAW)))]
    for lo, hi in both(ranges, NOT_RAW):
        for code in range(lo, hi + 1):
            parts.append(text("\\" + SHORT_ESCAPES[code] if code in SHORT_ESCAPES else f"\\u{code:04x}"))
    return alt(*parts)


def translate(node, plainly: bool = False):
    """A tree over decoded characters -> the tree of their JSON string texts (without the quotes)."""
    if isinstance(node, Chars):
        return (encode_plainly if plainly else encode)(node.ranges) if node.ranges else EMPTY
    if isinstance(node, Seq):
        return seq(*(translate(n, plainly) for n in node.items))
    if isinstance(node, Alt):
        return alt(*(translate(n, plainly) for n in node.options))
    if isinstance(node, Repeat):
        return rep(translate(node.item, plainly), node.min, node.max)
    raise TypeError(f"not a decoded-character tree: {node!r}")


def string_of(decoded, plainly: bool = False):
    """The JSON string texts (quotes included) whose value is in the decoded-character language (a tree,
    or a `Machine` over the UTF-8 bytes of the decoded value). `plainly`: each character written one way
    only (a stricter language, and a much smaller automaton)."""
    if isinstance(decoded, Machine):
        return seq(QUOTE, translate_dfa(decoded.dfa, plainly), QUOTE)
    return seq(QUOTE, translate(decoded, plainly), QUOTE)


def translate_dfa(dfa: ByteDFA, plainly: bool = False) -> Graph:
    """A DFA over the UTF-8 bytes of decoded strings -> a Graph over their JSON texts: the DFA's moves read
    as whole code points (range by range), each written every way `encode` allows."""
    moves: dict[tuple[int, int], list[tuple[int, int]]] = {}
    table = dfa.transitions

    @lru_cache(maxsize=None)
    def tails(state: int, depth: int) -> tuple[tuple[int, int, int], ...]:
        """(lo, hi, target): the values of `depth` continuation bytes (6 bits each) read from `state`."""
        out: list[list[int]] = []
        for c in range(0x80, 0xC0):
            nxt = int(table[state, c])
            if nxt < 0:
                continue
            subs = ((0, 0, nxt),) if depth == 1 else tails(nxt, depth - 1)
            shift = 6 * (depth - 1)
            for lo, hi, t in subs:
                lo, hi = ((c & 0x3F) << shift) | lo, ((c & 0x3F) << shift) | hi
                if out and out[-1][2] == t and out[-1][1] + 1 == lo:
                    out[-1][1] = hi
                else:
                    out.append([lo, hi, t])
        return tuple(tuple(x) for x in out)

    for s in range(dfa.num_states):
        for b in range(256):
            t = int(table[s, b])
            if t < 0:
                continue
            if b < 0x80:
                moves.setdefault((s, t), []).append((b, b))
                continue
            depth = 1 if 0xC0 <= b < 0xE0 else 2 if 0xE0 <= b < 0xF0 else 3
            base = (b & (0x3F >> depth)) << (6 * depth)
            for lo, hi, target in tails(t, depth):
                moves.setdefault((s, target), []).append((base | lo, base | hi))
    writer = encode_plainly if plainly else encode
    edges = tuple((s, writer(normalize(ranges)), t) for (s, t), ranges in moves.items())
    finals = tuple(int(s) for s in np.flatnonzero(dfa.accepting))
    return Graph(dfa.num_states, dfa.start, finals, edges)


def literal_string(value: str):
    """Every JSON text of the string `value`."""
    return string_of(text(value))


def length(lo: int, hi: int | None):
    """Decoded strings of lo..hi characters (code points)."""
    return rep(any_char(), lo, hi)


@dataclass(frozen=True)
class Anchor:
    kind: str  # "^" or "$"

    def nfa_size(self, sizes: dict[int, int]) -> int:
        return 0  # no state of its own (pattern_tree takes it out)


class EcmaParser(Parser):
    """regex.py's parser with ECMA-262 meanings where they differ (see the module doc)."""

    def atom(self):
        c = self.peek()
        if c == ".":
            self.i += 1
            return Chars(ECMA_DOT)
        if c in ("^", "$"):
            self.i += 1
            return Anchor(c)
        return super().atom()

    def escape(self, in_class: bool):
        c = self.peek(1)
        if c in ("s", "S"):
            self.i += 2
            return ECMA_SPACE if c == "s" else negate(ECMA_SPACE)
        if c in ("a", "U"):
            raise self.error(f"'\\{c}' means different things in ECMA and Python regexes; write the character itself")
        return super().escape(in_class)

    def braces(self):
        if self.pattern[self.i + 1:self.i + 2] == ",":  # ECMA reads "{,n}" literally
            return None
        return super().braces()

    def char_class(self):
        if self.pattern[self.i + 1:self.i + 2] == "]" or self.pattern[self.i + 1:self.i + 3] == "^]":
            raise self.error("'[]' and '[^]' mean different things in ECMA and Python regexes; write '[\\]]' for ']'")
        return super().char_class()


def has_anchor(node) -> bool:
    if isinstance(node, Anchor):
        return True
    if isinstance(node, Seq):
        return any(has_anchor(n) for n in node.items)
    if isinstance(node, Alt):
        return any(has_anchor(n) for n in node.options)
    return isinstance(node, Repeat) and has_anchor(node.item)


@lru_cache(maxsize=1024)
def pattern_tree(pattern: str):
    """The decoded strings an ECMA `pattern` matches somewhere in (JSON Schema's `pattern`), as a tree."""
    parser = EcmaParser(pattern)
    top = parser.parse()
    options = []
    for option in top.options if isinstance(top, Alt) else (top,):
        items = list(option.items) if isinstance(option, Seq) else [option]
        start = bool(items) and items[0] == Anchor("^")
        items = items[1:] if start else items
        end = bool(items) and items[-1] == Anchor("$")
        items = items[:-1] if end else items
        if any(has_anchor(n) for n in items):
            raise parser.error("an anchor ('^', '$') is supported only at the start or end of the pattern or of "
                               "a top-level alternative")
        anything = rep(any_char(), 0, None)
        options.append(seq(EPSILON if start else anything, *items, EPSILON if end else anything))
    return alt(*options)


def check_pattern(pattern, path: str):
    """pattern_tree with errors naming the JSON path."""
    if not isinstance(pattern, str):
        raise GrammarError(f"{path}: a pattern must be a string")
    try:
        return pattern_tree(pattern)
    except GrammarError as e:
        raise GrammarError(f"{path}: {e.message}", hint=e.diagnostics[0].hint if e.diagnostics else None) from None
