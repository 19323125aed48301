"""Train decspec's reference models from the Python standard library's own source.

    python -m decspec.stdlib.models.train --out stdlib/models/reference            # everything
    python -m decspec.stdlib.models.train --out DIR --only heads                    # one stage

Every machine with Python has the corpus (`sysconfig.get_paths()["stdlib"]`), so the models can
be rebuilt anywhere. Stages, each deterministic for a given Python version, seed and thread count:

1. tokenizer: byte-level BPE (Hugging Face `tokenizers`), 4096 tokens, `<|endoftext|>` = id 0
   separates files and is the EOS token.
2. target: Llama (RMSNorm, RoPE, SwiGLU, GQA), 6 layers, hidden 256. Trained with a LayerSkip-style
   early-exit loss: the shared final norm + LM head is also applied after every intermediate
   layer (on a random quarter of the positions, to keep the cost down), so that exiting early
   gives a usable self-draft.
3. draft: the same tokenizer, 1 layer, hidden 256, trained on the data, then distilled from the
   finished target (cross-entropy against the target's next-token distribution, as in DistillSpec)
   for `--distill-steps` more steps at a quarter of the learning rate.
4. heads: Medusa (independent) and Hydra (sequentially dependent) heads, k = 4, on the frozen target,
   self-distilled: each head learns the target's own distribution of the token it proposes.
5. eagle: an EAGLE feature-level draft head (stdlib/models/eagle.py) on the frozen target: feature
   regression (smooth L1) + cross-entropy of the target's LM head on the predicted feature against the
   target's own distribution; `--eagle-steps`, `--eagle-seq-len` (run it alone with `--only eagle`).

Held-out modules (HELDOUT) are never trained on; the final held-out loss of each model (and of
each exit layer and head) is written to `train_log.json` beside the weights.

The target and draft directories are Hugging Face Llama checkpoints (config.json,
model.safetensors in float16, tokenizer files): `transformers.AutoModelForCausalLM.from_pretrained`
loads them unchanged. The heads sit beside the target's weights in `heads.safetensors` + `heads.json`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import sysconfig
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from decspec.progress import progress
from decspec.stdlib.models.eagle import EagleHead
from decspec.stdlib.models.heads import HydraHeads, MedusaHeads
from decspec.stdlib.models.pretrained import load_transformer
from decspec.stdlib.models.transformer import Transformer, TransformerConfig, rope

EOS = "<|endoftext|>"
VOCAB = 4096
SEQ_LEN = 512
# Modules held out for evaluation (paths relative to the stdlib root; a trailing "/" is a package).
HELDOUT = (
    "argparse.py", "bisect.py", "csv.py", "dataclasses.py", "fractions.py", "heapq.py",
    "json/", "statistics.py", "string.py", "textwrap.py",
)
# Not ordinary library source: installed packages, generated codec tables, bundled wheels, build config.
# The test suites stay in (they are Python too, and triple the corpus) except the held-out modules' own tests.
EXCLUDED = ("site-packages/", "encodings/", "ensurepip/", "config-")

TARGET = TransformerConfig(
    vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ_LEN,
    tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
)
DRAFT = TransformerConfig(
    vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ_LEN,
    tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
)
NUM_HEADS = 4


# --- corpus ---------------------------------------------------------------------------------


def corpus_files(root: str | Path | None = None) -> tuple[list[Path], list[Path]]:
    """(train, heldout) .py files of the standard library, sorted by relative path."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    train, heldout = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if any(rel.startswith(x) for x in EXCLUDED) or any(rel.startswith(f"test/test_{h.rstrip('/').removesuffix('.py')}") for h in HELDOUT):
            continue
        (heldout if any(rel == h or rel.startswith(h) for h in HELDOUT) else train).append(path)
    return train, heldout


