"""Find a layer-skip draft on the model itself, with no training (SWIFT / CLaSp-style self-speculation).

    report = search_skip_set(model, calibration)        # calibration: token ids [T] the model reads
    report.best.skip, report.best.agreement, report.best.ideal_speedup
    python -m decspec.stdlib.models.skip_search --model smollm2-135m-instruct [--k 4]

A skip set S drafts with the model minus the layers in S (`SkipLayers`, specs/swift.dec). At
temperature 0, a chain draft's acceptance rate α is the chance that the skipped model's argmax
equals the full model's on the tokens the decoder commits, which teacher forcing on calibration
text estimates: agreement(S) = mean over positions of [argmax p_S = argmax p]. The search is
greedy, as CLaSp's layer-by-layer selection: starting from S = {}, it adds the layer whose removal
keeps agreement highest, and scores every prefix of that path with Leviathan et al.'s ideal speedup
(1 - α^(k+1)) / ((1 - α)(k c + 1)), c being the skipped model's share of the layers times the
measured cost of a 1-token step over a (k+1)-token step. It returns the whole path, so a user sees
how fast agreement falls with depth, and the prefix of highest ideal speedup.

The calibration text is what the model itself writes (its greedy continuation of a few prompts), the
distribution a self-drafting decoder meets. SWIFT optimizes the set with Bayesian optimization and
refines it during decoding; decspec's `dynamic_skip(..., policy = "search")` does the online part.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SkipCandidate:
    skip: tuple[int, ...]
    agreement: float  # α estimate: argmax agreement with the full model under teacher forcing
    c: float  # draft step cost over target verify step (k+1 tokens), estimated from the layer share
    ideal_speedup: float


@dataclass
class SkipReport:
    path: list[SkipCandidate] = field(default_factory=list)  # S grows by one layer per entry
    k: int = 4
    positions: int = 0
    seconds: float = 0.0

    @property
    def best(self) -> SkipCandidate | None:
        """The skip set of highest ideal speedup, or None when no non-empty set beats plain decoding."""
        best = max(self.path[1:], key=lambda c: c.ideal_speedup, default=None)
        return best if best is not None and best.ideal_speedup > 1.0 else None

    def table(self) -> str:
        lines = [f"{'layers skipped':>15} {'agreement':>9} {'c':>6} {'ideal':>6}  skip set"]
        for c in self.path:
            lines.append(f"{len(c.skip):>15} {c.agreement:>9.3f} {c.c:>6.3f} {c.ideal_speedup:>6.2f}  {list(c.skip)}")
        return "\n".join(lines)


def ideal_speedup(alpha: float, k: int, c: float) -> float:
    """Leviathan et al. 2023: expected tokens per round over the round's cost in target steps."""
    tokens = k + 1 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
    return tokens / (k * c + 1)


def _argmax(model, ids: torch.Tensor, skip: tuple[int, ...]) -> torch.Tensor:
    cache = model.new_cache(1, ids.shape[0])
    return model.forward(ids[None], cache, skip_layers=skip or None).logits[0].argmax(-1)  # [T]


def _step_time(model, width: int, prompt_len: int = 64, reps: int = 7) -> float:
    cache = model.new_cache(1, prompt_len + width + 1)
    model.forward(torch.zeros(1, prompt_len, dtype=torch.long), cache)
    x = torch.zeros(1, width, dtype=torch.long)
    times = []
    for _ in range(reps):
        cache.rollback(torch.tensor([prompt_len]))
        t0 = time.perf_counter()
        model.forward(x, cache)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def search_skip_set(model, calibration: torch.Tensor, *, k: int = 4, max_skip: int | None = None,
                    keep: tuple[int, ...] = (0,)) -> SkipReport:
    """Greedy skip-set search on `calibration` (token ids [T]); layers in `keep` are never skipped
    (the first layer by default: every model that has been measured needs it)."""
    t0 = time.perf_counter()
    L = model.num_layers
    max_skip = L - 1 if max_skip is None else max_skip
    full = _argmax(model, calibration, ())
    step_ratio = _step_time(model, 1) / _step_time(model, k + 1)
    report = SkipReport(k=k, positions=int(full.numel()))
    report.path.append(SkipCandidate((), 1.0, step_ratio, ideal_speedup(1.0, k, step_ratio)))
    skip: tuple[int, ...] = ()
    while len(skip) < max_skip:
        scored = []
        for layer in range(L):
            if layer in skip or layer in keep:
                continue
            trial = tuple(sorted(skip + (layer,)))
            scored.append(((_argmax(model, calibration, trial) == full).float().mean().item(), trial))
        if not scored:
            break
        agreement, skip = max(scored)
        c = (L - len(skip)) / L * step_ratio
        report.path.append(SkipCandidate(skip, agreement, c, ideal_speedup(agreement, k, c)))
        if agreement < 0.2:  # nothing deeper can pay
            break
    report.seconds = time.perf_counter() - t0
    return report


def self_calibration(model, prompts: list[str], new_tokens: int = 64) -> torch.Tensor:
    """The model's own greedy continuations of `prompts` (through its chat template when it has one), concatenated."""
    import decspec

    tok = model.tokenizer
    texts = [tok.apply_chat_template([{"role": "user", "content": p}]) if tok.chat_template else p for p in prompts]
    dec = decspec.compile("decoder greedy_ar() {\n    target = model(\"target\")\n    sampler = greedy\n}\n", target=model)
    result = dec.generate(texts, max_new_tokens=new_tokens, seed=0)
    ids: list[int] = []
    for text, row in zip(texts, result.tokens):
        ids += tok.encode_prompt(text) + list(map(int, row))
    return torch.tensor(ids)


CALIBRATION_PROMPTS = [
    "Explain how photosynthesis works.", "Write a Python function that reverses a string.",
    "What are three good habits for a healthy life?", "Summarize the plot of a story about a lost dog finding its way home.",
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Find a layer-skip draft for a model (greedy search on its own text)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a named model, model directory or .gguf file")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-skip", type=int, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from decspec.stdlib.models.registry import resolve_model

    model = resolve_model(args.model)
    calibration = self_calibration(model, CALIBRATION_PROMPTS)
    report = search_skip_set(model, calibration, k=args.k, max_skip=args.max_skip)
    print(report.table())
    best = report.best
    print(f"\n{report.positions} calibration positions, {report.seconds:.0f} s; the first row is the full model as its own draft")
    if best is None:
        print(f"no skip set pays on this model at k={args.k}: every one's ideal speedup is below 1 (agreement falls faster "
              "than the draft's cost)")
    else:
        print(f"best: skip {list(best.skip)} (agreement {best.agreement:.3f}, ideal speedup {best.ideal_speedup:.2f} at k={args.k})\n"
              f"use: decspec run specs/swift.dec 'skip={list(best.skip)}' --target {args.model}")


if __name__ == "__main__":
    main()
