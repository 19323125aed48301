"""draft_schedule: each draft loop is marked "unrolled" or "host", which the inductor backend obeys."""
from __future__ import annotations

import pytest
import torch

import decspec
from decspec.backends.inductor import RoundRunner
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.compiler.passes.draft_schedule import UNROLL_MAX, draft_schedule
from decspec.compiler.verify import verify
from decspec.dsl.check import load
from decspec.stdlib.models.default import random_models

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]


def spec(k: int, stop: bool):
    return load('decoder d() {\n target = model("target")\n draft = model("draft")\n sampler = greedy\n'
                f' propose = autoregressive(draft, max = {k})\n' + (" stop = when draft.prob < 0.3\n" if stop else "") + " verify = greedy\n}")


def loop_schedule(graph):
    return next(op for op in graph.ops if op.name == "draft_loop").param("schedule")


@pytest.mark.parametrize("k, stop, expected", [
    (UNROLL_MAX, True, "unrolled"),  # short enough to unroll even with an exit policy
    (UNROLL_MAX + 1, True, "host"),  # an early exit would leave masked steps running
    (16, False, "unrolled"),  # no exit policy: every step runs anyway
    (1, False, "unrolled"),
])
def test_schedule_choice(k, stop, expected):
    graph = verify(run_pipeline(lower(spec(k, stop))))
    assert loop_schedule(graph) == expected
    assert f'schedule="{expected}"' in str(graph)  # visible in `decspec ir`


def test_idempotent_and_forcible():
    graph = run_pipeline(lower(spec(8, True)))
    assert draft_schedule(graph) == graph
    forced = draft_schedule(graph, force="unrolled")
    assert loop_schedule(forced) == "unrolled" and draft_schedule(forced) == forced  # a set schedule is kept
    with pytest.raises(ValueError, match="unknown draft loop schedule"):
        draft_schedule(graph, force="sideways")


def test_graph_without_draft_loop_is_unchanged():
    graph = run_pipeline(lower(load("specs/autoregressive.dec")), until="dce")
    assert draft_schedule(graph) == graph


@pytest.fixture(scope="module")
def models():
    return random_models(seed=3)


@pytest.mark.parametrize("spec_file, overrides", [
    ("specs/speculative_greedy.dec", {"k": 6, "confidence": 0.004}),
    ("specs/speculative.dec", {"k": 6, "temperature": 0.9}),
])
def test_host_loop_equals_unrolled_and_eager(models, spec_file, overrides):
    """Same uniforms layout, so the two schedules give the same tokens for the same seed; greedy also equals eager."""
    runs = {}
    for schedule in ("unrolled", "host"):
        dec = decspec.compile(spec_file, models=models, backend="inductor", **overrides)
        dec.backend_options = {"schedule": schedule}
        runs[schedule] = dec.generate(PROMPTS, max_new_tokens=20, seed=0)
    assert runs["host"].tokens == runs["unrolled"].tokens
    assert runs["host"].stats.drafted == runs["unrolled"].stats.drafted
    if "greedy" in spec_file:
        eager = decspec.compile(spec_file, models=models, **overrides).generate(PROMPTS, max_new_tokens=20, seed=0)
        assert runs["host"].tokens == eager.tokens
        drafted = {d for row in runs["host"].stats.drafted for d in row}
        assert len(drafted) > 1  # the exit policy did stop rows early

    calls = {}
    for schedule in ("unrolled", "host"):  # one row, so a round's loop ends when that row stops
        dec = decspec.compile(spec_file, models=models, backend="inductor", **overrides)
        dec.backend_options = {"schedule": schedule}
        calls[schedule] = dec.generate([[11]], max_new_tokens=20, seed=0).stats.model_calls["draft"]
    assert calls["host"] < calls["unrolled"] if "greedy" in spec_file else calls["host"] == calls["unrolled"]  # no exit policy: every step runs


def test_host_loop_source_has_its_functions():
    runner = RoundRunner(run_pipeline(lower(spec(8, True))))
    assert runner.schedule == "host"
    for fn in ("def draft_first(", "def draft_next(", "def verify(", "def round_fn(", "while n < 8 and bool(alive.any())"):
        assert fn in runner.source


def test_compiled_host_loop_never_recompiles(models):
    """Step i is a tensor argument: three compiled graphs (first step, next step, verify) serve every step and length."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    overrides = {"k": 6, "confidence": 0.004}
    dec = decspec.compile("specs/speculative_greedy.dec", models=models, backend="inductor", **overrides)
    dec.backend_options = {"compile": True, "schedule": "host"}
    first = dec.generate(PROMPTS, max_new_tokens=12, seed=0)
    graphs = counters["stats"]["unique_graphs"]
    second = dec.generate([[5, 6], [7, 8, 9, 10, 11], [12, 13, 14]], max_new_tokens=16, seed=1)
    assert counters["stats"]["unique_graphs"] == graphs == 3
    assert not counters["graph_break"]
    eager = decspec.compile("specs/speculative_greedy.dec", models=models, **overrides)
    assert first.tokens == eager.generate(PROMPTS, max_new_tokens=12, seed=0).tokens
    assert second.tokens == eager.generate([[5, 6], [7, 8, 9, 10, 11], [12, 13, 14]], max_new_tokens=16, seed=1).tokens
