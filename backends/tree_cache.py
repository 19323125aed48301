"""`tree_call` over a PrefixCache: a token tree fed in one model call, and its accepted path kept.

In the IR a tree call is still a pure function of token sequences: "the logits after ctx ++ the
root path of each node". The PrefixCache makes it cheap as it does for chains:

- the call rolls the cache back to the longest common prefix with ctx (as `PrefixCache.logits`),
  then feeds one block: the ctx tokens the cache lacks (a chain) followed by the M tree nodes,
  under a tree attention mask (a node attends the chain and its ancestors; its position is its
  depth), so node i lands at cache position len(ctx) + i;
- the cache then *holds the tree*: `PrefixCache.tree` records (base, tokens, parents);
- the next call on that cache first settles the tree against the sequence it needs (`settle`): the
  longest root path of the tree that the sequence continues with is moved to contiguous slots by
  `cache.commit_path` (K/V included) and everything else in the tree is forgotten. After a round,
  the target's cache so holds exactly the committed path, and only the bonus token is fed next.

When the cache records hidden states (draft heads read them: `PrefixCache.hidden`), the tree call
records the nodes' and `settle` moves the path's with its K/V; a model that gives none under a tree
mask (the table models) has the block forgotten at `settle` instead, so that `hidden` re-feeds it.

The protocol's tree mask covers the new block only (a new token attends every cached slot), so a
tree cannot be extended in place: a draft growing a tree level by level re-feeds the levels it
already has at every call (a cost of O(depth x nodes) tokens per round, small for static trees).
"""
from __future__ import annotations

from functools import lru_cache

import torch


def traced_once(fn):
    """lru_cache for eager calls; under torch.compile the plain function, which dynamo traces (once per graph) instead
    of warning that it ignores the cache wrapper."""
    cached = lru_cache(maxsize=256)(fn)

    def call(parents):
        return fn(parents) if torch.compiler.is_compiling() else cached(parents)

    call.__doc__, call.__name__, call.cache_info = fn.__doc__, fn.__name__, cached.cache_info
    return call


@traced_once
def children_table(parents: tuple[int, ...]) -> torch.Tensor:
    """children[pos] = the node indices whose parent is position pos, in order, padded with -1. -> [M+1, W]"""
    M = len(parents)
    kids: list[list[int]] = [[] for _ in range(M + 1)]
    for i, pos in enumerate(parents):
        kids[pos].append(i)
    W = max([1] + [len(k) for k in kids])  # no `default=`: dynamo traces this in compiled tree kernels
    return torch.tensor([k + [-1] * (W - len(k)) for k in kids], dtype=torch.long)


@traced_once
def ancestors(parents: tuple[int, ...]) -> torch.Tensor:
    """anc[i, j]: node j is a proper ancestor of node i. -> [M, M] bool"""
    M = len(parents)
    anc = torch.zeros(M, M, dtype=torch.bool)
    for i, pos in enumerate(parents):
        if pos > 0:
            anc[i] = anc[pos - 1]
            anc[i, pos - 1] = True
    return anc


def depths_rows(parents: torch.Tensor) -> torch.Tensor:
    """Each position's depth for a dynamic tree's parents [B, M] (a parent's position precedes its node). -> [B, M+1]"""
    B, M = parents.shape
    depth = torch.zeros(B, M + 1, dtype=torch.long, device=parents.device)
    for i in range(M):
        depth[:, i + 1] = depth.gather(1, parents[:, i, None]).squeeze(1) + 1
    return depth


def ancestors_rows(parents: torch.Tensor) -> torch.Tensor:
    """anc[b, i, j]: node j is a proper ancestor of node i in row b's tree. parents [B, M] -> [B, M, M] bool"""
    B, M = parents.shape
    anc = torch.zeros(B, M, M, dtype=torch.bool, device=parents.device)
    rows = torch.arange(B, device=parents.device)
    eye = torch.eye(M, dtype=torch.bool, device=parents.device)
    for i in range(M):
        up = (parents[:, i] - 1).clamp(min=0)  # the parent's node index (root: none)
        has = (parents[:, i] > 0)[:, None]
        anc[:, i] = has & (anc[rows, up] | eye[up])
    return anc


