"""EAGLE-2's dynamic draft tree with its rerank (Li et al. 2024, "EAGLE-2: Faster Inference of Language Models
with Dynamic Draft Trees"), with any draft model.

Expansion: the root gets the draft's top `children` tokens; at each further depth the `expand` nodes of the
last level with the highest global confidence (the product of the draft's probabilities along the path) get
their top `children` tokens (`grow_dynamic_tree` with top-k children, as `dynamic_tree` grows under a greedy
pipeline). Rerank: every drafted node is scored by its confidence and the `nodes` best are kept
(`tree_rerank`): a node's confidence is at most its parent's, so they form a tree, of up to `depth` levels,
with each row its own shape (parents i64[B,m], a value).

Why this is lossless under sampling where reranking sampled siblings is not (tests/test_trees_dynamic.py): the
children are the draft's top tokens, deterministic, each with q one-hot on it, so `multi_rejection` accepts a
child c with probability r(c) and on a rejection removes c from r, which samples r by elimination whatever set
of distinct candidates the draft put there (EAGLE's own verification). The rerank only chooses that set, from
the draft's distributions alone.
"""
from __future__ import annotations

from decspec.compiler.lower import Lowering, Proposal
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.registry import Component, Contract, Param, register
from decspec.stdlib.trees import _draw, _refuse_slots, check_dynamic, grow_dynamic_tree


def lower_eagle2_tree(lw: Lowering, inst, ctx):
    """Grow the dynamic tree with top-k children, weigh each node by its draft probability (the draft's q at its
    parent, at its token), and keep the `nodes` of highest path product."""
    c, k, D = check_dynamic(inst)
    N, m = c * (1 + k * (D - 1)), inst.arg("nodes")
    if not 1 <= m <= N:
        raise DecError(f"eagle2_tree keeps nodes = {m} of the {N} it drafts (children * (1 + expand * (depth - 1))): "
                       f"use 1 <= nodes <= {N}", inst.span, hint="raise children, expand or depth, or lower nodes")
    _refuse_slots(lw)
    b, role = lw.b, lw.role(inst.arg("model"))
    if D == 1:  # the root's children only: the rerank keeps the m most likely, which are the top m
        q = b.emit("softmax", [b.emit("tree_call", [ctx], model=role, parents=(), first=0)[0]])[0]
        tokens, probs, count = b.emit("tree_build", _draw(lw, q, min(c, m), True, False), parents=(0,) * min(c, m))
        return Proposal(tokens, probs, count, 1, parents=(0,) * min(c, m))
    levels, parents, sources = grow_dynamic_tree(lw, role, ctx, c, k, D, topk=True, distinct=False)
    drawn = [b.emit("repeat", [q], times=c)[0] if c > 1 else q for q in sources]  # [B, n_l, V]: the q each node was drawn from
    tokens, probs, _ = b.emit("tree_build", [*levels, parents], nodes=N)
    _, drafted, _ = b.emit("tree_build", [x for level, q in zip(levels[0::2], drawn) for x in (level, q)] + [parents], nodes=N)
    weight = b.emit("token_prob", [drafted, tokens])[0]  # [B, N]: each node's draft probability
    tokens, probs, parents, count = b.emit("tree_rerank", [tokens, probs, weight, parents], nodes=m, depth=D)
    return Proposal(tokens, probs, count, D, parents=parents)


register(
    Component(
        "draft",
        "eagle2_tree",
        (
            Param("model", "model", doc="the draft model"),
            Param("children", "int", default=2, low=1, doc="the top tokens each expanded node (the root included) drafts"),
            Param("expand", "int", default=2, low=1, doc="nodes expanded per depth: those of highest global confidence"),
            Param("depth", "int", default=3, low=1, doc="the tree's greatest depth, the most drafts a round can accept"),
            Param("nodes", "int", default=6, low=1, doc="the nodes kept by the rerank, the tree the target verifies (at most "
                  "children * (1 + expand * (depth - 1)), all drafted)"),
        ),
        "EAGLE-2's dynamic draft tree: the root gets the draft's top `children` tokens; at each further depth the `expand` "
        "nodes of the last level with the highest global confidence (the product of the draft's own probabilities along "
        "the path) get their top `children` tokens; then every drafted node is reranked by its confidence and the best "
        "`nodes` are kept (a node's confidence never exceeds its parent's, so they form a tree; ties to the earlier node). "
        "Each row has its own shape (parents i64[B,m], a value). Children are the draft's top tokens under any sampler, "
        "each with q one-hot, as EAGLE verifies them. Verify with `multi_rejection` (sampling) or `greedy`.",
        Contract(True, "the tree is a function of the draft's distributions only and its children are distinct top-k "
                 "tokens with q one-hot: recursive rejection then accepts a child with probability r(child) and removes it "
                 "from r on a rejection, which samples the target by elimination whatever candidates the rerank kept"),
        lower_eagle2_tree,
        cite="Li et al. 2024, EAGLE-2: Faster Inference of Language Models with Dynamic Draft Trees",
        trees=True,
    )
)
