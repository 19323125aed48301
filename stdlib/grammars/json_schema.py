"""JSON Schema -> regex (in the `regex.py` subset), and a list of literal choices -> regex.

    >>> schema_to_regex({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    '\\\\{[ ]?"ok"[ ]?:[ ]?(?:true|false)[ ]?\\\\}'
    >>> choice_to_regex(["red", "green"])
    '(?:red|green)'

Whitespace: at most one space (`[ ]?`) after `{` and `[`, before `}` and `]`, and on each side of `:` and
`,`, so both `json.dumps(x)` and `json.dumps(x, separators=(",", ":"))` match; no newlines or indentation.
Objects are closed: only the declared properties, in declared order; the required ones always, the
others may be left out. `additionalProperties: <schema>` is supported on an object without `properties`
(a string-keyed map). A keyword outside `SUPPORTED` and `ANNOTATIONS` raises `GrammarError` naming its
JSON path.
"""
from __future__ import annotations

import json
import re
from typing import Any

from decspec.dsl.diagnostics import did_you_mean, excerpt
from decspec.stdlib.grammars.errors import GrammarError
from decspec.stdlib.grammars.regex import parse_regex

WS = "[ ]?"
COMMA = f"{WS},{WS}"
COLON = f"{WS}:{WS}"
HEX = "[0-9a-fA-F]"
CHAR = (  # one JSON string character: itself, a short escape, a \uXXXX escape, or an escaped surrogate pair
    r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-Ce-fE-F]' + HEX + r'{3}|[dD][0-7]' + HEX + r'{2})'
    r'|\\u[dD][89abAB]' + HEX + r'{2}\\u[dD][c-fC-F]' + HEX + r'{2})'
)
STRING = f'"{CHAR}*"'
INTEGER = r"-?(?:0|[1-9][0-9]*)"
NUMBER = INTEGER + r"(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
TYPES = {"integer": INTEGER, "number": NUMBER, "boolean": "(?:true|false)", "null": "null"}
DATE = r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
FORMATS = {
    "date": DATE,
    "time": TIME,
    "date-time": f"{DATE}T{TIME}",
    "email": r"[a-zA-Z0-9._%+-]{1,64}@[a-zA-Z0-9-]{1,63}(?:\.[a-zA-Z0-9-]{1,63}){0,8}\.[a-zA-Z]{2,24}",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
}

SUPPORTED = (
    "type", "properties", "required", "additionalProperties", "enum", "const", "items", "minItems", "maxItems",
    "minLength", "maxLength", "pattern", "format", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
)
ANNOTATIONS = ("title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
               "readOnly", "writeOnly")
UNSUPPORTED = (
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems", "contains",
    "minContains", "maxContains", "prefixItems", "additionalItems", "unevaluatedItems", "unevaluatedProperties",
    "patternProperties", "propertyNames", "minProperties", "maxProperties", "dependentRequired",
    "dependentSchemas", "dependencies", "if", "then", "else", "not", "$dynamicRef", "$anchor", "contentEncoding",
    "contentMediaType",
)


def shown(value: Any) -> str:
    """A schema value in a message: a short, escaped excerpt (a schema may come from a file anyone pointed at)."""
    return f"'{excerpt(value)}'" if isinstance(value, str) else excerpt(json.dumps(value))


def literal(value: Any) -> str:
    """A regex matching exactly `json.dumps(value)` (non-ASCII characters written as themselves)."""
    return re.escape(json.dumps(value, ensure_ascii=False))


def alternatives(options: list[str]) -> str:
    return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"


def choice_to_regex(options: list[str]) -> str:
    """A regex accepting exactly one of the literal strings in `options`."""
    if not options or not all(isinstance(o, str) for o in options):
        raise GrammarError("choice([...]) needs a non-empty list of strings")
    return "(?:" + "|".join(re.escape(o) for o in options) + ")"


