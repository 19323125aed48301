"""Eager rules of the draft-head ops: the hidden state the heads read, and the heads' logits."""
from __future__ import annotations

import torch

from decspec.stdlib.heads import head_logits as draft_head_logits


def model_hidden(state, op, ctx):
    """h at position L-2 of each row, from the model's PrefixCache (kept from its last forward over it). -> [B, C]"""
    return (state.sessions[op.param("model")].hidden(ctx.tokens, ctx.length),)


def last_tokens(tokens: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Each row's last committed token. tokens: [B, S], length: [B] -> [B]"""
    return tokens.gather(1, (length - 1).clamp(min=0)[:, None]).squeeze(1)


def head_logits(state, op, hidden, ctx, drafts, step):
    """The logits of draft position `step` from the model's Medusa or Hydra heads. -> [B, V]"""
    model = state.sessions[op.param("model")].model
    return (draft_head_logits(model, op.param("kind"), hidden, last_tokens(ctx.tokens, ctx.length), drafts, int(step)),)


RULES = {"model_hidden": model_hidden, "head_logits": head_logits}
