"""A schema document as the compiler reads it: JSON values only, nested at most `MAX_DEPTH` deep, every
number one that JSON text can hold. Checked once, before anything walks the document, so no reader
recurses past Python's stack and no `NaN` or `Infinity` reaches a grammar (its output would not be JSON).

    >>> parse('{"enum": [1, NaN]}')
    Traceback (most recent call last):
    ...
    decspec.stdlib.grammars.errors.GrammarError: error: $.enum[1]: NaN is not a JSON number (JSON has no NaN or Infinity)
    >>> check_document({"const": 1e400})
    Traceback (most recent call last):
    ...
    decspec.stdlib.grammars.errors.GrammarError: error: $.const: inf is not a JSON number (JSON has no NaN or Infinity)
"""
from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from decspec.dsl.diagnostics import excerpt
from decspec.stdlib.grammars.errors import GrammarError
from decspec.stdlib.grammars.json_schema.refs import child_path

MAX_DEPTH = 64  # arrays and objects inside each other, anywhere in a document (enum and const values too)
MAX_DIGITS = sys.get_int_max_str_digits() or 4300  # the longest integer Python reads from text (sys.int_info)
NOT_A_NUMBER = "is not a JSON number (JSON has no NaN or Infinity)"


class Unreadable:
    """A number the JSON reader met that JSON cannot hold (`NaN`, `Infinity`, `1e400`) or Python will not
    read (an integer longer than `MAX_DIGITS`): kept as its text, refused where it stands."""

    def __init__(self, what: str):
        self.what = what  # what it is and why it is refused


def parse(text: str) -> Any:
    """The value of a JSON text, checked by `check_document`. A text that is not JSON raises
    `json.JSONDecodeError` (its message names the line and column, never the text); one that nests too deep
    to read raises GrammarError at the line and column where it passes `MAX_DEPTH`."""
    try:
        value = json.loads(text, parse_constant=lambda name: Unreadable(f"{name} {NOT_A_NUMBER}"),
                           parse_float=read_float, parse_int=read_int)
    except RecursionError:
        raise too_deep_text(text) from None
    check_document(value)
    return value


def read_float(text: str) -> float | Unreadable:
    value = float(text)
    if math.isfinite(value):
        return value
    return Unreadable(f"{excerpt(text)} is beyond the range of a double (it reads as infinity)")


def read_int(text: str) -> int | Unreadable:
    digits = len(text.lstrip("-"))
    if digits <= MAX_DIGITS:
        return int(text)
    return Unreadable(f"an integer of {digits:,} digits is over the limit of {MAX_DIGITS:,}")


def too_deep_text(text: str) -> GrammarError:
    """The error for a JSON text that nests deeper than `MAX_DEPTH`, at the bracket that passes it."""
    depth = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', text):
        bracket = match.group()
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, match.start()) + 1
                column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
                return GrammarError(f"line {line} column {column}: the JSON nests arrays and objects more than "
                                    f"{MAX_DEPTH} deep (the limit)")
        elif bracket in "]}":
            depth -= 1
    return GrammarError(f"the JSON nests arrays and objects more than {MAX_DEPTH} deep (the limit)")


def check_document(document: Any, path: str = "$") -> None:
    """GrammarError at the JSON path of the first value the compiler cannot take: nested more than
    `MAX_DEPTH` deep, a number JSON cannot hold (NaN, infinities; `Unreadable` from `parse`), an object key
    that is not a string, or a Python value with no JSON form."""
    stack = [(document, path, 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                raise GrammarError(f"{where}: the document nests arrays and objects more than {MAX_DEPTH} deep "
                                   "(the limit)")
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise GrammarError(f"{where}: an object key must be a string, got {type(key).__name__} "
                                           f"{excerpt(repr(key))}")
                    stack.append((item, child_path(where, key), depth + 1))
            else:
                stack.extend((item, child_path(where, i), depth + 1) for i, item in enumerate(value))
        elif isinstance(value, Unreadable):
            raise GrammarError(f"{where}: {value.what}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise GrammarError(f"{where}: {value} {NOT_A_NUMBER}")
        elif isinstance(value, int) and value.bit_length() * math.log10(2) > MAX_DIGITS:
            raise GrammarError(f"{where}: an integer of about {value.bit_length() * math.log10(2):,.0f} digits is over "
                               f"the limit of {MAX_DIGITS:,}")
        elif value is not None and not isinstance(value, (str, int, float)):
            raise GrammarError(f"{where}: a {type(value).__name__} is not a JSON value")
