"""Sequoia's optimal token tree (Chen et al. 2024, "Sequoia: Scalable, Robust, and Hardware-aware Speculative
Decoding"): the static tree shape that maximizes the expected number of accepted drafts for a node budget and
a depth, given measured acceptance rates.

The positional acceptance assumption: when a node is reached, verification accepts its k-th child (the k-th
drawn, without replacement) with probability p_k, whatever the rest of the tree holds. So a node v is reached
with probability f(v), the product of p_k over the child ranks k on its root path, and a tree T accepts
E[T] = sum over v in T of f(v) drafts on average. The best tree under a budget of n nodes and depth d is a
dynamic program over subtree sizes:

    R(m, 0) = 0                                       (no depth left: no children)
    R(m, d) = G(m, 1, d)                              (a node's children may hold up to m nodes)
    G(m, k, d) = max(0, max_{1<=a<=m} p_k (1 + R(a - 1, d - 1)) + G(m - a, k + 1, d))   (child k takes a nodes)

with G(m, k, d) = 0 past the last rank (k > len(p)): the k-th child exists only after children 1..k-1. R(n, d)
is the best E[T]; the argmaxes give the shape, built as a networkx tree and numbered breadth-first (children in
rank order) into the `parents` tuple the tree ops take.

    >>> sequoia_parents((0.6, 0.3), budget = 5, depth = 2)  # two root children; two under the first, one under the second
    (0, 0, 1, 1, 2)
    >>> round(expected_accepted((0, 0, 1, 1, 2), (0.6, 0.3)), 4)  # 0.6 + 0.3 + 0.6 * 0.6 + 0.6 * 0.3 + 0.3 * 0.6
    1.62
"""
from __future__ import annotations

import math
from functools import lru_cache

import networkx as nx
import torch

from decspec.compiler.lower import Lowering
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.registry import Component, Contract, Param, register
from decspec.stdlib.trees import MAX_NODES, _refuse_slots, draft_static_tree

MAX_DEPTH = 16


@lru_cache(maxsize=32)
def _program(acceptance: tuple[float, ...], budget: int, depth: int) -> tuple[list, list]:
    """The table R[d][m] (the best value of a node's children, sharing at most m nodes, d levels below it) and the
    sizes chosen, size[d][k][m] = a: child k + 1 of a node whose children k + 1, k + 2, ... share m nodes takes a
    of them (0: no child k + 1, and none after it). g[k][m] is G(m, k + 1, d) of the module's recurrence."""
    K = len(acceptance)
    R = [[0.0] * (budget + 1)]
    size: list = [None]
    for d in range(1, depth + 1):
        g = [[0.0] * (budget + 1) for _ in range(K + 1)]  # g[K][m] = 0: no rank past the last
        s = [[0] * (budget + 1) for _ in range(K + 1)]
        for k in range(K - 1, -1, -1):
            for m in range(1, budget + 1):
                best, pick = 0.0, 0
                for a in range(1, m + 1):
                    v = acceptance[k] * (1 + R[d - 1][a - 1]) + g[k + 1][m - a]
                    if v > best + 1e-12:  # ties to the smaller subtree: the fewest nodes for the same value
                        best, pick = v, a
                g[k][m], s[k][m] = best, pick
        R.append(g[0])
        size.append(s)
    return R, size


def check_acceptance(acceptance, span=None) -> tuple[float, ...]:
    p = tuple(float(x) for x in acceptance)
    if not p:
        raise DecError("sequoia's 'acceptance' is empty: give the measured acceptance rate of the k-th child, e.g. "
                       "acceptance = [0.6, 0.2, 0.1]", span)
    if any(not (0 <= x <= 1) or math.isnan(x) for x in p):
        raise DecError(f"sequoia's 'acceptance' rates must lie in [0, 1], found {list(p)}", span)
    if sum(p) > 1 + 1e-9:
        raise DecError(f"sequoia's 'acceptance' rates sum to {sum(p):g}: at most one child of a node is accepted, so "
                       "they sum to at most 1", span, hint="give p_k = P(the k-th child is the one accepted), e.g. as "
                       "decspec.stdlib.sequoia.measure_acceptance measures it")
    return p


