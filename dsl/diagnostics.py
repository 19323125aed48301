"""Diagnostics: every user-facing error names file:line:col, shows the line with a caret,
says what was expected, and suggests the nearest known name.

What a diagnostic quotes of a file is bounded: a file decspec read because a spec named it may be
anything (`import "/proc/self/environ"`), so its text is shown only as far as it parsed as .dec
(`Source.quotable`), lines at most `LINE_WIDTH` characters and other excerpts at most `EXCERPT`, with
control characters escaped.

    >>> src = Source("decoder d() { verfy = rejection }", "d.dec")
    >>> err = DecError([Diagnostic("unknown slot 'verfy'", Span(src, 14, 19), hint="did you mean 'verify'?")])
    >>> print(err)  # doctest: +NORMALIZE_WHITESPACE
    d.dec:1:15: error: unknown slot 'verfy'
        decoder d() { verfy = rejection }
                      ^^^^^
      hint: did you mean 'verify'?
"""
from __future__ import annotations

import bisect
import difflib
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence


EXCERPT = 40  # the most characters of a file's text one message quotes
LINE_WIDTH = 120  # the most characters of a source line shown under a message


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """At most `limit` characters of `text` for a message: control characters escaped, "..." where it is cut.

        >>> excerpt("token=\\x1b[2J" + "x" * 50, 20)
        'token=\\\\x1b[2Jxxxxxxx...'
    """
    out, used = [], 0
    for c in text:
        shown = _visible(c)
        if used + len(shown) > limit:
            return "".join(out) + "..."
        out.append(shown)
        used += len(shown)
    return "".join(out)


def _visible(c: str) -> str:
    return c if c.isprintable() else c.encode("unicode_escape").decode("ascii")


class LineIndex:
    """Where each line of a text starts, found once (on first use) for every diagnostic of the text.

    A line ends at "\\n" and only there, as the .dec lexer counts lines (a "\\r" before it is not shown):
    U+2028, form feeds and the other characters `str.splitlines` breaks at are characters of a line,
    shown escaped.

        >>> index = LineIndex("a\\fb\\nc\\u2028d\\r\\ne")
        >>> index.line_col(2), index.line_col(4), index.line_text(2), index.line_text(3)
        ((1, 3), (2, 1), 'c\\u2028d', 'e')
    """

    __slots__ = ("text", "_starts")
    builds = 0  # how many texts were indexed (tests check each is indexed once, however many diagnostics it has)

    def __init__(self, text: str):
        self.text = text
        self._starts: list[int] | None = None

    @property
    def starts(self) -> list[int]:
        """The offset each line starts at: [0, one past each "\\n"]."""
        if self._starts is None:
            LineIndex.builds += 1
            starts, at = [0], self.text.find("\n")
            while at >= 0:
                starts.append(at + 1)
                at = self.text.find("\n", at + 1)
            self._starts = starts
        return self._starts

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset (clamped to the text)."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self.starts, offset)
        return line, offset - self.starts[line - 1] + 1

    def line_start(self, line: int) -> int:
        return self.starts[line - 1]

    def line_text(self, line: int) -> str:
        """Line `line` (1-based) without its line break; "" past the end."""
        starts = self.starts
        if not 0 < line <= len(starts):
            return ""
        end = starts[line] - 1 if line < len(starts) else len(self.text)
        return self.text[starts[line - 1]:end].removesuffix("\r")


@dataclass(frozen=True)
class Source:
    """The text of one .dec file (or of an inline spec), with its display name.

    `quotable`: how much of the text diagnostics may show. None: all of it (text handed to decspec, or a
    file that parsed as .dec); n: the first n characters (a file read because something named it, as far
    as it parsed: 0 until it does). See `dsl.parser.parse`. `lines`: the text's line index, shared by the
    copies `quoting` makes, so a text is split into lines once however many diagnostics point into it.
    """

    text: str
    name: str = "<spec>"
    quotable: int | None = field(default=None, compare=False)
    lines: LineIndex | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.lines is None or self.lines.text is not self.text:
            object.__setattr__(self, "lines", LineIndex(self.text))

    def excerpt(self, start: int, end: int) -> str | None:
        """text[start:end] for a message (at most EXCERPT characters, escaped), or None where it may not be quoted."""
        if self.quotable is not None and end > self.quotable:
            return None
        return excerpt(self.text[start:end])

    def quoting(self, end: int | None) -> Source:
        """This source, with at most its first `end` characters quotable (None: all)."""
        return self if end == self.quotable else replace(self, quotable=end)

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a character offset."""
        return self.lines.line_col(offset)

    def line_text(self, line: int) -> str:
        return self.lines.line_text(line)

    def shown_line(self, line: int) -> str:
        """The part of a line that diagnostics may quote (see `quotable`)."""
        text = self.line_text(line)
        if self.quotable is None or not text:
            return text
        return text[:max(0, self.quotable - self.lines.line_start(line))]


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
        text = self.span.source.shown_line(line)
        end_line, _ = self.span.source.line_col(max(self.span.start, self.span.end - 1))
        width = max(1, (self.span.end - self.span.start) if end_line == line else len(text) - col + 1)
        width = min(width, max(1, len(text) - col + 1))
        out = [f"{self.span}: {self.severity}: {self.message}"]
        if text:
            out.extend(_underlined(text, col - 1, width))
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


def _underlined(text: str, at: int, width: int) -> list[str]:
    """A source line (control characters escaped, tabs as one space, a window of at most LINE_WIDTH
    characters around the span) and the carets under the span's `width` characters from `at`."""
    shown = [" " if c == "\t" else _visible(c) for c in text]
    left = len("".join(shown[:at]))
    marked = max(1, len("".join(shown[at:at + width])))
    line = "".join(shown)
    start = max(0, min(left - LINE_WIDTH // 3, len(line) - LINE_WIDTH))
    window = line[start:start + LINE_WIDTH]
    window = ("..." + window[3:] if start else window)
    window = window[:-3] + "..." if start + LINE_WIDTH < len(line) else window
    marked = min(marked, max(1, LINE_WIDTH - (left - start)))
    return ["    " + window, "    " + " " * (left - start) + "^" * marked]


class DecError(Exception):
    """The only exception decspec raises for bad user input. Carries one or more diagnostics.

    Rendered when shown, not when raised (a caught DecError costs no rendering), and once: the text is kept
    for as long as the diagnostics are the same."""

    def __init__(self, diagnostics: Sequence[Diagnostic] | Diagnostic | str, span: Span | None = None, hint: str | None = None):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic(diagnostics, span, hint=hint)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        self._rendered: tuple[tuple[Diagnostic, ...], str] | None = None
        super().__init__(self.diagnostics)

    def render(self) -> str:
        shown = tuple(self.diagnostics)
        if self._rendered is None or len(self._rendered[0]) != len(shown) or any(
                a is not b for a, b in zip(self._rendered[0], shown)):
            self._rendered = (shown, "\n".join(d.render() for d in shown))
        return self._rendered[1]

    def __str__(self) -> str:
        return self.render()


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """'did you mean ...?' for the closest known names, or None."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
