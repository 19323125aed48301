"""Train drafts for a real, frozen target (default: SmolLM2-135M-Instruct), resumable across sessions.

    python -m decspec.stdlib.models.train_drafts --work ~/drafts-work --out stdlib/models/reference/smollm2-135m-instruct
    python -m decspec.stdlib.models.train_drafts --work DIR --out DIR --only eagle --eagle-steps 4000   # one stage

Re-running the same command continues where the last run stopped: every stage writes its results
(and, while training, a checkpoint of weights, optimizer and random state every `--save-every`
steps) to `--work`, and skips what is already there. On CPU the whole recipe is hours. A new machine
(without the old --work) regenerates the data deterministically and, with `--warm-start`, continues
from the drafts already saved in --out.

Stages:

1. chat: the target answers chat instructions (task templates over general topics, and questions
   about standard-library functions), greedily for two thirds of them and at temperature 0.8 for
   the rest, through its own chat template. Its own text is what a draft has to predict. Every
   tenth prompt is held out. The benchmark prompts (benchmarks/prompts.py) are never used.
   magpie (`--magpie N`): N requests the target writes itself when its chat template is rendered up to
   a user turn (Magpie, Xu et al. 2024), each answered by the target as above: varied chat that no
   template list gives. `--server URL` has a llama.cpp server on the target's GGUF write the text
   (several at once, one thread); the labels are still the in-process target's own features.
2. code: windows of the Python standard library's source (the held-out modules of train.py held out).
3. The target's features (its final hidden state after the norm) for every token of 1-2 are stored
   with the tokens in float16 (`features-*.pt` in --work): the heads train on them without running
   the target again, and the target's distribution of the next token is lm_head(feature).
4. eagle: an EAGLE feature head (stdlib/models/eagle.py): feature regression + cross-entropy against
   the target's distribution (train.py's eagle_loss, on cached features).
5. medusa, hydra: Medusa and Hydra heads, self-distilled from the target's distributions.
6. draft: a one-layer model that shares the target's embedding, final norm and LM head (initialized
   from the target's first layer), distilled from the target's distributions (DistillSpec).

Everything trained is saved in float16 to --out beside `train_log.json` (held-out losses, and per draft
depth the rate at which the draft's argmax equals the target's: what greedy verification accepts).
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from decspec.progress import progress
from decspec.stdlib.models.eagle import EagleHead
from decspec.stdlib.models.heads import HydraHeads, MedusaHeads
from decspec.stdlib.models.heads import SubsetHead
from decspec.stdlib.models.train import (
    corpus_files, eagle_step_loss, heads_step_loss, optimizer, read_texts, residual_streams, schedule, soft_cross_entropy,
)
from decspec.stdlib.models.transformer import Transformer, rope

TOPICS = (
    "volcanoes", "honeybees", "the Roman Empire", "electric cars", "the human heart", "coffee", "chess",
    "ocean tides", "black holes", "vaccines", "the printing press", "recycling", "earthquakes", "the internet",
    "dinosaurs", "baking bread", "jazz", "the solar system", "friendship", "mountains", "deserts", "lighthouses",
    "cats", "dogs", "trains", "gardening", "sleep", "running", "meditation", "saving money", "learning a language",
    "public speaking", "time management", "penguins", "democracy", "electricity", "magnets", "DNA",
    "the immune system", "bicycles", "airplanes", "snow", "forests", "rivers", "cooking rice", "job interviews",
    "libraries", "photography", "the Olympic Games", "ancient Egypt", "clouds", "batteries", "owls",
    "coral reefs", "video games", "soap", "bridges", "the compass", "spiders", "tea ceremonies", "glaciers",
    "the violin", "solar panels", "board games", "whales", "maps", "chocolate", "the periodic table",
)
TASKS = (
    "Explain {t} to a ten-year-old.", "Write a short poem about {t}.", "Give me three interesting facts about {t}.",
    "Write a short story that involves {t}.", "What are the pros and cons of {t}?",
    "Summarize the history of {t} in one paragraph.", "Describe {t} in three sentences.",
    "What should a beginner know about {t}?", "Write a limerick about {t}.", "Why do people care about {t}?",
)
CODE_MODULES = ("os.path", "math", "itertools", "functools", "collections", "json", "re", "random", "statistics",
                "heapq", "bisect", "pathlib", "shutil", "fnmatch", "difflib", "operator", "base64", "zlib")
CODE_TASKS = ("What does the Python function `{f}` do? Give a short example.",
              "Write a Python function that uses `{f}`, with a docstring.",
              "When would I use `{f}` in Python, and what are its pitfalls?")
HELDOUT_EVERY = 10
SAMPLED_EVERY = 3  # every third batch of prompts is answered at temperature 0.8, the rest greedily
SAMPLE_TEMPERATURE = 0.8
KINDS = ("eagle", "medusa", "hydra", "draft")
SPLITS = ("chat", "magpie", "code")  # the kinds of data, each with its held-out part reported apart
DRAFT_VOCAB = 8192  # tokens the drafts propose from (the most frequent in the training data: FR-Spec)


# --- data: the target's own answers, and standard-library source ----------------------------------


def _stdlib_functions() -> list[str]:
    """Public functions of a few standard-library modules, as `module.name` (deterministic order)."""
    import importlib

    names = []
    for mod in CODE_MODULES:
        m = importlib.import_module(mod)
        for name, obj in sorted(vars(m).items()):
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                names.append(f"{mod}.{name}")
    return names


def instructions() -> list[str]:
    """The training instructions, in a fixed shuffled order (index i is held out when i % 10 == 0)."""
    import random

    out = [task.format(t=t) for t in TOPICS for task in TASKS]
    out += [CODE_TASKS[i % len(CODE_TASKS)].format(f=f) for i, f in enumerate(_stdlib_functions())]
    random.Random(0).shuffle(out)
    return out


@torch.no_grad()
def answer(target: Transformer, prompts: list[list[int]], *, max_new: int, temperature: float,
           gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Continue each prompt until the target's EOS or `max_new` tokens.
    -> per prompt (tokens [n] int32: prompt and answer, the target's features [n, C] float16)."""
    B, L = len(prompts), max(map(len, prompts))
    cache = target.new_cache(B, L + max_new)
    tokens = torch.zeros(B, L, dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p)
    lengths = torch.tensor([len(p) for p in prompts])
    out = target(tokens, cache, n_valid=lengths)  # right-padded: padding slots are overwritten by what follows
    logits = out.logits[torch.arange(B), lengths - 1]  # [B, V]
    toks = [list(p) for p in prompts]
    feats = [[out.hidden[i, : len(p)]] for i, p in enumerate(prompts)]
    done = [False] * B
    for _ in range(max_new):
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)[:, 0]
        step = target(nxt[:, None], cache)
        for i in range(B):
            if not done[i]:
                toks[i].append(int(nxt[i]))
                feats[i].append(step.hidden[i])
                done[i] = int(nxt[i]) == target.eos_token_id
        if all(done):
            break
        logits = step.logits[:, -1]
    return [(torch.tensor(t, dtype=torch.int32), torch.cat(f).to(torch.float16)) for t, f in zip(toks, feats)]