def sequoia_value(acceptance, budget: int, depth: int) -> float:
    """The most drafts a tree of at most `budget` nodes and `depth` levels accepts per round on average."""
    R, _ = _program(tuple(acceptance), budget, depth)
    return R[depth][budget]


def sequoia_graph(acceptance, budget: int, depth: int) -> nx.DiGraph:
    """The optimal tree as a networkx DiGraph: node 0 is the root (the context's last token); each node carries its
    `rank` among its siblings (1: drawn first) and its `reach` f(v), the probability a round accepts it."""
    acceptance = tuple(acceptance)
    _, size = _program(acceptance, budget, depth)
    tree = nx.DiGraph()
    tree.add_node(0, reach=1.0)

    def grow(node: int, m: int, d: int) -> None:
        for k in range(len(acceptance)):
            a = size[d][k][m] if d else 0
            if a == 0:
                return
            child = tree.number_of_nodes()
            tree.add_node(child, rank=k + 1, reach=tree.nodes[node]["reach"] * acceptance[k])
            tree.add_edge(node, child)
            grow(child, a - 1, d - 1)
            m -= a

    grow(0, budget, depth)
    return tree


def breadth_first_parents(tree: nx.DiGraph) -> tuple[int, ...]:
    """A rooted tree (root 0, each node's `rank` among its siblings) as the tree ops' parents: nodes numbered
    breadth-first, each level's children in their parents' order and then by rank, node i's parent as a
    position (0: the root)."""
    position = {0: 0}
    parents = []
    for parent, child in nx.bfs_edges(tree, 0, sort_neighbors=lambda kids: sorted(kids, key=lambda c: tree.nodes[c]["rank"])):
        parents.append(position[parent])
        position[child] = len(parents)
    return tuple(parents)


def sequoia_parents(acceptance, budget: int, depth: int) -> tuple[int, ...]:
    """The optimal tree's shape as breadth-first parents (see the module's doctest)."""
    return breadth_first_parents(sequoia_graph(acceptance, budget, depth))


def expected_accepted(parents, acceptance) -> float:
    """E[T] = sum over nodes of the product of p_rank along the root path, the k-th child of a node having rank k."""
    reach, rank = [1.0], {}
    for i, pos in enumerate(parents):
        rank[pos] = rank.get(pos, 0) + 1
        k = rank[pos]
        reach.append(reach[pos] * acceptance[k - 1] if k <= len(acceptance) else 0.0)
    return sum(reach[1:])


def measure_acceptance(target, draft, sequences, ranks: int = 3, temperature: float = 1.0, samples: int = 64,
                       seed: int = 0) -> tuple[float, ...]:
    """p_1..p_ranks, Sequoia's acceptance vector, measured on the models: at every position of the sequences (text
    like the decoder's, e.g. the target's own samples), `ranks` draft tokens are drawn without replacement from
    the draft's q and tried by recursive rejection against the target's p (RSD's rule, as `multi_rejection`
    verifies `sequoia`'s siblings), `samples` times; p_k is the fraction of trials whose k-th token was accepted.
    Temperature 0: the draft's k-th most likely token is the target's argmax (greedy verification of top-k
    children). The result is `sequoia`'s `acceptance` (rounded as a spec writes it).

        >>> from decspec.stdlib.models.table import TableModel
        >>> p = measure_acceptance(TableModel.random(5, 1, 0), TableModel.random(5, 1, 1), [[0, 1, 2, 3]], ranks=2)
        >>> len(p) == 2 and sum(p) <= 1
        True
    """
    from decspec.backends.eager.tree import accept_ratio, residual, sample_distinct
    from decspec.compiler.ir import Op

    logits = {}
    for role, model in (("p", target), ("q", draft)):
        rows = [model.forward(torch.tensor([seq]), model.new_cache(1, len(seq))).logits[0].double() for seq in sequences]
        logits[role] = torch.cat(rows)  # [T, V]: every position of every sequence
    if temperature == 0:
        top = torch.sort(logits["q"], dim=-1, descending=True, stable=True).indices[:, :ranks]  # [T, ranks]
        return tuple((top == logits["p"].argmax(-1, keepdim=True)).double().mean(0).tolist())
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(logits["p"] / temperature, -1).repeat(samples, 1)  # [N, V]
    q = torch.softmax(logits["q"] / temperature, -1).repeat(samples, 1)
    N = p.shape[0]
    tokens, qs = sample_distinct(None, Op("sample_distinct", (), (), (("k", ranks),)), q[:, None].expand(N, ranks, -1).contiguous(),
                                 torch.rand(N, ranks, generator=gen, dtype=torch.double))
    u = torch.rand(N, ranks, generator=gen, dtype=torch.double)
    r, alive, accepted = p, torch.ones(N, dtype=torch.bool), torch.zeros(N, ranks, dtype=torch.double)
    for k in range(ranks):  # sibling k: accepted with probability min(1, r/q_k); on a rejection r <- norm(max(0, r - q_k))
        ok = alive & (u[:, k] < accept_ratio(r, qs[:, k], tokens[:, k]))
        accepted[:, k] = ok.double()
        r = torch.where((alive & ~ok)[:, None], residual(r, qs[:, k]), r)
        alive &= ~ok
    return tuple(accepted.mean(0).tolist())


