"""EAGLE draft head: `eagle(target, max = k, window = W)` (Li et al. 2024).

The head reads the target's features of the last W context positions (kept from the previous
verification) with the tokens that followed them, then its own predicted features with the drafted
tokens; each draft is sampled from the target's LM head on the predicted feature, which the verifier
gets as q. Exactly lossless on table models (their EAGLE stand-in), statistically on a tiny
transformer with a random head, greedy = greedy decoding, inductor = eager, the shipped trained
head, training and loading, and the errors.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.prefix import PrefixCache
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.eagle import eagle_logits, feature_window
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.eagle import EagleHead
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.stdlib.models.transformer import Transformer, TransformerConfig
from decspec.testing import assert_greedy_equivalent, assert_lossless, exact_distribution, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "eagle.dec"


def with_eagle(model: Transformer, window: int = 6, seed: int = 0, scale: float = 0.3) -> Transformer:
    """A random (untrained) EAGLE head on a transformer."""
    C = model.config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    head = EagleHead(C, window=window, intermediate_size=2 * C).requires_grad_(False)
    for p in head.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * scale) if p.dim() > 1 else p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    model.heads = {**model.heads, "eagle": head}
    return model


def text(k: int = 2, stop: str = "", sampler: str = "temperature(1.0)", window: int = 4) -> str:
    return f"""decoder d() {{
    target  = model("target")
    sampler = {sampler}
    propose = eagle(target, max = {k}, window = {window})
{f"    stop    = {stop}" if stop else ""}
    verify  = rejection
}}
"""


# --------------------------------------------------------------------------- lossless, exactly


@pytest.mark.parametrize("order, prompt, temperature", [(0, [1], 1.0), (1, [0, 2], 0.7), (1, [3], 1.0), (2, [1, 0, 3], 0.8)])
def test_exactly_lossless_on_table_models(order, prompt, temperature):
    target = LayeredTableModel.random(4, order, seed=31 + order)
    dec = decspec.compile(SPEC, target=target, temperature=temperature, k=2)
    got = exact_distribution(dec, prompt, 3)
    assert tv_distance(got, target_distribution(dec, prompt, 3)) <= max(1e-12, got.error_bound)


def test_exactly_lossless_with_an_exit_policy_and_a_pipeline():
    target = LayeredTableModel.random(3, 1, seed=4, eos_token_id=2)
    source = text(k=3, stop="when draft.prob < 0.5", sampler="top_k(2) | temperature(0.9)", window=2)
    assert assert_lossless(source, models={"target": target}, prompt=[1], max_new_tokens=3, method="exact").method == "exact"


def test_statistically_lossless_on_a_tiny_transformer():
    config = TransformerConfig(vocab_size=5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    target = with_eagle(Transformer.random(config, 0))
    assert_lossless(text(), models={"target": target}, prompt=[1, 2], max_new_tokens=2, method="statistical", samples=3000)


# --------------------------------------------------------------------------- what the head reads


def test_model_features_are_the_kept_features_before_the_last_token():
    """After a verification call the window f[L-1-W .. L-2] is served without a forward, equal to a fresh forward's."""
    model = random_models()["target"]
    session = PrefixCache(model, 2, 64)
    tokens = torch.tensor([[3, 4, 5, 6, 7, 0, 0, 0], [8, 9, 0, 0, 0, 0, 0, 0]])  # [B, S]
    session.hidden(tokens, torch.tensor([5, 2]))
    session.logits(tokens, torch.tensor([5, 2]), torch.tensor([[1, 2], [3, 4]]), last=False)  # a verification call
    calls = session.calls
    tokens[0, 5], tokens[1, 2] = 1, 3  # commit one draft in each row: L = 6, 3
    length = torch.tensor([6, 3])
    f = feature_window(session.hiddens, length, 4)  # [B, 4, C]
    assert session.calls == calls
    for b, L in enumerate([6, 3]):
        fresh = model.forward(tokens[b : b + 1, : L - 1], model.new_cache(1, 16)).hidden[0]  # [L-1, C]
        n = min(4, L - 1)
        assert torch.allclose(f[b, 4 - n :], fresh[-n:], atol=1e-5)
        assert torch.equal(f[b, : 4 - n], torch.zeros(4 - n, f.shape[-1]))  # before the context: zeros


