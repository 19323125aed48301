"""decspec/replicas.py: `decspec serve --replicas N` on Ray Serve. Two replicas of the shipped reference pair (its target
given a chat template) on a local Ray instance, driven by the stock `openai` client on 127.0.0.1: completions, a
streamed chat, concurrent streams that land on both replicas, decspec's own JSON errors; what is refused before Ray
starts; and a stop that leaves no Ray process behind. One Ray start for the module (about 20 s on 2 cores)."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from decspec.cli import main
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.pretrained import REFERENCE
from test_chat import with_template

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")

from decspec.replicas import HEADER, Replicas, build_decoder  # noqa: E402

SPEC = "specs/speculative.dec"
PROMPTS = ["def add(a, b):", "class Stack:", "import os\n", "for i in range(", "while True:", "x = [1, 2,"]


@pytest.fixture(scope="module")
def options(tmp_path_factory) -> dict:
    """Plain compile options, as a replica gets them: the reference target with a chat template, the reference draft."""
    return {"target": str(with_template(tmp_path_factory.mktemp("chat"))), "draft": str(REFERENCE / "draft")}


@pytest.fixture(scope="module")
def decoder(options):
    """The decoder each replica runs, compiled here: what the served text must equal."""
    return build_decoder(SPEC, options)


def descendants(pid: int) -> set[int]:
    """The processes below `pid` (Linux /proc): the local Ray instance's gcs_server, raylet and actors."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited


@pytest.fixture(scope="module")
def served(options):
    """Two replicas (2 slots each, one torch thread each) on a free port of 127.0.0.1, for the whole module; stopping
    them must leave no process of the Ray instance behind."""
    proc = Path("/proc").is_dir()
    before = descendants(os.getpid()) if proc else set()
    with Replicas(SPEC, replicas=2, slots=2, context=256, port=0, threads=1, name="spec", **options) as running:
        ray_processes = descendants(os.getpid()) - before if proc else set()
        assert len(ray_processes) >= 4 or not proc  # gcs_server, raylet, the replicas, ...
        yield running
    assert not ray.is_initialized()
    for _ in range(100):  # up to about 20 s for the processes to exit
        if not any(alive(p) for p in ray_processes):
            break
        time.sleep(0.2)
    assert not [p for p in ray_processes if alive(p)], "Ray processes left after stop()"


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def post(url: str, path: str, body: str) -> tuple[int, dict, str | None]:
    req = urllib.request.Request(url + path, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read()), r.headers.get(HEADER)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers.get(HEADER)


# ------------------------------------------------------------------------------------------------ a replica that fails

