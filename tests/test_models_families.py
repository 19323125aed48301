"""The built-in transformer on Llama-family checkpoints saved by transformers itself: Llama (plain, with
biases, llama3 / linear / dynamic RoPE scaling), Qwen2, Qwen3 and Mistral (sliding windows). Logits equal
transformers' on the same weights, for a whole sequence and through decspec's KV cache; what the model
cannot run exactly is refused by name."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from decspec.dsl.diagnostics import DecError  # noqa: E402
from decspec.stdlib.models.pretrained import load_model, load_transformer  # noqa: E402
from decspec.stdlib.models.transformer import Transformer, TransformerConfig  # noqa: E402
from decspec.stdlib.models.transformer_config import Unsupported  # noqa: E402

ATOL = 1e-4
V = 100
TINY = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, rms_norm_eps=1e-6)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}  # head_dim 16: wavelengths 6.3 .. 19 000, so all three llama3 bands occur

FAMILIES = {  # name -> (config class, model class, config overrides)
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama_bias": ("LlamaConfig", "LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True}),
    "llama3_rope": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": LLAMA3}),
    "linear_rope": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": {"rope_type": "linear", "factor": 4.0,
                                                                           "rope_theta": 500000.0}}),
    "dynamic_rope": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                                                            "rope_theta": 10000.0}}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),  # head_dim != hidden / heads
    "qwen3_bias": ("Qwen3Config", "Qwen3ForCausalLM", {"attention_bias": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    # sliding windows that cut attention within the 8 positions used here, implemented exactly
    "mistral_window": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 3}),
    "qwen2_window": ("Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": True, "sliding_window": 3,
                                                         "max_window_layers": 1}),  # layer 1 slides, layer 0 does not
}
MAX_DIFF: dict[str, float] = {}  # family -> largest |decspec - transformers| logit difference seen (for the record)


def hf_model(family: str, seed: int = 0):
    """A tiny random transformers model of the family, with random (nonzero) biases and norm weights."""
    config_cls, model_cls, kw = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**TINY, **kw})
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.5)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (transformers model, directory it was saved to), built on first use."""
    out: dict[str, tuple] = {}

    def get(family: str):
        if family not in out:
            hf = hf_model(family)
            path = tmp_path_factory.mktemp(family)
            hf.save_pretrained(path)  # safetensors (the only format transformers 5 writes)
            out[family] = hf, path
        return out[family]

    return get


TOKENS = torch.tensor([[5, 17, 3, 99, 42, 7, 0, 64], [1, 2, 3, 4, 5, 6, 7, 8]])  # [B=2, T=8]


def check(family: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    diff = (got - expected).abs().max().item()
    MAX_DIFF[family] = max(MAX_DIFF.get(family, 0.0), diff)
    assert diff <= ATOL, f"{family}: logits differ from transformers' by {diff:.2e}"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_equal_transformers(family, saved):
    """Full sequence, then prefill 5 + 3 single steps through the cache: both equal transformers' logits."""
    hf, path = saved(family)
    model = load_transformer(path)
    assert isinstance(model, Transformer) and model.config.model_type == hf.config.model_type
    assert isinstance(load_model(path), Transformer)  # load_model picks the built-in model for every family here
    assert set(model.state_dict()) == set(hf.state_dict())  # HF parameter names, biases and q/k norms included
    with torch.no_grad():
        expected = hf(TOKENS).logits.float()  # [B, T, V]
    check(family, model.forward(TOKENS, model.new_cache(2, 8)).logits, expected)
    cache = model.new_cache(2, 16)
    steps = [model.forward(TOKENS[:, :5], cache).logits]
    steps += [model.forward(TOKENS[:, t:t + 1], cache).logits for t in range(5, 8)]
    check(family, torch.cat(steps, 1), expected)
    assert cache.length.tolist() == [8, 8]


def test_config_fields_per_family(saved):
    fields = {
        "llama": dict(attention_bias=False, qkv_bias=False, mlp_bias=False, qk_norm=False, sliding_window=None),
        "llama_bias": dict(attention_bias=True, mlp_bias=True),
        "qwen2": dict(qkv_bias=True, attention_bias=False, sliding_window=None, tie_word_embeddings=True),
        "qwen3": dict(qk_norm=True, head_dim=32, attention_bias=False),
        "mistral_window": dict(sliding_window=3, layer_types=None),
        "qwen2_window": dict(sliding_window=3, layer_types=("full_attention", "sliding_attention")),
        "llama3_rope": dict(rope_type="llama3", rope_factor=8.0, rope_original_max_position_embeddings=32),
    }
    for family, want in fields.items():
        config = load_transformer(saved(family)[1]).config
        assert {k: getattr(config, k) for k in want} == want, family
    assert [load_transformer(saved("qwen2_window")[1]).config.window(i) for i in (0, 1)] == [None, 3]


def test_inv_freq_equals_transformers_rope_init():
    """inv_freq bit for bit as transformers computes it, for every supported type, old and new config formats."""
    scalings = [None, {"type": "linear", "factor": 2.0}, {"rope_type": "dynamic", "factor": 4.0},
                {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 32}]
    for scaling in scalings:
        d = {**TINY, "model_type": "llama", "rope_theta": 5000.0, "rope_scaling": scaling}
        config = transformers.LlamaConfig(**d)
        expected = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config).inv_freq
        got = TransformerConfig.from_dict(d).inv_freq()
        assert torch.equal(got, expected), scaling
        assert torch.equal(TransformerConfig.from_dict(config.to_dict()).inv_freq(), expected), scaling


