"""The one error a grammar raises for bad user input: a `DecError`, so the CLI and the spec checker print it
like every other decspec error.

    >>> str(GrammarError("regex \\"a(b\\" at column 2: unclosed group; close it with ')'"))
    'error: regex "a(b" at column 2: unclosed group; close it with \\')\\''
"""
from __future__ import annotations

from decspec.dsl.diagnostics import DecError


class GrammarError(DecError):
    """A regex, JSON Schema or choice list that cannot be compiled, or a vocabulary that cannot express it.

    `message` is the one-line text without the `error:` prefix that `str()` adds.
    """

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        super().__init__(message, hint=hint)


class TooLarge(GrammarError):
    """A grammar past one of the automaton's size limits (automaton.py). Raised where the automaton is built,
    which knows no place; `at(place)` adds the place a caller knows (a JSON Schema's path), once, so the
    innermost caller's place is the one named.

    >>> str(TooLarge("the grammar is too large").at("$.items").at("$"))
    'error: $.items: the grammar is too large'
    """

    def __init__(self, message: str, hint: str | None = None, placed: bool = False):
        super().__init__(message, hint=hint)
        self.hint, self.placed = hint, placed

    def at(self, place: str) -> TooLarge:
        return self if self.placed else TooLarge(f"{place}: {self.message}", self.hint, placed=True)
