"""stdlib/grammars/cfg.py: Lark grammars as token-level matchers. Step by step, a token is allowed exactly when
the text stays a prefix of a sentence (hand-written oracles for parentheses and arithmetic), EOS exactly when
the text is a sentence (and Lark parses it); the JSON grammar agrees with `json.loads`; masked walks on the
shipped vocabulary end in text that `json.loads` and Lark accept; bad grammars are errors naming the cause."""
from __future__ import annotations

import json
import random
from functools import cache

import lark
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.stdlib.grammars import CACHE, JSON_GRAMMAR, CFGMatcher, GrammarError, compile_grammar, token_bytes
from decspec.stdlib.grammars.matcher import Matcher
from decspec.stdlib.models.pretrained import REFERENCE
from decspec.stdlib.models.tokenizer import Tokenizer

PARENS = """
start: item*
item: "(" start ")"
%ignore " "
"""

ARITH = """
?start: sum
?sum: product | sum "+" product | sum "-" product
?product: atom | product "*" atom
?atom: NUMBER | "(" sum ")" | "-" atom
NUMBER: /[0-9]+/
%ignore " "
"""


def parens_oracle(text: str) -> tuple[bool, bool]:
    """(prefix of a sentence, sentence) for PARENS."""
    depth = 0
    for c in text:
        if c == ")":
            depth -= 1
            if depth < 0:
                return False, False
        elif c == "(":
            depth += 1
        elif c != " ":
            return False, False
    return True, depth == 0


def arith_oracle(text: str) -> tuple[bool, bool]:
    """(prefix of a sentence, sentence) for ARITH: expecting an operand or an operator, the open parentheses,
    and whether a number is being read (a digit after a space would be a second number)."""
    operand, depth, in_number = True, 0, False
    for c in text:
        if c.isdigit():
            if not (operand or in_number):
                return False, False
            operand, in_number = False, True
            continue
        in_number = False
        if c == " ":
            continue
        if operand and c in "(-":
            depth += c == "("
        elif not operand and c in "+-*":
            operand = True
        elif not operand and c == ")" and depth > 0:
            depth -= 1
        else:
            return False, False
    return True, not operand and depth == 0


@cache
def lark_parser(grammar: str) -> lark.Lark:
    return lark.Lark(grammar, parser="lalr")


def parses(grammar: str, text: str) -> bool:
    try:
        lark_parser(grammar).parse(text)
        return True
    except lark.exceptions.LarkError:
        return False


def words(alphabet: str, max_size: int = 3):
    return st.lists(st.text(alphabet, min_size=1, max_size=max_size).map(str.encode), min_size=1, max_size=8, unique=True)


def check_walk(grammar: str, oracle, tokens: list[bytes], picks: list[int]) -> None:
    """Walk the matcher (id 0: EOS, id 1: a special token) along `picks`; at each step every token's verdict
    and EOS's agree with the oracle, and Lark parses exactly the texts EOS ends."""
    vocab = [None, None, *tokens]
    first = [t for t in tokens if oracle(t.decode())[0]]
    if not first and not oracle("")[1]:
        with pytest.raises(GrammarError, match="cannot express"):
            CFGMatcher.build(grammar, vocab, eos_id=0)
        return
    m = CFGMatcher.build(grammar, vocab, eos_id=0)
    state, text = m.start, ""
    for pick in [*picks, None]:
        mask = m.mask([state])[0]
        assert not mask[1]
        for i, t in enumerate(tokens):
            assert bool(mask[i + 2]) == oracle(text + t.decode())[0], (text, t)
        sentence = oracle(text)[1]
        assert bool(mask[0]) == sentence == m.is_accepting(state), text
        assert parses(grammar, text) == sentence, text
        choices = [i for i in m.allowed(state).tolist() if i != 0]
        if pick is None or not choices:
            break
        token = choices[pick % len(choices)]
        state = int(m.next_state([state], [token])[0])
        text += vocab[token].decode()
        assert state >= 0


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(words("() "), st.lists(st.integers(0, 50), max_size=12))
def test_parens_prefixes(tokens, picks):
    check_walk(PARENS, parens_oracle, tokens, picks)


@settings(max_examples=80, derandomize=True, deadline=None, database=None)
@given(words("12+-*() ", 4), st.lists(st.integers(0, 50), max_size=12))
def test_arith_prefixes(tokens, picks):
    check_walk(ARITH, arith_oracle, tokens, picks)


BYTES = [None, *(bytes([b]) for b in range(256))]  # id 0 is EOS, id b+1 the byte b


@cache
def byte_json() -> CFGMatcher:
    return CFGMatcher.build(JSON_GRAMMAR, BYTES, eos_id=0)


