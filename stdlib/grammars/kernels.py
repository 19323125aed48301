"""The automaton constructions' inner loops, compiled with numba: the subset construction, trimming,
Hopcroft's minimization and the breadth-first numbering. automaton.py prepares their arrays and turns their
status codes into errors; the algorithms are the textbook ones (Rabin-Scott subsets with epsilon closures,
Hopcroft 1971 with the "smaller half" rule), over byte classes rather than bytes.

They exist because the same loops in Python were most of a schema's time to first mask (issue 15: the
`nested` benchmark schema's 1,581 subset states took 21 ms to build and 13 ms to minimize; here each is
about a millisecond).
"""
from __future__ import annotations

import numba
import numpy as np

OK, TOO_MANY_STATES, TOO_MUCH_WORK = 0, 1, 2  # subset_construction's status


@numba.njit(cache=True)
def _grow(a, need):
    """`a`, or a copy at least twice as long when it holds fewer than `need` items."""
    if need <= a.shape[0]:
        return a
    out = np.empty(max(need, 2 * a.shape[0]), a.dtype)
    out[:a.shape[0]] = a
    return out


@numba.njit(cache=True)
def _single(s, eps_ptr, eps_dst, important, mark, stamp, stack, pool, pool_size, where, size):
    """Memoize the important NFA states the epsilon moves reach from `s` (sorted) at pool[where[s]:][:size[s]];
    returns (pool, pool_size, states visited). `stamp` must be one no other walk used."""
    stack[0] = s
    mark[s] = stamp
    top, visited, start = 1, 0, pool_size
    while top:
        top -= 1
        u = stack[top]
        visited += 1
        if important[u]:
            pool = _grow(pool, pool_size + 1)
            pool[pool_size] = u
            pool_size += 1
        for j in range(eps_ptr[u], eps_ptr[u + 1]):
            t = eps_dst[j]
            if mark[t] != stamp:
                mark[t] = stamp
                stack[top] = t
                top += 1
    pool[start:pool_size].sort()
    where[s], size[s] = start, pool_size - start
    return pool, pool_size, visited


@numba.njit(cache=True)
def _hash(values, count):
    h = np.int64(count) * np.int64(-7046029254386353131)
    for i in range(count):
        h = (h ^ values[i]) * np.int64(1099511628211)  # wraps: FNV-style mixing
    return h


