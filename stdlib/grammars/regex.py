"""A regex parser for the subset of Python `re` syntax that structured output needs, and `compile_regex`,
which turns a pattern into a minimal `ByteDFA` over UTF-8 bytes (full-match semantics).

    >>> dfa = compile_regex(r"(?:yes|no)[!?]{0,2}")
    >>> dfa.matches("yes!?"), dfa.matches("maybe")
    (True, False)

Supported: literals; escapes `\\d \\w \\s \\D \\W \\S \\n \\t \\r \\f \\v \\a \\0 \\xNN \\uXXXX \\UXXXXXXXX` and any
escaped punctuation; classes `[a-z0-9_]`, `[^"\\\\]` (with the escapes inside); `.` (any char but a newline);
groups `( )`, `(?: )`, `(?P<name> )`; `|`; `* + ?` (lazy forms too: same language); `{m} {m,} {,n} {m,n}`.
`\\d \\w \\s` are ASCII (`[0-9]`, `[A-Za-z0-9_]`, `[ \\t\\n\\r\\f\\v]`), as with `re.ASCII`. Backreferences,
lookaround, anchors and inline flags raise `GrammarError` naming the column.

Sizes are bounded while parsing, before any automaton is built: groups nest at most `MAX_NESTING` deep, a
`{m,n}` bound is at most `MAX_REPEAT`, and a repetition whose automaton would need more than
`automaton.MAX_NFA_SIZE` states and moves (`nfa_size`: a repetition inside a repetition multiplies) is
refused at its column:

    >>> compile_regex("(ab{1000}){1000}")
    Traceback (most recent call last):
    ...
    decspec.stdlib.grammars.errors.GrammarError: error: regex "(ab{1000}){1000}" at column 11: this repetition needs 2,003,001 NFA states and moves (1,000 copies of a part of 2,003), over the limit of 2,000,000
      hint: lower the repeat bounds ({m,n}, minLength/maxLength, minItems/maxItems): each repetition is a copy of what it repeats, and a repetition inside another multiplies them
"""
from __future__ import annotations

from dataclasses import dataclass

from decspec.dsl.diagnostics import excerpt
from decspec.stdlib.grammars.automaton import MAX_NFA_SIZE, NFA, SIZE_HINT, ByteDFA, determinize, too_large, utf8_trie
from decspec.stdlib.grammars.errors import GrammarError

MAX_CODEPOINT = 0x10FFFF
MAX_REPEAT = 10_000  # the largest {m,n} bound: each repetition is a copy in the automaton
MAX_NESTING = 100  # groups inside groups: the parser, and every walk over the tree, recurse once per level

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint, inclusive code point ranges


@dataclass(frozen=True)
class Chars:
    """One character from a set of code point ranges."""

    ranges: Ranges


@dataclass(frozen=True)
class Seq:
    items: tuple


@dataclass(frozen=True)
class Alt:
    options: tuple


@dataclass(frozen=True)
class Repeat:
    item: object
    min: int
    max: int | None  # None: unbounded


