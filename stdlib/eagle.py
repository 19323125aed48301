"""EAGLE draft head: `eagle(target, max = k, window = W)`, drafting a chain at the level of the target's features.

EAGLE (Li et al. 2024) drafts with a one-layer head that autoregresses over the target's features
(its final hidden state, which the frozen LM head turns into token distributions; see
stdlib/models/eagle.py). In a round the committed context has length L and ends with the token x
the target emitted last; the head reads the target's real features f at positions L-1-W .. L-2,
each paired with the token that followed it (so the last pair is (f_{L-2}, x)), all kept from the
previous verification call (`model_features`; no extra forward), and predicts the feature at L-1,
whose LM-head distribution is draft 1's q. Draft step s >= 2 appends (predicted feature, d_{s-1})
to the head's sequence and predicts the next feature (`eagle_logits`). The head attends over the
last W steps of its sequence (its trained window). Eagerly, a round runs the window once and then one head
step per draft, attending the window's kept keys and values (`EagleHead.draft_feature`); compiled code
recomputes the window at each step.

Each draft is sampled from q through the sampler pipeline (and the grammar mask), and q is what the
verifier receives, so `rejection` (and `greedy`) stay lossless. The draft loop is the one
`autoregressive` uses, so an exit policy (`stop = when draft.prob < 0.3`) reads the head's statistics.
EAGLE's token tree (and EAGLE-2's dynamic tree) is not built: this drafts a chain.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from decspec.compiler.lower import Lowering
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.drafts import chain_draft
from decspec.stdlib.heads import _as_read_after
from decspec.stdlib.models.heads import ChainMemo, chain_memo
from decspec.stdlib.registry import Component, Contract, Param, register

TRAIN_HINT = ("train an EAGLE head on a frozen target with `python -m decspec.stdlib.models.train --out DIR --only eagle` "
              "(stdlib/models/train.py; the shipped reference target carries one)")


def feature_window(hiddens: torch.Tensor, ctx_length: torch.Tensor, window: int) -> torch.Tensor:
    """The kept features at positions L-1-W .. L-2 of each row (zeros before position 0).
    hiddens: [B, S, C] (features by position), ctx_length: [B] -> [B, W, C]"""
    pos = ctx_length[:, None] - 1 - window + torch.arange(window, device=ctx_length.device)[None, :]  # [B, W]
    f = hiddens.gather(1, pos.clamp(min=0)[..., None].expand(-1, -1, hiddens.shape[-1]))
    return torch.where((pos >= 0)[..., None], f, torch.zeros_like(f))


def eagle_logits(model: Any, features: torch.Tensor, ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, drafts: torch.Tensor,
                 step: int | torch.Tensor) -> torch.Tensor:
    """The logits of draft position `step` (token L+step) from the model's EAGLE head. -> [B, V]

    features: f at positions L-1-W .. L-2 [B, W, C] (model_features); the token after each is read from
    the context; drafts: [B, K] (drafts[:, :step] are read); step: an int, or a 0-d tensor (a compiled
    host loop), in which case every step up to K-1 runs and the step's logits are selected.
    """
    W = features.shape[1]
    pos = ctx_length[:, None] - W + torch.arange(W, device=ctx_length.device)[None, :]  # [B, W]: the token after each feature
    tokens = ctx_tokens.gather(1, pos.clamp(min=0))
    valid = pos >= 1  # the feature at pos-1 exists
    last = step if isinstance(step, int) else drafts.shape[1] - 1
    if hasattr(model, "eagle_draft"):  # table models (stdlib/models/layered_table.py)
        logits = model.eagle_draft(features, tokens, valid, drafts, last)
        return logits[:, step] if isinstance(step, int) else logits.index_select(1, step.reshape(1)).squeeze(1)
    head = model.draft_head("eagle")
    lm_head = getattr(model, "drafting_head", model.lm_head)  # a draft vocabulary, where the model has one
    if ChainMemo.usable(step):  # eager: extend this round's chain by one step; the LM head runs once, on its feature
        f = head.draft_feature(features, tokens, valid, drafts, step, model.model.embed_tokens, chain_memo(head))  # [B, C]
        return lm_head(f).float()  # [B, V]
    if isinstance(step, int):  # unrolled in a compiled graph
        return head.draft(features, tokens, valid, drafts, step, lm_head, model.model.embed_tokens)  # [B, V]
    feats = head.draft_features(features, tokens, valid, drafts, last, model.model.embed_tokens)  # [B, K, C]
    return lm_head(feats.index_select(1, step.reshape(1)).squeeze(1)).float()


def lower_eagle(lw: Lowering, inst, ctx):
    """Draft loop: step i reads the target's last W features (model_features) and the drafts so far, samples d_i ~ q_i."""
    k, window = inst.arg("max"), inst.arg("window")
    role = lw.role(inst.arg("model"))

    def logits_at(body_ctx, drafts, step):
        features = lw.b.emit("model_features", [body_ctx], model=role, window=window)[0]  # [B, W, C]: kept from the last verification
        logits = lw.b.emit("eagle_logits", [features, body_ctx, drafts, step], model=role)[0]  # [B, V]
        return _as_read_after(lw, logits, [body_ctx, drafts, step])

    return chain_draft(lw, ctx, k, logits_at)


def bind_eagle(inst, models: Mapping[str, Any]) -> dict:
    """The bound model must carry an EAGLE head (features past the head's own attention window are not read)."""
    from decspec.stdlib.binding import role_of

    role = role_of(inst.arg("model"))
    model = models.get(role)
    if model is None:
        return {}
    try:
        head = model.draft_head("eagle") if hasattr(model, "draft_head") else None
    except ValueError:
        head = None
    if head is None:
        have = ", ".join(getattr(model, "heads", {}) or ()) or "none"
        raise DecError(f"model '{role}' ({type(model).__name__}) has no eagle head (it has: {have}), which eagle() drafts from",
                       inst.span, hint=TRAIN_HINT)
    return {}


register(
    Component(
        "draft",
        "eagle",
        (
            Param("model", "model", doc="the model whose EAGLE head drafts (its own features feed it): the target"),
            Param("max", "int", default=4, low=1, high=64, doc="most tokens drafted per round"),
            Param("window", "int", default=32, low=1, high=4096,
                  doc="how many of the target's last features the op passes the head (it reads at most its own attention window)"),
        ),
        "Draft a chain of up to `max` tokens with the model's EAGLE head, which autoregresses over the model's features: "
        "it reads the features of the last `window` context positions (kept from the last verification) with the tokens "
        "that followed them, then its own predicted features with the drafted tokens. Each token is sampled from the "
        "model's LM head on the predicted feature, through the sampler pipeline.",
        Contract(True, "each draft token is sampled from the head's distribution q, which the verifier receives"),
        lower_eagle,
        cite="Li et al. 2024, EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty",
        bind=bind_eagle,
    )
)