def test_the_first_draft_is_the_heads_prediction_from_the_real_features():
    """Draft 1's logits = lm_head(head(f, emb(next tokens))[-1]) over the context's last W positions, from a fresh forward."""
    target = with_eagle(random_models(seed=3)["target"], window=3)
    prompt = torch.tensor([[10, 11, 12, 13, 14]])
    feats = target.forward(prompt[:, :-1], target.new_cache(1, 16)).hidden  # f_0 .. f_3
    head = target.heads["eagle"]
    expected = target.lm_head(head(feats[:, -3:], target.model.embed_tokens(prompt[:, -3:]))[:, -1]).float()
    got = eagle_logits(target, feats[:, -3:], prompt, torch.tensor([5]), torch.zeros(1, 2, dtype=torch.long), 0)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-4)  # the runtime runs the last step alone: rounding differs


def test_later_drafts_read_the_drafted_tokens():
    for model in (LayeredTableModel.random(5, 1, seed=7), with_eagle(random_models(seed=4)["target"], window=3)):
        C = 1 if isinstance(model, LayeredTableModel) else model.config.hidden_size
        feats = torch.rand(1, 3, C) * (4 if C == 1 else 1)
        if C == 1:
            feats = feats.floor()
        ctx, length = torch.tensor([[1, 2, 3, 4]]), torch.tensor([4])
        a = eagle_logits(model, feats, ctx, length, torch.tensor([[0, 0]]), 1)
        b = eagle_logits(model, feats, ctx, length, torch.tensor([[2, 0]]), 1)
        assert not torch.allclose(a, b)  # step 2 depends on draft 1
        first = eagle_logits(model, feats, ctx, length, torch.tensor([[0, 0]]), 0)
        assert torch.allclose(first, eagle_logits(model, feats, ctx, length, torch.tensor([[2, 0]]), 0))  # step 1 does not
        stacked = eagle_logits(model, feats, ctx, length, torch.tensor([[2, 0]]), torch.tensor(1))  # a host loop's 0-d step
        assert torch.allclose(stacked, b, atol=1e-4)  # eagerly the chain is extended step by step: equal up to rounding


# --------------------------------------------------------------------------- greedy, and inductor = eager


def test_greedy_equivalence_on_a_random_transformer():
    target = with_eagle(random_models(seed=1)["target"])
    assert_greedy_equivalent(SPEC, models={"target": target}, prompts=[[1, 2, 3], [7], [4, 4, 4, 4, 4]], max_new_tokens=12, exact=False)


@pytest.mark.parametrize("schedule", ["unrolled", "host"])
def test_inductor_gives_the_eager_tokens(schedule):
    target = with_eagle(random_models(seed=2)["target"])
    prompts = [[5, 6, 7, 8], [9]]
    source = text(k=4, stop="when draft.prob < 0.002", sampler="greedy")
    out = {}
    for backend in ("eager", "inductor"):
        dec = decspec.compile(source, target=target, backend=backend)
        if backend == "inductor":
            dec.backend_options = {"schedule": schedule}
        res = dec.generate(prompts, max_new_tokens=10, seed=0)
        out[backend] = (res.tokens, res.stats.accepted)
    assert out["eager"] == out["inductor"]


def test_the_shipped_target_drafts_from_its_trained_eagle_head():
    from decspec.stdlib.models.pretrained import reference_models

    target = reference_models()["target"]
    assert isinstance(target.heads["eagle"], EagleHead)
    prompts = ["def add(a, b):\n", "import os\nimport "]
    eagle = decspec.compile(SPEC, target=target).generate(prompts, max_new_tokens=24, seed=0)
    greedy = decspec.compile(ROOT / "specs" / "autoregressive.dec", target=target, temperature=0.0).generate(prompts, max_new_tokens=24, seed=0)
    assert eagle.tokens == greedy.tokens  # T = 0: greedy decoding, token for token
    assert sum(map(sum, eagle.stats.accepted)) > 0  # the trained head proposes tokens the target keeps
    inductor = decspec.compile(SPEC, target=target, backend="inductor").generate(prompts[:1], max_new_tokens=16, seed=0)
    assert inductor.tokens == decspec.compile(SPEC, target=target).generate(prompts[:1], max_new_tokens=16, seed=0).tokens


# --------------------------------------------------------------------------- training and loading


