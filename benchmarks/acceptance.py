"""How well each shipped draft predicts the shipped target: mean accepted tokens per round on held-out code.

    python -m benchmarks.acceptance [--prompts 24] [--new-tokens 64] [--k 4]

Prompts are cut from the standard-library modules the models never trained on (train.HELDOUT):
up to 600 characters of a file ending at the end of a `def ...:` line. For each draft and
temperature (0 = greedy, 1 = plain sampling, no top-p) it generates `--new-tokens` per prompt with
speculation length k and reports the mean number of drafted tokens accepted per round (tokens
committed per round = that + 1), and the acceptance rate (accepted / drafted).

- draft model and early exit: decspec's own decoder (`specs/speculative.dec`, rejection verifier),
  with the 1-layer draft model or `EarlyExit(target, layer=L)` as the draft;
- Medusa / Hydra heads: the spec language has no heads draft source yet, so a short loop here
  drafts a chain of k tokens from the heads (top-1 at temperature 0, sampled at 1), verifies it in
  one target forward with the same rejection rule (accept d with probability min(1, p(d)/q(d)),
  else resample from norm(max(p - q, 0))), and commits the accepted prefix plus one target token.

Writes benchmarks/results/acceptance.json and docs/acceptance.md.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

import decspec
from decspec.stdlib.models.pretrained import reference_models
from decspec.stdlib.models.train import corpus_files
from decspec.stdlib.models.views import EarlyExit

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "speculative.dec"


def heldout_prompts(n: int, context_chars: int = 600) -> list[str]:
    """n prompts, each ending at the end of a `def` line of a held-out module, spread evenly over all such lines."""
    _, heldout = corpus_files()
    candidates = []
    for path in heldout:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"^[ \t]*def [^\n]*:[ \t]*$", text, flags=re.M):
            start = max(0, m.end() - context_chars)
            start = text.find("\n", start) + 1 if start else 0  # begin on a line boundary
            candidates.append(text[start : m.end()] + "\n")
    step = max(1, len(candidates) // n)
    return candidates[::step][:n]


def sample(probs: torch.Tensor, greedy: bool, gen: torch.Generator) -> torch.Tensor:
    """probs [..., V] -> token ids [...]"""
    if greedy:
        return probs.argmax(-1)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=gen).view(probs.shape[:-1])


def heads_decode(target, kind: str, prompt: list[int], new_tokens: int, k: int, temperature: float, gen: torch.Generator) -> list[int]:
    """Speculative decoding with a chain of k head drafts per round (batch 1). -> accepted drafts per round."""
    greedy = temperature == 0

    def probs(logits: torch.Tensor) -> torch.Tensor:  # [..., V]
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float() if greedy else torch.softmax(logits / temperature, -1)

    cache = target.new_cache(1, len(prompt) + new_tokens + 2 * k + 2)
    out = target.forward(torch.tensor([prompt]), cache)
    hidden, p_next = out.hidden[:, -1], probs(out.logits[:, -1])  # h_t [1, C], p(x_{t+1}) [1, V]
    pending = sample(p_next, greedy, gen)  # the target's own next token (always committed)
    produced, accepted = 0, []
    while produced < new_tokens:
        # draft d_1..d_k for positions t+2 .. t+k+1 from the hidden state at t (and, for Hydra, the tokens so far)
        if kind == "medusa":
            q = probs(target.medusa(hidden))  # [1, k, V]
            drafts = sample(q, greedy, gen)  # [1, k]
        else:
            state, prev, qs, ds = hidden, pending, [], []
            for i in range(k):
                state, logits = target.hydra_step(i, state, prev)
                qs.append(probs(logits))
                prev = sample(qs[-1], greedy, gen)
                ds.append(prev)
            q, drafts = torch.stack(qs, 1), torch.stack(ds, 1)
        start = int(cache.length[0])
        out = target.forward(torch.cat([pending[:, None], drafts], 1), cache)  # [1, k+1, V]
        p = probs(out.logits)  # p[:, i] is the target's distribution for d_{i+1} (i < k), then the bonus
        n = 0
        while n < k:
            d = drafts[0, n]
            ratio = (p[0, n, d] / q[0, n, d]).clamp(max=1.0)  # accept d with probability min(1, p(d)/q(d))
            if not greedy and float(torch.rand((), generator=gen)) >= float(ratio):
                break
            if greedy and float(p[0, n, d]) < 1.0:
                break
            n += 1
        if n < k:  # resample the rejected position from the residual norm(max(p - q, 0)) (p itself when greedy)
            residual = p[0, n] if greedy else (p[0, n] - q[0, n]).clamp(min=0)
            pending = sample((residual / residual.sum())[None], greedy, gen)
        else:
            pending = sample(p[:, k], greedy, gen)
        cache.rollback(torch.tensor([start + 1 + n]))  # keep the old pending token and the accepted drafts
        hidden = out.hidden[:, n]
        accepted.append(n)
        produced += n + 1
    return accepted


def measure(args) -> list[dict]:
    models = reference_models()
    target, draft = models["target"], models["draft"]
    tok = target.tokenizer
    prompts = heldout_prompts(args.prompts)
    ids = [tok.encode_prompt(p) for p in prompts]
    rows = []
    drafts = [("draft model (1 layer)", draft)] + [
        (f"early exit, layer {L}", EarlyExit(target, L)) for L in range(1, target.num_layers)
    ]
    for temperature in (0.0, 1.0):
        for name, model in drafts:
            dec = decspec.compile(SPEC, target=target, draft=model, k=args.k, temperature=temperature, top_p=1.0)
            t0 = time.perf_counter()
            res = dec.generate(ids, max_new_tokens=args.new_tokens, seed=0, eos_token_id=None)
            s = res.stats
            rows.append({"draft": name, "temperature": temperature, "k": args.k, "mean_accepted": s.mean_accepted,
                         "tokens_per_round": s.mean_tokens_per_round, "acceptance_rate": s.acceptance_rate,
                         "rounds": s.rounds, "seconds": time.perf_counter() - t0})
            print(_line(rows[-1]), flush=True)
        for kind in ("medusa", "hydra"):
            gen = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            acc = [a for p in ids for a in heads_decode(target, kind, p, args.new_tokens, args.k, temperature, gen)]
            mean = sum(acc) / len(acc)
            rows.append({"draft": f"{kind} heads", "temperature": temperature, "k": args.k, "mean_accepted": mean,
                         "tokens_per_round": mean + 1, "acceptance_rate": mean / args.k, "rounds": len(acc),
                         "seconds": time.perf_counter() - t0})
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    return (f"{r['draft']:<24} T={r['temperature']:<3} accepted/round {r['mean_accepted']:.2f}  "
            f"tokens/round {r['tokens_per_round']:.2f}  acceptance {r['acceptance_rate']:.2f}")


def table(rows: list[dict]) -> str:
    drafts = list(dict.fromkeys(r["draft"] for r in rows))
    by = {(r["draft"], r["temperature"]): r for r in rows}
    lines = ["| draft | accepted / round, T=0 | acceptance, T=0 | accepted / round, T=1 | acceptance, T=1 |", "|---|---|---|---|---|"]
    for d in drafts:
        a, b = by[(d, 0.0)], by[(d, 1.0)]
        lines.append(f"| {d} | {a['mean_accepted']:.2f} | {a['acceptance_rate']:.2f} | {b['mean_accepted']:.2f} | {b['acceptance_rate']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "acceptance.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "acceptance.md")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    rows = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"prompts": args.prompts, "new_tokens": args.new_tokens, "k": args.k, "rows": rows}, indent=2) + "\n")
    command = f"python -m benchmarks.acceptance --prompts {args.prompts} --new-tokens {args.new_tokens} --k {args.k}"
    args.doc.write_text(
        "# Acceptance of the shipped drafts\n\n"
        f"Mean drafted tokens accepted per round (speculation length k = {args.k}; tokens committed per round = that + 1)\n"
        f"and acceptance rate (accepted / drafted), on {args.prompts} held-out standard-library prompts, {args.new_tokens} new tokens each,\n"
        "for the shipped reference target. Temperature 0 is greedy; temperature 1 samples the plain distribution (no top-p).\n\n"
        f"Produced by `{command}` (JSON: `benchmarks/results/acceptance.json`).\n\n" + table(rows) + "\n"
    )
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
