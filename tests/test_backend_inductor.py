"""The inductor backend: generated round code equals the eager backend (greedy: token for token;
sampling: in distribution), and compiled with torch.compile it never recompiles after warm-up."""
from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.inductor import RoundRunner, emit_python
from decspec.cli import main
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.dsl.check import load
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.samplers import top_p
from decspec.strategies import tied_logits
from decspec.testing import assert_samples_match, sequence_distribution

SPECS = ["specs/autoregressive.dec", "specs/speculative.dec", "specs/speculative_greedy.dec"]
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]  # ragged, one of length 1


@pytest.fixture(scope="module")
def models():
    return random_models(seed=3)


@pytest.mark.parametrize("spec", SPECS)
def test_emitted_source_is_readable_python(spec):
    source = emit_python(run_pipeline(lower(load(spec))))
    compile(source, spec, "exec")
    assert "def round_fn(ctx_tokens, ctx_length, u, m):" in source
    assert "# model_call (line" in source  # every line names the op and the .dec line it came from


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("k", [1, 3])
def test_greedy_equals_eager_token_for_token(models, spec, k):
    overrides = {"k": k} if "autoregressive" not in spec else {}
    if "speculative_greedy" not in spec:
        overrides["temperature"] = 0
    eager = decspec.compile(spec, models=models, overrides=overrides)
    gen = decspec.compile(spec, models=models, overrides=overrides, backend="inductor")
    a = eager.generate(PROMPTS, max_new_tokens=20, seed=0)
    b = gen.generate(PROMPTS, max_new_tokens=20, seed=0)
    assert a.tokens == b.tokens
    assert a.stats.accepted == b.stats.accepted


def test_shipped_models_greedy_equal():
    eager = decspec.compile("specs/speculative_greedy.dec")
    gen = decspec.compile("specs/speculative_greedy.dec", backend="inductor")
    prompts = ["def fibonacci(n):", "import os\n"]
    assert eager.generate(prompts, max_new_tokens=24).tokens == gen.generate(prompts, max_new_tokens=24).tokens


def test_sampling_follows_the_target_distribution():
    target = TableModel.random(4, 1, seed=11)
    draft = TableModel.random(4, 1, seed=12, temperature=2.0)
    dec = decspec.compile("specs/speculative.dec", target=target, draft=draft, k=2, backend="inductor")
    out = dec.generate([[1]] * 4000, max_new_tokens=3, seed=0)
    expected = sequence_distribution(target, [1], 3, [("temperature", {"t": 0.8}), ("top_p", {"p": 0.95})])
    assert_samples_match(out.tokens, expected, p_fail=1e-6)


def test_model_calls_are_counted(models):
    dec = decspec.compile("specs/speculative.dec", models=models, k=3, backend="inductor")
    stats = dec.generate([[1, 2]], max_new_tokens=8, seed=0).stats
    assert stats.model_calls == {"target": stats.rounds + 1, "draft": 3 * stats.rounds + 1}  # + the prefill


