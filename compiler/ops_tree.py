"""The IR's token-tree ops: a static tree of drafts, its model calls, and its verification.

A tree is static: `parents` (an op param) lists, for each node i in breadth-first order, the
*position* of its parent, where position 0 is the root (the context's last token: the tree's
first level continues the context) and position j + 1 is node j. So a tree of N nodes has N + 1
positions, and every per-position tensor (the target's p [B, N+1, V], its tokens [B, N+1]) is
indexed the same way. A node's depth is its parent's + 1 (the first level has depth 1); the
tree's depth D is the longest root path, the most drafts a round can accept.

A dynamic tree (DySpec / EAGLE-2, `tree_expand`; EAGLE-2's `tree_rerank`) has the same positions as a *value*, parents
i64[B,N], each row its own shape under a static node count N: its `tree_call`, `tree_build`,
`tree_match` and `tree_rejection` drop the `parents` param and take the value as their last input
(`tree_match` and `tree_rejection` then name the tree's `depth`, which sizes their path [B,D]).

    >>> tree_parents((2, 1))          # two children of the root, then one child each
    (0, 0, 1, 2)
    >>> tree_depths((0, 0, 1, 2))     # depth of each node
    (1, 1, 2, 2)
"""
from __future__ import annotations

from decspec.compiler.ir import CTX
from decspec.compiler.ops import OpDef, _expect, _t


def tree_parents(widths) -> tuple[int, ...]:
    """The static tree where every node at depth d has widths[d] children, in breadth-first order:
    each node's parent position (0: the root)."""
    parents: list[int] = []
    level = [0]  # positions of the previous level's nodes
    for w in widths:
        start = len(parents)
        parents += [pos for pos in level for _ in range(w)]
        level = [i + 1 for i in range(start, len(parents))]
    return tuple(parents)


def tree_depths(parents) -> tuple[int, ...]:
    depth = [0]  # by position
    for p in parents:
        depth.append(depth[p] + 1)
    return tuple(depth[1:])


def tree_depth(parents) -> int:
    return max((0, *tree_depths(parents)))  # no `default=`: dynamo traces this in compiled tree kernels


def _parents(p) -> tuple[int, ...]:
    parents = p.get("parents")
    _expect(isinstance(parents, (tuple, list)) and all(isinstance(x, int) for x in parents), "parents must list ints")
    _expect(all(0 <= x <= i for i, x in enumerate(parents)), "parents must be breadth-first: node i's parent is a position <= i")
    return tuple(parents)


def _dynamic(p) -> bool:
    """A dynamic tree's op (DySpec / EAGLE-2) has no `parents` param: its shape is a value, parents i64[B,N], its last input."""
    return "parents" not in p


def _parents_value(v, n: int, what: str) -> None:
    _expect(v == _t("i64", "B", n), f"{what} of a dynamic tree takes its parents i64[B,{n}] last, got {v}")


def _levels(ins, what: str) -> int:
    """Total width of tok[B, n] inputs (the tree's levels, concatenated)."""
    _expect(all(t.dtype == "tok" and len(t.shape) == 2 and isinstance(t.shape[1], int) for t in ins), f"{what} takes tok[B,n] levels")
    return sum(t.shape[1] for t in ins)


def _tree_call(p, ins):
    first = p.get("first", 0)
    _expect(isinstance(p.get("model"), str), "tree_call model must name a model role")
    _expect(ins and ins[0] == CTX, "tree_call takes the context first")
    if _dynamic(p):
        _expect(len(ins) >= 3, "tree_call of a dynamic tree takes (ctx, levels..., parents)")
        M = _levels(ins[1:-1], "tree_call")
        _parents_value(ins[-1], M, "tree_call")
    else:
        parents = _parents(p)
        M = _levels(ins[1:], "tree_call")
        _expect(M == len(parents), f"tree_call's levels hold {M} nodes but parents lists {len(parents)}")
    _expect(isinstance(first, int) and 0 <= first <= M, f"tree_call first must be a position in 0..{M}")
    return [_t("f32", "B", M + 1 - first, "V")]


