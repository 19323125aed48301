"""Schema -> normal form (conj.py): every keyword of every schema object is read by exactly one handler in
`HANDLERS` (or is an annotation in `ANNOTATIONS`); any other keyword raises a `GrammarError` naming its
JSON path. Nothing is dropped.

`$ref` is an in-place applicator beside its siblings (draft 2020-12); with draft 7 its siblings are
ignored, as that draft says. `format` asserts (a stricter reading than 2020-12's annotation default).
"""
from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from decspec.dsl.diagnostics import did_you_mean, excerpt
from decspec.stdlib.grammars.errors import GrammarError
from decspec.stdlib.grammars.json_schema.conj import TOP, ArraySource, Conj, ObjectSource, conjoin, replace
from decspec.stdlib.grammars.json_schema.formats import FORMATS
from decspec.stdlib.grammars.json_schema.refs import Index, Located, child_path
from decspec.stdlib.grammars.json_schema.strings import check_pattern
from decspec.stdlib.grammars.json_schema.values import TYPES, shown

MAX_ALTERNATIVES = 256
MAX_NESTING = 48  # schemas read inside each other (applicators, items, properties, $ref chains): Python's stack
ANNOTATIONS = ("title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly",
               "contentEncoding", "contentMediaType", "contentSchema", "$schema", "$id", "$anchor",
               "$dynamicAnchor", "$defs", "definitions", "$vocabulary")
EDITOR_ANNOTATIONS = ("markdownDescription", "enumDescriptions", "markdownEnumDescriptions", "deprecationMessage",
                      "errorMessage", "patternErrorMessage", "defaultSnippets", "doNotSuggest", "suggestSortText",
                      "allowComments", "allowTrailingCommas")  # VS Code's JSON language service; also any `x-...` (vendor)
OBJECT_GROUP = ("properties", "patternProperties", "additionalProperties")
ARRAY_GROUP = ("prefixItems", "items", "additionalItems")
LATER = ("unevaluatedProperties", "unevaluatedItems", "minContains", "maxContains", "then", "else")


def is_annotation(key: str) -> bool:
    """A keyword that says nothing about validity: the spec's annotations, editors' (SchemaStore schemas carry
    VS Code's `markdownDescription`, ...) and vendor extensions (`x-...`, which no validation keyword spells)."""
    return key in ANNOTATIONS or key in EDITOR_ANNOTATIONS or key.startswith("x-")


