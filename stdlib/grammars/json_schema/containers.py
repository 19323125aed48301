"""Arrays and objects: a conjunction's sources become a `Graph` whose states count what has been written
(items, `contains` matches, properties) and whose edges write one item or one property.

Arrays: the item at position i meets every source's `prefixItems[i]` or `items` (and `unevaluatedItems`
past what its scope evaluated); a `contains` splits each item into "matches" and "certainly does not
match" (the complement: exact subschemas only). `uniqueItems` is decided by enumeration when every
position draws from a finite set of values (enum, const, booleans, null), and refused otherwise.

Objects (closed by convention): the declared names (`properties`, `required`, names in dependencies) are
written first, in declared order, each at most once; then, where a schema allows other names
(`additionalProperties`, `patternProperties`, `unevaluatedProperties`, or a schema that names no property
at all), any number of other properties, whose names exclude every declared name in every escaping.
`minProperties` counts only the declared names and the first other property (two others might repeat a
name), `maxProperties` counts every pair: both sound.
"""
from __future__ import annotations

from itertools import combinations
from typing import Any

from decspec.stdlib.grammars.automaton import MAX_NFA_SIZE, too_large
from decspec.stdlib.grammars.errors import GrammarError
from decspec.stdlib.grammars.json_schema.conj import Conj, conjoin
from decspec.stdlib.grammars.json_schema.lang import (EMPTY, EPSILON, Graph, alt, intersect, is_empty, is_empty_tree,
                                                      matches, minus, seq, text, to_dfa)
from decspec.stdlib.grammars.json_schema.lower import NOTHING, SAME, Lang, Lowerer, texts
from decspec.stdlib.grammars.json_schema.strings import literal_string, pattern_tree, string_of
from decspec.stdlib.grammars.json_schema.values import (COLON, COMMA, COMPLEMENT_DEPTH, STRING, WS, any_value, equal,
                                                        shown, type_of, universe, value_lang)

OVER_ANY = any_value(COMPLEMENT_DEPTH - 1)  # an over-approximation need only hold within the complement universe
MAX_COUNT = 1000  # minItems / maxItems / maxProperties: one state per count
MAX_SEQUENCES = 4096  # uniqueItems: the distinct-item arrays enumerated
MAX_PATTERNS = 4  # patternProperties names beside other properties: one key class per subset
MAX_REQUIRED_OVER = 4  # required names an object's over-approximation tracks (a state per subset)


def item(lw: Lowerer, refs: tuple) -> Lang:
    """The values that meet every schema in `refs` (any value when there is none)."""
    if not refs:
        return Lang(any_value(), SAME, True)
    return lw.value(lw.lower_all(tuple(refs)))


def counted(c: Conj, key: str, value: int | None, source: str | None = None) -> None:
    """Refuse a count over MAX_COUNT (a state per count) at the path of the schema that gave it (`source`:
    the keyword that path is recorded under, when not `key`)."""
    if value is not None and value > MAX_COUNT:
        raise GrammarError(f"{c.paths.get(source or key, '$')}: {key} {shown(value)} is over the limit of {MAX_COUNT}")


def graph(start, step, final, label) -> Graph:
    """The Graph reachable from `start`: step(state) -> [(edge language, next state)]. Each state is at
    least one NFA state, so past `MAX_NFA_SIZE` of them (counts that multiply: items x contains x ...)
    it is refused as it grows."""
    ids, order, edges = {start: 0}, [start], []
    for state in order:
        for node, nxt in step(state):
            if is_empty_tree(node):
                continue
            if nxt not in ids:
                if len(order) >= MAX_NFA_SIZE:
                    raise too_large(f"more than {MAX_NFA_SIZE:,} counting states (items, contains matches, "
                                    "properties: the limit)")
                ids[nxt] = len(order)
                order.append(nxt)
            edges.append((ids[state], label(state, node), ids[nxt]))
    return Graph(len(order), 0, tuple(ids[s] for s in order if final(s)), tuple(edges))


# arrays


