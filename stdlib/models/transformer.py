"""A small gpt-fast-style Llama transformer with a static, per-row KV cache.

Architecture and parameter names follow Hugging Face `LlamaForCausalLM` exactly (RMSNorm,
rotate-half RoPE, SwiGLU MLP, grouped-query attention, optional tied embeddings), so an HF-format
state dict loads unchanged:

    model = Transformer.random(TransformerConfig(vocab_size=512), seed=0)
    cache = model.new_cache(batch=2, capacity=128)
    out = model.forward(tokens, cache)               # tokens: [B, T] -> out.logits: [B, T, V]

Positions and masks. Row b's block of T new tokens is written at cache slots
start[b] .. start[b]+T-1 (start = cache.length before the call). Without a tree_mask, token i
has position start[b] + i and attends every cached slot < start[b] plus block tokens 0..i.
With a tree_mask [B, T, T], token i attends every cached slot plus the block tokens j with
tree_mask[b, i, j] (i itself always), and its RoPE position is start[b] + depth(i), where
depth(i) = number of block tokens it attends, minus one (its ancestors, for a tree mask that
lists each node's ancestors). `positions` [B, T] overrides the RoPE positions in either mode.
After a tree forward, `cache.commit_path` moves an accepted path to contiguous slots.

Early exit and layer skipping. `exit_layer=L` runs layers 0..L-1 and then the shared final norm
and head (LayerSkip-style); `skip_layers` leaves the listed layers out. Only the layers that run
write their K/V: the cache slots of the block hold nothing valid (stale values) in the other
layers, so a later full-depth forward must re-feed those tokens (roll back, then verify) before
anything attends them at full depth.

Draft heads. A checkpoint may carry Medusa and/or Hydra heads (decspec.stdlib.models.heads),
loaded into `model.heads`; `medusa(hidden)` and `hydra_step(i, state, token)` run them on the
final hidden state that `forward` returns (`ModelOutput.hidden`).

Parameters are frozen (requires_grad=False): decspec decodes with this model. Call
`model.requires_grad_(True)` to train it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from decspec.stdlib.models.protocol import Cache, ModelOutput


@dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters, named as in Hugging Face `LlamaConfig`.

    >>> TransformerConfig(vocab_size=512, hidden_size=128, num_hidden_layers=4).head_size
    32
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

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of num_key_value_heads={self.kv_heads}"
            )
        if self.head_size % 2:
            raise ValueError(f"head_dim={self.head_size} must be even for rotary embeddings")

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransformerConfig:
        """Build from an HF `config.json` dict; fields decspec does not use are ignored."""
        if d.get("rope_scaling"):
            raise ValueError(f"rope_scaling={d['rope_scaling']!r} is not supported (plain RoPE only)")
        rope_parameters = d.get("rope_parameters") or {}  # transformers >= 5 keeps rope_theta here
        if rope_parameters.get("rope_type", "default") != "default":
            raise ValueError(f"rope_parameters={rope_parameters!r} is not supported (plain RoPE only)")
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ValueError("attention_bias / mlp_bias are not supported (Llama has no biases)")
        names = {f.name for f in dataclasses.fields(cls)}
        eos = d.get("eos_token_id")
        kw = {k: v for k, v in d.items() if k in names}
        if isinstance(eos, list):  # HF allows several; the protocol has one
            kw["eos_token_id"] = eos[0] if eos else None
        if "rope_theta" in rope_parameters:
            kw["rope_theta"] = rope_parameters["rope_theta"]
        return cls(**kw)


class KVCache(Cache):
    """Static K/V buffers, one [B, kv_heads, capacity, head_dim] tensor per layer, allocated once,
    plus the token history.

    Each layer owns its tensor (not a view into one stacked buffer): a compiled step that writes a
    layer's K/V in place then updates that tensor in place, where a view of a shared base makes
    torch.compile copy the whole base on every call.

    >>> cache = KVCache(batch=2, capacity=64, num_layers=4, kv_heads=2, head_dim=32)
    >>> len(cache.k), cache.k[0].shape
    (4, torch.Size([2, 2, 64, 32]))
    """

    def __init__(
        self,
        batch: int,
        capacity: int,
        *,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        super().__init__(batch, capacity, device=device)
        shape = (batch, kv_heads, capacity, head_dim)
        self.k = tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers))
        self.v = tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers))

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.k[0].device)
        for buf in (*self.k, *self.v):  # [B, H, S, D], in place
            buf.copy_(buf.index_select(0, index))
        super().reorder(index)

    def commit_path(self, start: torch.Tensor, path: torch.Tensor, n: torch.Tensor) -> None:
        src, dst = self._path_slots(start, path, n)  # [B, P]
        B, H, _, D = self.k[0].shape
        src = src[:, None, :, None].expand(B, H, src.shape[1], D)  # [B, H, P, D]
        dst = dst[:, None, :, None].expand(B, H, dst.shape[1], D)
        for buf in (*self.k, *self.v):
            buf.scatter_(2, dst, buf.gather(2, src))
        super().commit_path(start, path, n)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """HF Llama rotary tables at per-row positions [B, T] -> cos, sin: [B, 1, T, D] (computed in float32)."""
    freqs = positions.float()[..., None] * inv_freq  # [B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


class Linear(nn.Linear):
    """nn.Linear without bias whose weights are left uninitialized: `Transformer.random` or a loaded state dict fills them."""

    def __init__(self, n_in: int, n_out: int, dtype: torch.dtype, device: torch.device | str):
        super().__init__(n_in, n_out, bias=False, dtype=dtype, device=device)

    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    """nn.Embedding whose weights are left uninitialized (see Linear)."""

    def reset_parameters(self) -> None:
        pass


class Attention(nn.Module):
    def __init__(self, c: TransformerConfig, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.n_head, self.n_kv, self.d = c.num_attention_heads, c.kv_heads, c.head_size
        self.q_proj = Linear(c.hidden_size, self.n_head * self.d, dtype, device)
        self.k_proj = Linear(c.hidden_size, self.n_kv * self.d, dtype, device)
        self.v_proj = Linear(c.hidden_size, self.n_kv * self.d, dtype, device)
        self.o_proj = Linear(self.n_head * self.d, c.hidden_size, dtype, device)

    def qkv(self, x, cos, sin):
        """x: [B, T, C] -> q [B, H, T, D], k and v [B, Hkv, T, D], with RoPE applied to q and k."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.d).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.d).transpose(1, 2)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def forward(self, x, cos, sin, mask, slots, k_cache, v_cache):
        # x: [B, T, C]; mask: [B, 1, T, S]; slots: [B, T]; k_cache, v_cache: [B, Hkv, S, D] (views into the cache)
        B, T, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)  # [B, H, T, D], [B, Hkv, T, D] x 2
        idx = slots[:, None, :, None].expand(B, self.n_kv, T, self.d)  # [B, Hkv, T, D]
        k_cache.scatter_(2, idx, k)  # the block's keys are written before attending
        v_cache.scatter_(2, idx, v)
        rep = self.n_head // self.n_kv  # query head h reads kv head h // rep (HF repeat_kv)
        keys = k_cache.repeat_interleave(rep, dim=1) if rep > 1 else k_cache  # [B, H, S, D]
        values = v_cache.repeat_interleave(rep, dim=1) if rep > 1 else v_cache
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # [B, H, T, D]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.d))


