"""Speculative decoding samples from the target's distribution (after the sampler pipeline).

Statistical check: for random vocabularies (V <= 5), random target/draft tables, random k,
sampler pipelines and exit policies, M sampled continuations of n tokens are compared with the
exact sequence distribution computed from the target table by enumeration. A chi-square test
fails at p < 1e-6, so a false failure is negligible; the profile is derandomized, so the suite
is deterministic. A deliberately broken verifier (accept every draft) must fail the same check.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import decspec
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.samplers import apply_pipeline
from decspec.testing import broken_verifier, chi_square, pipeline_text, sequence_distribution, stages, total_variation

P_FAIL = 1e-6
SAMPLES = 4000
NEW_TOKENS = 3


@st.composite
def pipelines(draw, vocab: int):
    stages = []
    for name in draw(st.lists(st.sampled_from(["temperature", "top_k", "top_p", "min_p"]), max_size=3, unique=True)):
        if name == "temperature":
            stages.append(("temperature", {"t": draw(st.sampled_from([0.5, 0.8, 1.0, 1.5, 2.0]))}))
        elif name == "top_k":
            stages.append(("top_k", {"k": draw(st.integers(1, vocab))}))
        elif name == "top_p":
            stages.append(("top_p", {"p": draw(st.sampled_from([0.3, 0.5, 0.75, 0.9, 1.0]))}))
        else:
            stages.append(("min_p", {"p": draw(st.sampled_from([0.0, 0.05, 0.2, 0.5]))}))
    return stages


def spec_text(pipeline, verifier: str, stop: str | None) -> str:
    lines = ['target = model("target")', 'draft = model("draft")', "propose = autoregressive(draft, max = k)", f"verify = {verifier}"]
    if pipeline:
        lines.append(f"sampler = {pipeline_text(pipeline)}")
    if stop:
        lines.append(f"stop = {stop}")
    return "decoder under_test(k: int = 2) {\n    " + "\n    ".join(lines) + "\n}\n"


configs = st.fixed_dictionaries(
    {
        "vocab": st.integers(2, 5),
        "order": st.integers(0, 1),
        "k": st.integers(1, 4),
        "target_seed": st.integers(0, 10_000),
        "draft_seed": st.integers(0, 10_000),
        "draft_temperature": st.sampled_from([0.5, 1.0, 2.0]),
        "stop": st.sampled_from([None, "when draft.prob < 0.4", "when draft.entropy > 1.0 or draft.prob < 0.2"]),
        "prompt": st.lists(st.integers(0, 1), min_size=1, max_size=3),
    }
)


def run_check(cfg, pipeline, verifier: str, seed: int = 0):
    V = cfg["vocab"]
    target = TableModel.random(V, cfg["order"], seed=cfg["target_seed"])
    draft = TableModel.random(V, cfg["order"], seed=cfg["draft_seed"], temperature=cfg["draft_temperature"])
    dec = decspec.compile(spec_text(pipeline, verifier, cfg["stop"]), target=target, draft=draft, k=cfg["k"])
    result = dec.generate([cfg["prompt"]] * SAMPLES, max_new_tokens=NEW_TOKENS, seed=seed)
    expected = sequence_distribution(target, cfg["prompt"], NEW_TOKENS, pipeline)
    stat, p = chi_square(result.tokens, expected)
    return p, total_variation(result.tokens, expected), result


@pytest.mark.parametrize("verifier", ["rejection", "greedy"])
@settings(max_examples=25)
@given(cfg=configs, data=st.data())
def test_speculative_matches_target_distribution(verifier, cfg, data):
    pipeline = data.draw(pipelines(cfg["vocab"]))
    p, tv, result = run_check(cfg, pipeline, verifier)
    assert p > P_FAIL, f"chi-square p={p:.3g}, TV={tv:.4f} for {pipeline_text(pipeline) or 'softmax'}"
    assert all(len(row) == NEW_TOKENS for row in result.tokens)


def test_plain_sampling_matches_target_distribution():
    target = TableModel.random(4, 1, seed=3)
    pipeline = [("temperature", {"t": 0.8}), ("top_p", {"p": 0.9})]
    dec = decspec.compile("specs/autoregressive.dec", target=target, temperature=0.8, top_p=0.9)
    result = dec.generate([[1]] * SAMPLES, max_new_tokens=NEW_TOKENS, seed=1)
    stat, p = chi_square(result.tokens, sequence_distribution(target, [1], NEW_TOKENS, pipeline))
    assert p > P_FAIL


# --- the check has teeth: a verifier that accepts every draft must fail it -----------------


@pytest.fixture(scope="module")
def accept_all():
    with broken_verifier("accept_all"):
        yield


def first_token_tv(cfg, pipeline) -> float:
    V = cfg["vocab"]
    target = TableModel.random(V, cfg["order"], seed=cfg["target_seed"])
    draft = TableModel.random(V, cfg["order"], seed=cfg["draft_seed"], temperature=cfg["draft_temperature"])
    st_ = stages(pipeline)
    p = torch.softmax(apply_pipeline(target.logits[target.context(cfg["prompt"])], st_), -1)
    q = torch.softmax(apply_pipeline(draft.logits[draft.context(cfg["prompt"])], st_), -1)
    return 0.5 * float((p - q).abs().sum())


@settings(max_examples=15)
@given(cfg=configs, data=st.data())
def test_broken_verifier_fails_the_check(accept_all, cfg, data):
    cfg = dict(cfg, stop=None)
    pipeline = data.draw(pipelines(cfg["vocab"]))
    assume(first_token_tv(cfg, pipeline) >= 0.25)  # the draft really differs from the target
    p, tv, _ = run_check(cfg, pipeline, "accept_all")
    assert p < P_FAIL, f"accept-all went undetected: p={p:.3g}, TV={tv:.4f}"
