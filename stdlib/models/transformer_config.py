"""`TransformerConfig`: the built-in transformer's hyperparameters, read from Hugging Face config.json
dicts of the Llama family (llama, qwen2, qwen3, mistral), and its RoPE frequencies.

The four families share one layout (RMSNorm, rotate-half RoPE, SwiGLU, grouped-query attention) and
differ only in what `from_dict` turns into fields:

| model_type | biases | q/k norm | sliding window | head_dim when absent |
|---|---|---|---|---|
| llama | q/k/v/o if `attention_bias`, MLP if `mlp_bias` | no | never | hidden / heads |
| qwen2 | q/k/v always, never o or MLP | no | `sliding_window` if `use_sliding_window`, layers >= `max_window_layers` | hidden / heads |
| qwen3 | q/k/v/o if `attention_bias` | per-head RMSNorm before RoPE | as qwen2 | 128 |
| mistral | none | no | `sliding_window` (absent: 4096; null: none), every layer | hidden / heads |

RoPE scaling (`rope_scaling`, or transformers 5's `rope_parameters`): "default", "linear", "llama3"
and "dynamic", with inverse frequencies computed exactly as transformers' `ROPE_INIT_FUNCTIONS` (none of
these types scales attention: their attention_factor is 1). "dynamic" (NTK) changes nothing until a
position reaches max_position_embeddings, so the model refuses caches longer than that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from decspec.dsl.diagnostics import excerpt

MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
ROPE_TYPES = ("default", "linear", "llama3", "dynamic")
LAYER_TYPES = ("full_attention", "sliding_attention")
# config.json fields read as they are, for every family (the family-specific ones are read in from_dict)
PLAIN = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "head_dim", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings", "initializer_range", "bos_token_id")


class Unsupported(ValueError):
    """A config.json feature the built-in model does not implement (transformers may still run the checkpoint)."""


class InvalidConfig(ValueError):
    """A config.json value no checkpoint can have (a negative or enormous size, a layer count that is a string):
    refused before any tensor is allocated, whoever would run the checkpoint."""


# the most each size may be: ten times or more what the largest released Llama-family models use (Llama 3.1
# 405B: hidden 16,384, MLP 53,248, 126 layers, 128 heads; Gemma 3: a 262,144-token vocabulary; Llama 4: 10M positions)
SIZE_LIMITS = {"vocab_size": 1 << 22, "hidden_size": 1 << 18, "intermediate_size": 1 << 20, "num_hidden_layers": 1 << 11,
               "num_attention_heads": 1 << 11, "num_key_value_heads": 1 << 11, "head_dim": 1 << 13,
               "max_position_embeddings": 1 << 27, "sliding_window": 1 << 27, "rope_original_max_position_embeddings": 1 << 27}
OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "sliding_window", "rope_original_max_position_embeddings")  # None: derived
POSITIVE_REALS = ("rms_norm_eps", "rope_theta", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor")


def check_values(c: "TransformerConfig") -> None:
    """Every size a positive integer within SIZE_LIMITS, every real a finite number (positive where it divides or
    scales), token ids non-negative integers: InvalidConfig otherwise, naming the field and its value."""
    for name, limit in SIZE_LIMITS.items():
        v = getattr(c, name)
        if v is None and name in OPTIONAL_SIZES:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InvalidConfig(f"{name}={excerpt(repr(v))} must be a positive integer")
        if v > limit:
            raise InvalidConfig(f"{name}={v:,} is more than decspec accepts ({limit:,}, ten times or more what the largest "
                                "released models use)")
    for name in (*POSITIVE_REALS, "initializer_range"):
        v = getattr(c, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or (name in POSITIVE_REALS and v <= 0):
            raise InvalidConfig(f"{name}={excerpt(repr(v))} must be a finite{' positive' if name in POSITIVE_REALS else ''} number")
    for name, ids in (("bos_token_id", (c.bos_token_id,)), ("eos_token_id", c.eos_token_ids or (c.eos_token_id,))):
        for v in ids:
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise InvalidConfig(f"{name}={excerpt(repr(v))} must be a token id (a non-negative integer) or null")
    if not isinstance(c.tie_word_embeddings, bool):
        raise InvalidConfig(f"tie_word_embeddings={excerpt(repr(c.tie_word_embeddings))} must be true or false")
    if c.head_size < 2:
        raise InvalidConfig(f"the attention heads have {c.head_size} dimensions (hidden_size {c.hidden_size} / "
                            f"num_attention_heads {c.num_attention_heads}); give head_dim or fewer heads")


@dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters, named as in Hugging Face `LlamaConfig`.

    >>> TransformerConfig(vocab_size=512, hidden_size=128, num_hidden_layers=4).head_size
    32
    >>> TransformerConfig.from_dict({"model_type": "qwen2", "num_hidden_layers": 2}).qkv_bias
    True
    """

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 344
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (HF default)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()  # every EOS id of the config.json (eos_token_id is the first)
    # Llama-family variants (the defaults are plain Llama, with its state-dict keys)
    model_type: str = "llama"  # which family the checkpoint came from (informational; the fields below decide)
    attention_bias: bool = False  # biases on q/k/v/o (HF Llama's attention_bias, Qwen3's)
    qkv_bias: bool = False  # biases on q/k/v only, none on o (Qwen2)
    mlp_bias: bool = False  # biases on gate/up/down (HF Llama's mlp_bias)
    qk_norm: bool = False  # RMSNorm over head_dim on each q and k head, before RoPE (Qwen3's q_norm / k_norm)
    sliding_window: int | None = None  # a token attends the last `sliding_window` positions, itself included
    layer_types: tuple[str, ...] | None = None  # per layer "full_attention" / "sliding_attention"; None: all sliding
    rope_type: str = "default"  # one of ROPE_TYPES
    rope_factor: float = 1.0  # linear, llama3, dynamic
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_position_embeddings: int | None = None  # llama3; None: max_position_embeddings

    def __post_init__(self) -> None:
        check_values(self)
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of num_key_value_heads={self.kv_heads}"
            )
        if self.head_size % 2:
            raise ValueError(f"head_dim={self.head_size} must be even for rotary embeddings")
        if self.rope_type not in ROPE_TYPES:
            raise Unsupported(f"rope type {self.rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
        if self.rope_type == "llama3" and self.rope_low_freq_factor == self.rope_high_freq_factor:
            raise ValueError("llama3 rope scaling needs high_freq_factor != low_freq_factor")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window={self.sliding_window} must be a positive number of positions (or null)")
        if self.layer_types is not None and (
            len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= set(LAYER_TYPES)
        ):
            raise ValueError(f"layer_types={list(self.layer_types)} must name one of {', '.join(LAYER_TYPES)} "
                             f"for each of the {self.num_hidden_layers} layers")

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def window(self, layer: int) -> int | None:
        """Layer `layer`'s sliding window in positions, or None for full causal attention."""
        if self.sliding_window is None or (self.layer_types is not None and self.layer_types[layer] != "sliding_attention"):
            return None
        return self.sliding_window

    def inv_freq(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """RoPE inverse frequencies [head_dim / 2] (float32), as transformers' ROPE_INIT_FUNCTIONS computes them."""
        D = self.head_size
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64, device=device).float() / D))
        if self.rope_type == "linear":
            inv_freq /= self.rope_factor
        elif self.rope_type == "llama3":  # transformers' _compute_llama3_parameters, step by step
            factor, low, high = self.rope_factor, self.rope_low_freq_factor, self.rope_high_freq_factor
            old_context_len = self.rope_original_max_position_embeddings or self.max_position_embeddings
            low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
            wavelen = 2 * math.pi / inv_freq
            inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
            smooth_factor = (old_context_len / wavelen - low) / (high - low)
            smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
            is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
            inv_freq = torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)
        # "dynamic": the base is rescaled only for positions >= max_position_embeddings (refused by new_cache)
        return inv_freq

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransformerConfig:
        """Build from an HF `config.json` dict of a llama, qwen2, qwen3 or mistral checkpoint; fields decspec
        does not use are ignored, and ones it cannot honour exactly are a ValueError naming them."""
        model_type = d.get("model_type") or "llama"
        if model_type not in MODEL_TYPES:
            raise Unsupported(f"model_type {model_type!r} is not a Llama-family model (supported: {', '.join(MODEL_TYPES)})")
        if d.get("hidden_act", "silu") != "silu":
            raise Unsupported(f"hidden_act={d['hidden_act']!r} is not supported (the MLP is SwiGLU: silu only)")
        kw: dict[str, Any] = {k: d[k] for k in PLAIN if k in d}
        kw["model_type"] = model_type
        if model_type == "llama":
            kw.update(attention_bias=bool(d.get("attention_bias")), mlp_bias=bool(d.get("mlp_bias")))
        elif model_type == "qwen2":  # Qwen2Attention: q/k/v biases, whatever attention_bias says
            kw["qkv_bias"] = True
        elif model_type == "qwen3":
            kw.update(attention_bias=bool(d.get("attention_bias")), qk_norm=True)
            kw.setdefault("head_dim", 128)  # Qwen3Config's default
        if model_type == "mistral":
            kw["sliding_window"] = d.get("sliding_window", 4096)  # MistralConfig's default; null: full attention
        elif model_type in ("qwen2", "qwen3") and d.get("use_sliding_window"):
            kw["sliding_window"] = d.get("sliding_window", 4096)
            layers, first = d.get("num_hidden_layers", cls.num_hidden_layers), d.get("max_window_layers", 28)
            types = d.get("layer_types") or ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
            kw["layer_types"] = tuple(types)
        kw.update(rope_fields(d, kw.get("max_position_embeddings", cls.max_position_embeddings)))
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else () if eos is None else (eos,)
        kw.update(eos_token_id=eos_ids[0] if eos_ids else None, eos_token_ids=eos_ids)  # the protocol has one EOS
        return cls(**kw)


