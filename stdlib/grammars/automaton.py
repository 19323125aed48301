"""Byte automata: a Thompson NFA over byte ranges, subset construction to a DFA, dead-state removal and
Moore minimization, and `ByteDFA`, the result every grammar compiles to.

    >>> nfa = NFA(); start = nfa.state(); nfa.accept = nfa.state()
    >>> nfa.chars(start, ((0xE9, 0xE9),), nfa.accept)   # 'é' is the two bytes C3 A9
    >>> dfa = determinize(nfa, start)
    >>> dfa.matches("é"), dfa.num_states
    (True, 3)

Unicode character sets become UTF-8 byte-range sequences (`utf8_sequences`), so a DFA state never sits
"inside" a character from the regex's point of view but may sit inside one from the tokenizer's: a token
can end halfway through a multi-byte character, and the index follows it byte by byte.

Every construction is bounded as it goes, by the `MAX_*` limits below: the NFA counts its states and moves,
the subset construction its work and states, the product its pairs, minimization its cells before Hopcroft
runs. Past one, `TooLarge` says what the automaton needs, the limit and the fix.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from decspec.stdlib.grammars.errors import TooLarge

# Size limits, each checked as the automaton is built (figures: docs/architecture.md, resource bounds).
MAX_NFA_SIZE = 2_000_000  # Thompson states and byte moves: about 320 and 140 bytes each in Python lists
MAX_DFA_STATES = 200_000  # subset-construction states: the [S, 256] int32 table alone is 1 KiB each
MAX_DFA_CELLS = 20_000_000  # subset-construction states x byte classes: its table and Moore's rounds grow with it
MAX_HOPCROFT_CELLS = 12_000_000  # the same for Hopcroft's refinement (long counts): up to ~150 bytes, ~4 us a cell
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
    edges = [[(int(class_of[lo]), int(class_of[hi]), t) for lo, hi, t in es] for es in nfa.edges]
    spans = [sum(chi - clo + 1 for clo, chi, _ in es) for es in edges]  # per NFA state: its (class, target) moves
    important = [bool(es) or s == nfa.accept for s, es in enumerate(nfa.edges)]

    reach: dict[int, frozenset[int]] = {}  # per NFA state: the important states its epsilon moves reach
    work = 0  # NFA states visited, merged and held, and moves followed, so far: the construction's time and memory

    def spend(n: int) -> None:
        nonlocal work
        work += n
        if work > MAX_SUBSET_WORK:
            raise too_large(f"its subset construction to visit more than {MAX_SUBSET_WORK:,} NFA states and moves (the "
                            "limit)", hint="parts that may match the empty string, repeated or in a row (x?x?x?..., "
                            "(x{0,m}){0,n}), and counts after a loop that overlaps them (.*a.{16}) make the construction "
                            "large: write such a repetition once (a{0,10000} for (?:a{0,10}){0,1000}), or " + SIZE_HINT)

    def single(state: int) -> frozenset[int]:
        if state not in reach:
            seen, stack = {state}, [state]
            while stack:
                for t in nfa.eps[stack.pop()]:
                    if t not in seen:
                        seen.add(t)
                        stack.append(t)
            spend(len(seen))
            reach[state] = frozenset(s for s in seen if important[s])
        return reach[state]

    def closure(states) -> frozenset[int]:
        if len(states) == 1:
            return single(states[0])
        parts = [single(s) for s in states]
        spend(sum(map(len, parts)))
        return frozenset().union(*parts)

    ids: dict[frozenset[int], int] = {}
    subsets: list[frozenset[int]] = []
    max_states, past_limit = dfa_limit(num_classes)

    def intern(key: frozenset[int]) -> int:
        if key not in ids:
            if len(subsets) >= max_states:
                raise past_limit
            ids[key] = len(subsets)
            subsets.append(key)
        return ids[key]

    intern(closure([start]))
    rows = []
    while len(rows) < len(subsets):
        moves: dict[int, list[int]] = {}
        spend(sum(spans[s] for s in subsets[len(rows)]))  # before following them
        for s in subsets[len(rows)]:
            for clo, chi, t in edges[s]:
                for c in range(clo, chi + 1):
                    moves.setdefault(c, []).append(t)
        row = [-1] * num_classes
        seen: dict[tuple[int, ...], int] = {}
        for c, targets in moves.items():
            key = tuple(sorted(set(targets)))
            if key not in seen:
                subset = closure(key)
                seen[key] = intern(subset) if subset else -1
            row[c] = seen[key]
        rows.append(row)
    table = np.array(rows, dtype=np.int64).reshape(len(rows), num_classes)
    accepting = np.array([nfa.accept in s for s in subsets], dtype=bool)
    trimmed = trim(table, accepting, 0)
    if trimmed is None:
        return None
    table, accepting = minimize(*trimmed)
    table, accepting = renumber(table, accepting)
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
    n = table.shape[0]
    src = np.repeat(np.arange(n), table.shape[1])
    dst = table.ravel()
    keep = dst >= 0
    live = reachable(dst[keep], src[keep], n, np.flatnonzero(accepting))  # backwards from the accepting states
    if not live[start]:
        return None
    new_id = np.cumsum(live) - 1
    kept = table[live]
    kept = np.where((kept >= 0) & live[np.maximum(kept, 0)], new_id[np.maximum(kept, 0)], -1)
    # the start state stays first: subset construction numbered it 0 and the cumsum keeps the order
    return kept, accepting[live]


MOORE_ROUNDS = 256  # then Hopcroft: a counting automaton (`.{0,1000}`) needs as many Moore rounds as it counts; a vectorized round costs about a hundredth of what Hopcroft spends per state and class in Python (the `large` benchmark schema: 60 rounds, 175 ms, against 783 ms after 40 rounds and Hopcroft)


def minimize(table: np.ndarray, accepting: np.ndarray):
    """Merge the states no input distinguishes. Moore's refinement (vectorized rounds: each numbers the
    distinct rows of (own block, block of each move's target), compared by a 64-bit hash) for up to
    MOORE_ROUNDS rounds, then Hopcroft's algorithm from that partition when it has not settled. The final
    partition is checked exactly; a hash collision (never seen) redoes it exactly.

    Returns the merged table (start state first) and its accepting flags.
    """
    multipliers = np.random.default_rng(0).integers(1, 2**63, size=table.shape[1] + 1, dtype=np.uint64) | np.uint64(1)

    moves, safe = table >= 0, np.maximum(table, 0)  # the same every round

    def signature(block):
        return np.column_stack([block, np.where(moves, block[safe], -1)])

    def refine(block, exact):
        if exact:
            return np.unique(signature(block), axis=0, return_inverse=True)[1].ravel()
        after = block[safe] + 1  # [n, k] the block after each move, +1 (0: no move)
        after[~moves] = 0
        hashed = after.view(np.uint64) @ multipliers[1:] + (block + 1).view(np.uint64) * multipliers[0]  # wraps mod 2**64
        return np.unique(hashed, return_inverse=True)[1].ravel()

    for exact in (False, True):
        block = accepting.astype(np.int64)
        count = len(np.unique(block))
        for _ in range(MOORE_ROUNDS):
            block = refine(block, exact)
            new_count = int(block.max()) + 1
            if new_count == count:
                break
            count = new_count
        else:
            if table.size > MAX_HOPCROFT_CELLS:
                raise too_large(f"{table.shape[0]:,} states over {table.shape[1]} byte classes minimized by Hopcroft's "
                                f"algorithm (a long count, like x{{0,n}}: the limit is {MAX_HOPCROFT_CELLS:,} states x "
                                "classes)")
            block = hopcroft(table, block)
            count = int(block.max()) + 1
        sig = signature(block)
        first = np.unique(block, return_index=True)[1]  # the smallest state of each block
        if exact or (np.array_equal(sig, sig[first[block]]) and np.array_equal(accepting, accepting[first[block]])):
            break
    merged = table[first]
    merged = np.where(merged >= 0, block[np.maximum(merged, 0)], -1)
    perm = np.arange(count)  # new id i holds old block perm[i]: the start's block goes first
    perm[[0, block[0]]] = perm[[block[0], 0]]
    inverse = np.argsort(perm)
    merged = merged[perm]
    return np.where(merged >= 0, inverse[np.maximum(merged, 0)], -1), accepting[first][perm]


def hopcroft(table: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Hopcroft's refinement of the partition `block` (coarser than the final one), O(k n log n): every
    (block, byte class) is a splitter; a block its preimage cuts is split, the smaller half queued."""
    n, k = table.shape
    full = np.vstack([np.where(table >= 0, table, n), np.full((1, k), n, dtype=table.dtype)])
    preimage = []  # per class: the sources sorted by target, and where each target's sources start
    for c in range(k):
        order = np.argsort(full[:, c], kind="stable")
        preimage.append((order, np.searchsorted(full[order, c], np.arange(n + 2)).tolist()))
    block_of = block.tolist() + [int(block.max()) + 1]  # the sink is a block of its own
    blocks: list[set] = [set() for _ in range(block_of[-1] + 1)]
    for s, b in enumerate(block_of):
        blocks[b].add(s)
    work = {(b, c) for b in range(len(blocks)) for c in range(k)}
    while work:
        splitter, c = work.pop()
        order, starts = preimage[c]
        cut: dict[int, list[int]] = {}
        for t in blocks[splitter]:
            if starts[t] < starts[t + 1]:
                for s in order[starts[t]:starts[t + 1]].tolist():
                    cut.setdefault(block_of[s], []).append(s)
        for y, inside in cut.items():
            if len(inside) == len(blocks[y]):
                continue
            moved = set(inside)
            blocks[y] -= moved
            if len(moved) > len(blocks[y]):  # keep the smaller half as the new block
                moved, blocks[y] = blocks[y], moved
            new = len(blocks)
            blocks.append(moved)
            for s in moved:
                block_of[s] = new
            for d in range(k):
                work.add((new, d) if (y, d) in work or len(moved) <= len(blocks[y]) else (y, d))
    labels = np.array(block_of[:n], dtype=np.int64)
    return np.unique(labels, return_inverse=True)[1].ravel()


def renumber(table: np.ndarray, accepting: np.ndarray):
    """Breadth-first numbering from the start (state 0), moves in byte order: a canonical state order."""
    rows = table.tolist()
    order, seen = [0], {0}
    for s in order:
        for t in rows[s]:
            if t >= 0 and t not in seen:
                seen.add(t)
                order.append(t)
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