@torch.no_grad()
def features(target: Transformer, windows: torch.Tensor) -> torch.Tensor:
    """The target's features of token windows [B, T] -> [B, T, C] float16."""
    out = target(windows, target.new_cache(len(windows), windows.shape[1]), keep=1)
    return out.hidden.to(torch.float16)


def make_chat(target: Transformer, work: Path, *, prompts: int, batch: int, max_new: int, log) -> None:
    """Shards chat-NNNN.pt: the target's answers to instructions()[:prompts], batch by batch (resumable)."""
    tok = target.tokenizer
    texts = instructions()[:prompts]
    for b, start in enumerate(range(0, len(texts), batch)):
        shard = work / f"chat-{b:04d}.pt"
        if shard.exists():
            continue
        t0 = time.perf_counter()
        chunk = texts[start : start + batch]
        ids = [tok.encode_prompt(tok.apply_chat_template([{"role": "user", "content": q}]) if tok.chat_template else q + "\n")
               for q in chunk]
        temperature = SAMPLE_TEMPERATURE if b % SAMPLED_EVERY == SAMPLED_EVERY - 1 else 0.0
        seqs = answer(target, ids, max_new=max_new, temperature=temperature, gen=torch.Generator().manual_seed(b))
        save_atomic({"tokens": [s[0] for s in seqs], "features": [s[1] for s in seqs], "prompt_lengths": [len(i) for i in ids],
                     "heldout": [(start + i) % HELDOUT_EVERY == 0 for i in range(len(chunk))], "temperature": temperature}, shard)
        n = sum(len(s[0]) - len(i) for s, i in zip(seqs, ids))
        log(f"chat {b}: {len(chunk)} answers, {n} tokens at T={temperature}, {n / (time.perf_counter() - t0):.0f} tok/s")


