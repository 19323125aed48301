"""A small gpt-fast-style Llama transformer with a static, per-row KV cache.

Architecture and parameter names follow Hugging Face `LlamaForCausalLM` exactly (RMSNorm,
rotate-half RoPE, SwiGLU MLP, grouped-query attention, optional tied embeddings), so an HF-format
state dict loads unchanged. The same module runs the Llama-family variants that TransformerConfig
describes (stdlib/models/transformer_config.py): q/k/v(/o) and MLP biases, Qwen3's per-head q/k
RMSNorm, sliding-window attention (Mistral, Qwen2/3) and scaled RoPE (linear, llama3):

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
A layer with a sliding window W also drops the keys W or more positions behind the query (a cached
slot s holds position s); the mask is built only when the cache holds more than W slots.
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

import os
import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from decspec.stdlib.models.protocol import Cache, ModelOutput
from decspec.stdlib.models.quant import quantized_linear
from decspec.stdlib.models.transformer_config import TransformerConfig


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
    """nn.Linear (no bias unless asked) whose parameters are left uninitialized: `Transformer.random` or a
    loaded state dict fills them.

    On the CPU, float32 steps of several tokens (a verification, a prefill, a batch) and every bfloat16
    step multiply by a copy of the weight prepacked for oneDNN (`prepacked_linear`); a float32 one-token
    step, anything with gradients, and code under torch.compile (inductor packs its own) use the plain
    weight. A layer quantized by stdlib/models/quant.py multiplies by its int4 planes instead.
    """

    def __init__(self, n_in: int, n_out: int, dtype: torch.dtype, device: torch.device | str, bias: bool = False):
        super().__init__(n_in, n_out, bias=bias, dtype=dtype, device=device)

    def reset_parameters(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = quantized_linear(self, x)
        if y is None:
            y = prepacked_linear(self, x)
        return F.linear(x, self.weight, self.bias) if y is None else y


PREPACK = os.environ.get("DECSPEC_PREPACK", "1") != "0"  # DECSPEC_PREPACK=0: never keep prepacked copies
PREPACK_ROWS = {torch.float32: 2, torch.bfloat16: 1}  # the fewest rows a prepacked copy serves, by dtype (none for others)
PREPACK_BYTES = int(os.environ.get("DECSPEC_PREPACK_BYTES", 4 << 30))  # at most this much held in prepacked copies per process


class PackBudget:
    """The bytes held in prepacked copies by live layers: a layer whose copy would pass PREPACK_BYTES keeps
    the plain weight (a large model is packed up to the budget, the rest runs as before)."""

    lock = threading.Lock()
    held = 0

    @classmethod
    def pack(cls, layer: nn.Module, key: tuple) -> tuple | None:
        """The layer's copy for the weight `key` names: (key, packed, bytes), made now unless another thread just
        made it, or None when it would pass the budget. Its old copy is dropped either way. Under the lock, so
        threads that meet a layer's first multi-row step together make one copy and count it once."""
        state, w = layer.__dict__, layer.weight
        with cls.lock:
            old = state.get("_prepacked")
            if old is not None and old[0] == key:
                return old
            state.pop("_prepacked", None)
            cls.held -= old[2] if old is not None else 0
            nbytes = w.numel() * w.element_size()
            if cls.held + nbytes > PREPACK_BYTES:
                return None
            with torch.no_grad():
                state["_prepacked"] = pack = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), 8), nbytes)
            cls.held += nbytes
            if "_prepack_finalizer" not in state:  # the copy's bytes are given back when the layer is collected
                state["_prepack_finalizer"] = weakref.finalize(layer, cls.give, state)
            return pack

    @classmethod
    def give(cls, state: dict) -> None:
        with cls.lock:
            pack = state.pop("_prepacked", None)
            cls.held -= pack[2] if pack is not None else 0