def array_lang(lw: Lowerer, c: Conj) -> Lang:
    contains = [(loc, lo, hi) for loc, lo, hi in c.contains if lo > 0 or hi is not None]
    if not c.arrays and not c.min_items and c.max_items is None and not contains and not c.unique:
        return Lang(universe("array"), SAME, True)
    lo, hi = c.min_items, c.max_items
    if hi is not None and lo > hi or any(h is not None and l > h for _, l, h in contains):
        return NOTHING
    counted(c, "minItems", lo)
    counted(c, "maxItems", hi)
    for _, low, high in contains:
        counted(c, "minContains", low, "contains")
        counted(c, "maxContains", high, "contains")
    width = max((max(len(a.prefix), a.scope) for a in c.arrays), default=0)

    def refs_at(i: int) -> tuple:
        out = []
        for a in c.arrays:
            if i < len(a.prefix):
                out.append(a.prefix[i])
            elif a.items is not None and i >= a.scope and not a.scope_all:
                out.append(a.items)
        return tuple(out)

    classes = [item(lw, refs_at(i)) for i in range(width + 1)]
    checks = [(lw.value(lw.lower(loc)), lw.value(lw.complement(loc)), l, h) for loc, l, h in contains]
    if c.unique and (hi is None or hi > 1):
        return unique_arrays(lw, c, classes, checks)
    cap = hi if hi is not None else max(width, lo, 1)

    def build(side) -> object:
        """The arrays, with side(lang) for each item language: `node` (sound) or its over-approximation."""
        variants = []  # per class: [(matches per contains, item language)]
        for lang in classes:
            options = []
            for bits in range(2 ** len(checks)):
                parts = [side(lang)]
                for k, (yes, no, _, _) in enumerate(checks):
                    chosen = yes if bits >> k & 1 else no
                    if not chosen.universal:
                        parts.append(side(chosen))
                options.append((bits, intersect(*parts)))
            variants.append(options)

        def step(state):
            n, found = state[0], state[1:]
            if hi is not None and n >= hi:
                return []
            out = []
            for bits, node in variants[min(n, width)]:
                nxt = []
                for k, (_, _, l, h) in enumerate(checks):
                    f = found[k] + (bits >> k & 1)
                    if h is not None and f > h:
                        break
                    nxt.append(min(f, h if h is not None else l))
                else:
                    out.append((node, (min(n + 1, cap), *nxt)))
            return out

        g = graph((0,) * (1 + len(checks)), step,
                  lambda s: s[0] >= lo and all(f >= l for f, (_, _, l, _) in zip(s[1:], checks)),
                  lambda s, node: seq(COMMA, node) if s[0] > 0 else node)
        return seq(text("["), WS, g, WS, text("]"))

    node = build(lambda lang: lang.node)
    if all(lang.exact for lang in classes) and all(y.exact and n.exact for y, n, _, _ in checks):
        return Lang(node)
    return Lang(node, lambda: build(lambda lang: OVER_ANY if lang.over is None else lang.over))


def finite_values(lw: Lowerer, refs: tuple, lang: Lang) -> list | None:
    """The values an item under `refs` may take, when they are finitely many (else None)."""
    normal = (Conj(),)
    for loc in refs:
        normal = conjoin(normal, lw.normalize(loc))
    out: list[Any] = []
    for conj in normal:
        for t in conj.types:
            if t == "null":
                out.append(None)
            elif t == "boolean":
                out += [True, False]
            elif conj.values is not None:
                out += [v for v in conj.values[0] if type_of(v) == t]
            else:
                return None
    kept: list[Any] = []
    for v in out:
        if not any(equal(v, k) for k in kept) and any(matches(lang.node, s) for s in texts(v)):
            kept.append(v)
    return kept


