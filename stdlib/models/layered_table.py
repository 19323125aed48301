"""A table model with layers and draft heads: what self-speculation and draft heads need, small enough to test exactly.

`LayeredTableModel` is a `TableModel` (same logits, same forward at full depth, so
`LayeredTableModel.random(V, n, seed)` decodes exactly as `TableModel.random(V, n, seed)`) that also:

- has `num_layers` layers: the table is the sum of per-layer tables, and a forward with
  `exit_layer` / `skip_layers` sums only the layers it runs (the early-exit and layer-skipped views of
  stdlib/models/views.py work on it);
- returns a hidden state: at each position, its last H = max(order, 1) tokens (as floats);
- carries Medusa and Hydra heads as tables: Medusa head i reads the hidden state; Hydra head i reads
  a window of H tokens that moves through each token it is given;
- carries an EAGLE stand-in (`eagle_draft`): draft s reads the window of features the EAGLE ops pass
  (the oldest through a bias table, the newest moved through the context's last token and the drafts
  so far, as Hydra's), so its q depends on the features and on the drafted tokens.

    >>> model = LayeredTableModel.random(vocab=4, order=1, seed=0)
    >>> torch.equal(model.logits, TableModel.random(4, 1, seed=0).logits)
    True
    >>> cache = model.new_cache(batch=1, capacity=8)
    >>> out = model.forward(torch.tensor([[2, 3]]), cache, exit_layer=1)
    >>> torch.allclose(out.logits[0, 1], model.layers[0][3]), out.hidden[0].tolist()
    (True, [[2.0], [3.0]])
    >>> model.medusa(out.hidden[:, -1]).shape, model.draft_head("hydra").num_heads
    (torch.Size([1, 4, 4]), 4)
"""
from __future__ import annotations

import torch

from decspec.stdlib.models.protocol import Cache, ModelOutput
from decspec.stdlib.models.table import TableModel


class TableHeads:
    """k heads as logit tables [k, V^H..., V] (Medusa: indexed by the hidden window; Hydra: by the moved window)."""

    def __init__(self, kind: str, tables: torch.Tensor):
        self.kind, self.tables, self.num_heads = kind, tables, tables.shape[0]