def prepacked_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
    """x @ W.T + b through a oneDNN-prepacked copy of W on the CPU, for float32 steps of two or more rows
    and every bfloat16 step; None where it does not apply (a float32 row, gradients, compiling, another
    device or dtype, no oneDNN, DECSPEC_PREPACK=0, or the copy would pass the process's budget of
    DECSPEC_PREPACK_BYTES, default 4 GiB: PackBudget). The copy is made on first use and remade when W
    changes (another tensor, or an in-place write); it costs one more copy of the weights.

    Why: on the 2-core machine the BLAS multiplies a few rows by a weight at about one row's speed
    each, while one oneDNN packed kernel serves them together: SmolLM2's 30 layers and LM head take
    83 ms for 5 rows plain and 28 ms packed (one row: 34 ms plain, 36 ms packed), so verifying k+1 = 5
    tokens costs about one plain step instead of two and a half (benchmarks/verify_cost.py). In
    bfloat16 the packed kernel also wins at one row (24 ms against 37 ms plain). Two rows are padded to
    three (oneDNN's two-row kernel is slower than its three-row one here). Results equal F.linear's up
    to float rounding (the order of the sums differs).
    """
    w = layer.weight
    rows = x.numel() // max(x.shape[-1], 1)
    if (w.dtype not in PREPACK_ROWS or rows < PREPACK_ROWS[w.dtype] or not PREPACK or x.device.type != "cpu" or x.dtype != w.dtype
            or torch.compiler.is_compiling() or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            or not torch.backends.mkldnn.is_available()):
        return None
    key = weight_key(w)
    pack = layer.__dict__.get("_prepacked")  # (key, packed, bytes): outside the state dict and parameters
    if pack is None or pack[0] != key:
        if w.dtype in UNPACKABLE:
            return None
        try:
            pack = PackBudget.pack(layer, key)
        except RuntimeError:  # oneDNN refuses this dtype on this CPU (bf16 needs avx512bw/vl/dq or avx_ne_convert)
            UNPACKABLE.add(w.dtype)
            return None
        if pack is None:
            return None
    x2 = x.reshape(rows, x.shape[-1])
    if rows == 2:
        x2 = torch.cat([x2, x2[:1]])
    y = torch.ops.mkldnn._linear_pointwise(x2, pack[1], layer.bias, "none", [], "")
    return y[:rows].reshape(*x.shape[:-1], y.shape[-1])


UNPACKABLE: set = set()  # weight dtypes this CPU's oneDNN cannot prepack: the plain F.linear runs them


def weight_key(w: torch.Tensor) -> tuple:
    """What identifies a weight's values cheaply: its storage, shape and in-place write count."""
    try:
        version = w._version
    except RuntimeError:  # an inference tensor keeps no version counter (and cannot be written in place)
        version = -1
    return w.data_ptr(), tuple(w.shape), tuple(w.stride()), version


def column_major(model: nn.Module) -> None:
    """Store every projection weight [out, in] column-major (the memory of its transpose [in, out]).

    Same shapes, names and values (loading copies into the layout), only the strides change:
    `F.linear` then multiplies by a contiguous [in, out] matrix, which the CPU BLAS streams
    1.6-2x faster when a step has one or a few tokens (measured on the 2-core machine: a 1536x576
    projection 313 -> 200 us, the 49152x576 LM head 10.3 -> 5.1 ms at one token; whole SmolLM2 steps
    1.19x at 1 token, 1.12x at 5, 1.11x at 11: benchmarks/weight_layout.py). The tied embedding shares the head's layout (a row gather stays cheap).
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.is_contiguous() and module.weight.dim() == 2:
            w = module.weight
            module.weight = nn.Parameter(w.detach().t().contiguous().t(), requires_grad=w.requires_grad)
    if getattr(model, "lm_head", None) is not None and model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight


class Embedding(nn.Embedding):
    """nn.Embedding whose weights are left uninitialized (see Linear)."""

    def reset_parameters(self) -> None:
        pass


class Attention(nn.Module):
    def __init__(self, c: TransformerConfig, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.n_head, self.n_kv, self.d = c.num_attention_heads, c.kv_heads, c.head_size
        qkv_bias = c.attention_bias or c.qkv_bias
        self.q_proj = Linear(c.hidden_size, self.n_head * self.d, dtype, device, qkv_bias)
        self.k_proj = Linear(c.hidden_size, self.n_kv * self.d, dtype, device, qkv_bias)
        self.v_proj = Linear(c.hidden_size, self.n_kv * self.d, dtype, device, qkv_bias)
        self.o_proj = Linear(self.n_head * self.d, c.hidden_size, dtype, device, c.attention_bias)
        self.qk_norm = c.qk_norm
        if c.qk_norm:  # Qwen3: RMSNorm over each head's D features of q and k, before RoPE
            self.q_norm = RMSNorm(self.d, c.rms_norm_eps, dtype, device)
            self.k_norm = RMSNorm(self.d, c.rms_norm_eps, dtype, device)

    def qkv(self, x, cos, sin):
        """x: [B, T, C] -> q [B, H, T, D], k and v [B, Hkv, T, D], with RoPE applied to q and k."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.d)
        k = self.k_proj(x).view(B, T, self.n_kv, self.d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.d).transpose(1, 2)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def forward(self, x, cos, sin, mask, slots, k_cache, v_cache):
        # x: [B, T, C]; mask: [B, 1, T, S]; slots: [B, T]; k_cache, v_cache: [B, Hkv, S, D] (views into the cache)
        B, T, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)  # [B, H, T, D], [B, Hkv, T, D] x 2
        idx = slots[:, None, :, None].expand(B, self.n_kv, T, self.d)  # [B, Hkv, T, D]
        k_cache.scatter_(2, idx, k)  # the block's keys are written before attending
        v_cache.scatter_(2, idx, v)
        # y: [B, H, T, D]; query head h reads kv head h // (H / Hkv) (HF repeat_kv) without copying the cache
        y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=self.n_head != self.n_kv)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.d))