@numba.njit(cache=True)
def subset_construction(eps_ptr, eps_dst, edge_ptr, edge_lo, edge_hi, edge_dst, important, accept, start,
                        num_classes, max_states, max_work):
    """The DFA of an NFA over byte classes: NFA state s has epsilon moves eps_dst[eps_ptr[s]:eps_ptr[s+1]] and
    moves over classes edge_lo..edge_hi to edge_dst (CSR by edge_ptr). DFA states are the sets of important
    NFA states (with moves, or the accepting one) closed under epsilon moves, numbered as found (the start's
    closure is 0).

    Returns (status, table int64 [S, num_classes] (-1: no move), accepting bool [S], work): status
    TOO_MANY_STATES past `max_states` DFA states, TOO_MUCH_WORK once the NFA states visited, held and the
    moves followed pass `max_work`; then table and accepting are partial."""
    n = eps_ptr.shape[0] - 1
    mark = np.zeros(n, np.int64)
    stack = np.empty(n, np.int64)
    out = np.empty(n, np.int64)
    pool = np.empty(max(n, 16), np.int64)  # the single states' closures (_single), computed once each
    pool_size = 0
    where = np.full(n, -1, np.int64)
    size = np.zeros(n, np.int64)
    members = np.empty(max(n, 16), np.int64)  # the DFA states' NFA states, concatenated
    offsets = np.zeros(64, np.int64)
    hashes = np.zeros(64, np.int64)
    table = np.full((64, num_classes), -1, np.int64)
    slots = np.full(256, -1, np.int64)  # open addressing: DFA state ids by hash
    cls_count = np.zeros(num_classes + 1, np.int64)
    pair_dst = np.empty(64, np.int64)
    group_start = np.empty(num_classes, np.int64)  # one row's distinct target lists: memo of their results
    group_len = np.empty(num_classes, np.int64)
    group_hash = np.empty(num_classes, np.int64)
    group_result = np.empty(num_classes, np.int64)
    work = 0
    stamp = 1

    pool, pool_size, visited = _single(start, eps_ptr, eps_dst, important, mark, stamp, stack, pool, pool_size, where,
                                       size)
    m = size[start]
    work += visited
    out[:m] = pool[where[start]:where[start] + m]
    members[:m] = out[:m]
    offsets[1] = m
    h = _hash(out, m)
    hashes[0] = h
    slots[h & (slots.shape[0] - 1)] = 0
    count = 1
    done = 0
    while done < count:
        lo, hi = offsets[done], offsets[done + 1]
        pairs = 0
        cls_count[:] = 0
        for i in range(lo, hi):
            s = members[i]
            for e in range(edge_ptr[s], edge_ptr[s + 1]):
                for c in range(edge_lo[e], edge_hi[e] + 1):
                    cls_count[c + 1] += 1
                pairs += edge_hi[e] - edge_lo[e] + 1
        work += pairs
        if work > max_work:
            return TOO_MUCH_WORK, table[:count], np.zeros(count, np.bool_), work
        for c in range(num_classes):  # counting sort of the (class, target) moves by class
            cls_count[c + 1] += cls_count[c]
        pair_dst = _grow(pair_dst, pairs)
        fill = cls_count[:num_classes].copy()
        for i in range(lo, hi):
            s = members[i]
            for e in range(edge_ptr[s], edge_ptr[s + 1]):
                for c in range(edge_lo[e], edge_hi[e] + 1):
                    pair_dst[fill[c]] = edge_dst[e]
                    fill[c] += 1
        groups = 0
        for c in range(num_classes):
            a, b = cls_count[c], cls_count[c + 1]
            if a == b:
                continue
            pair_dst[a:b].sort()
            th = _hash(pair_dst[a:b], b - a)
            result = -2
            for g in range(groups):
                if group_hash[g] == th and group_len[g] == b - a:
                    same = True
                    for j in range(b - a):
                        if pair_dst[group_start[g] + j] != pair_dst[a + j]:
                            same = False
                            break
                    if same:
                        result = group_result[g]
                        break
            if result == -2:
                m = 0  # the closure of the targets: the union of their own closures
                for j in range(a, b):
                    t = pair_dst[j]
                    if where[t] < 0:
                        stamp += 1
                        pool, pool_size, visited = _single(t, eps_ptr, eps_dst, important, mark, stamp, stack, pool,
                                                           pool_size, where, size)
                        work += visited
                    if b - a > 1 and (j == a or pair_dst[j - 1] != t):  # merged: each distinct target's part
                        work += size[t]
                stamp += 1
                for j in range(a, b):
                    t = pair_dst[j]
                    for i in range(where[t], where[t] + size[t]):
                        u = pool[i]
                        if mark[u] != stamp:
                            mark[u] = stamp
                            out[m] = u
                            m += 1
                if b - a > 1:
                    out[:m].sort()
                if work > max_work:
                    return TOO_MUCH_WORK, table[:count], np.zeros(count, np.bool_), work
                if m == 0:
                    result = -1
                else:
                    h = _hash(out, m)
                    mask = slots.shape[0] - 1
                    slot = h & mask
                    while slots[slot] >= 0:  # probe: an equal set already numbered?
                        d = slots[slot]
                        if hashes[d] == h and offsets[d + 1] - offsets[d] == m:
                            same = True
                            base = offsets[d]
                            for j in range(m):
                                if members[base + j] != out[j]:
                                    same = False
                                    break
                            if same:
                                result = d
                                break
                        slot = (slot + 1) & mask
                    if result == -2:  # a new DFA state
                        if count >= max_states:
                            return TOO_MANY_STATES, table[:count], np.zeros(count, np.bool_), work
                        result = count
                        offsets = _grow(offsets, count + 2)
                        hashes = _grow(hashes, count + 1)
                        members = _grow(members, offsets[count] + m)
                        members[offsets[count]:offsets[count] + m] = out[:m]
                        offsets[count + 1] = offsets[count] + m
                        hashes[count] = h
                        slots[slot] = count
                        count += 1
                        if 2 * count > slots.shape[0]:  # rehash at half full
                            slots = np.full(2 * slots.shape[0], -1, np.int64)
                            mask = slots.shape[0] - 1
                            for d in range(count):
                                slot = hashes[d] & mask
                                while slots[slot] >= 0:
                                    slot = (slot + 1) & mask
                                slots[slot] = d
                group_start[groups], group_len[groups], group_hash[groups] = a, b - a, th
                group_result[groups] = result
                groups += 1
            table[done, c] = result
        done += 1
        if count > table.shape[0]:
            grown = np.full((max(count, 2 * table.shape[0]), num_classes), -1, np.int64)
            grown[:table.shape[0]] = table
            table = grown
    accepting = np.zeros(count, np.bool_)
    for d in range(count):
        for i in range(offsets[d], offsets[d + 1]):
            if members[i] == accept:
                accepting[d] = True
                break
    return OK, table[:count], accepting, work


@numba.njit(cache=True)
def live_states(table, accepting):
    """bool [S]: the states from which an accepting state can be reached (backwards from them)."""
    n, k = table.shape
    count = np.zeros(n + 1, np.int64)  # the reversed moves, CSR by target
    for s in range(n):
        for c in range(k):
            t = table[s, c]
            if t >= 0:
                count[t + 1] += 1
    for t in range(n):
        count[t + 1] += count[t]
    fill = count[:n].copy()
    src = np.empty(count[n], np.int64)
    for s in range(n):
        for c in range(k):
            t = table[s, c]
            if t >= 0:
                src[fill[t]] = s
                fill[t] += 1
    live = accepting.copy()
    stack = np.empty(n, np.int64)
    top = 0
    for s in range(n):
        if live[s]:
            stack[top] = s
            top += 1
    while top:
        top -= 1
        t = stack[top]
        for j in range(count[t], count[t + 1]):
            s = src[j]
            if not live[s]:
                live[s] = True
                stack[top] = s
                top += 1
    return live


