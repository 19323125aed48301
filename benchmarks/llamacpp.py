"""llama.cpp as an external baseline: tokenizer, llama-bench, greedy generation, prompt lookup.

Nothing from llama.cpp ships with decspec. With a CPU build of llama.cpp's tools
(llama-tokenize, llama-bench, llama-cli, llama-lookup) made elsewhere, point
`DECSPEC_LLAMA_CPP` at the folder holding them (its `build/bin`); without it, `bin_dir()` is
None. The output parsing was checked against llama.cpp b4748 (commit c392e5094).

Usage:

    from benchmarks import llamacpp
    if llamacpp.bin_dir() is not None:
        ids = llamacpp.tokenize(gguf, "Hello, world!")               # [19556, 28, 905, 17]
        b = llamacpp.bench(gguf, threads=2, n_gen=64, repeats=3)
        g = llamacpp.generate(gguf, chat_prompt, n_new=64, threads=2)
        if llamacpp.has_tool("llama-lookup"):
            lk = llamacpp.lookup(gguf, chat_prompt, n_new=64, threads=2, draft_max=8)

Results (plain dicts, JSON-serialisable):

- `tokenize(gguf, text, parse_special=True) -> list[int]`: the token ids of `text`, no BOS
  added, special tokens such as `<|im_start|>` parsed unless `parse_special=False`.
- `bench(gguf, threads, n_gen, repeats, n_prompt=128) -> dict`, from `llama-bench -o json`:
  {"tg_tokens_per_second", "tg_std", "tg_samples"  (generation of n_gen tokens, one at a time),
   "pp_tokens_per_second", "pp_std", "pp_samples"  (prompt processing of n_prompt tokens; None
   when n_prompt=0), "threads", "n_gen", "n_prompt", "repeats", "build_commit", "build_number",
   "cpu_info", "model_type", "model_size", "model_n_params"}.
- `generate(gguf, prompt_text, n_new, threads, temperature=0) -> dict`, from `llama-cli`
  (no conversation mode, prompt taken verbatim: no escape processing, special tokens parsed,
  no BOS unless the model asks for one): {"text" (the new text only), "tokens_per_second"
  (decode: sampled tokens after the first / eval time), "n_eval" (decode steps timed),
  "eval_ms", "prompt_tokens", "prompt_tokens_per_second", "prompt_ms", "stopped_at_eos",
  "wall_s"}. At most n_new tokens; it stops earlier at an end-of-generation token unless
  `ignore_eos=True`.
- `lookup(gguf, prompt_text, n_new, threads, draft_max) -> dict`, from `llama-lookup` (prompt
  lookup decoding: drafts of at most draft_max tokens a round, continuing the context's
  matching n-grams of 1..4 tokens, verified by the model in one batch; greedy at temperature 0): {"text", "tokens_per_second" (decoded
  tokens / decode time, as llama-lookup reports it), "n_decoded", "decode_s",
  "prompt_tokens", "prompt_tokens_per_second", "drafted", "accepted", "acceptance_rate"
  (accepted / drafted), "draft_max", "wall_s"}. llama-lookup stops once more than n_new
  tokens are decoded, so n_decoded can exceed n_new by up to draft_max; its text keeps the
  end-of-generation token's text (e.g. `<|im_end|>`) when it stops there.

Every call runs one subprocess with a timeout; a missing binary, a non-zero exit, a timeout or
output that does not parse raises RuntimeError naming the command and the tail of its stderr.
Numbers are wall-clock and depend on what else the machine runs: llama.cpp's threads spin
at their barriers, so with as many threads as cores, one other busy process can slow decoding
by 10-100x (measured: 2 threads on 2 cores, 120-140 tokens/s quiet, 1-12 tokens/s beside one
busy process). Measure on a quiet machine, and look at the std/samples.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

ENV = "DECSPEC_LLAMA_CPP"
TOOLS = ("llama-tokenize", "llama-bench", "llama-cli", "llama-lookup")


def bin_dir() -> Path | None:
    """The llama.cpp binary folder named by $DECSPEC_LLAMA_CPP, or None when unset or not a folder."""
    value = os.environ.get(ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_dir() else None


def has_tool(name: str) -> bool:
    """Whether `name` (e.g. "llama-lookup") is an executable in bin_dir()."""
    d = bin_dir()
    return d is not None and os.access(d / name, os.X_OK)


def _tool(name: str) -> str:
    d = bin_dir()
    if d is None:
        raise RuntimeError(f"llama.cpp not found: set {ENV} to its build/bin folder")
    path = d / name
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"llama.cpp tool {name} not found in {d}")
    return str(path)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    shown = shlex.join(cmd)
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode("utf-8", "replace")
        raise RuntimeError(f"timed out after {timeout:g}s: {shown}\n{_tail(err)}") from None
    except OSError as e:
        raise RuntimeError(f"could not run: {shown}: {e}") from None
    proc.stdout = proc.stdout.decode("utf-8", "replace")
    proc.stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}: {shown}\n{_tail(proc.stderr)}")
    return proc


def _fail(what: str, cmd: list[str], proc: subprocess.CompletedProcess):
    raise RuntimeError(f"{what}: {shlex.join(cmd)}\n{_tail(proc.stderr)}")


class _PromptFile:
    """The prompt in a temporary file, passed with `-f FILE --no-escape`.

    llama.cpp's common `-f` drops one trailing newline from the file (llama-tokenize's does not);
    `strip_newline=True` writes one extra so that the tool sees `text` exactly.
    """

    def __init__(self, text: str, strip_newline: bool):
        self.text = text + "\n" if strip_newline and text.endswith("\n") else text

    def __enter__(self) -> str:
        fd, self.path = tempfile.mkstemp(prefix="decspec-llamacpp-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(self.text)
        return self.path

    def __exit__(self, *exc):
        os.unlink(self.path)


def tokenize(gguf: str | Path, text: str, parse_special: bool = True, timeout: float = 120) -> list[int]:
    """Token ids of `text` with the GGUF's tokenizer, no BOS added."""
    with _PromptFile(text, strip_newline=False) as path:
        cmd = [_tool("llama-tokenize"), "-m", str(gguf), "-f", path, "--ids", "--no-bos",
               "--no-escape", "--log-disable"]
        if not parse_special:
            cmd.append("--no-parse-special")
        proc = _run(cmd, timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("[")]
    try:
        ids = json.loads(lines[-1])
    except (IndexError, ValueError):
        _fail("no token ids in the output", cmd, proc)
    return [int(i) for i in ids]


