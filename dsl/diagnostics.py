"""Diagnostics: every user-facing error names file:line:col, shows the line with a caret,
says what was expected, and suggests the nearest known name.

    >>> src = Source("decoder d() { verfy = rejection }", "d.dec")
    >>> err = DecError([Diagnostic("unknown slot 'verfy'", Span(src, 14, 19), hint="did you mean 'verify'?")])
    >>> print(err)  # doctest: +NORMALIZE_WHITESPACE
    d.dec:1:15: error: unknown slot 'verfy'
        decoder d() { verfy = rejection }
                      ^^^^^
      hint: did you mean 'verify'?
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Source:
    """The text of one .dec file (or of an inline spec), with its display name."""

    text: str
    name: str = "<spec>"

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        offset = max(0, min(offset, len(self.text)))
        line = self.text.count("\n", 0, offset) + 1
        start = self.text.rfind("\n", 0, offset) + 1
        return line, offset - start + 1

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A half-open character range [start, end) in a Source."""

    source: Source = field(repr=False, compare=False)
    start: int
    end: int

    @property
    def line(self) -> int:
        return self.source.line_col(self.start)[0]

    @property
    def col(self) -> int:
        return self.source.line_col(self.start)[1]

    def __str__(self) -> str:
        return f"{self.source.name}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    message: str
    span: Span | None
    severity: str = "error"  # "error" | "warning"
    hint: str | None = None

    def render(self) -> str:
        if self.span is None:
            head = f"{self.severity}: {self.message}"
            return head + (f"\n  hint: {self.hint}" if self.hint else "")
        line, col = self.span.line, self.span.col
        text = self.span.source.line_text(line)
        end_line, _ = self.span.source.line_col(max(self.span.start, self.span.end - 1))
        width = max(1, (self.span.end - self.span.start) if end_line == line else len(text) - col + 1)
        width = min(width, max(1, len(text) - col + 1))
        out = [f"{self.span}: {self.severity}: {self.message}"]
        if text:
            out.append("    " + text)
            out.append("    " + " " * (col - 1) + "^" * width)
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


class DecError(Exception):
    """The only exception decspec raises for bad user input. Carries one or more diagnostics."""

    def __init__(self, diagnostics: Sequence[Diagnostic] | Diagnostic | str, span: Span | None = None, hint: str | None = None):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(diagnostics, span, hint=hint)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)

    def __str__(self) -> str:
        return self.render()


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """'did you mean ...?' for the closest known names, or None."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
