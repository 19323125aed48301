"""The masked-diffusion model (stdlib/models/diffusion.py) against the DiffusionLM protocol: bidirectional attention,
left-padding invariance, the Fast-dLLM K/V cache (exact when fresh, an approximation when stale), input checks,
saving/loading, the MDLM training step, and the shipped weights against a unigram baseline."""
from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest
import torch

from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models import diffusion as diffusion_module
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.diffusion import DiffusionTransformer, reference_diffusion
from decspec.stdlib.models.diffusion_protocol import is_diffusion
from decspec.stdlib.models.train_diffusion import corrupt, nelbo_sum, train

V = 40
ROOT = Path(__file__).parents[1]


def tiny(layers: int = 2, seed: int = 0) -> DiffusionTransformer:
    return DiffusionTransformer.random(seed=seed, vocab=V, layers=layers, hidden=32, max_length=24)


def sequence(seed: int, batch: int = 2, length: int = 12, masked: float = 0.4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (batch, length), generator=gen)
    return torch.where(torch.rand(batch, length, generator=gen) < masked, V, tokens)


def test_shapes_dtypes_and_the_protocol():
    model = tiny()
    tokens = sequence(0)
    assert is_diffusion(model) and not is_diffusion(random_models()["target"])
    assert (model.vocab_size, model.mask_id, model.max_length) == (V, V, 24)
    out = model.denoise(tokens)
    assert out.shape == (2, 12, V) and out.dtype == torch.float32
    cache = model.prefill(tokens)
    assert len(cache.k) == len(cache.v) == 2 and cache.k[0].shape == (2, 2, 12, 8)  # [B, Hkv, L, D]
    assert model.denoise(tokens, cache=cache, start=3, end=7).shape == (2, 4, V)
    assert model.denoise(tokens, start=3, end=7).shape == (2, 4, V)


def test_a_later_token_changes_an_earlier_masked_prediction():
    model = tiny()
    tokens = sequence(1)
    tokens[:, 2] = model.mask_id
    changed = tokens.clone()
    changed[:, 9] = (tokens[:, 9] + 1) % V  # a real token seven positions later
    before, after = model.denoise(tokens)[:, 2], model.denoise(changed)[:, 2]
    assert (before - after).abs().max() > 1e-4  # bidirectional: position 2 reads position 9


def test_a_left_padded_row_predicts_as_the_row_alone():
    model = tiny()
    short, long = sequence(2, batch=1, length=7), sequence(3, batch=1, length=12)
    pad = 5
    batch = torch.cat([torch.cat([torch.full((1, pad), 3), short], 1), long])  # [2, 12]: row 0 padded on the left
    attend = torch.ones(2, 12, dtype=torch.bool)
    attend[0, :pad] = False
    out = model.denoise(batch, attend=attend)
    torch.testing.assert_close(out[0, pad:], model.denoise(short)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], model.denoise(long)[0], atol=1e-5, rtol=1e-5)
    different_padding = batch.clone()
    different_padding[0, :pad] = 17  # what padded positions hold does not matter
    torch.testing.assert_close(model.denoise(different_padding, attend=attend)[0, pad:], out[0, pad:])


@pytest.mark.parametrize("start, end", [(0, 12), (4, 12), (3, 8), (0, 5), (11, 12)])
def test_a_fresh_cache_gives_the_uncached_logits(start, end):
    model = tiny()
    tokens = sequence(4)
    attend = torch.ones(2, 12, dtype=torch.bool)
    attend[1, :3] = False  # a padded row too
    exact = model.denoise(tokens, attend=attend)
    cache = model.prefill(tokens, attend=attend)
    torch.testing.assert_close(model.denoise(tokens, cache=cache, start=start, end=end), exact[:, start:end], atol=1e-5, rtol=1e-5)


def test_a_stale_cache_is_an_approximation_and_refreshing_it_is_exact():
    tokens = sequence(5)
    new = tokens.clone()
    new[:, 4:8] = torch.arange(4) + 1  # the decoder unmasked the window [4, 8)
    for layers in (1, 2):
        model = tiny(layers)
        stale = model.denoise(new, cache=model.prefill(tokens), start=4, end=8)
        exact = model.denoise(new)[:, 4:8]
        torch.testing.assert_close(model.denoise(new, cache=model.prefill(new), start=4, end=8), exact, atol=1e-5, rtol=1e-5)
        if layers == 1:  # one layer: the cached K/V outside the window depend on their own tokens only, so nothing is stale
            torch.testing.assert_close(stale, exact, atol=1e-5, rtol=1e-5)
        else:  # layer 2's K/V outside the window attended the old window tokens
            assert (stale - exact).abs().max() > 1e-5


@pytest.mark.parametrize("tokens, match", [
    (torch.tensor([[1, 2, V + 1]]), "outside the model's vocabulary"),
    (torch.tensor([[1, -1, 3]]), "outside the model's vocabulary"),
    (torch.zeros(1, 25, dtype=torch.long), "max_length 24"),
    (torch.zeros(1, 0, dtype=torch.long), "0 positions"),
    (torch.zeros(3, dtype=torch.long), r"\[batch, length\]"),
    (torch.zeros(1, 3), r"\[batch, length\]"),
])
def test_bad_tokens_are_refused_with_the_fix(tokens, match):
    with pytest.raises(DecError, match=match):
        tiny().denoise(tokens)