def bench(gguf: str | Path, threads: int, n_gen: int, repeats: int, n_prompt: int = 128,
          timeout: float = 600) -> dict:
    """llama-bench: generation (tg) and prompt-processing (pp) tokens/s, mean, std and samples."""
    cmd = [_tool("llama-bench"), "-m", str(gguf), "-t", str(threads), "-p", str(n_prompt),
           "-n", str(n_gen), "-r", str(repeats), "-o", "json"]
    proc = _run(cmd, timeout)
    try:
        records = json.loads(proc.stdout)
    except ValueError:
        _fail("llama-bench printed no JSON", cmd, proc)
    tg = next((r for r in records if r["n_gen"] > 0 and r["n_prompt"] == 0), None)
    pp = next((r for r in records if r["n_prompt"] > 0 and r["n_gen"] == 0), None)
    if not records or (n_gen > 0 and tg is None) or (n_prompt > 0 and pp is None):
        _fail("llama-bench results lack a test", cmd, proc)
    first = records[0]
    return {
        "tg_tokens_per_second": tg["avg_ts"] if tg else None,
        "tg_std": tg["stddev_ts"] if tg else None,
        "tg_samples": tg["samples_ts"] if tg else None,
        "pp_tokens_per_second": pp["avg_ts"] if pp else None,
        "pp_std": pp["stddev_ts"] if pp else None,
        "pp_samples": pp["samples_ts"] if pp else None,
        "threads": first["n_threads"], "n_gen": n_gen, "n_prompt": n_prompt, "repeats": repeats,
        **{k: first.get(k) for k in ("build_commit", "build_number", "cpu_info", "model_type",
                                     "model_size", "model_n_params")},
    }


# llama_perf_context_print: prompt eval time =  888.19 ms /  42 tokens (...)
# llama_perf_context_print:        eval time = 6185.09 ms /  63 runs   (...)
_PERF = re.compile(r"llama_perf_context_print:\s+(prompt eval|eval) time =\s*([\d.]+) ms /\s*(\d+) (?:tokens|runs)")


