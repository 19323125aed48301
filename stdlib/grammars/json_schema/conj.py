"""The normal form of a schema: a union (a tuple) of `Conj`s, each the conjunction of everything a value must
meet, sorted by the type it constrains. `allOf` merges conjunctions (`merge`), `anyOf` concatenates the
unions; what a record cannot say (the complement of a subschema, for `not`, `oneOf`, `if`) is carried as
a language per type (`langs`) and intersected when the conjunction is lowered.

Objects and arrays keep their *sources* (one per schema object that said `properties`, `items`, ...)
unmerged, since `additionalProperties`, `items` after `prefixItems` and `unevaluated*` apply relative to
their own schema object's keywords.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from decspec.stdlib.grammars.json_schema.refs import Located
from decspec.stdlib.grammars.json_schema.values import TYPES


@dataclass(frozen=True)
class ObjectSource:
    """One schema object's property keywords: `properties`, `patternProperties`, and `rest`, the schema of
    `additionalProperties` or `unevaluatedProperties`, for the names outside its scope."""

    props: tuple[tuple[str, Located], ...] = ()
    patterns: tuple[tuple[str, Located], ...] = ()
    rest: Located | None = None
    scope_names: frozenset = frozenset()
    scope_patterns: tuple[str, ...] = ()
    scope_all: bool = False  # unevaluatedProperties beside something that evaluates every name: no effect


@dataclass(frozen=True)
class ArraySource:
    """One schema object's item keywords: `prefixItems` (positions 0..), then `items` for the positions past
    them (or `unevaluatedItems` past `scope`, the items something else evaluated)."""

    prefix: tuple[Located, ...] = ()
    items: Located | None = None
    scope: int = 0
    scope_all: bool = False


@dataclass(frozen=True, eq=False)
class Conj:
    types: frozenset = frozenset(TYPES)
    integer: bool = False
    bounds: tuple[tuple[str, Decimal], ...] = ()  # (op, bound): "<", "<=", ">", ">="
    multiples: tuple[Decimal, ...] = ()
    min_length: int = 0
    max_length: int | None = None
    patterns: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    arrays: tuple[ArraySource, ...] = ()
    min_items: int = 0
    max_items: int | None = None
    contains: tuple[tuple[Located, int, int | None], ...] = ()
    unique: str | None = None  # the path of a `uniqueItems: true`
    objects: tuple[ObjectSource, ...] = ()
    required: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()
    min_props: int = 0
    max_props: int | None = None
    names: tuple[Located, ...] = ()
    values: tuple[tuple[Any, ...], ...] | None = None  # each `enum` / `const`: the values it allows
    langs: tuple[dict, ...] = ()  # per-type languages to intersect with
    paths: dict = field(default_factory=dict)  # keyword -> the JSON path it came from, for messages


TOP = Conj()


def least(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def merge(a: Conj, b: Conj) -> Conj:
    """The conjunction of both."""
    return replace(
        a, types=a.types & b.types, integer=a.integer or b.integer, bounds=a.bounds + b.bounds,
        multiples=a.multiples + b.multiples, min_length=max(a.min_length, b.min_length),
        max_length=least(a.max_length, b.max_length), patterns=a.patterns + b.patterns, formats=a.formats + b.formats,
        arrays=a.arrays + b.arrays, min_items=max(a.min_items, b.min_items), max_items=least(a.max_items, b.max_items),
        contains=a.contains + b.contains, unique=a.unique or b.unique, objects=a.objects + b.objects,
        required=a.required + b.required, forbidden=a.forbidden + b.forbidden, min_props=max(a.min_props, b.min_props),
        max_props=least(a.max_props, b.max_props), names=a.names + b.names,
        values=b.values if a.values is None else a.values if b.values is None else a.values + b.values,
        langs=a.langs + b.langs, paths={**a.paths, **b.paths})


def conjoin(left: tuple[Conj, ...], right: tuple[Conj, ...]) -> tuple[Conj, ...]:
    """(A1 ∪ A2 ...) ∩ (B1 ∪ ...) as a union of conjunctions; those that allow no type are dropped."""
    out = []
    for a in left:
        for b in right:
            c = merge(a, b)
            if c.types:
                out.append(c)
    return tuple(out)
