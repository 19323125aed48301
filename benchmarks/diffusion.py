"""Diffusion decoding schedules side by side: tokens per denoising step, model calls, speed, and quality against the
sequential one-position-per-step process.

    python -m benchmarks.diffusion [--prompts 8] [--new-tokens 32] [--block 16] [--repeats 3] [--threads 1] [--out PATH] [--write]

The target is the shipped masked-diffusion model (`reference_diffusion()`) when there is one, else a random
bidirectional transformer (stdlib/models/diffusion_random.py), which is *not a real model*: its rows measure the
machinery (steps, calls, speed), not quality. Greedy decoding (temperature 0), prompts from held-out code
(benchmarks/acceptance.py) with the model's tokenizer, or random ids without one. Per schedule:

- steps: denoising steps per prompt (each prompt decoded alone, batch 1); tokens/step: generated tokens per step;
  calls: denoise and prefill calls per prompt; tok/s: generated tokens per second (median of `repeats` runs; rows
  interleaved, one schedule after another in each repeat, torch pinned to `threads` threads); speedup: over the
  first row, `sequential (confidence)`;
- match: the fraction of rows whose greedy output equals the sequential process's (`Denoise.sequential()`: the
  same blocks and rule, one position per step, no cache), and agree: the fraction of positions that do;
- nll: the model's mean per-token negative log-likelihood of the produced continuation under its left-to-right
  factorization, -log p(x_i | prompt, x_<i, the rest masked), the same measure for every row (lower: text the model
  finds likelier); `sequential (left_to_right)` is the process that minimizes it token by token.

Prints the table; writes the JSON where --out says and the page where --markdown says, or with --write to
benchmarks/results/diffusion.json and docs/diffusion.md.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

import decspec
from benchmarks.output import add_output_args, markdown_rows, outputs, write_text

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "diffusion.json"
DOC = ROOT / "docs" / "diffusion.md"


def schedules(block: int) -> list[tuple[str, str]]:
    """(name, denoise) rows: the sequential references first."""
    b = block
    return [
        ("sequential (confidence)", f"blocks(length = {b})"),
        ("sequential (left_to_right)", f"blocks(length = {b}, unmask = left_to_right)"),
        ("draft_verify (lossless)", f"draft_verify(length = {min(b, 8)})"),
        ("semi-AR, 2 tokens/step", f"blocks(length = {b}, steps = {b // 2})"),
        ("semi-AR, 4 tokens/step", f"blocks(length = {b}, steps = {b // 4})"),
        ("Fast-dLLM threshold 0.9", f"blocks(length = {b}, unmask = confidence(0.9))"),
        ("Fast-dLLM threshold 0.7", f"blocks(length = {b}, unmask = confidence(0.7))"),
        ("Fast-dLLM 0.9, prefix cache", f'blocks(length = {b}, unmask = confidence(0.9), cache = "prefix")'),
        ("Fast-dLLM 0.9, dual cache", f'blocks(length = {b}, unmask = confidence(0.9), cache = "dual")'),
        ("margin 0.5", f"blocks(length = {b}, unmask = margin(0.5))"),
        ("entropy 0.5", f"blocks(length = {b}, unmask = entropy(0.5))"),
    ]


def spec(denoise: str) -> str:
    return f'decoder d {{\n    target = model("target")\n    sampler = temperature(0.0)\n    denoise = {denoise}\n}}\n'


def target_model(seed: int = 0):
    """(the model, its description, whether it is a real model)."""
    try:
        from decspec.stdlib.models.diffusion import reference_diffusion
    except ImportError:
        from decspec.stdlib.models.diffusion_random import RandomDiffusionLM

        model = RandomDiffusionLM(vocab=512, seed=seed, d_model=128, layers=4, heads=4, max_length=512)
        return model, "RandomDiffusionLM(vocab 512, d 128, 4 layers): random weights, NOT a real model", False
    model = reference_diffusion()
    return model, f"{type(model).__name__} (reference_diffusion())", True


def prompt_ids(model, n: int, seed: int) -> list[list[int]]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        from benchmarks.acceptance import heldout_prompts

        return [tokenizer.encode_prompt(p)[-96:] for p in heldout_prompts(n)]
    rng = random.Random(seed)
    return [[rng.randrange(model.mask_id) for _ in range(rng.randint(8, 24))] for _ in range(n)]


@torch.no_grad()
def left_to_right_nll(model, prompt: list[int], row: list[int]) -> float:
    """Mean -log p(x_i | prompt, x_<i, the rest masked) over the row's tokens, in one batched call."""
    n = len(row)
    if n == 0:
        return float("nan")
    canvas = torch.tensor([prompt + [model.mask_id] * n] * n)
    for i in range(1, n):
        canvas[i, len(prompt):len(prompt) + i] = torch.tensor(row[:i])
    logits = model.denoise(canvas).double()
    if model.mask_id < logits.shape[-1]:
        logits[..., model.mask_id] = float("-inf")
    logp = torch.log_softmax(logits, -1)
    idx = torch.arange(n)
    return float(-logp[idx, len(prompt) + idx, torch.tensor(row)].mean())


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    model, described, real = target_model()
    ids = prompt_ids(model, args.prompts, 0)
    eos = getattr(model, "eos_token_id", None)
    rows = schedules(args.block)
    decoders = {name: decspec.compile(spec(d), target=model) for name, d in rows}
    results = {name: {"schedule": name, "denoise": d, "seconds": []} for name, d in rows}
    for repeat in range(args.repeats):  # interleaved: every schedule once per repeat; one prompt at a time (batch 1)
        for name, _ in rows:
            t0 = time.perf_counter()
            outs = [decoders[name].generate([p], max_new_tokens=args.new_tokens, eos_token_id=None) for p in ids]
            results[name]["seconds"].append(time.perf_counter() - t0)
            results[name]["out"] = outs
    sequential_of = {}
    for name, d in rows:  # each schedule's own sequential process, greedy
        seq = decoders[name].denoise.sequential()
        key = seq.describe()
        if key not in sequential_of:
            sequential_of[key] = next(([o.tokens[0] for o in results[n]["out"]] for n, dd in rows if decoders[n].denoise == seq), None)
            if sequential_of[key] is None:
                from decspec.backends.diffusion import denoise_generate

                sequential_of[key] = [denoise_generate(seq, model, [p], max_new_tokens=args.new_tokens, eos_token_id=None).tokens[0]
                                      for p in ids]
        results[name]["reference"] = sequential_of[key]
    table = []
    base = None
    for name, d in rows:
        r = results[name]
        outs, ref = r.pop("out"), r.pop("reference")
        got = [o.tokens[0] for o in outs]
        seconds = statistics.median(r["seconds"])
        tokens = sum(len(t) for t in got)
        same = [a == b for a, b in zip(got, ref)]
        agree = sum(x == y for a, b in zip(got, ref) for x, y in zip(a, b)) / max(1, sum(len(b) for b in ref))
        steps = sum(o.stats.rounds for o in outs)
        row = dict(r, steps=steps / len(outs), tokens_per_step=tokens / steps,
                   model_calls=sum(o.stats.model_calls["target"] for o in outs) / len(outs),
                   tokens=tokens, tokens_per_second=tokens / seconds, exact_match=sum(same) / len(same), agreement=agree,
                   nll=statistics.mean(left_to_right_nll(model, p, t) for p, t in zip(ids, got)),
                   lossless=decoders[name].verdict.lossless)
        base = base or row["tokens_per_second"]
        row["speedup"] = row["tokens_per_second"] / base
        table.append(row)
        print(f"{name:30s} steps {row['steps']:5.1f}  tok/step {row['tokens_per_step']:5.2f}  calls {row['model_calls']:5.1f}  "
              f"tok/s {row['tokens_per_second']:8.1f}  x{row['speedup']:4.2f}  match {row['exact_match']:.2f}  "
              f"agree {row['agreement']:.2f}  nll {row['nll']:.3f}", flush=True)
    return {"model": described, "real_model": real, "prompts": args.prompts, "new_tokens": args.new_tokens,
            "block": args.block, "repeats": args.repeats, "threads": args.threads, "temperature": 0.0,
            "torch": torch.__version__, "rows": table}


