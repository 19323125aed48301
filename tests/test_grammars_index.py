"""stdlib/grammars/index.py, vocab.py, cache.py: the token index agrees with a brute-force reference, the shipped
tokenizer decodes only matching strings under its masks, and built indexes come back from the cache."""
from __future__ import annotations

import json
import re
from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.stdlib.grammars import CACHE, GrammarError, TokenIndex, compile_grammar, compile_regex, schema_to_dfa, token_bytes
from decspec.stdlib.models.pretrained import REFERENCE
from decspec.stdlib.models.tokenizer import Tokenizer

# finite languages over a, b, c and '"', with the length of their longest string
FINITE = {"ab|c": 2, "[abc]{0,3}": 3, "(?:a|b|\"){1,3}c?": 4, "a{1,3}b?": 4, "(?:a|bc){0,2}": 4, '"[ab]{0,2}"': 4, "c?": 1, "": 0, "(?:ab|ba)c|aaa": 3}


@cache
def shipped():
    tokenizer = Tokenizer.from_dir(REFERENCE / "target")
    return tokenizer, token_bytes(tokenizer)


def brute_force(pattern: str, tokens: list[bytes], longest: int):
    """(accepted, prefixes): the token sequences whose bytes `re.fullmatch` the pattern, and all their prefixes."""
    accepted, frontier = set(), [((), b"")]
    while frontier:
        seq, text = frontier.pop()
        if re.fullmatch(pattern.encode(), text):
            accepted.add(seq)
        frontier += [(seq + (i,), text + t) for i, t in enumerate(tokens) if len(text + t) <= longest]
    prefixes = {seq[:k] for seq in accepted for k in range(len(seq) + 1)}
    return accepted, prefixes


@settings(max_examples=150, derandomize=True, deadline=None, database=None)
@given(st.sampled_from(sorted(FINITE)),
       st.lists(st.binary(min_size=1, max_size=3).map(lambda b: bytes(b'abc"'[x % 4] for x in b)), min_size=1, max_size=6, unique=True))
def test_index_matches_brute_force(pattern, words):
    # id 0 is EOS, id 1 another special token; the words follow
    vocab = [None, None, *words]
    accepted, prefixes = brute_force(pattern, words, FINITE[pattern])
    if not accepted:
        with pytest.raises(GrammarError, match="cannot express"):
            TokenIndex.build(compile_regex(pattern), vocab, eos_id=0)
        return
    index = TokenIndex.build(compile_regex(pattern), vocab, eos_id=0)
    for seq in prefixes:
        state = index.start
        for word in seq:
            assert index.mask([state])[0, word + 2]
            state = int(index.next_state([state], [word + 2])[0])
        expected = {w + 2 for w in range(len(words)) if seq + (w,) in prefixes} | ({0} if seq in accepted else set())
        assert set(index.allowed(state).tolist()) == expected, (seq, pattern, words)
        assert index.is_accepting(state) == (seq in accepted)
        assert index.mask([state])[0].nonzero().ravel().tolist() == sorted(expected)


def test_pruning_and_api():
    # "ab" can only continue with "c", which no token spells: it is pruned, and so is the state after it
    index = TokenIndex.build(compile_regex("abc|a"), [b"a", b"ab", b"b", None], eos_id=3)
    assert index.allowed(0).tolist() == [0] and index.num_states == 2
    after = index.next_state(torch.tensor([0, 0, 0]), torch.tensor([0, 1, 3]))
    assert after.tolist() == [1, -1, -1] and isinstance(after, torch.Tensor)
    assert index.next_state([1], [3]).tolist() == [1]  # EOS keeps the state
    mask = index.mask(np.array([0, 1]))
    assert mask.dtype == torch.bool and mask.shape == (2, 4)
    assert mask.tolist() == [[True, False, False, False], [False, False, False, True]]
    with pytest.raises(ValueError, match="grammar states"):
        index.mask([2])
    with pytest.raises(GrammarError, match=r"no token contains the byte 0x63 \('c'\)"):
        TokenIndex.build(compile_regex("abc"), [b"a", b"ab", b"b"], eos_id=None)


def test_shipped_tokenizer_masked_walks_match():
    tokenizer, vocab = shipped()
    assert len(vocab) == 4096 and vocab[0] is None and vocab[1] == b"!"
    assert b"".join(vocab[i] for i in tokenizer.encode('x = "héllo"\n')) == 'x = "héllo"\n'.encode()
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}, "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3}, "kind": {"enum": ["a", "b"]}},
        "required": ["name", "age"]}
    dfa = schema_to_dfa(schema)
    index = compile_grammar("json_schema", schema, tokenizer, cache=False)
    assert index.eos_id == tokenizer.eos_token_id == 0
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        state, out = index.start, []
        for _ in range(400):
            logits = torch.randn(len(vocab), generator=generator)  # a greedy pick under random logits
            logits[0] += 2.0  # lean towards stopping once EOS is allowed
            token = int(torch.where(index.mask([state])[0], logits, -torch.inf).argmax())
            if token == index.eos_id:
                break
            out.append(token)
            state = int(index.next_state([state], [token])[0])
        else:
            pytest.fail("no EOS within 400 tokens")
        text = b"".join(vocab[t] for t in out).decode()
        assert dfa.matches(text) and {"name", "age"} <= set(json.loads(text))


