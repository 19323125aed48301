"""Train the reference masked-diffusion model (stdlib/models/diffusion.py) on the Python standard library's source.

    python -m decspec.stdlib.models.train_diffusion --out stdlib/models/reference/diffusion --steps 2000

The corpus, its held-out modules (HELDOUT) and the learning-rate schedule are train.py's; the tokenizer is
the shipped reference one (reference/target/tokenizer.json), so the diffusion model and the causal pair
read and write the same token ids. Deterministic for a Python version, seed and thread count.

Objective (MDLM / LLaDA): per sequence draw t ~ U(eps, 1], replace each token by the mask token with
probability t, and score the model's prediction at the masked positions:

    loss = sum over masked positions i of -log p(x_i | x_masked) / t, divided by the tokens in the batch

which is the negative ELBO per token (an upper bound on the model's NLL). A fraction `--prompt-fraction`
of the sequences keep a random prefix unmasked (the prompt) and mask only the rest, as LLaDA's SFT does, so
the model learns prompt continuation; a fraction `--short-fraction` of the steps use a shorter random length,
so sequences shorter than max_length look like training data.

train_log.json records the steps, parameters, training time, the held-out negative ELBO per token (fixed
windows, fixed draws of t and of the masks), the masked-token accuracy at t = 0.5 and, for orientation,
a unigram model's loss and accuracy on the same held-out tokens (its negative ELBO is its cross-entropy:
a unigram prediction ignores the context, and E[1{masked} / t] = 1).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from decspec.progress import progress
from decspec.stdlib.models.diffusion import DiffusionTransformer
from decspec.stdlib.models.train import HELDOUT, corpus_files, encode, eval_windows, optimizer, read_texts, schedule, windows
from decspec.stdlib.models.transformer_config import TransformerConfig

TOKENIZER = Path(__file__).with_name("reference") / "target"
SEQ_LEN = 256
EPS = 1e-3  # t ~ U(EPS, 1]: the 1/t weight stays bounded
CONFIG = TransformerConfig(
    vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=SEQ_LEN, bos_token_id=0, eos_token_id=0,
)


def corrupt(batch: torch.Tensor, mask_id: int, gen: torch.Generator, *, prompt_fraction: float = 0.0,
            t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward process on clean tokens [B, L]. -> (noisy tokens [B, L], masked [B, L] bool, t [B], scored [B, L] bool).

    Each sequence draws t (unless given) and masks each scored position with probability t; a sequence picked as
    prompted (probability prompt_fraction) keeps a prefix of uniform length in [1, L-1] clean and unscored."""
    B, L = batch.shape
    if t is None:
        t = EPS + (1 - EPS) * torch.rand(B, generator=gen)
    prompted = torch.rand(B, generator=gen) < prompt_fraction
    prefix = torch.where(prompted, torch.randint(1, L, (B,), generator=gen), 0)  # [B]
    scored = torch.arange(L)[None, :] >= prefix[:, None]  # [B, L]
    masked = (torch.rand(B, L, generator=gen) < t[:, None]) & scored
    return torch.where(masked, mask_id, batch), masked, t, scored


