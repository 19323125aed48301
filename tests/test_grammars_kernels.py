"""stdlib/grammars/kernels.py: the numba subset construction and Hopcroft minimization against references
written here the slow, obvious way: an NFA simulated set by set, and Moore's refinement run to its fixed
point with exact signatures."""
from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.stdlib.grammars import kernels
from decspec.stdlib.grammars.automaton import NFA, determinize, minimize, trim

BYTES = (0x61, 0x62, 0x63)  # a b c: the NFAs below move on these (as ranges of one or two of them)


def moore_blocks(table: np.ndarray, accepting: np.ndarray) -> list[int]:
    """The coarsest partition no input distinguishes, by Moore's rounds to their fixed point (-1: no move,
    which no state's move equals)."""
    block = [int(a) for a in accepting]
    while True:
        signatures = [(block[s], *(block[t] if t >= 0 else -1 for t in table[s])) for s in range(len(table))]
        ids = {sig: i for i, sig in enumerate(dict.fromkeys(signatures))}
        new = [ids[sig] for sig in signatures]
        if len(set(new)) == len(set(block)):
            return new
        block = new


def same_partition(a, b) -> bool:
    return all((a[i] == a[j]) == (b[i] == b[j]) for i, j in itertools.combinations(range(len(a)), 2))


@st.composite
def partial_dfas(draw):
    n = draw(st.integers(1, 24))
    k = draw(st.integers(1, 4))
    table = np.array(draw(st.lists(st.lists(st.integers(-1, n - 1), min_size=k, max_size=k), min_size=n, max_size=n)),
                     dtype=np.int64)
    accepting = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    return table, accepting


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(partial_dfas())
def test_hopcroft_finds_moore_s_partition(case):
    table, accepting = case
    trimmed = trim(table, accepting, 0)
    if trimmed is None:
        return
    table, accepting = trimmed
    ours = kernels.hopcroft(table, accepting).tolist()
    assert same_partition(ours, moore_blocks(table, accepting))
    merged, merged_accepting = minimize(table, accepting)
    assert len(merged) == len(set(ours))
    assert int(merged_accepting.sum()) == len({ours[s] for s in range(len(ours)) if accepting[s]})
    assert same_partition(moore_blocks(merged, merged_accepting), list(range(len(merged))))  # nothing left to merge


@st.composite
def nfas(draw):
    n = draw(st.integers(2, 12))
    nfa = NFA()
    for _ in range(n):
        nfa.state()
    for _ in range(draw(st.integers(0, 2 * n))):
        nfa.eps[draw(st.integers(0, n - 1))].append(draw(st.integers(0, n - 1)))
    for _ in range(draw(st.integers(0, 3 * n))):
        lo = draw(st.sampled_from(BYTES))
        hi = draw(st.sampled_from([b for b in BYTES if b >= lo]))
        nfa.edges[draw(st.integers(0, n - 1))].append((lo, hi, draw(st.integers(0, n - 1))))
    nfa.accept = draw(st.integers(0, n - 1))
    return nfa


def nfa_accepts(nfa: NFA, text: bytes) -> bool:
    def close(states):
        stack, seen = list(states), set(states)
        while stack:
            for t in nfa.eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return seen

    current = close({0})
    for byte in text:
        current = close({t for s in current for lo, hi, t in nfa.edges[s] if lo <= byte <= hi})
    return nfa.accept in current


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(nfas())
def test_subset_construction_accepts_what_the_nfa_accepts_and_is_minimal(nfa):
    dfa = determinize(nfa, 0)
    strings = [bytes(p) for size in range(5) for p in itertools.product(BYTES + (0x64,), repeat=size)]
    if dfa is None:
        assert not any(nfa_accepts(nfa, s) for s in strings)
        return
    assert [dfa.matches(s) for s in strings] == [nfa_accepts(nfa, s) for s in strings]
    table, accepting = dfa.transitions, dfa.accepting
    assert len(set(moore_blocks(table, accepting))) == dfa.num_states  # minimal
    assert trim(table.astype(np.int64), accepting, 0)[0].shape[0] == dfa.num_states  # trimmed


def test_a_state_without_a_move_parts_from_one_with_a_move():
    # 0 -a-> 1 (accepting), 0 -b-> 2 (accepting), 2 -a-> 1: states 1 and 2 differ only by 2's move on a
    table = np.array([[1, 2], [-1, -1], [1, -1]], dtype=np.int64)
    accepting = np.array([False, True, True])
    assert len(set(kernels.hopcroft(table, accepting).tolist())) == 3
