"""Sampled specs on the inductor backend pass the losslessness check they pass on eager.

The exact checks (tests/test_exact_lossless.py, `decspec verify`) compute the distribution of the round graph, which
is what the eager backend samples. The inductor backend runs generated code instead, and gives eager's tokens for the
same seed only while no exit policy stops a draft loop early (eager then skips the draws of the steps it does not
run). So here every spec in specs/ that the inductor backend can emit runs its generated round (uncompiled; a
compiled round computes the same code) on small table models (decspec verify's `TableConfig`; a spelled vocabulary
for grammar specs; head trees, which read hidden states of tree-masked forwards, on a tiny transformer), one prompt
repeated 1,000-4,000 times in one batched generate (each row draws its own uniforms: from the batch's generator, or
in the second configuration from a seed of its own, as decspec serve's seeded requests do), and the 3-token continuations are compared by a chi-square test, failing at p < P_FAIL, with the target's distribution
(`assert_lossless(..., backend="inductor")`), or for a spec declared lossy with the exact backend's distribution of
the same decoder (`assert_matches_exact`). Specs that are greedy by default (temperature 0) run at temperature 1;
`sampler = greedy` specs stay greedy (every row must be greedy decoding). Beam search is deterministic and has no
round graph; specs using ops in codegen.NOT_YET are skipped with the op's name and join once it is emitted.

False alarms: for a correct backend each check fails with probability about P_FAIL = 1e-6 (the chi-square
approximation, with bins expected fewer than 5 times pooled: exact multinomial draws from six of these reference
distributions, 20,000 each, were rejected at 1e-3 in 0.09-0.18 % of draws, at 1e-4 in 0-0.03 %). The seeds are
fixed, so the suite is deterministic; with fresh seeds its ~60 checks would together raise a false alarm with
probability of order 1e-4. Power: a deviation of TV 0.05-0.07 from the reference is caught in most draws, larger
ones always. Teeth: a verifier that accepts every draft, and inductor kernels mutated to accept every draft or child,
or to resample from p instead of the residual after a rejection, fail the same check on inductor (p < 1e-90, TV
0.17-0.56) while the eager backend still passes.
"""
from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest
import torch

import decspec
from decspec.backends.inductor import kernels
from decspec.backends.inductor.codegen import NOT_YET
from decspec.compiler.analysis import losslessness
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.dsl.check import load
from decspec.stdlib.binding import base_role
from decspec.stdlib.models.heads import MedusaHeads
from decspec.stdlib.models.transformer import Transformer, TransformerConfig
from decspec.testing import assert_lossless, assert_matches_exact, broken_verifier, target_distribution
from decspec.verify import TableConfig, grammar_vocabulary

ROOT = Path(__file__).resolve().parent.parent
SPECS = [p for p in sorted((ROOT / "specs").glob("*.dec"))
         if load(p).slot("search") is None and load(p).slot("denoise") is None]  # beam search: deterministic; diffusion: eager only
SAMPLES = 4000  # at most; 64 per outcome of the reference distribution, at least 1000 (a grammar leaves few outcomes)
P_FAIL = 1e-6
NEW_TOKENS = 3
# bigram tables, other roles flatter (temperature 2): V = 4, prompt [1], the batch drawing from one generator (seed 0);
# V = 3, prompt [0, 2], EOS 2, each row with a seed of its own (generate(seed=[...]): backends/draws.py, keyed by block)
CONFIGS = ["V4", "V3-eos-row-seeds"]


def sampled(path: Path) -> dict:
    """A spec that is greedy by default (temperature 0) sampled at temperature 1; the others as they are."""
    return {"temperature": 1.0} if dict(load(path).params).get("temperature") == 0.0 else {}


@functools.cache
def op_names(path: Path) -> frozenset[str]:
    """The ops of a spec's round graph, as sampled here."""
    return frozenset(op.name for op in run_pipeline(lower(load(path, overrides=sampled(path)))).walk())


def not_emitted(path: Path) -> list[str]:
    return sorted(op_names(path) & set(NOT_YET))


def table_config(path: Path, config: str) -> tuple[TableConfig, list | None]:
    """The tables of one configuration (configuration c: the target's seed 10c, the other roles' 10c + 1, 10c + 2, ...), and
    a grammar spec's vocabulary: bytes spelled from the grammar's strings, the EOS last (as decspec verify builds it)."""
    spec = load(path)
    target = base_role(spec.slot("target"))  # a combined target's first model (stdlib/combine.py)
    c = CONFIGS.index(config)
    seeds = tuple((role, 10 * c + i) for i, role in enumerate((target,) + tuple(r for r in spec.models if r != target)))
    if spec.slot("grammar") is not None:
        vocab = grammar_vocabulary(spec, random.Random(c))
        return TableConfig(len(vocab), 1, seeds, 2.0, (0,), NEW_TOKENS, eos=len(vocab) - 1), vocab
    if config == "V4":
        return TableConfig(4, 1, seeds, 2.0, (1,), NEW_TOKENS), None
    return TableConfig(3, 1, seeds, 2.0, (0, 2), NEW_TOKENS, eos=2), None


def reads_hidden_through_trees(path: Path) -> bool:
    """Head trees (medusa_tree) keep the target's hidden states of a tree-masked forward, which table models do not
    return (LayeredTableModel.forward): they run on a tiny transformer with random Medusa heads instead."""
    return {"tree_call", "head_level"} <= op_names(path)


