"""`decspec serve --replicas N`: N copies of `decspec serve`'s engine behind one HTTP address, on Ray Serve.

Each replica is a Ray Serve deployment replica (a process) that compiles the spec itself, builds its own
`decspec.serve.Engine` (continuous batching over `slots` rows) and serves decspec's own Starlette application,
`decspec.serve.create_app`, through `serve.ingress`: every route, error and stream is the one `decspec serve`
gives. Ray's HTTP proxy listens on `host:port` and hands each request to a replica with its default router (power
of two choices: of two random replicas, the one with fewer requests in flight); `max_ongoing_requests` is the
engine's `slots`, so a replica whose rows are all taken gets no more requests while another has a free row, and
requests beyond every replica's rows wait in the proxy's queue. Each response says which replica served it in an
`x-decspec-replica` header (Ray's replica id); the body is `decspec serve`'s.

    with Replicas("specs/prompt_lookup.dec", replicas=2, slots=4, port=0, target="smollm2-135m-instruct") as served:
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused")

    run_replicas("specs/prompt_lookup.dec", replicas=2, port=8000, target="smollm2-135m-instruct")  # until Ctrl-C

Ray is an optional extra (`pip install 'decspec[replicas]'`, Ray Serve). The Ray instance is a local one, started
for the server and shut down with it (`ray.init(address="local")`): joining an existing cluster is not done.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from decspec.backends.arguments import shown
from decspec.dsl.diagnostics import DecError
from decspec.serve import at_least, listen

HEADER = "x-decspec-replica"  # the response header naming the replica that served a request
NEEDS_RAY = "decspec serve --replicas needs Ray Serve: pip install 'decspec[replicas]'"
APP = "decspec"  # the Ray Serve application's name
MODEL_OPTIONS = ("target", "draft", "dtype", "quantize")  # what `decspec serve` takes as --target, --draft, ...


def _ray():
    """ray and ray.serve, or the DecError that says how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise DecError(f"{NEEDS_RAY} ({e})") from None
    return ray, serve




def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpuat_least() or 1


def compile_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The compile options as a replica gets them: model names kept, paths that exist made absolute (a replica's
    working directory is Ray's, not this one)."""
    out = dict(options)
    for role in ("target", "draft"):
        value = out.get(role)
        if isinstance(value, (str, os.PathLike)) and Path(value).expanduser().exists():
            out[role] = str(Path(value).expanduser().resolve())
    return out


def build_decoder(spec: str, options: Mapping[str, Any]) -> Any:
    """Compile `spec` as `decspec serve SPEC` does: `target`/`draft` are named models, model directories or .gguf files
    (or Model objects), `dtype` ("float32", "bfloat16", "float16") and `quantize` ("int4") as the command line's, no
    models at all: the shipped reference pair; `decoder` picks a decoder of the file, `overrides` (a dict) and every
    other option set the spec's parameters (k=6)."""
    import decspec
    from decspec.cli import _models

    rest = dict(options)
    roles = {k: rest.pop(k) for k in MODEL_OPTIONS if k in rest}
    decoder = rest.pop("decoder", None)
    overrides = dict(rest.pop("overrides", None) or {})
    overrides.update(rest)
    if any(v is not None and not isinstance(v, (str, os.PathLike)) for k, v in roles.items() if k in ("target", "draft")):
        models = {k: roles[k] for k in ("target", "draft") if roles.get(k) is not None}  # Model objects, as given
    else:
        from types import SimpleNamespace

        models = _models(SimpleNamespace(**{k: None if roles.get(k) is None else str(roles[k]) for k in MODEL_OPTIONS}))
    return decspec.compile(spec, decoder=decoder, models=models, overrides=overrides)


def precheck(spec: str, options: Mapping[str, Any]) -> Any:
    """What can be refused before Ray starts, cheaply: the spec and its parameter overrides, a beam-search spec (the
    engine has no rounds to batch), a model name that is not one, and a named model not pulled yet (pulled here once,
    not by every replica at the same time)."""
    from decspec.dsl.check import load
    from decspec.stdlib.models.registry import MODELS, pull, resolve_model

    rest = {k: v for k, v in options.items() if k not in MODEL_OPTIONS and k not in ("decoder", "overrides")}
    checked = load(spec, overrides={**dict(options.get("overrides") or {}), **rest}, decoder=options.get("decoder"))
    if checked.slot("search") is not None:
        raise DecError("serve runs decoders with rounds; beam search (the `search` slot) has none to batch",
                       checked.slot("search").span)
    if checked.slot("denoise") is not None:
        raise DecError("serve runs decoders with rounds; a diffusion decoder (the `denoise` slot) has none to batch",
                       checked.slot("denoise").span)
    for option, allowed in (("dtype", ("float32", "bfloat16", "float16")), ("quantize", ("int4",))):
        if options.get(option) is not None and options[option] not in allowed:
            raise DecError(f"{option} must be one of {', '.join(allowed)} (got {shown(options[option])})")
    if options.get("draft") is not None and options.get("target") is None:
        raise DecError("--draft needs --target too: the shipped target's vocabulary will not match your draft")
    for role in ("target", "draft"):
        value = options.get(role)
        if not isinstance(value, (str, os.PathLike)):
            continue
        text = str(value)
        if text in MODELS:
            pull(text)
        elif not Path(text).expanduser().exists():
            resolve_model(text)  # raises its DecError (neither a named model nor a model directory), loading nothing
            raise DecError(f"--{role} {text}: no such file or directory")
    return checked


def _port(host: str, port: int) -> int:
    """Check that host:port can be listened on (port 0: pick a free one) -> the port. Ray's proxy binds it later."""
    sock = listen(host, port)
    try:
        return sock.getsockname()[1]
    finally:
        sock.close()


class ReplicaHeader:
    """ASGI middleware: adds `x-decspec-replica: ID` to every HTTP response (which replica served it)."""

    def __init__(self, app: Any, replica: str):
        self.app, self.value = app, replica.encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (HEADER.encode(), self.value)]}
            await send(message)

        await self.app(scope, receive, tagged)