class Normalizer:
    """Reads schema objects into unions of `Conj`s (memoized per schema object)."""

    def __init__(self, index: Index, draft: int):
        self.index, self.draft = index, draft
        self.normal: dict[int, tuple[Conj, ...]] = {}
        self.active: list[int] = []

    def fail(self, path: str, what: str, hint: str | None = None) -> GrammarError:
        return GrammarError(f"{path}: {what}", hint=hint)

    def nesting(self) -> int:
        """How many schemas are being read around the next one."""
        return len(self.active)

    def deeper(self, path: str) -> None:
        """Refuse to read the schema at `path` inside more than MAX_NESTING others: each level is a few dozen
        Python frames, and a `$ref` chain can nest deeper than the document does."""
        if self.nesting() >= MAX_NESTING:
            raise self.fail(path, f"schemas nest more than {MAX_NESTING} deep here (through $ref, allOf, not, items, "
                            "properties, ...: the limit); flatten the schema")

    def child(self, loc: Located, *keys) -> Located:
        node = loc.schema
        for key in keys:
            node = node[key]
        return Located(node, child_path(loc.path, *keys), loc.scope)

    def at(self, target: Located, loc: Located) -> Located:
        """A `$ref`'s target, evaluated in the dynamic scope of the schema that refers to it."""
        return Located(target.schema, target.path, loc.scope)

    def normalize(self, loc: Located) -> tuple[Conj, ...]:
        schema = loc.schema
        if schema is True:
            return (TOP,)
        if schema is False:
            return ()
        if not isinstance(schema, dict):
            raise self.fail(loc.path, f"expected a schema (an object, true or false), got {shown(schema)}")
        loc = self.index.enter(loc)
        key = (id(schema), loc.scope)
        if key in self.normal:
            return self.normal[key]
        if key in self.active:
            raise self.fail(loc.path, "the schema applies itself in place ($ref, allOf, ... with no property or item "
                            "in between): an endless loop, so it is not a valid schema")
        self.deeper(loc.path)
        self.active.append(key)
        try:
            out = self.keywords(loc)
        finally:
            self.active.pop()
        self.normal[key] = out
        return out

    def keywords(self, loc: Located) -> tuple[Conj, ...]:
        schema, path = loc.schema, loc.path
        if self.draft < 2019 and "$ref" in schema:  # draft 7: "all other properties in a $ref object MUST be ignored"
            return self.normalize(self.at(self.index.resolve(schema["$ref"], self.index.base(schema), path), loc))
        declared = schema.get("$schema")
        if declared is not None and schema is not self.index.keep[0] and self.declares_other_draft(declared):
            raise self.fail(path, f"an embedded schema in another draft ($schema {shown(declared)}) is not supported")
        for key in schema:
            if self.draft < 2019 and key in ("minContains", "maxContains", "dependentRequired", "dependentSchemas", "$anchor"):
                raise self.fail(path, f"keyword {shown(key)} is not a draft 7 keyword")
            if key not in HANDLERS and not is_annotation(key) and key not in OBJECT_GROUP + ARRAY_GROUP + LATER:
                raise self.fail(path, f"keyword {shown(key)} is not supported",
                                did_you_mean(key, [*HANDLERS, *OBJECT_GROUP, *ARRAY_GROUP, *LATER]))
        out = conjoin(conjoin((TOP,), self.object_source(loc)), self.array_source(loc))
        for key, value in schema.items():
            if key in HANDLERS:
                out = conjoin(out, HANDLERS[key](self, loc, value))
                if len(out) > MAX_ALTERNATIVES:
                    raise self.fail(path, f"the schema expands to more than {MAX_ALTERNATIVES} alternatives "
                                    "(anyOf, oneOf, if, dependencies combined); simplify it")
        return self.unevaluated(loc, out)

    def declares_other_draft(self, declared: Any) -> bool:
        """Whether a `$schema` names a known draft other than the one the document is read with."""
        drafts = {"draft/2020-12": 2020, "draft-07": 7, "draft-06": 7, "draft/2019-09": 2019, "draft-04": 4, "draft-03": 3}
        named = [d for marker, d in drafts.items() if isinstance(declared, str) and marker in declared]
        return bool(named) and named[0] != self.draft

    # objects and arrays: one source per schema object

    def object_source(self, loc: Located) -> tuple[Conj, ...]:
        schema = loc.schema
        if not any(k in schema for k in OBJECT_GROUP):
            return (TOP,)
        props, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
        for key, value in (("properties", props), ("patternProperties", patterns)):
            if not isinstance(value, dict):
                raise self.fail(child_path(loc.path, key), f"{key} must be an object")
        for pattern in patterns:
            check_pattern(pattern, child_path(loc.path, "patternProperties", pattern))
        rest = self.child(loc, "additionalProperties") if "additionalProperties" in schema else None
        source = ObjectSource(
            props=tuple((name, self.child(loc, "properties", name)) for name in props),
            patterns=tuple((p, self.child(loc, "patternProperties", p)) for p in patterns),
            rest=rest, scope_names=frozenset(props), scope_patterns=tuple(patterns))
        return (Conj(objects=(source,), paths={"object": loc.path}),)

    def array_source(self, loc: Located) -> tuple[Conj, ...]:
        schema = loc.schema
        if self.draft >= 2019:
            if "additionalItems" in schema:
                raise self.fail(loc.path, "keyword 'additionalItems' is not a draft 2020-12 keyword",
                                hint="use 'items' after 'prefixItems'")
            prefix = schema.get("prefixItems", [])
            items = self.child(loc, "items") if "items" in schema else None
            prefix_key = "prefixItems"
        else:
            if "prefixItems" in schema:
                raise self.fail(loc.path, "keyword 'prefixItems' is not a draft 7 keyword", hint="use 'items': [...]")
            value = schema.get("items")
            prefix = value if isinstance(value, list) else []
            prefix_key = "items"
            if isinstance(value, list):
                items = self.child(loc, "additionalItems") if "additionalItems" in schema else None
            else:
                items = self.child(loc, "items") if "items" in schema else None
        if not isinstance(prefix, list):
            raise self.fail(child_path(loc.path, prefix_key), f"{prefix_key} must be a list of schemas")
        if not prefix and items is None:
            return (TOP,)
        source = ArraySource(prefix=tuple(self.child(loc, prefix_key, i) for i in range(len(prefix))), items=items)
        return (Conj(arrays=(source,)),)

    def unevaluated(self, loc: Located, out: tuple[Conj, ...]) -> tuple[Conj, ...]:
        """unevaluatedProperties / unevaluatedItems: for each alternative, the names and positions its own
        sources (this schema object and what it applies in place) evaluated are the scope."""
        schema = loc.schema
        if self.draft < 2019 and any(k in schema for k in ("unevaluatedProperties", "unevaluatedItems")):
            raise self.fail(loc.path, "unevaluatedProperties / unevaluatedItems are not draft 7 keywords")
        updated = []
        for c in out:
            objects, arrays = c.objects, c.arrays
            if "unevaluatedProperties" in schema:
                scope_all = any(o.rest is not None and not o.scope_all for o in objects)
                names = frozenset(n for o in objects for n, _ in o.props)
                patterns = tuple(dict.fromkeys(p for o in objects for p, _ in o.patterns))
                objects += (ObjectSource(rest=self.child(loc, "unevaluatedProperties"), scope_names=names,
                                         scope_patterns=patterns, scope_all=scope_all),)
            if "unevaluatedItems" in schema:
                scope_all = any(a.items is not None and not a.scope_all for a in arrays)
                scope = max((len(a.prefix) for a in arrays), default=0)
                arrays += (ArraySource(items=self.child(loc, "unevaluatedItems"), scope=scope, scope_all=scope_all),)
            updated.append(replace(c, objects=objects, arrays=arrays))
        return tuple(updated)


