"""Model views: one model's early exit or layer-skipped variant behind the plain protocol.

A view is a Model in its own right, so any draft source that takes a model can draft with it:

    target = reference_models()["target"]
    decspec.compile("specs/speculative.dec", target=target, draft=EarlyExit(target, layer=2))

is self-speculative decoding (LayerSkip / Draft & Verify): the draft is the target's first two
layers plus its shared final norm and head. The view keeps its own cache (only the layers it runs),
so target and draft never see each other's stale K/V.
"""
from __future__ import annotations

import torch

from decspec.stdlib.models.protocol import Cache, ModelOutput


class _View(torch.nn.Module):
    """A Module (holding the model as a submodule when it is one), so compiled and exported rounds take it as a model."""

    def __init__(self, model, layers: list[int]):
        super().__init__()
        self.model = model
        self.vocab_size = model.vocab_size
        self.eos_token_id = model.eos_token_id
        self.max_positions = model.max_positions
        self.num_layers = len(layers)
        self.tokenizer = getattr(model, "tokenizer", None)
        self.logits_keep = getattr(model, "logits_keep", False)  # forward passes `keep` on when the model takes it

    def new_cache(self, batch: int, capacity: int) -> Cache:
        return self.model.new_cache(batch, capacity)

    def forward_at(self, tokens: torch.Tensor, cache: Cache, start: torch.Tensor) -> ModelOutput:
        """The static-shape step at this view's layers (Transformer.forward_at), for compiled rounds;
        models without one roll back and run `forward`."""
        if hasattr(self.model, "forward_at"):
            return self.model.forward_at(tokens, cache, start, **self._view_args())
        cache.rollback(start)
        return self.forward(tokens, cache)


class EarlyExit(_View):
    """The first `layer` layers of `model`, then its final norm and head.

    >>> from decspec.stdlib.models.default import random_models
    >>> target = random_models()["target"]
    >>> EarlyExit(target, layer=2).num_layers
    2
    """

    def __init__(self, model, layer: int, norm: bool = True):
        L = getattr(model, "num_layers", None)
        if L is None or not 0 <= layer <= L:
            raise ValueError(f"early exit at layer {layer}: the model has {L} layers (choose 0..{L})")
        super().__init__(model, list(range(layer)))
        self.layer = layer
        self.norm = norm  # False: the head reads the layer's raw output (the logit lens; DoLa's premature layers)

    def forward(self, tokens: torch.Tensor, cache: Cache, *, n_valid=None, exit_layer=None, skip_layers=None, tree_mask=None,
                **keep) -> ModelOutput:
        if exit_layer is not None and exit_layer > self.layer:
            raise ValueError(f"exit_layer={exit_layer} is deeper than this early-exit view ({self.layer} layers)")
        return self.model.forward(
            tokens, cache, n_valid=n_valid, exit_layer=self.layer if exit_layer is None else exit_layer,
            skip_layers=skip_layers, tree_mask=tree_mask, **keep, **self._norm_args(),
        )

    def _norm_args(self) -> dict:
        return {} if self.norm else {"exit_norm": False}  # only when asked: models without the keyword keep working

    def _view_args(self) -> dict:
        return {"exit_layer": self.layer, **self._norm_args()}

    def __repr__(self) -> str:
        lens = "" if self.norm else ", norm=False"
        return f"EarlyExit({getattr(self.model, 'name', type(self.model).__name__)}, layer={self.layer}{lens})"


class SkipLayers(_View):
    """`model` with the listed layers left out (SWIFT / Draft & Verify style self-drafting)."""

    def __init__(self, model, layers: tuple[int, ...]):
        L = getattr(model, "num_layers", None)
        layers = tuple(sorted(set(layers)))
        if L is None or any(not 0 <= i < L for i in layers) or len(layers) >= L:
            raise ValueError(f"skip_layers={layers}: the model has layers 0..{(L or 0) - 1} and must keep at least one")
        super().__init__(model, [i for i in range(L) if i not in layers])
        self.skip = layers

    def forward(self, tokens: torch.Tensor, cache: Cache, *, n_valid=None, exit_layer=None, skip_layers=None, tree_mask=None,
                **keep) -> ModelOutput:
        skip = tuple(sorted(set(self.skip) | set(skip_layers or ())))
        return self.model.forward(tokens, cache, n_valid=n_valid, exit_layer=exit_layer, skip_layers=skip, tree_mask=tree_mask, **keep)

    def _view_args(self) -> dict:
        return {"skip_layers": self.skip}

    def __repr__(self) -> str:
        return f"SkipLayers({getattr(self.model, 'name', type(self.model).__name__)}, skip={self.skip})"
