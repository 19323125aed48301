"""decspec.testing: strategies, assertions (exact and statistical paths), the pytest plugin, and
the worked example of docs/testing.md."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.compiler.analysis import losslessness
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.dsl.check import load
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.samplers import apply_pipeline
from decspec.testing import (
    assert_greedy_equivalent, assert_lossless, broken_verifier, compositions, distributions, greedy_tokens, model_pairs,
    sampler_pipelines, sequence_distribution, specs, stages, table_models, target_distribution, tv_distance,
)
from test_docs_examples import file_blocks

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parent.parent


def pair(V=3, order=1, seed=0, eos=None):
    return {"target": TableModel.random(V, order, seed, eos_token_id=eos), "draft": TableModel.random(V, order, seed + 1, temperature=2.0)}


# --------------------------------------------------------------------------- strategies


@settings(max_examples=30)
@given(distributions(st.integers(2, 6)))
def test_distributions_are_probability_vectors(p):
    assert p.dtype == torch.float64 and (p >= 0).all() and abs(float(p.sum()) - 1) < 1e-12


@settings(max_examples=30)
@given(model_pairs(vocab=st.integers(2, 5), order=st.integers(0, 2)), sampler_pipelines())
def test_model_pairs_share_a_vocabulary_and_pipelines_keep_a_token(models, pipeline):
    target, draft = models["target"], models["draft"]
    assert target.vocab_size == draft.vocab_size and target.order == draft.order
    counts = torch.ones_like(target.logits, dtype=torch.float64)  # every token seen once before: penalty stages bite
    probs = torch.softmax(apply_pipeline(target.logits.double(), stages(pipeline), counts), -1)
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones((), dtype=torch.float64))


@settings(max_examples=30)
@given(compositions(k=st.integers(1, 4)), table_models(vocab=st.just(4)))
def test_compositions_are_specs_that_compile(composition, model):
    spec = load(composition.text)
    run_pipeline(lower(spec), check=True)  # the IR verifier after every pass
    assert losslessness(spec).lossless  # every stdlib component is lossless
    assert composition.key[:2] == (spec.slot("propose").name, spec.slot("verify").name)
    assert model.vocab_size == 4


def test_strategies_draw_registered_user_components():
    seen = set()

    @settings(max_examples=40)
    @given(specs())
    def collect(text):
        seen.add(load(text).slot("verify").name)

    with broken_verifier("mine"):
        collect()
    assert "mine" in seen


# --------------------------------------------------------------------------- distributions and assertions


def test_target_distribution_is_the_tables_own_and_stops_at_eos():
    target = TableModel.random(4, 1, seed=2)
    pipeline = [("temperature", {"t": 0.7}), ("top_k", {"k": 3})]
    assert tv_distance(target_distribution(target, [1], 3, pipeline), sequence_distribution(target, [1], 3, pipeline)) < 1e-15
    with_eos = target_distribution(TableModel.random(4, 1, seed=2, eos_token_id=0), [1], 3)
    assert abs(sum(with_eos.values()) - 1) < 1e-12
    assert all(s[-1] == 0 for s in with_eos if len(s) < 3) and any(len(s) < 3 for s in with_eos)


def test_assert_lossless_is_exact_when_it_can_be():
    check = assert_lossless("specs/speculative.dec", models=pair(), k=3)
    assert check.method == "exact" and check.tv <= 1e-12 and check.tol >= 1e-12


def test_assert_lossless_takes_a_decoder_and_a_statistical_path():
    dec = decspec.compile("specs/speculative.dec", models=pair(4), k=2)
    check = assert_lossless(dec, method="statistical", samples=2000)
    assert check.method == "statistical" and check.p > 1e-6 and check.p_fail == 1e-6
    assert assert_lossless(dec, max_rows=10, samples=2000).method == "statistical"  # auto: exact does not fit
    with pytest.raises(TypeError):
        assert_lossless(dec, k=3)


def test_assert_lossless_catches_a_broken_verifier_both_ways():
    with broken_verifier("accept_all"):
        spec = (ROOT / "specs/speculative.dec").read_text().replace("verify  = rejection", "verify  = accept_all")
        with pytest.raises(AssertionError, match="not lossless: exact TV distance"):
            assert_lossless(spec, models=pair(), k=2)
        with pytest.raises(AssertionError, match=r"does not sample from the target: chi-square p=.* < 1e-06 \(the false-alarm rate\)"):
            assert_lossless(spec, models=pair(), k=2, method="statistical", samples=2000)


def test_assert_greedy_equivalent():
    models = pair(6, 2, eos=5)
    assert greedy_tokens(models["target"], [1, 2], 1) == [int(models["target"].logits[1, 2].argmax())]
    assert_greedy_equivalent("specs/speculative_greedy.dec", models=models, prompts=[[1], [2, 3], [4, 4, 4]], max_new_tokens=10)
    with pytest.raises(AssertionError, match="differs from greedy decoding"):
        assert_greedy_equivalent("specs/speculative.dec", models=pair(6, 1), temperature=2.0, top_p=1.0, max_new_tokens=10)


# --------------------------------------------------------------------------- the pytest plugin


def test_plugin_fixtures_options_and_dec_collection(pytester):
    pytester.makeconftest('pytest_plugins = ["decspec.pytest_plugin"]')
    pytester.makepyfile(test_user=f'''
def test_fixtures(table_models, assert_lossless):
    models = table_models(vocab=3, seed=4)
    assert models["target"].vocab_size == models["draft"].vocab_size == 3
    assert assert_lossless("{ROOT}/specs/speculative.dec", models=models, k=2, samples=1000).method == "statistical"
''')
    pytester.runpytest_inprocess("--decspec-method", "statistical").assert_outcomes(passed=1)
    pytester.runpytest_inprocess("--decspec-backend", "inductor").assert_outcomes(passed=1)  # auto samples the generated round
    pytester.runpytest_inprocess().assert_outcomes(failed=1)  # auto on eager: exact
    shutil.copy(ROOT / "specs/speculative.dec", pytester.path / "good.dec")
    (pytester.path / "broken.dec").write_text((ROOT / "specs/speculative.dec").read_text().replace("verify  = rejection", "verify  = accept_all"))
    with broken_verifier("accept_all"):
        result = pytester.runpytest_inprocess("--decspec-verify", "--decspec-configs", "2", "good.dec", "broken.dec", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*verdict: NOT lossless*"])


def test_the_installed_plugin_needs_no_conftest_and_skips_what_verify_cannot_check(pytester):
    """The pytest11 entry point registers the plugin; a deterministic spec and a context-free grammar are skipped with
    the reason, not failed."""
    shutil.copy(ROOT / "specs/speculative.dec", pytester.path / "good.dec")
    shutil.copy(ROOT / "specs/beam_search.dec", pytester.path / "beam_search.dec")
    (pytester.path / "any_json.dec").write_text('decoder any_json() {\n    target = model("target")\n    grammar = json\n}\n')
    result = pytester.runpytest_inprocess("--decspec-verify", "--decspec-configs", "2", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*context-free grammar ('json')*"])
    result.stdout.fnmatch_lines(["*is deterministic (beam search)*"])


def test_the_worked_example_in_the_docs_runs(pytester):
    blocks = file_blocks("docs/testing.md")
    assert set(blocks) == {"conftest.py", "test_my_decoder.py"}
    for name, text in blocks.items():
        (pytester.path / name).write_text(text)
    shutil.copytree(ROOT / "specs", pytester.path / "specs")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_decoding_and_verify_need_no_hypothesis():
    """hypothesis is the `testing` extra: compiling, generating, `decspec verify` and decspec.testing's checks run
    without it; only the strategies ask for it, by name."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["hypothesis"] = None  # as if not installed
import decspec, decspec.testing
from decspec.cli import main
decspec.compile("specs/speculative.dec").generate([[1, 2]], max_new_tokens=2, seed=0)
assert main(["verify", "specs/speculative.dec", "--configs", "1"]) == 0
try:
    decspec.testing.table_models
except ImportError as e:
    assert "pip install 'decspec[testing]'" in str(e)
else:
    raise AssertionError("the strategies imported without hypothesis")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
