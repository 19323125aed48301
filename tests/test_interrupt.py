"""Ctrl-C, and a suite without clocks (issue 16, item 7).

- Ctrl-C during generation hands back what was generated: `generate` raises `Interrupted` (a KeyboardInterrupt)
  whose `result` holds whole rounds only, the same tokens an uninterrupted call with the same seed begins with,
  wherever the interrupt lands (hypothesis over the model call it lands in, several specs).
- `decspec run` sent SIGINT prints what was generated and one line, and exits 130; a SIGINT before generation
  is one line too. Waits are for the process's own signals (READY on stderr), under a generous hard timeout only.
- No test asserts on wall-clock time: the suite is scanned for clocks.
"""
from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.runtime import Interrupted
from decspec.stdlib.models.table import TableModel

ROOT = Path(__file__).resolve().parent.parent
HARD_TIMEOUT = 600  # seconds: only a hang guard, never a measurement


class Interrupting:
    """A model that raises KeyboardInterrupt (as Ctrl-C does) in its `at`-th forward call, else delegates."""

    def __init__(self, model, at: int):
        self.model, self.at, self.calls = model, at, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.model.forward(*args, **kwargs)


SPECS = ["specs/speculative.dec", "specs/autoregressive.dec", "specs/prompt_lookup.dec", "specs/token_recycling.dec"]


@pytest.mark.parametrize("spec", SPECS)
def test_an_interrupted_generate_returns_the_rounds_it_finished(spec):
    target, draft = TableModel.random(6, 1, seed=0, eos_token_id=5), TableModel.random(6, 1, seed=1)
    roles = decspec.compile(spec, target=target, draft=draft).spec.models
    full = decspec.compile(spec, models={"target": target, "draft": draft}).generate([[1, 2], [3]], max_new_tokens=10, seed=3)
    decoders = {}  # role -> (its interrupting model, a decoder with it), compiled once
    for role in roles:
        models = {"target": target, "draft": draft}
        models[role] = Interrupting(models[role], 0)
        decoders[role] = models[role], decspec.compile(spec, models=models)

    @settings(max_examples=15, deadline=None)
    @given(role=st.sampled_from(roles), at=st.integers(1, 24))
    def check(role, at):
        model, dec = decoders[role]
        model.at, model.calls = at, 0
        try:
            out = dec.generate([[1, 2], [3]], max_new_tokens=10, seed=3)
        except Interrupted as e:
            for row, whole in zip(e.result.tokens, full.tokens):
                assert row == whole[:len(row)]
            assert e.result.stats.new_tokens == [len(r) for r in e.result.tokens]
            assert isinstance(e, KeyboardInterrupt)
        else:
            assert out.tokens == full.tokens  # the interrupt would have come after the last call

    check()


def test_an_interrupted_beam_search_returns_a_prefix_of_a_hypothesis():
    target = TableModel.random(6, 1, seed=0, eos_token_id=5)
    dec = decspec.compile("specs/beam_search.dec", target=Interrupting(target, 4))
    with pytest.raises(Interrupted) as e:
        dec.generate([[1, 2]], max_new_tokens=12)
    assert len(e.value.result.tokens[0]) == 3  # three steps done before the fourth call
    assert all(0 <= t < 6 for t in e.value.result.tokens[0])


def test_the_text_so_far_comes_decoded():
    from decspec.stdlib.models.pretrained import reference_models

    models = reference_models()
    models = {"target": Interrupting(models["target"], 3), "draft": models["draft"]}
    dec = decspec.compile("specs/autoregressive.dec", models=models)
    with pytest.raises(Interrupted) as e:
        dec.generate("def f(x):", max_new_tokens=10, seed=0)
    assert e.value.result.text == [dec.tokenizer.decode(r) for r in e.value.result.tokens]
    assert len(e.value.result.tokens[0]) == 2  # prefill + one step, then the third call is interrupted


# --------------------------------------------------------------------------- the command line


RUNNER = """
import sys
from decspec.cli import main
from decspec.stdlib.models import {module} as where

BLOCK_AT = {block_at}
original, calls = where.{name}, [0]

def blocking(*args, **kwargs):
    calls[0] += 1
    if calls[0] == BLOCK_AT:
        print("READY", file=sys.stderr, flush=True)
        import threading
        threading.Event().wait()  # until Ctrl-C
    return original(*args, **kwargs)

where.{name} = blocking
sys.exit(main({argv!r}))
"""


def run_until_ready_then_interrupt(argv: list[str], *, module: str, name: str, block_at: int) -> subprocess.CompletedProcess:
    code = RUNNER.format(module=module, name=name, block_at=block_at, argv=argv)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stderr:  # wait for the process to say it is where the interrupt should land
            if line.strip() == "READY":
                break
        else:
            pytest.fail(f"the process ended before it was ready: {proc.wait()}, {proc.stdout.read()}")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HARD_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize("spec", ["specs/autoregressive.dec", "specs/speculative.dec"])
def test_run_interrupted_prints_the_text_so_far_and_exits_130(spec):
    done = run_until_ready_then_interrupt(["run", spec, "--prompt", "def f(x):", "--max-new-tokens", "400"],
                                          module="transformer", name="Transformer.forward", block_at=12)
    assert done.returncode == 130, done
    assert "Traceback" not in done.stderr
    err = done.stderr.strip().splitlines()  # after READY (the header, on stderr, came before it)
    assert len(err) == 1 and err[0].startswith("decspec: interrupted after ") and "new tokens" in err[0], err
    out = done.stdout.splitlines()
    assert out[0].startswith("def f(x):"), out  # the text only: the header and stats go to stderr
    generated = int(err[0].split("after ")[1].split()[0])
    assert 0 < generated < 400


def test_an_interrupt_before_generation_is_one_line_and_130():
    done = run_until_ready_then_interrupt(["run", "specs/speculative.dec", "--max-new-tokens", "4"],
                                          module="pretrained", name="reference_models", block_at=1)
    assert done.returncode == 130 and done.stderr.strip() == "decspec: interrupted", done


# --------------------------------------------------------------------------- no clocks in the suite


CLOCKS = {"perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "process_time", "time_ns", "wall_time",
          "tokens_per_second", "seconds", "timeit"}


def clock_uses(path: Path) -> list[str]:
    """Where a test file reads a clock or a timing (time.time(), perf_counter, Stats.wall_time, ...) or gives
    hypothesis a deadline: a test that asserts on them fails on a loaded machine."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in CLOCKS:
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Attribute) and node.attr == "time" and getattr(node.value, "id", None) == "time":
            found.append(f"{path.name}:{node.lineno}: time.time")
        elif isinstance(node, ast.ImportFrom) and node.module in ("time", "timeit"):
            found.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.keyword) and node.arg == "deadline" and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            found.append(f"{path.name}:{node.lineno}: deadline={ast.unparse(node.value)}")
    return found


def test_no_test_reads_a_clock():
    files = [p for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name]
    assert len(files) > 20
    found = [f for p in files for f in clock_uses(p)]
    assert not found, found


def test_hypothesis_profiles_have_no_deadline():
    from hypothesis import settings as current

    assert current().deadline is None
