"""Decoder.stream and stop strings (issue 17, items 1-2): deltas as rounds commit them, text never split inside a
character, stop strings that cut exactly where the string begins even when a speculative round went past it,
several EOS ids; on every backend, since the round loop (backends/runtime.py) is shared.

Table models carry a byte tokenizer here (ByteTokenizer: each id one piece of UTF-8, some pieces half a
character), so exactness is checked over random models and random stop strings (hypothesis).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decspec
from decspec import DecError
from decspec.backends.detokenize import REPLACEMENT, Detokenizer, RowText
from decspec.stdlib.models.pretrained import reference_models
from decspec.stdlib.models.table import TableModel

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PIECES = [b"a", b"b", b" ", b"\n", b"\xc3", b"\xa9", b"\xe2\x82", b"\xac", b"\xf0\x9f", b"\x98\x80", b"ab"]  # é, €, 😀 split


class ByteTokenizer:
    """ids -> the UTF-8 of their pieces, decoded as a byte-level tokenizer does (invalid bytes: U+FFFD)."""

    name = "bytes"
    chat_template = None

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", "replace")


def byte_models(seed: int = 0, order: int = 1):
    V = len(PIECES)
    target = TableModel.random(V, order, seed=seed)
    target.tokenizer = ByteTokenizer(PIECES)
    return target, TableModel.random(V, order, seed=seed + 1)


def stable(text: str) -> str:
    return text.rstrip(REPLACEMENT)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("spec", ["specs/speculative.dec", "specs/autoregressive.dec", "specs/prompt_lookup.dec"])
def test_stream_adds_up_to_generate_on_the_shipped_models(spec):
    dec = decspec.compile(spec)
    prompts = ["def fibonacci(n):", "import os\n"]
    want = dec.generate(prompts, max_new_tokens=20, seed=1)
    stream = dec.stream(prompts, max_new_tokens=20, seed=1)
    deltas = list(stream)
    assert stream.result.tokens == want.tokens and stream.result.text == want.text
    for b in range(2):
        mine = [d for d in deltas if d.row == b]
        assert [t for d in mine for t in d.tokens] == want.tokens[b]
        assert "".join(d.text for d in mine) == want.text[b]
        assert [d.round for d in mine] == sorted(d.round for d in mine)
        assert mine[-1].finish_reason is not None and all(d.finish_reason is None for d in mine[:-1])
    assert stream.result.finish_reason == [d.finish_reason for d in deltas if d.finish_reason]


@pytest.mark.parametrize("backend", ["eager", "exact", "inductor"])
def test_stream_on_every_backend_commits_several_tokens_per_round(backend):
    """A greedy speculative round whose draft is the target accepts everything: a delta carries k + 1 tokens (more
    when tokens of a character left incomplete by the round before come with it)."""
    target, _ = byte_models(3)
    dec = decspec.compile("specs/speculative_greedy.dec", target=target, draft=target, k=3, confidence=0.0, backend=backend)
    want = dec.generate([[0, 1], [2]], max_new_tokens=12, seed=0)
    stream = dec.stream([[0, 1], [2]], max_new_tokens=12, seed=0)
    deltas = list(stream)
    assert max(len(d.tokens) for d in deltas) >= 4
    assert stream.result.tokens == want.tokens
    for b in range(2):
        assert [t for d in deltas if d.row == b for t in d.tokens] == want.tokens[b]
        assert "".join(d.text for d in deltas if d.row == b) == stream.result.text[b] == want.text[b]


def test_stream_without_a_tokenizer_has_tokens_only():
    target, draft = TableModel.random(8, 1, seed=0), TableModel.random(8, 1, seed=1)
    dec = decspec.compile("specs/speculative.dec", target=target, draft=draft)
    stream = dec.stream([[1, 2, 3]], max_new_tokens=9, seed=4)
    deltas = list(stream)
    assert all(d.text is None for d in deltas) and stream.result.text is None
    assert [t for d in deltas for t in d.tokens] == dec.generate([[1, 2, 3]], max_new_tokens=9, seed=4).tokens[0]
    assert deltas[-1].finish_reason == "length" and deltas[-1].stopped_by is None


def test_a_stream_can_be_left_early_and_checks_its_arguments_before_running():
    dec = decspec.compile("specs/speculative.dec", k=2)
    stream = dec.stream("def f(x):", max_new_tokens=50, seed=0)
    first = next(stream)
    stream.close()
    assert first.tokens and list(stream) == [] and stream.result is None
    with pytest.raises(DecError, match="max_new_tokens"):
        dec.stream("x", max_new_tokens=0)
    with pytest.raises(DecError, match="stop"):
        dec.stream("x", stop=[3])


def test_beam_search_streams_its_answer_whole():
    target = byte_models(0)[0]
    dec = decspec.compile("specs/beam_search.dec", target=target)
    stream = dec.stream([[1, 2]], max_new_tokens=5)
    deltas = list(stream)
    assert len(deltas) == 1 and deltas[0].tokens == dec.generate([[1, 2]], max_new_tokens=5).tokens[0]
    with pytest.raises(DecError, match="beam search .* does not take stop strings"):
        dec.generate([[1, 2]], max_new_tokens=5, stop="a")


# --------------------------------------------------------------------------- incremental detokenization


@SETTINGS
@given(st.lists(st.integers(0, len(PIECES) - 1), max_size=30), st.lists(st.integers(1, 5), min_size=30, max_size=30))
def test_detokenized_pieces_never_split_a_character_and_add_up(ids, chunks):
    tok = ByteTokenizer(PIECES)
    row = RowText(tok.decode)
    pieces, at = [], 0
    for n in chunks:  # rounds of 1-5 tokens
        if at >= len(ids):
            break
        row.feed(ids[at:at + n], last=at + n >= len(ids))
        at += n
        tokens, text = row.release(final=at >= len(ids))
        pieces.append(text)
        if at < len(ids):
            assert not text.endswith(REPLACEMENT)  # never a half character while the row runs
            assert tok.decode(row.ids[:len(row.ids)]).startswith("".join(pieces))
    assert "".join(pieces) == tok.decode(ids) == row.text


def test_the_shipped_tokenizer_streams_multibyte_text_whole():
    tok = reference_models()["target"].tokenizer
    text = "naïve café — 😀 カフェ ∑x² 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"
    ids = tok.encode(text)
    assert any(REPLACEMENT in tok.decode([i]) for i in ids)  # some character is split over tokens
    d = Detokenizer(tok.decode)
    pieces = [d.add(i) for i in ids]
    assert "".join(pieces) == text and not any(REPLACEMENT in p for p in pieces)


# --------------------------------------------------------------------------- stop strings


def run_with_stop(dec, prompt, stop, **kw):
    stream = dec.stream([prompt], stop=stop, **kw)
    deltas = list(stream)
    return stream.result, deltas


@pytest.mark.parametrize("spec, params", [("specs/speculative_greedy.dec", {"k": 4, "confidence": 0.0}), ("specs/speculative.dec", {"k": 3}),
                                          ("specs/autoregressive.dec", {})])
def test_a_stop_string_cuts_exactly_where_it_begins(spec, params):
    """For any substring s of an unconstrained output T, stopping at s gives T cut before its first s, the fewest
    tokens of T that cover that text, a stream adding up to the same, and finish_reason "stop"."""
    target, draft = byte_models(5)
    dec = decspec.compile(spec, models={"target": target, "draft": draft}, overrides=params)
    tok = target.tokenizer

    @SETTINGS
    @given(st.integers(0, 2**32), st.data())
    def check(seed, data):
        full = dec.generate([[0]], max_new_tokens=16, seed=seed)
        T = stable(full.text[0])
        if not T:
            return
        start = data.draw(st.integers(0, len(T) - 1))
        s = T[start:start + data.draw(st.integers(1, 4))]
        i = T.index(s)
        got = dec.generate([[0]], max_new_tokens=16, seed=seed, stop=[s, "never in the text"])
        (tokens,), (text,) = got.tokens, got.text
        assert text == T[:i]
        assert tokens == full.tokens[0][:len(tokens)]
        assert tok.decode(tokens).startswith(text)
        assert not tokens or len(stable(tok.decode(tokens[:-1]))) < len(text) or (not text and not tokens)
        assert got.finish_reason == ["stop"] and got.stopped_by == [s]
        assert got.stats.new_tokens == [len(tokens)]
        streamed, deltas = run_with_stop(dec, [0], [s, "never in the text"], max_new_tokens=16, seed=seed)
        assert streamed.tokens == got.tokens and streamed.text == got.text
        assert [t for d in deltas for t in d.tokens] == tokens and "".join(d.text for d in deltas) == text
        assert deltas[-1].finish_reason == "stop" and deltas[-1].stopped_by == s

    check()


def test_a_token_that_straddles_the_stop_string_is_kept_and_its_text_cut():
    """Pieces "a", "b", "ab": the stop "bb" begins inside the token "ab"; text stops before it, the token stays."""
    row = RowText(ByteTokenizer(PIECES).decode, ["bb"])
    assert row.feed([0, 10]) is None  # "a", "ab"
    assert row.feed([1, 0]) == "bb"  # "b" "a" -- overshoot: one round past the stop
    assert row.text == "aa" and row.kept == 2 and row.ids[:row.kept] == [0, 10]


def test_held_back_text_cut_by_the_next_round_is_never_released():
    """Round 1 ends with "\\n", which may begin the stop "\\n\\n": it is held back; round 2 completes the stop."""
    pieces = [b"foo", b"\n", b"bar"]
    row = RowText(ByteTokenizer(pieces).decode, ["\n\n"])
    row.feed([0, 1])
    assert row.release() == ([0], "foo")
    assert row.feed([1, 2]) == "\n\n"
    assert row.release(final=True) == ([], "") and row.text == "foo" and row.kept == 1


def test_a_stop_string_split_across_tokens_and_rounds():
    """"é" arrives as two bytes in two rounds; the stop "é" matches once the character is whole."""
    row = RowText(ByteTokenizer(PIECES).decode, ["é"])
    assert row.feed([0, 4]) is None and row.release() == ([0], "a")  # "a" + half of é: the half is held
    assert row.feed([5, 1]) == "é"
    assert row.text == "a" and row.kept == 1


def test_stop_strings_on_every_backend():
    target, draft = byte_models(2)
    texts = {}
    for backend in ("eager", "exact", "inductor"):
        dec = decspec.compile("specs/speculative.dec", models={"target": target, "draft": draft}, k=3, backend=backend)
        full = dec.generate([[0], [1]], max_new_tokens=16, seed=9)
        stop = stable(full.text[0])[3:5] or "a"
        got = dec.generate([[0], [1]], max_new_tokens=16, seed=9, stop=stop)
        assert got.text[0] == stable(full.text[0])[:stable(full.text[0]).index(stop)] if stop in full.text[0] else True
        texts[backend] = got.text
    assert texts["eager"] == texts["inductor"]


def test_per_row_stop_strings_and_stop_longer_than_the_output():
    target, draft = byte_models(1)
    dec = decspec.compile("specs/speculative.dec", models={"target": target, "draft": draft})
    full = dec.generate([[0], [0]], max_new_tokens=10, seed=2)
    T = stable(full.text[1])
    got = dec.generate([[0], [0]], max_new_tokens=10, seed=2, stop=[["x" * 1000], [T[-1]]])
    assert got.text[0] == full.text[0] and got.finish_reason[0] == "length"
    assert got.text[1] == T[:T.index(T[-1])] and got.finish_reason[1] == "stop"


@pytest.mark.parametrize("stop, message", [
    ("", r"stop\[0\] is an empty string"), ([""], r"stop\[0\] is an empty string"), (["a", 3], r"stop\[1\] is 3 \(an int\)"),
    (3, "stop must be a string"), ([["a"]], "1 lists of stop strings for 2 prompts"), (["a\ud800"], "lone surrogate"),
    ([["a"], "b"], "stop mixes strings and lists"), (["a"] * 2000, "at most 1,024"),
])
def test_bad_stop_strings_say_what_is_wrong(stop, message):
    target, draft = byte_models(0)
    dec = decspec.compile("specs/speculative.dec", models={"target": target, "draft": draft})
    with pytest.raises(DecError, match=message):
        dec.generate([[0], [1]], max_new_tokens=3, stop=stop)


def test_stop_strings_need_a_tokenizer():
    dec = decspec.compile("specs/speculative.dec", target=TableModel.random(8, 1, seed=0), draft=TableModel.random(8, 1, seed=1))
    with pytest.raises(DecError, match="no tokenizer; end rows at token ids with eos_token_id"):
        dec.generate([[1]], stop="a")


# --------------------------------------------------------------------------- several EOS ids


def test_a_row_ends_at_the_first_of_several_eos_ids():
    target = TableModel.random(6, 1, seed=4)
    dec = decspec.compile("specs/speculative_greedy.dec", target=target, draft=target, k=4, confidence=0.0)
    free = dec.generate([[2]], max_new_tokens=12, eos_token_id=None).tokens[0]
    a, b = free[3], free[1]
    got = dec.generate([[2]], max_new_tokens=12, eos_token_id=[a, b])
    assert got.tokens[0] == free[:free.index(b) + 1] and got.finish_reason == ["stop"] and got.stopped_by == [b]
    stream = dec.stream([[2]], max_new_tokens=12, eos_token_id=(a, b))
    assert [t for d in stream for t in d.tokens] == got.tokens[0]
    target.eos_token_id, target.eos_token_ids = a, (a, b)  # the model's own list is the default
    try:
        assert dec.generate([[2]], max_new_tokens=12).tokens == got.tokens
        assert all(a not in seq[:-1] and b not in seq[:-1] for seq in dec.distribution([2], 4))  # exact: the same default
        target.eos_token_id = None  # a caller who clears eos_token_id means none
        assert dec.generate([[2]], max_new_tokens=12).tokens[0] == free
    finally:
        target.eos_token_id, target.eos_token_ids = None, ()


def test_exact_distribution_and_beam_search_take_several_eos_ids():
    target, draft = TableModel.random(5, 1, seed=0), TableModel.random(5, 1, seed=1)
    dec = decspec.compile("specs/speculative.dec", target=target, draft=draft, k=2)
    dist = dec.distribution([1], 3, eos_token_id=[0, 4])
    assert all(seq[-1] in (0, 4) or len(seq) == 3 for seq in dist) and abs(sum(dist.values()) - 1) < 1e-9
    assert all(0 not in seq[:-1] and 4 not in seq[:-1] for seq in dist)
    beam = decspec.compile("specs/beam_search.dec", target=target)
    out = beam.generate([[1]], max_new_tokens=6, eos_token_id=[0, 4])
    assert all(t not in (0, 4) for t in out.tokens[0][:-1])


def test_generation_config_eos_ids_are_read(tmp_path):
    from decspec.stdlib.models.pretrained import generation_eos
    from decspec.stdlib.models.transformer_config import TransformerConfig

    config = TransformerConfig.from_dict({"vocab_size": 64, "eos_token_id": 2})
    assert generation_eos(tmp_path, config) == (2,)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [2, 7]}')
    assert generation_eos(tmp_path, config) == (2, 7)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [2, 70]}')
    with pytest.raises(DecError, match=r"eos_token_id \[2, 70\] must be a token id in \[0, 64\)"):
        generation_eos(tmp_path, config)


def test_hf_models_keep_every_generation_config_eos_id():
    transformers = pytest.importorskip("transformers")
    from decspec.stdlib.models.hf import HFModel

    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=64, eos_token_id=0)
    model = transformers.LlamaForCausalLM(config)
    model.generation_config.eos_token_id = [3, 0]
    wrapped = HFModel(model)
    assert wrapped.eos_token_id == 3 and wrapped.eos_token_ids == (3, 0)


def test_decspec_run_streams_and_stops(capsys):
    from decspec.cli import main

    dec = decspec.compile("specs/speculative.dec")
    full = dec.generate("def f(x):", max_new_tokens=24, seed=0).text[0]
    stop = full.strip()[:2]
    want = dec.generate("def f(x):", max_new_tokens=24, seed=0, stop=stop).text[0]
    assert main(["run", "specs/speculative.dec", "--prompt", "def f(x):", "--max-new-tokens", "24", "--stop", stop]) == 0
    out, err = capsys.readouterr()
    assert out == "def f(x):" + want + "\n" and err.splitlines()[1].startswith("# rounds")