def read_texts(files: list[Path]) -> list[str]:
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB):
    """Byte-level BPE over the texts; EOS is id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def encode(tok, texts: list[str]) -> torch.Tensor:
    """One stream: EOS text1 EOS text2 ... -> int64 [N]."""
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.append(eos)
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


def windows(stream: torch.Tensor, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """batch random windows of `length` tokens. -> [batch, length]"""
    start = torch.randint(0, len(stream) - length, (batch,), generator=gen)
    return stream[start[:, None] + torch.arange(length)[None, :]]


def eval_windows(stream: torch.Tensor, length: int, limit: int | None = None) -> torch.Tensor:
    """Non-overlapping windows covering the stream (up to `limit` of them). -> [n, length]"""
    n = (len(stream) - 1) // length
    n = n if limit is None else min(n, limit)
    return stream[: n * length].view(n, length)


# --- full-sequence forward (training only; decoding uses Transformer.forward with its cache) ----


def residual_streams(model: Transformer, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Causal forward over tokens [B, T] with no cache. -> residual stream after each layer, each [B, T, C]."""
    B, T = tokens.shape
    positions = torch.arange(T)[None, :].expand(B, T)
    x = model.model.embed_tokens(tokens)
    cos, sin = rope(positions, model.inv_freq, x.dtype)
    out = []
    for layer in model.model.layers:
        a = layer.self_attn
        q, k, v = a.qkv(layer.input_layernorm(x), cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=a.n_head != a.n_kv)
        x = x + a.o_proj(y.transpose(1, 2).reshape(B, T, a.n_head * a.d))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        out.append(x)
    return out