def generate(gguf: str | Path, prompt_text: str, n_new: int, threads: int, temperature: float = 0,
             ignore_eos: bool = False, seed: int = 0, ctx_size: int = 4096, timeout: float = 600) -> dict:
    """One generation with llama-cli from `prompt_text` taken verbatim (format chat prompts yourself)."""
    with _PromptFile(prompt_text, strip_newline=True) as path:
        cmd = [_tool("llama-cli"), "-m", str(gguf), "-f", path, "--no-escape", "-no-cnv",
               "--no-display-prompt", "--simple-io", "-n", str(n_new), "-t", str(threads),
               "--temp", str(temperature), "-s", str(seed), "-c", str(ctx_size)]
        if ignore_eos:
            cmd.append("--ignore-eos")
        t0 = time.perf_counter()
        proc = _run(cmd, timeout)
        wall = time.perf_counter() - t0
    perf = {kind: (float(ms), int(n)) for kind, ms, n in _PERF.findall(proc.stderr)}
    if "eval" not in perf or "prompt eval" not in perf:
        _fail("no llama_perf timings in stderr", cmd, proc)
    # stdout: the new text, " [end of text]\n" if it stopped at one, then "\n\n"
    text = proc.stdout.removesuffix("\n\n")
    eos = text.endswith(" [end of text]\n")
    text = text.removesuffix(" [end of text]\n")
    eval_ms, n_eval = perf["eval"]
    prompt_ms, n_prompt = perf["prompt eval"]
    return {
        "text": text,
        "tokens_per_second": n_eval / eval_ms * 1e3 if eval_ms > 0 else None,
        "n_eval": n_eval, "eval_ms": eval_ms,
        "prompt_tokens": n_prompt,
        "prompt_tokens_per_second": n_prompt / prompt_ms * 1e3 if prompt_ms > 0 else None,
        "prompt_ms": prompt_ms,
        "stopped_at_eos": eos,
        "wall_s": wall,
    }


_LOOKUP = {
    "encoded": re.compile(r"encoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s"),
    "decoded": re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s"),
    "n_drafted": re.compile(r"n_drafted\s+=\s+(\d+)"),
    "n_accept": re.compile(r"n_accept\s+=\s+(\d+)"),
}
# ngram-cache.cpp prints each drafted token to stdout, in the middle of the generated text
_DRAFT_NOISE = re.compile(r" - draft candidate: token=\d+\n")


def lookup(gguf: str | Path, prompt_text: str, n_new: int, threads: int, draft_max: int,
           temperature: float = 0, seed: int = 0, ctx_size: int = 4096, timeout: float = 600) -> dict:
    """Prompt lookup decoding with llama-lookup from `prompt_text` taken verbatim."""
    with _PromptFile(prompt_text, strip_newline=True) as path:
        cmd = [_tool("llama-lookup"), "-m", str(gguf), "-f", path, "--no-escape",
               "-n", str(n_new), "-t", str(threads), "--draft-max", str(draft_max),
               "--temp", str(temperature), "-s", str(seed), "-c", str(ctx_size)]
        t0 = time.perf_counter()
        proc = _run(cmd, timeout)
        wall = time.perf_counter() - t0
    found = {k: rx.search(proc.stderr) for k, rx in _LOOKUP.items()}
    if not all(found.values()):
        _fail("no llama-lookup statistics in stderr", cmd, proc)
    # stdout: "\n\n", the prompt's token pieces, the new text, then "\n\n" twice
    out = _DRAFT_NOISE.sub("", proc.stdout).removesuffix("\n\n\n\n")
    start = out.find(prompt_text)  # after a BOS piece, for models that add one
    text = out[start + len(prompt_text):] if start >= 0 else out
    n_dec, dec_s, dec_tps = found["decoded"].groups()
    n_enc, _, enc_tps = found["encoded"].groups()
    drafted, accepted = int(found["n_drafted"].group(1)), int(found["n_accept"].group(1))
    return {
        "text": text,
        "tokens_per_second": float(dec_tps),
        "n_decoded": int(n_dec), "decode_s": float(dec_s),
        "prompt_tokens": int(n_enc), "prompt_tokens_per_second": float(enc_tps),
        "drafted": drafted, "accepted": accepted,
        "acceptance_rate": accepted / drafted if drafted else None,
        "draft_max": draft_max,
        "wall_s": wall,
    }
