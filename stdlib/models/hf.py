"""Any Hugging Face `transformers` causal LM behind decspec's Model protocol.

    target = HFModel.from_pretrained("path/to/model-dir")           # or HFModel(AutoModelForCausalLM...)
    cache = target.new_cache(batch=2, capacity=128)
    out = target.forward(tokens, cache)                              # tokens: [B, T] -> out.logits: [B, T, V]
    dec = decspec.compile("specs/speculative_greedy.dec", target=target, draft=HFModel.from_pretrained(...))

The semantics are those of decspec's built-in `Transformer` (positions, n_valid, tree_mask,
exit_layer, commit_path; see its module docstring); only the cache layout differs.

Cache layout. A transformers `DynamicCache` has one physical length shared by all rows, but decspec
rows are ragged and roll back independently. So `HFCache` keeps, for every physical slot p,
`logical[b, p]`: the position row b stores there, or -1 when the slot holds nothing valid for that
row. Each forward appends the new tokens of every row at the physical end (row b's token i gets
RoPE position length[b] + i) and passes a 2-D attention mask [B, P+T] that is 1 exactly on the
row's valid slots. Every cached slot precedes every new one physically, so HF's causal mask over
physical order is decspec's causal order; the order of the cached slots among themselves never
matters (attention is a set operation once RoPE is baked into the keys). Hence:
  - rollback(keep) marks slots with logical >= keep[b] invalid and crops the physical tail no row
    uses: no recomputation, no copy;
  - padding beyond n_valid[b] is written, then marked invalid;
  - commit_path relabels the accepted nodes' slots (logical start+d) and invalidates the rest: no
    K/V moves;
  - when the physical length would pass `capacity`, the valid slots are compacted to the left (one
    gather per layer), so the physical store never exceeds the capacity the caller asked for.

Limits. The "sdpa" or "eager" attention implementation. Full attention, or sliding-window attention
on caches no longer than the window (HF windows over physical slots, which holes would skew; within
the window nothing is cut off, so the result is exact). `exit_layer` gives the right distribution for
Llama-like models (`model.model.norm` + LM head) but no speed-up: transformers runs every layer.
`skip_layers` is supported by the built-in Transformer only.

`transformers` is an optional dependency: this module imports without it; constructing or
loading a model needs it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.protocol import Cache, ModelOutput
from decspec.stdlib.models.transformer import tree_depth

INSTALL = "pip install 'decspec[hf]'"
ATTENTION = ("sdpa", "eager")  # implementations that take our 2-D and 4-D masks as given
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise DecError(f"decspec's Hugging Face adapter needs the `transformers` package: {INSTALL}") from None
    return transformers


class HFCache(Cache):
    """A transformers DynamicCache plus the logical position of each physical slot, per row.

    kv: the DynamicCache (layers[i].keys / .values: [B, Hkv, P, D]); logical: [B, capacity] long
    (-1: slot unused by that row); physical: P, the slots in use.

    >>> cache = HFCache(batch=2, capacity=16)
    >>> cache.logical.shape, cache.physical
    (torch.Size([2, 16]), 0)
    """

    def __init__(self, batch: int, capacity: int, device: torch.device | str = "cpu"):
        super().__init__(batch, capacity, device=device)
        self.kv = _transformers().DynamicCache()
        self.logical = torch.full((batch, capacity), -1, dtype=torch.long, device=device)  # [B, S]
        self.physical = 0

    def valid(self) -> torch.Tensor:
        """Which physical slots each row may attend. -> [B, P] bool"""
        return self.logical[:, : self.physical] >= 0

    def append(self, slots: torch.Tensor, n_valid: torch.Tensor | None) -> None:
        """Record that the last forward appended T slots holding logical positions slots [B, T]."""
        B, T = slots.shape
        P = self.physical
        if self.kv.get_seq_length() != P + T:
            raise RuntimeError(f"the model wrote {self.kv.get_seq_length() - P} cache slots for {T} tokens")
        block = self.logical[:, P:P + T]
        block.copy_(slots)
        if n_valid is not None:  # padding is written but never attended
            pad = torch.arange(T, device=slots.device)[None, :] >= n_valid.to(slots)[:, None]
            block.masked_fill_(pad, -1)
        self.physical = P + T

    def make_room(self, T: int) -> None:
        """Compact if T more slots would not fit in `capacity`: move each row's valid slots to the left."""
        P = self.physical
        if P + T <= self.capacity:
            return
        valid = self.valid()  # [B, P]
        keep = int(valid.sum(1).max())  # <= max(length) <= capacity - T (check_room passed)
        order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :keep]  # [B, keep]: valid first
        self.logical[:, :keep] = self.logical[:, :P].gather(1, order)
        self.logical[:, keep:P] = -1
        for layer in self.kv.layers:
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            B, H = layer.keys.shape[:2]
            for name in ("keys", "values"):
                buf = getattr(layer, name)  # [B, H, P, D]
                setattr(layer, name, buf.gather(2, order[:, None, :, None].expand(B, H, keep, buf.shape[-1])))
        self.physical = keep

    def crop(self) -> None:
        """Drop the physical tail that no row uses (views only: DynamicCache.crop slices)."""
        used = self.valid().any(0).nonzero()
        keep = int(used[-1]) + 1 if len(used) else 0
        if keep < self.physical:
            self.kv.crop(keep - self.physical)  # transformers 5: a negative count of slots to remove
            self.physical = keep

    def rollback(self, keep: torch.Tensor) -> None:
        super().rollback(keep)
        logical = self.logical[:, : self.physical]
        logical.masked_fill_(logical >= self.length[:, None], -1)
        self.crop()

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.logical.device)
        self.kv.reorder_cache(index)  # every layer's keys / values [B, Hkv, P, D] along B
        self.logical.copy_(self.logical.index_select(0, index))
        super().reorder(index)

    def commit_path(self, start: torch.Tensor, path: torch.Tensor, n: torch.Tensor) -> None:
        src, dst = self._path_slots(start, path, n)  # [B, Q] logical positions
        start = start.to(self.length)
        kept = torch.arange(src.shape[1], device=src.device)[None, :] < n.to(src)[:, None]  # [B, Q]
        logical = self.logical[:, : self.physical]  # [B, P]
        match = logical[:, None, :] == src[:, :, None]  # [B, Q, P]
        if not bool(match.any(-1)[kept].all()):
            raise ValueError("commit_path: a path node is not in the cache (call it right after the tree forward)")
        phys = match.int().argmax(-1)  # [B, Q] physical slot of each path node
        rows = torch.arange(self.batch, device=src.device)[:, None].expand_as(phys)
        logical.masked_fill_(logical >= start[:, None], -1)
        logical[rows[kept], phys[kept]] = dst[kept]  # node path[d] now stands at position start + d
        super().commit_path(start, path, n)
        self.crop()