def exit_logits(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    """The shared final norm + LM head on a residual stream [..., C] -> [..., V]."""
    return model.lm_head(model.model.norm(x))


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the student against the teacher's distribution ([..., V] each):
    the forward KL(teacher || student) up to the teacher's entropy (distillation, as in DistillSpec)."""
    return -(torch.softmax(teacher_logits.float(), -1) * torch.log_softmax(logits.float(), -1)).sum(-1).mean()


def lm_loss(model: Transformer, batch: torch.Tensor, *, exit_fraction: float, gen: torch.Generator | None,
            teacher: Transformer | None = None):
    """Next-token loss at the last layer plus (LayerSkip) the mean loss of every earlier exit on a random subset.

    With a teacher, the last layer's loss is the cross-entropy against the teacher's next-token
    distribution instead of the data's token: a draft distilled from its target agrees with it more often.
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    streams = residual_streams(model, inputs)
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = exit_logits(teacher, residual_streams(teacher, inputs)[-1])
        loss = soft_cross_entropy(exit_logits(model, streams[-1]), teacher_logits)
    else:
        loss = F.cross_entropy(exit_logits(model, streams[-1]).flatten(0, 1).float(), targets.flatten())
    if exit_fraction > 0 and len(streams) > 1:
        n = targets.numel()
        pick = torch.randperm(n, generator=gen)[: max(1, int(n * exit_fraction))]
        early = [
            F.cross_entropy(exit_logits(model, s.flatten(0, 1)[pick]).float(), targets.flatten()[pick])
            for s in streams[:-1]
        ]
        loss = loss + torch.stack(early).mean()
    return loss


@torch.no_grad()
def evaluate_lm(model: Transformer, data: torch.Tensor, batch: int = 16) -> list[float]:
    """Held-out mean cross-entropy (nats/token) at each exit layer 1..L (float32)."""
    totals = torch.zeros(model.num_layers, dtype=torch.float64)
    count = 0
    for i in range(0, len(data), batch):
        chunk = data[i : i + batch]
        streams = residual_streams(model, chunk[:, :-1])
        for layer, s in enumerate(streams):
            totals[layer] += F.cross_entropy(
                exit_logits(model, s).flatten(0, 1).float(), chunk[:, 1:].flatten(), reduction="sum"
            ).double()
        count += chunk[:, 1:].numel()
    return (totals / count).tolist()


def schedule(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def optimizer(params, lr: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95)
    )


def fit(name: str, loss_fn, params, train: torch.Tensor, *, steps: int, batch: int, lr: float, seed: int, log) -> None:
    """AdamW with warm-up + cosine decay, bf16 autocast, gradient clipping at 1.0."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in params if p.requires_grad]
    opt = optimizer(params, lr)
    t0, seen = time.perf_counter(), 0
    for step in progress(range(steps), "training", unit="step"):
        for group in opt.param_groups:
            group["lr"] = schedule(step, steps, lr, warmup=min(100, steps // 10 + 1))
        chunk = windows(train, batch, SEQ_LEN + 1 + NUM_HEADS, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(chunk, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        seen += chunk.numel()
        if step % 50 == 0 or step == steps - 1:
            rate = seen / (time.perf_counter() - t0)
            log(f"{name} step {step}/{steps} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} {rate:.0f} tok/s")


def train_lm(config: TransformerConfig, train: torch.Tensor, *, steps: int, batch: int, lr: float, seed: int,
             exit_fraction: float, log, teacher: Transformer | None = None, init: Transformer | None = None) -> Transformer:
    """Train from a random init (or from `init`'s weights), on the data or, with a teacher, distilled from it."""
    model = (init if init is not None else Transformer.random(config, seed)).requires_grad_(True)
    # The first SEQ_LEN+1 tokens of each window are used; the extra NUM_HEADS (for the heads' targets) are dropped.
    fit(config_name(config),
        lambda chunk, gen: lm_loss(model, chunk[:, : SEQ_LEN + 1], exit_fraction=exit_fraction, gen=gen, teacher=teacher),
        model.parameters(), train, steps=steps, batch=batch, lr=lr, seed=seed, log=log)
    return model.requires_grad_(False)


def config_name(config: TransformerConfig) -> str:
    return f"lm[{config.num_hidden_layers}x{config.hidden_size}]"


# --- draft heads ----------------------------------------------------------------------------


def heads_loss(target: Transformer, heads, batch: torch.Tensor, gen: torch.Generator | None = None, fraction: float = 0.25) -> torch.Tensor:
    """Mean over heads i = 1..k of the cross-entropy, given the target's hidden state h_t, against the
    target's own distribution of token t+i+1 (self-distillation, as in Medusa-2 / Hydra: the heads learn
    to predict what the target will say, which is what verification accepts)."""
    k = heads.num_heads
    T = batch.shape[1] - k - 1
    with torch.no_grad():
        hidden_all = target.model.norm(residual_streams(target, batch[:, : T + k])[-1])  # [B, T+k, C]
    return heads_step_loss(heads, target.lm_head, target.model.embed_tokens, hidden_all, batch, gen, fraction)


def heads_step_loss(heads, lm_head, embed, hidden_all: torch.Tensor, tokens: torch.Tensor,
                    gen: torch.Generator | None = None, fraction: float = 0.25) -> torch.Tensor:
    """heads_loss on the target's features already computed: hidden_all [B, T+k, C] of tokens [B, T+k+1]
    (hidden_all[:, j] gives the target's distribution of token j+1 through lm_head)."""
    k = heads.num_heads
    T = hidden_all.shape[1] - k
    # the heads' logits are k x [B, T, V]: train on a random subset of the positions to keep the cost down
    pick = torch.randperm(T, generator=gen)[: max(1, int(T * fraction))].sort().values  # [T']
    hidden = hidden_all[:, pick]  # h_t predicts t+1
    with torch.no_grad():
        teacher = lm_head(torch.stack([hidden_all[:, pick + 1 + i] for i in range(k)], dim=2))  # [B, T', k, V]: token t+i+2
    ahead = torch.stack([tokens[:, pick + 1 + i] for i in range(k)], dim=-1)  # [B, T', k]: y_{t+1} .. y_{t+k}
    logits = heads(hidden, ahead, lm_head, embed) if isinstance(heads, HydraHeads) else heads(hidden, lm_head)
    return soft_cross_entropy(logits, teacher)


def head_logits(target: Transformer, heads, hidden: torch.Tensor, ahead: torch.Tensor) -> torch.Tensor:
    """Heads on hidden [..., C]; Hydra also reads the teacher-forced tokens ahead [..., k] -> logits [..., k, V]."""
    if isinstance(heads, HydraHeads):
        return heads(hidden, ahead, target.lm_head, target.model.embed_tokens)
    return heads(hidden, target.lm_head)


@torch.no_grad()
def evaluate_heads(target: Transformer, heads, data: torch.Tensor, batch: int = 16) -> list[float]:
    """Held-out cross-entropy of each head (nats/token)."""
    k = heads.num_heads
    totals = torch.zeros(k, dtype=torch.float64)
    count = 0
    for i in range(0, len(data), batch):
        chunk = data[i : i + batch]
        T = chunk.shape[1] - k - 1
        hidden = target.model.norm(residual_streams(target, chunk[:, :T])[-1])
        ahead = torch.stack([chunk[:, 1 + j : 1 + j + T] for j in range(k + 1)], dim=-1)
        logits = head_logits(target, heads, hidden, ahead[..., :k])
        for j in range(k):
            totals[j] += F.cross_entropy(logits[..., j, :].flatten(0, 1), ahead[..., j + 1].flatten(), reduction="sum").double()
        count += ahead[..., 0].numel()
    return (totals / count).tolist()


def train_heads(kind: str, target: Transformer, train: torch.Tensor, *, steps: int, batch: int, lr: float, seed: int, log):
    torch.manual_seed(seed)
    C = target.config.hidden_size
    heads = MedusaHeads(C, NUM_HEADS) if kind == "medusa" else HydraHeads(C, NUM_HEADS)
    fit(kind, lambda chunk, gen: heads_loss(target, heads, chunk, gen), heads.parameters(), train,
        steps=steps, batch=batch, lr=lr, seed=seed, log=log)
    return heads.requires_grad_(False)


# --- EAGLE feature-level draft head -----------------------------------------------------------


def target_features(target: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The target's features f_j (final hidden state after the norm) at every position. [B, T] -> [B, T, C]"""
    return target.model.norm(residual_streams(target, tokens)[-1])


def eagle_loss(target: Transformer, head: EagleHead, batch: torch.Tensor, gen: torch.Generator | None = None,
               *, seq_len: int, noise: float = 0.1, w_cls: float = 0.1, fraction: float = 0.25) -> torch.Tensor:
    """EAGLE's loss, teacher-forced on the target's real features: step j = (f_j + noise, emb(x_{j+1}))
    predicts f_{j+1}; smooth L1 to f_{j+1} plus w_cls x the cross-entropy of lm_head(f^_{j+1}) against the
    target's distribution of x_{j+2} (on a random `fraction` of the positions). Uniform noise of
    +-noise x the features' RMS on the inputs, as in the paper, makes the head robust to its own errors."""
    tokens = batch[:, : seq_len + 1]  # x_0 .. x_T
    with torch.no_grad():
        feats = target_features(target, tokens[:, :-1]).float()  # [B, T, C]: f_0 .. f_{T-1}
    return eagle_step_loss(head, target.lm_head, target.model.embed_tokens, feats, tokens[:, 1:-1], gen,
                           noise=noise, w_cls=w_cls, fraction=fraction)


def eagle_step_loss(head: EagleHead, lm_head, embed, feats: torch.Tensor, next_tokens: torch.Tensor,
                    gen: torch.Generator | None = None, *, noise: float = 0.1, w_cls: float = 0.1,
                    fraction: float = 0.25) -> torch.Tensor:
    """eagle_loss on the target's features already computed: feats [B, T, C] (f_0 .. f_{T-1}) and the
    tokens that followed them, next_tokens [B, T-1] (x_1 .. x_{T-1})."""
    with torch.no_grad():
        scale = feats.pow(2).mean().sqrt()
        emb = embed(next_tokens).float()  # [B, T-1, C]: x_1 .. x_{T-1}
    u = torch.rand(feats[:, :-1].shape, generator=gen) * 2 - 1
    pred = head(feats[:, :-1] + noise * scale * u, emb)  # [B, T-1, C]: f^_1 .. f^_{T-1}
    real = feats[:, 1:]
    reg = F.smooth_l1_loss(pred.float(), real)
    T = pred.shape[1]
    pick = torch.randperm(T, generator=gen)[: max(1, int(T * fraction))]
    with torch.no_grad():
        teacher = lm_head(real[:, pick])
    return reg + w_cls * soft_cross_entropy(lm_head(pred[:, pick]), teacher)


@torch.no_grad()
def evaluate_eagle(target: Transformer, head: EagleHead, data: torch.Tensor, *, depth: int = NUM_HEADS,
                   starts: int = 32, batch: int = 16) -> dict:
    """Held-out loss per draft depth, drafting as decoding does: from each of `starts` positions per window,
    the head reads the target's real features of the last W steps, then its own predicted features and the
    data's tokens (teacher-forced tokens, as the heads' evaluation). Returns per depth d = 1..depth the
    cross-entropy (nats/token) against the data's token and the rate at which the head's argmax equals the
    target's argmax (what greedy verification accepts, given the earlier drafts were right)."""
    W = head.window
    ce, agree, count = torch.zeros(depth, dtype=torch.float64), torch.zeros(depth, dtype=torch.float64), 0
    for i in range(0, len(data), batch):
        chunk = data[i : i + batch]  # [b, N]
        b, N = chunk.shape
        feats = target_features(target, chunk)  # [b, N, C]
        target_top = target.lm_head(feats).argmax(-1)  # [b, N]: the target's greedy token at position j+1
        at = torch.linspace(W, N - depth - 2, starts).long()  # [n]: the context's last real step p (f_p, x_{p+1})
        rows = torch.arange(b)[:, None, None]
        steps = at[None, :, None] - W + 1 + torch.arange(W)[None, None, :]  # [1, n, W]
        f = feats[rows, steps].flatten(0, 1)  # [b*n, W, C]
        toks = chunk[rows, steps + 1].flatten(0, 1)  # [b*n, W]
        ok = torch.ones_like(toks, dtype=torch.bool)
        ahead = torch.stack([chunk[:, at + 2 + d] for d in range(depth)], -1).flatten(0, 1)  # [b*n, depth]: x_{p+2+d}
        top = torch.stack([target_top[:, at + 1 + d] for d in range(depth)], -1).flatten(0, 1)  # target's argmax there
        for d in range(depth):
            logits = head.draft(f, toks, ok, ahead, d, target.lm_head, target.model.embed_tokens)  # [b*n, V]
            ce[d] += F.cross_entropy(logits, ahead[:, d], reduction="sum").double()
            agree[d] += (logits.argmax(-1) == top[:, d]).double().sum()
        count += len(ahead)
    return {"heldout_loss_by_depth": (ce / count).tolist(), "heldout_top1_agreement_by_depth": (agree / count).tolist()}


def save_eagle(head: EagleHead, out: Path, entry: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.to(torch.float16).contiguous() for k, v in head.state_dict().items()}, str(out / "eagle.safetensors"),
              metadata={"format": "pt"})
    (out / "eagle.json").write_text(json.dumps({**head.meta(), "trained": entry}, indent=2) + "\n")


# --- saving in Hugging Face format ------------------------------------------------------------


def hf_config(config: TransformerConfig) -> dict:
    c = asdict(config)
    c.update(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", attention_bias=False,
        mlp_bias=False, attention_dropout=0.0, pretraining_tp=1, use_cache=True, torch_dtype="float16",
        num_key_value_heads=config.kv_heads, head_dim=config.head_size, rope_scaling=None,
    )
    return c


def save_tokenizer(tok, out: Path) -> None:
    """tokenizer.json with a post-processor that puts EOS first as the BOS (as training saw it), so
    `transformers.AutoTokenizer(...)(text)` and decspec's `encode_prompt` agree; tokenizer_config.json."""
    from tokenizers import Tokenizer, processors

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_str(tok.to_str())  # a copy: encode() above keeps adding no special tokens
    tok.post_processor = processors.TemplateProcessing(single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B", special_tokens=[(EOS, 0)])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS, "unk_token": None,
        "model_max_length": SEQ_LEN, "clean_up_tokenization_spaces": False, "add_prefix_space": False,
    }, indent=2) + "\n")


def save_model(model: Transformer, tok, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")  # HF stores a tied head once, as the embedding
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(model.config), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id}, indent=2) + "\n")
    save_tokenizer(tok, out)


def save_heads(heads_by_kind: dict, out: Path) -> None:
    from safetensors.torch import save_file

    state, meta = {}, {}
    for kind, heads in heads_by_kind.items():
        for k, v in heads.state_dict().items():
            state[f"{kind}.{k}"] = v.to(torch.float16).contiguous()
        meta[kind] = {"num_heads": heads.num_heads, "hidden_size": heads.hidden_size}
    save_file(state, str(out / "heads.safetensors"), metadata={"format": "pt"})
    (out / "heads.json").write_text(json.dumps(meta, indent=2) + "\n")


# --- the whole recipe ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m decspec.stdlib.models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (target/, draft/, train_log.json)")
    p.add_argument("--only", choices=("tokenizer", "target", "draft", "heads", "eagle"), action="append",
                   help="run only these stages (repeatable); later stages load earlier ones from --out")
    p.add_argument("--target-steps", type=int, default=1500)
    p.add_argument("--draft-steps", type=int, default=1500)
    p.add_argument("--head-steps", type=int, default=250)
    p.add_argument("--eagle-steps", type=int, default=250)
    p.add_argument("--eagle-seq-len", type=int, default=128, help="tokens per training window of the eagle stage")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (results depend on it; default: torch's)")
    p.add_argument("--distill-steps", type=int, default=300,
                   help="after its data-trained phase, distil the draft from the target for this many steps (0: no distillation)")
    p.add_argument("--resume-draft", action="store_true", help="skip the draft's data-trained phase: start from the saved draft")
    p.add_argument("--eval-windows", type=int, default=None, help="cap on held-out windows (default: all)")
    args = p.parse_args(argv)
    stages = args.only or ["tokenizer", "target", "draft", "heads", "eagle"]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.json"
    record = json.loads(log_path.read_text()) if log_path.exists() else {}

    def log(msg: str) -> None:
        print(msg, flush=True)

    train_files, heldout_files = corpus_files()
    log(f"corpus: {len(train_files)} train files, {len(heldout_files)} held out")
    train_texts, heldout_texts = read_texts(train_files), read_texts(heldout_files)
    from tokenizers import Tokenizer

    if "tokenizer" in stages:
        tok = train_tokenizer(train_texts)
        save_tokenizer(tok, out / "target")
        save_tokenizer(tok, out / "draft")
    else:
        tok = Tokenizer.from_file(str(out / "target" / "tokenizer.json"))
    train, heldout = encode(tok, train_texts), encode(tok, heldout_texts)
    record["corpus"] = {
        "python": sys.version.split()[0], "train_files": len(train_files), "heldout_files": len(heldout_files),
        "train_tokens": len(train), "heldout_tokens": len(heldout), "heldout": list(HELDOUT),
        "bytes_per_token": round(sum(len(t.encode()) for t in train_texts) / len(train), 3),
    }
    log(f"tokens: {len(train)} train, {len(heldout)} held out")
    eval_lm = eval_windows(heldout, SEQ_LEN + 1, args.eval_windows)
    eval_heads = eval_windows(heldout, SEQ_LEN + 1 + NUM_HEADS, args.eval_windows)

    def finish(name: str, entry: dict) -> None:
        record[name] = entry
        log(f"{name}: {json.dumps(entry)}")
        log_path.write_text(json.dumps(record, indent=2) + "\n")

    common = dict(batch=args.batch, lr=args.lr, seed=args.seed)
    for name, config, steps, exit_fraction in (
        ("target", TARGET, args.target_steps, 0.25), ("draft", DRAFT, args.draft_steps, 0.0)
    ):
        if name not in stages:
            continue
        t0 = time.perf_counter()
        if name == "draft" and args.resume_draft:
            log(f"draft: starting from the saved {out / 'draft'} (its data-trained phase)")
        else:
            model = train_lm(config, train, steps=steps, exit_fraction=exit_fraction, log=log, **common)
            save_model(model, tok, out / name)
        entry = {"steps": steps, "batch": args.batch, "seq_len": SEQ_LEN}
        if name == "draft" and args.distill_steps:
            # then distil the draft from the finished target (DistillSpec): it learns the target's distribution,
            # which is what verification accepts. It restarts from the saved float16 weights, so that
            # --resume-draft reproduces the same result.
            entry["heldout_loss_before_distillation"] = evaluate_lm(load_transformer(out / name), eval_lm)[-1]
            teacher = load_transformer(out / "target")
            model = train_lm(config, train, steps=args.distill_steps, exit_fraction=0.0, log=log, teacher=teacher,
                             init=load_transformer(out / name), **{**common, "lr": args.lr / 4, "seed": args.seed + 7})
            save_model(model, tok, out / name)
            entry["distill_steps"] = args.distill_steps
        model = load_transformer(out / name)
        losses = evaluate_lm(model, eval_lm)
        finish(name, {
            **entry, "params": sum(p.numel() for p in model.parameters()), "heldout_loss": losses[-1],
            "heldout_loss_by_exit_layer": losses, "train_seconds": round(time.perf_counter() - t0, 1),
        })
    if "heads" in stages:
        target = load_transformer(out / "target", dtype=torch.float32)
        trained = {}
        for i, kind in enumerate(("medusa", "hydra")):
            t0 = time.perf_counter()
            trained[kind] = train_heads(kind, target, train, steps=args.head_steps, batch=args.batch, lr=args.lr,
                                        seed=args.seed + 1 + i, log=log)
            finish(kind, {"steps": args.head_steps, "heldout_loss_by_head": evaluate_heads(target, trained[kind], eval_heads),
                          "train_seconds": round(time.perf_counter() - t0, 1)})
        save_heads(trained, out / "target")
    if "eagle" in stages:
        t0 = time.perf_counter()
        target = load_transformer(out / "target", dtype=torch.float32).requires_grad_(False)
        torch.manual_seed(args.seed + 3)
        head = EagleHead(target.config.hidden_size)
        fit("eagle", lambda chunk, gen: eagle_loss(target, head, chunk, gen, seq_len=args.eagle_seq_len), head.parameters(),
            train, steps=args.eagle_steps, batch=args.batch, lr=args.lr, seed=args.seed + 3, log=log)
        head.requires_grad_(False)
        entry = {"steps": args.eagle_steps, "batch": args.batch, "seq_len": args.eagle_seq_len, "window": head.window,
                 **evaluate_eagle(target, head, eval_heads), "train_seconds": round(time.perf_counter() - t0, 1)}
        save_eagle(head, out / "target", entry)
        finish("eagle", entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