def _counts(x, n: int, what: str) -> int:
    """A per-distribution count param: an int (every one alike) or one int >= 0 per distribution, at least one > 0
    (an irregular static tree, e.g. Sequoia's: each node its own number of children). -> the total"""
    if isinstance(x, int):
        _expect(x >= 1, f"{what} must be a positive int")
        return n * x
    _expect(isinstance(x, (tuple, list)) and all(isinstance(c, int) and c >= 0 for c in x), f"{what} must be an int or a list of ints >= 0")
    _expect(len(x) == n and sum(x) >= 1, f"{what} lists one count per distribution ({n}), not all 0")
    return sum(x)


def _distributions(ins, what: str) -> int:
    _expect(len(ins) == 1 and ins[0].dtype == "f32" and len(ins[0].shape) == 3 and isinstance(ins[0].shape[1], int), f"{what} takes f32[B,n,V]")
    return ins[0].shape[1]


def _repeat(p, ins):
    return [_t("f32", "B", _counts(p.get("times"), _distributions(ins, "repeat"), "repeat times"), "V")]


def _tree_topk(p, ins):
    n = _counts(p.get("k"), _distributions(ins, "tree_topk"), "tree_topk k")
    return [_t("tok", "B", n), _t("f32", "B", n, "V")]


def _sample_distinct(p, ins):
    k = p.get("k")
    _expect(len(ins) == 2, "sample_distinct takes (probs, uniform)")
    P, U = ins
    _expect(P.dtype == "f32" and len(P.shape) == 3 and isinstance(P.shape[1], int), "sample_distinct takes f32[B,n,V]")
    if isinstance(k, int):
        _expect(k >= 1 and P.shape[1] % k == 0, f"sample_distinct takes f32[B,n,V] with n a multiple of k = {k}")
    else:  # groups of their own sizes (an irregular tree's siblings)
        _expect(isinstance(k, (tuple, list)) and all(isinstance(g, int) and g >= 1 for g in k) and sum(k) == P.shape[1],
                f"sample_distinct's k lists group sizes >= 1 summing to n = {P.shape[1]}")
    _expect(U == _t("f32", "B", P.shape[1]), f"sample_distinct's uniform must be f32[B,{P.shape[1]}], got {U}")
    return [_t("tok", "B", P.shape[1]), _t("f32", "B", P.shape[1], "V")]


def _head_level(p, ins):
    _expect(isinstance(p.get("model"), str), "head_level model must name a model role")
    _expect(isinstance(p.get("depth"), int) and p["depth"] >= 0, "head_level depth must be a non-negative int")
    _expect(len(ins) == 1 and ins[0] == _t("f32", "B", "C"), "head_level takes the hidden state f32[B,C]")
    return [_t("f32", "B", 1, "V")]


def _tree_build(p, ins):
    if "nodes" in p:  # a dynamic tree's build names its node budget, and takes its parents last
        _expect(len(ins) >= 3 and len(ins) % 2 == 1, "tree_build of a dynamic tree takes (tokens, q) per level, then parents")
        toks, qs = ins[0:-1:2], ins[1:-1:2]
        N = _levels(toks, "tree_build")
        _parents_value(ins[-1], N, "tree_build")
        _expect(p.get("nodes") == N, f"tree_build of a dynamic tree: its nodes param must be {N}, the node budget")
    else:
        parents = _parents(p)
        _expect(len(ins) >= 2 and len(ins) % 2 == 0, "tree_build takes (tokens, q) per level")
        toks, qs = ins[0::2], ins[1::2]
        N = _levels(toks, "tree_build")
        _expect(N == len(parents), f"tree_build's levels hold {N} nodes but parents lists {len(parents)}")
    _expect(all(q == _t("f32", "B", t.shape[1], "V") for t, q in zip(toks, qs)), "tree_build: each level's q must be f32[B,n,V] for its tok[B,n]")
    return [_t("tok", "B", N), _t("f32", "B", N, "V"), _t("i64", "B")]


