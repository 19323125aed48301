"""Normal form -> languages, one per JSON type (`Lang`): the union over a schema's conjunctions, each the
intersection of its record's language and its carried languages, filtered by its `enum` / `const`.

Every language is *sound*: each text it accepts is a valid instance. `exact` marks the ones that also
hold every valid text of their type (under the whitespace convention); only those may be complemented
(`not`, `oneOf`, `if`): the complement of an inexact language is taken as empty, which is sound too.
`universal` marks "no constraint on this type", so intersections with it are skipped.
"""
from __future__ import annotations

import json
from typing import Any

from decspec.stdlib.grammars.errors import GrammarError, TooLarge
from decspec.stdlib.grammars.json_schema.conj import Conj, conjoin
from decspec.stdlib.grammars.json_schema.formats import EXACT as EXACT_FORMATS
from decspec.stdlib.grammars.json_schema.formats import FORMATS, OVER
from decspec.stdlib.grammars.json_schema.lang import EMPTY, Machine, RuleRef, alt, intersect, is_empty_tree, matches, minus
from decspec.stdlib.grammars.json_schema.normalize import Normalizer
from decspec.stdlib.grammars.json_schema.numbers import compare, multiple_of
from decspec.stdlib.grammars.json_schema.refs import Located
from decspec.stdlib.grammars.json_schema.strings import length, pattern_tree, string_of
from decspec.stdlib.grammars.json_schema.values import (BOOLEAN, EXPONENT, INTEGER, INTEGRAL, NULL, NUMBER, STRING,
                                                        TYPES, equal, is_integer, number_texts, type_of, universe,
                                                        value_exact, value_lang, value_over)
from decspec.stdlib.grammars.json_schema.values import COMPLEMENT_DEPTH, shown
from decspec.stdlib.grammars.regex import fits, parse_regex

MAX_LENGTH_BOUND = 10_000  # minLength / maxLength: each character is a copy of the JSON character automaton
SCALARS = ("null", "boolean", "number", "string")


SAME = object()  # Lang(node, over=SAME): the language is exact


class Lang:
    """A language of one JSON type. `node` is sound: every text it accepts is valid. `over` is a superset
    of the valid texts within the complement universe (`universe(t, COMPLEMENT_DEPTH)`: complements are
    taken there; None: no information); the two are the same object when the language is exact. `over` may be given as a zero-argument function, called
    the first time it is needed (only complements need it). `universal`: no constraint on this type."""

    __slots__ = ("node", "universal", "_over")

    def __init__(self, node, over=SAME, universal: bool = False):
        self.node, self.universal = node, universal
        self._over = node if over is SAME else over

    @property
    def over(self):
        if callable(self._over):
            self._over = self._over()
        return self._over

    @property
    def exact(self) -> bool:  # known without computing a deferred `over`
        return self._over is self.node


NOTHING = Lang(EMPTY)


def union(langs: list[Lang]) -> Lang:
    if any(lang.universal for lang in langs):
        return next(lang for lang in langs if lang.universal)
    if len(langs) == 1:
        return langs[0]

    def over():
        overs = [lang.over for lang in langs]
        return None if any(o is None for o in overs) else alt(*overs)
    return Lang(alt(*(lang.node for lang in langs)), SAME if all(lang.exact for lang in langs) else over)


def meet(a: Lang, b: Lang) -> Lang:
    """Both at once."""
    if b.universal:
        return a
    if a.universal:
        return b

    def over():
        overs = [o for o in (a.over, b.over) if o is not None]
        return intersect(*overs) if overs else None
    return Lang(intersect(a.node, b.node), SAME if a.exact and b.exact else over)


def texts(value: Any) -> list[str]:
    """A few JSON texts of `value`, to test it against a language."""
    if type_of(value) == "number":
        return number_texts(value)
    return list(dict.fromkeys([json.dumps(value, ensure_ascii=False), json.dumps(value, ensure_ascii=False, separators=(",", ":"))]))