def normalize(ranges) -> Ranges:
    """Sort and merge code point ranges; drop the surrogates (they have no UTF-8 encoding)."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        for a, b in ((lo, min(hi, 0xD7FF)), (max(lo, 0xE000), hi)):
            if a > b:
                continue
            if out and a <= out[-1][1] + 1:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
    return tuple((a, b) for a, b in out)


def negate(ranges: Ranges) -> Ranges:
    """Every code point not in `ranges`."""
    out, nxt = [], 0
    for lo, hi in normalize(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODEPOINT:
        out.append((nxt, MAX_CODEPOINT))
    return normalize(out)


DIGIT = normalize([(0x30, 0x39)])
WORD = normalize([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
SPACE = normalize([(0x09, 0x0D), (0x20, 0x20)])
CLASS_ESCAPES = {"d": DIGIT, "D": negate(DIGIT), "w": WORD, "W": negate(WORD), "s": SPACE, "S": negate(SPACE)}
CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "0": "\0"}
ANCHOR_ESCAPES = {"b": "word boundary", "B": "non-word boundary", "A": "anchor", "Z": "anchor", "z": "anchor", "G": "anchor"}
DOT = negate(((0x0A, 0x0A),))


class Parser:
    """Recursive descent over the pattern text: alternation > sequence > quantified atom."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.i = 0
        self.depth = 0  # groups open around self.i
        self.sizes: dict[int, int] = {}  # nfa_size of the nodes built so far, by id

    def error(self, what: str, at: int | None = None, hint: str | None = None) -> GrammarError:
        column = (self.i if at is None else at) + 1
        shown = self.pattern if len(self.pattern) <= 80 else self.pattern[max(0, column - 40):column + 40]
        return GrammarError(f'regex "{excerpt(shown, 80)}" at column {column}: {what}', hint=hint)

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.pattern[j] if j < len(self.pattern) else ""

    def parse(self):
        node = self.alternation()
        if self.i < len(self.pattern):  # only a stray ')' stops the top-level alternation early
            raise self.error("unbalanced ')'; remove it or open a group with '('")
        size = nfa_size(node, self.sizes) + 1  # + the start state
        if size > MAX_NFA_SIZE:  # no single repetition is too large, but all of them together are
            raise GrammarError(f'regex "{excerpt(self.pattern, 80)}" needs {size:,} NFA states and moves, over the '
                               f"limit of {MAX_NFA_SIZE:,}", hint=SIZE_HINT)
        return node

    def alternation(self):
        options = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def sequence(self):
        items = []
        while self.peek() not in ("", "|", ")"):
            atom = self.atom()
            at = self.i
            bounds = self.quantifier()
            if bounds is not None:
                if self.peek() == "?":  # lazy: the same language under full match
                    self.i += 1
                if self.peek() in ("*", "+", "?") or self.braces() is not None:
                    raise self.error("multiple repeat; wrap the repeated part in (?: ) first")
                atom = self.sized(Repeat(atom, *bounds), at)
            items.append(atom)
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def quantifier(self) -> tuple[int, int | None] | None:
        """Consume a quantifier at self.i and return its (min, max), or None when there is none."""
        c = self.peek()
        if c in ("*", "+", "?"):
            self.i += 1
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        braces = self.braces()
        if braces is None:
            return None
        lo, hi, end = braces
        if hi is not None and lo > hi:
            raise self.error(f"min repeat {lo} is greater than max repeat {hi}")
        if max(lo, hi or 0) > MAX_REPEAT:
            raise self.error(f"repeat bound {max(lo, hi or 0)} is over the limit of {MAX_REPEAT}")
        self.i = end
        return lo, hi

    def sized(self, node: Repeat, at: int) -> Repeat:
        """`node` (the repetition whose quantifier starts at `at`), refused when its automaton is too large."""
        size = nfa_size(node, self.sizes)
        if size > MAX_NFA_SIZE:
            part = nfa_size(node.item, self.sizes)
            copies = node.min + 1 if node.max is None else node.max
            raise self.error(f"this repetition needs {size:,} NFA states and moves ({copies:,} copies of a part of "
                             f"{part:,}), over the limit of {MAX_NFA_SIZE:,}", at, hint=SIZE_HINT)
        return node

    def braces(self) -> tuple[int, int | None, int] | None:
        """`{m}`, `{m,}`, `{,n}` or `{m,n}` at self.i as (min, max, end), or None when the `{` is a literal (as in `re`)."""
        if self.peek() != "{":
            return None
        close = self.pattern.find("}", self.i)
        lo_text, comma, hi_text = self.pattern[self.i + 1:close].partition(",")
        if close < 0 or not (lo_text.isdigit() or (comma and not lo_text)) or not (hi_text.isdigit() or not hi_text):
            return None
        lo = int(lo_text) if lo_text else 0
        hi = (int(hi_text) if hi_text else None) if comma else lo
        return lo, hi, close + 1

    def atom(self):
        c = self.peek()
        if c == "(":
            return self.group()
        if c == "[":
            return Chars(self.char_class())
        if c == ".":
            self.i += 1
            return Chars(DOT)
        if c in ("^", "$"):
            raise self.error(f"anchor '{c}' is not supported: the whole string always has to match; drop it")
        if c in ("*", "+", "?") or self.braces() is not None:
            raise self.error(f"nothing to repeat before '{c}'")
        if c == "\\":
            return Chars(self.escape(in_class=False))
        self.i += 1
        return Chars(normalize([(ord(c), ord(c))]))

    def group(self):
        start = self.i
        self.i += 1
        if self.depth >= MAX_NESTING:
            raise self.error(f"groups nest more than {MAX_NESTING} deep (the limit); flatten the pattern", start)
        if self.peek() == "?":
            rest = self.pattern[self.i + 1:self.i + 3]
            if rest.startswith(":"):
                self.i += 2
            elif rest.startswith("P<"):
                end = self.pattern.find(">", self.i)
                name = self.pattern[self.i + 3:end] if end > 0 else ""
                if not name.isidentifier():
                    raise self.error("bad group name; write (?P<name>...)", start)
                self.i = end + 1
            elif rest[:1] in ("=", "!") or rest in ("<=", "<!"):
                raise self.error("lookaround assertions are not supported", start)
            elif rest.startswith("P="):
                raise self.error("backreferences are not supported", start)
            else:
                raise self.error("inline flags and other (? ) extensions are not supported", start)
        self.depth += 1
        node = self.alternation()
        self.depth -= 1
        if self.peek() != ")":
            raise self.error("unclosed group; close it with ')'", start)
        self.i += 1
        return node

    def escape(self, in_class: bool) -> Ranges:
        """The escape at self.i (a backslash) as code point ranges."""
        start = self.i
        c = self.peek(1)
        self.i += 2
        if c == "":
            raise self.error("the pattern ends with a lone backslash; write '\\\\' for a backslash", start)
        if c in CLASS_ESCAPES:
            return CLASS_ESCAPES[c]
        if c in CHAR_ESCAPES:
            return normalize([(ord(CHAR_ESCAPES[c]),) * 2])
        if c == "b" and in_class:
            return ((8, 8),)
        if c in ANCHOR_ESCAPES:
            raise self.error(f"{ANCHOR_ESCAPES[c]} '\\{c}' is not supported: the whole string always has to match", start)
        if c in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.pattern[self.i:self.i + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"'\\{c}' needs exactly {width} hex digits", start)
            self.i += width
            code = int(digits, 16)
            if code > MAX_CODEPOINT:
                raise self.error(f"code point {digits} is out of the Unicode range", start)
            return normalize([(code, code)])
        if c.isdigit():
            raise self.error("backreferences are not supported", start)
        if c.isascii() and c.isalnum():
            raise self.error(f"bad escape '\\{c}'", start)
        return normalize([(ord(c), ord(c))])

    def class_char(self) -> tuple[Ranges, bool]:
        """One member of a character class: (ranges, is_single_char)."""
        if self.peek() == "\\":
            escaped = self.peek(1)
            ranges = self.escape(in_class=True)
            return ranges, escaped not in CLASS_ESCAPES
        c = self.peek()
        self.i += 1
        return normalize([(ord(c), ord(c))]), True

    def char_class(self) -> Ranges:
        start = self.i
        self.i += 1
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        members: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.peek()
            if c == "":
                raise self.error("unterminated character set; close it with ']'", start)
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            item_at = self.i
            lo, single = self.class_char()
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.i += 1
                hi, hi_single = self.class_char()
                if not (single and hi_single) or not lo or not hi:
                    raise self.error("bad character range: both ends must be single characters", item_at)
                a, b = lo[0][0], hi[0][0]
                if a > b:
                    raise self.error(f"bad character range {chr(a)}-{chr(b)}: the start is after the end", item_at)
                members.append((a, b))
            else:
                members.extend(lo)
        ranges = normalize(members)
        return negate(ranges) if negated else ranges


