"""`decspec serve`: an OpenAI-compatible HTTP server over a Decoder, with continuous batching.

`Engine` owns one running batch (backends/runtime.py `Batch`) of `slots` rows and a thread that runs its rounds.
A request waits until a row is free, then joins the batch between two rounds (`Batch.admit`): its prompt is fed
in the next round, beside the other rows' drafts and verification, and its tokens stream out as rounds commit
them. A row that ends (EOS, stop string, max_tokens, or its client gone) frees its slot at once, so no request
waits for another to finish; only a full batch makes a request queue.

    engine = Engine(decspec.compile("specs/speculative.dec", target=..., draft=...), slots=8)
    request = engine.submit(prompt_ids, max_new_tokens=64, stop=("\\n\\n",), sampling={"temperature": 0.7})
    for event in request:            # an Event per round that added something, the last with finish_reason
        print(event.text, end="")

`create_app(engine, name)` is the HTTP side (Starlette, `pip install decspec[serve]`): `/v1/completions`,
`/v1/chat/completions` (`stream: true` as server-sent events), `/v1/models`, `/health`. Every malformed request
gets a JSON error (OpenAI's shape: {"error": {"message", "type", "param", "code"}}) naming the field, never a
traceback; a request the decoder cannot honour (`n` > 1, a setting the spec has no stage for) is refused, not
served otherwise.

A request's `seed` gives its row a random stream of its own (backends/draws.py): its text is the same whichever
requests share the batch, and the same as `Decoder.generate(prompt, seed=[seed])`. `logprobs` (completions: the
number of most likely tokens; chat: `logprobs` and `top_logprobs`) are the target's, after the sampler pipeline
and the grammar mask (backends/logprobs.py): one more target forward per round, over the rows that asked.

What is shared: one random generator for the unseeded rows, and the rounds: a row that has ended still rides along
(a one-token step per model call) until a new request takes its slot. A prompt longer than `prefill_chunk` is fed
that many positions a round (chunked prefill, Batch.admit), so the running rows' rounds stay short meanwhile.
Not done: the inductor and MLIR backends (serve runs eager rounds).
"""
from __future__ import annotations

import json
import math
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from decspec.backends.arguments import (MAX_TOP_LOGPROBS, chat_prompts, context_capacity, logprobs_request, prompts,
                                        seed_value, shown, stop_strings)
from decspec.backends.detokenize import RowText
from decspec.backends.runtime import Batch, draft_room
from decspec.dsl.diagnostics import DecError
from decspec.stream import HeldScores
from decspec.stdlib.models.protocol import eos_token_ids


@dataclass
class Event:
    """What one round added to a request: tokens and the text they complete; finish_reason ("stop", "length",
    or "error" with `error` set) on the last event."""

    tokens: list[int]
    text: str
    finish_reason: str | None = None
    error: str | None = None
    logprobs: list[float] | None = None  # of `tokens`, when the request asked
    top: list[list[tuple[int, float]]] | None = None  # per token, the most likely (id, log p), when it asked for them


