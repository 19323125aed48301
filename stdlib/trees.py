"""Token trees: a static tree of drafts, verified in one target call with tree attention.

`tree(draft, widths = [3, 2, 1])` grows a tree level by level: every node at depth d gets
widths[d] children, drawn i.i.d. from the draft's distribution q at that node (through the
sampler pipeline), or, under a greedy pipeline, the widths[d] most likely tokens of the draft's
own distribution (q one-hot on each). One draft call per depth feeds the tree so far with a tree
mask (compiler/ops_tree.py: `tree_call`, `repeat` / `tree_topk`, `sample`, `tree_build`).

Verification takes one target call over the whole tree (`tree_call` with every node):

- `multi_rejection`: recursive rejection over siblings (SpecInfer, Miao et al. 2024; SpecTr, Sun
  et al. 2023): accept child c with probability min(1, r(c) / q(c)); on a rejection
  r <- norm(max(0, r - q)) and try the next sibling; when all are rejected sample from the final
  residual; descend into an accepted child. Lossless when siblings are drawn i.i.d. from q (and
  for top-k children with one-hot q: each rejection then removes the child from r, which is
  sampling from r by elimination). On a chain it is `rejection`.
- `greedy` adapts to a tree: the longest root path whose every node is the target's own token at
  its parent (`tree_match`), plus the target's token at the path's end.

With `tree(draft, widths, replacement = false)` siblings are drawn without replacement
(Recursive Speculative Decoding, Jeon et al. 2024: `sample_distinct`), sibling j from q_j = q without
siblings 1..j-1, renormalized, and q_j is what the verifier gets: `multi_rejection`'s rule is then RSD's
(accept with min(1, r/q_j), residual norm(max(0, r - q_j))). The invariant every tree draft keeps is
that each node comes with the distribution it was drawn from given its earlier siblings.

`dynamic_tree(draft, children, expand, depth)` grows the tree by draft probability (DySpec, Xiong et al.
2024; EAGLE-2, Li et al. 2024) under a node budget: the root gets `children` children, then at each depth
the `expand` nodes of the last level with the highest cumulative q (the path product) get `children`
children each (`tree_expand`). The level sizes are static; which nodes are expanded is per row, so the
shape is a value, parents i64[B,N], that the tree ops take as their last input instead of a param.

`heads(target, kind = "medusa", tree = widths)` (stdlib/heads.py) drafts Medusa's tree of candidates
with `lower_head_tree`: head d gives one distribution for every node at depth d + 1.

`sequoia(draft, budget, depth, acceptance)` (stdlib/sequoia.py) is a static tree whose nodes have their own
numbers of children (`draft_static_tree`); `eagle2_tree(draft, ...)` (stdlib/eagle2.py) grows the dynamic tree
with top-k children and reranks it (`grow_dynamic_tree`, then `tree_rerank`).

The round commits the accepted path and the extra token (`tree_splice`); the caches that held
the tree keep exactly that path (backends/tree_cache.py).
"""
from __future__ import annotations

from decspec.compiler.lower import Lowering, Proposal
from decspec.compiler.ops_tree import tree_depth, tree_depths, tree_parents
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.registry import Component, Contract, Param, register
from decspec.stdlib.verifiers import lower_rejection

MAX_NODES = 256  # a tree is fed whole to the target; bound it as `max` bounds a chain


def greedy_pipeline(sampler) -> bool:
    """Whether the sampler pipeline makes every distribution one-hot (then i.i.d. children would all be the same token)."""
    return any(s.name == "greedy" or (s.name == "temperature" and s.arg("t") == 0) for s in sampler)


def check_widths(widths, span, what: str = "tree's 'widths'") -> tuple[int, ...]:
    widths = tuple(widths)
    if not widths:
        raise DecError(f"{what} is empty: give the children per node at each depth, e.g. widths = [3, 2, 1]", span)
    bad = [w for w in widths if w < 1]
    if bad:
        raise DecError(f"{what} must be at least 1 at every depth, found {bad[0]}", span,
                       hint="a depth with no children ends the tree: drop it from the list")
    nodes = len(tree_parents(widths))
    if nodes > MAX_NODES:
        raise DecError(f"a tree of widths {list(widths)} has {nodes} nodes; at most {MAX_NODES} are supported", span,
                       hint="use fewer or narrower levels")
    return widths