def lower_sequoia(lw: Lowering, inst, ctx):
    """The optimal static tree for the budget, the depth and the acceptance rates, drafted as `tree` drafts one:
    one draft call per depth, a node's children drawn without replacement from its q (the top ones under a
    greedy pipeline)."""
    budget, depth = inst.arg("budget"), inst.arg("depth")
    if not 1 <= budget <= MAX_NODES:
        raise DecError(f"sequoia's 'budget' must be in 1..{MAX_NODES}, found {budget}", inst.span)
    if not 1 <= depth <= MAX_DEPTH:
        raise DecError(f"sequoia's 'depth' must be in 1..{MAX_DEPTH}, found {depth}", inst.span)
    acceptance = check_acceptance(inst.arg("acceptance"), inst.span)
    _refuse_slots(lw)
    parents = sequoia_parents(acceptance, budget, depth)
    if not parents:
        raise DecError("sequoia's acceptance rates are all 0: the best tree is empty", inst.span,
                       hint="give at least one rate above 0")
    return draft_static_tree(lw, lw.role(inst.arg("model")), ctx, parents, distinct=True)


register(
    Component(
        "draft",
        "sequoia",
        (
            Param("model", "model", doc="the draft model"),
            Param("budget", "int", default=8, low=1, high=MAX_NODES, doc="the most nodes the tree may hold (the target verifies "
                  "them all in one call)"),
            Param("depth", "int", default=4, low=1, high=MAX_DEPTH, doc="the tree's greatest depth, the most drafts a round can accept"),
            Param("acceptance", "list[float]", default=(0.6, 0.2, 0.1), low=0.0, high=1.0,
                  doc="p_k, the measured probability that verification accepts a node's k-th child (drawn k-th, without "
                  "replacement; `decspec.stdlib.sequoia.measure_acceptance` measures it); at most one child is accepted, so they sum to at "
                  "most 1; their count bounds a node's children"),
        ),
        "Sequoia's optimal static token tree: the shape of at most `budget` nodes and `depth` levels that maximizes the "
        "expected accepted drafts, sum over nodes of the product of p_k along the root path (a dynamic program over subtree "
        "sizes, stdlib/sequoia.py), each node with its own number of children. A node's children are drawn without "
        "replacement from the draft's q (Sequoia's sampling; the top ones under a greedy pipeline), one draft call per "
        "depth. Verify with `multi_rejection` (Recursive Speculative Decoding's rule for siblings without replacement) "
        "or `greedy`.",
        Contract(True, "the shape is fixed before the round (a function of the parameters only) and each node comes with "
                 "the distribution it was drawn from: q without its earlier siblings, renormalized (one-hot on the top-k "
                 "children under a greedy pipeline), which recursive rejection needs to reproduce the target"),
        lower_sequoia,
        cite="Chen et al. 2024, Sequoia: Scalable, Robust, and Hardware-aware Speculative Decoding",
        trees=True,
    )
)