@dataclass
class Request:
    """One prompt in the engine. Iterate it for its Events (blocking), or give `emit` to receive them (called from
    the engine's thread). `cancel()` frees its row at the next round."""

    prompt: list[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    sampling: dict[str, float] = field(default_factory=dict)  # {PerRow key: value}, every key of the batch's
    emit: Callable[[Event], None] | None = None
    seed: int | None = None  # its own random stream (backends/draws.py); None: the batch's generator
    logprobs: bool = False
    top_logprobs: int = 0
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    cancelled: bool = False
    completion_tokens: int = 0
    finish_reason: str | None = None
    held: HeldScores = field(default_factory=HeldScores)  # logprobs committed and not yet released with their tokens

    def __post_init__(self):
        if self.emit is None:
            self._events: queue.Queue[Event] = queue.Queue()
            self.emit = self._events.put

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self._events.get()
            yield event
            if event.finish_reason is not None:
                return


class Engine:
    """Continuous batching over a compiled Decoder: `slots` rows of `context` positions each (prompt + new
    tokens); see the module docstring."""

    def __init__(self, decoder: Any, slots: int = 4, context: int = 2048, prefill_chunk: int = 512):
        for name, value, low in (("slots", slots, 1), ("context", context, 16), ("prefill_chunk", prefill_chunk, 16)):
            at_least(name, value, low)
        if decoder.search is not None:
            raise DecError("serve runs decoders with rounds; beam search (the `search` slot) has none to batch",
                           decoder.spec.slot("search").span)
        if decoder.denoise is not None:
            raise DecError("serve runs decoders with rounds; a diffusion decoder (the `denoise` slot) decodes whole blocks "
                           "of a shared canvas, which continuous batching does not do yet", decoder.spec.slot("denoise").span)
        if decoder.backend.NAME != "eager":
            raise DecError(f"serve runs the eager backend's rounds (continuous batching on {decoder.backend.NAME} is not "
                           "done); compile the spec with backend='eager'")
        self.decoder = decoder
        models = decoder._bound_models()
        self.tokenizer = decoder.tokenizer
        if self.tokenizer is None:
            raise DecError("serve speaks text: the target model carries no tokenizer")
        target = models[decoder.spec.models[0]]
        from decspec.backends.sampling import sampler_settings

        self.defaults = sampler_settings(decoder.spec, {}, 1)  # the spec's own sampler numbers
        self.graph = decoder._open_graph() if self.defaults else decoder.graph
        self.scoring = decoder._scoring(True, open=bool(self.defaults))  # rows that ask are scored (backends/logprobs.py)
        self.pieces: list[tuple[str, bytes]] | None = None  # token id -> (text, bytes), built when logprobs first need it
        self.models = models
        limit = min([m.max_positions for m in models.values() if getattr(m, "max_positions", None)] or [context])
        self.context = min(context, limit)
        # positions per row, bounded as generate's are (the most rows the batch can grow to, at this context)
        self.capacity = context_capacity(slots, 0, self.context, draft_room(self.graph), models, what="--context")
        self.slots = slots
        self.prefill_chunk = prefill_chunk  # a longer prompt is fed this many positions a round (Batch.admit's chunk)
        self.eos = eos_token_ids(target)
        self.batch = self._new_batch(1)
        self.rows: list[Request | None] = [None]
        self.widths: list[int] = []  # the batch widths the engine has run at, in order (a change: a rebuild; the last 1,000)
        self.waiting: deque[Request] = deque()
        self.wakeup = threading.Condition()
        self.closed = False
        self.rounds = 0
        self.rows_per_round: list[int] = []  # how many requests each round served (the last 10,000 rounds)
        self.thread = threading.Thread(target=self._loop, name="decspec-engine", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------------------------------ requests

    def sampling(self, given: dict[str, Any]) -> dict[str, float]:
        """A request's sampler settings checked against the spec (DecError) -> {PerRow key: value}."""
        from decspec.backends.sampling import sampler_settings

        return {k: float(v[0]) for k, v in sampler_settings(self.decoder.spec, given, 1).items()} if self.defaults or given else {}

    def encode(self, prompt: Any = None, messages: Any = None) -> list[int]:
        """A prompt's ids: text (encoded as the model's tokenizer does), a list of ids, or a chat conversation."""
        if messages is not None:
            return chat_prompts(messages, self.tokenizer)[0]
        if isinstance(prompt, str) or (isinstance(prompt, list) and prompt):  # checked and encoded as generate's are
            return prompts([prompt], self.models[self.decoder.spec.models[0]].vocab_size, self.tokenizer)[0]
        raise DecError(f"the prompt must be a string or a non-empty list of token ids (got {shown(prompt)})")

    def piece(self, token: int) -> tuple[str, bytes]:
        """A token's text and bytes, as logprobs show it (a token that ends inside a UTF-8 character shows U+FFFD;
        its bytes are exact; a special token shows its name)."""
        if self.pieces is None:
            from decspec.stdlib.grammars.vocab import token_bytes

            backend = getattr(self.tokenizer, "backend", self.tokenizer)
            name = getattr(backend, "id_to_token", lambda i: None)
            self.pieces = [(b.decode("utf-8", errors="replace"), b) if b is not None else
                           ((name(i) or ""), (name(i) or "").encode()) for i, b in enumerate(token_bytes(self.tokenizer))]
        return self.pieces[token] if 0 <= token < len(self.pieces) else ("", b"")

    def submit(self, prompt: list[int], max_new_tokens: int, stop: Any = None, sampling: dict[str, Any] | None = None,
               emit: Callable[[Event], None] | None = None, seed: int | None = None, logprobs: bool = False,
               top_logprobs: int = 0) -> Request:
        """Queue a prompt (ids); checked here, so a bad request fails before it waits (DecError). `seed`: the
        request's own random stream; `logprobs`: its tokens' log-probabilities, with `top_logprobs` alternatives."""
        if self.closed or not self.thread.is_alive():
            raise DecError("the engine is shut down")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise DecError(f"max_tokens must be an integer >= 1 (got {shown(max_new_tokens)})")
        if not prompt:
            raise DecError("the prompt is empty: give at least one token")
        if len(prompt) + max_new_tokens > self.context:
            raise DecError(f"the prompt ({len(prompt)} tokens) plus max_tokens ({max_new_tokens}) exceeds the server's "
                           f"context of {self.context} tokens; shorten the prompt or lower max_tokens")
        stops = stop_strings(stop, 1)
        seed = seed_value(seed)
        logprobs, top_logprobs = logprobs_request(logprobs, top_logprobs)
        if logprobs and self.scoring is None:
            raise DecError("this decoder does not report logprobs")
        request = Request(list(prompt), max_new_tokens, stops[0] if stops else (), self.sampling(sampling or {}), emit,
                          seed, logprobs, top_logprobs)
        with self.wakeup:
            self.waiting.append(request)
            self.wakeup.notify()
        return request

    def close(self) -> None:
        """Stop the engine thread; requests still running or waiting end with an error event."""
        with self.wakeup:
            self.closed = True
            self.wakeup.notify()
        self.thread.join(timeout=60)

    @property
    def active(self) -> int:
        return sum(r is not None for r in self.rows)

    # ------------------------------------------------------------------------------------------ the loop

    def _new_batch(self, width: int) -> Batch:
        """An empty batch of `width` rows (every row free)."""
        batch = Batch(self.graph, self.models, [[0]] * width, [1] * width, capacity=self.capacity, seed=None,
                      eos=None if self.eos is None else list(self.eos), rules=self.decoder.backend.RULES,
                      backend=self.decoder.backend.NAME, grammars=self.decoder._bound_grammars(),
                      texts=[RowText(self.tokenizer.decode) for _ in range(width)],
                      sampling={k: v.repeat(width) for k, v in self.defaults.items()} or None, logprobs=self.scoring)
        batch.done[:] = True
        return batch

    def _resize(self) -> None:
        """Keep the batch as wide as the requests need, within `slots`: every row runs every round, so a free row
        costs a row's step. The width is the power of two that holds the running and waiting requests; it grows
        when they do not fit and shrinks when they fill a quarter of it. The running requests move over with their
        whole context (their caches are refilled in the next round, one prefill) and keep their text state."""
        demand = self.active + len(self.waiting)
        width = min(self.slots, 1 << max(0, demand - 1).bit_length())
        current = len(self.rows)
        if width == current or (width < current and width * 4 > current):  # shrink once they fit a quarter of it
            return
        old, batch = self.batch, self._new_batch(width)
        rows: list[Request | None] = [None] * width
        for i, (b, request) in enumerate((b, r) for b, r in enumerate(self.rows) if r is not None):
            feeding = old.feeding(b)  # a prompt still being fed starts over in the new batch, chunk by chunk
            remaining = int(old.max_new_tokens[b] - old.produced[b])
            batch.admit(i, old.prompt_of(b), remaining, old.texts[b], request.sampling,
                        start=None if feeding else int(old.ctx.start[b]), seed=request.seed, logprobs=request.logprobs,
                        top_logprobs=request.top_logprobs, chunk=self.prefill_chunk if feeding else None)
            batch.state.draws.carry(i, old.state.draws, b)  # a seeded row goes on with its stream, not from its start
            rows[i] = request
        self.batch, self.rows = batch, rows
        self.widths.append(width)
        del self.widths[:-1_000]

    def _admit(self) -> None:
        for b, request in enumerate(self.rows):
            if request is not None and request.cancelled:
                self.batch.release(b)
                self.rows[b] = None
        with self.wakeup:
            while not self.closed and not self.waiting and not self.active:
                self.wakeup.wait()
            self._resize()
            batch = self.batch
            free = [b for b, r in enumerate(self.rows) if r is None]
            while free and self.waiting:
                request = self.waiting.popleft()
                if request.cancelled:
                    continue
                b = free.pop(0)
                batch.admit(b, request.prompt, request.max_new_tokens, RowText(self.tokenizer.decode, request.stop),
                            request.sampling, seed=request.seed, logprobs=request.logprobs,
                            top_logprobs=request.top_logprobs, chunk=self.prefill_chunk)
                self.rows[b] = request

    def _loop(self) -> None:
        while True:
            try:
                self._admit()
                if self.closed:
                    break
                commit = self.batch.step()
            except Exception as e:  # noqa: BLE001 - every request still running hears of it; the batch starts over
                message = said(e) if isinstance(e, DecError) else f"internal error: {type(e).__name__}: {e}"
                self._fail(message)
                continue
            self.rounds += 1
            self.rows_per_round.append(self.active)
            del self.rows_per_round[:-10_000]
            stats = self.batch.stats
            stats.accepted.clear(), stats.drafted.clear()  # a server runs for days: keep no per-round lists
            for b, request in enumerate(self.rows):
                if request is None:
                    continue
                end = commit.finished.get(b)
                tokens, text = self.batch.texts[b].release(final=end is not None)
                request.completion_tokens += len(tokens)
                scores = tops = None
                if request.logprobs:  # released with their tokens (a stop string's cut drops the rest with them)
                    scores, tops = request.held.release(commit.logprobs[b], commit.top[b] if request.top_logprobs else None,
                                                        len(tokens))
                if end is not None:
                    self.rows[b] = None
                if tokens or text or end is not None:
                    request.finish_reason = end[0] if end else None
                    self._emit(request, Event(tokens, text, request.finish_reason, logprobs=scores, top=tops))
        self._fail("the server is shutting down")

    def _fail(self, message: str) -> None:
        """End every request (running and waiting) with an error event, and free every row."""
        with self.wakeup:
            failed = [r for r in self.rows if r is not None] + list(self.waiting)
            self.waiting.clear()
        self.rows = [None] * len(self.rows)
        self.batch.done[:] = True
        for request in failed:
            request.finish_reason = "error"
            self._emit(request, Event([], "", "error", message))

    @staticmethod
    def _emit(request: Request, event: Event) -> None:
        try:
            request.emit(event)
        except Exception:  # noqa: BLE001 - a listener gone (its event loop closed): the request is over for it
            request.cancel()


def said(e: DecError) -> str:
    """A DecError's diagnostics on one line: each message, and its hint."""
    return "; ".join(d.message + (f" (hint: {d.hint})" if d.hint else "") for d in e.diagnostics)


# ---------------------------------------------------------------------------------------------- HTTP

MAX_BODY = 16 * 2**20  # bytes of a request body


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind


COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stream", "stream_options", "n",
          "seed", "presence_penalty", "frequency_penalty", "repetition_penalty", "user", "logprobs", "logit_bias"}
FIELDS = {"completions": COMMON | {"prompt", "echo", "suffix", "best_of"},
          "chat": COMMON | {"messages", "max_completion_tokens", "top_logprobs"}}
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
NEUTRAL = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "top_p": 1.0, "top_k": 0,
           "min_p": 0.0}  # a value that changes nothing: accepted even when the spec has no such stage