def markdown(result: dict) -> str:
    cols = ["schedule", "steps", "tokens/step", "calls", "tok/s", "speedup", "match", "agree", "nll"]
    cells = [[r["schedule"], f"{r['steps']:.1f}", f"{r['tokens_per_step']:.2f}", f"{r['model_calls']:.1f}", f"{r['tokens_per_second']:.0f}", f"{r['speedup']:.2f}", f"{r['exact_match']:.2f}",
              f"{r['agreement']:.2f}", f"{r['nll']:.3f}"] for r in result["rows"]]
    return markdown_rows(cols, cells)


def page(result: dict) -> str:
    """docs/diffusion.md: what was measured, on what, the table, and how to read it."""
    warning = ("" if result["real_model"] else
               "\n**Not a real model.** No trained masked-diffusion model was bound when this ran, so the target is a random "
               "bidirectional transformer: steps, tokens per step, calls and speed are the machinery's, while match, agree "
               "and nll say nothing about the quality of parallel decoding on real text.\n")
    return f"""# Diffusion decoding: schedules measured

Masked-diffusion decoders (the `denoise` slot, [language](language.md#diffusion-decoding)) side by side. Target:
{result['model']}. {result['prompts']} prompts decoded one at a time, {result['new_tokens']} new tokens, blocks of
{result['block']}, greedy (temperature 0), torch on {result['threads']} thread(s), the median of {result['repeats']}
interleaved repeats (torch {result['torch']}).
{warning}
    python -m benchmarks.diffusion --write      # --prompts 8 --new-tokens 32 --block 16 --repeats 3 --threads 1

{markdown(result)}

- **steps**: denoising steps per prompt; **tokens/step**: generated tokens per step; **calls**: the model's
  denoise and prefill calls per prompt (`draft_verify` makes two a step: the drafts and the batched verification,
  one row per draft prefix; a cache adds a prefill per block).
- **tok/s** and **speedup** (over the first row): wall time, noisy where the CPU is shared (the two sequential rows do
  the same work: their difference is the noise); the step and call counts are exact, and the cost follows them (a
  cached call recomputes only its window, a `draft_verify` verification one row per draft).
- **match**: the fraction of prompts whose output equals the schedule's sequential process (the same blocks and
  rule, one position per step, no cache); **agree**: the fraction of positions that do. `draft_verify` is lossless:
  it equals its sequential process (left to right) on every prompt, in fewer steps.
- **nll**: the model's mean per-token negative log-likelihood of the produced continuation under its left-to-right
  factorization, -log p(x_i | prompt, x_<i, the rest masked), the same yardstick for every row.

{_findings(result)}
The exact side of the same question, on table diffusion models where every outcome can be enumerated:
`decspec verify specs/fast_dllm.dec block=4 temperature=1.0` prints each schedule's total-variation distance
from its sequential process (0 to float64 rounding for `specs/diffusion_speculative.dec`).
"""