def lower_tree(lw: Lowering, inst, ctx):
    """Per depth d: one draft call over the tree so far (logits at the previous level's nodes), then
    widths[d] children per node. Then the levels become one breadth-first proposal."""
    widths = check_widths(inst.arg("widths"), inst.span)
    _refuse_slots(lw)
    return draft_static_tree(lw, lw.role(inst.arg("model")), ctx, tree_parents(widths), not inst.arg("replacement"))


def draft_static_tree(lw: Lowering, role: str, ctx, parents: tuple[int, ...], distinct: bool) -> Proposal:
    """Any static tree (breadth-first parents, each level's children in their parents' order): per depth one
    draft call over the tree so far gives q at the previous level's nodes, and each node gets its own number
    of children (the same for all of a level in a `widths` tree; Sequoia's trees differ node by node)."""
    greedy = greedy_pipeline(lw.sampler)
    depths = tree_depths(parents)
    b = lw.b
    levels, fed, width = [], 0, 1  # width: nodes on the previous level (the root: 1)
    for d in range(1, tree_depth(parents) + 1):
        size = depths.count(d)
        counts = tuple(parents[fed:fed + size].count(pos) for pos in range(fed + 1 - width, fed + 1))  # children per previous node
        logits = b.emit("tree_call", [ctx, *levels[0::2]], model=role, parents=parents[:fed], first=fed + 1 - width)[0]  # [B, width, V]
        levels += _children(lw, logits, width, counts[0] if len(set(counts)) == 1 else counts, greedy, distinct)
        fed, width = fed + size, size
    tokens, probs, count = b.emit("tree_build", levels, parents=parents)
    return Proposal(tokens, probs, count, tree_depth(parents), parents=parents)


def lower_head_tree(lw: Lowering, inst, ctx):
    """Medusa's tree of candidates: `heads(target, kind = "medusa", tree = [...])`. Head d reads h (at
    L-2, kept from the last verification) and gives one distribution for all of depth d + 1, since a
    Medusa head ignores the path; each node at depth d gets widths[d] children from it: the top
    widths[d] under a greedy pipeline or with `topk = true` (Medusa's own tree), each with q one-hot
    on it (the distribution a deterministic child is drawn from: so `multi_rejection` accepts child c
    with probability r(c) and removes it from r on a rejection, which samples r by elimination), else
    drawn from head d's q (i.i.d., or without replacement). No draft model call: the heads run on h alone."""
    widths = check_widths(inst.arg("tree"), inst.span, "heads' 'tree'")
    if inst.arg("kind") != "medusa":
        raise DecError(f"heads(kind = \"{inst.arg('kind')}\", tree = ...): only Medusa heads draft a tree yet", inst.span,
                       hint='use kind = "medusa", or drop `tree` to draft a Hydra chain (a Hydra tree needs a head call per node path)')
    _refuse_slots(lw)
    role = lw.role(inst.arg("model"))
    parents = tree_parents(widths)
    topk, distinct = greedy_pipeline(lw.sampler) or inst.arg("topk"), not inst.arg("replacement")
    b = lw.b
    hidden = b.emit("model_hidden", [ctx], model=role)[0]  # [B, C]
    levels, width = [], 1  # width: nodes on the previous level
    for d, w in enumerate(widths):
        logits = b.emit("head_level", [hidden], model=role, depth=d)[0]  # [B, 1, V]: head d, every node alike
        levels += _children(lw, logits, width, w, topk, distinct)
        width *= w
    tokens, probs, count = b.emit("tree_build", levels, parents=parents)
    return Proposal(tokens, probs, count, tree_depth(parents), parents=parents)


def check_dynamic(inst) -> tuple[int, int, int]:
    """(children, expand, depth) of `dynamic_tree` (or `eagle2_tree`), checked; its node budget is
    children * (1 + expand * (depth - 1))."""
    c, k, D = inst.arg("children"), inst.arg("expand"), inst.arg("depth")
    what = inst.component.name
    for name, v in (("children", c), ("expand", k), ("depth", D)):
        if v < 1:
            raise DecError(f"{what}'s '{name}' must be at least 1, found {v}", inst.span)
    if k > c:
        raise DecError(f"{what} expands {k} nodes per depth but the first level has only children = {c}", inst.span,
                       hint=f"use expand <= {c}")
    nodes = c * (1 + k * (D - 1))
    if nodes > MAX_NODES:
        raise DecError(f"a dynamic tree of children = {c}, expand = {k}, depth = {D} has {nodes} nodes; at most {MAX_NODES} "
                       "are supported", inst.span, hint="use fewer children, expansions or depths")
    return c, k, D


