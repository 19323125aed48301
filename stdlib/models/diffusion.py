"""A small masked-diffusion language model (MDLM / LLaDA style) implementing the DiffusionLM protocol.

The layers are the built-in Llama blocks of stdlib/models/transformer.py (RMSNorm, rotate-half RoPE,
SwiGLU, grouped-query attention) run without a causal mask: every position attends every real
position, before and after it. The embedding has one extra row, the mask token (mask_id =
vocab_size), and the LM head is the embedding's first vocab_size rows (tied), so the logits cover the
real vocabulary only and the mask token is never predicted:

    model = reference_diffusion()                         # trained on the Python stdlib (see docs/models.md)
    tokens = torch.tensor([[0, 563, 87, model.mask_id, model.mask_id, 12]])
    logits = model.denoise(tokens)                        # [1, 6, 4096]: the prediction at every position
    cache = model.prefill(tokens)                         # per-layer K/V of every position
    logits = model.denoise(tokens, cache=cache, start=3, end=5)   # [1, 2, 4096]: positions 3, 4 recomputed

Padding. `attend` [B, L] marks the real positions; a batch of different lengths is padded on the left.
Padded keys are masked out and RoPE positions count real positions only (position p of a row is the
number of real positions before it), so a padded row's logits at its real positions are the row's
own logits alone. Logits at padded positions are computed but mean nothing.

Caches (Fast-dLLM). `prefill` keeps the keys and values of every position in every layer.
`denoise(cache=, start=s, end=e)` recomputes the hidden states of positions s..e-1 only: their
queries attend fresh keys/values inside [s, e) and the cached ones outside it. With end = L this is
Fast-dLLM's prefix cache (the suffix is recomputed), otherwise its dual cache. The cached K/V were
computed from the tokens prefill saw; if tokens outside the window changed since, the result is an
approximation, and `denoise(tokens)` (no cache) is the exact one.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.transformer import LlamaModel, rope
from decspec.stdlib.models.transformer_config import TransformerConfig

REFERENCE = Path(__file__).with_name("reference") / "diffusion"
MODEL_TYPE = "masked_diffusion"
# TransformerConfig fields config.json carries (the rest keep their defaults: plain Llama blocks)
CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                 "initializer_range", "bos_token_id", "eos_token_id")


@dataclass
class DiffusionCache:
    """What `prefill` computed: per layer, the keys and values of every position, [B, Hkv, L, D] each,
    plus the real-position mask and RoPE positions they were computed with."""

    k: tuple[torch.Tensor, ...]
    v: tuple[torch.Tensor, ...]
    attend: torch.Tensor  # [B, L] bool
    positions: torch.Tensor  # [B, L] long


class DiffusionTransformer(nn.Module):
    """Bidirectional Llama-block transformer predicting every position of a partly masked sequence.

    >>> model = DiffusionTransformer.random(seed=0, vocab=32, layers=1, hidden=16, max_length=8)
    >>> model.mask_id, model.denoise(torch.tensor([[1, model.mask_id, 3]])).shape
    (32, torch.Size([1, 3, 32]))
    """

    def __init__(self, config: TransformerConfig, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size  # V: real tokens; logits' last dimension
        self.mask_id = config.vocab_size  # the embedding's extra row
        self.max_length = config.max_position_embeddings
        self.eos_token_id = config.eos_token_id
        self.num_layers = config.num_hidden_layers
        self.tokenizer = None  # a decspec Tokenizer, set by the loader when the checkpoint has one
        self.model = LlamaModel(replace(config, vocab_size=config.vocab_size + 1), dtype, device)
        self.register_buffer("inv_freq", config.inv_freq(device), persistent=False)  # [D/2]
        self.requires_grad_(False)

    @classmethod
    def random(cls, *, seed: int, vocab: int = 64, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
               max_length: int = 64, dtype: torch.dtype = torch.float32) -> DiffusionTransformer:
        """A random model for tests (see `initialized`)."""
        config = TransformerConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_length)
        return cls.initialized(config, seed, dtype=dtype)

    @classmethod
    def initialized(cls, config: TransformerConfig, seed: int, *, dtype: torch.dtype = torch.float32) -> DiffusionTransformer:
        """HF-style init, deterministic for a seed: normal(0, initializer_range) weights, unit norm weights."""
        model = cls(config, dtype=dtype)
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if name.endswith("norm.weight") else
                    torch.randn(p.shape, generator=gen) * config.initializer_range)
        return model

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    # --- the DiffusionLM protocol ---------------------------------------------------------------

    def denoise(self, tokens: torch.Tensor, *, attend: torch.Tensor | None = None, cache: DiffusionCache | None = None,
                start: int = 0, end: int | None = None) -> torch.Tensor:
        """tokens [B, L] (mask_id where unknown) -> logits [B, end - start, V] (float32) for positions start..end-1.

        Without a cache every position is computed (exact); with one, only [start, end), reading the
        cached K/V elsewhere (see the module docstring). `attend` defaults to the cache's."""
        L = tokens.shape[-1]
        end = L if end is None else end
        if cache is not None and tuple(cache.attend.shape) != tuple(tokens.shape):
            raise DecError(f"the cache was prefilled on {tuple(cache.attend.shape)} tokens but denoise got {tuple(tokens.shape)}; "
                           "prefill again on the sequence being denoised")
        attend = self.check(tokens, attend if attend is not None or cache is None else cache.attend)
        start, end = self.window(start, end, L)
        if cache is None:
            return self.hidden_logits(self.run(tokens, attend)[0][:, start:end])
        return self.hidden_logits(self.run(tokens[:, start:end], attend, cache=cache, start=start)[0])

    def prefill(self, tokens: torch.Tensor, *, attend: torch.Tensor | None = None) -> DiffusionCache:
        """The keys and values of every position of tokens [B, L] in every layer, for denoise(..., cache=)."""
        attend = self.check(tokens, attend)
        _, cache = self.run(tokens, attend, keep=True)
        return cache

    def forward(self, tokens: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        """Training entry point: the final hidden states [B, L, C] (unchecked input; `hidden_logits` maps them to logits)."""
        if attend is None:
            attend = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        return self.run(tokens, attend)[0]

    # --- internals ----------------------------------------------------------------------------------

    def hidden_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states [..., C] -> logits [..., V] (float32): the tied embedding without the mask row."""
        return F.linear(hidden, self.model.embed_tokens.weight[: self.vocab_size]).float()

    def run(self, tokens: torch.Tensor, attend: torch.Tensor, *, cache: DiffusionCache | None = None, start: int = 0,
            keep: bool = False) -> tuple[torch.Tensor, DiffusionCache | None]:
        """The layers over tokens [B, T] at sequence positions start..start+T-1. -> (normed hidden [B, T, C], cache or None).

        Without a cache T = L and the block attends itself; with one, its queries attend the cached K/V with
        the block's own fresh K/V written over slots start..start+T-1. keep: also return every layer's K/V."""
        B, T = tokens.shape
        if cache is None:
            positions = (attend.long().cumsum(1) - 1).clamp(min=0)  # [B, L]: real positions counted from 0
        else:
            positions = cache.positions
        qpos = positions[:, start : start + T]  # [B, T]
        # mask [B, 1, T, S]: real keys, plus each query itself (a padded query then never sees an empty row)
        S = attend.shape[1]
        own = torch.arange(start, start + T, device=tokens.device)[:, None] == torch.arange(S, device=tokens.device)[None, :]
        mask = (attend[:, None, :] | own[None])[:, None]
        x = self.model.embed_tokens(tokens)  # [B, T, C]
        cos, sin = rope(qpos, self.inv_freq, x.dtype)  # [B, 1, T, D]
        ks, vs = [], []
        for i, layer in enumerate(self.model.layers):
            a = layer.self_attn
            q, k, v = a.qkv(layer.input_layernorm(x), cos, sin)  # [B, H, T, D], [B, Hkv, T, D] x 2
            if cache is not None:  # fresh K/V inside the window, cached outside
                k = torch.cat([cache.k[i][:, :, :start], k, cache.k[i][:, :, start + T :]], dim=2)
                v = torch.cat([cache.v[i][:, :, :start], v, cache.v[i][:, :, start + T :]], dim=2)
            if keep:
                ks.append(k)
                vs.append(v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=a.n_head != a.n_kv)  # [B, H, T, D]
            x = x + a.o_proj(y.transpose(1, 2).reshape(B, T, a.n_head * a.d))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        hidden = self.model.norm(x)
        return hidden, (DiffusionCache(tuple(ks), tuple(vs), attend, positions) if keep else None)

    def check(self, tokens: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        """Refuse what would otherwise fail as an index error deep inside; -> attend [B, L] bool."""
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            got = f"a {tokens.dtype} tensor of shape {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise DecError(f"denoise takes token ids as an integer tensor [batch, length]; got {got}")
        B, L = tokens.shape
        if L == 0 or L > self.max_length:
            raise DecError(f"a sequence of {L} positions does not fit the model's max_length {self.max_length} "
                           f"(prompt + generated tokens); shorten the prompt or generate fewer tokens")
        if not torch.compiler.is_compiling() and tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi > self.mask_id:
                raise DecError(f"token id {lo if lo < 0 else hi} is outside the model's vocabulary [0, {self.vocab_size}) "
                               f"and is not its mask token {self.mask_id}; encode text with the model's tokenizer")
        if attend is None:
            return torch.ones(B, L, dtype=torch.bool, device=tokens.device)
        if tuple(attend.shape) != (B, L):
            raise DecError(f"attend has shape {tuple(attend.shape)} but the tokens have {(B, L)}; give one flag per position")
        return attend.to(torch.bool)

    @staticmethod
    def window(start: int, end: int, L: int) -> tuple[int, int]:
        if not 0 <= start < end <= L:
            raise DecError(f"denoise window [{start}, {end}) is not inside the sequence's {L} positions; "
                           f"give 0 <= start < end <= {L}")
        return start, end

    # --- saving and loading -------------------------------------------------------------------------

    def save(self, out: str | Path) -> None:
        """config.json + model.safetensors (float16) in `out` (the tokenizer files are copied by the trainer)."""
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.to(torch.float16).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        c = {k: v for k, v in asdict(self.config).items() if k in CONFIG_FIELDS}
        c.update(model_type=MODEL_TYPE, architectures=["DiffusionTransformer"], mask_token_id=self.mask_id,
                 attention="bidirectional", tie_word_embeddings=True, torch_dtype="float16")
        (out / "config.json").write_text(json.dumps(c, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, *, dtype: torch.dtype = torch.float32) -> DiffusionTransformer:
        """A folder written by `save` (+ tokenizer.json) -> the model, with its tokenizer."""
        from decspec.stdlib.models.pretrained import read_config, read_weights
        from decspec.stdlib.models.tokenizer import Tokenizer

        path = Path(path)
        raw = read_config(path)
        if raw.get("model_type") != MODEL_TYPE:
            raise DecError(f"{path / 'config.json'}: model_type {raw.get('model_type')!r} is not a masked-diffusion model "
                           f"({MODEL_TYPE!r}); load causal models with decspec.stdlib.models.pretrained.load_model")
        try:
            config = TransformerConfig(**{k: raw[k] for k in CONFIG_FIELDS if k in raw})
        except (TypeError, ValueError) as e:
            raise DecError(f"{path / 'config.json'}: {e}") from None
        if raw.get("mask_token_id", config.vocab_size) != config.vocab_size:
            raise DecError(f"{path / 'config.json'}: mask_token_id must be vocab_size ({config.vocab_size}), the embedding's extra row")
        model = cls(config, dtype=dtype)
        try:
            model.load_state_dict({k: v.to(dtype) for k, v in read_weights(path).items()})
        except RuntimeError as e:
            raise DecError(f"weights in {path} do not match its config.json ({e}); retrain or re-save the model") from None
        if (path / "tokenizer.json").is_file():
            model.tokenizer = Tokenizer.from_dir(path)
        model.name = str(path)
        return model.requires_grad_(False).eval()


@lru_cache(maxsize=2)
def reference_diffusion(dtype: torch.dtype = torch.float32) -> DiffusionTransformer:
    """The shipped masked-diffusion model (4 layers, hidden 256, the reference 4096-token tokenizer, trained on
    Python stdlib source; docs/models.md). Loaded once per process and shared: decoding never changes the weights."""
    if not (REFERENCE / "model.safetensors").is_file():
        raise DecError(f"the reference diffusion model is missing from {REFERENCE}; reinstall decspec or train it: "
                       f"python -m decspec.stdlib.models.train_diffusion --out {REFERENCE}")
    return DiffusionTransformer.load(REFERENCE, dtype=dtype)