def test_enable_gqa_equals_repeated_kv():
    """Attention reads the cache through enable_gqa; the result equals repeating each KV head (HF repeat_kv)."""
    q, k, v = torch.randn(2, 4, 3, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    mask = torch.rand(2, 1, 3, 9) > 0.3
    mask[..., 0] = True
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    k2, v2 = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)  # [B, H, S, D]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k2, v2, attn_mask=mask)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_sliding_window_with_a_tree_and_ragged_rows(saved):
    """With a window that cuts attention, a tree branch and a ragged batch give the same logits as
    decoding each row's path alone (the window counts positions, not cache slots)."""
    hf, path = saved("mistral_window")
    model = load_transformer(path)
    with torch.no_grad():
        def full(seq):
            return hf(torch.tensor([seq])).logits[0].float()
        cache = model.new_cache(2, 16)
        model.forward(torch.tensor([[5, 17, 3, 99, 42], [1, 2, 3, 0, 0]]), cache, n_valid=torch.tensor([5, 3]))
        # block: node 0 (root), nodes 1 and 2 its children, node 3 a child of node 2
        tree = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
        out = model.forward(torch.tensor([[7, 8, 9, 10], [11, 12, 13, 14]]), cache, tree_mask=tree.expand(2, 4, 4)).logits
        for b, prefix in enumerate(([5, 17, 3, 99, 42], [1, 2, 3])):
            root, a, c, d = [[7, 8, 9, 10], [11, 12, 13, 14]][b]
            check("mistral_window", out[b, [0, 1]], full(prefix + [root, a])[-2:])
            check("mistral_window", out[b, [2, 3]], full(prefix + [root, c, d])[-2:])


def variant(path, out, **changes):
    """A copy of the checkpoint at `path` in `out`, with config.json fields changed."""
    config = {**json.loads((path / "config.json").read_text()), **changes}
    (out / "config.json").write_text(json.dumps(config))
    shutil.copy(path / "model.safetensors", out / "model.safetensors")
    return out


def test_rejected_rope_type(tmp_path, saved):
    path = variant(saved("llama")[1], tmp_path, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0})
    supported = r"\(supported: default, linear, llama3, dynamic\)"
    with pytest.raises(DecError, match=r"config\.json: rope type 'yarn' is not supported " + supported):
        load_transformer(path)
    with pytest.raises(Unsupported, match="yarn"):
        TransformerConfig(rope_type="yarn")
    with pytest.raises(ValueError, match="needs 'factor'"):
        TransformerConfig.from_dict({"rope_scaling": {"rope_type": "linear"}})
    from decspec.stdlib.models.hf import HFModel

    assert isinstance(load_model(path), HFModel)  # transformers runs what the built-in model does not


def test_refusals_name_the_field(tmp_path, saved):
    with pytest.raises(DecError, match="model_type 'gpt2' is not one the built-in model runs"):
        load_transformer(variant(saved("llama")[1], tmp_path, model_type="gpt2"))
    with pytest.raises(Unsupported, match="hidden_act='gelu'"):
        TransformerConfig.from_dict({**TINY, "hidden_act": "gelu"})
    with pytest.raises(Unsupported, match="partial_rotary_factor"):
        TransformerConfig.from_dict({**TINY, "partial_rotary_factor": 0.5})
    dynamic = load_transformer(saved("dynamic_rope")[1])  # exact up to max_position_embeddings = 64, refused beyond
    assert dynamic.new_cache(1, 64).capacity == 64
    with pytest.raises(ValueError, match="rope type 'dynamic'.*max_position_embeddings=64"):
        dynamic.new_cache(1, 65)


def test_existing_llama_defaults_unchanged():
    """Plain Llama configs keep their fields and state-dict keys (the shipped checkpoints load unchanged)."""
    config = TransformerConfig.from_dict({"vocab_size": 10, "hidden_size": 16, "num_attention_heads": 2, "eos_token_id": [3, 4]})
    flags = (config.attention_bias, config.qkv_bias, config.mlp_bias, config.qk_norm)
    assert config.model_type == "llama" and flags == (False, False, False, False)
    assert (config.eos_token_id, config.eos_token_ids, config.rope_type, config.sliding_window) == (3, (3, 4), "default", None)
    keys = Transformer(TransformerConfig(num_hidden_layers=1)).state_dict().keys()
    assert not any(k.endswith(".bias") or "q_norm" in k for k in keys)


def test_config_doctests():
    import doctest

    from decspec.stdlib.models import transformer_config

    assert doctest.testmod(transformer_config, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