class MLP(nn.Module):
    def __init__(self, c: TransformerConfig, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, dtype, device, c.mlp_bias)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, dtype, device, c.mlp_bias)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, dtype, device, c.mlp_bias)

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


def window_mask(mask: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, window: int) -> torch.Tensor:
    """`mask` [B, 1, T, S] narrowed to a sliding window: token i also needs pos(i) - pos(slot) < window, where
    a cached slot s holds position s and the block's slots hold its `positions` [B, T] (HF's sliding mask)."""
    B, S = slots.shape[0], mask.shape[-1]
    kpos = torch.arange(S, device=slots.device).expand(B, S).scatter(1, slots, positions)  # [B, S]
    return mask & (positions[:, :, None] - kpos[:, None, :] < window)[:, None]


def tree_depth(tree_mask: torch.Tensor) -> torch.Tensor:
    """Depth of each block node: how many block tokens it attends, minus one. [B, T, T] -> [B, T]."""
    T = tree_mask.shape[-1]
    eye = torch.eye(T, dtype=torch.bool, device=tree_mask.device)
    return (tree_mask.to(torch.bool) | eye).sum(-1) - 1


class Transformer(nn.Module):
    """Llama-family decoder (llama, qwen2, qwen3, mistral) implementing the decspec `Model` protocol.

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
        column_major(self)
        self.windows = [config.window(i) for i in range(config.num_hidden_layers)]  # sliding window per layer, or None
        self.register_buffer("inv_freq", config.inv_freq(device), persistent=False)  # [D/2], not in the state dict (as in HF)
        self.requires_grad_(False)

    @classmethod
    def random(
        cls, config: TransformerConfig, seed: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> Transformer:
        """Deterministic HF-style init: normal(0, initializer_range) weights, unit norm weights, zero biases."""
        model = cls(config, dtype=dtype, device=device)
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():  # registration order; tied weights appear once
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
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
        if c.rope_type == "dynamic" and capacity > c.max_position_embeddings:
            raise ValueError(
                f"rope type 'dynamic' rescales RoPE beyond max_position_embeddings={c.max_position_embeddings}, which "
                f"decspec does not implement; use a cache of at most that many positions (asked: {capacity})"
            )
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
        keep: int | None = None,
        exit_norm: bool = True,
    ) -> ModelOutput:
        """Run tokens [B, T] after what `cache` holds. -> logits [B, T, V] (float32), hidden [B, T, C].

        positions: [B, T] RoPE positions; default start + i, or start + depth(i) with a tree_mask.
        keep: compute logits for the last `keep` positions only (logits [B, keep, V]), as HF's
        `logits_to_keep`: a prefill that needs the next-token distribution alone skips the LM head
        over the prompt (49k-vocabulary models spend as long there as in the layers).
        exit_norm: with exit_layer < num_layers, False feeds the head the raw output of the last layer run
        (the "logit lens", as Hugging Face's DoLa reads premature layers) instead of the final norm's.
        """
        layers = self.layers_to_run(exit_layer, skip_layers)
        slots = cache.write_tokens(tokens)  # [B, T]; raises CacheFull before anything is written
        out = self._run(tokens, cache, slots, layers, tree_mask, positions, keep, self._normed(exit_layer, exit_norm))
        cache.advance(tokens.shape[1], n_valid)
        return out

    def forward_at(
        self, tokens: torch.Tensor, cache: KVCache, start: torch.Tensor, *, exit_layer: int | None = None,
        skip_layers: tuple[int, ...] | None = None, tree_mask: torch.Tensor | None = None, exit_norm: bool = True,
    ) -> ModelOutput:
        """Roll row b back to start[b] and run tokens [B, T] there; then cache.length = start + T.

        The static-shape form of `forward` for compiled code: no host synchronization, no room
        check (the caller guarantees start + T <= capacity), every one of the T tokens counted.
        tree_mask [B, T, T]: as forward's (a token tree in the block, its RoPE positions by depth).
        """
        layers = self.layers_to_run(exit_layer, skip_layers)
        slots = start[:, None] + torch.arange(tokens.shape[1], device=tokens.device)[None, :]  # [B, T]
        cache.tokens.scatter_(1, slots, tokens)
        out = self._run(tokens, cache, slots, layers, tree_mask, None, norm=self._normed(exit_layer, exit_norm))
        cache.length.copy_(start + tokens.shape[1])
        return out

    logits_keep = True  # forward takes `keep` (backends/prefix.py asks only for the logits it reads)

    def _normed(self, exit_layer: int | None, exit_norm: bool) -> bool:
        return exit_norm or exit_layer is None or exit_layer >= self.num_layers

    def _run(self, tokens, cache, slots, layers, tree_mask, positions, keep=None, norm: bool = True) -> ModelOutput:
        """The layers over tokens [B, T] written at cache slots [B, T]. -> logits [B, T, V], hidden [B, T, C]"""
        if positions is None:
            positions = slots if tree_mask is None else slots[:, :1] + tree_depth(tree_mask)
        mask = attention_mask(slots, cache.capacity, tree_mask)  # [B, 1, T, S]
        masks = {w: window_mask(mask, slots, positions, w) for w in set(self.windows) if w is not None and w < cache.capacity}
        x = self.model.embed_tokens(tokens)  # [B, T, C]
        cos, sin = rope(positions, self.inv_freq, x.dtype)  # [B, 1, T, D]
        for i in layers:
            x = self.model.layers[i](x, cos, sin, masks.get(self.windows[i], mask), slots, cache.k[i], cache.v[i])
        hidden = self.model.norm(x) if norm else x  # [B, T, C]
        logits = self.lm_head(hidden if keep is None else hidden[:, -keep:]).float()  # [B, T, V] or [B, keep, V]
        return ModelOutput(logits, hidden)

    draft_lm_head: nn.Module | None = None  # set by set_draft_vocabulary
    quantization: str | None = None  # "int4" once stdlib/models/quant.py's quantize ran

    def set_draft_vocabulary(self, ids: torch.Tensor | None) -> None:
        """Make the model's draft heads (and drafts sharing its LM head) propose only the token ids `ids` [N]
        (a SubsetHead, stdlib/models/heads.py: FR-Spec's frequency-ranked draft vocabulary); None: all tokens.
        The model's own logits keep the whole vocabulary. Kept out of the state dict, as the heads are."""
        from decspec.stdlib.models.heads import SubsetHead

        self.__dict__["draft_lm_head"] = None if ids is None else SubsetHead(self.lm_head, ids)
        if ids is not None and self.quantization is not None:  # its rows of a quantized LM head, quantized alike
            from decspec.stdlib.models.quant import quantize_layer

            quantize_layer(self.draft_lm_head, "int8")

    @property
    def drafting_head(self) -> nn.Module:
        """The LM head the model's draft heads (Medusa, Hydra, EAGLE) turn features into logits with."""
        return self.lm_head if self.draft_lm_head is None else self.draft_lm_head

    def draft_head(self, kind: str):
        if kind not in self.heads:
            have = ", ".join(self.heads) or "none"
            raise ValueError(f"this model has no {kind} heads (it has: {have}); train them with decspec.stdlib.models.train")
        return self.heads[kind]

    def medusa(self, hidden: torch.Tensor) -> torch.Tensor:
        """Medusa heads on the final hidden state h_t [..., C] -> logits [..., k, V] for tokens t+2 .. t+k+1."""
        return self.draft_head("medusa")(hidden, self.drafting_head)

    def medusa_head(self, hidden: torch.Tensor, i: int) -> torch.Tensor:
        """Medusa head i alone (0-based): hidden h_t [..., C] -> logits [..., V] for token t+i+2."""
        return self.draft_head("medusa").head(hidden, i, self.drafting_head)

    def hydra_step(self, i: int, state: torch.Tensor, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hydra head i (0-based). state: z_i [B, C] (z_0 = h_t); token: y_{t+i+1} [B]
        -> (z_{i+1} [B, C], logits [B, V] for token t+i+2)."""
        heads = self.draft_head("hydra")
        state, feats = heads.step(i, state, self.model.embed_tokens(token))
        return state, self.drafting_head(feats).float()