def test_bad_windows_attend_masks_and_caches_are_refused():
    model = tiny()
    tokens = sequence(6)
    with pytest.raises(DecError, match="not inside the sequence"):
        model.denoise(tokens, start=5, end=13)
    with pytest.raises(DecError, match="not inside the sequence"):
        model.denoise(tokens, cache=model.prefill(tokens), start=6, end=6)
    with pytest.raises(DecError, match="one flag per position"):
        model.denoise(tokens, attend=torch.ones(2, 11, dtype=torch.bool))
    with pytest.raises(DecError, match="prefill again"):
        model.denoise(tokens, cache=model.prefill(tokens[:, :10]), start=2, end=4)


def test_random_models_are_deterministic_and_save_load_round_trips(tmp_path):
    a, b, c = tiny(seed=3), tiny(seed=3), tiny(seed=4)
    tokens = sequence(7)
    torch.testing.assert_close(a.denoise(tokens), b.denoise(tokens), atol=0, rtol=0)
    assert not torch.equal(a.denoise(tokens), c.denoise(tokens))
    a.save(tmp_path)
    loaded = DiffusionTransformer.load(tmp_path)
    for p in a.parameters():  # what ships is float16
        p.copy_(p.half().float())
    torch.testing.assert_close(loaded.denoise(tokens), a.denoise(tokens), atol=1e-6, rtol=1e-6)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(DecError, match="not a masked-diffusion model"):
        DiffusionTransformer.load(tmp_path)


def test_missing_reference_weights_name_the_training_command(tmp_path, monkeypatch):
    monkeypatch.setattr(diffusion_module, "REFERENCE", tmp_path)
    with pytest.raises(DecError, match="train_diffusion --out"):
        reference_diffusion.__wrapped__()


def test_corruption_masks_only_scored_positions_with_probability_t():
    clean = torch.randint(0, V, (400, 50), generator=torch.Generator().manual_seed(0))
    noisy, masked, t, scored = corrupt(clean, V, torch.Generator().manual_seed(1), prompt_fraction=0.5)
    assert torch.equal(noisy == V, masked) and not (masked & ~scored).any()
    assert torch.equal(noisy[~masked], clean[~masked])
    assert ((t > 0) & (t <= 1)).all()
    prompted = ~scored[:, 0]
    assert 0.35 < prompted.float().mean() < 0.65  # about half the rows keep a clean prefix
    rate = masked.sum(1) / scored.sum(1)  # each row's masking rate tracks its t
    assert (rate - t).abs().mean() < 0.1


def test_training_is_deterministic_and_lowers_the_loss():
    stream = torch.arange(600) % 7  # a periodic stream: every masked token is predictable from its neighbours
    gen = torch.Generator().manual_seed(9)
    batch = torch.stack([stream[i : i + 24] for i in range(0, 64, 8)])
    noisy, masked, t, _ = corrupt(batch, V, gen)
    before = float(nelbo_sum(tiny(seed=1), noisy, batch, masked, t))
    models = [tiny(seed=1), tiny(seed=1)]
    for m in models:
        train(m, stream, steps=40, batch=8, lr=1e-2, seed=0, prompt_fraction=0.3, short_fraction=0.25, log=lambda _: None)
    assert all(torch.equal(p, q) for p, q in zip(models[0].parameters(), models[1].parameters()))
    assert not any(p.requires_grad for p in models[0].parameters())
    assert float(nelbo_sum(models[0], noisy, batch, masked, t)) < 0.75 * before


def test_the_shipped_files_are_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["decspec.stdlib.models"]
    folder = ROOT / "stdlib" / "models" / "reference" / "diffusion"
    shipped = sorted(p.relative_to(folder.parents[1]).as_posix() for p in folder.iterdir())
    assert {"reference/diffusion/model.safetensors", "reference/diffusion/config.json",
            "reference/diffusion/tokenizer.json"} <= set(shipped)
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in shipped), shipped
    assert sum(p.stat().st_size for p in folder.iterdir()) < 10 << 20


def test_the_shipped_model_predicts_held_out_masked_tokens_better_than_unigram():
    from decspec.stdlib.models.train import corpus_files

    model = reference_diffusion()
    assert (model.vocab_size, model.mask_id, model.eos_token_id) == (4096, 4096, 0)
    assert model.tokenizer is not None and model.tokenizer.vocab_size == 4096
    heldout = [f for f in corpus_files()[1] if f.name in ("bisect.py", "heapq.py")]
    ids = torch.tensor([i for f in heldout for i in model.tokenizer.encode(f.read_text())])
    data = ids[: 4 * 128].view(4, 128)
    noisy, masked, _, _ = corrupt(data, model.mask_id, torch.Generator().manual_seed(0), t=torch.full((4,), 0.3))
    pred = model.denoise(noisy).argmax(-1)
    accuracy = (pred == data)[masked].float().mean()
    best_constant = torch.bincount(data[masked]).max() / masked.sum()  # the best any unigram guess does on these positions
    assert accuracy > best_constant + 0.1, (float(accuracy), float(best_constant))