def request_settings(engine: Engine, body: dict, kind: str) -> dict[str, Any]:
    """The request body checked -> submit's arguments (BadRequest names the field)."""
    unknown = sorted(set(body) - FIELDS[kind])
    if unknown:
        raise BadRequest(f"unknown field '{unknown[0]}' (this server takes: {', '.join(sorted(FIELDS[kind]))})", unknown[0])
    for name, allowed, why in (("n", (None, 1), "one choice per request"), ("best_of", (None, 1), "one choice per request"),
                               ("echo", (None, False), "the prompt is not echoed"),
                               ("suffix", (None,), "no insertion mode")):
        value = body.get(name)
        if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
            raise BadRequest(f"'{name}' = {json.dumps(value)[:100]} is not supported here: {why}", name)
    if body.get("logit_bias"):
        raise BadRequest("'logit_bias' is not supported here", "logit_bias")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest(f"'stream' must be true or false (got {shown(body['stream'])})", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise BadRequest("'stream_options' takes only {\"include_usage\": true|false}", "stream_options")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)  # None: completions take OpenAI's 16; chat runs to the end of the context
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest(f"'{key}' must be an integer >= 1 (got {shown(max_tokens)})", key)
    if max_tokens is None and kind == "completions":
        max_tokens = 16
    sampling = {}
    stages = {s.name for s in engine.decoder.spec.slot("sampler", ())}
    for name in SAMPLING:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadRequest(f"'{name}' must be a number (got {shown(value)})", name)
        if name not in stages and (value == NEUTRAL.get(name) or (name == "temperature" and value == 0 and not stages)):
            continue  # asks for what the spec does anyway
        sampling[name] = int(value) if name == "top_k" and float(value).is_integer() else value
    try:
        seed = seed_value(body.get("seed"))
    except DecError:
        raise BadRequest(f"'seed' must be an integer in [-2**63, 2**64) (got {shown(body.get('seed'))})", "seed") from None
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if kind == "chat":  # logprobs: true|false, top_logprobs: 0..20 alternatives (with logprobs)
        if logprobs is not None and not isinstance(logprobs, bool):
            raise BadRequest(f"'logprobs' must be true or false (got {shown(logprobs)})", "logprobs")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
            raise BadRequest(f"'top_logprobs' must be an integer in [0, {MAX_TOP_LOGPROBS}] (got {shown(top)})", "top_logprobs")
        if top and not logprobs:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        wants, top = bool(logprobs), top or 0
    else:  # logprobs: None, or how many alternatives beside each token (0..20)
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                     or not 0 <= logprobs <= MAX_TOP_LOGPROBS):
            raise BadRequest(f"'logprobs' must be an integer in [0, {MAX_TOP_LOGPROBS}] (got {shown(logprobs)})", "logprobs")
        wants, top = logprobs is not None, logprobs or 0
    if wants and engine.scoring is None:
        raise BadRequest("this decoder does not report logprobs", "logprobs")
    return {"max_new_tokens": max_tokens, "stop": body.get("stop"), "sampling": sampling, "seed": seed,
            "logprobs": wants, "top_logprobs": top}


