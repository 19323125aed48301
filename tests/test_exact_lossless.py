"""Exact losslessness of the shipped specs, and `decspec verify`.

Every spec in specs/ that the analysis calls lossless generates, on random table models, exactly
the target's sequence distribution after the same sampler pipeline (total variation <= 1e-12);
a spec it calls lossy has its TV distance reported. A deliberately broken verifier fails.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import decspec
from decspec.cli import main
from decspec.compiler.analysis import losslessness
from decspec.dsl.check import load
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.stdlib.models.table import TableModel
from decspec.testing import assert_lossless, broken_verifier, exact_distribution, sequence_distribution, target_distribution, tv_distance, verify_spec

ROOT = Path(__file__).resolve().parent.parent
# grammar specs need a vocabulary the grammar can spell, which 2..5-token tables lack: their exact checks are in
# tests/test_grammar_decoding.py and, through decspec verify's spelled tables, tests/test_grammar_forced.py; search specs (beam search) are deterministic, with no distribution to compare: their
# reference is Hugging Face's generate(num_beams=...), in tests/test_beam_search.py
# diffusion specs (the `denoise` slot) are judged against their sequential process on table diffusion models: tests/test_diffusion.py
SPECS = [p for p in sorted((ROOT / "specs").glob("*.dec"))
         if load(p).slot("grammar") is None and load(p).slot("search") is None and load(p).slot("denoise") is None]
NEW_TOKENS = 3

# (vocabulary, table order, prompt, EOS): unigram and bigram tables, with and without an EOS
CONFIGS = [(2, 0, [1], None), (3, 1, [0, 2], None), (4, 1, [1], 3)]


def table_models(roles, vocab: int, order: int, eos: int | None, seed: int = 0) -> dict[str, TableModel]:
    """The first role is the target; the others are flatter tables of the same vocabulary (with layers and draft heads, which
    specs drafting from the target itself use)."""
    return {role: LayeredTableModel.random(vocab, order, seed + i, temperature=1.0 if i == 0 else 2.0, eos_token_id=eos if i == 0 else None)
            for i, role in enumerate(roles)}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"V{c[0]}-order{c[1]}" + ("-eos" if c[3] is not None else ""))
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_spec_matches_the_target_exactly(path, config):
    vocab, order, prompt, eos = config
    spec = load(path)
    dec = decspec.compile(path, models=table_models(spec.models, vocab, order, eos))
    got = exact_distribution(dec, prompt, NEW_TOKENS)
    expected = target_distribution(dec, prompt, NEW_TOKENS)
    assert abs(sum(got.values()) - 1) <= got.error_bound
    if not losslessness(spec).lossless:  # no shipped spec is lossy today; `decspec verify` reports its TV
        assert "TV distance" in str(verify_spec(path, configs=2))
        return
    assert tv_distance(got, expected) <= 1e-12
    if eos is None and spec.slot("target").name == "model":  # the target side, cross-checked by plain enumeration of the table
        # (a combined target's distribution is checked against the papers' definitions in tests/test_combine.py)
        target = dec.models[spec.models[0]]
        pipeline = [(s.name, dict(s.args)) for s in spec.slot("sampler", ())]
        assert tv_distance(expected, sequence_distribution(target, prompt, NEW_TOKENS, pipeline)) <= 1e-12


# --------------------------------------------------------------------------- the check has teeth


def with_verifier(name: str) -> str:
    return (ROOT / "specs" / "speculative.dec").read_text().replace("verify  = rejection", f"verify  = {name}")


def test_a_broken_verifier_fails_the_exact_check(tmp_path, capsys):
    models = table_models(["target", "draft"], 3, 1, None)
    with broken_verifier("accept_all"):
        with pytest.raises(AssertionError, match="is not lossless: exact TV distance"):
            assert_lossless(with_verifier("accept_all"), models=models, k=2)
        broken = tmp_path / "broken.dec"
        broken.write_text(with_verifier("accept_all"))
        assert main(["verify", str(broken), "k=2", "--configs", "3"]) == 1
    out = capsys.readouterr().out
    assert "analysis: lossless" in out and "verdict: NOT lossless" in out


def test_a_lossy_spec_reports_its_tv_distance(tmp_path, capsys):
    with broken_verifier("accept_all", claims_lossless=False):
        lossy = tmp_path / "lossy.dec"
        lossy.write_text(with_verifier("accept_all"))
        assert main(["verify", str(lossy), "k=2", "--configs", "3"]) == 0  # the analysis already says lossy
    out = capsys.readouterr().out
    assert "analysis: lossy" in out and "verdict: lossy: TV distance to the target up to" in out
    assert "lossy (declared): TV = " in out


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_decspec_verify_prints_an_exact_verdict(path, capsys):
    assert main(["verify", str(path), "--configs", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "exact check on 3 random table-model configurations" in out
    if losslessness(load(path)).lossless:
        assert "verdict: lossless, exactly: agrees with the analysis" in out
    else:  # lossy by design (typical acceptance): the measured distance is the result
        assert "lossy (declared): TV = " in out and "verdict: lossy: TV distance to the target up to" in out


def test_decspec_verify_errors_are_diagnostics(capsys):
    assert main(["verify", "specs/speculative.dec", "k"]) == 1
    assert "NAME=VALUE" in capsys.readouterr().err