def _first(x: Any) -> int | None:
    if isinstance(x, (list, tuple)):
        return int(x[0]) if x else None
    return None if x is None else int(x)


class HFModel:
    """A transformers causal LM (a PreTrainedModel taking input_ids, attention_mask, position_ids,
    past_key_values) as a decspec Model. The model is put in eval mode; decoding runs under no_grad.

    vocab_size: the LM head's output size; eos_token_id: generation_config's, else config's, else the
    tokenizer's (the first of a list); eos_token_ids: all of generation_config's (else config's) list;
    max_positions / num_layers: from the config (None if absent);
    tokenizer: a decspec Tokenizer (a transformers tokenizer passed in is wrapped), or None.

    >>> import transformers
    >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
    >>> model = HFModel(transformers.LlamaForCausalLM(config))
    >>> model.forward(torch.tensor([[1, 2, 3]]), model.new_cache(1, 8)).logits.shape
    torch.Size([1, 3, 64])
    """

    def __init__(self, model: Any, tokenizer: Any = None):
        _transformers()
        config = model.config
        name = type(model).__name__
        attn = getattr(config, "_attn_implementation", None) or "eager"
        if attn not in ATTENTION:
            raise DecError(
                f"{name} uses attn_implementation={attn!r}; decspec needs explicit attention masks: load it with "
                f"attn_implementation=\"sdpa\" (or \"eager\")"
            )
        layer_types = set(getattr(config, "layer_types", None) or ())
        if layer_types - {"full_attention", "sliding_attention"}:
            raise DecError(
                f"{name} has {sorted(layer_types)} layers; decspec's HF adapter supports full and sliding-window attention only"
            )
        window = getattr(config, "sliding_window", None)
        sliding = "sliding_attention" in layer_types or (not layer_types and getattr(config, "use_sliding_window", True))
        self.sliding_window: int | None = window if window and sliding else None
        head = model.get_output_embeddings()
        self.hf_model = model.eval()
        self.vocab_size = int(getattr(head, "out_features", 0) or getattr(config, "vocab_size"))
        self.tokenizer = _as_tokenizer(tokenizer, getattr(config, "_name_or_path", "") or name)
        generation = getattr(model, "generation_config", None)
        eos = _first(getattr(generation, "eos_token_id", None))
        eos = eos if eos is not None else _first(getattr(config, "eos_token_id", None))
        self.eos_token_id = eos if eos is not None else getattr(self.tokenizer, "eos_token_id", None)
        every = getattr(generation, "eos_token_id", None)  # every EOS id: one, or a list
        every = every if every is not None else getattr(config, "eos_token_id", None)
        self.eos_token_ids = tuple(int(i) for i in (every if isinstance(every, (list, tuple)) else [] if every is None else [every]))
        self.max_positions = getattr(config, "max_position_embeddings", None)
        self.num_layers = getattr(config, "num_hidden_layers", None)

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.dtype

    @property
    def device(self) -> torch.device:
        return self.hf_model.device

    def __repr__(self) -> str:
        return f"HFModel({type(self.hf_model).__name__}, vocab={self.vocab_size}, layers={self.num_layers})"

    def new_cache(self, batch: int, capacity: int) -> HFCache:
        if self.sliding_window is not None and capacity > self.sliding_window:
            raise DecError(
                f"{type(self.hf_model).__name__} attends a sliding window of {self.sliding_window} tokens but this cache holds "
                f"{capacity}; decspec's HF adapter runs sliding-window models only on sequences that fit in the window"
            )
        return HFCache(batch, capacity, device=self.device)

    @torch.no_grad()
    def forward(
        self,
        tokens: torch.Tensor,
        cache: HFCache,
        *,
        n_valid: torch.Tensor | None = None,
        exit_layer: int | None = None,
        skip_layers: tuple[int, ...] | None = None,
        tree_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        exit_norm: bool = True,
    ) -> ModelOutput:
        """Run tokens [B, T] after what `cache` holds. -> logits [B, T, V] (float32), hidden [B, T, C].

        positions: [B, T] RoPE positions; default start + i, or start + depth(i) with a tree_mask.
        exit_norm: as Transformer.forward's (False: the head reads hidden_states[exit_layer] as it is).
        """
        if skip_layers:
            raise ValueError("skip_layers: layer skipping is supported by decspec's built-in Transformer only, not by HFModel")
        L = self.num_layers
        if exit_layer is not None and (L is None or not 0 <= exit_layer <= L):
            raise ValueError(f"exit_layer={exit_layer} is outside 0..{L}")
        early = exit_layer is not None and exit_layer < L
        if early:
            norm, head = getattr(getattr(self.hf_model, "model", None), "norm", None), self.hf_model.get_output_embeddings()
            if norm is None or head is None:
                raise ValueError(
                    f"exit_layer needs a Llama-like model with model.model.norm and an LM head; "
                    f"{type(self.hf_model).__name__} has none"
                )
        slots = cache.write_tokens(tokens)  # [B, T] logical positions; raises CacheFull before anything is written
        B, T = tokens.shape
        cache.make_room(T)
        valid = cache.valid()  # [B, P]
        if tree_mask is None:
            mask = torch.cat([valid, valid.new_ones(B, T)], 1).long()  # [B, P+T]; HF adds the causal part
        else:
            block = tree_mask.to(torch.bool) | torch.eye(T, dtype=torch.bool, device=tokens.device)  # [B, T, T]
            allowed = torch.cat([valid[:, None, :].expand(B, T, valid.shape[1]), block], 2)[:, None]  # [B, 1, T, P+T]
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=tokens.device)  # 4-D masks pass through as-is
            mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        if positions is None:
            positions = slots if tree_mask is None else slots[:, :1] + tree_depth(tree_mask)
        out = self.hf_model(
            input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache.kv,
            use_cache=True, output_hidden_states=True,
        )
        cache.append(slots, n_valid)
        if early:  # hidden_states[L]: after L layers (index 0 is the embeddings)
            hidden = norm(out.hidden_states[exit_layer]) if exit_norm else out.hidden_states[exit_layer]  # [B, T, C]
            logits = head(hidden)
        else:
            hidden, logits = out.hidden_states[-1], out.logits  # hidden_states[-1] is the final-norm output
        cache.advance(T, n_valid)
        return ModelOutput(logits.float(), hidden)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
        gguf_file: str | None = None,
    ) -> HFModel:
        """A model directory (config.json + weights, optional tokenizer), a Hub id, or a GGUF file -> HFModel.

        GGUF: `from_pretrained("dir", gguf_file="model.gguf")` as in transformers, or the .gguf path
        itself; transformers dequantizes it (needs the `gguf` package).
        Every failure raises DecError naming the path and the fix.
        """
        transformers = _transformers()
        local = Path(path).expanduser()
        if gguf_file is None and local.suffix == ".gguf":
            local, gguf_file = local.parent, local.name
        source = str(path)
        extra: dict[str, Any] = {}
        if gguf_file is not None:
            from decspec.stdlib.models.gguf import open_gguf

            open_gguf(local / gguf_file)  # missing or not a GGUF file: DecError before transformers sees it
            source, extra = str(local), {"gguf_file": gguf_file}
        elif local.exists() or not _is_hub_id(source):
            _check_dir(local)
            source = str(local)
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
        except Exception as e:
            if local.exists():
                raise DecError(
                    f"cannot load the model in {source}{' / ' + gguf_file if gguf_file else ''}: {_reason(e)}",
                    hint="check that config.json and the weights are complete: re-save (model.save_pretrained(DIR)) or re-download"
                    if gguf_file is None else "GGUF loading in transformers needs `pip install gguf accelerate`",
                ) from None
            raise DecError(
                f"cannot load {source}: it is not a local directory, and the Hugging Face Hub did not provide it ({_reason(e)})",
                hint="check the model id and your connection, or pass a local model directory (config.json + weights)",
            ) from None
        model.to(device)
        return cls(model, _load_tokenizer(transformers, source, local if local.exists() else None, **extra))


def _is_hub_id(s: str) -> bool:
    """'gpt2' or 'owner/name': something only the Hub (or its local cache) can provide."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", s) is not None and not s.startswith(".")


def _check_dir(path: Path) -> None:
    from decspec.stdlib.models.pretrained import read_config

    read_config(path)  # a missing directory, a file, no or bad config.json: DecError naming the path


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first[:300]}"


def _load_tokenizer(transformers: Any, source: str, local: Path | None, **extra: Any) -> Any:
    """AutoTokenizer for the model, if it has one; a local tokenizer that fails to load is an error."""
    if local is not None and not extra and not any((local / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(source, **extra)
    except Exception as e:
        if local is None:
            return None  # a Hub model without a tokenizer
        raise DecError(
            f"cannot load the tokenizer in {local}: {_reason(e)}", hint="re-save it with tokenizer.save_pretrained(DIR) or remove its files"
        ) from None


def _as_tokenizer(tokenizer: Any, name: str) -> Any:
    """A decspec Tokenizer (what Decoder.generate uses for text), wrapping a transformers tokenizer."""
    if tokenizer is None:
        return None
    from decspec.stdlib.models.tokenizer import Tokenizer

    return tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_transformers(tokenizer, name=name)