class LogprobsShape:
    """A request's logprobs in OpenAI's shapes: chat's {"content": [{token, logprob, bytes, top_logprobs}]}, and
    completions' {tokens, token_logprobs, top_logprobs, text_offset} (offsets counted over the tokens' text)."""

    def __init__(self, engine: Engine, kind: str, top: int):
        self.engine, self.kind, self.top, self.offset = engine, kind, top, 0

    def __call__(self, events: list[Event]) -> dict | None:
        tokens = [t for e in events for t in e.tokens]
        scores = [lp for e in events for lp in (e.logprobs or [])]
        tops = [alt for e in events for alt in (e.top or [])] or [[] for _ in tokens]
        piece = self.engine.piece
        if self.kind == "chat":
            entry = lambda t, lp: {"token": piece(t)[0], "logprob": lp, "bytes": list(piece(t)[1])}  # noqa: E731
            return {"content": [entry(t, lp) | {"top_logprobs": [entry(a, alp) for a, alp in alts]}
                                for t, lp, alts in zip(tokens, scores, tops)], "refusal": None}
        offsets = []
        for t in tokens:
            offsets.append(self.offset)
            self.offset += len(piece(t)[0])
        top = [{piece(a)[0]: alp for a, alp in alts} for alts in tops] if self.top else None
        return {"tokens": [piece(t)[0] for t in tokens], "token_logprobs": scores, "top_logprobs": top,
                "text_offset": offsets}