# keyword values


def whole(n: Normalizer, loc: Located, key: str, value: Any) -> int:
    """A non-negative integer keyword value (2.0 counts as 2)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
        raise n.fail(child_path(loc.path, key), f"{key} must be a non-negative integer, got {shown(value)}")
    return int(value)


def decimal(n: Normalizer, loc: Located, key: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise n.fail(child_path(loc.path, key), f"{key} must be a finite number, got {shown(value)}")
    return Decimal(value) if isinstance(value, int) else Decimal(repr(value))


def names(n: Normalizer, loc: Located, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise n.fail(child_path(loc.path, key), f"{key} must be a list of strings")
    return tuple(dict.fromkeys(value))


def schemas(n: Normalizer, loc: Located, key: str, value: Any) -> list[Located]:
    if not isinstance(value, list) or not value:
        raise n.fail(child_path(loc.path, key), f"{key} must be a non-empty list of schemas")
    return [n.child(loc, key, i) for i in range(len(value))]


# handlers: (normalizer, the schema object, the keyword's value) -> union of Conjs


def h_type(n: Normalizer, loc: Located, value: Any):
    kinds = value if isinstance(value, list) else [value]
    known = (*TYPES, "integer")
    for kind in kinds:
        if kind not in known:
            raise n.fail(child_path(loc.path, "type"), f"unknown type {shown(kind)}", did_you_mean(str(kind), known))
    types = frozenset(k if k != "integer" else "number" for k in kinds)
    return (Conj(types=types, integer="integer" in kinds and "number" not in kinds),)


def h_enum(n: Normalizer, loc: Located, value: Any):
    if not isinstance(value, list):
        raise n.fail(child_path(loc.path, "enum"), "enum must be a list")
    return (Conj(values=(tuple(value),)),)


def h_const(n: Normalizer, loc: Located, value: Any):
    return (Conj(values=((value,),)),)


def h_ref(n: Normalizer, loc: Located, value: Any):
    return n.normalize(n.at(n.index.resolve(value, n.index.base(loc.schema), loc.path), loc))


def h_dynamic_ref(n: Normalizer, loc: Located, value: Any):
    return n.normalize(n.at(n.index.resolve_dynamic(value, n.index.base(loc.schema), loc), loc))


def h_all_of(n: Normalizer, loc: Located, value: Any):
    out = (TOP,)
    for sub in schemas(n, loc, "allOf", value):
        out = conjoin(out, n.normalize(sub))
    return out


def h_any_of(n: Normalizer, loc: Located, value: Any):
    return tuple(c for sub in schemas(n, loc, "anyOf", value) for c in n.normalize(sub))


def h_one_of(n: Normalizer, loc: Located, value: Any):
    """Exactly one: branch i holds and every other branch certainly fails (its complement, per type)."""
    subs = schemas(n, loc, "oneOf", value)
    complements = [n.complement(sub) for sub in subs]
    out = []
    for i, sub in enumerate(subs):
        others = Conj(langs=tuple(c for j, c in enumerate(complements) if j != i))
        out += conjoin(n.normalize(sub), (others,))
    return tuple(out)


def h_not(n: Normalizer, loc: Located, value: Any):
    return (Conj(langs=(n.complement(n.child(loc, "not")),)),)


def h_if(n: Normalizer, loc: Located, value: Any):
    schema = loc.schema
    then = n.normalize(n.child(loc, "then")) if "then" in schema else (TOP,)
    otherwise = n.normalize(n.child(loc, "else")) if "else" in schema else (TOP,)
    condition = n.child(loc, "if")
    failed = Conj(langs=(n.complement(condition),))
    return conjoin(n.normalize(condition), then) + conjoin((failed,), otherwise)


def h_required(n: Normalizer, loc: Located, value: Any):
    return (Conj(required=names(n, loc, "required", value)),)


def dependent_required(n: Normalizer, loc: Located, key: str, value: Any):
    out = (TOP,)
    for name, needs in value.items():
        needs = names(n, loc, f"{key}.{excerpt(name)}", needs)
        out = conjoin(out, (Conj(forbidden=(name,)), Conj(required=(name, *needs))))
    return out


def h_dependent_required(n: Normalizer, loc: Located, value: Any):
    if not isinstance(value, dict):
        raise n.fail(child_path(loc.path, "dependentRequired"), "dependentRequired must be an object")
    return dependent_required(n, loc, "dependentRequired", value)


def h_dependent_schemas(n: Normalizer, loc: Located, value: Any, key: str = "dependentSchemas"):
    if not isinstance(value, dict):
        raise n.fail(child_path(loc.path, key), f"{key} must be an object")
    out = (TOP,)
    for name in value:
        if isinstance(value[name], list):  # draft 7 `dependencies`: a list is dependentRequired
            out = conjoin(out, dependent_required(n, loc, key, {name: value[name]}))
            continue
        present = conjoin((Conj(required=(name,)),), n.normalize(n.child(loc, key, name)))
        out = conjoin(out, (Conj(forbidden=(name,)),) + present)
    return out


def h_dependencies(n: Normalizer, loc: Located, value: Any):
    if n.draft >= 2019:
        raise n.fail(loc.path, "keyword 'dependencies' is not a draft 2020-12 keyword",
                     hint="use 'dependentRequired' or 'dependentSchemas'")
    return h_dependent_schemas(n, loc, value, "dependencies")


def h_contains(n: Normalizer, loc: Located, value: Any):
    schema = loc.schema
    low = whole(n, loc, "minContains", schema["minContains"]) if "minContains" in schema and n.draft >= 2019 else 1
    high = whole(n, loc, "maxContains", schema["maxContains"]) if "maxContains" in schema and n.draft >= 2019 else None
    return (Conj(contains=((n.child(loc, "contains"), low, high),), paths={"contains": loc.path}),)


def h_unique(n: Normalizer, loc: Located, value: Any):
    if not isinstance(value, bool):
        raise n.fail(child_path(loc.path, "uniqueItems"), "uniqueItems must be true or false")
    return (Conj(unique=child_path(loc.path, "uniqueItems") if value else None),)


def h_pattern(n: Normalizer, loc: Located, value: Any):
    check_pattern(value, child_path(loc.path, "pattern"))
    return (Conj(patterns=(value,)),)


def h_format(n: Normalizer, loc: Located, value: Any):
    if value not in FORMATS:
        raise n.fail(child_path(loc.path, "format"), f"format {shown(value)} is not supported",
                     "supported formats: " + ", ".join(FORMATS))
    return (Conj(formats=(value,)),)


def h_multiple(n: Normalizer, loc: Located, value: Any):
    m = decimal(n, loc, "multipleOf", value)
    if m <= 0:
        raise n.fail(child_path(loc.path, "multipleOf"), "multipleOf must be greater than 0")
    return (Conj(multiples=(m,), paths={"multipleOf": child_path(loc.path, "multipleOf")}),)


def bound(op: str, key: str):
    def handler(n: Normalizer, loc: Located, value: Any):
        return (Conj(bounds=((op, decimal(n, loc, key, value)),)),)
    return handler


def count(field: str, key: str):
    def handler(n: Normalizer, loc: Located, value: Any):
        return (Conj(**{field: whole(n, loc, key, value)}, paths={key: child_path(loc.path, key)}),)
    return handler


def h_property_names(n: Normalizer, loc: Located, value: Any):
    return (Conj(names=(n.child(loc, "propertyNames"),)),)


HANDLERS = {
    "type": h_type, "enum": h_enum, "const": h_const, "$ref": h_ref, "$dynamicRef": h_dynamic_ref, "allOf": h_all_of, "anyOf": h_any_of,
    "oneOf": h_one_of, "not": h_not, "if": h_if, "required": h_required, "dependentRequired": h_dependent_required,
    "dependentSchemas": h_dependent_schemas, "dependencies": h_dependencies, "contains": h_contains,
    "uniqueItems": h_unique, "pattern": h_pattern, "format": h_format, "multipleOf": h_multiple,
    "minimum": bound(">=", "minimum"), "maximum": bound("<=", "maximum"),
    "exclusiveMinimum": bound(">", "exclusiveMinimum"), "exclusiveMaximum": bound("<", "exclusiveMaximum"),
    "minLength": count("min_length", "minLength"), "maxLength": count("max_length", "maxLength"),
    "minItems": count("min_items", "minItems"), "maxItems": count("max_items", "maxItems"),
    "minProperties": count("min_props", "minProperties"), "maxProperties": count("max_props", "maxProperties"),
    "propertyNames": h_property_names,
}