class MLP(nn.Module):
    def __init__(self, c: TransformerConfig, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, dtype, device)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, dtype, device)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.self_attn = Attention(c, dtype, device)
        self.mlp = MLP(c, dtype, device)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype, device)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype, device)

    def forward(self, x, cos, sin, mask, slots, k_cache, v_cache):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, slots, k_cache, v_cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    """The `model.` prefix of HF `LlamaForCausalLM`: embeddings, layers, final norm."""

    def __init__(self, c: TransformerConfig, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(DecoderLayer(c, dtype, device) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype, device)


def attention_mask(slots: torch.Tensor, capacity: int, tree_mask: torch.Tensor | None) -> torch.Tensor:
    """Which cache slots each new token attends. slots: [B, T] -> mask: [B, 1, T, S] bool (S = capacity)."""
    B, T = slots.shape
    s = torch.arange(capacity, device=slots.device)  # [S]
    if tree_mask is None:
        return (s[None, None, :] <= slots[:, :, None])[:, None]  # causal over slots
    mask = (s[None, None, :] < slots[:, :1, None]).expand(B, T, capacity).clone()  # cached slots
    block = tree_mask.to(torch.bool) | torch.eye(T, dtype=torch.bool, device=slots.device)  # [B, T, T]
    mask.scatter_(2, slots[:, None, :].expand(B, T, T), block)
    return mask[:, None]


def tree_depth(tree_mask: torch.Tensor) -> torch.Tensor:
    """Depth of each block node: how many block tokens it attends, minus one. [B, T, T] -> [B, T]."""
    T = tree_mask.shape[-1]
    eye = torch.eye(T, dtype=torch.bool, device=tree_mask.device)
    return (tree_mask.to(torch.bool) | eye).sum(-1) - 1


class Transformer(nn.Module):
    """Llama-architecture decoder implementing the decspec `Model` protocol.

    >>> config = TransformerConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    >>> model = Transformer.random(config, seed=0)
    >>> cache = model.new_cache(batch=1, capacity=16)
    >>> model.forward(torch.tensor([[1, 2, 3]]), cache).logits.shape
    torch.Size([1, 3, 64])
    >>> model.forward(torch.tensor([[4]]), cache, exit_layer=1).logits.shape   # early exit
    torch.Size([1, 1, 64])
    """

    def __init__(self, config: TransformerConfig, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.eos_token_id = config.eos_token_id
        self.max_positions = config.max_position_embeddings
        self.num_layers = config.num_hidden_layers
        self.tokenizer = None  # a decspec Tokenizer, set by the loader when the checkpoint has one
        self.heads: dict[str, nn.Module] = {}  # draft heads by kind ("medusa", "hydra"); not part of the state dict
        self.model = LlamaModel(config, dtype, device)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, dtype, device)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        D = config.head_size
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64, device=device).float() / D))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [D/2], not in the state dict (as in HF)
        self.requires_grad_(False)

    @classmethod
    def random(
        cls, config: TransformerConfig, seed: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> Transformer:
        """Deterministic HF-style init: normal(0, initializer_range) weights, unit norm weights."""
        model = cls(config, dtype=dtype, device=device)
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():  # registration order; tied weights appear once
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                w = torch.randn(p.shape, generator=gen, dtype=torch.float32) * config.initializer_range
                p.copy_(w)
        return model

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        c = self.config
        return KVCache(
            batch, capacity, num_layers=c.num_hidden_layers, kv_heads=c.kv_heads, head_dim=c.head_size,
            dtype=self.dtype, device=self.device,
        )

    def layers_to_run(self, exit_layer: int | None, skip_layers: tuple[int, ...] | None) -> list[int]:
        L = self.num_layers
        if exit_layer is not None and not 0 <= exit_layer <= L:
            raise ValueError(f"exit_layer={exit_layer} is outside 0..{L}")
        skip = set(skip_layers or ())
        if any(not 0 <= i < L for i in skip):
            raise ValueError(f"skip_layers={tuple(skip_layers)} names a layer outside 0..{L - 1}")
        return [i for i in range(L if exit_layer is None else exit_layer) if i not in skip]

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        *,
        n_valid: torch.Tensor | None = None,
        exit_layer: int | None = None,
        skip_layers: tuple[int, ...] | None = None,
        tree_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Run tokens [B, T] after what `cache` holds. -> logits [B, T, V] (float32), hidden [B, T, C].

        positions: [B, T] RoPE positions; default start + i, or start + depth(i) with a tree_mask.
        """
        layers = self.layers_to_run(exit_layer, skip_layers)
        slots = cache.write_tokens(tokens)  # [B, T]; raises CacheFull before anything is written
        out = self._run(tokens, cache, slots, layers, tree_mask, positions)
        cache.advance(tokens.shape[1], n_valid)
        return out

    def forward_at(
        self, tokens: torch.Tensor, cache: KVCache, start: torch.Tensor, *, exit_layer: int | None = None,
        skip_layers: tuple[int, ...] | None = None,
    ) -> ModelOutput:
        """Roll row b back to start[b] and run tokens [B, T] there; then cache.length = start + T.

        The static-shape form of `forward` for compiled code: no host synchronization, no room
        check (the caller guarantees start + T <= capacity), every one of the T tokens counted.
        """
        layers = self.layers_to_run(exit_layer, skip_layers)
        slots = start[:, None] + torch.arange(tokens.shape[1], device=tokens.device)[None, :]  # [B, T]
        cache.tokens.scatter_(1, slots, tokens)
        out = self._run(tokens, cache, slots, layers, None, None)
        cache.length.copy_(start + tokens.shape[1])
        return out

    def _run(self, tokens, cache, slots, layers, tree_mask, positions) -> ModelOutput:
        """The layers over tokens [B, T] written at cache slots [B, T]. -> logits [B, T, V], hidden [B, T, C]"""
        if positions is None:
            positions = slots if tree_mask is None else slots[:, :1] + tree_depth(tree_mask)
        mask = attention_mask(slots, cache.capacity, tree_mask)  # [B, 1, T, S]
        x = self.model.embed_tokens(tokens)  # [B, T, C]
        cos, sin = rope(positions, self.inv_freq, x.dtype)  # [B, 1, T, D]
        for i in layers:
            x = self.model.layers[i](x, cos, sin, mask, slots, cache.k[i], cache.v[i])
        hidden = self.model.norm(x)  # [B, T, C]
        logits = self.lm_head(hidden).float()  # [B, T, V]
        return ModelOutput(logits, hidden)

    def draft_head(self, kind: str):
        if kind not in self.heads:
            have = ", ".join(self.heads) or "none"
            raise ValueError(f"this model has no {kind} heads (it has: {have}); train them with decspec.stdlib.models.train")
        return self.heads[kind]

    def medusa(self, hidden: torch.Tensor) -> torch.Tensor:
        """Medusa heads on the final hidden state h_t [..., C] -> logits [..., k, V] for tokens t+2 .. t+k+1."""
        return self.draft_head("medusa")(hidden, self.lm_head)

    def hydra_step(self, i: int, state: torch.Tensor, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hydra head i (0-based). state: z_i [B, C] (z_0 = h_t); token: y_{t+i+1} [B]
        -> (z_{i+1} [B, C], logits [B, V] for token t+i+2)."""
        heads = self.draft_head("hydra")
        state, feats = heads.step(i, state, self.model.embed_tokens(token))
        return state, self.lm_head(feats).float()