def test_cache_hits_disk_and_rebuilds_corrupt_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DECSPEC_CACHE_DIR", str(tmp_path))
    vocab = [None, b"1", b"2", b"12", b","]
    CACHE.clear()
    before = dict(CACHE.stats)
    first = compile_grammar("regex", r"[12]+(?:,[12]+)*", vocab, eos_id=0)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and CACHE.stats["built"] == before["built"] + 1
    assert compile_grammar("regex", r"[12]+(?:,[12]+)*", vocab, eos_id=0) is first
    assert CACHE.stats["memory"] == before["memory"] + 1
    CACHE.clear()
    again = compile_grammar("regex", r"[12]+(?:,[12]+)*", vocab, eos_id=0)
    assert CACHE.stats["disk"] == before["disk"] + 1 and again is not first
    assert np.array_equal(again.complete().words, first.complete().words) and again.next_state([0], [3]).tolist() == first.next_state([0], [3]).tolist()
    files[0].write_bytes(b"not an npz file")
    CACHE.clear()
    rebuilt = compile_grammar("regex", r"[12]+(?:,[12]+)*", vocab, eos_id=0)
    assert CACHE.stats["built"] == before["built"] + 2 and np.array_equal(rebuilt.complete().words, first.words)
    compile_grammar("regex", r"[12]+(?:,[12]+)*", vocab, eos_id=None)  # another EOS: another entry
    compile_grammar("choice", ["1", "2"], vocab, eos_id=0)
    assert len(list(tmp_path.glob("*.npz"))) == 3
    CACHE.clear()


def test_token_bytes():
    assert token_bytes([b"a", None]) == [b"a", None]
    from decspec.stdlib.grammars.vocab import decode_token

    assert decode_token("<0x0A>", "plain") == b"\n"
    assert decode_token("\u2581the", "metaspace") == b" the"
    assert decode_token("Ġthe", "byte_level") == b" the"
    assert decode_token("Ċ", "byte_level") == b"\n"
    with pytest.raises(GrammarError, match="unknown grammar kind"):
        compile_grammar("ebnf", "start: x", [b"x"], eos_id=None)


LAZY_PATTERNS = [r"(ab|c)+b?", r'\{"name":"[A-Z][a-z]{1,5}"(,"age":[0-9]{1,3})?\}', r"[0-9]{1,3}(\.[0-9]+)?", r"(x y|z)*q",
                 r"(true|false|null)", r'"([^"\\]|\\["\\n])*"', r"[a-f0-9]{8}-[a-f0-9]{4}"]


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.sampled_from(LAZY_PATTERNS), st.lists(st.binary(min_size=2, max_size=4), max_size=30), st.booleans())
def test_a_lazy_index_walks_the_rows_the_full_build_gives(pattern, extra, eos):
    """With every byte a token, rows walked on first use equal the full build's, state for state; without, the build
    is the full one (pruning may then drop states)."""
    vocab = [bytes([b]) for b in range(256)] + extra + [None]
    eos_id = len(vocab) - 1 if eos else None
    dfa = compile_regex(pattern)
    full, lazy = TokenIndex.build(dfa, vocab, eos_id, lazy=False), TokenIndex.build(dfa, vocab, eos_id)
    assert lazy.pending is not None and full.num_states == lazy.num_states
    state, order = 0, list(range(full.num_states))
    for s in order[::-1]:  # in any order, one row at a time
        assert torch.equal(lazy.mask([s]), full.mask([s])) and lazy.is_accepting(s) == full.is_accepting(s)
    assert lazy.pending is None and np.array_equal(lazy.words, full.words)
    for t in range(len(vocab)):  # next states agree too
        assert lazy.next_state([state], [t]).tolist() == full.next_state([state], [t]).tolist()
    no_a = [bytes([b]) for b in range(256) if b != ord("a")] + [b"ab", None]  # "a" only inside "ab": the full build (it may prune)
    assert TokenIndex.build(compile_regex(r"(ab|c)+"), no_a, None).pending is None


def test_threads_fill_a_lazy_index_alike():
    from concurrent.futures import ThreadPoolExecutor

    vocab = [bytes([b]) for b in range(256)] + [b"ab", b"abc", None]
    dfa = compile_regex(r'\{"name":"[A-Z][a-z]{1,5}"(,"age":[0-9]{1,3})?\}')
    full, lazy = TokenIndex.build(dfa, vocab, len(vocab) - 1, lazy=False), TokenIndex.build(dfa, vocab, len(vocab) - 1)
    states = list(range(full.num_states)) * 4
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda s: lazy.mask([s]), states))
    assert all(torch.equal(g, full.mask([s])) for g, s in zip(got, states)) and lazy.pending is None
