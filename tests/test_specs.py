"""Every .dec in specs/ compiles, passes the IR verifier after every pass, and runs."""
from __future__ import annotations

from pathlib import Path

import pytest

import decspec
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.dsl.check import load
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.stdlib.models.diffusion_table import DiffusionTableModel
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.search import has_round

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.dec"))
LOSSY = {"typical_acceptance"}  # lossy by design (Medusa's typical acceptance): `decspec verify` measures its TV distance
LOSSY |= {"fast_dllm", "semi_ar_blocks", "diffusion_regex"}  # parallel unmasking: `decspec verify` gives the TV from the sequential process
BYTES = [bytes([i]) for i in range(256)] + [None]  # a byte-level vocabulary, id 256 the EOS: every grammar is expressible


def test_the_three_first_specs_are_here():
    assert {p.stem for p in SPECS} >= {"autoregressive", "speculative", "speculative_greedy"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_compiles_verifies_and_runs(path):
    spec = load(path)
    if has_round(spec):  # beam search has no round graph (backends/beam.py)
        run_pipeline(lower(spec), check=True)
    if spec.slot("denoise") is not None:  # masked diffusion: table diffusion models (byte-level with an EOS for a grammar)
        grammar = spec.slot("grammar") is not None
        target = DiffusionTableModel.random(256 if grammar else 6, seed=0, eos_token_id=256 if grammar else None)
        dec = decspec.compile(path, target=target, vocab=BYTES if grammar else None)
        out = dec.generate([[1, 2], [3]], max_new_tokens=8, seed=0)
        assert all(len(r) == 8 or (grammar and r[-1] == 256) for r in out.tokens)
        assert not grammar or all(dec.matcher is None or _spells(dec, r) for r in out.tokens)
    elif spec.slot("grammar") is not None:  # byte-level tables; a row may end early, at an EOS the grammar allowed
        models = {role: TableModel.random(257, 1, seed=i, eos_token_id=256) for i, role in enumerate(spec.models)}
        dec = decspec.compile(path, models=models, vocab=BYTES)
        out = dec.generate([[1, 2], [3]], max_new_tokens=8, seed=0)
        assert all(len(r) == 8 or r[-1] == 256 for r in out.tokens)
    else:
        models = {role: LayeredTableModel.random(6, 1, seed=i) for i, role in enumerate(spec.models)}  # layers and heads for self-drafting specs
        dec = decspec.compile(path, models=models)
        out = dec.generate([[1, 2], [3]], max_new_tokens=8, seed=0)
        assert [len(r) for r in out.tokens] == [8, 8]
    if spec.slot("search") is not None and has_round(spec):  # a sampling search: reranks the round's samples
        assert not dec.verdict.lossless and not dec.verdict.deterministic and "reranks samples" in str(dec.verdict)
        assert len(out.candidates[0]) == dec.search.n
    elif spec.slot("search") is not None:  # deterministic decoding: claims no distribution, so it must not depend on the seed
        assert dec.verdict.deterministic and not dec.verdict.lossless
        assert dec.generate([[1, 2], [3]], max_new_tokens=8, seed=1).tokens == out.tokens
    else:
        assert dec.verdict.lossless or path.stem in LOSSY


def _spells(dec, row) -> bool:
    """Whether a diffusion decoder's row (cut after its EOS) is a string of its grammar."""
    return dec._diffusion_grammar().matches(row)
