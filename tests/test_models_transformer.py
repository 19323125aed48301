"""The built-in Llama transformer: cache semantics, ragged rows, rollback, early exit, trees, HF names."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from decspec.stdlib.models import CacheFull, Model
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.transformer import KVCache, Transformer, TransformerConfig
from test_models_table import ancestors_mask, path_to  # tree helpers shared with the table and HF tests

CFG = TransformerConfig(
    vocab_size=37, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
)
MODEL = Transformer.random(CFG, seed=0)
V = CFG.vocab_size
ATOL = 1e-5
SETTINGS = settings(derandomize=True, max_examples=25, deadline=None)


def reference(model: Transformer, tokens: list[int], layers=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent full-sequence HF Llama forward (no cache, causal). -> logits [T, V], hidden [T, C]."""
    c, sd = model.config, model.state_dict()
    H, Hkv, D = c.num_attention_heads, c.kv_heads, c.head_size
    T = len(tokens)

    def norm(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps)

    def rot(x):  # x: [H, T, D]
        inv = 1.0 / c.rope_theta ** (torch.arange(0, D, 2).float() / D)
        f = torch.arange(T).float()[:, None] * inv
        cos, sin = torch.cat([f, f], -1).cos(), torch.cat([f, f], -1).sin()
        return x * cos + torch.cat([-x[..., D // 2:], x[..., : D // 2]], -1) * sin

    x = sd["model.embed_tokens.weight"][torch.tensor(tokens)]  # [T, C]
    for i in range(c.num_hidden_layers) if layers is None else layers:
        p = f"model.layers.{i}."
        h = norm(x, sd[p + "input_layernorm.weight"])
        q = rot((h @ sd[p + "self_attn.q_proj.weight"].T).view(T, H, D).transpose(0, 1))
        k = rot((h @ sd[p + "self_attn.k_proj.weight"].T).view(T, Hkv, D).transpose(0, 1))
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(T, Hkv, D).transpose(0, 1)
        k, v = k.repeat_interleave(H // Hkv, 0), v.repeat_interleave(H // Hkv, 0)
        att = (q @ k.transpose(-1, -2) / D**0.5).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        y = (att.softmax(-1) @ v).transpose(0, 1).reshape(T, H * D)
        x = x + y @ sd[p + "self_attn.o_proj.weight"].T
        h = norm(x, sd[p + "post_attention_layernorm.weight"])
        mlp = F.silu(h @ sd[p + "mlp.gate_proj.weight"].T) * (h @ sd[p + "mlp.up_proj.weight"].T)
        x = x + mlp @ sd[p + "mlp.down_proj.weight"].T
    hidden = norm(x, sd["model.norm.weight"])
    return hidden @ sd["lm_head.weight"].T, hidden


def run(tokens: list[int], **kw) -> torch.Tensor:
    """One row, one forward, fresh cache. -> logits [T, V]"""
    cache = MODEL.new_cache(1, 32)
    return MODEL.forward(torch.tensor([tokens]), cache, **kw).logits[0]


trees = st.integers(1, 7).flatmap(lambda T: st.tuples(*[st.integers(-1, i - 1) for i in range(T)]).map(list))
seqs = st.lists(st.integers(0, V - 1), min_size=1, max_size=12)


def test_state_dict_keys_match_hf_llama():
    for tied in (False, True):
        cfg = TransformerConfig(vocab_size=11, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                num_attention_heads=2, tie_word_embeddings=tied)
        model = Transformer.random(cfg, seed=1)
        expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
        for i in range(2):
            expected |= {f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"}
            expected |= {f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
            expected |= {f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.post_attention_layernorm.weight"}
        assert set(model.state_dict()) == expected
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert MODEL.state_dict()["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 8, 32)  # GQA: 2 kv heads


def test_protocol_and_determinism():
    assert isinstance(MODEL, Model)
    assert (MODEL.vocab_size, MODEL.num_layers, MODEL.max_positions, MODEL.eos_token_id) == (37, 3, 64, None)
    again, other = Transformer.random(CFG, seed=0), Transformer.random(CFG, seed=1)
    sd, sd2, sd3 = MODEL.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert not torch.equal(sd["lm_head.weight"], sd3["lm_head.weight"])
    assert abs(sd["model.embed_tokens.weight"].std().item() - 0.02) < 0.003
    assert not any(p.requires_grad for p in MODEL.parameters())


@SETTINGS
@given(seqs)
def test_full_forward_matches_reference(tokens):
    logits, hidden = reference(MODEL, tokens)
    out = MODEL.forward(torch.tensor([tokens]), MODEL.new_cache(1, 16))
    assert out.logits.dtype == torch.float32 and out.logits.shape == (1, len(tokens), V)
    torch.testing.assert_close(out.logits[0], logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.hidden[0], hidden, atol=ATOL, rtol=0)


@SETTINGS
@given(seqs, st.lists(st.integers(1, 4), min_size=12, max_size=12))
def test_incremental_equals_full(tokens, chunks):
    full = run(tokens)
    for sizes in ([1] * len(tokens), chunks):  # token by token, then in chunks
        cache, got, i = MODEL.new_cache(1, 16), [], 0
        for n in sizes:
            if i >= len(tokens):
                break
            got.append(MODEL.forward(torch.tensor([tokens[i:i + n]]), cache).logits[0])
            i += n
        torch.testing.assert_close(torch.cat(got), full, atol=ATOL, rtol=0)
        assert cache.length.tolist() == [len(tokens)]
        assert cache.tokens[0, : len(tokens)].tolist() == tokens


@SETTINGS
@given(st.data())
def test_ragged_rows_equal_rows_alone(data):
    B = 3
    prefix = [data.draw(st.lists(st.integers(0, V - 1), max_size=6)) for _ in range(B)]
    T = data.draw(st.integers(1, 4))
    block = [data.draw(st.lists(st.integers(0, V - 1), min_size=T, max_size=T)) for _ in range(B)]
    n_valid = [data.draw(st.integers(0, T)) for _ in range(B)]
    nxt = data.draw(st.lists(st.integers(0, V - 1), min_size=B, max_size=B))
    pad = data.draw(st.integers(0, V - 1))
    cache = MODEL.new_cache(B, 16)
    P = max(len(p) for p in prefix)
    if P:  # rows shorter than P are padded on the right, not counted
        MODEL.forward(torch.tensor([p + [pad] * (P - len(p)) for p in prefix]), cache,
                      n_valid=torch.tensor([len(p) for p in prefix]))
    assert cache.length.tolist() == [len(p) for p in prefix]
    out = MODEL.forward(torch.tensor(block), cache, n_valid=torch.tensor(n_valid)).logits
    last = MODEL.forward(torch.tensor(nxt)[:, None], cache).logits
    for b in range(B):
        seq = prefix[b] + block[b][: n_valid[b]] + [nxt[b]]
        alone = run(seq)
        k = len(prefix[b])
        torch.testing.assert_close(out[b, : n_valid[b]], alone[k:k + n_valid[b]], atol=ATOL, rtol=0)
        torch.testing.assert_close(last[b, 0], alone[-1], atol=ATOL, rtol=0)
        torch.testing.assert_close(alone, reference(MODEL, seq)[0], atol=ATOL, rtol=0)


def test_padding_beyond_n_valid_is_invisible():
    results = []
    for pad in ([0, 0, 0], [5, 17, 36]):
        cache = MODEL.new_cache(1, 16)
        MODEL.forward(torch.tensor([[3, 9] + pad]), cache, n_valid=torch.tensor([2]))
        results.append(MODEL.forward(torch.tensor([[4, 8]]), cache).logits[0])
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)
    torch.testing.assert_close(results[0], run([3, 9, 4, 8])[2:], atol=ATOL, rtol=0)


@SETTINGS
@given(st.data())
def test_rollback_then_refeed_equals_fresh(data):
    B = 2
    first = [data.draw(st.lists(st.integers(0, V - 1), min_size=8, max_size=8)) for _ in range(B)]
    keep = [data.draw(st.integers(0, 8)) for _ in range(B)]
    second = [data.draw(st.lists(st.integers(0, V - 1), min_size=3, max_size=3)) for _ in range(B)]
    cache = MODEL.new_cache(B, 12)
    MODEL.forward(torch.tensor(first), cache)
    cache.rollback(torch.tensor(keep))
    assert cache.length.tolist() == keep
    out = MODEL.forward(torch.tensor(second), cache).logits
    for b in range(B):
        fresh = run(first[b][: keep[b]] + second[b])
        torch.testing.assert_close(out[b], fresh[keep[b]:], atol=ATOL, rtol=0)


def test_rollback_is_in_place_and_never_grows():
    cache = MODEL.new_cache(2, 8)
    length = cache.length
    MODEL.forward(torch.tensor([[1, 2, 3], [4, 5, 6]]), cache)
    cache.rollback(torch.tensor([1, 5]))
    assert cache.length is length and cache.length.tolist() == [1, 3]


@pytest.mark.parametrize("L", [0, 1, 2, 3])
def test_exit_layer_equals_first_layers_then_head(L):
    tokens = [5, 1, 30, 7, 7, 2]
    cache = MODEL.new_cache(1, 8)
    out = MODEL.forward(torch.tensor([tokens]), cache, exit_layer=L)
    logits, hidden = reference(MODEL, tokens, layers=range(L))
    torch.testing.assert_close(out.logits[0], logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.hidden[0], hidden, atol=ATOL, rtol=0)
    assert all(cache.k[i].abs().sum() > 0 for i in range(L))  # only the layers run are written
    assert all(cache.k[i].abs().sum() == 0 and cache.v[i].abs().sum() == 0 for i in range(L, 3))
    if L == 3:
        full = MODEL.forward(torch.tensor([tokens]), MODEL.new_cache(1, 8)).logits[0]
        torch.testing.assert_close(out.logits[0], full, atol=0, rtol=0)


def test_exit_layer_decodes_incrementally():
    tokens = [5, 1, 30, 7, 7, 2]
    cache = MODEL.new_cache(1, 8)
    got = torch.cat([MODEL.forward(torch.tensor([[t]]), cache, exit_layer=2).logits[0] for t in tokens])
    torch.testing.assert_close(got, reference(MODEL, tokens, layers=range(2))[0], atol=ATOL, rtol=0)


def test_skip_layers():
    tokens = [4, 4, 12, 0, 36]
    cache = MODEL.new_cache(1, 8)
    out = MODEL.forward(torch.tensor([tokens]), cache, skip_layers=(1,))
    torch.testing.assert_close(out.logits[0], reference(MODEL, tokens, layers=[0, 2])[0], atol=ATOL, rtol=0)
    assert cache.k[1].abs().sum() == 0
    both = MODEL.forward(torch.tensor([tokens]), MODEL.new_cache(1, 8), exit_layer=2, skip_layers=(0,)).logits[0]
    torch.testing.assert_close(both, reference(MODEL, tokens, layers=[1])[0], atol=ATOL, rtol=0)
    with pytest.raises(ValueError):
        MODEL.forward(torch.tensor([tokens]), MODEL.new_cache(1, 8), skip_layers=(3,))
    with pytest.raises(ValueError):
        MODEL.forward(torch.tensor([tokens]), MODEL.new_cache(1, 8), exit_layer=4)


def test_chain_tree_mask_equals_causal():
    prefix, block = torch.tensor([[3, 1, 4], [1, 5, 9]]), torch.tensor([[2, 6, 5, 3], [5, 8, 9, 7]])
    outs = []
    for tree in (None, torch.ones(4, 4, dtype=torch.bool).tril().expand(2, 4, 4)):
        cache = MODEL.new_cache(2, 8)
        MODEL.forward(prefix, cache, n_valid=torch.tensor([3, 2]))
        outs.append(MODEL.forward(block, cache, tree_mask=tree).logits)
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=0)


@SETTINGS
@given(st.data())
def test_tree_equals_each_branch_alone(data):
    B = 2
    parents = [data.draw(trees) for _ in range(B)]
    T = max(len(p) for p in parents)
    parents = [p + [-1] * (T - len(p)) for p in parents]  # extra roots: harmless extra nodes
    prefix = [data.draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=5)) for _ in range(B)]
    nodes = [data.draw(st.lists(st.integers(0, V - 1), min_size=T, max_size=T)) for _ in range(B)]
    cache = MODEL.new_cache(B, 16)
    P = max(len(p) for p in prefix)
    MODEL.forward(torch.tensor([p + [0] * (P - len(p)) for p in prefix]), cache,
                  n_valid=torch.tensor([len(p) for p in prefix]))
    start = cache.length.clone()
    mask = torch.stack([ancestors_mask(p) for p in parents])
    out = MODEL.forward(torch.tensor(nodes), cache, tree_mask=mask).logits
    for b in range(B):
        for i in range(T):
            seq = prefix[b] + [nodes[b][j] for j in path_to(parents[b], i)]
            torch.testing.assert_close(out[b, i], run(seq)[-1], atol=ATOL, rtol=0)
    # commit one root-to-leaf path per row; decoding then continues as if the path had been fed alone
    leaf = [data.draw(st.integers(0, T - 1)) for _ in range(B)]
    paths = [path_to(parents[b], leaf[b]) for b in range(B)]
    n = torch.tensor([len(p) for p in paths])
    cache.commit_path(start, torch.tensor([p + [0] * (T - len(p)) for p in paths]), n)
    assert cache.length.tolist() == (start + n).tolist()
    nxt = MODEL.forward(torch.tensor([[7], [11]]), cache).logits
    for b in range(B):
        seq = prefix[b] + [nodes[b][j] for j in paths[b]]
        assert cache.tokens[b, : len(seq)].tolist() == seq
        torch.testing.assert_close(nxt[b, 0], run(seq + [[7, 11][b]])[-1], atol=ATOL, rtol=0)


def test_explicit_positions():
    tokens = torch.tensor([[3, 1, 4, 1]])
    default = MODEL.forward(tokens, MODEL.new_cache(1, 8)).logits
    same = MODEL.forward(tokens, MODEL.new_cache(1, 8), positions=torch.arange(4)[None]).logits
    torch.testing.assert_close(same, default, atol=0, rtol=0)
    shifted = MODEL.forward(tokens, MODEL.new_cache(1, 8), positions=torch.arange(4)[None] + 5).logits
    torch.testing.assert_close(shifted, default, atol=ATOL, rtol=0)  # RoPE is relative: a common shift is invisible
    gap = MODEL.forward(tokens, MODEL.new_cache(1, 8), positions=torch.tensor([[0, 1, 2, 9]])).logits
    torch.testing.assert_close(gap[:, :3], default[:, :3], atol=0, rtol=0)
    assert not torch.allclose(gap[:, 3], default[:, 3], atol=1e-4)


def test_cache_full():
    cache = MODEL.new_cache(2, 8)
    MODEL.forward(torch.zeros(2, 6, dtype=torch.long), cache, n_valid=torch.tensor([6, 2]))
    with pytest.raises(CacheFull):
        MODEL.forward(torch.zeros(2, 3, dtype=torch.long), cache)
    assert cache.length.tolist() == [6, 2]  # nothing advanced
    MODEL.forward(torch.zeros(2, 2, dtype=torch.long), cache)  # exactly fills row 0
    assert cache.length.tolist() == [8, 4]


def test_kv_cache_shape_and_load_state_dict():
    cache = MODEL.new_cache(3, 10)
    assert isinstance(cache, KVCache) and len(cache.k) == 3 and cache.k[0].shape == (3, 2, 10, 8)
    fresh = Transformer(CFG)
    fresh.load_state_dict(MODEL.state_dict())
    tokens = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(fresh.forward(tokens, fresh.new_cache(1, 4)).logits, run([1, 2, 3])[None], atol=ATOL, rtol=0)
    wide = Transformer.random(CFG, seed=0, dtype=torch.float64)
    out = wide.forward(tokens, wide.new_cache(1, 4))
    assert out.logits.dtype == torch.float32 and wide.new_cache(1, 4).k[0].dtype == torch.float64
    torch.testing.assert_close(out.logits, run([1, 2, 3])[None], atol=ATOL, rtol=0)


def test_config_from_hf_dict():
    d = {"architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 1, "eos_token_id": [2, 3], "torch_dtype": "float32"}
    cfg = TransformerConfig.from_dict(d)
    assert (cfg.vocab_size, cfg.kv_heads, cfg.head_size, cfg.eos_token_id) == (100, 1, 16, 2)
    with pytest.raises(ValueError):
        TransformerConfig.from_dict({**d, "rope_scaling": {"rope_type": "llama3"}})
    with pytest.raises(ValueError):
        TransformerConfig(num_attention_heads=4, num_key_value_heads=3)


def test_random_models():
    models = random_models(seed=0)
    target, draft = models["target"], models["draft"]
    assert target.vocab_size == draft.vocab_size == 512
    assert target.eos_token_id is None and draft.eos_token_id is None
    assert (target.num_layers, draft.num_layers) == (4, 1)
    assert isinstance(target, Model) and isinstance(draft, Model)
    logits = target.forward(torch.tensor([[1, 2, 3]]), target.new_cache(1, 8)).logits
    assert logits.shape == (1, 3, 512) and torch.isfinite(logits).all()


def test_keep_computes_only_the_last_logits():
    tokens = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(3))
    full = MODEL.forward(tokens, MODEL.new_cache(2, 16)).logits
    cache = MODEL.new_cache(2, 16)
    kept = MODEL.forward(tokens, cache, keep=2)
    assert kept.logits.shape == (2, 2, V) and kept.hidden.shape[1] == 7
    assert torch.allclose(kept.logits, full[:, -2:], atol=ATOL)
    assert torch.equal(cache.length, torch.tensor([7, 7]))  # the cache is fed as without keep


def test_prefix_cache_reads_the_same_logits_with_keep():
    from decspec.backends.prefix import PrefixCache

    ctx = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(4))  # static capacity 20
    length = torch.tensor([12, 5])  # ragged rows: the kept window must cover the shorter row's last position
    with_keep, without = PrefixCache(MODEL, 2, 32), PrefixCache(MODEL, 2, 32)
    without.model = type("NoKeep", (), {"forward": MODEL.forward, "logits_keep": False})()
    assert torch.allclose(with_keep.logits(ctx, length), without.logits(ctx, length), atol=ATOL)
    ext = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(with_keep.logits(ctx, length, ext, 3), without.logits(ctx, length, ext, 3), atol=ATOL)


# Prepacked weights (transformer.prepacked_linear): steps of several rows multiply by a oneDNN-packed copy.
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")


@needs_onednn
@SETTINGS
@given(st.integers(1, 70), st.integers(1, 40), st.integers(1, 9), st.integers(1, 3), st.booleans())
def test_prepacked_linear_equals_f_linear(n_in, n_out, rows, lead, bias):
    from decspec.stdlib.models.transformer import Linear, prepacked_linear

    layer = Linear(n_in, n_out, torch.float32, "cpu", bias=bias)
    gen = torch.Generator().manual_seed(n_in * 100 + n_out)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_in, n_out, generator=gen).t())  # column-major, as the model stores it
        if bias:
            layer.bias.copy_(torch.randn(n_out, generator=gen))
    x = torch.randn(lead, rows, n_in, generator=gen)
    with torch.no_grad():
        y = prepacked_linear(layer, x)
        assert (y is None) == (lead * rows == 1)  # one row: the plain weight
        assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_prepacked_copy_follows_weight_writes_and_stays_out_of_gradients():
    from decspec.stdlib.models.transformer import Linear

    layer = Linear(8, 5, torch.float32, "cpu")
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.weight.fill_(1.0)
        assert torch.allclose(layer(x), x.sum(-1, keepdim=True).expand(4, 5), atol=1e-5)
        assert "_prepacked" in layer.__dict__ and "_prepacked" not in layer.state_dict()
        layer.weight.mul_(2.0)  # an in-place write: the packed copy is remade
        assert torch.allclose(layer(x), 2 * x.sum(-1, keepdim=True).expand(4, 5), atol=1e-5)
        layer.load_state_dict({"weight": torch.eye(5, 8)})
        assert torch.allclose(layer(x), x[:, :5], atol=1e-6)
    layer.weight.requires_grad_(True)  # training: the plain weight, so gradients flow
    layer(x).sum().backward()
    assert torch.allclose(layer.weight.grad, x.sum(0).expand(5, 8))


def test_prepack_can_be_switched_off(monkeypatch):
    from decspec.stdlib.models import transformer

    monkeypatch.setattr(transformer, "PREPACK", False)
    layer = transformer.Linear(8, 5, torch.float32, "cpu")
    with torch.no_grad():
        layer.weight.fill_(0.5)
        assert transformer.prepacked_linear(layer, torch.ones(3, 8)) is None
        assert torch.equal(layer(torch.ones(3, 8)), torch.full((3, 5), 4.0))
    assert "_prepacked" not in layer.__dict__


@needs_onednn
@pytest.mark.parametrize("dtype, rows, packed", [(torch.bfloat16, 1, True), (torch.bfloat16, 3, True), (torch.float16, 3, False)])
def test_prepacked_linear_dtypes(dtype, rows, packed):
    from decspec.stdlib.models.transformer import Linear, prepacked_linear

    layer = Linear(24, 16, dtype, "cpu")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 24, generator=gen).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(16, 24, generator=gen))
        y = prepacked_linear(layer, x)
        from decspec.stdlib.models.transformer import UNPACKABLE

        assert (y is not None) == (packed and dtype not in UNPACKABLE)  # a CPU without bf16 oneDNN kernels: plain F.linear
        assert torch.allclose(layer(x).float(), F.linear(x.float(), layer.weight.float()), atol=0.1, rtol=0.02)


