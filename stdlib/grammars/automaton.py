"""Byte automata: a Thompson NFA over byte ranges, subset construction to a DFA, dead-state removal and
Hopcroft minimization (their loops: kernels.py), and `ByteDFA`, the result every grammar compiles to.

    >>> nfa = NFA(); start = nfa.state(); nfa.accept = nfa.state()
    >>> nfa.chars(start, ((0xE9, 0xE9),), nfa.accept)   # 'é' is the two bytes C3 A9
    >>> dfa = determinize(nfa, start)
    >>> dfa.matches("é"), dfa.num_states
    (True, 3)

Unicode character sets become UTF-8 byte-range sequences (`utf8_sequences`), so a DFA state never sits
"inside" a character from the regex's point of view but may sit inside one from the tokenizer's: a token
can end halfway through a multi-byte character, and the index follows it byte by byte.

Every construction is bounded as it goes, by the `MAX_*` limits below: the NFA counts its states and moves,
the subset construction its work and states, the product its pairs (minimization is O(m log n) over
what they let through). Past one, `TooLarge` says what the automaton needs, the limit and the fix.
"""
from __future__ import annotations

from collections import deque
from itertools import chain
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from decspec.stdlib.grammars import kernels
from decspec.stdlib.grammars.errors import TooLarge

# Size limits, each checked as the automaton is built (figures: docs/architecture.md, resource bounds).
MAX_NFA_SIZE = 2_000_000  # Thompson states and byte moves: about 320 and 140 bytes each in Python lists
MAX_DFA_STATES = 200_000  # subset-construction states: the [S, 256] int32 table alone is 1 KiB each
MAX_DFA_CELLS = 20_000_000  # subset-construction states x byte classes: its table and Hopcroft's arrays (~21 bytes a cell) grow with it
MAX_SUBSET_WORK = 10_000_000  # NFA states the subset construction visits, merges and holds, moves it follows
SIZE_HINT = ("lower the repeat bounds ({m,n}, minLength/maxLength, minItems/maxItems): each repetition is a copy "
             "of what it repeats, and a repetition inside another multiplies them")


def too_large(needs: str, hint: str = SIZE_HINT) -> TooLarge:
    """The error of an automaton past one of the size limits above: `needs` says what and the limit."""
    return TooLarge(f"the grammar is too large: its automaton needs {needs}", hint=hint)


def dfa_limit(num_classes: int) -> tuple[int, TooLarge]:
    """The most DFA states a construction over `num_classes` byte classes may build, and the error past it."""
    if MAX_DFA_STATES * num_classes <= MAX_DFA_CELLS:
        return MAX_DFA_STATES, too_large(f"more than {MAX_DFA_STATES:,} DFA states (the limit)")
    limit = MAX_DFA_CELLS // num_classes
    return limit, too_large(f"more than {limit:,} DFA states over {num_classes} byte classes (the limit: "
                            f"{MAX_DFA_CELLS:,} states x classes)")


def utf8_sequences(lo: int, hi: int) -> list[list[tuple[int, int]]]:
    """The code points lo..hi (no surrogates) as a list of byte-range sequences, each one UTF-8 length.

    >>> utf8_sequences(0x61, 0x7A)
    [[(97, 122)]]
    >>> utf8_sequences(0x80, 0x7FF)
    [[(194, 223), (128, 191)]]
    """
    out, stack = [], [(lo, hi)]
    while stack:
        lo, hi = stack.pop()
        split = next((m for m in (0x7F, 0x7FF, 0xFFFF) if lo <= m < hi), None)
        if split is not None:  # different encoded lengths
            stack += [(split + 1, hi), (lo, split)]
            continue
        if hi <= 0x7F:
            out.append([(lo, hi)])
            continue
        for k in (1, 2, 3):  # split until every continuation byte spans its full or a shared prefix
            m = (1 << (6 * k)) - 1
            if lo & ~m != hi & ~m:
                if lo & m:
                    stack += [((lo | m) + 1, hi), (lo, lo | m)]
                    break
                if hi & m != m:
                    stack += [(hi & ~m, hi), (lo, (hi & ~m) - 1)]
                    break
        else:
            a, b = chr(lo).encode(), chr(hi).encode()
            out.append(list(zip(a, b)))
    return out


