"""JSON values: their types and equality as JSON Schema defines them, the texts of one value (for `enum`
and `const`), and the universes: every text of a type under the whitespace convention.

Whitespace convention: at most one space (`[ ]?`) after `{` and `[`, before `}` and `]`, and on each side
of `:` and `,`; no newlines. Unconstrained values (`{}`, `true`, an object's values when nothing says
more) are nested at most `ANY_DEPTH` containers deep: a stricter subset of "any JSON value", which is
not a regular language.

    >>> from decspec.stdlib.grammars.json_schema.lang import matches
    >>> [matches(value_lang({"a": [1, None]}), s) for s in ('{"a": [1, null]}', '{"a":[1,null]}', '{"a": [1]}')]
    [True, True, False]
    >>> equal(1, 1.0), equal(True, 1), equal({"a": [1]}, {"a": [1.0]})
    (True, False, True)
"""
from __future__ import annotations

import json
from decimal import Decimal
from functools import lru_cache
from typing import Any

from decspec.dsl.diagnostics import excerpt
from decspec.stdlib.grammars.json_schema.lang import alt, as_machine, chars, opt, rep, seq, text
from decspec.stdlib.grammars.json_schema.strings import length, literal_string, string_of

TYPES = ("null", "boolean", "number", "string", "array", "object")  # "integer" is a number restricted
ANY_DEPTH = 3
COMPLEMENT_DEPTH = 2  # a complement's containers (`not`, `oneOf`, `if`) hold values at most 1 deep: smaller automata
WS = opt(text(" "))
COMMA = seq(WS, text(","), WS)
COLON = seq(WS, text(":"), WS)
DIGIT = chars((48, 57))
INTEGER = seq(opt(text("-")), alt(text("0"), seq(chars((49, 57)), rep(DIGIT, 0, None))))
NUMBER = seq(INTEGER, opt(seq(text("."), rep(DIGIT, 1, None))),
             opt(seq(chars((69, 69), (101, 101)), opt(chars((43, 43), (45, 45))), rep(DIGIT, 1, None))))
EXPONENT = seq(INTEGER, opt(seq(text("."), rep(DIGIT, 1, None))), chars((69, 69), (101, 101)),
               opt(chars((43, 43), (45, 45))), rep(DIGIT, 1, None))  # the number texts with an exponent
INTEGRAL = alt(seq(INTEGER, opt(seq(text("."), rep(text("0"), 1, None)))), EXPONENT)  # all integer-valued texts, and more
BOOLEAN = alt(text("true"), text("false"))
NULL = text("null")


def shown(value: Any) -> str:
    """A schema value in a message: a short, escaped excerpt (a schema may come from a file anyone pointed at)."""
    return f"'{excerpt(value)}'" if isinstance(value, str) else excerpt(json.dumps(value))


def type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def is_integer(value: Any) -> bool:
    return type_of(value) == "number" and (isinstance(value, int) or value == int(value))


def equal(a: Any, b: Any) -> bool:
    """JSON Schema equality: numbers by value (1 == 1.0), never a boolean and a number, objects unordered."""
    kind = type_of(a)
    if kind != type_of(b):
        return False
    if kind == "array":
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if kind == "object":
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return a == b


def number_lang(value: int | float):
    """Every JSON text of a number without an exponent: its digits, then any number of trailing zeros."""
    whole, _, fraction = format(abs(Decimal(repr(value) if isinstance(value, float) else value)), "f").partition(".")
    fraction = fraction.rstrip("0")
    tail = seq(text("." + fraction), rep(text("0"), 0, None)) if fraction else opt(seq(text("."), rep(text("0"), 1, None)))
    sign = opt(text("-")) if value == 0 else text("-") if value < 0 else seq()
    return seq(sign, text(whole), tail)


def number_texts(value: int | float) -> list[str]:
    """JSON texts of a number: its `json.dumps`, its plain decimal form, and its integer form when integral."""
    out = [json.dumps(value)]
    if isinstance(value, float):
        plain = format(Decimal(repr(value)), "f")
        out += [plain] if "." in plain or "e" in repr(value) else [plain, plain + ".0"]
        if value == int(value):
            out.append(str(int(value)))
    return list(dict.fromkeys(out))


def value_lang(value: Any):
    """The texts of `value` under the whitespace convention (strings in every escaping)."""
    kind = type_of(value)
    if kind == "null":
        return NULL
    if kind == "boolean":
        return text("true" if value else "false")
    if kind == "number":
        return number_lang(value)
    if kind == "string":
        return literal_string(value)
    if kind == "array":
        items = [value_lang(v) for v in value]
        body = [items[0], *(seq(COMMA, v) for v in items[1:])] if items else []
        return seq(text("["), WS, *body, WS, text("]"))
    pairs = [seq(literal_string(k), COLON, value_lang(v)) for k, v in value.items()]
    body = [pairs[0], *(seq(COMMA, p) for p in pairs[1:])] if pairs else []
    return seq(text("{"), WS, *body, WS, text("}"))


def value_over(value: Any):
    """A superset of the texts of every value equal to `value` (None: no information)."""
    kind = type_of(value)
    if kind == "number":
        return alt(number_lang(value), EXPONENT)
    if kind == "array":
        items = [value_over(v) for v in value]
        if any(i is None for i in items):
            return None
        body = [items[0], *(seq(COMMA, v) for v in items[1:])] if items else []
        return seq(text("["), WS, *body, WS, text("]"))
    if kind == "object":
        return value_lang(value) if len(value) <= 1 and all(value_exact(v) for v in value.values()) else None
    return value_lang(value)


def value_exact(value: Any) -> bool:
    """Whether `value_lang(value)` holds every text of every value equal to it (numbers have more: 1e0)."""
    kind = type_of(value)
    if kind == "number":
        return False
    if kind == "array":
        return all(value_exact(v) for v in value)
    if kind == "object":
        return len(value) <= 1 and all(value_exact(v) for v in value.values())
    return True


def container(item, key=None):
    """Arrays of `item`, or objects with keys `key` and values `item`, any length."""
    if key is not None:
        item = seq(key, COLON, item)
    open_, close = ("{", "}") if key is not None else ("[", "]")
    return seq(text(open_), WS, opt(seq(item, rep(seq(COMMA, item), 0, None))), WS, text(close))


STRING = string_of(length(0, None))


@lru_cache(maxsize=None)
def any_value(depth: int = ANY_DEPTH):
    """Every JSON value nested at most `depth` containers deep, as one automaton."""
    scalars = alt(NULL, BOOLEAN, NUMBER, STRING)
    if depth == 0:
        return as_machine(scalars)
    inner = any_value(depth - 1)
    return as_machine(alt(scalars, container(inner), container(inner, STRING)))


@lru_cache(maxsize=None)
def universe(kind: str, depth: int = ANY_DEPTH):
    """Every text of one type (containers with values nested at most `depth` - 1 containers deep)."""
    if kind in ("array", "object"):
        inner = any_value(depth - 1)
        return as_machine(container(inner, STRING if kind == "object" else None))
    return {"null": NULL, "boolean": BOOLEAN, "number": NUMBER, "string": as_machine(STRING)}[kind]
