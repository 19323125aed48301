"""fold_sampler: identity sampler stages are dropped, stages a later greedy makes irrelevant are
dropped, temperature(0) is greedy, and a transform left empty disappears."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.compiler.builder import Builder
from decspec.compiler.ir import CTX, Type
from decspec.compiler.lower import lower
from decspec.compiler.passes.fold_sampler import NAME, fold_sampler, fold_stages
from decspec.compiler.text import Record
from decspec.compiler.verify import verify
from decspec.stdlib.samplers import apply_pipeline
from test_ir_text import specs


def R(name: str, **fields) -> Record:
    return Record(name, tuple(fields.items()))


def names(stages) -> list[str]:
    return [s.name for s in stages]


def test_name():
    assert NAME == "fold_sampler"


@pytest.mark.parametrize("stage", [R("temperature", t=1.0), R("temperature", t=1), R("top_p", p=1.0), R("min_p", p=0.0)])
def test_identity_stages_are_dropped(stage):
    assert fold_stages((stage,)) == ()
    assert fold_stages((R("top_k", k=4), stage, R("temperature", t=0.5))) == (R("top_k", k=4), R("temperature", t=0.5))


@pytest.mark.parametrize("stage", [R("temperature", t=0.99), R("top_p", p=0.99), R("min_p", p=0.01), R("top_k", k=1000)])
def test_other_stages_stay(stage):
    assert fold_stages((stage,)) == (stage,)


def test_top_k_at_least_v_folds_only_when_v_is_static():
    assert fold_stages((R("top_k", k=8),), V="V") == (R("top_k", k=8),)
    assert fold_stages((R("top_k", k=8),), V=8) == ()
    assert fold_stages((R("top_k", k=7),), V=8) == (R("top_k", k=7),)


def test_temperature_zero_is_greedy():
    assert fold_stages((R("temperature", t=0.0),)) == (R("greedy"),)


@pytest.mark.parametrize("before", [R("top_k", k=3), R("top_p", p=0.5), R("top_p", p=0.0), R("min_p", p=0.5), R("min_p", p=1.0),
                                    R("greedy")])
def test_argmax_preserving_stage_before_greedy_is_dropped(before):
    assert fold_stages((before, R("greedy"))) == (R("greedy"),)


def test_stages_argmax_preserving_only_in_exact_arithmetic_stay():
    """Rounding in logits / t can make a near-tie a tie: not provably the same."""
    before = R("temperature", t=0.5)
    assert fold_stages((before, R("greedy"))) == (before, R("greedy"))


def test_top_p_zero_is_not_greedy():
    """top_p(0) keeps every tied maximum; greedy only the first."""
    assert fold_stages((R("top_p", p=0.0),)) == (R("top_p", p=0.0),)


@pytest.mark.parametrize("after", [R("top_k", k=3), R("top_p", p=0.2), R("min_p", p=0.7), R("greedy"), R("temperature", t=0.0)])
def test_masks_after_greedy_are_dropped(after):
    assert fold_stages((R("greedy"), after)) == (R("greedy"),)


def test_rules_chain_to_a_fixpoint():
    stages = (R("temperature", t=1.0), R("top_k", k=50), R("min_p", p=0.1), R("temperature", t=0), R("top_p", p=0.9))
    assert fold_stages(stages) == (R("greedy"),)
    assert fold_stages(fold_stages(stages)) == fold_stages(stages)


def graph_with(stages, V="V"):
    b = Builder("round")
    ctx = b.input(CTX)
    logits = b.emit("model_call", [ctx], model="target", last=True)[0]
    if V != "V":
        logits = b.input(Type("f32", ("B", V)))
    transformed = b.emit("logits_transform", [logits], stages=tuple(stages))[0]
    probs = b.emit("softmax", [transformed])[0]
    tok = b.emit("sample", [probs, b.emit("uniform", [], shape=("B",))[0]])[0]
    b.emit("commit", [tok])
    return b.build()


def test_empty_transform_is_removed_and_its_users_read_its_input():
    graph = graph_with([R("temperature", t=1.0), R("top_p", p=1.0)])
    out = verify(fold_sampler(graph))
    assert [op.name for op in out.ops] == ["model_call", "softmax", "uniform", "sample", "commit"]
    softmax = next(op for op in out.ops if op.name == "softmax")
    assert softmax.inputs == next(op for op in out.ops if op.name == "model_call").outputs
    assert "logits_transform" in str(graph)  # the input graph is not mutated


def test_transform_keeps_its_folded_stages_and_meta():
    graph = graph_with([R("temperature", t=0.0), R("top_p", p=0.5)])
    out = verify(fold_sampler(graph))
    (transform,) = [op for op in out.ops if op.name == "logits_transform"]
    assert transform.param("stages") == (R("greedy"),)
    assert fold_sampler(out) == out


def test_static_vocabulary_is_read_from_the_logits_type():
    out = verify(fold_sampler(graph_with([R("top_k", k=4)], V=4)))
    assert not any(op.name == "logits_transform" for op in out.ops)


@settings(max_examples=30)
@given(specs())
def test_lowered_graphs(spec):
    graph = lower(spec)
    before = str(graph)
    once = verify(fold_sampler(graph))
    assert str(graph) == before
    assert fold_sampler(once) == once
    assert all(op.param("stages") for op in once.walk() if op.name == "logits_transform")


# --------------------------------------------------------------------------- same distribution

stage_strategy = st.one_of(
    st.just(R("greedy")),
    st.sampled_from([0.0, 1.0, 1]).map(lambda t: R("temperature", t=t)) | st.floats(0.0, 10.0).map(lambda t: R("temperature", t=t)),
    st.integers(1, 10).map(lambda k: R("top_k", k=k)),
    st.sampled_from([0.0, 1.0]).map(lambda p: R("top_p", p=p)) | st.floats(0.0, 1.0).map(lambda p: R("top_p", p=p)),
    st.sampled_from([0.0, 1.0]).map(lambda p: R("min_p", p=p)) | st.floats(0.0, 1.0).map(lambda p: R("min_p", p=p)),
)
logit_values = st.floats(-30.0, 30.0, width=32) | st.sampled_from([0.0, 1.0, -1.0])  # repeated values make ties


def probs(logits: torch.Tensor, stages) -> torch.Tensor:
    x = apply_pipeline(logits, tuple((s.name, s.fields) for s in stages))
    return torch.softmax(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)


@settings(max_examples=200, deadline=None)
@given(st.lists(stage_strategy, max_size=5), st.integers(1, 8).flatmap(lambda V: st.lists(st.lists(logit_values, min_size=V, max_size=V), min_size=1, max_size=3)),
       st.sampled_from([torch.float32, torch.float64]), st.booleans())
def test_folding_preserves_the_sampled_distribution(stages, rows, dtype, static_v):
    """softmax(pipeline(logits)) is the same, bit for bit (NaN where the original is NaN), before and after."""
    logits = torch.tensor(rows, dtype=dtype)
    V = logits.shape[-1] if static_v else "V"
    before, after = probs(logits, stages), probs(logits, fold_stages(tuple(stages), V))
    assert torch.equal(before.isnan(), after.isnan())
    assert torch.equal(before.nan_to_num(), after.nan_to_num())