def json_accepts(text: str) -> bool:
    m = byte_json()
    state = m.start
    for b in text.encode():
        state = int(m.next_state([state], [b + 1])[0])
        if state < 0:
            return False
    return m.is_accepting(state)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(json_values, st.sampled_from([None, 0, 2]), st.booleans())
def test_json_grammar_accepts_json_dumps(value, indent, ascii_only):
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    assert json_accepts(text), text
    assert json_accepts(f" \n{text}\t")


@pytest.mark.parametrize("text", ["", "[1,]", '{"a"}', '{"a":1,}', "01", "1.", ".5", "-", "+1", "1e", "tru", "True", "nul",
                                  "'a'", '"\x01"', '"\\x"', '"\\u12g4"', "[1 2]", '{"a" 1}', "{1:2}", "[]]", "NaN", '"a'])
def test_json_grammar_rejects(text):
    with pytest.raises(ValueError):  # RFC 8259 JSON: not Python's NaN extension
        json.loads(text, parse_constant=lambda name: float("x"))
    assert not json_accepts(text)


@settings(max_examples=40, derandomize=True, deadline=None, database=None)
@given(words('{}[]",:01a\\ tuenl', 4), st.lists(st.integers(0, 50), max_size=16))
def test_json_walks_end_in_json(tokens, picks):
    vocab = [None, *tokens]
    try:
        m = CFGMatcher.build(JSON_GRAMMAR, vocab, eos_id=0)
    except GrammarError as e:
        assert "cannot express" in e.message
        return
    state, text = m.start, b""
    for pick in picks:
        if m.is_accepting(state):
            json.loads(text)
            assert parses(JSON_GRAMMAR, text.decode())
        choices = [i for i in m.allowed(state).tolist() if i != 0]
        if not choices:
            break
        token = choices[pick % len(choices)]
        state = int(m.next_state([state], [token])[0])
        text += vocab[token]
        assert json_prefix_ok(text)


def json_prefix_ok(text: bytes) -> bool:
    """Necessary for a JSON prefix: the brackets outside strings nest."""
    stack, in_string, escaped = [], False, False
    for c in text.decode(errors="replace"):
        if in_string:
            in_string = escaped or c != '"'
            escaped = not escaped and c == "\\"
        elif c == '"':
            in_string = True
        elif c in "[{":
            stack.append(c)
        elif c in "]}":
            if not stack or stack.pop() != {"]": "[", "}": "{"}[c]:
                return False
    return True


@cache
def shipped():
    tokenizer = Tokenizer.from_dir(REFERENCE / "target")
    return tokenizer, token_bytes(tokenizer)


def masked_walk(m, vocab, eos_id: int, seed: int, steps: int) -> bytes:
    """Greedy on random logits under the mask for `steps` tokens, then a finishing policy (EOS, then closing
    bytes, then the shortest allowed token) that ends any JSON text."""
    rng = torch.Generator().manual_seed(seed)
    finish = [eos_id, *(vocab.index(c) for c in (b'"', b"}", b"]", b":", b"0"))]  # '"' first: it ends a string
    state, text = m.start, b""
    for step in range(steps + 2000):
        mask = m.mask([state])[0]
        if step < steps:
            logits = torch.randn(len(vocab), generator=rng).masked_fill(~mask, float("-inf"))
            token = int(logits.argmax())
        else:
            token = next((t for t in finish if mask[t]), None)
            if token is None:
                token = min(m.allowed(state).tolist(), key=lambda t: (len(vocab[t]), t))
        if token == eos_id:
            return text
        state = int(m.next_state([state], [token])[0])
        text += vocab[token]
    raise AssertionError(f"the walk did not end: {text[-80:]!r}")


@pytest.mark.parametrize("seed", range(4))
def test_masked_walk_shipped_vocab_is_json(seed):
    tokenizer, vocab = shipped()
    m = compile_grammar("json", None, tokenizer)
    assert m.eos_id == tokenizer.eos_token_id
    text = masked_walk(m, vocab, m.eos_id, seed, steps=60)
    json.loads(text)
    assert parses(JSON_GRAMMAR, text.decode())


def test_arith_masked_walk_shipped_vocab_parses():
    tokenizer, vocab = shipped()
    m = compile_grammar("lark", ARITH, tokenizer)
    rng = random.Random(0)
    state, text = m.start, b""
    for _ in range(40):
        token = rng.choice([t for t in m.allowed(state).tolist() if t != m.eos_id])
        state = int(m.next_state([state], [token])[0])
        text += vocab[token]
        assert arith_oracle(text.decode())[0], text
        if m.is_accepting(state):
            assert parses(ARITH, text.decode())


