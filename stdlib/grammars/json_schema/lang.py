"""Languages as syntax trees: regex.py's `Chars` / `Seq` / `Alt` / `Repeat`, plus two automaton leaves —
`Machine` (a built `ByteDFA`, the result of an intersection or a difference) and `Graph` (states joined by
edges labelled with languages, for counted arrays and objects). Intersection and difference go through
DFAs (automaton.product); everything else stays a tree until the end.

    >>> digits = rep(Chars(((48, 57),)), 1, None)
    >>> two = intersect(digits, seq(any_char(), any_char()))
    >>> [matches(two, s) for s in ("12", "1", "ab")]
    [True, False, False]
"""
from __future__ import annotations

from dataclasses import dataclass

from decspec.stdlib.grammars.automaton import NFA, ByteDFA, byte_runs, emit_dfa, product
from decspec.stdlib.grammars.regex import MAX_CODEPOINT, Alt, Chars, Repeat, Seq, compile_tree, emit, nfa_size, normalize

EMPTY = Chars(())  # no string
EPSILON = Seq(())  # the empty string only


@dataclass(frozen=True, eq=False)
class Machine:
    """A language held as its minimal DFA."""

    dfa: ByteDFA

    def emit_into(self, nfa: NFA, start: int) -> int:
        return emit_dfa(nfa, self.dfa, start)

    def nfa_size(self, sizes: dict[int, int]) -> int:
        return self.dfa.num_states + 1 + len(byte_runs(self.dfa)[0])  # as emit_dfa copies it: states, an end, moves


@dataclass(frozen=True, eq=False)
class Graph:
    """States 0..num_states-1 joined by `edges` (from, language, to): the strings that spell a path from
    `start` to one of `finals`."""

    num_states: int
    start: int
    finals: tuple[int, ...]
    edges: tuple[tuple[int, object, int], ...]

    def emit_into(self, nfa: NFA, start: int) -> int:
        states = [nfa.state() for _ in range(self.num_states)]
        end = nfa.state()
        nfa.eps[start].append(states[self.start])
        for a, node, b in self.edges:
            nfa.eps[emit(nfa, node, states[a])].append(states[b])
        for f in self.finals:
            nfa.eps[states[f]].append(end)
        return end

    def nfa_size(self, sizes: dict[int, int]) -> int:
        return self.num_states + 1 + sum(nfa_size(node, sizes) for _, node, _ in self.edges)


@dataclass(frozen=True, eq=False)
class RuleRef:
    """A recursive schema's language, by name: a Lark rule (recursive.py). No automaton can hold it, so an
    intersection, a complement or a DFA of a tree that contains one is refused."""

    name: str
    path: str

    def emit_into(self, nfa: NFA, start: int) -> int:
        from decspec.stdlib.grammars.errors import GrammarError
        raise GrammarError(f"{self.path}: the schema is recursive (a value contains a value of the same schema), "
                           "and a keyword here needs its language as an automaton (an intersection, a complement, "
                           "an enum filter): not supported for a recursive schema")

    def nfa_size(self, sizes: dict[int, int]) -> int:
        return 0  # never emitted (emit_into refuses)