@numba.njit(cache=True)
def hopcroft(table, accepting):
    """The coarsest partition of a trimmed DFA's states that no input distinguishes: block ids int64 [S].

    Hopcroft's refinement on a partial DFA, as Valmari and Lehtinen (2008) run it: no dead state is added.
    Every initial block is a splitter for every class (a state without a move on c must part from one
    with a move, which a complete DFA gets from its dead state); past that, of a split block only the
    smaller half is queued, and only for the classes that enter it: pre_c(Z - X) = pre_c(Z) - pre_c(X),
    since a state has at most one move on c. Time O(m log n) over the m moves."""
    n, k = table.shape
    by_key = np.zeros(k * n + 1, np.int32)  # the moves, CSR by (class, target): their sources
    by_target = np.zeros(n + 1, np.int64)  # the moves, CSR by target: their classes
    for s in range(n):
        for c in range(k):
            t = table[s, c]
            if t >= 0:
                by_key[c * n + t + 1] += 1
                by_target[t + 1] += 1
    for i in range(k * n):
        by_key[i + 1] += by_key[i]
    for t in range(n):
        by_target[t + 1] += by_target[t]
    src = np.empty(by_key[k * n], np.int32)  # int32: at most MAX_DFA_CELLS moves
    cls = np.empty(by_target[n], np.int32)
    fill_key = by_key[:k * n].copy()
    fill_target = by_target[:n].copy()
    for s in range(n):
        for c in range(k):
            t = table[s, c]
            if t >= 0:
                src[fill_key[c * n + t]] = s
                fill_key[c * n + t] += 1
                cls[fill_target[t]] = c
                fill_target[t] += 1

    # the partition: block b holds elems[first[b]:end[b]]; where[s] is s's position, block[s] its block
    elems = np.empty(n, np.int64)
    where = np.empty(n, np.int64)
    block = np.empty(n, np.int64)
    first = np.zeros(n, np.int64)
    end = np.zeros(n, np.int64)
    marked = np.zeros(n, np.int64)
    pos = blocks = 0
    for kind in (True, False):  # the accepting states, then the others
        begin = pos
        for s in range(n):
            if accepting[s] == kind:
                elems[pos] = s
                where[s] = pos
                block[s] = blocks
                pos += 1
        if pos > begin:
            first[blocks], end[blocks] = begin, pos
            blocks += 1
    queued = np.zeros((n, k), np.bool_)
    work_b = np.empty(max(16, 2 * k), np.int64)
    work_c = np.empty(max(16, 2 * k), np.int64)
    top = 0
    for b in range(blocks):
        for c in range(k):
            work_b[top], work_c[top] = b, c
            queued[b, c] = True
            top += 1
    splitter = np.empty(n, np.int64)
    touched = np.empty(n, np.int64)
    while top:
        top -= 1
        a, c = work_b[top], work_c[top]
        queued[a, c] = False
        size = end[a] - first[a]
        splitter[:size] = elems[first[a]:end[a]]  # a copy: marking may reorder block a itself
        ntouched = 0
        for i in range(size):
            key = c * n + splitter[i]
            for j in range(by_key[key], by_key[key + 1]):
                s = src[j]
                y = block[s]
                if marked[y] == 0:
                    touched[ntouched] = y
                    ntouched += 1
                p = first[y] + marked[y]  # move s to the front part of its block
                other = elems[p]
                q = where[s]
                elems[p], elems[q] = s, other
                where[s], where[other] = p, q
                marked[y] += 1
        for i in range(ntouched):
            y = touched[i]
            cut = marked[y]
            marked[y] = 0
            if cut == end[y] - first[y]:
                continue
            new = blocks  # the smaller part (the marked front or the rest) becomes block `new`
            blocks += 1
            middle = first[y] + cut
            if cut <= end[y] - middle:
                first[new], end[new] = first[y], middle
                first[y] = middle
            else:
                first[new], end[new] = middle, end[y]
                end[y] = middle
            for p in range(first[new], end[new]):
                t = elems[p]
                block[t] = new
                for j in range(by_target[t], by_target[t + 1]):  # queued for d: both halves are then; else
                    d = cls[j]                                     # the smaller one is enough
                    if not queued[new, d]:
                        work_b = _grow(work_b, top + 1)
                        work_c = _grow(work_c, top + 1)
                        work_b[top], work_c[top] = new, d
                        queued[new, d] = True
                        top += 1
    return block


@numba.njit(cache=True)
def bfs_order(table):
    """The states reachable from state 0 in breadth-first order, moves in class order."""
    n, k = table.shape
    seen = np.zeros(n, np.bool_)
    order = np.empty(n, np.int64)
    order[0] = 0
    seen[0] = True
    size = 1
    i = 0
    while i < size:
        s = order[i]
        i += 1
        for c in range(k):
            t = table[s, c]
            if t >= 0 and not seen[t]:
                seen[t] = True
                order[size] = t
                size += 1
    return order[:size]