def create_app(engine: Engine, name: str):
    """The Starlette application serving `engine` under the model name `name`."""
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request as HTTPRequest
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route
    except ImportError as e:
        raise DecError("decspec serve needs starlette and uvicorn: pip install 'decspec[serve]'") from e
    import asyncio

    def error(e: BadRequest) -> JSONResponse:
        return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": None}},
                            status_code=e.status)

    async def body_of(request: HTTPRequest) -> dict:
        raw = bytearray()
        async for part in request.stream():  # read no further than the limit
            raw += part
            if len(raw) > MAX_BODY:
                raise BadRequest(f"the request body is over {MAX_BODY // 2**20} MiB", status=413)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON: {str(e)[:200]}") from None
        if not isinstance(body, dict):
            raise BadRequest(f"the request body must be a JSON object (got {type(body).__name__})")
        model = body.get("model")
        if model is not None and model != name:
            raise BadRequest(f"the model '{str(model)[:100]}' does not exist; this server serves '{name}'", "model", 404,
                             "not_found_error")
        return body

    async def health(request: HTTPRequest) -> JSONResponse:
        alive = engine.thread.is_alive() and not engine.closed
        return JSONResponse({"status": "ok" if alive else "down", "active": engine.active,
                             "waiting": len(engine.waiting), "slots": engine.slots}, status_code=200 if alive else 503)

    async def models(request: HTTPRequest) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                          "owned_by": "decspec"}]})

    async def run(request: HTTPRequest, kind: str):
        try:
            body = await body_of(request)
            settings = request_settings(engine, body, kind)
            if kind == "chat":
                if "messages" not in body:
                    raise BadRequest("'messages' is required", "messages")
                prompt = engine.encode(messages=body["messages"])
            else:
                if "prompt" not in body:
                    raise BadRequest("'prompt' is required", "prompt")
                text = body["prompt"]
                if isinstance(text, list) and len(text) == 1 and isinstance(text[0], (str, list)):
                    text = text[0]  # one prompt in a list
                elif isinstance(text, list) and text and all(isinstance(t, str) for t in text):
                    raise BadRequest("one prompt per request: send several requests (they are batched together)", "prompt")
                prompt = engine.encode(prompt=text)
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[Event] = asyncio.Queue()
            limit = settings["max_new_tokens"] or max(1, engine.context - len(prompt))  # chat: to the end of the context
            handle = engine.submit(prompt, limit, settings["stop"], settings["sampling"],
                                   emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
                                   seed=settings["seed"], logprobs=settings["logprobs"], top_logprobs=settings["top_logprobs"])
        except BadRequest as e:
            return error(e)
        except DecError as e:
            return error(BadRequest(said(e)))
        created = int(time.time())
        ident = ("chatcmpl-" if kind == "chat" else "cmpl-") + handle.id
        usage = lambda: {"prompt_tokens": len(prompt), "completion_tokens": handle.completion_tokens,  # noqa: E731
                         "total_tokens": len(prompt) + handle.completion_tokens}

        shape = LogprobsShape(engine, kind, settings["top_logprobs"]) if settings["logprobs"] else None

        def chunk(text: str | None, finish: str | None, first: bool = False, scored: list[Event] = ()) -> dict:
            logprobs = shape(list(scored)) if shape is not None and not first else None
            if kind == "chat":
                delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name, "choices": [choice]}
            choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
            return {"id": ident, "object": "text_completion", "created": created, "model": name, "choices": [choice]}

        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            async def sse():
                try:
                    if kind == "chat":
                        yield f"data: {json.dumps(chunk(None, None, first=True))}\n\n"
                    while True:
                        event = await events.get()
                        if event.error is not None:
                            yield f"data: {json.dumps({'error': {'message': event.error, 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
                            break
                        if event.text or event.finish_reason is not None:
                            yield f"data: {json.dumps(chunk(event.text, event.finish_reason, scored=[event]))}\n\n"
                        if event.finish_reason is not None:
                            if include_usage:
                                yield f"data: {json.dumps(chunk(None, None) | {'choices': [], 'usage': usage()})}\n\n"
                            break
                    yield "data: [DONE]\n\n"
                finally:  # the client went away (or the stream ended): free the row
                    handle.cancel()

            return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        received = []
        try:
            while True:
                event = await events.get()
                if event.error is not None:
                    return error(BadRequest(event.error, status=500, kind="server_error"))
                received.append(event)
                if event.finish_reason is not None:
                    break
        finally:
            handle.cancel()
        text = "".join(e.text for e in received)
        logprobs = None if shape is None else shape(received)
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                      "finish_reason": handle.finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": handle.finish_reason}
            obj = "text_completion"
        return JSONResponse({"id": ident, "object": obj, "created": created, "model": name, "choices": [choice],
                             "usage": usage()})

    async def guarded(request: HTTPRequest, kind: str):
        try:
            return await run(request, kind)
        except Exception as e:  # noqa: BLE001 - a decspec bug: a JSON error that says so, not a dropped connection
            return error(BadRequest(f"internal error: {type(e).__name__}: {str(e)[:300]} (a decspec bug)", status=500,
                                    kind="server_error"))

    async def completions(request: HTTPRequest):
        return await guarded(request, "completions")

    async def chat(request: HTTPRequest):
        return await guarded(request, "chat")

    async def not_found(request: HTTPRequest, exc: Exception) -> JSONResponse:
        status = getattr(exc, "status_code", 500)
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error(BadRequest(message.get(status, "internal error"), status=status,
                                kind="not_found_error" if status == 404 else "invalid_request_error"))

    routes = [Route("/health", health), Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, 500: not_found})