def schema_to_regex(schema: dict | str) -> str:
    """The regex of the JSON texts valid under `schema` (a dict, or its JSON text); see the module doc."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise GrammarError("$: a JSON schema must be an object")
    return Translator(schema).translate(schema, "$")


class Translator:
    """One schema -> regex translation: the root (for `$ref`) and the refs being expanded (to find cycles)."""

    def __init__(self, root: dict):
        self.root = root
        self.expanding: list[str] = []

    def fail(self, path: str, what: str, hint: str | None = None) -> GrammarError:
        return GrammarError(f"{path}: {what}", hint=hint)

    def translate(self, schema: Any, path: str) -> str:
        if schema is True:
            raise self.fail(path, "'true' (any JSON value) is not supported yet")
        if not isinstance(schema, dict):
            raise self.fail(path, f"expected a schema object, got {shown(schema)}")
        for key in schema:
            if key not in SUPPORTED and key not in ANNOTATIONS:
                hint = did_you_mean(key, SUPPORTED) if key not in UNSUPPORTED else None
                raise self.fail(path, f"keyword {shown(key)} is not supported", hint)
        if "$ref" in schema:
            return self.ref(schema, path)
        for key in ("anyOf", "oneOf"):  # oneOf as anyOf: exclusivity is not enforced
            if key in schema:
                return self.union(schema, key, path)
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise self.fail(path, "allOf is supported with exactly one schema", "merge the schemas by hand")
            return self.translate(parts[0], f"{path}.allOf[0]")
        if "const" in schema:
            return literal(schema["const"])
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise self.fail(path, "enum must be a non-empty list")
            return alternatives([literal(v) for v in schema["enum"]])
        kind = schema.get("type")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind is None:
            raise self.fail(path, "a schema without 'type' (any JSON value) is not supported yet", "give it a 'type'")
        if isinstance(kind, list):
            return alternatives([self.typed(schema, k, path) for k in kind])
        return self.typed(schema, kind, path)

    def ref(self, schema: dict, path: str) -> str:
        ref = schema["$ref"]
        parts = ref.split("/") if isinstance(ref, str) else []
        if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
            raise self.fail(f"{path}.$ref", f"only '#/$defs/NAME' and '#/definitions/NAME' refs are supported, got {shown(ref)}")
        target = self.root.get(parts[1], {}).get(parts[2])
        if target is None:
            raise self.fail(f"{path}.$ref", f"{shown(ref)} names no definition",
                            did_you_mean(parts[2], self.root.get(parts[1], {})))
        if ref in self.expanding:
            raise self.fail(f"{path}.$ref", f"recursive $ref {shown(ref)}: a recursive schema is not a regular language; "
                            "use a lark grammar (not yet supported)")
        self.expanding.append(ref)
        try:
            return self.translate(target, f"$.{parts[1]}.{excerpt(parts[2])}")
        finally:
            self.expanding.pop()

    def union(self, schema: dict, key: str, path: str) -> str:
        options = schema[key]
        if not isinstance(options, list) or not options:
            raise self.fail(path, f"{key} must be a non-empty list of schemas")
        return alternatives([self.translate(s, f"{path}.{key}[{i}]") for i, s in enumerate(options)])

    def typed(self, schema: dict, kind: str, path: str) -> str:
        if kind == "string":
            return self.string(schema, path)
        if kind == "object":
            return self.object(schema, path)
        if kind == "array":
            return self.array(schema, path)
        if kind in TYPES:
            return TYPES[kind]
        raise self.fail(f"{path}.type", f"unknown type {shown(kind)}", did_you_mean(str(kind), [*TYPES, "string", "object", "array"]))

    def string(self, schema: dict, path: str) -> str:
        combined = [k for k in ("minLength", "maxLength", "format") if k in schema]
        if "pattern" in schema and combined:
            raise self.fail(path, f"'pattern' together with '{combined[0]}' is not supported", "fold it into the pattern")
        if "pattern" in schema:  # anchors are implied: the pattern must match the whole value
            pattern = schema["pattern"]
            pattern = pattern[1:] if pattern.startswith("^") else pattern
            pattern = pattern[:-1] if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
            try:
                parse_regex(pattern)
            except GrammarError as e:
                raise self.fail(f"{path}.pattern", e.message) from None
            return f'"(?:{pattern})"'
        if "format" in schema:
            if schema["format"] not in FORMATS:
                raise self.fail(f"{path}.format", f"format {shown(schema['format'])} is not supported",
                                "supported formats: " + ", ".join(FORMATS))
            return f'"{FORMATS[schema["format"]]}"'
        lo, hi = self.bounds(schema, "minLength", "maxLength", path)
        if (lo, hi) == (0, None):
            return STRING
        return f'"{CHAR}{{{lo},{"" if hi is None else hi}}}"'

    def bounds(self, schema: dict, low: str, high: str, path: str) -> tuple[int, int | None]:
        lo, hi = schema.get(low, 0), schema.get(high)
        for key, value in ((low, lo), (high, hi)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise self.fail(f"{path}.{key}", f"{key} must be a non-negative integer")
        if hi is not None and lo > hi:
            raise self.fail(path, f"{low} {lo} is greater than {high} {hi}: nothing is valid")
        return lo, hi

    def array(self, schema: dict, path: str) -> str:
        if "items" not in schema:
            raise self.fail(path, "an array without 'items' (any JSON values) is not supported yet", "give it 'items'")
        item = self.translate(schema["items"], f"{path}.items")
        lo, hi = self.bounds(schema, "minItems", "maxItems", path)
        if hi == 0:
            return rf"\[{WS}\]"
        rest_hi = "" if hi is None else hi - 1
        body = f"{item}(?:{COMMA}{item}){{{max(lo - 1, 0)},{rest_hi}}}"
        if lo == 0:
            body = f"(?:{body})?"
        return rf"\[{WS}{body}{WS}\]"

    def object(self, schema: dict, path: str) -> str:
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", False)
        if not isinstance(properties, dict):
            raise self.fail(f"{path}.properties", "properties must be an object")
        if extra is not False and (properties or extra is True):
            raise self.fail(f"{path}.additionalProperties", "only additionalProperties: false (the default here), or a "
                            "schema on an object without 'properties', is supported")
        if extra is not False:  # a map: any string keys, each value valid under `extra`
            pair = f"{STRING}{COLON}{self.translate(extra, f'{path}.additionalProperties')}"
            return rf"\{{{WS}(?:{pair}(?:{COMMA}{pair})*)?{WS}\}}"
        required = schema.get("required", [])
        missing = [name for name in required if name not in properties]
        if missing:
            raise self.fail(f"{path}.required", f"required property {shown(missing[0])} is not in 'properties'")
        names = list(properties)
        pairs = [f"{literal(name)}{COLON}{self.translate(properties[name], f'{path}.properties.{excerpt(name)}')}" for name in names]
        needed = [name in required for name in names]

        def after(i: int) -> str:  # properties i.. once one has been written: each starts with a comma
            return "".join(f"{COMMA}{p}" if need else f"(?:{COMMA}{p})?" for p, need in zip(pairs[i:], needed[i:]))

        def first(i: int) -> str:  # properties i.. when none has been written yet
            if i == len(pairs):
                return ""
            if needed[i]:
                return pairs[i] + after(i + 1)
            rest = first(i + 1)
            return f"(?:{pairs[i]}{after(i + 1)}" + (f"|{rest})" if rest else ")?")

        return rf"\{{{WS}{first(0)}{WS}\}}"
