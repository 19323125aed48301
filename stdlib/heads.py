"""Draft heads: `heads(target, kind = "medusa" | "hydra", max = k)`, drafting a chain from the target's own heads.

Medusa (Cai et al. 2024) and Hydra (Ankner et al. 2024) heads read the target's final hidden state
h_t, the vector its LM head turned into the distribution of token t+1, and propose tokens t+2 ..
t+k+1 (stdlib/models/heads.py). In a round the committed context ends with the target's own last
token x at position t+1 = L-1, so the heads read h at position L-2, which the previous round's
verification call already computed (`model_hidden`; the runtime keeps each forward's hidden
states, so no extra forward is needed), and draft positions L .. L+k-1:

- medusa: head i maps h to the distribution of draft i, independently of the other drafts;
- hydra: head i also reads x and drafts 1..i-1 (its state moves through each token it reads).

Each draft is sampled from its head's distribution through the sampler pipeline (and the grammar
mask), and q is that distribution, so `rejection` (and `greedy`) stay lossless. The draft loop is
the one `autoregressive` uses, so an exit policy (`stop = when draft.prob < 0.3`) reads the heads'
statistics. With `tree = [w_1, ...]`, Medusa heads draft a token tree instead (`lower_head_tree` in stdlib/trees.py).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from decspec.compiler.lower import Lowering
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.drafts import chain_draft
from decspec.stdlib.models.heads import ChainMemo, chain_memo
from decspec.stdlib.registry import Component, Contract, Param, register

KINDS = ("medusa", "hydra")
TRAIN_HINT = ("train heads on a frozen target with `python -m decspec.stdlib.models.train --out DIR --only heads` "
              "(stdlib/models/train.py; the shipped reference target carries both kinds)")


def head_logits(model: Any, kind: str, hidden: torch.Tensor, last_token: torch.Tensor, drafts: torch.Tensor,
                step: int | torch.Tensor) -> torch.Tensor:
    """The logits of draft position `step` from the heads of `kind`. -> [B, V]

    hidden: h at position L-2 [B, C]; last_token: the context's last token x [B]; drafts: [B, K]
    (only drafts[:, :step] are read); step: an int, or a 0-d tensor (a compiled host loop), in which
    case every head runs and the step's logits are selected, so no shape depends on it.
    """
    if kind == "medusa":
        if isinstance(step, int) and hasattr(model, "medusa_head"):  # only this step's head (and LM head) runs
            return model.medusa_head(hidden, step)
        logits = model.medusa(hidden)  # [B, k, V]
        if isinstance(step, int):
            return logits[:, step]
        return logits.index_select(1, step.reshape(1)).squeeze(1)
    last = step if isinstance(step, int) else drafts.shape[1] - 1
    chain = []  # chain[i]: (z_{i+1}, logits of step i); Hydra: z_{i+1} = f_i(z_i, emb(y)), y = x, d_1, ..., d_i
    if ChainMemo.usable(step) and hasattr(model, "draft_head"):  # eager: extend the chain this round has built
        chain = chain_memo(model.draft_head("hydra")).states((hidden, last_token), drafts, step)
    while len(chain) <= last:
        i = len(chain)
        chain.append(model.hydra_step(i, chain[-1][0] if chain else hidden, drafts[:, i - 1] if i else last_token))
    if isinstance(step, int):
        return chain[step][1]
    return torch.stack([logits for _, logits in chain], 1).index_select(1, step.reshape(1)).squeeze(1)


def lower_heads(lw: Lowering, inst, ctx):
    """Draft loop: step i reads h (model_hidden) and, for Hydra, the drafts so far, then samples d_i ~ q_i."""
    k, kind = inst.arg("max"), inst.arg("kind")
    if kind not in KINDS:
        raise DecError(f"heads' kind must be \"medusa\" or \"hydra\", found {kind!r}", inst.span,
                       hint='kind = "medusa" (independent heads) or kind = "hydra" (each head reads the drafts before it)')
    if inst.arg("tree"):  # a tree of candidates (Medusa's tree): stdlib/trees.py
        from decspec.stdlib.trees import lower_head_tree

        return lower_head_tree(lw, inst, ctx)
    if inst.arg("topk") or not inst.arg("replacement"):
        raise DecError(f"heads' '{'topk' if inst.arg('topk') else 'replacement'}' shapes the children of a token tree, and this "
                       "heads drafts a chain", inst.span, hint="give the tree's shape, e.g. tree = [3, 2]")
    role = lw.role(inst.arg("model"))

    def logits_at(body_ctx, drafts, step):
        hidden = lw.b.emit("model_hidden", [body_ctx], model=role)[0]  # [B, C]: h at L-2 (kept from the last verification)
        logits = lw.b.emit("head_logits", [hidden, body_ctx, drafts, step], model=role, kind=kind)[0]  # [B, V]
        return _as_read_after(lw, logits, [body_ctx, drafts, step])

    return chain_draft(lw, ctx, k, logits_at)


def _as_read_after(lw: Lowering, logits, inputs):
    """The head's logits as a model's logits read after ctx ++ drafts[:, :step]: the grammar mask at
    that state (when the spec has a grammar), and the context penalty stages count."""
    if lw.grammar is not None:
        with lw.b.located(lw.grammar.span, lw.grammar.name) as b:
            states = b.emit("grammar_state", inputs, grammar="grammar", last=True)[0]
            logits = b.emit("grammar_mask", [logits, states], grammar="grammar")[0]
    if hasattr(lw, "read_at"):
        lw.read_at[logits] = list(inputs)
    return logits


def bind_heads(inst, models: Mapping[str, Any]) -> dict:
    """The bound model must carry `max` heads of the kind asked for."""
    from decspec.stdlib.binding import role_of

    role = role_of(inst.arg("model"))
    model = models.get(role)
    if model is None:
        return {}
    kind, k = inst.arg("kind"), len(inst.arg("tree")) or inst.arg("max")
    if kind not in KINDS:
        return {}
    try:
        head = model.draft_head(kind) if hasattr(model, "draft_head") else None
    except ValueError:
        head = None
    if head is None:
        have = ", ".join(getattr(model, "heads", {}) or ()) or "none"
        raise DecError(f"model '{role}' ({type(model).__name__}) has no {kind} heads (it has: {have}), which heads(kind = \"{kind}\") drafts from",
                       inst.span, hint=TRAIN_HINT)
    if head.num_heads < k:
        what = f"tree = {list(inst.arg('tree'))}) drafts a tree {k} deep" if inst.arg("tree") else f"max = {k}) drafts {k} tokens"
        raise DecError(f"heads({what}, but model '{role}' has {head.num_heads} {kind} heads", inst.span,
                       hint=f"use {'a tree at most ' + str(head.num_heads) + ' deep' if inst.arg('tree') else 'max <= ' + str(head.num_heads)}, "
                            f"or train more heads ({TRAIN_HINT})")
    return {}


register(
    Component(
        "draft",
        "heads",
        (
            Param("model", "model", doc="the model whose heads draft (its own final hidden state feeds them): the target"),
            Param("kind", "str", default="medusa", doc='"medusa" (independent heads) or "hydra" (each head reads the drafts before it)'),
            Param("max", "int", default=4, low=1, high=64, doc="most tokens drafted per round (at most the model's number of heads)"),
            Param("tree", "list[int]", default=(), doc="a token tree instead of a chain (Medusa's tree of candidates; medusa "
                  "heads only): its widths, every node at depth d getting tree[d] children from head d; replaces `max`"),
            Param("replacement", "bool", default=True, doc="with `tree`: false draws a node's children without replacement"),
            Param("topk", "bool", default=False, doc="with `tree`: the children are head d's top tree[d] tokens at any "
                  "temperature (Medusa's tree), each with q one-hot on it (always so under a greedy pipeline)"),
        ),
        "Draft a chain of up to `max` tokens from the model's draft heads, which read its final hidden state at the "
        "position before the context's last token: Medusa heads independently, Hydra heads each after the tokens before "
        "it. Each token is sampled from its head's distribution through the sampler pipeline. With `tree = [w_1, ...]`, Medusa heads "
        "draft a token tree (Medusa's tree of candidates), verified by `greedy` or `multi_rejection`: every node at depth d "
        "gets tree[d] children from head d: its top tree[d] tokens under a greedy pipeline or with `topk = true`, each "
        "with q one-hot on it, else drawn from head d's q (i.i.d., or without replacement with `replacement = false`).",
        Contract(True, "each draft token is sampled from its head's distribution q, which the verifier receives (a tree: each "
                 "node with the distribution it was drawn from given its earlier siblings; one-hot on top-k children, never the "
                 "head's q, which would make rejection lossy)"),
        lower_heads,
        cite="Cai et al. 2024, Medusa; Ankner et al. 2024, Hydra",
        bind=bind_heads,
    )
)
