"""EAGLE draft head: a one-layer autoregressive model over the target's features (Li et al. 2024).

EAGLE ("Speculative Sampling Requires Rethinking Feature Uncertainty", ICML 2024) drafts at the
level of the target's *features*, the final hidden state f_j (after the final norm) that the
target's LM head turns into the distribution of token j+1. The head reads a sequence of steps;
step j is the pair (f_j, t_{j+1}), the feature and the token the target then emitted (sampled),
which resolves the feature's uncertainty about what came next:

    x_j  = FC([f_j ; emb(t_{j+1})])                # [.., 2C] -> [.., C]
    y_j  = one Llama decoder layer over x (causal)  # attention over the head's own steps
    f^_{j+1} = y_j,  q(t_{j+2}) = softmax(lm_head(f^_{j+1}))

emb and lm_head are the target's, frozen. Drafting starts from the target's real features of the
context and continues on the head's own predictions: step s appends (f^, d_s) and predicts the next
feature. The attention window is the last `window` steps (W = 32 here; the paper attends over the
whole context with a KV cache): training uses the same sliding-window causal mask, so the head never
sees more than W steps at once. Drafting runs the context window once per round and then one step per
draft over the window's kept keys and values (`draft_feature`; no cache across rounds).

    head = EagleHead(hidden_size=256)
    f_next = head(features, embed(tokens))            # [B, T, C], [B, T, C] -> [B, T, C]
    logits = head.draft_all(features, tokens, valid, drafts, 3, lm_head, embed)   # -> [B, 4, V]: drafts 1..4

Stored apart from the target, beside it (`eagle.safetensors` + `eagle.json`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from decspec.stdlib.models.heads import ChainMemo
from decspec.stdlib.models.transformer import DecoderLayer, TransformerConfig, rope


class EagleHead(nn.Module):
    """FC over [feature; token embedding], one decoder layer with sliding-window attention (its own steps)."""

    kind = "eagle"

    def __init__(self, hidden_size: int, *, window: int = 32, intermediate_size: int | None = None,
                 num_attention_heads: int = 4, num_key_value_heads: int = 2, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.hidden_size, self.window = hidden_size, window
        self.config = TransformerConfig(
            vocab_size=1, hidden_size=hidden_size, intermediate_size=intermediate_size or 3 * hidden_size,
            num_hidden_layers=1, num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        )
        self.fc = nn.Linear(2 * hidden_size, hidden_size, dtype=dtype)
        self.layer = DecoderLayer(self.config, dtype, "cpu")
        for name, p in self.layer.named_parameters():  # HF-style init (DecoderLayer's Linear leaves weights empty)
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            else:
                nn.init.ones_(p)
        D = self.config.head_size
        inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, D, 2).float() / D))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def meta(self) -> dict:
        c = self.config
        return {"hidden_size": self.hidden_size, "window": self.window, "intermediate_size": c.intermediate_size,
                "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.kv_heads}

    def forward(self, features: torch.Tensor, token_embeddings: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Steps (f_j, emb(t_{j+1})), each [B, T, C] -> predicted features f^_{j+1} [B, T, C].

        Step j attends steps max(0, j-W+1) .. j that are valid (valid: [B, T] bool, default all; a step
        always attends itself).
        """
        B, T, C = features.shape
        x = self.fc(torch.cat([features, token_embeddings], dim=-1))  # [B, T, C]
        i = torch.arange(T, device=x.device)
        mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - self.window)  # [T, T]: query j, key i
        mask = mask[None].expand(B, T, T)
        if valid is not None:
            mask = mask & (valid[:, None, :] | torch.eye(T, dtype=torch.bool, device=x.device)[None])
        cos, sin = rope(i[None].expand(B, T), self.inv_freq, x.dtype)  # [B, 1, T, D]
        q, k, v = self.layer.self_attn.qkv(self.layer.input_layernorm(x), cos, sin)  # [B, H, T, D], [B, Hkv, T, D] x 2
        return self._attend(x, q, k, v, mask[:, None])

    def draft_features(self, features: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, drafts: torch.Tensor,
                       last: int, embed: nn.Module) -> torch.Tensor:
        """The predicted features of drafts 0 .. last -> [B, last+1, C].

        features: the target's real features at the last W context steps [B, W, C]; tokens: the token
        each was followed by [B, W] (the last is the context's last token); valid: [B, W] bool (False
        before the context's start); drafts: [B, K], of which drafts[:, :last] are read. Step s >= 1
        appends (f^ predicted at step s-1, drafts[:, s-1]) to the head's sequence.
        """
        feats, emb, ok, out = features, embed(tokens), valid, []
        for s in range(last + 1):
            f_next = self(feats[:, -self.window:], emb[:, -self.window:], ok[:, -self.window:])[:, -1]  # [B, C]
            out.append(f_next)
            if s < last:
                feats = torch.cat([feats, f_next[:, None]], 1)
                emb = torch.cat([emb, embed(drafts[:, s])[:, None]], 1)
                ok = torch.cat([ok, torch.ones_like(ok[:, :1])], 1)
        return torch.stack(out, 1)

    def draft_feature(self, features: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, drafts: torch.Tensor,
                      step: int, embed: nn.Module, memo: ChainMemo) -> torch.Tensor:
        """The predicted feature of draft `step` [B, C] (arguments as draft_features), extending the chain `memo`
        holds for these inputs: the context window runs once per round (keys and values of its W steps, the
        output of its last), then each draft step is one new step attending the kept keys and values (the last
        W, as the sliding window does; RoPE depends only on the offsets). Equal to draft_features[:, step] up
        to float rounding, at O(W + k) head steps a round instead of O(W k^2)."""
        chain = memo.states((features, tokens, valid), drafts, step)
        if not chain:
            W = self.window
            chain.append(self._window(features[:, -W:], embed(tokens[:, -W:]), valid[:, -W:]))
        while len(chain) <= step:
            chain.append(self._extend(chain[-1], embed(drafts[:, len(chain) - 1])))
        return chain[step][0]

    def _attend(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The layer's output for the query steps x [B, T, C] (q [B, H, T, D]) over keys k, v [B, Hkv, S, D]; mask [B, 1, T, S]."""
        a, layer = self.layer.self_attn, self.layer
        B, T, _ = x.shape
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=a.n_head != a.n_kv)
        h = x + a.o_proj(y.transpose(1, 2).reshape(B, T, a.n_head * a.d))
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def _window(self, features: torch.Tensor, token_embeddings: torch.Tensor, valid: torch.Tensor) -> tuple:
        """Draft 0's state from the context steps [B, T, C] x 2, valid [B, T]: (f^ [B, C], k, v, valid, next position)."""
        B, T, _ = features.shape
        x = self.fc(torch.cat([features, token_embeddings], dim=-1))  # [B, T, C]
        cos, sin = rope(torch.arange(T, device=x.device)[None].expand(B, T), self.inv_freq, x.dtype)
        q, k, v = self.layer.self_attn.qkv(self.layer.input_layernorm(x), cos, sin)  # [B, H, T, D], [B, Hkv, T, D] x 2
        self_step = torch.arange(T, device=x.device) == T - 1  # the last step attends itself whether valid or not
        mask = (valid | self_step)[:, None, None, :]  # [B, 1, 1, T]: T <= W, so the window holds every step
        f = self._attend(x[:, -1:], q[:, :, -1:], k, v, mask)[:, 0]
        return f, k, v, valid, T

    def _extend(self, state: tuple, token_embedding: torch.Tensor) -> tuple:
        """The next draft step's state from the last one and the embedding of the token drafted there [B, C]."""
        f, k, v, valid, p = state
        B = f.shape[0]
        x = self.fc(torch.cat([f, token_embedding], dim=-1))[:, None]  # [B, 1, C]
        cos, sin = rope(torch.full((B, 1), p, device=x.device), self.inv_freq, x.dtype)
        q, k1, v1 = self.layer.self_attn.qkv(self.layer.input_layernorm(x), cos, sin)
        W = self.window
        k, v = torch.cat([k, k1], 2)[:, :, -W:], torch.cat([v, v1], 2)[:, :, -W:]  # steps p-W+1 .. p
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)[:, -W:]
        return self._attend(x, q, k, v, valid[:, None, None, :])[:, 0], k, v, valid, p + 1

    def draft_all(self, features: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, drafts: torch.Tensor,
                  last: int, lm_head: nn.Module, embed: nn.Module) -> torch.Tensor:
        """The logits of drafts 0 .. last -> [B, last+1, V] (float32); arguments as draft_features."""
        return lm_head(self.draft_features(features, tokens, valid, drafts, last, embed)).float()

    def draft(self, features, tokens, valid, drafts, step: int, lm_head: nn.Module, embed: nn.Module) -> torch.Tensor:
        """The logits of draft `step` alone (see draft_features): the LM head runs once, on that step's feature. -> [B, V]"""
        return lm_head(self.draft_features(features, tokens, valid, drafts, step, embed)[:, step]).float()