def serve(decoder: Any, *, host: str = "127.0.0.1", port: int = 8000, slots: int = 4, context: int = 2048,
          prefill_chunk: int = 512, name: str | None = None, sockets: list | None = None, ready: Callable[[Any], None] | None = None) -> None:
    """Run the server until interrupted (uvicorn). `sockets`: already bound sockets (tests bind port 0); `ready`
    is called with the uvicorn Server once it listens."""
    try:
        import uvicorn
    except ImportError as e:
        raise DecError("decspec serve needs starlette and uvicorn: pip install 'decspec[serve]'") from e
    if sockets is None:  # bound here, so a taken port is a clear refusal before the model work starts
        sockets = [listen(host, port)]
    engine = Engine(decoder, slots=slots, context=context, prefill_chunk=prefill_chunk)
    app = create_app(engine, name or decoder.spec.name)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    if ready is not None:
        threading.Thread(target=_when_started, args=(server, ready), daemon=True).start()
    try:
        server.run(sockets=sockets)
    finally:
        engine.close()


def at_least(name: str, value: Any, low: int) -> int:
    """A count setting checked: an integer (not a bool) >= low, else a DecError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DecError(f"{name} must be an integer >= {low} (got {shown(value)})")
    return value


def listen(host: str, port: int):
    """A socket bound to host:port (port 0: a free one), so that a taken port or a bad host is a clear refusal before
    any model work starts (the serving stack listens on it, or, for Ray's proxy, binds it again after it is closed)."""
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise DecError(f"port must be 0..65535 (got {shown(port)})")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        raise DecError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}",
                       hint="check --host, pick another --port, or stop what is using it") from None
    return sock


class Background:
    """A server running in a thread of this process on a free port of 127.0.0.1 (tests, benchmarks, notebooks):
    `url` is its base (`http://127.0.0.1:PORT`); `stop()` ends it.

        with Background(decoder, slots=4) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    """

    def __init__(self, decoder: Any, *, timeout: float = 120, **options: Any):
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        started, self._server = threading.Event(), None

        def ready(server: Any) -> None:
            self._server = server
            started.set()

        self._thread = threading.Thread(target=serve, args=(decoder,), kwargs=dict(options, sockets=[sock], ready=ready),
                                        daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise DecError(f"the server did not start within {timeout:g} s")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(30)

    def __enter__(self) -> "Background":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _when_started(server: Any, ready: Callable[[Any], None]) -> None:
    while not server.started:
        time.sleep(0.01)
    ready(server)