def parse_regex(pattern: str):
    """The pattern's syntax tree: `Chars`, `Seq`, `Alt` and `Repeat` nodes."""
    return Parser(pattern).parse()


def nfa_size(node, sizes: dict[int, int] | None = None) -> int:
    """How many NFA states and byte moves `emit` adds for `node` (`NFA.size`), counted without building
    them. `sizes` holds the counts of nodes counted before, by id (the nodes must still be alive); a node of
    another kind counts itself through its `nfa_size(sizes)`.

    >>> nfa_size(parse_regex("(ab|c){3}"))   # 3 x 9 (an end; per option an entry, a state and a move a character), an end
    28
    """
    sizes = {} if sizes is None else sizes
    key = id(node)
    if key not in sizes:
        if isinstance(node, Chars):
            inner, moves = utf8_trie(node.ranges)
            count = 1 + inner + len(moves)
        elif isinstance(node, Seq):
            count = sum(nfa_size(item, sizes) for item in node.items)
        elif isinstance(node, Alt):
            count = 1 + sum(1 + nfa_size(option, sizes) for option in node.options)
        elif isinstance(node, Repeat):
            item = nfa_size(node.item, sizes)
            count = node.min * item + (2 + item if node.max is None else 1 + (node.max - node.min) * item)
        else:
            count = node.nfa_size(sizes)
        sizes[key] = count
    return sizes[key]


