"""Eager rules of the EAGLE ops: the window of features the head reads, and the head's logits."""
from __future__ import annotations

from decspec.stdlib.eagle import eagle_logits as draft_eagle_logits
from decspec.stdlib.eagle import feature_window


def model_features(state, op, ctx):
    """Features at positions L-1-W .. L-2 of each row, from the model's PrefixCache. -> [B, W, C]

    `hidden` makes sure the cache holds ctx[:L-1] with every position's hidden state recorded (after a
    verification call it does, with no forward); the window is then read from the kept states.
    """
    session = state.sessions[op.param("model")]
    session.hidden(ctx.tokens, ctx.length)
    return (feature_window(session.hiddens, ctx.length, op.param("window")),)


def eagle_logits(state, op, features, ctx, drafts, step):
    """The logits of draft position `step` from the model's EAGLE head. -> [B, V]"""
    model = state.sessions[op.param("model")].model
    return (draft_eagle_logits(model, features, ctx.tokens, ctx.length, drafts, int(step)),)


RULES = {"model_features": model_features, "eagle_logits": eagle_logits}