class ReplicaFailed(RuntimeError):
    """A replica could not start: its message is what the driver shows (Ray's deployment status carries it)."""


class Replica:
    """One replica (a Ray actor process): the compiled spec, its Engine, and decspec's app over it. Wrapped by
    `serve.ingress()` in `deployment()`; Ray calls `__serve_build_asgi_app__` once the constructor has run."""

    def __init__(self, spec: str, options: dict, engine: dict, name: str | None, threads: int):
        import torch

        torch.set_num_threads(threads)
        from decspec.serve import Engine

        try:
            decoder = build_decoder(spec, options)
            self.engine = Engine(decoder, **engine)  # slots, context, prefill_chunk
        except DecError as e:
            raise ReplicaFailed(e.render()) from None
        except Exception as e:  # noqa: BLE001 - said as one line; the replica's log keeps the traceback
            raise ReplicaFailed(f"{type(e).__name__}: {e}") from e
        self.name = name or decoder.spec.name

    def __serve_build_asgi_app__(self) -> Any:
        from ray import serve

        from decspec.serve import create_app

        app = create_app(self.engine, self.name)
        app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_tag)
        return app

    def check_health(self) -> None:
        """Ray's periodic health check: a replica whose engine thread died is replaced."""
        if self.engine.closed or not self.engine.thread.is_alive():
            raise RuntimeError("the decspec engine has stopped")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def deployment(spec: str, options: Mapping[str, Any], engine: Mapping[str, Any], *, replicas: int, name: str | None,
               threads: int) -> Any:
    """The bound Ray Serve application: `replicas` copies of Replica, each with `threads` CPUs (and torch threads),
    at most `engine["slots"]` requests in flight each."""
    _, serve = _ray()
    wrapped = serve.ingress()(Replica)
    return serve.deployment(
        wrapped, name="decspec", num_replicas=replicas, max_ongoing_requests=engine["slots"],
        ray_actor_options={"num_cpus": threads}, max_constructor_retry_count=1,
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    ).bind(spec, dict(options), dict(engine), name, threads)