def lower_dynamic_tree(lw: Lowering, inst, ctx):
    """DySpec / EAGLE-2's dynamic tree under a node budget (`grow_dynamic_tree`), each node's children drawn
    from its q as `tree` draws them."""
    c, k, D = check_dynamic(inst)
    _refuse_slots(lw)
    levels, parents, _ = grow_dynamic_tree(lw, lw.role(inst.arg("model")), ctx, c, k, D, greedy_pipeline(lw.sampler),
                                           not inst.arg("replacement"))
    if parents is None:  # depth 1: a static tree of the root's children
        tokens, probs, count = lw.b.emit("tree_build", levels, parents=(0,) * c)
        return Proposal(tokens, probs, count, 1, parents=(0,) * c)
    tokens, probs, count = lw.b.emit("tree_build", [*levels, parents], nodes=parents.type.shape[1])
    return Proposal(tokens, probs, count, D, parents=parents)


def grow_dynamic_tree(lw: Lowering, role: str, ctx, c: int, k: int, D: int, topk: bool, distinct: bool):
    """The root gets c children; then per depth one draft call over the tree so far (tree attention with the
    tree's parents, a value) gives q at the last level's nodes, `tree_expand` picks the k nodes of highest
    cumulative draft probability (path product of q) and each gets c children drawn from its q (the top c
    with q one-hot when `topk`). Level sizes are static (c, then k * c per depth); which nodes the children
    hang under is per row. -> (levels [tokens, q, ...], parents i64[B,N] or None at depth 1, sources: per level
    the draft's own q [B,n/c,V] at the nodes it hangs under, the root or the expanded ones; a node's draft
    probability is its source's q at its token)."""
    b = lw.b
    logits = b.emit("tree_call", [ctx], model=role, parents=(), first=0)[0]  # [B, 1, V]: q at the root
    q = _draft_q(lw, logits, topk)
    levels = _draw(lw, q, c, topk, distinct)
    q_last, parents, score, sources = q, None, None, [q]  # q_last: the distribution the last level's nodes were drawn from
    for _ in range(D - 1):
        q_drawn = b.emit("repeat", [q_last], times=c)[0] if c > 1 else q_last  # the draft's own q each node was drawn from (its score)
        last = levels[-2]
        n = last.type.shape[1]
        if parents is None:  # only the root's children so far: the tree call's shape is static
            logits = b.emit("tree_call", [ctx, *levels[0::2]], model=role, parents=(0,) * n, first=1)[0]
            ins = [last, q_drawn, _draft_q(lw, logits, topk)]
        else:
            M = parents.type.shape[1]
            logits = b.emit("tree_call", [ctx, *levels[0::2], parents], model=role, first=M + 1 - n)[0]  # [B, n, V]
            ins = [last, q_drawn, _draft_q(lw, logits, topk), score, parents]
        parents, q_sel, score = b.emit("tree_expand", ins, k=k, c=c)
        levels += _draw(lw, q_sel, c, topk, distinct)
        q_last = q_sel
        sources.append(q_sel)
    return levels, parents, sources


def _draft_q(lw: Lowering, logits, topk: bool):
    """The draft's distribution at each node: its own softmax under a greedy pipeline (top-k children and scores
    from it), else the sampler pipeline's q (what children are drawn from)."""
    return lw.b.emit("softmax", [logits])[0] if topk else lw.probs(logits)


def _draw(lw: Lowering, q, w: int, topk: bool, distinct: bool) -> list:
    """w children for each of q's n distributions [B, n, V]: [tokens [B, n*w], the q each was drawn from [B, n*w, V]]."""
    b = lw.b
    if topk:
        return list(b.emit("tree_topk", [q], k=w))
    q = b.emit("repeat", [q], times=w)[0] if w > 1 else q
    if distinct and w > 1:
        u = b.emit("uniform", [], shape=("B", q.type.shape[1]))[0]
        return list(b.emit("sample_distinct", [q, u], k=w))
    return [lw.sample(q), q]