def session_processes(driver: int) -> list[int]:
    """The live processes of the local Ray instance a driver process started (gcs_server and raylet name its session
    `session_..._PID`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if f"_{driver}/" in command or f"_{driver}\0" in command or command.endswith(f"_{driver}"):
                if "--session" in command and alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def test_a_replica_that_cannot_start_is_one_line_from_the_command_line(tmp_path):
    """(First in the module: its own Ray instance, in a subprocess, does not share the cores with the module's.) What
    passes the checks before Ray starts but fails in the replicas (here a --target directory that holds no
    model): the replica's own message, exit status 1, no traceback, and the Ray instance gone (its own process)."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled")  # newer Ray warns about token auth on stderr
    command = [sys.executable, "-m", "decspec", "serve", "specs/autoregressive.dec", "--replicas", "2", "--threads", "1",
               "--port", "0", "--target", str(tmp_path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as run:
        try:
            _, err = run.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            run.terminate()  # SIGTERM: it shuts its Ray instance down
            run.communicate(timeout=60)
            raise
    assert run.returncode == 1, err
    assert err.startswith("error: the replicas did not start: ") and "has no config.json" in err, err
    assert "Traceback" not in err and err.count("\n") <= 3, err
    if Path("/proc").is_dir():
        for _ in range(100):  # up to about 20 s for the processes to exit
            if not session_processes(run.pid):
                break
            time.sleep(0.2)
        assert not session_processes(run.pid)


# ------------------------------------------------------------------------------------------------ served

def test_a_completion_is_what_generate_gives(served, decoder):
    raw = client(served.url).completions.with_raw_response.create(model="spec", prompt="import os\n", max_tokens=12,
                                                                  temperature=0)
    out = raw.parse()
    assert out.choices[0].text == decoder.generate(["import os\n"], max_new_tokens=12, temperature=0).text[0]
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 12
    assert raw.headers.get(HEADER)  # which replica served it
    assert [m.id for m in client(served.url).models.list()] == ["spec"]


def test_a_chat_streams_as_server_sent_events(served, decoder):
    messages = [{"role": "user", "content": "Write a stack class."}]
    stream = client(served.url).chat.completions.create(model="spec", messages=messages, max_tokens=16, temperature=0,
                                                        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == decoder.generate(messages=messages, max_new_tokens=16, temperature=0).text[0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16


def test_concurrent_streams_land_on_both_replicas(served, decoder):
    """Six streams at once, two slots per replica: Ray's router (at most `slots` in flight per replica) spreads them,
    and each text is what its prompt alone gives."""
    results: dict[int, tuple[str, str]] = {}
    start = threading.Barrier(len(PROMPTS))

    def run(i: int) -> None:
        start.wait(30)
        raw = client(served.url).completions.with_raw_response.create(model="spec", prompt=PROMPTS[i], max_tokens=24,
                                                                      temperature=0, stream=True)
        results[i] = (raw.headers.get(HEADER), "".join(c.choices[0].text for c in raw.parse()))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    expected = decoder.generate(PROMPTS, max_new_tokens=24, temperature=0).text
    assert [results[i][1] for i in range(len(PROMPTS))] == expected
    assert len({replica for replica, _ in results.values()}) == 2, results
    with urllib.request.urlopen(served.url + "/health", timeout=30) as r:
        assert json.loads(r.read()) == {"status": "ok", "active": 0, "waiting": 0, "slots": 2}


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/completions", "{not json", 400, "not valid JSON"),
    ("/v1/completions", '{"prompt": "x", "max_tokens": 4, "frobnicate": 1}', 400, "unknown field 'frobnicate'"),
    ("/v1/completions", '{"prompt": "x", "max_tokens": 4, "model": "gpt-4"}', 404, "the model 'gpt-4' does not exist"),
    ("/v1/completions", '{"prompt": "' + "word " * 400 + '", "max_tokens": 4}', 400, "exceeds the server's context of 256"),
    ("/v1/chat/completions", '{"messages": [{"role": "user"}], "max_tokens": 4}', 400, "messages[0]"),
    ("/v1/nothing", "{}", 404, "no route /v1/nothing"),
])
def test_malformed_requests_get_decspec_s_json_error(served, path, body, status, message):
    code, reply, replica = post(served.url, path, body)
    assert code == status and message in reply["error"]["message"] and set(reply["error"]) == {"message", "type", "param",
                                                                                               "code"}, reply
    assert replica  # a replica's own answer, not the proxy's


# ------------------------------------------------------------------------------------------------ refused before Ray

@pytest.mark.parametrize("kwargs, message", [
    ({"replicas": 0}, "replicas must be an integer >= 1"),
    ({"replicas": "two"}, "replicas must be an integer >= 1 (got 'two'"),
    ({"replicas": 2, "slots": 0}, "slots must be an integer >= 1"),
    ({"replicas": 2, "threads": 0}, "threads must be an integer >= 1"),
    ({"replicas": 2, "k": "many"}, "cannot read override k='many' as an int"),
    ({"replicas": 2, "temperatur": 0.5}, "unknown parameter 'temperatur'"),
    ({"replicas": 2, "target": "no-such-model"}, "neither a named model nor a model directory"),
    ({"replicas": 2, "dtype": "float8"}, "dtype must be one of"),
    ({"replicas": 2, "port": 70000}, "port must be 0..65535"),
])
def test_bad_input_is_refused_before_ray_starts(kwargs, message):
    with pytest.raises(DecError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Replicas(SPEC, **kwargs)


def test_a_beam_search_spec_and_a_taken_port_are_refused():
    with pytest.raises(DecError, match="beam search"):
        Replicas("specs/beam_search.dec", replicas=2)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(DecError, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}: Address already in use"):
            Replicas("specs/autoregressive.dec", replicas=2, port=taken.getsockname()[1])
    finally:
        taken.close()


def test_the_command_line_refuses_bad_replica_counts_and_a_missing_ray(capsys, monkeypatch):
    assert main(["serve", "specs/autoregressive.dec", "--replicas", "0"]) == 1
    assert "--replicas must be at least 1 (got 0)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["serve", "specs/autoregressive.dec", "--replicas", "two"])
    assert e.value.code == 2 and "invalid int value: 'two'" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if Ray were not installed
    assert main(["serve", "specs/autoregressive.dec", "--replicas", "2"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'decspec[replicas]'" in err and "Traceback" not in err