def has_rule(node, seen: set[int] | None = None) -> bool:
    """Whether a tree refers to a recursive rule. A subtree shared by several parents is looked at once
    (`seen`: the ids looked at), so the walk is linear in the tree, not in its expansion."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return False  # looked at already, and found rule-free: a rule would have ended the walk
    seen.add(id(node))
    if isinstance(node, RuleRef):
        return True
    if isinstance(node, Seq):
        return any(has_rule(n, seen) for n in node.items)
    if isinstance(node, Alt):
        return any(has_rule(n, seen) for n in node.options)
    if isinstance(node, Repeat):
        return has_rule(node.item, seen)
    if isinstance(node, Graph):
        return any(has_rule(n, seen) for _, n, _ in node.edges)
    return False


def is_empty_tree(node) -> bool:
    """A structural check (no automaton): True only when `node` certainly accepts nothing."""
    if isinstance(node, Chars):
        return not node.ranges
    if isinstance(node, Seq):
        return any(is_empty_tree(n) for n in node.items)
    if isinstance(node, Alt):
        return all(is_empty_tree(n) for n in node.options)
    if isinstance(node, Repeat):
        return node.min > 0 and is_empty_tree(node.item)
    if isinstance(node, Graph):
        return not node.finals
    return False


def chars(*ranges: tuple[int, int]) -> Chars:
    return Chars(normalize(ranges))


def any_char() -> Chars:
    return Chars(normalize([(0, MAX_CODEPOINT)]))


def text(s: str):
    """The literal string `s`."""
    return seq(*(Chars(((ord(c), ord(c)),)) for c in s))


def seq(*items):
    out = []
    for item in items:
        if is_empty_tree(item):
            return EMPTY
        out.extend(item.items if isinstance(item, Seq) else [item])
    return out[0] if len(out) == 1 else Seq(tuple(out))


def alt(*options):
    out = []
    for option in options:
        for o in (option.options if isinstance(option, Alt) else [option]):
            if not is_empty_tree(o):
                out.append(o)
    if not out:
        return EMPTY
    return out[0] if len(out) == 1 else Alt(tuple(out))


def rep(node, lo: int, hi: int | None):
    if hi == 0 or (is_empty_tree(node) and lo == 0):
        return EPSILON
    if is_empty_tree(node):
        return EMPTY
    return node if (lo, hi) == (1, 1) else Repeat(node, lo, hi)


def opt(node):
    return rep(node, 0, 1)


def to_dfa(node) -> ByteDFA | None:
    """The minimal DFA of `node` (None: empty)."""
    if isinstance(node, Machine):
        return node.dfa
    if is_empty_tree(node):
        return None
    return compile_tree(node)


def as_machine(node):
    """`node` as a `Machine` (EMPTY when it accepts nothing): built once, then copied wherever it is used."""
    dfa = to_dfa(node)
    return EMPTY if dfa is None else node if isinstance(node, Machine) else Machine(dfa)


def intersect(*nodes):
    """The strings every one of `nodes` accepts."""
    nodes = [n for n in nodes if n is not None]
    if any(is_empty_tree(n) for n in nodes):
        return EMPTY
    if len(nodes) == 1:
        return nodes[0]
    dfa = to_dfa(nodes[0])
    for node in nodes[1:]:
        other = to_dfa(node)
        if dfa is None or other is None:
            return EMPTY
        dfa = product(dfa, other, keep_b=True)
    return EMPTY if dfa is None else Machine(dfa)


def minus(a, b):
    """The strings `a` accepts and `b` does not."""
    if is_empty_tree(a) or is_empty_tree(b):
        return a
    da, db = to_dfa(a), to_dfa(b)
    if da is None:
        return EMPTY
    if db is None:
        return a
    out = product(da, db, keep_b=False)
    return EMPTY if out is None else Machine(out)


def is_empty(node) -> bool:
    return is_empty_tree(node) or to_dfa(node) is None


def matches(node, s: str) -> bool:
    dfa = to_dfa(node)
    return dfa is not None and dfa.matches(s)


def to_regex(node) -> str | None:
    """`node` in the regex dialect of regex.py, or None when it holds an automaton leaf."""
    if isinstance(node, Chars):
        if not node.ranges:
            return "[^\\x00-\\U0010FFFF]"
        if len(node.ranges) == 1 and node.ranges[0][0] == node.ranges[0][1]:
            return char_regex(node.ranges[0][0], False)
        body = "".join(char_regex(lo, True) if lo == hi else f"{char_regex(lo, True)}-{char_regex(hi, True)}"
                       for lo, hi in node.ranges)
        return f"[{body}]"
    if isinstance(node, Seq):
        parts = [to_regex(n) for n in node.items]
        if None in parts:
            return None
        return "".join(f"(?:{p})" if isinstance(n, Alt) else p for n, p in zip(node.items, parts))
    if isinstance(node, Alt):
        parts = [to_regex(n) for n in node.options]
        return None if None in parts else "(?:" + "|".join(parts) + ")"
    if isinstance(node, Repeat):
        inner = to_regex(node.item)
        if inner is None:
            return None
        if not isinstance(node.item, Chars):
            inner = f"(?:{inner})"
        bounds = {(0, None): "*", (1, None): "+", (0, 1): "?"}.get((node.min, node.max))
        if bounds is None:
            bounds = f"{{{node.min}}}" if node.min == node.max else f"{{{node.min},{'' if node.max is None else node.max}}}"
        return inner + bounds
    return None


def char_regex(code: int, in_class: bool) -> str:
    c = chr(code)
    if c.isascii() and c.isalnum() or c in " _" or (not c.isascii() and c.isprintable()):
        return c
    if c.isascii() and c.isprintable() and (in_class and c not in "]\\^-" or not in_class and c not in ".^$*+?{}[]\\|()"):
        return c
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
