"""decspec/serve.py: the engine's continuous batching, and the OpenAI-compatible server driven by the stock `openai`
client on 127.0.0.1 (concurrent streams, cancellation, malformed and oversize requests)."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
import torch

import decspec
from decspec.backends.detokenize import RowText
from decspec.dsl.diagnostics import DecError
from decspec.serve import Engine
from decspec.stdlib.models.pretrained import reference_models
from decspec.stdlib.models.tokenizer import Tokenizer
from test_chat import Chatty, with_template

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

PROMPTS = ["def add(a, b):", "class Stack:", "import os\n", "for i in range("]


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """The shipped reference pair, its tokenizer given a chat template."""
    tokenizer = Tokenizer.from_dir(with_template(tmp_path_factory.mktemp("chat")))
    models = reference_models()
    return decspec.compile("specs/speculative.dec", target=Chatty(models["target"], tokenizer), draft=models["draft"])


@pytest.fixture(scope="module")
def server(decoder):
    """A server on a free port of 127.0.0.1 (3 slots), for the whole module."""
    from decspec.serve import Background

    with Background(decoder, slots=3, context=256, name="spec") as running:
        yield running.url


def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def post(url: str, path: str, body: bytes | str) -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ------------------------------------------------------------------------------------------------ the engine

def test_requests_joining_a_running_batch_get_what_generate_gives_each(decoder):
    engine = Engine(decoder, slots=2, context=256)
    try:
        requests = [engine.submit(engine.encode(p), 20, sampling={"temperature": 0}) for p in PROMPTS]  # 4 rows, 2 slots
        texts = ["".join(e.text for e in r) for r in requests]
        assert max(engine.rows_per_round) == 2  # rows shared rounds, and the other two waited for free slots
        alone = [decoder.generate([p], max_new_tokens=20, temperature=0).text[0] for p in PROMPTS]
        assert texts == alone
        assert [r.finish_reason for r in requests] == ["length"] * 4
    finally:
        engine.close()


def test_the_batch_grows_and_shrinks_with_the_requests(decoder):
    """A lone request runs in a batch of one; more requests widen it (the running row moves over with its context),
    and it narrows again once they are done; every text is what generate gives its prompt alone."""
    engine = Engine(decoder, slots=8, context=256)
    try:
        first = engine.submit(engine.encode(PROMPTS[0]), 40, sampling={"temperature": 0})
        events = iter(first)
        head = next(events)
        assert len(engine.rows) == 1  # alone: no idle rows ride along
        others = [engine.submit(engine.encode(p), 6, sampling={"temperature": 0}) for p in PROMPTS[1:]]
        texts = ["".join(e.text for e in r) for r in others]
        texts.insert(0, head.text + "".join(e.text for e in events))
        assert 4 in engine.widths and engine.widths[-1] == 1, engine.widths
        assert texts == [decoder.generate([p], max_new_tokens=40 if i == 0 else 6, temperature=0).text[0]
                         for i, p in enumerate(PROMPTS)]
    finally:
        engine.close()


@pytest.mark.parametrize("spec", ["bandit", "token_recycling", "lookahead", "prompt_lookup", "json_forced"])
def test_rows_with_cross_round_state_start_afresh_when_admitted(spec):
    """Length policies (bandit), draft states (token recycling, lookahead), lookup and a grammar walk: a request that
    takes over a row gets what its prompt alone would give."""
    dec = decspec.compile(f"specs/{spec}.dec", temperature=0.0)
    engine = Engine(dec, slots=2, context=256)
    try:
        requests = [engine.submit(engine.encode(p), 12) for p in PROMPTS[:3]]  # the third takes over a freed row
        texts = ["".join(e.text for e in r) for r in requests]
        assert texts == [dec.generate([p], max_new_tokens=12).text[0] for p in PROMPTS[:3]]
    finally:
        engine.close()


@pytest.mark.parametrize("spec, part", [("bandit", "policies"), ("token_recycling", "draft_states")])
def test_an_admitted_row_s_state_is_a_fresh_start(spec, part):
    dec = decspec.compile(f"specs/{spec}.dec", temperature=0.0)
    engine = Engine(dec, slots=2, context=256)
    try:
        for r in [engine.submit(engine.encode(p), 12) for p in PROMPTS[:2]]:
            list(r)
        states = getattr(engine.batch.state, part)
        before = {k: v.clone() for k, v in flat(states).items()}
        fresh = {k: v.clone() for k, v in flat(states).items()}
        engine.close()  # no more rounds: what admit leaves is what the next round would read
        engine.batch.admit(1, engine.encode("x = 1"), 4, RowText(engine.tokenizer.decode), {})
        after = flat(states)
        start = flat(type(states).start(engine.batch.graph, 2, engine.batch.seed) if part == "policies" else
                     type(states).start(engine.batch.graph, engine.batch.models, 2))
        assert any(not torch.equal(before[k][1], start[k][1]) for k in before)  # the rounds changed row 1's state
        for k in after:
            assert torch.equal(after[k][1], start[k][1]) and torch.equal(after[k][0], fresh[k][0])
    finally:
        engine.close()


def flat(states) -> dict:
    """Every per-row tensor of a Policies or DraftStates, by name."""
    if hasattr(states, "caps"):
        return {f"{key}.{n}": v for key, (_, state) in states.entries.items() for n, v in state.items()}
    return {f"{key}.{i}": v for key, values in states.entries.items() for i, v in enumerate(values)}


def test_stop_strings_and_settings_are_per_request(decoder):
    engine = Engine(decoder, slots=2, context=256)
    try:
        full = "".join(e.text for e in engine.submit(engine.encode("import os\n"), 20, sampling={"temperature": 0}))
        cut = engine.submit(engine.encode("import os\n"), 20, stop=["os\n"], sampling={"temperature": 0})
        other = engine.submit(engine.encode("class Stack:"), 5, sampling={"temperature": 0.7, "top_p": 0.5})
        assert "".join(e.text for e in cut) == full[:full.index("os\n")] and cut.finish_reason == "stop"
        assert sum(len(e.tokens) for e in other) == other.completion_tokens == 5
    finally:
        engine.close()


def test_a_seeded_request_draws_the_same_whatever_shares_its_batch(decoder):
    """A request's seed is its row's own stream (backends/draws.py): sampled alone, beside unseeded and other seeded
    requests (in another slot, the batch widened under it), it gives one text, the one generate gives that seed."""
    prompt = "def add(a, b):"
    alone_call = decoder.generate([prompt], max_new_tokens=24, seed=[12345], temperature=1.0).text[0]
    engine = Engine(decoder, slots=4, context=256)
    try:
        alone = "".join(e.text for e in engine.submit(engine.encode(prompt), 24, sampling={"temperature": 1.0}, seed=12345))
        events, others, done = [], [], threading.Event()

        def heard(event):  # on the engine's thread: after its first round alone, the others widen the batch under it
            if not events:
                others.extend(engine.submit(engine.encode(p), 30, sampling={"temperature": 1.0}, seed=s)
                              for p, s in zip(PROMPTS[1:], (None, 7, None)))
            events.append(event)
            if event.finish_reason is not None:
                done.set()

        engine.submit(engine.encode(prompt), 24, sampling={"temperature": 1.0}, seed=12345, emit=heard)
        assert done.wait(120)
        text = "".join(e.text for e in events)
        assert all(sum(len(e.tokens) for e in r) == 30 for r in others)
        assert max(engine.rows_per_round) == 4 and engine.widths[0] == 4  # it shared rounds, moved from a batch of 1
        assert text == alone == alone_call
        unseeded = {"".join(e.text for e in engine.submit(engine.encode(prompt), 24, sampling={"temperature": 1.0}))
                    for _ in range(3)}
        assert len(unseeded) > 1  # without a seed a request samples afresh: the equalities above are not by chance
        with pytest.raises(DecError, match="seed must be an integer"):
            engine.submit([1, 2], 3, seed="x")
    finally:
        engine.close()


def test_logprobs_are_released_with_their_tokens(decoder):
    """A request's logprobs are the ones generate reports for its tokens (the target's, after the sampler), one per
    released token, in every event, with its top alternatives best first; a request that did not ask gets none."""
    engine = Engine(decoder, slots=2, context=256)
    try:
        prompt = "class Stack:"
        asked = engine.submit(engine.encode(prompt), 20, sampling={"temperature": 0.8}, seed=3, logprobs=True,
                              top_logprobs=3)
        plain = engine.submit(engine.encode("import os\n"), 20, sampling={"temperature": 0.8})
        events = list(asked)
        assert all(e.logprobs is None for e in plain)
        assert all(len(e.logprobs) == len(e.tokens) == len(e.top) for e in events)
        tokens = [t for e in events for t in e.tokens]
        scores = [lp for e in events for lp in e.logprobs]
        expected = decoder.generate([prompt], max_new_tokens=20, seed=[3], temperature=0.8, logprobs=True)
        assert tokens == expected.tokens[0] and scores == pytest.approx(expected.logprobs[0], abs=1e-5)
        for t, lp, alts in zip(tokens, scores, (a for e in events for a in e.top)):
            values = [v for _, v in alts]
            assert len(alts) == 3 and values == sorted(values, reverse=True) and lp <= values[0] + 1e-6
            assert t not in [a for a, _ in alts] or dict(alts)[t] == pytest.approx(lp, abs=1e-5)
        with pytest.raises(DecError, match=r"top_logprobs must be an integer in \[0, 20\]"):
            engine.submit([1, 2], 3, logprobs=True, top_logprobs=21)
    finally:
        engine.close()


def test_a_long_prompt_is_fed_chunk_by_chunk_beside_the_running_rows(decoder, monkeypatch):
    """Chunked prefill: a prompt longer than prefill_chunk is fed that many positions a round, and its row generates
    from the round that feeds the last chunk, as if fed whole: greedy and seeded texts are generate's. A batch that
    widens while it is being fed (three requests arrive) moves it over, and it is fed again from the start there."""
    from decspec.backends.runtime import Batch

    fed, others = [], []
    feed = Batch._feed

    def spy(batch):
        before = batch.ctx.length.clone()
        feed(batch)
        fed.append((batch.ctx.length - before).max().item())
        if len(fed) == 1 and engine.slots == 4:  # on the engine's thread, while the long prompt is being fed
            others.extend(engine.submit(engine.encode(p), 8, sampling={"temperature": 0}) for p in PROMPTS[1:])

    monkeypatch.setattr(Batch, "_feed", spy)
    long = "def add(a, b):\n    return a + b\n" * 6  # 79 tokens
    expected = decoder.generate([long], max_new_tokens=16, temperature=0).text[0]
    seeded = decoder.generate([long], max_new_tokens=16, temperature=1.0, seed=[4]).text[0]
    engine = Engine(decoder, slots=2, context=256, prefill_chunk=16)
    try:
        assert "".join(e.text for e in engine.submit(engine.encode(long), 16, sampling={"temperature": 0})) == expected
        assert len(fed) == 4 and max(fed) == 16  # 79 positions: 16 at admission, then 16 a round (the last 15)
        assert "".join(e.text for e in engine.submit(engine.encode(long), 16, sampling={"temperature": 1.0}, seed=4)) == seeded
    finally:
        engine.close()
    fed.clear()
    engine = Engine(decoder, slots=4, context=256, prefill_chunk=16)
    try:
        assert "".join(e.text for e in engine.submit(engine.encode(long), 16, sampling={"temperature": 0})) == expected
        assert engine.widths[0] == 4 and len(fed) > 4  # it moved while being fed, and was fed again from the start
        assert ["".join(e.text for e in r) for r in others] == decoder.generate(PROMPTS[1:], max_new_tokens=8, temperature=0).text
    finally:
        engine.close()
    with pytest.raises(DecError, match="prefill_chunk must be an integer >= 16"):
        Engine(decoder, prefill_chunk=8)


def test_a_cancelled_request_frees_its_row(decoder):
    engine = Engine(decoder, slots=1, context=256)
    try:
        first = engine.submit(engine.encode("class Stack:"), 200, sampling={"temperature": 0})
        next(iter(first))  # it runs
        first.cancel()
        second = engine.submit(engine.encode("import os\n"), 3, sampling={"temperature": 0})
        assert len([e for e in second]) >= 1 and second.finish_reason == "length"  # it got the only slot
    finally:
        engine.close()


def test_the_engine_refuses_what_it_cannot_serve(decoder):
    engine = Engine(decoder, slots=1, context=64)
    try:
        with pytest.raises(DecError, match="exceeds the server's context of 64 tokens"):
            engine.submit(list(range(1, 60)), 10)
        with pytest.raises(DecError, match="max_tokens must be an integer >= 1"):
            engine.submit([1, 2], 0)
        with pytest.raises(DecError, match="unexpected keyword argument 'temprature'"):
            engine.submit([1, 2], 3, sampling={"temprature": 0.5})
        with pytest.raises(DecError, match="token id 1000000000 outside the model's vocabulary"):
            engine.encode([1, 10**9])
    finally:
        engine.close()
    with pytest.raises(DecError, match="slots must be an integer >= 1"):
        Engine(decoder, slots=0)
    with pytest.raises(DecError, match="beam search"):
        Engine(decspec.compile("specs/beam_search.dec"))


# ------------------------------------------------------------------------------------------------ over HTTP

def test_completions_with_the_openai_client(server, decoder):
    out = client(server).completions.create(model="spec", prompt="import os\n", max_tokens=12, temperature=0)
    assert out.choices[0].text == decoder.generate(["import os\n"], max_new_tokens=12, temperature=0).text[0]
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 12
    assert [m.id for m in client(server).models.list()] == ["spec"]


def test_chat_streams_as_server_sent_events(server, decoder):
    messages = [{"role": "user", "content": "Write a stack class."}]
    stream = client(server).chat.completions.create(model="spec", messages=messages, max_tokens=16, temperature=0,
                                                    stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == decoder.generate(messages=messages, max_new_tokens=16, temperature=0).text[0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16


def test_chat_logprobs_and_a_seed_through_the_openai_client(server, decoder):
    """`seed`, `logprobs` and `top_logprobs` in OpenAI's shapes, parsed by the stock client: streamed chunks carry
    their tokens' entries, and together they are the unstreamed reply's, which are generate's for that seed."""
    messages = [{"role": "user", "content": "Write a stack class."}]
    c = client(server)
    kwargs = dict(model="spec", messages=messages, max_tokens=12, temperature=1.0, seed=99, logprobs=True, top_logprobs=2)
    whole = c.chat.completions.create(**kwargs)
    chunks = [ch for ch in c.chat.completions.create(**kwargs, stream=True) if ch.choices and ch.choices[0].logprobs]
    entries = whole.choices[0].logprobs.content
    assert [e.token for ch in chunks for e in ch.choices[0].logprobs.content] == [e.token for e in entries]
    expected = decoder.generate(messages=messages, max_new_tokens=12, temperature=1.0, seed=[99], logprobs=True)
    assert whole.choices[0].message.content == expected.text[0]
    assert [e.logprob for e in entries] == pytest.approx(expected.logprobs[0], abs=1e-4)
    assert b"".join(bytes(e.bytes) for e in entries).decode() == expected.text[0]
    assert all(len(e.top_logprobs) == 2 for e in entries)
    out = c.completions.create(model="spec", prompt="import os\n", max_tokens=6, temperature=0, logprobs=1)
    lp = out.choices[0].logprobs
    assert "".join(lp.tokens) == out.choices[0].text and len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in lp.token_logprobs)  # greedy: all the mass on the kept token