class Replicas:
    """`replicas` replicas of `decspec serve SPEC` on a local Ray instance, behind Ray's HTTP proxy on host:port
    (port 0: a free port). `url` is the base (`http://127.0.0.1:PORT`); `stop()` (or leaving the `with`) shuts the
    replicas and the Ray instance down. `slots`, `context` and `prefill_chunk` are each replica's Engine's; `threads`
    each replica's torch threads (default: the cores divided among the replicas). Compile options as `decspec serve`
    takes them, in plain values: `target="..."`, `draft`, `dtype`, `quantize`, `decoder`, `overrides={...}` and
    parameter overrides (`k=6`)."""

    def __init__(self, spec: str | os.PathLike, *, replicas: int = 2, slots: int = 4, context: int = 2048,
                 host: str = "127.0.0.1", port: int = 8000, threads: int | None = None, name: str | None = None,
                 prefill_chunk: int | None = None, **options: Any):
        at_least("replicas", replicas, 1)
        engine = {"slots": at_least("slots", slots, 1), "context": at_least("context", context, 16)}
        if prefill_chunk is not None:  # else the Engine's default
            engine["prefill_chunk"] = at_least("prefill_chunk", prefill_chunk, 16)
        if threads is None:
            threads = max(1, _cores() // replicas)
        at_least("threads", threads, 1)
        if name is not None and (not isinstance(name, str) or not name):
            raise DecError(f"name must be a non-empty string (got {shown(name)})")
        if not isinstance(spec, (str, os.PathLike)):
            raise DecError(f"spec must be a .dec file's path or spec text (got {shown(spec)})")
        spec = str(spec)
        try:
            if "\n" not in spec and Path(spec).is_file():
                spec = str(Path(spec).resolve())  # a replica's working directory is not this one
        except OSError:  # spec text, not a path
            pass
        ray, serve = _ray()
        checked = precheck(spec, options)
        options = compile_options(options)
        port = _port(host, port)
        if ray.is_initialized():
            raise DecError("Ray is already initialized in this process; decspec starts (and stops) its own local Ray "
                           "instance: call ray.shutdown() first")
        self.replicas, self.slots, self.threads = replicas, slots, threads
        self.name = name or checked.name  # the model name clients ask for
        self.host, self.port = host, port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self._ray, self._serve = ray, serve
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # "Started Serve", "Application ready" ...
        self._sigterm = signal.getsignal(signal.SIGTERM) if _main_thread() else None  # ray.init replaces it
        try:
            ray.init(address="local", num_cpus=replicas * threads, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, _node_ip_address="127.0.0.1")  # Ray's own ports on loopback
            serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
            app = deployment(spec, options, engine, replicas=replicas, name=self.name, threads=threads)
            try:
                serve.run(app, name=APP, route_prefix="/", blocking=False)
            except Exception as e:  # noqa: BLE001 - a replica's constructor failed: say what it said
                raise DecError(f"the replicas did not start: {_reason(serve, e)}") from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Shut the replicas, the proxy and the local Ray instance down (idempotent)."""
        ray = getattr(self, "_ray", None)
        if ray is None:
            return
        main = _main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None  # a second Ctrl-C waits for it
        try:
            if ray.is_initialized():
                ray.shutdown()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if self._sigterm is not None and main:  # the handler from before ray.init (which sets its own)
                signal.signal(signal.SIGTERM, self._sigterm)

    def __enter__(self) -> "Replicas":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_replicas(spec: str | os.PathLike, replicas: int = 2, slots: int = 4, host: str = "127.0.0.1", port: int = 8000,
                 threads: int | None = None, *, block: bool = True, ready: Callable[[Replicas], None] | None = None,
                 **options: Any) -> Replicas | None:
    """Start `Replicas(spec, ...)`; with `block` (the command line) serve until Ctrl-C or SIGTERM, then shut down and
    return None; without, return the running Replicas (`.url`, `.stop()`). `ready` is called once it serves."""
    served = Replicas(spec, replicas=replicas, slots=slots, host=host, port=port, threads=threads, **options)
    if not block:
        if ready is not None:
            ready(served)
        return served
    if _main_thread():  # `kill PID` stops it as Ctrl-C does (stop() then puts back the handler from before Ray)
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        if ready is not None:
            ready(served)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        served.stop()
    return None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _reason(serve: Any, e: BaseException) -> str:
    """Why the deployment failed: what a replica's constructor raised (ReplicaFailed's message, from Ray's deployment
    status), else Ray's own message."""
    try:
        status = serve.status().applications[APP].deployments["decspec"].message
    except Exception:  # noqa: BLE001 - no status to read: Ray's exception says what it can
        status = ""
    marker = ReplicaFailed.__name__ + ": "
    if marker in status:
        said = status[status.rindex(marker) + len(marker):].strip()
        return said[len("error: "):] if said.startswith("error: ") else said
    return (status or str(e)).strip()[-2000:]
