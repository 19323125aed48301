"""Scalar values of the .dec language: the parameter types, checking a Python value against
one, reading a command-line string as one, and naming values and kinds in messages.

    >>> coerce(4, "float"), coerce([1, 2], "list[int]")
    (4.0, (1, 2))
    >>> from_text("true", "bool"), from_text("1, 2", "list[float]")
    (True, (1.0, 2.0))
"""
from __future__ import annotations

import math
import numbers
from typing import Any

PARAM_TYPES = ("int", "float", "str", "bool", "list[int]", "list[float]", "list[str]")
INT_LIMIT = 2**63  # ints are 64-bit: |value| < INT_LIMIT

# How a message names what a slot or parameter holds: "expected a sampler, found a number".
KIND_NOUNS = {
    "model": "model",
    "sampler": "sampler",
    "draft": "draft source",
    "exit": "exit policy",
    "verifier": "verifier",
    "stat": "draft statistic",
    "grammar": "grammar",
    "search": "search strategy",
    "denoise": "denoising schedule",
    "unmask": "unmasking rule",
    "int": "int",
    "float": "float",
    "str": "string",
    "bool": "bool",
    "cond": "condition",
    "list[int]": "list of ints",
    "list[float]": "list of floats",
    "list[str]": "list of strings",
}


class Mismatch(Exception):
    """A value does not have the expected type; `found` names what it is instead."""

    def __init__(self, found: str):
        super().__init__(found)
        self.found = found


def a(noun: str) -> str:
    """'a sampler', 'an int', 'an exit policy'."""
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def expected(type_or_kind: str) -> str:
    """The noun phrase for what a slot or parameter expects: 'a sampler', 'an int'."""
    return a(KIND_NOUNS.get(type_or_kind, type_or_kind))


def describe(value: Any) -> str:
    """The noun phrase for a Python value in a message: 'a float (2.5)', 'a list'."""
    if isinstance(value, bool):
        return f"a bool ({'true' if value else 'false'})"
    if isinstance(value, numbers.Integral):
        return f"an int ({value})" if abs(value) < INT_LIMIT else "an int too large for 64 bits"
    if isinstance(value, numbers.Real):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, (list, tuple)):
        return "a list"
    return a(type(value).__name__)


def coerce(value: Any, type_: str) -> Any:
    """The value as a `type_` (int is accepted where float is expected; bool is not an int; a float
    must be finite); lists become tuples. Raises Mismatch otherwise."""
    if type_.startswith("list["):
        if not isinstance(value, (list, tuple)):
            raise Mismatch(describe(value))
        return tuple(coerce(item, type_[5:-1]) for item in value)
    if isinstance(value, bool):
        if type_ == "bool":
            return value
    elif isinstance(value, numbers.Integral) and abs(value) >= INT_LIMIT:
        pass
    elif type_ == "int" and isinstance(value, numbers.Integral):
        return int(value)
    elif type_ == "float" and isinstance(value, numbers.Real):
        if not math.isfinite(value):  # inf and nan are no value of any parameter: each has a finite range
            raise Mismatch(f"a non-finite float ({value})")
        return float(value)
    elif type_ == "str" and isinstance(value, str):
        return value
    raise Mismatch(describe(value))


def from_text(text: str, type_: str) -> Any:
    """Read a command-line override (`k=6`, `flag=true`, `arms=2,4,8`) as a `type_`.
    Raises ValueError when the text is not one."""
    text = text.strip()
    if type_.startswith("list["):
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        return tuple(from_text(part, type_[5:-1]) for part in inner.split(",") if part.strip())
    if type_ == "int":
        return int(text)
    if type_ == "float":
        return float(text)
    if type_ == "bool":
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError(text)
    if type_ == "str":
        quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'"
        return text[1:-1] if quoted else text
    raise ValueError(text)