class Lowerer(Normalizer):
    """A schema document's languages, memoized per schema object; a recursive one's as Lark rules (`rules`)."""

    def __init__(self, index, draft: int):
        super().__init__(index, draft)
        self.lowered: dict[Any, dict[str, Lang]] = {}
        self.lowering: list[Any] = []
        self.rule_names: dict[Any, str] = {}  # the recursive schemas (a key of lower_all) and their rule names
        self.rules: dict[str, object] = {}  # rule name (name_type) -> its language
        self.strings: dict[Any, Lang] = {}

    # per schema

    def nesting(self) -> int:
        return len(self.active) + len(self.lowering)

    def lower(self, loc: Located) -> dict[str, Lang]:
        """{type: Lang} of one schema."""
        return self.lower_all((loc,))

    def lower_all(self, locs: tuple[Located, ...]) -> dict[str, Lang]:
        """{type: Lang} of the conjunction of schemas (one value under all of them). A schema met again
        while it is being lowered (a value inside itself) is a `RuleRef` per type, defined in `rules`."""
        key = tuple((id(loc.schema), loc.scope) if isinstance(loc.schema, dict) else loc.schema for loc in locs)
        if key in self.lowered:
            return self.lowered[key]
        if key in self.lowering:  # a value inside itself: a context-free language, written as a Lark rule
            if key not in self.rule_names:
                self.rule_names[key] = f"r{len(self.rule_names)}"
            name = self.rule_names[key]
            return {t: Lang(RuleRef(f"{name}_{t}", locs[0].path), None) for t in TYPES}
        self.deeper(locs[0].path)
        self.lowering.append(key)
        try:
            normal = (Conj(),)
            for loc in locs:
                normal = conjoin(normal, self.normalize(loc))
            out = self.lower_union(normal)
            for lang in out.values():
                fits(lang.node)  # too large already: refused here, at this schema's path, before a parent copies it
        except TooLarge as e:
            raise e.at(locs[0].path) from None
        finally:
            self.lowering.pop()
        if key in self.rule_names:
            for t, lang in out.items():
                self.rules[f"{self.rule_names[key]}_{t}"] = lang.node
        self.lowered[key] = out
        return out

    def lower_union(self, normal: tuple[Conj, ...]) -> dict[str, Lang]:
        out = {}
        for t in TYPES:
            seen, langs = set(), []
            for c in normal:
                if t not in c.types:
                    continue
                signature = self.signature(c, t)
                if signature is not None and signature in seen:
                    continue
                seen.add(signature)
                langs.append(self.lower_conj(c, t))
            out[t] = union(langs) if langs else NOTHING
        return out

    def signature(self, c: Conj, t: str):
        """What the language of `c` for a scalar type `t` depends on (equal ones are lowered once), or None."""
        if t not in SCALARS:
            return None
        fields = {"null": (), "boolean": (), "number": (c.integer, c.bounds, c.multiples),
                  "string": (c.min_length, c.max_length, c.patterns, c.formats)}[t]
        values = None if c.values is None else json.dumps(c.values, sort_keys=True, default=str)
        return (fields, values, tuple(id(lang) for lang in c.langs))

    def complement(self, loc: Located) -> dict[str, Lang]:
        """{type: Lang} of the values of each type that fail the schema: sound where the schema's language
        has an over-approximation (U − over), with U − node as its own over-approximation."""
        out = {}
        for t, lang in self.lower(loc).items():
            if lang.universal:
                out[t] = NOTHING
            elif lang.exact and is_empty_tree(lang.node):
                out[t] = Lang(universe(t), SAME, True)
            else:
                over = lang.over
                node = EMPTY if over is None else minus(universe(t, COMPLEMENT_DEPTH), over)
                exact = lang.exact and t in SCALARS
                out[t] = Lang(node, node if exact else (lambda lang=lang, t=t: minus(universe(t), lang.node)))
        return out

    def value(self, langs: dict[str, Lang]) -> Lang:
        """One language for any type: the union over the types."""
        if all(lang.universal for lang in langs.values()):
            return Lang(alt(*(lang.node for lang in langs.values())), SAME, True)

        def over():
            overs = {t: lang.over for t, lang in langs.items()}
            if all(o is None for o in overs.values()):
                return None
            return alt(*(universe(t, COMPLEMENT_DEPTH) if o is None else o for t, o in overs.items()))
        node = alt(*(lang.node for lang in langs.values()))
        return Lang(node, SAME if all(lang.exact for lang in langs.values()) else over)

    # per conjunction and type

    def lower_conj(self, c: Conj, t: str) -> Lang:
        base = {"null": lambda: Lang(NULL, SAME, True), "boolean": lambda: Lang(BOOLEAN, SAME, True),
                "number": lambda: self.number(c), "string": lambda: self.string(c),
                "array": lambda: self.array(c), "object": lambda: self.object(c)}[t]()
        for langs in c.langs:
            base = meet(base, langs[t])
        if c.values is not None:
            base = self.filter_values(c, t, base)
        return base

    def filter_values(self, c: Conj, t: str, base: Lang) -> Lang:
        """`enum` / `const` beside other keywords: the allowed values of type t that the rest accepts."""
        candidates: list[Any] = []
        for v in c.values[0]:
            if type_of(v) != t or any(equal(v, k) for k in candidates):
                continue
            if all(any(equal(v, w) for w in other) for other in c.values[1:]):
                candidates.append(v)
        accepts = lambda node, v: any(matches(node, s) for s in texts(v))  # noqa: E731
        kept = [v for v in candidates if (not c.integer or is_integer(v)) and (base.universal or accepts(base.node, v))]
        node = alt(*(value_lang(v) for v in kept))
        if (base.exact or base.universal) and all(value_exact(v) for v in kept) and len(kept) == len(candidates):
            return Lang(node)

        def over():
            if base.over is None:
                possible = candidates
            else:
                possible = [v for v in candidates if accepts(base.over, v)]
            overs = [value_over(v) for v in possible]
            return None if any(o is None for o in overs) else alt(*overs)
        return Lang(node, over)

    def number(self, c: Conj) -> Lang:
        if not c.bounds and not c.multiples:
            return Lang(INTEGER, INTEGRAL) if c.integer else Lang(NUMBER, SAME, True)
        parts, overs = [], [INTEGRAL] if c.integer else []
        lower = max((b for b in c.bounds if b[0] in (">", ">=")), key=lambda b: (b[1], b[0] == ">"), default=None)
        upper = min((b for b in c.bounds if b[0] in ("<", "<=")), key=lambda b: (b[1], b[0] == "<="), default=None)
        for b in (lower, upper):
            if b is not None:
                parts.append(parse_regex(compare(b[0], b[1], c.integer)))
                overs.append(alt(parse_regex(compare(b[0], b[1], False)), EXPONENT))
        for m in dict.fromkeys(c.multiples):
            try:
                parts.append(Machine(multiple_of(m, c.integer)))
                overs.append(alt(Machine(multiple_of(m, False)), EXPONENT))
            except GrammarError as e:
                raise GrammarError(f"{c.paths.get('multipleOf', '$')}: {e.message}") from None
        return Lang(intersect(*parts), lambda: intersect(*overs))

    def string(self, c: Conj) -> Lang:
        key = (c.min_length, c.max_length, c.patterns, c.formats)
        if key not in self.strings:
            self.strings[key] = self.build_string(c)
        return self.strings[key]

    def build_string(self, c: Conj) -> Lang:
        if c.min_length == 0 and c.max_length is None and not c.patterns and not c.formats:
            return Lang(STRING, SAME, True)
        for key, value in (("minLength", c.min_length), ("maxLength", c.max_length)):
            if value is not None and value > MAX_LENGTH_BOUND:
                raise GrammarError(f"{c.paths.get(key, '$')}: {key} {shown(value)} is over the limit of {MAX_LENGTH_BOUND} "
                                   "(each character is a copy of the string automaton)")
        if c.max_length is not None and c.min_length > c.max_length:
            return NOTHING
        parts = [length(c.min_length, c.max_length)] if c.min_length or c.max_length is not None else []
        parts += [pattern_tree(p) for p in dict.fromkeys(c.patterns)]  # all over decoded characters
        over = list(parts)  # a superset: a stricter-subset format's RFC superset (formats.OVER) instead of it
        for f in dict.fromkeys(c.formats):
            parts.append(parse_regex(FORMATS[f]))
            over.append(parts[-1] if f in EXACT_FORMATS else parse_regex(OVER[f]))
        if not c.formats:
            return Lang(string_of(intersect(*parts)))
        node = string_of(intersect(*parts), plainly=True)  # a format's characters written one way each
        return Lang(node, lambda: string_of(intersect(*over)))

    def array(self, c: Conj) -> Lang:
        from decspec.stdlib.grammars.json_schema.containers import array_lang
        return array_lang(self, c)

    def object(self, c: Conj) -> Lang:
        from decspec.stdlib.grammars.json_schema.containers import object_lang
        return object_lang(self, c)
