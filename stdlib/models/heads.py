"""Draft heads on a frozen target: Medusa (independent) and Hydra (sequentially dependent).

Both read the target's final hidden state h_t (after the final norm: the vector its LM head
turns into the distribution of token t+1) and propose tokens t+2 .. t+k+1 through the target's
own, frozen LM head:

- Medusa (Cai et al. 2024): head i is a residual SiLU block, logits_i = lm_head(h + SiLU(W_i h)).
  The heads are independent: head i does not see what heads 1..i-1 proposed.
- Hydra (Ankner et al. 2024): head i also reads the tokens proposed before it. The state starts
  at z_0 = h_t and moves through each proposed token y:  z_i = z_{i-1} + W2_i SiLU(W1_i [z_{i-1}; emb(y_{t+i})]),
  logits_i = lm_head(norm_i(z_i)); emb is the target's frozen input embedding.

    heads = MedusaHeads(hidden_size=256, num_heads=4)
    logits = heads(hidden, lm_head)                      # hidden: [B, C] -> [B, 4, V]
    hydra = HydraHeads(hidden_size=256, num_heads=4)
    logits = hydra(hidden, tokens, lm_head, embed)       # tokens: [B, 4] (y_{t+1} .. y_{t+4}) -> [B, 4, V]

The heads are stored apart from the target (`heads.safetensors` + `heads.json`), so the target's
directory stays a plain Hugging Face Llama checkpoint.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from decspec.stdlib.models.quant import quantized_linear


class ChainMemo:
    """The steps of the draft chain a draft loop is building, so step s extends steps 0..s-1 instead of redoing them.

    A chain draft's step s is a pure function of the round's inputs and drafts[:, :s], and the eager draft loop
    asks for steps 0, 1, .., k-1 in turn: recomputing the chain at every step costs O(k^2) head passes (and as
    many LM-head passes). `states(key, drafts, step)` gives the states remembered for these inputs: those of
    steps 0..n-1 whose drafts equal drafts[:, :n] and whose inputs equal `key` (compared by value with copies
    kept at step 0), or none; the caller appends the states it computes. `chain_memo(head)` gives each head
    one per thread, so concurrent calls never see each other's chains; compiled code never uses it (`usable`).

    >>> memo = ChainMemo()
    >>> key, drafts = (torch.ones(2, 3),), torch.tensor([[5, 6], [7, 8]])
    >>> memo.states(key, drafts, 0).append("s0"); memo.states(key, drafts, 1).append("s1")
    >>> memo.states(key, drafts, 1)
    ['s0', 's1']
    >>> memo.states(key, torch.tensor([[9, 6], [7, 8]]), 1)   # another draft 0: step 1 is recomputed
    ['s0']
    >>> memo.states((torch.zeros(2, 3),), drafts, 0)           # other inputs: everything is
    []
    """

    def __init__(self):
        self.key: tuple[torch.Tensor, ...] | None = None
        self.chain: list = []
        self.drafts: list[torch.Tensor] = []  # drafts[i]: the draft column state i + 1 read

    @staticmethod
    def usable(step) -> bool:
        return isinstance(step, int) and not torch.compiler.is_compiling()

    def states(self, key: tuple[torch.Tensor, ...], drafts: torch.Tensor, step: int) -> list:
        same = self.key is not None and len(key) == len(self.key) and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b) for a, b in zip(key, self.key))
        n = 1 if same and self.chain else 0
        if not same:
            self.key, self.chain, self.drafts = tuple(t.detach().clone() for t in key), [], []
        while n < len(self.chain) and n <= step and torch.equal(self.drafts[n - 1], drafts[:, n - 1]):
            n += 1
        del self.chain[n:], self.drafts[max(n - 1, 0):]
        self.drafts += [drafts[:, i].clone() for i in range(len(self.drafts), step)]
        return self.chain


class MedusaHeads(nn.Module):
    """k independent residual heads: head i maps h_t to the distribution of token t+i+1 (i = 1..k)."""

    kind = "medusa"

    def __init__(self, hidden_size: int, num_heads: int, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.blocks = nn.ModuleList(nn.Linear(hidden_size, hidden_size, dtype=dtype) for _ in range(num_heads))
        for block in self.blocks:  # Medusa's init: each head starts as the identity, i.e. as the target's own head
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., C] -> per-head features [..., k, C] (before the LM head)."""
        return torch.stack([self.feature(hidden, i) for i in range(self.num_heads)], dim=-2)

    def feature(self, hidden: torch.Tensor, i: int) -> torch.Tensor:
        """Head i's feature: hidden [..., C] -> h + SiLU(W_i h) [..., C]."""
        return hidden + F.silu(self.blocks[i](hidden))

    def head(self, hidden: torch.Tensor, i: int, lm_head: nn.Module) -> torch.Tensor:
        """Head i alone: hidden [..., C] -> logits [..., V] (float32), equal to forward(...)[..., i, :]."""
        return lm_head(self.feature(hidden, i)).float()

    def forward(self, hidden: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """hidden: [..., C] -> logits [..., k, V] (float32)."""
        return lm_head(self.features(hidden)).float()


class HydraHeads(nn.Module):
    """k sequentially dependent heads: head i reads h_t and the tokens y_{t+1} .. y_{t+i}."""

    kind = "hydra"

    def __init__(self, hidden_size: int, num_heads: int, *, eps: float = 1e-6, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.hidden_size, self.num_heads, self.eps = hidden_size, num_heads, eps
        self.w1 = nn.ModuleList(nn.Linear(2 * hidden_size, hidden_size, dtype=dtype) for _ in range(num_heads))
        self.w2 = nn.ModuleList(nn.Linear(hidden_size, hidden_size, bias=False, dtype=dtype) for _ in range(num_heads))
        self.norms = nn.ParameterList(nn.Parameter(torch.ones(hidden_size, dtype=dtype)) for _ in range(num_heads))
        for w2 in self.w2:  # start as "repeat the target's head": z_i = z_{i-1}
            nn.init.zeros_(w2.weight)

    def step(self, i: int, state: torch.Tensor, token_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head i (0-based): state z_i [..., C], emb(y) [..., C] -> (z_{i+1}, normed features [..., C])."""
        z = state + self.w2[i](F.silu(self.w1[i](torch.cat([state, token_embedding], dim=-1))))
        normed = z.float() * torch.rsqrt(z.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return z, self.norms[i] * normed.to(z.dtype)

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor, lm_head: nn.Module, embed: nn.Module) -> torch.Tensor:
        """Teacher-forced: hidden [..., C], tokens [..., k] (y_{t+1} .. y_{t+k}) -> logits [..., k, V] (float32)."""
        state, feats = hidden, []
        emb = embed(tokens)  # [..., k, C]
        for i in range(self.num_heads):
            state, f = self.step(i, state, emb[..., i, :])
            feats.append(f)
        return lm_head(torch.stack(feats, dim=-2)).float()


_local = threading.local()


def chain_memo(head: nn.Module) -> ChainMemo:
    """This thread's ChainMemo for `head` (dropped with the head)."""
    from weakref import WeakKeyDictionary

    memos = _local.__dict__.setdefault("memos", WeakKeyDictionary())
    if head not in memos:
        memos[head] = ChainMemo()
    return memos[head]


HEADS = {"medusa": MedusaHeads, "hydra": HydraHeads}


class SubsetHead(nn.Module):
    """An LM head restricted to a subset of the vocabulary, for drafting (FR-Spec, Zhao et al. 2025; EAGLE-3's
    draft vocabulary): logits [..., V] that are -inf outside `ids`.

    A draft's LM head over a 49k vocabulary reads more weights than the rest of a small draft; over the
    8k most frequent tokens it reads a sixth of them. Lossless: the verifier receives this q, zero outside
    the subset, and rejection sampling corrects any q; the target itself keeps its whole vocabulary.

    >>> head = SubsetHead(nn.Linear(4, 10, bias=False), torch.tensor([0, 3, 7]))
    >>> head(torch.ones(2, 4)).shape, bool(head(torch.ones(4)).isinf().sum() == 7)
    (torch.Size([2, 10]), True)
    """

    def __init__(self, lm_head: nn.Module, ids: torch.Tensor):
        super().__init__()
        self.vocab_size = lm_head.weight.shape[0]
        self.register_buffer("ids", ids.to(torch.long, copy=True), persistent=False)
        self.weight = nn.Parameter(lm_head.weight.detach()[self.ids].contiguous(), requires_grad=False)  # [N, C]
        bias = getattr(lm_head, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach()[self.ids].clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sub = quantized_linear(self, x)  # a quantized model's 8-bit rows (stdlib/models/quant.py), else float
        if sub is None:
            sub = F.linear(x, self.weight, self.bias)  # [..., N]
        out = torch.full((*x.shape[:-1], self.vocab_size), float("-inf"), dtype=sub.dtype, device=sub.device)
        return out.index_copy(-1, self.ids, sub)  # [..., V]