def emit(nfa: NFA, node, start: int) -> int:
    """Thompson construction: add `node` to `nfa` from state `start`; return its end state. A node of another
    kind (json_schema's automaton leaves) adds itself through its `emit_into(nfa, start)`."""
    if isinstance(node, Chars):
        end = nfa.state()
        nfa.chars(start, node.ranges, end)
        return end
    if isinstance(node, Seq):
        for item in node.items:
            start = emit(nfa, item, start)
        return start
    if isinstance(node, Alt):
        end = nfa.state()
        for option in node.options:
            entry = nfa.state()
            nfa.eps[start].append(entry)
            nfa.eps[emit(nfa, option, entry)].append(end)
        return end
    if not isinstance(node, Repeat):
        return node.emit_into(nfa, start)
    for _ in range(node.min):
        start = emit(nfa, node.item, start)
    if node.max is None:  # x*: a loop head that may exit at once or after any number of rounds
        head, end = nfa.state(), nfa.state()
        nfa.eps[start].append(head)
        nfa.eps[emit(nfa, node.item, head)].append(head)
        nfa.eps[head].append(end)
        return end
    end = nfa.state()  # x{0,k} as (x(x(x)?)?)?: nested, so the optional copies stay unambiguous
    for _ in range(node.max - node.min):
        nfa.eps[start].append(end)
        start = emit(nfa, node.item, start)
    nfa.eps[start].append(end)
    return end


def fits(node) -> None:
    """Refuse a tree whose NFA would pass `MAX_NFA_SIZE` (`TooLarge`), counted before anything is built."""
    size = nfa_size(node) + 1  # + the start state
    if size > MAX_NFA_SIZE:
        raise too_large(f"{size:,} NFA states and moves, over the limit of {MAX_NFA_SIZE:,}")


def compile_tree(node) -> ByteDFA | None:
    """The minimal DFA of a syntax tree (as `parse_regex` gives, or built by hand); None when it accepts nothing.
    A tree too large to build (`fits`) is refused first."""
    fits(node)
    nfa = NFA()
    start = nfa.state()
    nfa.accept = emit(nfa, node, start)
    return determinize(nfa, start)


def compile_regex(pattern: str) -> ByteDFA:
    """The minimal DFA over UTF-8 bytes that accepts exactly the strings `re.fullmatch(pattern, s, re.ASCII)` accepts."""
    dfa = compile_tree(parse_regex(pattern))
    if dfa is None:
        raise GrammarError(f'regex "{excerpt(pattern, 80)}" accepts nothing: no string matches it')
    return dfa
