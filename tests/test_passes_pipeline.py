"""The pass pipeline: ordered, stoppable with `until`, logging after each pass; and what it does
to a draft body whose exit statistic shares the sampler's softmax."""
from __future__ import annotations

import pytest
from hypothesis import given, settings

from decspec.compiler.ir import Graph
from decspec.compiler.lower import lower
from decspec.compiler.passes import PIPELINE, pass_names, run_pipeline
from decspec.compiler.passes.cse import cse
from decspec.compiler.passes.dce import dce
from decspec.compiler.passes.draft_schedule import draft_schedule
from decspec.compiler.passes.fold_sampler import fold_sampler
from decspec.compiler.passes.fuse_sampler import fuse_sampler
from decspec.compiler.passes.greedy_sample import greedy_sample
from decspec.dsl.spec import Cond, Spec, Stat
from decspec.stdlib import registry
from test_ir_text import SOURCE, inst, model, specs


def speculative(sampler: tuple | None, stat: str = "prob") -> Spec:
    """`propose = autoregressive(draft, max=4); stop = when draft.STAT < 0.3; verify = rejection`."""
    slots = [("target", model("target"))]
    if sampler is not None:
        slots.append(("sampler", sampler))
    slots += [
        ("propose", inst(registry.lookup("draft", "autoregressive"), model=model("draft"), max=4)),
        ("stop", inst(registry.lookup("exit", "when"), cond=Cond("<", (Stat(registry.lookup("stat", stat)), 0.3)))),
        ("verify", inst(registry.lookup("verifier", "rejection"))),
    ]
    return Spec("speculative", (("k", 4),), tuple(slots), SOURCE)


def body(graph: Graph) -> Graph:
    return next(op for op in graph.ops if op.name == "draft_loop").region


def softmaxes(graph: Graph) -> int:
    return sum(op.name == "softmax" for op in graph.ops)


def test_pipeline_order():
    assert pass_names() == ["fold_sampler", "cse", "greedy_sample", "fuse_sampler", "dce", "draft_schedule"]
    assert [fn for _, fn in PIPELINE] == [fold_sampler, cse, greedy_sample, fuse_sampler, dce, draft_schedule]


@settings(max_examples=15)
@given(specs())
def test_until_stops_at_the_named_pass(spec):
    graph = lower(spec)
    seen: list[str] = []
    after_cse = run_pipeline(graph, until="cse", log=lambda name, g: seen.append(name))
    assert seen == ["fold_sampler", "cse"]
    assert str(after_cse) == str(cse(fold_sampler(graph)))
    seen.clear()
    after_dce = run_pipeline(graph, until="dce", log=lambda name, g: seen.append(name))
    assert seen == ["fold_sampler", "cse", "greedy_sample", "fuse_sampler", "dce"]
    assert str(after_dce) == str(dce(fuse_sampler(greedy_sample(cse(fold_sampler(graph))))))
    full = run_pipeline(graph)  # draft_schedule after dce only annotates draft loops
    assert str(full) == str(draft_schedule(after_dce))
    assert str(run_pipeline(full)) == str(full)  # the pipeline is idempotent
    assert run_pipeline(graph, until="lower") is graph


def test_log_gets_each_graph():
    graph = lower(speculative(()))
    logged: list[tuple[str, str]] = []
    run_pipeline(graph, log=lambda name, g: logged.append((name, str(g))))
    graphs = []
    for _, fn in PIPELINE:
        graph = fn(graph)
        graphs.append(str(graph))
    assert logged == list(zip(pass_names(), graphs))


def test_unknown_pass_name():
    with pytest.raises(KeyError):
        run_pipeline(lower(speculative(())), until="nope")


def test_pipeline_does_not_mutate_its_input():
    graph = lower(speculative(()))
    before = str(graph)
    run_pipeline(graph, check=True)
    assert str(graph) == before


@pytest.mark.parametrize("sampler", [None, ()], ids=["no sampler slot", "empty pipeline"])
@pytest.mark.parametrize("stat", ["prob", "entropy"])
def test_exit_softmax_merges_with_the_samplers_when_the_pipeline_is_empty(sampler, stat):
    """The exit policy reads softmax(raw logits); with no sampler stages that is the very
    softmax the draft samples from, so CSE leaves one."""
    lowered = body(lower(speculative(sampler, stat)))
    assert softmaxes(lowered) == 2
    optimized = body(run_pipeline(lower(speculative(sampler, stat))))
    assert softmaxes(optimized) == 1
    (softmax,) = [op for op in optimized.ops if op.name == "softmax"]
    assert optimized.outputs[1] == softmax.outputs[0]  # the q the verifier receives


@pytest.mark.parametrize("stage", [("temperature", {"t": 0.7}), ("greedy", {}), ("top_k", {"k": 5})])
def test_exit_softmax_stays_apart_with_a_sampler_pipeline(stage):
    """The exit's softmax(raw logits) stays; the sampler's pair is fused into sampler_probs."""
    name, args = stage
    sampler = (inst(registry.lookup("sampler", name), **args),)
    optimized = body(run_pipeline(lower(speculative(sampler))))
    assert softmaxes(optimized) == 1
    assert not any(op.name == "logits_transform" for op in optimized.ops)
    logits = next(op for op in optimized.ops if op.name == "model_call").outputs[0]
    (fused,) = [op for op in optimized.ops if op.name == "sampler_probs"]
    (softmax,) = [op for op in optimized.ops if op.name == "softmax"]
    assert fused.inputs == softmax.inputs == (logits,)
    assert optimized.outputs[1] == fused.outputs[0]  # the q the verifier receives


@pytest.mark.parametrize("stages", [[("temperature", {"t": 1.0})], [("top_p", {"p": 1.0}), ("min_p", {"p": 0.0})]])
def test_a_pipeline_that_folds_away_shares_the_exit_softmax(stages):
    """fold_sampler runs before cse: an identity pipeline leaves softmax(logits), merged with the exit's."""
    sampler = tuple(inst(registry.lookup("sampler", name), **args) for name, args in stages)
    optimized = body(run_pipeline(lower(speculative(sampler))))
    assert softmaxes(optimized) == 1
    assert not any(op.name in ("logits_transform", "sampler_probs") for op in optimized.ops)