def walk(tokens: torch.Tensor, parents: tuple[int, ...], follow: torch.Tensor, limit: torch.Tensor | None = None):
    """The longest root path whose node at depth d+1 holds follow[:, d] (the first such sibling wins).

    tokens: [B, M] the nodes, follow: [B, L] the tokens to follow, limit: [B] how many of them count
    -> path [B, L] (node indices, 0 past n), n [B], position at the path's end [B] (0: the root)
    """
    B, L = follow.shape
    dev = tokens.device
    if isinstance(parents, torch.Tensor):  # a dynamic tree: each row its own shape
        return _walk_rows(tokens, parents, follow, limit)
    table = children_table(tuple(parents)).to(dev)  # [M+1, W]
    pos = torch.zeros(B, dtype=torch.long, device=dev)
    n = torch.zeros(B, dtype=torch.long, device=dev)
    alive = torch.ones(B, dtype=torch.bool, device=dev) if limit is None else limit > 0
    path = torch.zeros(B, L, dtype=torch.long, device=dev)
    for d in range(L):
        kids = table[pos]  # [B, W]
        ok = (kids >= 0) & (tokens.gather(1, kids.clamp(min=0)) == follow[:, d, None]) & alive[:, None]
        found = ok.any(1)
        child = kids.gather(1, ok.int().argmax(1, keepdim=True)).squeeze(1)
        path[:, d] = torch.where(found, child, 0)
        n += found
        pos = torch.where(found, child + 1, pos)
        alive = found if limit is None else found & (d + 1 < limit)
    return path, n, pos


def _walk_rows(tokens, parents, follow, limit):
    B, L = follow.shape
    pos = torch.zeros(B, dtype=torch.long, device=tokens.device)
    n = torch.zeros_like(pos)
    alive = torch.ones(B, dtype=torch.bool, device=tokens.device) if limit is None else limit > 0
    path = torch.zeros(B, L, dtype=torch.long, device=tokens.device)
    for d in range(L):
        ok = (parents == pos[:, None]) & (tokens == follow[:, d, None]) & alive[:, None]  # [B, M]: children of pos holding it
        found = ok.any(1)
        child = ok.int().argmax(1)  # the first such child
        path[:, d] = torch.where(found, child, 0)
        n += found
        pos = torch.where(found, child + 1, pos)
        alive = found if limit is None else found & (d + 1 < limit)
    return path, n, pos


def settle(pc, seq: torch.Tensor, seq_len: torch.Tensor) -> None:
    """Keep, of the tree `pc` holds, the longest root path that seq [B, W] (lengths [B]) continues with."""
    base, tokens, parents, unrecorded = pc.tree
    pc.tree = None
    depth = int(depths_rows(parents).max()) if isinstance(parents, torch.Tensor) else _depth(parents)
    W = seq.shape[1]
    cols = (base[:, None] + torch.arange(depth, device=seq.device)).clamp(max=max(W - 1, 0))  # [B, D]
    follow = seq.gather(1, cols) if W else torch.zeros_like(cols)
    path, n, _ = walk(tokens, parents, follow, (seq_len - base).clamp(min=0))
    pc.cache.commit_path(base, path, n)
    if unrecorded is not None:  # the block's hidden states were not recorded: forget it (the next call re-feeds it)
        pc.cache.rollback(torch.minimum(pc.cache.length, unrecorded))
    elif pc.record_hidden and pc.hiddens is not None:  # the path's hidden states move with its K/V (draft heads read them)
        src = (base[:, None] + path).clamp(max=pc.hiddens.shape[1] - 1)  # [B, D]: node path[d] sat at base + path[d]
        dst = (base[:, None] + torch.arange(depth, device=seq.device)).clamp(max=pc.hiddens.shape[1] - 1)
        keep = (torch.arange(depth, device=seq.device)[None, :] < n[:, None])[..., None]  # [B, D, 1]
        moved = pc.hiddens.gather(1, src[..., None].expand(-1, -1, pc.hiddens.shape[-1]))
        old = pc.hiddens.gather(1, dst[..., None].expand(-1, -1, pc.hiddens.shape[-1]))
        pc.hiddens.scatter_(1, dst[..., None].expand(-1, -1, pc.hiddens.shape[-1]), torch.where(keep, moved, old))


@lru_cache(maxsize=256)
def _depth(parents: tuple[int, ...]) -> int:
    from decspec.compiler.ops_tree import tree_depth

    return tree_depth(parents)


