"""Golden IR: the optimized round of each spec in specs/ matches tests/golden/NAME.ir.

When a change to the IR is intended, regenerate the files and review the diff:

    DECSPEC_UPDATE_GOLDEN=1 python -m pytest tests/test_golden_ir.py

which writes `str(run_pipeline(lower(load("specs/NAME.dec"))))` to tests/golden/NAME.ir.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.compiler.text import parse_graph
from decspec.compiler.verify import verify
from decspec.dsl.check import load

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.dec")
               if load(p).slot("search") is None and load(p).slot("denoise") is None)  # every shipped spec with a round
NO_ROUND = sorted(p.stem for p in (ROOT / "specs").glob("*.dec")
                  if load(p).slot("search") is not None or load(p).slot("denoise") is not None)  # beam search, diffusion: host loops
UPDATE = os.environ.get("DECSPEC_UPDATE_GOLDEN") == "1"


def optimized(name: str) -> str:
    return str(run_pipeline(lower(load(ROOT / "specs" / f"{name}.dec"))))


@pytest.mark.parametrize("name", SPECS)
def test_golden_ir(name):
    path = GOLDEN / f"{name}.ir"
    text = optimized(name)
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text + "\n")
    assert path.exists(), f"{path} is missing; run with DECSPEC_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text().rstrip("\n"), f"the IR of specs/{name}.dec changed; if intended, rerun with DECSPEC_UPDATE_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("name", SPECS)
def test_golden_files_are_sound_ir(name):
    text = (GOLDEN / f"{name}.ir").read_text().rstrip("\n")
    graph = verify(parse_graph(text))
    assert str(graph) == text


def test_every_spec_has_a_golden_file():
    assert sorted(p.stem for p in (ROOT / "specs").glob("*.dec")) == sorted(SPECS + NO_ROUND)
    assert not any((GOLDEN / f"{name}.ir").exists() for name in NO_ROUND)  # no round graph, so no golden round


def ops_at(graph, *names):
    return [op for op in graph.walk() if op.name in names]


def test_ops_point_at_their_slot():
    spec = load(ROOT / "specs" / "speculative.dec")
    graph = run_pipeline(lower(spec))
    lines = {slot: value.span.line for slot, value in spec.slots if not isinstance(value, tuple)}
    (loop,) = ops_at(graph, "draft_loop")
    assert loop.meta.line == lines["propose"]
    assert [op.meta.line for op in ops_at(graph, "model_call")] == [lines["propose"], lines["verify"]]
    sampler_line = spec.slot("sampler")[0].span.line
    assert [op.meta.line for op in ops_at(graph, "logits_transform", "sampler_probs")] == [sampler_line] * 2


@pytest.mark.parametrize("name, ops", [("speculative", ("rejection_accept", "rejection_residual", "splice")), ("speculative_greedy", ("match_len", "take", "splice"))])
def test_verifier_ops_point_at_the_verify_line(name, ops):
    """The sampler pipeline's span must not leak onto the ops lowered after it."""
    spec = load(ROOT / "specs" / f"{name}.dec")
    graph = run_pipeline(lower(spec))
    verify_line = spec.slot("verify").span.line
    assert [op.meta.line for op in ops_at(graph, *ops, "commit")] == [verify_line] * (len(ops) + 1)
