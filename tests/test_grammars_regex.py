"""stdlib/grammars/regex.py + automaton.py: the byte DFA agrees with `re.fullmatch`; errors name the column."""
from __future__ import annotations

import doctest
import importlib
import re
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.dsl.diagnostics import DecError
from decspec.stdlib.grammars import GrammarError, compile_regex
from decspec.stdlib.grammars.automaton import utf8_sequences

PATTERNS = [
    r"abc",
    r"a|b|",
    r"(?:ab)*c?",
    r"[a-c]+x{2,3}",
    r"\d{1,3}(?:\.\d+)?",
    r"[^a-c]*",
    r"\w+@\w+\.(?:com|org)",
    r".{0,3}",
    r"[\s\S]{2}",
    r"é|ü+|日本",
    r"[α-ω]{1,2}\u00e9",
    r"(a|bc)*(?:d|)e{0,}",
    r"\D\W\S",
    r"[-a]+[a-]",
    r"x{3}|y{,2}",
    r"(?P<n>ab){2}",
    r"[\]\\^]+",
    r"\x41\n\t\.",
    r"a{",
    r"(?:a+?|b*?)c??",
    r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}){0,4}"',
    r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?",
    r"[^\n]+\n?",
]
ALPHABET = st.sampled_from(list("abcdexy019.@-_ \n\t\"\\]^{éü日本αωA😀/u") + ["\x00", "\x1f"])


@cache
def dfa(pattern: str):
    return compile_regex(pattern)


def no_surrogates(s: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def pattern_and_string(pattern: str):
    """A string for `pattern`: a match (from hypothesis' reading of it) or text over a mixed alphabet."""
    strings = st.one_of(st.from_regex(pattern, fullmatch=True), st.text(ALPHABET, max_size=10))
    return st.tuples(st.just(pattern), strings.filter(no_surrogates))


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(st.sampled_from(PATTERNS).flatmap(pattern_and_string))
def test_dfa_agrees_with_re_fullmatch(case):
    pattern, s = case
    # \d \w \s are ASCII in decspec, hence re.ASCII; hypothesis generates from the Unicode reading
    assert dfa(pattern).matches(s) == bool(re.fullmatch(pattern, s, re.ASCII)), (pattern, s)


def test_minimal_and_canonical():
    assert compile_regex("(a|a)(b|b)*").num_states == 2
    a, b = compile_regex("a+b?"), compile_regex("aa*(?:b|)")
    assert np.array_equal(a.transitions, b.transitions) and np.array_equal(a.accepting, b.accepting)
    machine = compile_regex("[0-9]{2}")
    assert machine.transitions.dtype == np.int32 and machine.transitions.shape == (3, 256) and machine.start == 0


def test_utf8_bytes():
    machine = compile_regex(".")
    assert machine.matches("😀") and machine.matches("é") and not machine.matches("\n")
    assert machine.walk("😀".encode()[:2]) >= 0 and not machine.matches("😀".encode()[:2])
    assert not machine.matches(b"\xed\xa0\x80")  # a UTF-8-encoded surrogate is not a character
    for lo, hi in [(0, 0x7F), (0x80, 0x10FFFF), (0x7F0, 0x810), (0xE000, 0xFFFF)]:
        for seq in utf8_sequences(lo, hi):
            assert all(a <= b for a, b in seq)
    assert utf8_sequences(0x20AC, 0x20AC) == [[(0xE2, 0xE2), (0x82, 0x82), (0xAC, 0xAC)]]


@pytest.mark.parametrize("pattern, message", [
    ("a(b", "regex \"a(b\" at column 2: unclosed group; close it with ')'"),
    ("ab)", "at column 3: unbalanced ')'"),
    ("(?=a)b", "at column 1: lookaround assertions are not supported"),
    ("x(?<!a)", "at column 2: lookaround"),
    (r"(a)\1", "at column 4: backreferences are not supported"),
    ("^a", "at column 1: anchor '^' is not supported"),
    ("a$", "at column 2: anchor '$'"),
    (r"\bfoo", "at column 1: word boundary"),
    ("*a", "at column 1: nothing to repeat"),
    ("a**", "at column 3: multiple repeat"),
    ("a{2}{3}", "multiple repeat"),
    ("[abc", "at column 1: unterminated character set; close it with ']'"),
    ("x[z-a]", "at column 3: bad character range z-a"),
    (r"[\d-z]", "bad character range"),
    ("a{3,2}", "min repeat 3 is greater than max repeat 2"),
    ("a{20000}", "over the limit"),
    (r"\q", "bad escape '\\q'"),
    (r"\u12", "needs exactly 4 hex digits"),
    ("(?i)a", "inline flags"),
    ("abc\\", "lone backslash"),
    (r"[^\s\S]", "accepts nothing"),
    (r"a[^\x00-\U0010FFFF]", "accepts nothing"),
])
def test_errors_name_the_column(pattern, message):
    with pytest.raises(GrammarError) as info:
        compile_regex(pattern)
    assert message in str(info.value)
    assert isinstance(info.value, DecError) and message in info.value.message


@pytest.mark.parametrize("module", ["regex", "automaton", "json_schema", "errors", "__init__"])
def test_doctests(module):
    name = "decspec.stdlib.grammars" + ("" if module == "__init__" else f".{module}")
    assert doctest.testmod(importlib.import_module(name)).failed == 0