@needs_onednn
def test_prepacked_copies_stay_within_the_byte_budget(monkeypatch):
    import gc

    from decspec.stdlib.models import transformer

    gc.collect()
    base = transformer.PackBudget.held
    monkeypatch.setattr(transformer, "PREPACK_BYTES", base + 3 * 8 * 5 * 4)  # room for three 8x5 float32 copies
    layers = [transformer.Linear(8, 5, torch.float32, "cpu") for _ in range(4)]
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer in layers:
            layer.weight.fill_(0.25)
            assert torch.allclose(layer(x), F.linear(x, layer.weight), atol=1e-6)  # packed or not, the same result
        assert ["_prepacked" in layer.__dict__ for layer in layers] == [True, True, True, False]
        layers[0].weight.add_(1.0)  # a repack gives the old copy's bytes back first
        assert torch.allclose(layers[0](x), F.linear(x, layers[0].weight), atol=1e-5)
        assert transformer.PackBudget.held == base + 3 * 160
        del layers[1]
        gc.collect()  # a collected layer gives its bytes back: the fourth now gets a copy
        assert transformer.PackBudget.held == base + 2 * 160
        layers[-1](x)
        assert "_prepacked" in layers[-1].__dict__ and transformer.PackBudget.held == base + 3 * 160


@needs_onednn
def test_threads_meeting_a_layer_s_first_multi_row_step_make_one_copy():
    import threading

    from decspec.stdlib.models import transformer

    layer = transformer.Linear(64, 48, torch.float32, "cpu")
    with torch.no_grad():
        layer.weight.copy_(torch.randn(48, 64, generator=torch.Generator().manual_seed(2)))
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    base, start, outs = transformer.PackBudget.held, threading.Barrier(8), []

    def call():
        start.wait()
        with torch.no_grad():
            outs.append(layer(x))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert transformer.PackBudget.held == base + 48 * 64 * 4  # counted once, however many threads packed together
    assert all(torch.allclose(y, F.linear(x, layer.weight), atol=1e-5) for y in outs) and len(outs) == 8