@lru_cache(maxsize=4096)
def utf8_trie(ranges: tuple[tuple[int, int], ...]) -> tuple[int, tuple[tuple[int, int, int, int], ...]]:
    """The UTF-8 encodings of the code points in `ranges` as a byte trie: (number of inner nodes, edges
    (from, lo byte, hi byte, to)). Node 0 is the start, -1 the end, inner nodes 1..n; shared byte prefixes
    share a node.

    >>> utf8_trie(((0x61, 0x62), (0xE9, 0xE9)))   # 'a'-'b' in one byte, 'é' as C3 A9
    (1, ((0, 97, 98, -1), (0, 195, 195, 1), (1, 169, 169, -1)))
    """
    inner: dict[tuple, int] = {}
    edges = []
    for lo, hi in ranges:
        for seq in utf8_sequences(lo, hi):
            at = 0
            for depth, (a, b) in enumerate(seq[:-1]):
                key = tuple(seq[:depth + 1])
                if key not in inner:
                    inner[key] = len(inner) + 1
                    edges.append((at, a, b, inner[key]))
                at = inner[key]
            a, b = seq[-1]
            edges.append((at, a, b, -1))
    return len(inner), tuple(edges)


class NFA:
    """States with epsilon moves and byte-range moves; one start (given to `determinize`) and one `accept`.
    `size` counts its states and byte moves; it refuses to grow past `limit` of them (`TooLarge`, a
    GrammarError, before the state or moves past it are added)."""

    def __init__(self, limit: int | None = None):
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int, int]]] = []  # (lo byte, hi byte, target)
        self.accept = -1
        self.limit = MAX_NFA_SIZE if limit is None else limit
        self.size = 0

    def grow(self, n: int) -> None:
        if self.size + n > self.limit:
            raise too_large(f"more than {self.limit:,} NFA states and moves (the limit)")
        self.size += n

    def state(self) -> int:
        self.grow(1)
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def chars(self, start: int, ranges, end: int) -> None:
        """Moves from `start` to `end` over the UTF-8 encoding of any code point in `ranges`."""
        count, edges = utf8_trie(tuple(ranges))
        node = [start] + [self.state() for _ in range(count)]
        self.grow(len(edges))
        for a, lo, hi, b in edges:
            self.edges[node[a]].append((lo, hi, end if b < 0 else node[b]))


@dataclass(frozen=True, eq=False)
class ByteDFA:
    """A trimmed, minimal DFA over bytes: every state can still reach an accepting state."""

    transitions: np.ndarray  # int32 [S, 256]; -1: no transition
    accepting: np.ndarray  # bool [S]
    start: int = 0

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    def walk(self, data: bytes, state: int | None = None) -> int:
        """The state after reading `data` from `state` (default: the start), or -1 once a byte has no move."""
        state = self.start if state is None else state
        for byte in data:
            if state < 0:
                break
            state = int(self.transitions[state, byte])
        return state

    def matches(self, text: str | bytes) -> bool:
        """Full match: the whole of `text` (UTF-8 when a str) is in the language."""
        state = self.walk(text.encode() if isinstance(text, str) else text)
        return state >= 0 and bool(self.accepting[state])

    def shortest_example(self) -> bytes:
        """One shortest accepted byte string (the smallest byte at each step)."""
        parent: dict[int, tuple[int, int]] = {self.start: (-1, -1)}
        queue = deque([self.start])
        while queue:
            s = queue.popleft()
            if self.accepting[s]:
                out = []
                while parent[s][0] >= 0:
                    s, byte = parent[s]
                    out.append(byte)
                return bytes(reversed(out))
            for byte in np.flatnonzero(self.transitions[s] >= 0):
                t = int(self.transitions[s, byte])
                if t not in parent:
                    parent[t] = (s, int(byte))
                    queue.append(t)
        return b""


def random_examples(dfa: ByteDFA, rng, count: int, limit: int = 200, stop: float = 0.2) -> list[bytes]:
    """`count` random accepted byte strings: random walks (`rng`: a `random.Random`) that stop at an accepting
    state with probability `stop`, and past `limit` bytes take a shortest way to acceptance."""
    moves = dfa.transitions
    src, byte = np.nonzero(moves >= 0)
    dst = moves[src, byte]
    distance = np.where(dfa.accepting, 0, -1)  # bytes from acceptance: breadth-first, backwards
    frontier, d = np.flatnonzero(dfa.accepting), 0
    while len(frontier):
        d += 1
        found = np.unique(src[np.isin(dst, frontier)])
        frontier = found[distance[found] < 0]
        distance[frontier] = d
    out = []
    for _ in range(count):
        state, text = dfa.start, bytearray()
        while True:
            choices = np.flatnonzero(moves[state] >= 0).tolist()
            if dfa.accepting[state] and (rng.random() < stop or len(text) >= limit or not choices):
                break
            if len(text) >= limit:
                choices = [b for b in choices if distance[moves[state, b]] < distance[state]]
            chosen = rng.choice(choices)
            text.append(chosen)
            state = int(moves[state, chosen])
        out.append(bytes(text))
    return out


