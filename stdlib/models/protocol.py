"""The model protocol every decoder talks to, and the cache base class.

A model maps a batch of new tokens, appended to what its cache already holds, to next-token
logits at each new position:

    cache = model.new_cache(batch=2, capacity=64)
    out = model.forward(tokens, cache)            # tokens: [B, T] -> out.logits: [B, T, V]
    cache.rollback(keep)                          # O(1): forget every position >= keep[b]
    cache.reorder(index)                          # row b becomes a copy of row index[b] (beam search)
    cache.commit_path(start, path, n)             # after a tree_mask forward: keep one accepted path

Caches are static: buffers are preallocated once for `capacity` positions and never resized.
Each row b has its own length (`cache.length[b]`), so ragged batches need no padding on the
left: row b's new tokens are written at positions length[b] .. length[b]+T-1. `n_valid[b]` (<= T)
says how many of row b's T tokens are real; the rest are padding that is written but not
counted (length[b] advances by n_valid[b]) and is overwritten before anything attends to it.

The cache also records the token id written at every position (`cache.tokens`), so the runtime
can find the longest common prefix between what a cache holds and the sequence it needs, and
roll back to it instead of recomputing (see decspec.backends.prefix).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, T, V] float32
    hidden: torch.Tensor | None = None  # [B, T, D] last hidden state fed to the head, when the model has one


class Cache:
    """Per-row token history with O(1) rollback. Subclasses add their own state (K/V buffers)."""

    def __init__(self, batch: int, capacity: int, device: torch.device | str = "cpu"):
        self.batch = batch
        self.capacity = capacity
        self.tokens = torch.zeros(batch, capacity, dtype=torch.long, device=device)  # [B, S]
        self.length = torch.zeros(batch, dtype=torch.long, device=device)  # [B]

    def positions(self, T: int) -> torch.Tensor:
        """Positions the next T tokens of each row are written at. -> [B, T]"""
        return self.length[:, None] + torch.arange(T, device=self.length.device)[None, :]

    def check_room(self, T: int) -> None:
        need = int(self.length.max()) + T if self.batch else T
        if need > self.capacity:
            raise CacheFull(need, self.capacity)

    def write_tokens(self, tokens: torch.Tensor, n_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Record tokens [B, T] at the rows' next positions (padding included). Returns positions [B, T].

        Lengths do not change here; `advance` does that once the model has run. `n_valid` is
        accepted for backward compatibility and ignored: every one of the T tokens is written.
        """
        B, T = tokens.shape
        self.check_room(T)
        pos = self.positions(T)
        self.tokens.scatter_(1, pos, tokens)
        return pos

    def advance(self, T: int, n_valid: torch.Tensor | None = None) -> None:
        self.length += T if n_valid is None else n_valid

    def rollback(self, keep: torch.Tensor) -> None:
        """Forget positions >= keep[b] in every row. O(1): only lengths change (in place)."""
        torch.minimum(self.length, keep.to(self.length), out=self.length)

    def reorder(self, index: torch.Tensor) -> None:
        """Make row b a copy of row index[b] (beam search: each kept hypothesis continues its parent's).

        index: [B] long. Every per-row buffer is gathered in place (static buffers keep their identity).
        A subclass with per-row state of its own (K/V) must override this and call it; the beam runtime
        trusts `reorder` only on this class and on subclasses that override it.
        """
        index = index.to(self.length.device)
        self.tokens.copy_(self.tokens.index_select(0, index))
        self.length.copy_(self.length.index_select(0, index))

    def commit_path(self, start: torch.Tensor, path: torch.Tensor, n: torch.Tensor) -> None:
        """Keep one root-to-node path of a tree block written at positions start[b] ...

        After a forward with a tree_mask, block node i of row b sits at position start[b] + i.
        path: [B, P] block indices of the accepted nodes, root first (node d has depth d; P <= T);
        n: [B] how many of them to keep (entries of path at d >= n[b] are ignored). Moves node
        path[b, d] to position start[b] + d and sets length[b] = start[b] + n[b]: the cache then
        holds exactly what decoding the path token by token would have written.
        """
        src, dst = self._path_slots(start, path, n)
        self.tokens.scatter_(1, dst, self.tokens.gather(1, src))
        self.length.copy_(start.to(self.length) + n.to(self.length))

    def _path_slots(self, start: torch.Tensor, path: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(src, dst) positions [B, P] for commit_path; unkept entries copy a position onto itself."""
        start = start.to(self.length)
        d = torch.arange(path.shape[1], device=self.length.device)[None, :]  # [1, P]
        dst = start[:, None] + d  # [B, P]
        src = start[:, None] + torch.where(d < n.to(self.length)[:, None], path.to(self.length), d)
        return src, dst


class CacheFull(RuntimeError):
    def __init__(self, need: int, capacity: int):
        super().__init__(f"sequence needs {need} positions but the cache holds {capacity}")
        self.need, self.capacity = need, capacity


@runtime_checkable
class Model(Protocol):
    """What decspec needs from a model.

    vocab_size: number of logits per position.
    eos_token_id: the end-of-sequence token, or None. A model may also have `eos_token_ids`: every id its
    sequences end at (a generation_config.json may list several); see `eos_token_ids`.
    max_positions: the longest sequence the model supports (None: unbounded).
    num_layers: transformer depth (for early exit / layer skipping), or None.
    """

    vocab_size: int
    eos_token_id: int | None
    max_positions: int | None
    num_layers: int | None

    def new_cache(self, batch: int, capacity: int) -> Cache: ...

    def forward(
        self,
        tokens: torch.Tensor,  # [B, T] long
        cache: Cache,
        *,
        n_valid: torch.Tensor | None = None,  # [B] long, <= T; default: all T are real
        exit_layer: int | None = None,  # run the first `exit_layer` layers, then the shared norm + head
        skip_layers: tuple[int, ...] | None = None,  # layers to skip (self-speculation)
        tree_mask: torch.Tensor | None = None,  # [B, T, T] bool: new token i may attend new token j
    ) -> ModelOutput: ...


def eos_token_ids(model: object) -> tuple[int, ...] | None:
    """The ids a model's sequences end at by default, as Hugging Face `generate` takes them from the
    generation_config: the model's `eos_token_ids` when it has them and they include its `eos_token_id` (a caller
    who set eos_token_id to another id, or to None, meant that one), else its one eos_token_id, else None.

    >>> from decspec.stdlib.models.table import TableModel
    >>> m = TableModel.random(8, 1, seed=0, eos_token_id=2)
    >>> m.eos_token_ids = (2, 5)
    >>> eos_token_ids(m), (setattr(m, "eos_token_id", 3), eos_token_ids(m))[1]
    ((2, 5), (3,))
    """
    eos = getattr(model, "eos_token_id", None)
    if eos is None:
        return None
    ids = tuple(getattr(model, "eos_token_ids", None) or ())
    return tuple(dict.fromkeys(ids)) if eos in ids else (eos,)