def _children(lw: Lowering, logits, width: int, w, topk: bool, distinct: bool) -> list:
    """w children for each of `width` nodes, from logits [B, n, V]: one distribution per node (n = width)
    or one for them all (n = 1); w a tuple gives node i w[i] children (n = width). -> [tokens [B, width*w],
    q [B, width*w, V]], q being the distribution each child was drawn from: the w most likely tokens of the
    model's own distribution with q one-hot (topk); w draws without replacement, q_j = q without the earlier
    siblings (distinct); or w i.i.d. draws from q."""
    b = lw.b
    spread = width // logits.type.shape[1]  # nodes sharing each distribution
    if isinstance(w, tuple):  # an irregular level: the groups of siblings have their own sizes
        assert spread == 1, "per-node children need one distribution per node"
        n, groups = sum(w), tuple(c for c in w if c)
        if topk:
            return list(b.emit("tree_topk", [b.emit("softmax", [logits])[0]], k=w))
        q = b.emit("repeat", [lw.probs(logits)], times=w)[0]  # [B, n, V]: each child's q
        if distinct and max(w) > 1:
            u = b.emit("uniform", [], shape=("B", n))[0]
            return list(b.emit("sample_distinct", [q, u], k=groups))
        return [lw.sample(q), q]
    if topk:
        q = b.emit("softmax", [logits])[0]
        q = b.emit("repeat", [q], times=spread)[0] if spread > 1 else q
        return list(b.emit("tree_topk", [q], k=w))
    q = lw.probs(logits)
    q = b.emit("repeat", [q], times=spread * w)[0] if spread * w > 1 else q  # [B, width*w, V]: each child's q
    if distinct and w > 1:
        u = b.emit("uniform", [], shape=("B", width * w))[0]
        return list(b.emit("sample_distinct", [q, u], k=w))
    return [lw.sample(q), q]


def _refuse_slots(lw) -> None:
    if lw.stop is not None:
        raise DecError("`stop` on a token tree is not supported yet (a tree's shape is fixed by its parameters, or by `dynamic_tree`'s expansion)",
                       lw.stop.span, hint="remove `stop`: a static tree always drafts its whole shape")
    if lw.grammar is not None:
        raise DecError("a grammar over a token tree is not supported yet", lw.grammar.span, hint="draft a chain, e.g. autoregressive(draft)")


def _dynamic(proposal) -> bool:
    return not isinstance(proposal.parents, tuple)  # a dynamic tree's parents are a value, i64[B,N]


def _target_probs(lw, ctx, target, proposal):
    if _dynamic(proposal):
        logits = lw.b.emit("tree_call", [ctx, proposal.tokens, proposal.parents], model=lw.role(target), first=0)[0]
    else:
        logits = lw.b.emit("tree_call", [ctx, proposal.tokens], model=lw.role(target), parents=proposal.parents, first=0)[0]  # [B, N+1, V]
    return lw.probs(logits)


def _shape(proposal) -> tuple[list, dict]:
    """The tree's shape for tree_match / tree_rejection: a dynamic tree's parents input and depth, or the static param."""
    if _dynamic(proposal):
        return [proposal.parents], {"depth": proposal.max}
    return [], {"parents": proposal.parents}


def lower_multi_rejection(lw, inst, ctx, target, proposal):
    if proposal.parents is None:  # a chain: one child per node, which is plain rejection sampling
        return lower_rejection(lw, inst, ctx, target, proposal)
    b = lw.b
    p = _target_probs(lw, ctx, target, proposal)
    u = b.emit("uniform", [], shape=("B", proposal.tokens.type.shape[1]))[0]  # one draw per node, used when the node is tried
    extra, shape = _shape(proposal)
    path, n, r = b.emit("tree_rejection", [p, proposal.probs, proposal.tokens, u, *extra], **shape)
    x = lw.sample(r)  # the residual after the last rejection, or p at the leaf reached
    return b.emit("tree_splice", [proposal.tokens, path, n, x])[0], n


def lower_tree_greedy(lw, inst, ctx, target, proposal):
    """`greedy` over a tree: the target's own token at every position; follow the nodes that match it."""
    b = lw.b
    p = _target_probs(lw, ctx, target, proposal)
    t = lw.sample(p)  # [B, N+1]
    extra, shape = _shape(proposal)
    path, n, end = b.emit("tree_match", [proposal.tokens, t, *extra], **shape)
    x = b.emit("take", [t, end])[0]
    return b.emit("tree_splice", [proposal.tokens, path, n, x])[0], n