def determinize(nfa: NFA, start: int) -> ByteDFA | None:
    """Subset construction over byte classes, then trim and minimize; None when the language is empty."""
    cuts = sorted({0, 256} | {x for edges in nfa.edges for lo, hi, _ in edges for x in (lo, hi + 1)})
    class_of = np.zeros(256, dtype=np.int64)
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        class_of[a:b] = k
    num_classes = len(cuts) - 1
    eps_ptr = np.cumsum([0] + [len(e) for e in nfa.eps], dtype=np.int64)
    eps_dst = np.fromiter(chain.from_iterable(nfa.eps), dtype=np.int64, count=int(eps_ptr[-1]))
    edge_ptr = np.cumsum([0] + [len(e) for e in nfa.edges], dtype=np.int64)
    moves = np.fromiter(chain.from_iterable(chain.from_iterable(nfa.edges)), dtype=np.int64,
                        count=3 * int(edge_ptr[-1])).reshape(-1, 3)  # (lo byte, hi byte, target)
    important = (np.diff(edge_ptr) > 0)
    if nfa.accept >= 0:
        important[nfa.accept] = True
    max_states, past_limit = dfa_limit(num_classes)
    status, table, accepting, _ = kernels.subset_construction(
        eps_ptr, eps_dst, edge_ptr, class_of[moves[:, 0]], class_of[moves[:, 1]], np.ascontiguousarray(moves[:, 2]),
        important, nfa.accept, start, num_classes, max_states, MAX_SUBSET_WORK)
    if status == kernels.TOO_MANY_STATES:
        raise past_limit
    if status == kernels.TOO_MUCH_WORK:
        raise too_large(f"its subset construction to visit more than {MAX_SUBSET_WORK:,} NFA states and moves (the "
                        "limit)", hint="parts that may match the empty string, repeated or in a row (x?x?x?..., "
                        "(x{0,m}){0,n}), and counts after a loop that overlaps them (.*a.{16}) make the construction "
                        "large: write such a repetition once (a{0,10000} for (?:a{0,10}){0,1000}), or " + SIZE_HINT)
    trimmed = trim(table, accepting, 0)
    if trimmed is None:
        return None
    table, accepting = renumber(*minimize(*trimmed))
    return ByteDFA(table.astype(np.int32)[:, class_of], accepting, 0)  # indexed in int32: no int64 [S, 256] copy


def reachable(src: np.ndarray, dst: np.ndarray, n: int, seeds: np.ndarray) -> np.ndarray:
    """bool [n]: the nodes reachable from `seeds` along the edges src -> dst."""
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    bounds = np.searchsorted(src, np.arange(n + 1))
    seen = np.zeros(n, dtype=bool)
    seen[seeds] = True
    stack = list(np.flatnonzero(seen))
    while stack:
        s = stack.pop()
        for t in dst[bounds[s]:bounds[s + 1]]:
            if not seen[t]:
                seen[t] = True
                stack.append(t)
    return seen


def trim(table: np.ndarray, accepting: np.ndarray, start: int):
    """Drop the states that cannot reach an accepting state (moves into them become -1); None if `start` is one."""
    live = kernels.live_states(np.ascontiguousarray(table, dtype=np.int64), accepting)
    if not live[start]:
        return None
    new_id = np.cumsum(live) - 1
    kept = table[live]
    kept = np.where((kept >= 0) & live[np.maximum(kept, 0)], new_id[np.maximum(kept, 0)], -1)
    # the start state stays first: subset construction numbered it 0 and the cumsum keeps the order
    return kept, accepting[live]


def minimize(table: np.ndarray, accepting: np.ndarray):
    """Merge the states no input distinguishes (Hopcroft's algorithm, kernels.hopcroft) in a trimmed table.
    Returns the merged table (start state first) and its accepting flags."""
    block = kernels.hopcroft(np.ascontiguousarray(table, dtype=np.int64), accepting)
    block = np.unique(block, return_inverse=True)[1].ravel()  # dense ids
    count = int(block.max()) + 1
    first = np.unique(block, return_index=True)[1]  # the smallest state of each block
    merged = table[first]
    merged = np.where(merged >= 0, block[np.maximum(merged, 0)], -1)
    perm = np.arange(count)  # new id i holds old block perm[i]: the start's block goes first
    perm[[0, block[0]]] = perm[[block[0], 0]]
    inverse = np.argsort(perm)
    merged = merged[perm]
    return np.where(merged >= 0, inverse[np.maximum(merged, 0)], -1), accepting[first][perm]


