"""greedy_sample: sample(one-hot probs, u) becomes argmax(probs), and the draw disappears."""
from __future__ import annotations

import pytest

from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.compiler.passes.greedy_sample import greedy_sample
from decspec.compiler.verify import verify
from decspec.dsl.check import load


def names(graph):
    return [op.name for op in graph.walk()]


def spec(sampler: str):
    return load('decoder d() {\n target = model("target")\n draft = model("draft")\n'
                f' sampler = {sampler}\n propose = autoregressive(draft, max = 3)\n verify = greedy\n}}')


@pytest.mark.parametrize("sampler", ["greedy", "temperature(0.0)", "greedy | top_k(2)", "top_p(0.9) | temperature(0)"])
def test_one_hot_pipelines_sample_by_argmax_and_draw_nothing(sampler):
    graph = verify(run_pipeline(lower(spec(sampler))))
    assert "sample" not in names(graph) and "uniform" not in names(graph)
    assert names(graph).count("argmax") == 2  # the draft step and the target's tokens


@pytest.mark.parametrize("sampler", ["temperature(0.5)", "top_k(1)", "top_p(0.9)"])
def test_other_pipelines_keep_their_draws(sampler):
    graph = verify(run_pipeline(lower(spec(sampler))))
    assert names(graph).count("sample") == 2 and "argmax" not in names(graph)


def test_pass_alone_leaves_the_dead_draw_for_dce():
    before = lower(spec("greedy"))
    after = greedy_sample(before)
    assert names(after).count("uniform") == names(before).count("uniform")  # dce's job, not this pass's
    assert str(before) != str(after) and "sample(" in str(before)  # the input graph is not mutated
    assert greedy_sample(after) == after