def rope_fields(d: Mapping[str, Any], max_positions: int) -> dict[str, Any]:
    """config.json's RoPE settings -> TransformerConfig fields. As in transformers, `rope_scaling` (older
    configs) replaces `rope_parameters` (transformers 5), which may also hold rope_theta."""
    p = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
    if any(isinstance(v, Mapping) for v in p.values()):
        raise Unsupported(f"per-layer-type rope parameters ({', '.join(k for k, v in p.items() if isinstance(v, Mapping))}) "
                          "are not supported")
    if p.get("partial_rotary_factor", d.get("partial_rotary_factor")) not in (None, 1, 1.0):
        raise Unsupported(f"partial_rotary_factor={p.get('partial_rotary_factor', d.get('partial_rotary_factor'))} is not "
                          "supported (RoPE over the whole head only)")
    theta = p.get("rope_theta") or d.get("rope_theta") or 10000.0
    kind = p.get("rope_type", p.get("type")) or "default"
    if kind not in ROPE_TYPES:
        raise Unsupported(f"rope type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    out: dict[str, Any] = {"rope_theta": float(theta), "rope_type": kind}

    def need(key: str) -> float:
        if p.get(key) is None:
            raise ValueError(f"rope scaling of type {kind!r} needs {key!r} (got {p!r})")
        return float(p[key])

    if kind in ("linear", "dynamic", "llama3"):
        out["rope_factor"] = need("factor")
    if kind == "llama3":
        out.update(rope_low_freq_factor=need("low_freq_factor"), rope_high_freq_factor=need("high_freq_factor"))
        # transformers: a top-level original_max_position_embeddings wins, then the rope dict's, then max_position_embeddings
        original = d.get("original_max_position_embeddings") or p.get("original_max_position_embeddings") or max_positions
        out["rope_original_max_position_embeddings"] = int(original)
    return out