class LayeredTableModel(TableModel):
    def __init__(self, logits: torch.Tensor, eos_token_id: int | None = None, *, num_layers: int = 4, num_heads: int = 4,
                 seed: int = 0, noise: float = 1.0):
        super().__init__(logits, eos_token_id)
        gen = torch.Generator().manual_seed(seed)
        V, L = self.vocab_size, num_layers
        full = logits.double()
        # each layer adds a share of the logits plus noise; the last layer's table makes the sum the model's own
        parts = [full / L + noise * torch.randn(full.shape, generator=gen, dtype=torch.float64) for _ in range(L - 1)]
        self.layers = torch.stack(parts + [full - sum(parts, torch.zeros_like(full))]).to(logits.dtype)  # [L, V^n..., V]
        self.num_layers = L
        self.hidden_width = H = max(self.order, 1)
        head_shape = (num_heads,) + (V,) * (H + 1)
        self.heads = {kind: TableHeads(kind, torch.randn(head_shape, generator=gen, dtype=torch.float64).to(logits.dtype))
                      for kind in ("medusa", "hydra")}
        self.heads["eagle"] = TableHeads("eagle", torch.randn(head_shape, generator=gen, dtype=torch.float64).to(logits.dtype))
        self.eagle_bias = torch.randn(V, V, generator=gen, dtype=torch.float64).to(logits.dtype)  # [V (oldest feature's token), V]
        self._partial: dict[tuple[int, ...], TableModel] = {}

    @classmethod
    def random(cls, vocab: int, order: int, seed: int, *, temperature: float = 1.0, eos_token_id: int | None = None,
               dtype: torch.dtype = torch.float32, num_layers: int = 4, num_heads: int = 4) -> "LayeredTableModel":
        """TableModel.random's logits (the same for the same seed), with random layer and head tables."""
        base = TableModel.random(vocab, order, seed, temperature=temperature, eos_token_id=eos_token_id, dtype=dtype)
        return cls(base.logits, eos_token_id, num_layers=num_layers, num_heads=num_heads, seed=seed + 1_000_003)

    def layers_to_run(self, exit_layer: int | None, skip_layers: tuple[int, ...] | None) -> list[int]:
        L = self.num_layers
        if exit_layer is not None and not 0 <= exit_layer <= L:
            raise ValueError(f"exit_layer={exit_layer} is outside 0..{L}")
        if any(not 0 <= i < L for i in skip_layers or ()):
            raise ValueError(f"skip_layers={tuple(skip_layers)} names a layer outside 0..{L - 1}")
        return [i for i in range(L if exit_layer is None else exit_layer) if i not in set(skip_layers or ())]

    def table(self, layers: tuple[int, ...]) -> TableModel:
        """The model running only `layers`: a TableModel of their summed tables."""
        if len(layers) == self.num_layers:
            return self
        if layers not in self._partial:
            self._partial[layers] = TableModel(self.layers[list(layers)].sum(0) if layers else torch.zeros_like(self.logits))
        return self._partial[layers]

    def forward(self, tokens: torch.Tensor, cache: Cache, *, n_valid=None, exit_layer=None, skip_layers=None,
                tree_mask=None, exit_norm: bool = True) -> ModelOutput:
        """Logits [B, T, V] after the layers that run; hidden [B, T, H]: each position's last H tokens (None with a tree_mask).
        A table has no final norm: `exit_norm` changes nothing."""
        start = cache.length.clone()  # [B]
        run = self.table(tuple(self.layers_to_run(exit_layer, skip_layers)))
        logits = TableModel.forward(run, tokens, cache, n_valid=n_valid, tree_mask=tree_mask).logits
        if tree_mask is not None:
            return ModelOutput(logits)
        T, H = tokens.shape[1], self.hidden_width
        pos = start[:, None, None] + torch.arange(T)[None, :, None] - torch.arange(H - 1, -1, -1)[None, None, :]  # [B, T, H]
        window = cache.tokens.gather(1, pos.clamp(min=0).flatten(1)).view(pos.shape)
        return ModelOutput(logits, torch.where(pos >= 0, window, 0).to(self.logits.dtype))

    def draft_head(self, kind: str) -> TableHeads:
        if kind not in self.heads:
            raise ValueError(f"this model has no {kind} heads")
        return self.heads[kind]

    def medusa(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [..., k, V]: head i's table at the hidden window."""
        idx = hidden.long().unbind(-1)
        return self.heads["medusa"].tables[(slice(None), *idx)].movedim(0, -2)

    def eagle_draft(self, features: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, drafts: torch.Tensor, last: int) -> torch.Tensor:
        """The EAGLE stand-in's logits of drafts 0 .. last. features: [B, W, H] (hidden windows at L-1-W .. L-2, zeros
        before the context); tokens: [B, W] the token after each (the last: the context's last token); drafts: [B, K].
        Draft s: eagle table min(s, k-1) at the newest feature moved through tokens[:, -1], drafts[:, :s], plus a bias
        row chosen by the oldest feature's last token. -> [B, last+1, V]"""
        tables = self.heads["eagle"].tables
        bias = self.eagle_bias[features[:, 0, -1].long()]  # [B, V]
        window, out = features[:, -1], []
        for s in range(last + 1):
            token = tokens[:, -1] if s == 0 else drafts[:, s - 1]
            window = torch.cat([window[:, 1:], token[:, None].to(window)], 1)
            out.append(tables[(min(s, tables.shape[0] - 1), *window.long().unbind(-1))] + bias)
        return torch.stack(out, 1)

    def hydra_step(self, i: int, state: torch.Tensor, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """state: a window of H tokens [B, H]; token [B] -> (the window moved by the token, head i's logits [B, V] there)."""
        window = torch.cat([state[:, 1:], token[:, None].to(state)], 1)
        return window, self.heads["hydra"].tables[(i, *window.long().unbind(-1))]