def unique_arrays(lw: Lowerer, c: Conj, classes: list[Lang], checks: list) -> Lang:
    """uniqueItems: every array of distinct items, enumerated."""
    width = len(classes) - 1
    pools = []
    for i, lang in enumerate(classes):
        refs = tuple(a.prefix[i] if i < len(a.prefix) else a.items for a in c.arrays
                     if i < len(a.prefix) or (a.items is not None and i >= a.scope and not a.scope_all))
        pool = finite_values(lw, refs, lang) if refs else None
        if pool is None:
            raise GrammarError(f"{c.unique}: uniqueItems on items that are not drawn from a finite set of values "
                               "(enum, const, boolean, null): 'all items distinct' is not a regular language")
        pools.append(pool)
    membership = []  # per contains: a value -> True (matches), False (certainly not), None (unknown: unusable)
    for yes, no, _, _ in checks:
        membership.append(lambda v, yes=yes, no=no: True if yes.universal or any(matches(yes.node, s) for s in texts(v))
                          else False if not no.universal and any(matches(no.node, s) for s in texts(v)) else None)
    lo, hi = c.min_items, c.max_items
    found: list[list[Any]] = []

    def extend(chosen: list[Any]) -> None:
        n = len(chosen)
        counts = [sum(bool(m(v)) for v in chosen) for m in membership]
        if n >= lo and all(l <= f for f, (_, _, l, _) in zip(counts, checks)):
            found.append(list(chosen))
            if len(found) > MAX_SEQUENCES:
                raise GrammarError(f"{c.unique}: uniqueItems allows more than {MAX_SEQUENCES} arrays here; "
                                   "not supported (lower maxItems or the number of values)")
        if hi is not None and n >= hi:
            return
        for v in pools[min(n, width)]:
            if any(equal(v, w) for w in chosen) or any(m(v) is None for m in membership):
                continue
            if any(h is not None and f + bool(m(v)) > h for f, m, (_, _, _, h) in zip(counts, membership, checks)):
                continue
            extend(chosen + [v])

    extend([])
    arrays = []
    for values in found:
        body = [value_lang(values[0]), *(seq(COMMA, value_lang(v)) for v in values[1:])] if values else []
        arrays.append(seq(text("["), WS, *body, WS, text("]")))
    return Lang(alt(*arrays), None)


# objects


def pattern_matches(pattern: str, name: str) -> bool:
    try:
        return to_dfa(pattern_tree(pattern)).matches(name)
    except UnicodeEncodeError:  # a lone surrogate: never written (keys exclude them), so it does not matter
        return True