register(
    Component(
        "draft",
        "tree",
        (
            Param("model", "model", doc="the draft model"),
            Param("widths", "list[int]", default=(3, 2, 1), doc="children per node at each depth (its length is the tree's depth)"),
            Param("replacement", "bool", default=True, doc="false: a node's children are drawn without replacement (Recursive "
                  "Speculative Decoding), each from q with its earlier siblings removed, renormalized"),
        ),
        "A static token tree (Medusa / Sequoia-style shape): each node at depth d gets widths[d] children, drawn i.i.d. from "
        "the draft's distribution q at that node through the sampler pipeline, or without replacement with `replacement = "
        "false` (Recursive Speculative Decoding: child j from q without children 1..j-1, renormalized); the widths[d] most "
        "likely tokens under a greedy pipeline. One draft call per depth with tree attention. Verify with `multi_rejection` or "
        "`greedy`.",
        Contract(True, "each node comes with the distribution it was drawn from, which the verifier receives: the draft's q at "
                 "its parent (i.i.d. siblings), q without the node's earlier siblings, renormalized (replacement = false), or "
                 "one-hot on the top-k children under a greedy pipeline"),
        lower_tree,
        cite="Miao et al. 2024, SpecInfer; Cai et al. 2024, Medusa; Chen et al. 2024, Sequoia; Jeon et al. 2024, RSD",
        trees=True,
    )
)
register(
    Component(
        "draft",
        "dynamic_tree",
        (
            Param("model", "model", doc="the draft model"),
            Param("children", "int", default=2, doc="children of every expanded node (the root's included)"),
            Param("expand", "int", default=1, doc="nodes expanded per depth: those of highest cumulative draft probability"),
            Param("depth", "int", default=2, doc="the tree's depth, the most drafts a round can accept"),
            Param("replacement", "bool", default=True, doc="false: an expanded node's children are drawn without replacement "
                  "(Recursive Speculative Decoding)"),
        ),
        "A dynamic token tree (DySpec, EAGLE-2) under a node budget of children * (1 + expand * (depth - 1)) nodes: the root "
        "gets `children` children; at each further depth the `expand` nodes of the last level with the highest cumulative "
        "draft probability (the product of q along their path, ties to the earlier node) get `children` children each, drawn "
        "from the draft's q at the node as `tree` draws them (i.i.d., without replacement with `replacement = false`, the top "
        "ones under a greedy pipeline). Each row has its own shape, carried as a value (parents i64[B,N]) to the tree "
        "attention, the verifier and the cache. Verify with `multi_rejection` or `greedy`.",
        Contract(True, "the shape is a function of the draft's own distributions and draws only (never of the target or of the "
                 "verifier's draws), and an expanded node's children are drawn from its q after the shape above them is chosen, "
                 "each with the distribution it was drawn from: recursive rejection reproduces the target at every node"),
        lower_dynamic_tree,
        cite="Xiong et al. 2024, DySpec: Faster Speculative Decoding with Dynamic Token Tree Structure; Li et al. 2024, "
             "EAGLE-2: Faster Inference of Language Models with Dynamic Draft Trees",
        trees=True,
    )
)
register(
    Component(
        "verifier",
        "multi_rejection",
        (),
        "Multi-draft speculative sampling over a token tree: at a node, try its children in order, accept child c with "
        "probability min(1, p(c)/q_c(c)); on a rejection set p <- norm(max(0, p - q_c)) and try the next sibling; when all are "
        "rejected sample from the final residual; descend into an accepted child (at a leaf, a bonus token from p). q_c is the "
        "distribution child c was drawn from: q for i.i.d. siblings (SpecInfer), q without the earlier siblings, renormalized, "
        "for siblings drawn without replacement (Recursive Speculative Decoding). On a chain of drafts it is `rejection`.",
        Contract(True, "recursive rejection with each sibling's own q, the distribution it was drawn from given its earlier "
                 "siblings (i.i.d.: SpecInfer, SpecTr; without replacement: RSD's depleted q_j), reproduces p exactly"),
        lower_multi_rejection,
        cite="Miao et al. 2024, SpecInfer; Sun et al. 2023, SpecTr: Fast Speculative Decoding via Optimal Transport; Jeon et al. "
             "2024, Recursive Speculative Decoding: Accelerating LLM Inference via Sampling Without Replacement",
        trees=True,
    )
)