def renumber(table: np.ndarray, accepting: np.ndarray):
    """Breadth-first numbering from the start (state 0), moves in byte order: a canonical state order."""
    order = kernels.bfs_order(np.ascontiguousarray(table, dtype=np.int64))
    inverse = np.full(table.shape[0], -1, dtype=np.int64)
    inverse[order] = np.arange(len(order))
    out = table[order]
    return np.where(out >= 0, inverse[np.maximum(out, 0)], -1), accepting[order]


def product(a: ByteDFA, b: ByteDFA, keep_b: bool) -> ByteDFA | None:
    """The minimal DFA of `a ∩ b` (keep_b) or `a − b` (not keep_b), by the product construction over reachable
    pairs; None when it is empty.

        >>> from decspec.stdlib.grammars.regex import compile_regex
        >>> both = product(compile_regex("[a-c]+"), compile_regex("b*|c"), keep_b=True)
        >>> [both.matches(s) for s in ("b", "bb", "c", "cc", "a")]
        [True, True, True, False, False]
    """
    nb = b.num_states
    classes = np.unique(np.vstack([a.transitions, b.transitions]), axis=1).shape[1]  # at most the product's
    max_states, past_limit = dfa_limit(classes)
    ids = {(a.start, b.start): 0}
    pairs = [(a.start, b.start)]
    rows = []
    while len(rows) < len(pairs):
        sa, sb = pairs[len(rows)]
        ta = a.transitions[sa].astype(np.int64)
        tb = b.transitions[sb].astype(np.int64) if sb >= 0 else np.full(256, -1, np.int64)
        live = ta >= 0 if not keep_b else (ta >= 0) & (tb >= 0)
        keys = np.where(live, ta * (nb + 1) + tb + 1, -1)
        row = np.full(256, -1, np.int64)
        for key in np.unique(keys[live]).tolist():
            pair = (key // (nb + 1), key % (nb + 1) - 1)
            if pair not in ids:
                if len(pairs) >= max_states:
                    raise past_limit
                ids[pair] = len(pairs)
                pairs.append(pair)
            row[keys == key] = ids[pair]
        rows.append(row)
    table = np.array(rows, dtype=np.int64).reshape(len(rows), 256)
    in_b = np.array([sb >= 0 and bool(b.accepting[sb]) for _, sb in pairs])
    accepting = np.array([bool(a.accepting[sa]) for sa, _ in pairs]) & (in_b if keep_b else ~in_b)
    return finish(table, accepting)


def finish(table: np.ndarray, accepting: np.ndarray) -> ByteDFA | None:
    """A DFA from a full [S, 256] table (start 0): trimmed, minimized over its byte classes (the bytes whose
    columns agree), numbered breadth-first; None when it accepts nothing."""
    trimmed = trim(table, accepting, 0)
    if trimmed is None:
        return None
    table, accepting = trimmed
    columns, class_of = np.unique(table, axis=1, return_inverse=True)
    table, accepting = renumber(*minimize(columns, accepting))
    return ByteDFA(table.astype(np.int32)[:, class_of.ravel()], accepting, 0)


def byte_runs(dfa: ByteDFA) -> tuple[np.ndarray, ...]:
    """The DFA's moves as byte ranges: (state, lo, hi, target), one per run of equal live moves."""
    table = dfa.transitions
    starts = np.ones(table.shape, dtype=bool)  # where a run of equal moves begins, per state
    starts[:, 1:] = table[:, 1:] != table[:, :-1]
    state, lo = np.nonzero(starts)
    hi = np.append(lo[1:], 256)
    hi = np.where(np.append(state[1:] == state[:-1], False), hi, 256) - 1
    target = table[state, lo]
    live = target >= 0
    return state[live], lo[live], hi[live], target[live]


def emit_dfa(nfa: NFA, dfa: ByteDFA, start: int) -> int:
    """Copy `dfa` into `nfa` from state `start` (its byte moves as ranges); return the copy's end state."""
    first = len(nfa.eps)
    for _ in range(dfa.num_states):
        nfa.state()
    end = nfa.state()
    nfa.eps[start].append(first + dfa.start)
    runs = byte_runs(dfa)
    nfa.grow(len(runs[0]))
    for s, a, b, t in zip(*(r.tolist() for r in runs)):
        nfa.edges[first + s].append((a, b, first + t))
    for s in np.flatnonzero(dfa.accepting).tolist():
        nfa.eps[first + s].append(end)
    return end