def object_lang(lw: Lowerer, c: Conj) -> Lang:
    sources = c.objects
    if not sources and not c.required and not c.forbidden and not c.min_props and c.max_props is None and not c.names:
        return Lang(universe("object"), SAME, True)
    counted(c, "maxProperties", c.max_props)
    declared = list(dict.fromkeys([n for s in sources for n, _ in s.props] + list(c.required) + list(c.forbidden)))
    patterns = list(dict.fromkeys(p for s in sources for p, _ in s.patterns))
    open_mode = not any(s.props or s.patterns for s in sources)
    name_langs = [lang for lang in (lw.lower(loc)["string"] for loc in c.names) if not lang.universal]

    def refs_for(name: str) -> tuple[list, bool]:
        """The schemas a property `name` meets, and whether anything lets it appear."""
        refs, allowed = [], open_mode or name in c.required
        for s in sources:
            for n, loc in s.props:
                if n == name:
                    refs.append(loc)
                    allowed = True
            for p, loc in s.patterns:
                if pattern_matches(p, name):
                    refs.append(loc)
                    allowed = True
            if s.rest is not None and not s.scope_all and name not in s.scope_names \
                    and not any(pattern_matches(p, name) for p in s.scope_patterns):
                refs.append(s.rest)
                allowed = True
        return refs, allowed

    slots = []  # (key language, value language or None when it cannot appear, required)
    for name in declared:
        refs, allowed = refs_for(name)
        can = allowed and name not in c.forbidden and all(any(matches(nl.node, s) for s in texts(name)) for nl in name_langs)
        value = item(lw, tuple(refs)).node if can else EMPTY
        if is_empty_tree(value):
            value = EMPTY
        if name in c.required and value is EMPTY:
            return NOTHING
        slots.append((literal_string(name), value, name in c.required))
    extras = [seq(key, COLON, value.node) for key, value in other_properties(lw, c, declared, patterns, name_langs, open_mode)]
    m = len(slots)
    cap_lo, cap_hi = c.min_props, c.max_props if c.max_props is not None else 1

    def step(state):
        i, n_lo, n_hi, started = state
        out = []
        if i < m:
            key, value, required = slots[i]
            if not required:
                out.append((EPSILON, (i + 1, n_lo, n_hi, started)))
            if value is not EMPTY and (c.max_props is None or n_hi < c.max_props):
                out.append((seq(key, COLON, value), (i + 1, min(n_lo + 1, cap_lo), min(n_hi + 1, cap_hi), started)))
        elif c.max_props is None or n_hi < c.max_props:
            for pair in extras:
                out.append((pair, (i, min(n_lo + (not started), cap_lo), min(n_hi + 1, cap_hi), True)))
        return out

    def label(state, node):
        return node if node is EPSILON or state[2] == 0 else seq(COMMA, node)

    g = graph((0, 0, 0, False), step, lambda s: s[0] == m and s[1] >= c.min_props, label)

    def over():
        """Pairs in any order and number: each declared name with (an over-approximation of) its value, the
        other names as the schema itself allows them (no closing convention), and each `required` name at
        least once (up to MAX_REQUIRED_OVER of them); counts and propertyNames left out."""
        pairs = []  # (pair language, the required name it writes or None)
        for name in declared:
            if name not in c.forbidden:
                value = item(lw, tuple(refs_for(name)[0])).over
                pairs.append((seq(literal_string(name), COLON, OVER_ANY if value is None else value), name))
        for key, value in other_properties(lw, c, declared, patterns, [], None):
            pairs.append((seq(key, COLON, OVER_ANY if value.over is None else value.over), None))
        required = frozenset(list(dict.fromkeys(c.required))[:MAX_REQUIRED_OVER])
        groups: dict = {}
        for pair, name in pairs:
            groups.setdefault(name if name in required else None, []).append(pair)
        groups = {name: alt(*ps) for name, ps in groups.items()}

        def step(state):
            seen, _ = state
            return [(pair, (seen | {name} if name is not None else seen, True)) for name, pair in groups.items()]
        g = graph((frozenset(), False), step, lambda state: state[0] == required,
                  lambda state, node: seq(COMMA, node) if state[1] else node)
        return seq(text("{"), WS, g, WS, text("}"))
    return Lang(seq(text("{"), WS, g, WS, text("}")), over)


def other_properties(lw: Lowerer, c: Conj, declared: list, patterns: list, name_langs: list,
                     open_mode: bool | None) -> list:
    """(name language, value Lang) for the names outside `declared`, one per set of patterns the name matches.
    `open_mode` None: as the schema means it (every name may appear); else by the closing convention (only
    names a pattern, an additionalProperties / unevaluatedProperties, or `open_mode` lets in)."""
    rests = [s for s in c.objects if s.rest is not None and not s.scope_all]
    if open_mode is False and not patterns and not rests:
        return []
    if len(patterns) > MAX_PATTERNS:
        raise GrammarError(f"{c.paths.get('object', '$')}: more than {MAX_PATTERNS} patternProperties beside other "
                           "properties is not supported (one name class per subset of patterns)")
    names_out = alt(*(literal_string(d) for d in declared))
    pairs = []
    for size in range(len(patterns) + 1):
        for chosen in combinations(patterns, size):
            refs = [loc for s in c.objects for p, loc in s.patterns if p in chosen]
            applying = [s.rest for s in rests if not set(s.scope_patterns) & set(chosen)]
            if open_mode is False and not (chosen or applying):
                continue
            value = item(lw, tuple(refs + applying))
            if is_empty_tree(value.node) and value.exact:
                continue
            key = intersect(STRING, *(string_of(pattern_tree(p)) for p in chosen), *(nl.node for nl in name_langs))
            outside = [string_of(pattern_tree(p)) for p in patterns if p not in chosen]
            if declared:
                outside.append(names_out)
            if outside:
                key = minus(key, alt(*outside))
            if not is_empty(key):
                pairs.append((key, value))
    return pairs