def nelbo_sum(model: DiffusionTransformer, noisy: torch.Tensor, clean: torch.Tensor, masked: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
    """sum over masked positions of cross-entropy / t (the LM head runs on the masked positions only)."""
    hidden = model(noisy)  # [B, L, C]
    logits = model.hidden_logits(hidden[masked])  # [M, V]
    ce = F.cross_entropy(logits, clean[masked], reduction="none")  # [M]
    return (ce / t[:, None].expand_as(masked)[masked]).sum()


@torch.no_grad()
def evaluate(model: DiffusionTransformer, data: torch.Tensor, *, draws: int = 4, seed: int = 1234, batch: int = 16) -> dict:
    """Held-out negative ELBO per token over windows data [n, L]: each window is scored `draws` times at stratified
    t = (j + u) / draws, with masks from a fixed seed; and masked-token accuracy at t = 0.5."""
    gen = torch.Generator().manual_seed(seed)
    total, tokens, correct, scored = 0.0, 0, 0, 0
    for i in range(0, len(data), batch):
        chunk = data[i : i + batch]
        B = len(chunk)
        for j in range(draws):
            t = (j + torch.rand(B, generator=gen)) / draws
            t = t.clamp(min=EPS)
            noisy, masked, t, _ = corrupt(chunk, model.mask_id, gen, t=t)
            total += float(nelbo_sum(model, noisy, chunk, masked, t))
            tokens += chunk.numel()
        noisy, masked, _, _ = corrupt(chunk, model.mask_id, gen, t=torch.full((B,), 0.5))
        pred = model.denoise(noisy).argmax(-1)
        correct += int((pred == chunk)[masked].sum())
        scored += int(masked.sum())
    return {"heldout_nelbo": total / tokens, "heldout_masked_accuracy_t0.5": correct / max(scored, 1)}


def unigram(train: torch.Tensor, heldout: torch.Tensor, vocab: int) -> dict:
    """A unigram model of the training tokens (add-one smoothed) on the held-out tokens: cross-entropy and
    how often its single guess (the most frequent token) is right."""
    counts = torch.bincount(train, minlength=vocab).double() + 1
    logp = (counts / counts.sum()).log()
    return {"unigram_heldout_nelbo": float(-logp[heldout].mean()),
            "unigram_heldout_accuracy": float((heldout == counts.argmax()).double().mean())}


def train(model: DiffusionTransformer, stream: torch.Tensor, *, steps: int, batch: int, lr: float, seed: int,
          prompt_fraction: float, short_fraction: float, log, checkpoint=None) -> None:
    """AdamW with warm-up + cosine decay (train.py's), float32, gradient clipping at 1.0, on random windows of
    model.max_length tokens of the stream (a random shorter length on a `short_fraction` of the steps)."""
    gen = torch.Generator().manual_seed(seed)
    model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer(params, lr)
    t0, seen = time.perf_counter(), 0
    for step in progress(range(steps), "training", unit="step"):
        for group in opt.param_groups:
            group["lr"] = schedule(step, steps, lr, warmup=min(200, steps // 10 + 1))
        length = model.max_length
        if torch.rand((), generator=gen) < short_fraction:
            length = int(torch.randint(16, model.max_length, (), generator=gen))
        clean = windows(stream, batch, length, gen)
        noisy, masked, t, scored = corrupt(clean, model.mask_id, gen, prompt_fraction=prompt_fraction)
        loss = nelbo_sum(model, noisy, clean, masked, t) / scored.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        seen += clean.numel()
        if step % 50 == 0 or step == steps - 1:
            rate = seen / (time.perf_counter() - t0)
            log(f"diffusion step {step}/{steps} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} {rate:.0f} tok/s")
        if checkpoint is not None and step % 500 == 499:
            checkpoint(step + 1)
    model.requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m decspec.stdlib.models.train_diffusion", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (config.json, model.safetensors, tokenizer, train_log.json)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    p.add_argument("--prompt-fraction", type=float, default=0.3, help="sequences with a clean prompt prefix (LLaDA SFT-style)")
    p.add_argument("--short-fraction", type=float, default=0.25, help="steps on a random length in [16, max_length)")
    p.add_argument("--eval-windows", type=int, default=64, help="held-out windows of max_length tokens scored")
    p.add_argument("--layers", type=int, default=CONFIG.num_hidden_layers)
    p.add_argument("--hidden", type=int, default=CONFIG.hidden_size)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    from tokenizers import Tokenizer

    train_files, heldout_files = corpus_files()
    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    stream, heldout = encode(tok, read_texts(train_files)), encode(tok, read_texts(heldout_files))
    log(f"tokens: {len(stream)} train, {len(heldout)} held out")
    eval_data = eval_windows(heldout, SEQ_LEN, args.eval_windows)
    config = replace(CONFIG, num_hidden_layers=args.layers, hidden_size=args.hidden, intermediate_size=3 * args.hidden)
    model = DiffusionTransformer.initialized(config, args.seed)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, out / name)

    t0 = time.perf_counter()
    train(model, stream, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
          prompt_fraction=args.prompt_fraction, short_fraction=args.short_fraction, log=log,
          checkpoint=lambda step: (model.save(out), log(f"checkpoint at step {step} saved to {out}")))
    seconds = time.perf_counter() - t0
    model.save(out)
    shipped = DiffusionTransformer.load(out)  # evaluate what ships: the float16 weights
    record = {
        "corpus": {"python": sys.version.split()[0], "train_tokens": len(stream), "heldout_tokens": len(heldout),
                   "heldout": list(HELDOUT), "tokenizer": "reference/target/tokenizer.json"},
        "diffusion": {
            "objective": "MDLM negative ELBO: t ~ U(eps, 1], mask with probability t, masked cross-entropy / t per token",
            "steps": args.steps, "batch": args.batch, "seq_len": SEQ_LEN, "lr": args.lr, "seed": args.seed,
            "threads": args.threads, "prompt_fraction": args.prompt_fraction, "short_fraction": args.short_fraction,
            "layers": config.num_hidden_layers, "hidden": config.hidden_size,
            "params": sum(p.numel() for p in shipped.parameters()), "train_seconds": round(seconds, 1),
            "heldout_windows": len(eval_data), "heldout_eval_tokens": eval_data.numel(),
            **evaluate(shipped, eval_data),
            **unigram(stream, eval_data.flatten(), config.vocab_size),
        },
    }
    (out / "train_log.json").write_text(json.dumps(record, indent=2) + "\n")
    log(json.dumps(record["diffusion"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