def test_concurrent_streaming_clients_share_rounds(server, decoder):
    results: dict[int, str] = {}

    def run(i):
        stream = client(server).completions.create(model="spec", prompt=PROMPTS[i], max_tokens=24, temperature=0,
                                                   stream=True)
        results[i] = "".join(c.choices[0].text for c in stream)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    expected = decoder.generate(PROMPTS, max_new_tokens=24, temperature=0).text
    assert [results[i] for i in range(4)] == expected
    with urllib.request.urlopen(server + "/health", timeout=30) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
    c = client(server)
    for _ in range(4):  # more abandoned streams than slots: each must give its row back
        stream = c.completions.create(model="spec", prompt="class Stack:", max_tokens=200, temperature=0, stream=True)
        next(iter(stream))
        stream.close()
    out = c.completions.create(model="spec", prompt="import os\n", max_tokens=4, temperature=0)
    assert out.usage.completion_tokens == 4


@pytest.mark.parametrize("body, status, message", [
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "must be a JSON object"),
    ('{"prompt": "x", "max_tokens": 4, "frobnicate": 1}', 400, "unknown field 'frobnicate'"),
    ('{"prompt": "x", "max_tokens": -1}', 400, "'max_tokens' must be an integer >= 1"),
    ('{"prompt": "x", "max_tokens": 4, "n": 2}', 400, "'n' = 2 is not supported"),
    ('{"prompt": "x", "max_tokens": 4, "seed": 1.5}', 400, "'seed' must be an integer in [-2**63, 2**64)"),
    ('{"prompt": "x", "max_tokens": 4, "seed": 18446744073709551616}', 400, "'seed' must be an integer"),
    ('{"prompt": "x", "max_tokens": 4, "logprobs": true}', 400, "'logprobs' must be an integer in [0, 20]"),
    ('{"prompt": "x", "max_tokens": 4, "logprobs": 21}', 400, "'logprobs' must be an integer in [0, 20]"),
    ('{"prompt": "x", "max_tokens": 4, "temperature": "hot"}', 400, "'temperature' must be a number"),
    ('{"prompt": "x", "max_tokens": 4, "temperature": -1}', 400, "outside temperature's range"),
    ('{"prompt": "x", "max_tokens": 4, "stream": "yes"}', 400, "'stream' must be true or false"),
    ('{"prompt": "x", "max_tokens": 4, "model": "gpt-4"}', 404, "the model 'gpt-4' does not exist"),
    ('{"max_tokens": 4}', 400, "'prompt' is required"),
    ('{"prompt": "\\ud800", "max_tokens": 4}', 400, "not valid Unicode text"),
    ('{"prompt": [1, 99999], "max_tokens": 4}', 400, "token id 99999 outside the model's vocabulary"),
    ('{"prompt": "x", "max_tokens": 4, "stop": 5}', 400, "stop must be a string"),
    ('{"prompt": "x", "max_tokens": 4, "top_k": 5}', 400, "has no top_k stage"),
    ('{"prompt": 7, "max_tokens": 4}', 400, "the prompt must be a string or a non-empty list of token ids"),
    ('{"prompt": "' + "word " * 400 + '", "max_tokens": 4}', 400, "exceeds the server's context of 256 tokens"),
])
def test_malformed_requests_get_a_json_error(server, body, status, message):
    code, reply = post(server, "/v1/completions", body)
    assert code == status and message in reply["error"]["message"], reply


def test_chat_requests_are_checked_too(server):
    code, reply = post(server, "/v1/chat/completions", '{"messages": [{"role": "user"}], "max_tokens": 4}')
    assert code == 400 and "messages[0]" in reply["error"]["message"]
    code, reply = post(server, "/v1/chat/completions", '{"max_tokens": 4}')
    assert code == 400 and "'messages' is required" in reply["error"]["message"]
    code, reply = post(server, "/v1/nothing", "{}")
    assert code == 404 and reply["error"]["type"] == "not_found_error"


def test_a_taken_port_is_a_clear_refusal(decoder):
    import socket

    from decspec.serve import serve

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with pytest.raises(DecError, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}"):
        serve(decoder, port=taken.getsockname()[1])
    taken.close()