def make_code(target: Transformer, work: Path, *, tokens: int, window: int, batch: int, log) -> None:
    """Shards code-NNNN.pt: standard-library source windows (train.py's held-out modules held out) with features."""
    tok = target.tokenizer
    train_files, heldout_files = corpus_files()
    parts = []
    for heldout, files in ((False, train_files), (True, heldout_files)):
        budget = tokens // window if not heldout else max(1, tokens // window // HELDOUT_EVERY)
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(1 + heldout)).tolist()
        wins = []
        for i in order:  # files in a fixed random order, each cut into whole windows, until the budget is met
            x = tok.encode(read_texts([files[i]])[0])
            wins += [x[j : j + window] for j in range(0, len(x) - window + 1, window)]
            if len(wins) >= budget:
                break
        parts += [(heldout, w) for w in wins[:budget]]
    for b, start in enumerate(range(0, len(parts), batch)):
        shard = work / f"code-{b:04d}.pt"
        if shard.exists():
            continue
        chunk = parts[start : start + batch]
        wins = torch.tensor([w for _, w in chunk])
        f = features(target, wins)
        save_atomic({"tokens": [w.to(torch.int32) for w in wins], "features": list(f), "prompt_lengths": [0] * len(chunk),
                     "heldout": [h for h, _ in chunk], "temperature": None}, shard)
        if b % 10 == 0:
            log(f"code {b}: {start + len(chunk)}/{len(parts)} windows")


MAGPIE_FILE = "magpie.jsonl"


def magpie_prefix(tok) -> list[int]:
    """The chat template rendered up to where a user's message starts (system prompt included): given only
    this, an instruction-tuned model writes a user's request itself (Magpie, Xu et al. 2024)."""
    marker = "\x00"
    text = tok.apply_chat_template([{"role": "user", "content": marker}])
    return tok.encode_prompt(text[: text.index(marker)])