def tiny_transformer_with_heads(seed: int = 0) -> Transformer:
    config = TransformerConfig(vocab_size=5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    model = Transformer.random(config, seed)
    heads = MedusaHeads(config.hidden_size, 4).requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for p in heads.parameters():  # Medusa's own init is the identity: random heads draft something other than the target
        p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.heads = {"medusa": heads}
    return model


def check_on(path: Path, config: str, backend: str = "inductor"):
    """The check of one spec on one configuration, on `backend`: on inductor, sampled. -> LosslessCheck"""
    if reads_hidden_through_trees(path):
        if config != CONFIGS[0]:
            pytest.skip("one configuration (a tiny transformer) for head trees")
        dec = decspec.compile(path, models={"target": tiny_transformer_with_heads()}, overrides=sampled(path), backend=backend)
        prompt = (1, 2)
    else:
        cfg, vocab = table_config(path, config)
        dec = decspec.compile(path, models=cfg.models(), overrides=sampled(path), vocab=vocab, backend=backend)
        prompt = cfg.prompt
    assert dec.backend.NAME == backend
    samples = min(SAMPLES, max(1000, 64 * len(target_distribution(dec, prompt, NEW_TOKENS))))
    seed = list(range(samples)) if config.endswith("row-seeds") else 0
    check = assert_lossless if dec.verdict.lossless else assert_matches_exact
    return check(dec, prompt=prompt, max_new_tokens=NEW_TOKENS, samples=samples, p_fail=P_FAIL, seed=seed)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_sampled_spec_on_inductor_follows_the_target(path, config):
    missing = not_emitted(path)
    if missing:
        pytest.skip(f"the inductor backend does not emit {', '.join(missing)} yet (codegen.NOT_YET)")
    check = check_on(path, config)
    assert check.method == "statistical" and check.p >= P_FAIL


def test_the_checked_specs_include_exit_policies_trees_grammars_and_a_lossy_one():
    """The selection is not empty by accident: the specs with exit policies, trees, grammars and the lossy one run."""
    checked = {p.stem for p in SPECS if not not_emitted(p)}
    assert {"speculative", "entropy_exit", "predicted_exit", "bandit", "specinfer_tree", "medusa_tree", "json_schema",
            "typical_acceptance"} <= checked
    assert not losslessness(load(ROOT / "specs/typical_acceptance.dec")).lossless


# --------------------------------------------------------------------------- the check has teeth


def with_verifier(name: str) -> str:
    return (ROOT / "specs" / "speculative.dec").read_text().replace("verify  = rejection", f"verify  = {name}")


def test_a_broken_verifier_fails_the_check_on_inductor():
    cfg, _ = table_config(ROOT / "specs/speculative.dec", "V4")
    with broken_verifier("accept_all"):
        with pytest.raises(AssertionError, match=r"on the inductor backend does not sample from the target: chi-square p="):
            assert_lossless(with_verifier("accept_all"), models=cfg.models(), k=2, backend="inductor", samples=SAMPLES)


def accept_every_draft(p, q, d, drafted, u):
    return drafted.clone()


def resample_from_p(p, q, n, drafted, residual=kernels.rejection_residual):
    return residual(p, torch.zeros_like(q), n, drafted)  # max(p - 0, 0) = p: the residual forgotten


def accept_every_child(p, q, tokens, u, *rest, rule=kernels.tree_rejection, **params):
    return rule(p, q, tokens, torch.zeros_like(u), *rest, **params)  # u = 0 < r/q: every child tried is accepted


def accept_every_typical_draft(p, d, drafted, epsilon, delta):
    return drafted.clone()


MUTANTS = [("speculative", "rejection_accept", accept_every_draft), ("speculative", "rejection_residual", resample_from_p),
           ("entropy_exit", "rejection_accept", accept_every_draft), ("entropy_exit", "rejection_residual", resample_from_p),
           ("specinfer_tree", "tree_rejection", accept_every_child), ("typical_acceptance", "typical_accept", accept_every_typical_draft)]


@pytest.mark.parametrize("spec, kernel, mutant", MUTANTS, ids=[f"{s}-{m.__name__}" for s, _, m in MUTANTS])
def test_a_mutated_inductor_kernel_fails_the_check_and_eager_does_not(monkeypatch, spec, kernel, mutant):
    """The generated round calls the kernels through the module (`K.rejection_accept`), the eager and exact backends the
    eager rules: a mutant there changes the inductor backend alone. entropy_exit: an exit policy stops the draft loop;
    typical_acceptance: lossy, checked against the exact backend's distribution."""
    path = ROOT / "specs" / f"{spec}.dec"
    monkeypatch.setattr(kernels, kernel, mutant)
    with pytest.raises(AssertionError, match="on the inductor backend does not sample from"):
        check_on(path, "V4", "inductor")
    check_on(path, "V4", "eager")  # eager's graph, untouched (lossless: its exact distribution; lossy: sampled)


def test_the_backend_option():
    cfg, _ = table_config(ROOT / "specs/speculative.dec", "V4")
    dec = decspec.compile(ROOT / "specs/speculative.dec", models=cfg.models(), k=2)
    with pytest.raises(ValueError, match="does not run the inductor backend's generated round"):
        assert_lossless(dec, method="exact", backend="inductor")
    assert assert_lossless(dec).method == "exact"  # eager: the exact backend computes what it samples
    assert assert_lossless(dec, backend="inductor", samples=1000).method == "statistical"  # rebuilt on inductor, sampled
    on_inductor = decspec.compile(ROOT / "specs/speculative.dec", models=cfg.models(), k=2, backend="inductor")
    assert assert_lossless(on_inductor, samples=1000).method == "statistical"  # auto: the generated round is sampled