def _shape(p, ins, arity: int, what: str) -> tuple[int, int]:
    """(N, D): the node count and depth, from the `parents` param or, for a dynamic tree, its parents input and `depth`."""
    if not _dynamic(p):
        parents = _parents(p)
        _expect(len(ins) == arity, f"{what} takes {arity} inputs")
        return len(parents), tree_depth(parents)
    _expect(len(ins) == arity + 1, f"{what} of a dynamic tree takes {arity} inputs, then parents")
    D = p.get("depth")
    _expect(isinstance(D, int) and D >= 1, f"{what} of a dynamic tree needs its depth, a positive int")
    _expect(ins[-1].dtype == "i64" and len(ins[-1].shape) == 2 and isinstance(ins[-1].shape[1], int), f"{what}'s parents must be i64[B,N]")
    return ins[-1].shape[1], D


def _tree_match(p, ins):
    N, D = _shape(p, ins, 2, "tree_match")
    _expect(ins[0] == _t("tok", "B", N) and ins[1] == _t("tok", "B", N + 1), f"tree_match takes (tok[B,{N}], tok[B,{N + 1}])")
    return [_t("i64", "B", D), _t("i64", "B"), _t("i64", "B")]


def _tree_rejection(p, ins):
    N, D = _shape(p, ins, 4, "tree_rejection (p, q, tokens, uniform)")
    P, Q, T, U = ins[:4]
    _expect(P == _t("f32", "B", N + 1, "V") and Q == _t("f32", "B", N, "V") and T == _t("tok", "B", N) and U == _t("f32", "B", N),
            f"tree_rejection takes (f32[B,{N + 1},V], f32[B,{N},V], tok[B,{N}], f32[B,{N}])")
    return [_t("i64", "B", D), _t("i64", "B"), _t("f32", "B", "V")]


def _tree_expand(p, ins):
    k, c = p.get("k"), p.get("c")
    _expect(isinstance(k, int) and k >= 1 and isinstance(c, int) and c >= 1, "tree_expand k and c must be positive ints")
    _expect(len(ins) in (3, 5), "tree_expand takes (tokens, q, q_next) for the first level, or (tokens, q, q_next, score, parents)")
    T, Q, Qn = ins[:3]
    _expect(T.dtype == "tok" and len(T.shape) == 2 and isinstance(T.shape[1], int), "tree_expand takes the level's tok[B,n]")
    n = T.shape[1]
    _expect(Q == _t("f32", "B", n, "V") and Qn == Q, f"tree_expand's q and q_next must be f32[B,{n},V]")
    _expect(k <= n, f"tree_expand expands k = {k} of the level's {n} nodes: k must be at most {n}")
    M = n
    if len(ins) == 5:
        _expect(ins[3] == _t("f32", "B", n), f"tree_expand's score must be f32[B,{n}]")
        _expect(ins[4].dtype == "i64" and len(ins[4].shape) == 2 and isinstance(ins[4].shape[1], int) and ins[4].shape[1] >= n,
                "tree_expand's parents must be i64[B,M], M counting the level")
        M = ins[4].shape[1]
    return [_t("i64", "B", M + k * c), _t("f32", "B", k, "V"), _t("f32", "B", k * c)]


def _tree_rerank(p, ins):
    m, D = p.get("nodes"), p.get("depth")
    _expect(len(ins) == 4, "tree_rerank takes (tokens, q, weight, parents)")
    T, Q, W, P = ins
    _expect(T.dtype == "tok" and len(T.shape) == 2 and isinstance(T.shape[1], int), "tree_rerank takes the tree's tok[B,N]")
    N = T.shape[1]
    _expect(Q == _t("f32", "B", N, "V") and W == _t("f32", "B", N), f"tree_rerank takes q f32[B,{N},V] and weight f32[B,{N}]")
    _parents_value(P, N, "tree_rerank")
    _expect(isinstance(m, int) and 1 <= m <= N, f"tree_rerank keeps `nodes` of the tree's {N}: a positive int <= {N}")
    _expect(isinstance(D, int) and D >= 1, "tree_rerank needs the tree's depth, a positive int")
    return [_t("tok", "B", m), _t("f32", "B", m, "V"), _t("i64", "B", m), _t("i64", "B")]