def test_compiled_round_never_recompiles(models, monkeypatch, capsys):
    """An exit policy changes the speculation length every round; the compiled round keeps one graph. Its first call
    says it is compiling (decspec/progress.py), and its compile time is accounted apart from generating."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("DECSPEC_PROGRESS", "1")

    torch._dynamo.reset()
    counters.clear()
    # confidence 0.004: the random draft's top probability straddles it, so rows stop after 1, 2 or 3 drafts
    eager = decspec.compile("specs/speculative_greedy.dec", models=models, k=3, confidence=0.004)
    dec = decspec.compile("specs/speculative_greedy.dec", models=models, k=3, confidence=0.004, backend="inductor")
    dec.backend_options = {"compile": True}
    first = dec.generate(PROMPTS, max_new_tokens=12, seed=0)  # warm-up: compiles once
    assert capsys.readouterr().err.count("decspec: compiling the round with torch.compile (batch 3, capacity 128): ") == 1
    graphs = counters["stats"]["unique_graphs"]
    others = [[5, 6], [7, 8, 9, 10, 11], [12, 13, 14]]  # same batch size, other lengths: same (bucketed) shapes
    second = dec.generate(others, max_new_tokens=16, seed=1)
    assert "compiling" not in capsys.readouterr().err
    assert counters["stats"]["unique_graphs"] == graphs == 1
    assert not counters["graph_break"]
    assert first.stats.compile_time > 0 and second.stats.compile_time == 0  # the compile is the first call's, apart
    assert first.tokens == eager.generate(PROMPTS, max_new_tokens=12, seed=0).tokens
    assert second.tokens == eager.generate(others, max_new_tokens=16, seed=1).tokens
    drafted = {d for row in first.stats.drafted + second.stats.drafted for d in row}
    assert len(drafted) > 1  # the confidence stop did vary the speculation length


def test_emit_command(capsys):
    assert main(["emit", "specs/speculative.dec", "--format", "python"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Generated by decspec") and "def round_fn" in out
    # --format mlir: tests/test_backend_mlir.py; here only that it fails cleanly (no torch-mlir, or no tosa lowering)
    assert main(["emit", "specs/speculative.dec", "--format", "mlir", "--part", "verify", "--dialect", "tosa"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'decspec[mlir]'" in err or "cannot lower the verify part to the tosa dialect" in err


def test_runner_source_matches_emit():
    graph = run_pipeline(lower(load("specs/speculative.dec")))
    assert RoundRunner(graph).source == emit_python(graph)


def test_early_exit_draft_compiles_to_one_graph(models):
    """A view of the target (EarlyExit) takes the static step too: no graph break, one graph."""
    from torch._dynamo.utils import counters

    from decspec.stdlib.models.views import EarlyExit

    target = models["target"]
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile("specs/speculative_greedy.dec", target=target, draft=EarlyExit(target, 2), k=3, backend="inductor")
    dec.backend_options = {"compile": True}
    eager = decspec.compile("specs/speculative_greedy.dec", target=target, draft=EarlyExit(target, 2), k=3)
    out = dec.generate(PROMPTS, max_new_tokens=12, seed=0)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert out.tokens == eager.generate(PROMPTS, max_new_tokens=12, seed=0).tokens


@pytest.mark.parametrize("spec, overrides", [("specs/speculative.dec", {"k": 3, "temperature": 0.9}),
                                             ("specs/autoregressive.dec", {"temperature": 1.0, "top_p": 0.9})])
def test_sampling_equals_eager_for_the_same_seed(models, spec, overrides):
    """The runner draws the round's uniforms block by block in the eager backend's order, so a
    sampling spec whose loop runs to max gives eager's tokens exactly (ragged rows included)."""
    eager = decspec.compile(spec, models=models, **overrides).generate(PROMPTS, max_new_tokens=16, seed=5)
    gen = decspec.compile(spec, models=models, backend="inductor", **overrides).generate(PROMPTS, max_new_tokens=16, seed=5)
    assert gen.tokens == eager.tokens and gen.stats.accepted == eager.stats.accepted


_COMPILED_TOP_P: dict[float, object] = {}


@settings(max_examples=40)
@given(x=tied_logits(rows=8, vocab=24), p=st.sampled_from([0.0, 0.5, 0.9]))
def test_compiled_top_p_equals_eager_on_ties(x, p):
    """top_p compiled by inductor (its own softmax, cumsum and sort kernels) keeps the same tokens as eager on
    logits full of ties and near-ties: it reads only the sorted values, so no order among ties can differ."""
    if p not in _COMPILED_TOP_P:
        _COMPILED_TOP_P[p] = torch.compile(functools.partial(top_p, p=p), dynamic=False)
    assert torch.equal(_COMPILED_TOP_P[p](x), top_p(x, p))