def test_training_stage_saves_a_head_the_loader_reads(tmp_path):
    from decspec.stdlib.models import train
    from decspec.stdlib.models.pretrained import load_transformer

    config = TransformerConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                               tie_word_embeddings=True, eos_token_id=0)
    target = Transformer.random(config, 0).requires_grad_(False)
    stream = torch.arange(2000) % 17 * 3 % 64  # a periodic stream: predictable
    head = EagleHead(32, window=8, intermediate_size=64)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss = train.eagle_loss(target, head, train.windows(stream, 8, 34, gen), gen, seq_len=32)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])
    head.requires_grad_(False)
    report = train.evaluate_eagle(target, head, train.eval_windows(stream, 40, limit=4), depth=3, starts=4)
    assert len(report["heldout_loss_by_depth"]) == 3 and all(0 <= a <= 1 for a in report["heldout_top1_agreement_by_depth"])
    train.save_model(target, train.train_tokenizer(["abc"], vocab_size=64), tmp_path / "m")
    train.save_eagle(head, tmp_path / "m", {"steps": 30})
    loaded = load_transformer(tmp_path / "m")
    assert set(loaded.heads) == {"eagle"} and loaded.heads["eagle"].window == 8
    x = torch.randn(1, 5, 32)
    assert torch.allclose(loaded.heads["eagle"](x, x), head(x, x), atol=0.05)  # float16 on disk
    meta = json.loads((tmp_path / "m" / "eagle.json").read_text())
    (tmp_path / "m" / "eagle.json").write_text(json.dumps({**meta, "hidden_size": 16}))
    with pytest.raises(DecError, match="eagle head has hidden_size 16 but the model has 32"):
        load_transformer(tmp_path / "m")
    (tmp_path / "m" / "eagle.json").unlink()
    with pytest.raises(DecError, match="has eagle.safetensors but no eagle.json"):
        load_transformer(tmp_path / "m")


# --------------------------------------------------------------------------- errors


def test_a_model_without_an_eagle_head_says_how_to_train_one():
    with pytest.raises(DecError) as e:
        decspec.compile(SPEC, target=random_models()["target"])._bound_models()
    message = str(e.value)
    assert "model 'target' (Transformer) has no eagle head (it has: none)" in message
    assert "--only eagle" in message and "eagle.dec:12:15" in message


def test_mlir_exports_the_feature_window_with_the_round_only():
    """The kept features are an input and an output of the exported round (tests/test_backend_mlir.py); the verify part,
    which starts after the proposal, refuses naming the op and its line."""
    from decspec.backends.mlir.export import check_exportable

    graph = decspec.compile(SPEC, target=LayeredTableModel.random(4, 1, seed=0)).graph
    check_exportable(graph, "round")
    with pytest.raises(DecError, match=r"cannot export op 'model_features' \(spec line 12:15\) to MLIR as part 'verify'"):
        check_exportable(graph, "verify")


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6), window=st.integers(1, 6), steps=st.integers(1, 6), change=st.integers(0, 5))
def test_the_incremental_chain_equals_recomputing_it(seed, window, steps, change):
    """draft_feature (the window once, then one step per draft over kept keys and values) gives draft_features'
    features at every step, and a draft changed at step `change` recomputes the chain from there on."""
    from decspec.stdlib.models.heads import ChainMemo

    g = torch.Generator().manual_seed(seed)
    head = EagleHead(16, window=window, num_attention_heads=4, num_key_value_heads=2)
    embed = torch.nn.Embedding(50, 16)
    B = 2
    feats, toks = torch.randn(B, window, 16, generator=g), torch.randint(0, 50, (B, window), generator=g)
    valid = torch.rand(B, window, generator=g) > 0.3
    drafts = torch.randint(0, 50, (B, steps), generator=g)
    memo = ChainMemo()
    with torch.no_grad():
        expected = head.draft_features(feats, toks, valid, drafts, steps - 1, embed)
        got = torch.stack([head.draft_feature(feats, toks, valid, drafts, s, embed, memo) for s in range(steps)], 1)
        assert torch.allclose(got, expected, atol=1e-5)
        other = drafts.clone()
        other[:, min(change, steps - 1)] = (other[:, min(change, steps - 1)] + 1) % 50
        expected = head.draft_features(feats, toks, valid, other, steps - 1, embed)[:, -1]
        assert torch.allclose(head.draft_feature(feats, toks, valid, other, steps - 1, embed, memo), expected, atol=1e-5)