def test_matcher_protocol():
    m = compile_grammar("lark", PARENS, [b"(", b")", b"()", None, b"x"], eos_id=3, cache=False)
    assert isinstance(m, Matcher)
    assert m.mask([m.start, m.start]).shape == (2, 5) and m.mask([m.start]).dtype == torch.bool
    assert m.allowed(m.start).tolist() == [0, 2, 3]  # EOS: the empty string is a sentence
    s = m.next_state(torch.tensor([m.start, m.start, m.start]), torch.tensor([0, 1, 3]))
    assert isinstance(s, torch.Tensor) and s[1] == -1 and s[2] == m.start
    assert m.allowed(int(s[0])).tolist() == [0, 1, 2] and not m.is_allowed(int(s[0]), 3)
    assert m.next_state([int(s[0])], [3]).tolist() == [-1]  # EOS where the parse cannot end
    before = m.num_states
    m.mask([int(s[0])])
    assert m.num_states >= before and m.masks  # masks are cached per state
    with pytest.raises(ValueError, match="grammar states"):
        m.mask([10**6])


def test_lexing_is_longest_match():
    # NAME NAME needs a space between: "ab" is one NAME, as Lark's lexer reads it
    grammar = 'start: NAME NAME\nNAME: /[a-z]+/\n%ignore " "'
    m = CFGMatcher.build(grammar, [None, b"a", b"b", b" ", b"ab"], eos_id=0)
    s = int(m.next_state([m.start], [4])[0])
    assert not m.is_accepting(s) and m.allowed(s).tolist() == [1, 2, 3, 4]
    s = int(m.next_state([s], [3])[0])
    s = int(m.next_state([s], [1])[0])
    assert m.is_accepting(s) and parses(grammar, "ab a") and not parses(grammar, "aba")
    # a keyword that the NAME pattern also matches: both readings stay
    kw = 'start: "if" NAME | NAME\nNAME: /[a-z]+/\n%ignore " "'
    m = CFGMatcher.build(kw, [None, b"if", b" ", b"x"], eos_id=0)
    s = int(m.next_state([m.start], [1])[0])
    assert m.is_accepting(s) and m.allowed(s).tolist() == [0, 1, 2, 3]  # "if" as a NAME, or "ifif"


def test_compile_grammar_reuses_matchers():
    vocab = [None, b"(", b")"]
    a = compile_grammar("lark", PARENS, vocab, eos_id=0)
    hits = CACHE.stats["memory"]
    assert compile_grammar("lark", PARENS, vocab, eos_id=0) is a and CACHE.stats["memory"] == hits + 1
    assert compile_grammar("lark", PARENS, vocab, eos_id=0, cache=False) is not a
    assert compile_grammar("json", None, vocab + [b"1"], eos_id=0) is compile_grammar("lark", JSON_GRAMMAR, vocab + [b"1"], eos_id=0)


V = [None, b"a", b"(", b")", b"x", b"1", b'"']


@pytest.mark.parametrize("grammar, message", [
    ('start: a\na: "x" (', r"lark grammar: .*line 2 column 9"),
    ('foo: "x"', "no start rule 'start'"),
    ('start: a | b\na: "x"\nb: "x"', "Reduce/Reduce collision"),
    ('start: X\nX: /a(?=b)/', r"lark terminal X \(/a\(\?=b\)/\): .*lookaround assertions are not supported"),
    ('%import common.ESCAPED_STRING\nstart: ESCAPED_STRING', "lark terminal ESCAPED_STRING .*lookaround"),
    ('start: X\nX: /ab/i', r"lark terminal X .*flags \['i'\] are not supported"),
    ('%declare X\nstart: X', "lark terminal X has no pattern"),
    ('start: "x" start', "accepts nothing: rule 'start' derives no finite string"),
    ('start: "x" | a\na: "(" a', "rule 'a' derives no finite string"),
    ('start: X\nX: /[^\\s\\S]/', "lark terminal X .*accepts nothing"),
    ('start: X\nX: /a*/', "zero-width"),
    ('start: "q" "a"', "the vocabulary cannot express this grammar"),
])
def test_errors(grammar, message):
    with pytest.raises(GrammarError, match=message):
        CFGMatcher.build(grammar, V, eos_id=0)


def test_other_errors():
    with pytest.raises(GrammarError, match="eos id 9"):
        CFGMatcher.build(PARENS, V, eos_id=9)
    with pytest.raises(GrammarError, match="takes no source"):
        compile_grammar("json", {"type": "object"}, V, eos_id=0)
    with pytest.raises(GrammarError, match="needs the grammar's text"):
        compile_grammar("lark", None, V, eos_id=0)
    assert CFGMatcher.build('start: "Ab"i', [None, b"aB"], 0).allowed(0).tolist() == [1]
    np.testing.assert_array_equal(CFGMatcher.build(PARENS, V, None).allowed(0), [2])
