"""fuse_sampler: softmax(logits_transform[stages](x)) becomes sampler_probs[stages](x); a bare
softmax stays; the fused op computes the same probabilities on every backend."""
from __future__ import annotations

from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.backends.eager import rules as eager
from decspec.backends.exact import rules as exact
from decspec.backends.interpreter import run_graph
from decspec.compiler.builder import Builder
from decspec.compiler.ir import CTX, Type
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.compiler.passes.dce import dce
from decspec.compiler.passes.fuse_sampler import NAME, fuse_sampler
from decspec.compiler.passes.greedy_sample import greedy_sample
from decspec.compiler.text import Record, parse_graph
from decspec.compiler.verify import verify
from decspec.dsl.check import load
from test_ir_text import specs
from test_passes_fold_sampler import stage_strategy

SPECS = Path(__file__).resolve().parents[1] / "specs"
STAGES = (Record("temperature", (("t", 0.8),)), Record("top_p", (("p", 0.95),)))


def names(graph) -> list[str]:
    return [op.name for op in graph.walk()]


def test_name():
    assert NAME == "fuse_sampler"


def target_and_draft(stages=STAGES):
    """Target and draft logits, each through the same sampler, both sampled."""
    b = Builder("round")
    ctx = b.input(CTX)
    toks = []
    for role in ("draft", "target"):
        logits = b.emit("model_call", [ctx], model=role, last=True)[0]
        if stages:
            logits = b.emit("logits_transform", [logits], stages=stages)[0]
        toks.append(b.emit("sample", [b.emit("softmax", [logits])[0], b.emit("uniform", [], shape=("B",))[0]])[0])
    b.emit("commit", [toks[1]])
    return b.build()


def test_pair_becomes_one_op_and_dce_drops_the_transform():
    graph = target_and_draft()
    fused = verify(fuse_sampler(graph))
    assert names(fused).count("sampler_probs") == 2 and "softmax" not in names(fused)
    assert names(fused).count("logits_transform") == 2  # dead now: dce's job
    assert "logits_transform" not in names(dce(fused))
    assert "sampler_probs" not in str(graph)  # the input graph is not mutated


def test_target_and_draft_get_the_same_op_definition():
    fused = [op for op in fuse_sampler(target_and_draft()).ops if op.name == "sampler_probs"]
    assert fused[0].params == fused[1].params == (("stages", STAGES),)
    assert fused[0].inputs != fused[1].inputs


def test_bare_softmax_stays():
    graph = target_and_draft(stages=())
    assert str(fuse_sampler(graph)) == str(graph)


def test_is_idempotent():
    once = fuse_sampler(target_and_draft())
    assert fuse_sampler(once) == once


def test_fuses_inside_the_draft_loop_and_keeps_the_exit_softmax():
    graph = run_pipeline(lower(load(SPECS / "speculative_greedy.dec")), until="greedy_sample")
    fused = verify(fuse_sampler(graph))
    body = next(op for op in fused.ops if op.name == "draft_loop").region
    assert [op.name for op in body.ops].count("sampler_probs") == 1
    assert [op.name for op in body.ops].count("softmax") == 1  # the exit statistic reads the raw logits


def test_greedy_sample_understands_the_fused_op():
    """Running greedy_sample after fusion still turns a one-hot sample into argmax."""
    graph = fuse_sampler(target_and_draft((Record("greedy"),)))
    assert names(greedy_sample(graph)).count("argmax") == 2


def test_text_round_trip():
    text = str(fuse_sampler(target_and_draft()))
    assert str(parse_graph(text)) == text


def test_speculative_after_fuse_sampler():
    graph = run_pipeline(lower(load(SPECS / "speculative.dec")), until="fuse_sampler")
    assert names(graph).count("sampler_probs") == 2 and "softmax" not in names(graph)


@settings(max_examples=30)
@given(specs())
def test_lowered_graphs(spec):
    graph = run_pipeline(lower(spec), until="greedy_sample")
    before = str(graph)
    once = verify(fuse_sampler(graph))
    assert str(graph) == before
    assert fuse_sampler(once) == once
    assert names(once).count("sampler_probs") + names(once).count("softmax") == names(graph).count("softmax")
    assert not any(op.name == "softmax" and once.producer(op.inputs[0]) is not None and once.producer(op.inputs[0]).name == "logits_transform" for op in once.walk())


# --------------------------------------------------------------------------- same distribution


def probs_graph(stages):
    b = Builder("round")
    logits = b.input(Type("f32", ("B", "V")))
    out = b.emit("softmax", [b.emit("logits_transform", [logits], stages=tuple(stages))[0]])[0]
    return b.build((out,))


@settings(max_examples=100, deadline=None)
@given(st.lists(stage_strategy, min_size=1, max_size=4), st.integers(1, 8), st.integers(1, 3), st.integers(0, 2**16), st.sampled_from([torch.float32, torch.float64]))
def test_fusion_preserves_the_probabilities_on_every_backend(stages, V, B, seed, dtype):
    """The fused graph's probabilities equal the pair's, bit for bit, on eager and exact rules."""
    graph = probs_graph(stages)
    fused = dce(fuse_sampler(graph))
    assert names(fused) == ["sampler_probs"]
    logits = (torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 3).round().to(dtype)  # rounding makes ties
    for rules, name in ((eager.RULES, "eager"), (exact.RULES, "exact")):
        (before,) = run_graph(graph, [logits], None, rules, name)
        (after,) = run_graph(fused, [logits], None, rules, name)
        assert after.dtype == before.dtype
        assert torch.equal(before.nan_to_num(), after.nan_to_num()) and torch.equal(before.isnan(), after.isnan())
