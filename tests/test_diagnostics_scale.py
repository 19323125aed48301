"""Diagnostics at scale (issue 16, item 6): rendering is linear in the file and the diagnostics, and line numbers
agree with the line shown.

- A source is split into lines once (`LineIndex`), however many diagnostics point into it, and a DecError renders
  each diagnostic once, however often it is shown: counted, not timed, on a 2 MB spec with thousands of warnings.
- A line ends at "\\n" only (a "\\r" before it is not shown): U+2028, form feeds, vertical tabs and the other
  characters `str.splitlines` breaks at stay inside their line, so the number and the line shown always agree
  (hypothesis over sources and offsets, and over specs with such characters in comments and whitespace).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError, Diagnostic, LineIndex, Source, Span

BREAKS = ["\u2028", "\u2029", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\x85", "\r"]  # splitlines() breaks here; the lexer does not


def many_warnings(n: int, pad_lines: int) -> str:
    """A spec of about pad_lines * 600 characters with n unused model bindings (n warnings)."""
    pad = ("# " + "x" * 600 + "\n") * pad_lines
    body = "\n".join(f'    m{i} = model("m{i}")' for i in range(n))
    return pad + 'decoder d() {\n    target = model("target")\n' + body + "\n}\n"


@pytest.fixture
def counted(monkeypatch):
    """(builds of a line index, renders of a diagnostic) from now on."""
    rendered = []
    render = Diagnostic.render
    monkeypatch.setattr(Diagnostic, "render", lambda self: rendered.append(self) or render(self))
    start = LineIndex.builds
    return lambda: (LineIndex.builds - start, len(rendered))


def test_thousands_of_warnings_in_a_2mb_spec_index_the_file_once(counted):
    text = many_warnings(4000, 3400)
    assert len(text) > 2_000_000
    spec = load(text)
    assert len(spec.warnings) == 4000
    shown = [w.render() for w in spec.warnings]
    assert counted() == (1, 4000)
    assert shown[-1].startswith(f"<spec>:{3400 + 2 + 4000}:5: warning: unused model binding 'm3999'")
    assert '        m3999 = model("m3999")' in shown[-1]


def test_a_dec_error_renders_each_diagnostic_once_however_often_it_is_shown(counted):
    source = Source("x\n" * 100_000)
    error = DecError([Diagnostic(f"problem {i}", Span(source, 2 * i, 2 * i + 1)) for i in range(0, 100_000, 7)])
    assert counted() == (0, 0)  # raising renders nothing
    first, again, printed = error.render(), str(error), f"{error}"
    assert first == again == printed
    assert counted() == (1, len(error.diagnostics))


def test_copies_of_a_source_share_its_index(counted):
    source = Source("a\nb\n" * 1000, "f.dec", quotable=0)
    for end in (None, 10, 100, len(source.text)):
        copy = source.quoting(end)
        assert copy.lines is source.lines
        DecError(Diagnostic("x", Span(copy, 5, 6))).render()
    assert counted()[0] == 1


# --------------------------------------------------------------------------- one definition of a line


def reference(text: str, offset: int) -> tuple[int, int, str]:
    """line, column and line text as the lexer counts them: lines end at "\\n"."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col, text.split("\n")[line - 1].removesuffix("\r")


TEXT = st.lists(st.sampled_from(["a", "b", " ", "\n", "\r\n", *BREAKS]), max_size=30).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=TEXT, offset=st.integers(-3, 45))
def test_line_numbers_and_shown_lines_agree(text, offset):
    source = Source(text)
    line, col, shown = reference(text, offset)
    assert source.line_col(offset) == (line, col)
    assert source.line_text(line) == shown
    assert source.shown_line(line) == shown


@settings(max_examples=150, deadline=None)
@given(before=st.lists(st.sampled_from(BREAKS), min_size=1, max_size=4), blank=st.integers(0, 3), crlf=st.booleans(),
       ws=st.sampled_from(["", "\x0c", "\r", " \x0c "]))
def test_a_spec_with_odd_breaks_in_comments_points_at_the_right_line(before, blank, crlf, ws):
    nl = "\r\n" if crlf else "\n"
    lines = [f"# note{''.join(before)} more", *[""] * blank, "decoder d() {", '    target = model("target")',
             f"    sampler = {ws}temperatur(0.5)", "}"]
    with pytest.raises(DecError) as e:
        load(nl.join(lines) + nl)
    message = str(e.value)
    line = 4 + blank  # the comment, the blank lines, "decoder", "target", then the sampler
    assert message.startswith(f"<spec>:{line}:{5 + 10 + len(ws)}: error: "), message
    shown = message.splitlines()[1]
    assert "temperatur(0.5)" in shown and not shown.endswith("\\r")  # a CRLF's "\r" is not part of the line


def test_breaks_are_shown_escaped_inside_their_line():
    src = Source("a\u2028b\x0cc\nd")
    err = DecError(Diagnostic("here", Span(src, 4, 5)))
    assert str(err).splitlines()[:2] == ["<spec>:1:5: error: here", "    a\\u2028b\\x0cc"]