def _findings(result: dict) -> str:
    """A few sentences read off the table (the rows named in `schedules`)."""
    rows = {r["schedule"]: r for r in result["rows"]}
    try:
        seq, dv, semi = rows["sequential (confidence)"], rows["draft_verify (lossless)"], rows["semi-AR, 4 tokens/step"]
        fast, prefix, dual = rows["Fast-dLLM threshold 0.9"], rows["Fast-dLLM 0.9, prefix cache"], rows["Fast-dLLM 0.9, dual cache"]
    except KeyError:
        return ""
    return (f"On this run: committing 4 positions a step (semi-AR) takes {semi['steps']:.0f} steps instead of {seq['steps']:.0f}, "
            f"at a cost in quality (nll {semi['nll']:.2f} against {seq['nll']:.2f}; {semi['agreement']:.0%} of positions as the "
            f"sequential process); a 0.9 confidence threshold commits {fast['tokens_per_step']:.2f} tokens a step (the model is "
            f"rarely that sure); the prefix and dual caches run {prefix['speedup']:.2f}x and {dual['speedup']:.2f}x as fast with "
            f"{prefix['agreement']:.0%} and {dual['agreement']:.0%} of positions unchanged; `draft_verify` commits "
            f"{dv['tokens_per_step']:.2f} tokens a step and equals its sequential process on every prompt, but its two calls a "
            f"step (the verification one row per draft) cost more than they save on a CPU.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    add_output_args(ap, OUT, DOC)
    args = ap.parse_args()
    result = measure(args)
    print(f"\n{result['model']}; {args.prompts} prompts, {args.new_tokens} new tokens, greedy, {args.threads} thread(s)\n")
    print(markdown(result))
    out, doc = outputs(args, OUT, DOC)
    if out:
        write_text(out, json.dumps(result, indent=1) + "\n")
    if doc:
        write_text(doc, page(result))


if __name__ == "__main__":
    main()