class Generator:
    """Continues token-id prompts with the target: in process (`answer`), or through a llama.cpp server
    (`llama-server -m MODEL.gguf`) on the same GGUF weights, which decodes several prompts at once on one
    thread. The server's text is only what the drafts read; every label they learn is the in-process
    target's own distribution (its features, computed afterwards over the whole sequence)."""

    def __init__(self, target: Transformer, server: str | None, parallel: int):
        self.target, self.server, self.parallel = target, server, parallel

    def __call__(self, prompts: list[list[int]], *, max_new: int, temperature: float, seed: int) -> list[tuple[list[int], bool]]:
        """-> per prompt (the new token ids, whether the model ended them itself with its EOS)."""
        if self.server is None:
            seqs = answer(self.target, prompts, max_new=max_new, temperature=temperature,
                          gen=torch.Generator().manual_seed(seed))
            out = []
            for p, (t, _) in zip(prompts, seqs):
                new = t[len(p):].tolist()
                ended = bool(new) and new[-1] == self.target.eos_token_id
                out.append((new[:-1] if ended else new, ended))
            return out
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.parallel) as pool:
            return list(pool.map(lambda a: self._request(a[1], max_new, temperature, seed * 1000 + a[0]), enumerate(prompts)))

    def _request(self, prompt: list[int], max_new: int, temperature: float, seed: int) -> tuple[list[int], bool]:
        import urllib.request

        body = {"prompt": prompt, "n_predict": max_new, "temperature": temperature, "top_k": 0, "top_p": 1.0,
                "min_p": 0.0, "seed": seed, "return_tokens": True, "cache_prompt": False}
        req = urllib.request.Request(f"{self.server.rstrip('/')}/completion", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        for attempt in range(5):  # a busy server may drop a connection: retry, then give up with its error
            try:
                with urllib.request.urlopen(req, timeout=600) as r:
                    d = json.loads(r.read())
                break
            except OSError:
                if attempt == 4:
                    raise
                time.sleep(2 ** attempt)
        return [int(t) for t in d["tokens"]], d.get("stop_type") == "eos" or bool(d.get("stopped_eos"))


def benchmark_prompts() -> set[str]:
    """The benchmark's chat prompts (benchmarks/prompts.py of the checkout this runs from), never trained on;
    outside a checkout there is no benchmark to keep apart: empty."""
    import ast

    source = Path(__file__).resolve().parents[2] / "benchmarks" / "prompts.py"
    if not source.is_file():
        return set()
    for node in ast.parse(source.read_text()).body:  # read, not imported: the module is not part of the package
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CHAT" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise SystemExit(f"{source} has no CHAT list: the magpie stage cannot keep the benchmark prompts out")


def make_magpie(target: Transformer, work: Path, *, conversations: int, generator: Generator, batch: int, max_new: int,
                log) -> None:
    """magpie.jsonl: `conversations` self-written requests and the target's answers (resumable), then shards
    magpie-NNNN.pt with the target's features. Requests come from `magpie_prefix` at temperature 1;
    kept when the model ended them itself, with at least four words, not seen before and not a benchmark
    prompt. Answers: greedy, every third batch at temperature 0.8. Every tenth conversation is held out."""
    tok = target.tokenizer
    path = work / MAGPIE_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    seen = {r["request"] for r in rows} | benchmark_prompts()
    prefix = magpie_prefix(tok)
    b = rows[-1]["batch"] + 1 if rows else 0
    barren = 0  # batches in a row that kept no request
    while len(rows) < conversations:
        if barren == 20:
            raise SystemExit(f"magpie: 20 batches in a row gave no usable request; is {MAGPIE_FILE}'s model an instruction-tuned one?")
        t0 = time.perf_counter()
        asked = generator([prefix] * batch, max_new=96, temperature=1.0, seed=2 * b)
        requests = []
        for ids, ended in asked:
            text = tok.decode(ids).strip()
            if ended and len(text.split()) >= 4 and text not in seen:
                seen.add(text)
                requests.append(text)
        temperature = SAMPLE_TEMPERATURE if b % SAMPLED_EVERY == SAMPLED_EVERY - 1 else 0.0
        prompts = [tok.encode_prompt(tok.apply_chat_template([{"role": "user", "content": q}])) for q in requests]
        answers = generator(prompts, max_new=max_new, temperature=temperature, seed=2 * b + 1) if prompts else []
        new = [{"batch": b, "request": q, "prompt": p, "answer": a + ([target.eos_token_id] if ended else []),
                "temperature": temperature} for q, p, (a, ended) in zip(requests, prompts, answers)]
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        rows += new
        barren = 0 if new else barren + 1
        n = sum(len(r["answer"]) for r in new)
        log(f"magpie {b}: {len(new)}/{batch} requests kept, {n} answer tokens at T={temperature} "
            f"({n / (time.perf_counter() - t0):.0f} tok/s), {len(rows)}/{conversations}")
        b += 1
    rows = rows[:conversations]
    shard_size = 32
    for s, start in enumerate(range(0, len(rows), shard_size)):
        shard = work / f"magpie-{s:04d}.pt"
        chunk = rows[start : start + shard_size]
        if shard.exists() or len(chunk) < shard_size and start + len(chunk) < conversations:
            continue
        seqs = [torch.tensor(r["prompt"] + r["answer"], dtype=torch.int32) for r in chunk]
        feats = [features(target, x.long()[None])[0] for x in seqs]
        save_atomic({"tokens": seqs, "features": feats, "prompt_lengths": [len(r["prompt"]) for r in chunk],
                     "heldout": [(start + i) % HELDOUT_EVERY == 0 for i in range(len(chunk))],
                     "temperature": chunk[0]["temperature"], "temperatures": [r["temperature"] for r in chunk]}, shard)
        log(f"magpie features: shard {s}, {start + len(chunk)}/{len(rows)} conversations")


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class Data:
    """The cached sequences, packed into one stream per split (sequences separated only by order).

    tokens [N] long, feats [N, C] float16: feats[j] is the target's feature after reading tokens[j], so
    lm_head(feats[j]) is its distribution of tokens[j + 1].
    """

    def __init__(self, work: Path):
        self.seqs: list[dict] = []
        for shard in sorted(work.glob("chat-*.pt")) + sorted(work.glob("magpie-*.pt")) + sorted(work.glob("code-*.pt")):
            d = torch.load(shard, weights_only=True)
            for i, (t, f) in enumerate(zip(d["tokens"], d["features"])):
                self.seqs.append({"tokens": t.long(), "features": f, "prompt_length": d["prompt_lengths"][i],
                                  "heldout": d["heldout"][i], "kind": shard.name.split("-")[0],
                                  "greedy": d.get("temperatures", [d["temperature"]] * (i + 1))[i] == 0.0})
        if not self.seqs:
            raise SystemExit(f"no data in {work}: run the chat and code stages first")
        train = [s for s in self.seqs if not s["heldout"]]
        self.tokens = torch.cat([s["tokens"] for s in train])
        self.feats = torch.cat([s["features"] for s in train])

    def summary(self) -> dict:
        out = {}
        for kind in SPLITS:
            for held in (False, True):
                seqs = [s for s in self.seqs if s["kind"] == kind and s["heldout"] == held]
                out[f"{kind}_{'heldout' if held else 'train'}"] = {
                    "sequences": len(seqs), "tokens": sum(len(s["tokens"]) for s in seqs),
                    "answer_tokens": sum(len(s["tokens"]) - s["prompt_length"] for s in seqs)}
        return out

    def windows(self, batch: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows of the training stream -> tokens [batch, length], feats [batch, length, C] float32."""
        start = torch.randint(0, len(self.tokens) - length, (batch,), generator=gen)
        idx = start[:, None] + torch.arange(length)[None, :]
        return self.tokens[idx], self.feats[idx].float()


# --- the shared draft model ---------------------------------------------------------------------


def shared_draft(target: Transformer, layers: int = 1) -> Transformer:
    """A `layers`-layer model on the target's embedding and LM head (shared tensors, frozen), its layers and
    final norm initialized from the target's first layers and final norm."""
    from dataclasses import replace

    config = replace(target.config, num_hidden_layers=layers)
    draft = Transformer(config, dtype=torch.float32)
    draft.model.embed_tokens = target.model.embed_tokens
    draft.lm_head = target.lm_head
    for i in range(layers):
        draft.model.layers[i].load_state_dict(target.model.layers[i].state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    return draft


def own_parameters(draft: Transformer) -> dict[str, torch.Tensor]:
    """The draft's weights that are not the target's (its layers and final norm)."""
    return {k: v for k, v in draft.state_dict().items() if not k.startswith(("model.embed_tokens.", "lm_head."))}


def draft_logits(draft: Transformer, tokens: torch.Tensor, pick: torch.Tensor | None = None) -> torch.Tensor:
    """Causal forward of the draft over tokens [B, T] (no cache) -> logits [B, T, V] (or at positions `pick`)."""
    x = residual_streams(draft, tokens)[-1]
    return draft.lm_head(draft.model.norm(x if pick is None else x[:, pick]))


# --- losses on cached features ------------------------------------------------------------------


def module_for(kind: str, target: Transformer) -> torch.nn.Module:
    C = target.config.hidden_size
    torch.manual_seed(KINDS.index(kind) + 11)
    if kind == "eagle":
        c = target.config
        return EagleHead(C, window=32, intermediate_size=1024, num_attention_heads=c.num_attention_heads,
                         num_key_value_heads=c.kv_heads)
    if kind == "medusa":
        return MedusaHeads(C, 4)
    if kind == "hydra":
        return HydraHeads(C, 4)
    return shared_draft(target)


def step_loss(kind: str, module, target: Transformer, data: Data, batch: int, length: int, gen: torch.Generator):
    lm_head, embed = target.lm_head, target.model.embed_tokens
    if kind == "eagle":
        tokens, feats = data.windows(batch, length + 1, gen)
        return eagle_step_loss(module, lm_head, embed, feats[:, :-1], tokens[:, 1:-1], gen)
    if kind in ("medusa", "hydra"):
        k = module.num_heads
        tokens, feats = data.windows(batch, length + k + 1, gen)
        return heads_step_loss(module, lm_head, embed, feats[:, :-1], tokens, gen)
    tokens, feats = data.windows(batch, length, gen)
    pick = torch.randperm(length, generator=gen)[: length // 4]
    with torch.no_grad():
        teacher = lm_head(feats[:, pick])
    return soft_cross_entropy(draft_logits(module, tokens, pick), teacher)


# --- evaluation: how often greedy verification would accept -----------------------------------


@torch.no_grad()
def evaluate(kind: str, module, target: Transformer, data: Data, *, lm_head=None, depth: int = 4, starts: int = 8) -> dict:
    """On held-out sequences: per draft depth, the rate at which the draft's argmax equals the target's
    (teacher-forced: earlier drafts are the sequence's own tokens, which on greedy answers are the target's
    argmax), and the mean number of leading agreements (what a chain of `depth` greedy drafts gets accepted),
    for chat answers (greedy ones) and code windows apart."""
    lm_head, embed = target.lm_head, target.model.embed_tokens
    out = {}
    lm_head = target.lm_head if lm_head is None else lm_head  # what the drafts propose through (a SubsetHead: the draft vocabulary)
    for name, seqs in (*((kind, [s for s in data.seqs if s["heldout"] and s["kind"] == kind and s["greedy"]]) for kind in ("chat", "magpie")),
                       ("code", [s for s in data.seqs if s["heldout"] and s["kind"] == "code"])):
        agree_all = []
        for s in seqs:
            tokens, feats = s["tokens"], s["features"].float()
            n = len(tokens)
            first = max(s["prompt_length"], 1 + (module.window if kind == "eagle" else 0))
            if n - first < depth + 2:
                continue
            top = target.lm_head(feats).argmax(-1)  # [n]: top[j] is the target's greedy token j+1
            at = torch.linspace(first, n - depth - 2, min(starts, n - depth - 1 - first)).long()  # context ends at token p
            agree_all.append(_agreement(kind, module, lm_head, target.model.embed_tokens, tokens, feats, top, at, depth))
        if agree_all:
            agree = torch.cat(agree_all)  # [m, depth] bool
            lead = agree.int().cumprod(-1).sum(-1).float()
            out[name] = {"positions": len(agree), "top1_agreement_by_depth": agree.float().mean(0).tolist(),
                         "mean_accepted_of_chain": lead.mean().item()}
    return out


def _agreement(kind, module, lm_head, embed, tokens, feats, top, at, depth) -> torch.Tensor:
    """[len(at), depth] bool: whether draft d (d = 0..depth-1), proposed after the context tokens[: p+1], equals
    the target's greedy token. The bonus token the target itself adds each round is not counted: for the
    draft model and EAGLE draft d is token p+1+d; Medusa/Hydra heads read h_p, whose own LM head gives p+1,
    so their head i proposes p+2+i."""
    if kind in ("medusa", "hydra"):
        depth = min(depth, module.num_heads)
        ahead = torch.stack([tokens[at + 1 + d] for d in range(depth)], -1)  # y_{p+1} ..
        want = torch.stack([top[at + 1 + d] for d in range(depth)], -1)  # the target's tokens p+2 ..
        logits = module(feats[at], lm_head) if kind == "medusa" else module(feats[at], ahead, lm_head, embed)
        return logits[:, :depth].argmax(-1) == want
    want = torch.stack([top[at + d] for d in range(depth)], -1)  # the target's tokens p+1 .. p+depth
    if kind == "draft":
        x = residual_streams(module, tokens[None])[-1][0]
        logits = lm_head(module.model.norm(x))  # [n, V]: the draft's distribution of token j+1
        return torch.stack([logits[at + d].argmax(-1) for d in range(depth)], -1) == want
    W = module.window  # eagle: steps (f_j, x_{j+1}) for j = p-W .. p-1 predict f_p, then its own drafts
    steps = at[:, None] - W + torch.arange(W)[None, :]  # [m, W]
    ahead = torch.stack([tokens[at + 1 + d] for d in range(depth)], -1)  # drafts teacher-forced: p+1 ..
    logits = module.draft_all(feats[steps], tokens[steps + 1], torch.ones_like(steps, dtype=torch.bool), ahead,
                              depth - 1, lm_head, embed)
    return logits.argmax(-1) == want


def draft_vocabulary(target: Transformer, data: Data, n: int = DRAFT_VOCAB) -> tuple[torch.Tensor, dict]:
    """The n tokens most frequent in the training sequences (and the EOS) -> (ids [n] sorted, coverage of held-out text)."""
    counts = torch.bincount(data.tokens, minlength=target.vocab_size).double()
    if target.eos_token_id is not None:
        counts[target.eos_token_id] = float("inf")
    ids = counts.topk(min(n, target.vocab_size)).indices.sort().values
    keep = torch.zeros(target.vocab_size, dtype=torch.bool)
    keep[ids] = True
    coverage = {}
    for kind in SPLITS:
        held = [s["tokens"][s["prompt_length"]:] for s in data.seqs if s["heldout"] and s["kind"] == kind]
        if held:
            coverage[kind] = keep[torch.cat(held)].double().mean().item()
    return ids, {"size": len(ids), "heldout_coverage": coverage}


# --- training, with checkpoints -------------------------------------------------------------------


def saved_weights(kind: str, out: Path) -> dict[str, torch.Tensor] | None:
    """The float16 weights `save` wrote for `kind` in out/ (float32), or None."""
    from safetensors.torch import load_file

    files = {"eagle": out / "eagle.safetensors", "medusa": out / "heads.safetensors", "hydra": out / "heads.safetensors",
             "draft": out / "draft" / "model.safetensors"}
    if not files[kind].is_file():
        return None
    state = load_file(str(files[kind]))
    if kind in ("medusa", "hydra"):
        state = {k.removeprefix(f"{kind}."): v for k, v in state.items() if k.startswith(f"{kind}.")}
    return {k: v.float() for k, v in state.items()} or None


def train(kind: str, target: Transformer, data: Data, work: Path, *, steps: int, batch: int, length: int, lr: float,
          save_every: int, log, warm_start: Path | None = None) -> torch.nn.Module:
    """AdamW, warm-up + cosine, bf16 autocast, clipping at 1.0; resumes from work/KIND.ckpt, else (warm_start)
    starts from the weights saved in that folder (the shipped drafts: a new session continues training them)."""
    module = module_for(kind, target)
    warm = saved_weights(kind, warm_start) if warm_start is not None and not (work / f"{kind}.ckpt").exists() else None
    warmed = warm is not None  # whether this training continues saved weights (kept in the checkpoint across resumes)
    if warm is not None:
        module.load_state_dict(warm, strict=kind != "draft")
        log(f"{kind}: starting from the weights in {warm_start}")
    params = [p for n, p in module.named_parameters() if not n.startswith(("model.embed_tokens", "lm_head"))]
    for p in params:
        p.requires_grad_(True)
    opt = optimizer(params, lr)
    gen = torch.Generator().manual_seed(KINDS.index(kind))
    ckpt, first = work / f"{kind}.ckpt", 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        module.load_state_dict(state["module"], strict=False)
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        first = state["step"]
        warmed = state.get("warm_started", False)
        log(f"{kind}: resuming at step {first}/{steps}")
    t0 = time.perf_counter()
    for step in progress(range(first, steps), "training drafts", unit="step"):
        for group in opt.param_groups:
            group["lr"] = schedule(step, steps, lr, warmup=min(100, steps // 10 + 1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = step_loss(kind, module, target, data, batch, length, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % save_every == 0 or step + 1 == steps:
            state = {"module": own_parameters(module) if kind == "draft" else module.state_dict(), "opt": opt.state_dict(),
                     "gen": gen.get_state(), "step": step + 1, "warm_started": warmed}
            save_atomic(state, ckpt)
        if step % 25 == 0 or step + 1 == steps:
            log(f"{kind} step {step}/{steps} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{(step + 1 - first) / (time.perf_counter() - t0):.2f} steps/s")
    module.warm_started = warmed
    return module.requires_grad_(False).eval()


def save(kind: str, module, out: Path, entry: dict) -> None:
    """float16 weights in out/: eagle.*, heads.* (medusa and hydra together), draft/ (own weights only)."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    half = lambda state: {k: v.to(torch.float16).contiguous() for k, v in state.items()}  # noqa: E731
    if kind == "eagle":
        save_file(half(module.state_dict()), str(out / "eagle.safetensors"), metadata={"format": "pt"})
        (out / "eagle.json").write_text(json.dumps({**module.meta(), "trained": entry}, indent=2) + "\n")
    elif kind in ("medusa", "hydra"):
        path, meta_path = out / "heads.safetensors", out / "heads.json"
        state = load_file(str(path)) if path.exists() else {}
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        state = {k: v for k, v in state.items() if not k.startswith(f"{kind}.")}
        state.update({f"{kind}.{k}": v for k, v in half(module.state_dict()).items()})
        meta[kind] = {"num_heads": module.num_heads, "hidden_size": module.hidden_size, "trained": entry}
        save_file(state, str(path), metadata={"format": "pt"})
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    else:
        d = out / "draft"
        d.mkdir(exist_ok=True)
        save_file(half(own_parameters(module)), str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "draft.json").write_text(json.dumps({
            "shares": "the target's model.embed_tokens and lm_head", "num_hidden_layers": module.config.num_hidden_layers,
            "trained": entry}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m decspec.stdlib.models.train_drafts", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="smollm2-135m-instruct", help="a named model or a model directory (frozen)")
    p.add_argument("--work", type=Path, required=True, help="data, features and checkpoints (resumable; ~1 GB)")
    p.add_argument("--out", type=Path, required=True, help="where the trained drafts go (float16) with train_log.json")
    p.add_argument("--only", choices=("chat", "magpie", "code", "vocab", *KINDS), action="append", help="run only these stages (repeatable)")
    p.add_argument("--prompts", type=int, default=720, help="chat instructions answered by the target")
    p.add_argument("--max-new", type=int, default=192, help="longest answer")
    p.add_argument("--magpie", type=int, default=0, help="self-written chat requests answered by the target (Magpie)")
    p.add_argument("--server", default=None,
                   help="URL of a llama.cpp server on the target's GGUF, to write the magpie text faster (else in process)")
    p.add_argument("--parallel", type=int, default=8, help="requests sent to --server at once")
    p.add_argument("--code-tokens", type=int, default=150_000, help="tokens of standard-library source")
    p.add_argument("--steps", type=int, default=1500, help="training steps of each draft")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128, help="tokens per training window")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warm-start", action="store_true",
                   help="a draft with no checkpoint in --work starts from its weights in --out (continue the shipped drafts)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = args.only or ["chat", "magpie", "code", "vocab", *KINDS]
    from decspec.stdlib.models.registry import resolve_model

    target = resolve_model(args.target).requires_grad_(False).eval()
    args.work.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "train_log.json"
    record = json.loads(log_path.read_text()) if log_path.exists() else {}

    def log(msg: str) -> None:
        print(msg, flush=True)

    if "chat" in stages:
        make_chat(target, args.work, prompts=args.prompts, batch=16, max_new=args.max_new, log=log)
    if "magpie" in stages and args.magpie:
        make_magpie(target, args.work, conversations=args.magpie, generator=Generator(target, args.server, args.parallel),
                    batch=16, max_new=args.max_new, log=log)
    if "code" in stages:
        make_code(target, args.work, tokens=args.code_tokens, window=256, batch=8, log=log)
    kinds = [k for k in KINDS if k in stages]
    if not kinds and "vocab" not in stages:
        return 0
    data = Data(args.work)
    record["target"], record["data"] = args.target, data.summary()
    log(f"data: {json.dumps(record['data'])}")
    args.out.mkdir(parents=True, exist_ok=True)
    vocab_file = args.out / "draft_vocab.safetensors"
    if "vocab" in stages:
        from safetensors.torch import save_file

        ids, record["draft_vocab"] = draft_vocabulary(target, data)
        save_file({"ids": ids.to(torch.int32)}, str(vocab_file))
        log(f"draft vocabulary: {json.dumps(record['draft_vocab'])}")
    lm_head = None
    if vocab_file.exists():
        from safetensors.torch import load_file

        lm_head = SubsetHead(target.lm_head, load_file(str(vocab_file))["ids"])
    log_path.write_text(json.dumps(record, indent=2) + "\n")
    for kind in kinds:
        t0 = time.perf_counter()
        module = train(kind, target, data, args.work, steps=args.steps, batch=args.batch, length=args.length, lr=args.lr,
                       save_every=args.save_every, log=log, warm_start=args.out if args.warm_start else None)
        entry = {"steps": args.steps, "batch": args.batch, "length": args.length, "lr": args.lr,
                 "params": sum(v.numel() for v in (own_parameters(module) if kind == "draft" else module.state_dict()).values()),
                 "heldout": evaluate(kind, module, target, data, lm_head=lm_head), "seconds_this_run": round(time.perf_counter() - t0)}
        entry["data"] = record["data"]  # what this run trained on (a kind not retrained keeps its own)
        if module.warm_started and isinstance(record.get(kind), dict):
            prev = record[kind]  # the weights it continued: their own training, as recorded
            entry["continued_from"] = {k: prev[k] for k in ("steps", "batch", "length", "lr", "data", "continued_from") if k in prev}
        save(kind, module, args.out, entry)
        record[kind] = entry
        log_path.write_text(json.dumps(record, indent=2) + "\n")
        log(f"{kind}: {json.dumps(entry['heldout'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
