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
    assert pass_names() == ["cse", "greedy_sample", "dce"]
    assert [fn for _, fn in PIPELINE] == [cse, greedy_sample, dce]


@settings(max_examples=15)
@given(specs())
def test_until_stops_at_the_named_pass(spec):
    graph = lower(spec)
    seen: list[str] = []
    after_cse = run_pipeline(graph, until="cse", log=lambda name, g: seen.append(name))
    assert seen == ["cse"]
    assert str(after_cse) == str(cse(graph))
    seen.clear()
    after_dce = run_pipeline(graph, until="dce", log=lambda name, g: seen.append(name))
    assert seen == ["cse", "greedy_sample", "dce"]
    assert str(after_dce) == str(run_pipeline(graph)) == str(dce(greedy_sample(cse(graph))))
    assert run_pipeline(graph, until="lower") is graph


def test_log_gets_each_graph():
    graph = lower(speculative(()))
    logged: list[tuple[str, str]] = []
    run_pipeline(graph, log=lambda name, g: logged.append((name, str(g))))
    g1 = cse(graph)
    g2 = greedy_sample(g1)
    assert logged == [("cse", str(g1)), ("greedy_sample", str(g2)), ("dce", str(dce(g2)))]


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
    name, args = stage
    sampler = (inst(registry.lookup("sampler", name), **args),)
    optimized = body(run_pipeline(lower(speculative(sampler))))
    assert softmaxes(optimized) == 2
    logits = next(op for op in optimized.ops if op.name == "model_call").outputs[0]
    transformed = next(op for op in optimized.ops if op.name == "logits_transform").outputs[0]
    assert sorted(op.inputs[0] == transformed for op in optimized.ops if op.name == "softmax") == [False, True]
    assert [op.inputs[0] == logits for op in optimized.ops if op.name == "softmax"].count(True) == 1