def tree_block(ctx_tokens: torch.Tensor, start: torch.Tensor, chain: torch.Tensor, tokens: torch.Tensor | None, parents,
               T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of T entries that feeds a token tree: each row's `chain` [B] context tokens from position start [B],
    then the M nodes of `tokens` [B, M] (None: none), then padding. -> feed [B, T], tree mask [B, T, T]: the chain is
    causal, a node attends the whole chain and its ancestors (parents: a tuple, or a dynamic tree's [B, M]); padding
    attends only itself (the model adds the diagonal). Shared by the PrefixCache (tree_logits) and the static
    sessions (backends/inductor/static.py), with static shapes: T is an int."""
    dev = ctx_tokens.device
    M = 0 if tokens is None else tokens.shape[1]
    j = torch.arange(T, device=dev)[None, :]  # [1, T] block index
    is_chain = j < chain[:, None]  # [B, T]
    fed = ctx_tokens.gather(1, (start[:, None] + j).clamp(max=ctx_tokens.shape[1] - 1))
    mask = is_chain[:, :, None] & is_chain[:, None, :] & (j[:, :, None] >= j[:, None, :])  # [B, T, T]: the chain is causal
    if not M:
        return torch.where(is_chain, fed, torch.zeros_like(fed)), mask
    node = j - chain[:, None]  # [B, T] node index of each block entry
    is_node = (node >= 0) & (node < M)
    node = node.clamp(0, M - 1)
    feed = torch.where(is_chain, fed, torch.where(is_node, tokens.gather(1, node), torch.zeros_like(fed)))  # [B, T]
    if isinstance(parents, torch.Tensor):  # a dynamic tree (parents [B, M]): each row its own mask
        rows = torch.arange(tokens.shape[0], device=dev)[:, None, None]
        anc = ancestors_rows(parents)[rows, node[:, :, None], node[:, None, :]]  # [B, T, T]
    else:
        anc = ancestors(tuple(parents)).to(dev)[node[:, :, None], node[:, None, :]]  # [B, T, T]
    mask = mask | (is_node[:, :, None] & is_chain[:, None, :])  # every node attends the whole chain
    return feed, mask | (is_node[:, :, None] & is_node[:, None, :] & anc)  # and its ancestors


def tree_logits(pc, ctx_tokens: torch.Tensor, ctx_length: torch.Tensor, tokens: torch.Tensor | None,
                parents: tuple[int, ...], first: int = 0) -> torch.Tensor:
    """Logits at positions first..M of the tree `tokens` [B, M] (parents: node i's parent position)
    under ctx: position 0 after ctx, position i+1 after ctx ++ node i's root path. -> [B, M+1-first, V]"""
    if tokens is None or tokens.shape[1] == 0:
        return pc.logits(ctx_tokens, ctx_length, last=True)[:, None]
    if pc.tree is not None:
        settle(pc, ctx_tokens, ctx_length)
    dev = ctx_tokens.device
    M = tokens.shape[1]
    cache = pc.cache
    W = int(ctx_length.max())
    held = torch.minimum(cache.length, ctx_length)
    cols = torch.arange(W, device=dev)
    differs = (cache.tokens[:, :W] != ctx_tokens[:, :W]) & (cols[None, :] < held[:, None])
    lcp = torch.where(differs.any(1), differs.int().argmax(1), held)  # [B]
    start = torch.minimum(lcp, ctx_length - 1 if first == 0 else ctx_length)  # the root's logits need ctx's last token fed
    cache.rollback(start)
    chain = ctx_length - start  # [B] ctx tokens each row feeds before the tree
    feed, mask = tree_block(ctx_tokens, start, chain, tokens, parents, int(chain.max()) + M)
    result = pc.model.forward(feed, cache, n_valid=chain + M, tree_mask=mask)
    out = result.logits  # [B, T, V]
    unrecorded = None
    if pc.record_hidden and result.hidden is None:  # a model with no hidden states under a tree mask (a table model):
        unrecorded = start.clone()  # `settle` forgets the block, so that `PrefixCache.hidden` re-feeds it as a chain
    elif pc.record_hidden:  # as PrefixCache.logits: block entry j sits at slot start + j (node i at ctx_length + i)
        if pc.hiddens is None:
            pc.hiddens = result.hidden.new_zeros(cache.batch, cache.capacity, result.hidden.shape[-1])
        slots = (start[:, None] + torch.arange(feed.shape[1], device=dev)[None, :]).clamp(max=cache.capacity - 1)  # [B, T]
        pc.hiddens.scatter_(1, slots[..., None].expand(-1, -1, pc.hiddens.shape[-1]), result.hidden.to(pc.hiddens))
    pc.calls += 1
    pc.tokens_fed += int((chain + M).sum())
    kept = parents.clone() if isinstance(parents, torch.Tensor) else tuple(parents)
    pc.tree = (ctx_length.clone(), tokens.clone(), kept, unrecorded)  # node i now sits at ctx_length + i
    idx = chain[:, None] - 1 + torch.arange(first, M + 1, device=dev)[None, :]  # position p is block entry chain - 1 + p
    return out.gather(1, idx[..., None].expand(-1, -1, out.shape[-1]))
