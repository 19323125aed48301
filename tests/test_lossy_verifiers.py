"""The lossy verifiers `typical` (Medusa's typical acceptance) and `topk_match`: their acceptance rules on
hand-made distributions, their measured (exact) TV distance to the target, reported by `decspec verify`
without failing, the analysis's verdict and reason, the exact backend against eager samples, greedy
equivalence under a greedy sampler (eager and inductor), and a lossy verifier that claims to be lossless
failing the check."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.inductor.codegen import emit_python
from decspec.backends.eager.acceptance import dist_at, topk_accepted, typical_accepted
from decspec.cli import main
from decspec.compiler.analysis import losslessness
from decspec.dsl.check import load
from decspec.stdlib import registry
from decspec.stdlib.models.table import TableModel
from decspec.testing import (assert_greedy_equivalent, assert_samples_match, exact_distribution, model_pairs, target_distribution,
                             tv_distance, verify_spec)

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "typical_acceptance.dec"


def spec_text(verify: str, sampler: str = "temperature(1.0)") -> str:
    return (f"decoder lossy(k: int = 2) {{\n    target = model(\"target\")\n    draft = model(\"draft\")\n    sampler = {sampler}\n"
            f"    propose = autoregressive(draft, max = k)\n    verify = {verify}\n}}\n")


# --------------------------------------------------------------------------- the acceptance rules


def test_typical_accepts_while_p_exceeds_the_entropy_threshold():
    flat = [0.25] * 4  # H = log 4: threshold min(0.3, 0.09 / 4) = 0.0225
    peaked = [0.9, 0.05, 0.03, 0.02]
    p = torch.tensor([[flat, peaked, flat], [peaked, peaked, flat]])  # [B=2, K+1=3, V=4]
    d = torch.tensor([[3, 0], [1, 0]])
    H = -sum(x * math.log(x) for x in peaked)
    assert 0.05 < 0.09 * math.exp(-H) < 0.09  # row 1: d_0 = 1 (p 0.05) is under the peaked threshold
    n = typical_accepted(p, d, torch.tensor([2, 2]), epsilon=0.3, delta=0.09)
    assert n.tolist() == [2, 0]
    assert typical_accepted(p, d, torch.tensor([1, 2]), 0.3, 0.09).tolist() == [1, 0]  # capped at drafted
    assert typical_accepted(p, d, torch.tensor([2, 2]), 0.0, 0.09).tolist() == [2, 2]  # epsilon 0: every p > 0 passes
    assert typical_accepted(p, d, torch.tensor([2, 2]), 1.0, 1.0).tolist() == [0, 0]  # flat: threshold exp(-log 4) = 0.25, not exceeded


def test_topk_match_accepts_while_the_draft_is_among_the_k_most_likely():
    p = torch.tensor([[[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4], [0.25] * 4]])  # [1, 3, 4]
    drafted = torch.tensor([2])
    assert topk_accepted(p, torch.tensor([[1, 2]]), drafted, k=2).tolist() == [2]  # ranks 1 and 1
    assert topk_accepted(p, torch.tensor([[1, 1]]), drafted, k=2).tolist() == [1]  # 1 at position 1 has rank 2
    assert topk_accepted(p, torch.tensor([[2, 3]]), drafted, k=2).tolist() == [0]  # rank 2
    assert topk_accepted(p, torch.tensor([[3, 3]]), drafted, k=4).tolist() == [0]  # p = 0 is never accepted
    tied = torch.tensor([[[0.4, 0.4, 0.2], [0.4, 0.4, 0.2]]])
    assert topk_accepted(tied, torch.tensor([[1]]), torch.tensor([1]), k=1).tolist() == [1]  # ties with the top count as top


def test_take_dist():
    p = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(dist_at(p, torch.tensor([2, 0])), torch.stack([p[0, 2], p[1, 0]]))


# --------------------------------------------------------------------------- lossy, measured, reported


@pytest.mark.parametrize("verify", ["typical", "topk_match", "typical(epsilon = 0.1, delta = 0.5)", "topk_match(k = 1)"])
def test_lossy_verifiers_have_a_measured_tv_distance(verify):
    target, draft = TableModel.random(4, 1, seed=0), TableModel.random(4, 1, seed=1, temperature=2.0)
    dec = decspec.compile(spec_text(verify), target=target, draft=draft)
    assert not dec.verdict.lossless
    got = exact_distribution(dec, [1], 3)
    assert abs(sum(got.values()) - 1) <= got.error_bound
    assert tv_distance(got, target_distribution(dec, [1], 3)) > 0.01


def test_check_says_lossy_and_why(capsys):
    assert main(["check", str(SPEC)]) == 0
    out = capsys.readouterr().out
    assert "\nlossy\n" in out and "verify = typical: typical acceptance keeps every draft" in out
    for name in ("typical", "topk_match"):
        assert registry.lookup("verifier", name).contract.lossless is False


def test_verify_reports_the_tv_distance_of_a_lossy_spec(capsys):
    assert main(["verify", str(SPEC), "k=2", "--configs", "3"]) == 0  # declared lossy: measured, not a failure
    out = capsys.readouterr().out
    assert "analysis: lossy" in out
    line = next(line for line in out.splitlines() if line.startswith("lossy (declared): TV = "))
    assert float(line.split("TV = ")[1].split()[0]) > 0
    report = verify_spec(SPEC, {"k": 2}, configs=3)
    assert report.exit_code == 0 and not report.observed_lossless and report.agrees


def test_a_lossy_verifier_that_claims_to_be_lossless_fails(tmp_path, capsys):
    """The teeth: the same lowering registered with a lossless contract is caught (exit code 1)."""
    typical = registry.lookup("verifier", "typical")
    registry.register(registry.Component("verifier", "typical_claimed", typical.params, typical.doc,
                                         registry.Contract(True, "claims to be lossless"), typical.lower))
    try:
        path = tmp_path / "claimed.dec"
        path.write_text(spec_text("typical_claimed"))
        assert main(["verify", str(path), "k=2", "--configs", "3"]) == 1
        assert "verdict: NOT lossless" in capsys.readouterr().out
    finally:
        registry.unregister("verifier", "typical_claimed")


@settings(max_examples=6, deadline=None)
@given(models=model_pairs(vocab=st.integers(2, 3)), verify=st.sampled_from(["typical", "topk_match"]), k=st.integers(1, 3))
def test_eager_samples_follow_the_exact_distribution(models, verify, k):
    """The exact backend computes what eager samples, for the lossy verifiers too (chi-square, p_fail 1e-6)."""
    dec = decspec.compile(spec_text(verify), models=models, k=k)
    out = dec.generate([[1]] * 3000, max_new_tokens=3, seed=0)
    assert_samples_match(out.tokens, exact_distribution(dec, [1], 3))


# --------------------------------------------------------------------------- greedy: lossless, token for token


@pytest.mark.parametrize("verify", ["typical", "topk_match(k = 3)"])
def test_under_a_greedy_sampler_they_are_greedy_decoding(verify):
    text = spec_text(verify, sampler="greedy")
    assert losslessness(load(text)).lossless
    for seed in range(4):
        models = {"target": TableModel.random(6, 2, seed=seed), "draft": TableModel.random(6, 2, seed=seed + 50, temperature=0.5)}
        assert_greedy_equivalent(text, models=models, prompts=[[1], [2, 3, 4]], max_new_tokens=10, k=3)


@pytest.mark.parametrize("verify", ["typical", "topk_match"])
def test_inductor_gives_the_eager_tokens(verify):
    text = spec_text(verify, sampler="greedy")
    models = {"target": TableModel.random(6, 2, seed=1), "draft": TableModel.random(6, 2, seed=2)}
    eager = decspec.compile(text, models=models, k=3).generate([[1, 2], [3]], max_new_tokens=10, seed=0)
    dec = decspec.compile(text, models=models, k=3, backend="inductor")
    assert "K.typical_accept(" in emit_python(dec.graph) or "K.topk_accept(" in emit_python(dec.graph)
    got = dec.generate([[1, 2], [3]], max_new_tokens=10, seed=0)
    assert got.tokens == eager.tokens and got.stats.accepted == eager.stats.accepted


def test_temperature_zero_spec_is_lossless_and_greedy():
    spec = load(SPEC, overrides={"temperature": 0.0})
    verdict = losslessness(spec)
    assert verdict.lossless and any("one-hot" in r for r in verdict.reasons)