def _tree_splice(p, ins):
    _expect(len(ins) == 4 and ins[0].dtype == "tok" and ins[1].dtype == "i64" and len(ins[1].shape) == 2, "tree_splice takes (tokens[B,N], path[B,D], n[B], token[B])")
    D = ins[1].shape[1]
    return [_t("tok", "B", D + 1 if isinstance(D, int) else f"{D}+1")]


TREE_OPS: dict[str, OpDef] = {
    d.name: d
    for d in [
        OpDef("tree_call", "model", _tree_call, "logits at positions first..M of a token tree of M nodes (the levels, concatenated, "
              "breadth-first) under ctx: position 0 is after ctx, position i+1 after ctx ++ node i's root path (one model call with "
              "a tree attention mask)"),
        OpDef("repeat", "pure", _repeat, "each of the n distributions repeated `times` times, in place (repeat_interleave): the "
              "distribution every child of a node is drawn from; `times` a list gives each distribution its own count (0: dropped)"),
        OpDef("tree_topk", "pure", _tree_topk, "the k most likely tokens of each distribution (first on ties), as k children "
              "each (k a list: k[i] for distribution i), with q one-hot on each child: a greedy tree's deterministic children"),
        OpDef("sample_distinct", "pure", _sample_distinct, "siblings drawn without replacement (Recursive Speculative "
              "Decoding): the n distributions in groups of k siblings (k a list: consecutive groups of those sizes); sibling j of a group is drawn by inverse CDF from its q with "
              "the group's earlier tokens removed and renormalized (uniform over the tokens left when q has no mass left), which "
              "is also returned: tokens [B,n], and the distribution each was drawn from [B,n,V]", draws=(1,)),
        OpDef("head_level", "model", _head_level, "the logits of Medusa head `depth` from the hidden state (model_hidden), as "
              "one distribution for a whole tree level: Medusa heads ignore the path, so every node at depth `depth` + 1 "
              "draws its children from it"),
        OpDef("tree_build", "pure", _tree_build, "the tree's levels (tokens, q) as one breadth-first proposal: tokens [B,N], the "
              "distribution q [B,N,V] each node was drawn from, and the nodes drafted [B] (N)"),
        OpDef("tree_match", "pure", _tree_match, "the longest root path whose every node equals the target's token t at its "
              "parent's position (the first matching sibling wins): path [B,D] (node indices, 0 past n), its length n [B], and "
              "the position at its end [B]"),
        OpDef("tree_rejection", "pure", _tree_rejection, "recursive rejection over siblings (SpecInfer): at the current position "
              "with target r (r = p at the root), try its children c in order: accept iff u_c * q_c(c) < r(c), then descend "
              "(r = p at c); on a rejection r <- norm(max(0, r - q_c)); when every child is rejected, or at a leaf, stop: "
              "path [B,D], its length n [B], and r [B,V], the distribution of the next token", draws=(3,)),
        OpDef("tree_expand", "pure", _tree_expand, "a dynamic tree's expansion (DySpec, EAGLE-2): each of the level's n nodes "
              "(the last n of the tree so far) scores its cumulative draft probability, score * q(token) (score 1 on the first "
              "level); the k of highest score (first on ties) are expanded with c children each: parents [B,M+k*c] (the tree's "
              "so far, zeros for a first level, then the children's parent positions), the expanded nodes' q_next [B,k,V] (the "
              "distribution their children are drawn from), and each child's parent score [B,k*c]"),
        OpDef("tree_rerank", "pure", _tree_rerank, "EAGLE-2's rerank of a dynamic tree: each node's score is the product of "
              "its weight (its draft probability) along its root path; the `nodes` of highest score (first on ties, so a "
              "node's parent, never below it, always comes first) are kept in tree order: tokens [B,m], q [B,m,V], their "
              "parents i64[B,m] renumbered (a dynamic tree of `depth`), and the nodes drafted [B] (m)"),
        OpDef("tree_splice", "pure", _tree_splice, "the tokens of path[:, :n] followed by token: the round's new tokens (count n + 1)"),
    ]
}

__all__ = ["TREE_OPS", "tree_depth", "tree_depths", "tree_parents"]
