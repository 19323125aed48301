"""Drafts for a real frozen target (stdlib/models/train_drafts.py): data, training with resume, evaluation,
the shipped form (heads, EAGLE head, shared draft model, draft vocabulary) and its loader.

These run on the shipped 6-layer reference target (the real model's recipe, at toy size)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import decspec
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models import train_drafts
from decspec.stdlib.models.heads import SubsetHead
from decspec.stdlib.models.pretrained import REFERENCE, attach_drafts, load_transformer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The whole recipe, a few steps per stage, on the reference target. -> (work, out, log lines)"""
    work, out = tmp_path_factory.mktemp("work"), tmp_path_factory.mktemp("out")
    lines = []
    args = ["--target", str(REFERENCE / "target"), "--work", str(work), "--out", str(out), "--prompts", "10",
            "--max-new", "8", "--code-tokens", "1024", "--steps", "3", "--save-every", "1", "--batch", "2", "--length", "32"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert train_drafts.main(args) == 0
    lines = buf.getvalue().splitlines()
    return work, out, lines, args


def test_the_benchmark_prompts_are_never_trained_on():
    from benchmarks.prompts import CHAT

    prompts = train_drafts.instructions()
    assert len(prompts) > 500 and len(set(prompts)) == len(prompts)
    assert not set(CHAT) & set(prompts)
    assert not any(topic in q for q in prompts for topic in ("rainbow", "robot", "France", "haiku", "green tea"))


def test_data_holds_out_every_tenth_prompt_and_the_heldout_modules(trained):
    work, _, _, _ = trained
    data = train_drafts.Data(work)
    chat = [s for s in data.seqs if s["kind"] == "chat"]
    assert len(chat) == 10 and sum(s["heldout"] for s in chat) == 1
    assert any(s["kind"] == "code" and s["heldout"] for s in data.seqs)
    for s in data.seqs:  # one feature per token, float16
        assert s["features"].shape == (len(s["tokens"]), 256) and s["features"].dtype == torch.float16
    n = sum(len(s["tokens"]) for s in data.seqs if not s["heldout"])
    assert len(data.tokens) == len(data.feats) == n


def test_cached_features_are_the_targets_own(trained):
    """feats[j] is the target's final normed hidden state after token j: lm_head of it is the target's distribution."""
    work, _, _, _ = trained
    target = load_transformer(REFERENCE / "target")
    data = train_drafts.Data(work)
    s = next(s for s in data.seqs if s["kind"] == "chat" and s["greedy"])
    out = target(s["tokens"][None], target.new_cache(1, len(s["tokens"])))
    assert torch.allclose(out.hidden[0].half().float(), s["features"].float(), atol=2e-2)
    # a greedy answer is the target's argmax at every answer position
    answer = range(s["prompt_length"] - 1, len(s["tokens"]) - 1)
    assert all(int(out.logits[0, j].argmax()) == int(s["tokens"][j + 1]) for j in answer)


def test_every_stage_saves_what_the_loader_attaches(trained):
    _, out, lines, _ = trained
    record = json.loads((out / "train_log.json").read_text())
    for kind in ("eagle", "medusa", "hydra", "draft"):
        assert len(record[kind]["heldout"]["code"]["top1_agreement_by_depth"]) == 4, kind  # (chat answers here are
        # shorter than EAGLE's 32-step window, so only the other kinds are scored on them)
    assert all("chat" in record[kind]["heldout"] for kind in ("medusa", "hydra", "draft"))
    target = load_transformer(REFERENCE / "target")
    target.heads = {}
    draft = attach_drafts(target, out)
    assert set(target.heads) == {"medusa", "hydra", "eagle"} and target.heads["hydra"].num_heads == 4
    assert isinstance(target.draft_lm_head, SubsetHead)
    assert draft.model.embed_tokens is target.model.embed_tokens and draft.lm_head is target.draft_lm_head
    assert draft.num_layers == 1
    prompt = "def add(a, b):\n"
    greedy = {"temperature": "0.0"}
    want = decspec.compile("specs/autoregressive.dec", models={"target": target}, overrides=greedy).generate(prompt, max_new_tokens=10, seed=0)
    for spec in ("eagle", "medusa", "hydra", "speculative_greedy"):
        got = decspec.compile(f"specs/{spec}.dec", models={"target": target, "draft": draft}).generate(prompt, max_new_tokens=10, seed=0)
        assert got.tokens == want.tokens, spec


def test_training_resumes_from_its_checkpoint(trained, capsys):
    work, out, _, args = trained
    steps = args.index("--steps") + 1
    more = [*args[:steps], "5", *args[steps + 1 :], "--only", "medusa"]
    assert train_drafts.main(more) == 0
    log = capsys.readouterr().out
    assert "medusa: resuming at step 3/5" in log and "medusa step 0/" not in log
    assert json.loads((out / "heads.json").read_text())["medusa"]["trained"]["steps"] == 5


def test_the_evaluation_counts_a_perfect_draft_as_always_accepted(trained):
    """A 'draft' that is the whole target agrees with the target's argmax at every depth."""
    work, _, _, _ = trained
    target = load_transformer(REFERENCE / "target")
    data = train_drafts.Data(work)
    whole = train_drafts.shared_draft(target, layers=target.num_layers)
    result = train_drafts.evaluate("draft", whole, target, data)
    assert result["chat"]["top1_agreement_by_depth"] == [1.0] * 4 and result["chat"]["mean_accepted_of_chain"] == 4.0
    half = train_drafts.evaluate("draft", train_drafts.shared_draft(target, layers=1), target, data)
    assert half["chat"]["mean_accepted_of_chain"] < 4.0


def test_subset_head_is_the_full_head_on_its_tokens_and_minus_inf_elsewhere():
    torch.manual_seed(0)
    full = torch.nn.Linear(8, 50, bias=False)
    ids = torch.tensor([1, 4, 9, 30])
    head = SubsetHead(full, ids)
    x = torch.randn(3, 2, 8)
    got, want = head(x), full(x)
    assert torch.allclose(got[..., ids], want[..., ids])
    rest = torch.ones(50, dtype=torch.bool)
    rest[ids] = False
    assert torch.isneginf(got[..., rest]).all()
    assert set(got.argmax(-1).flatten().tolist()) <= set(ids.tolist())


def test_a_draft_vocabulary_narrows_the_heads_not_the_model():
    target = load_transformer(REFERENCE / "target")
    ids = torch.arange(0, 4096, 7)
    target.set_draft_vocabulary(ids)
    cache = target.new_cache(1, 8)
    out = target(torch.tensor([[1, 2, 3]]), cache)
    assert torch.isfinite(out.logits).all()  # the model's own logits keep the whole vocabulary
    medusa = target.medusa(out.hidden[:, -1])
    assert torch.isfinite(medusa[..., ids]).all() and torch.isneginf(medusa).sum() == medusa[..., 0].numel() * (4096 - len(ids))
    target.set_draft_vocabulary(None)
    assert target.draft_lm_head is None


def test_broken_shipped_drafts_are_named_not_raised(trained, tmp_path):
    _, out, _, _ = trained
    import shutil

    bad = tmp_path / "d"
    shutil.copytree(out, bad)
    target = load_transformer(REFERENCE / "target")
    save_file({"ids": torch.tensor([0, 5000], dtype=torch.int32)}, str(bad / "draft_vocab.safetensors"))
    with pytest.raises(DecError, match="draft vocabulary does not fit"):
        attach_drafts(target, bad)
    (bad / "draft_vocab.safetensors").unlink()
    (bad / "draft" / "draft.json").write_text(json.dumps({"num_hidden_layers": 99}))
    with pytest.raises(DecError, match="num_hidden_layers must be an int in 1..6"):
        attach_drafts(target, bad)
    (bad / "draft" / "draft.json").write_text(json.dumps({"num_hidden_layers": 2}))
    with pytest.raises(DecError, match="does not hold the 2-layer draft"):
        attach_drafts(target, bad)
    (bad / "draft" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DecError, match="corrupt"):
        attach_drafts(target, bad)


def test_the_drafts_shipped_for_smollm2_fit_it_and_stay_under_25_mb():
    """Without pulling the model: the shipped files describe SmolLM2-135M's shapes (hidden 576, vocab 49,152)."""
    from safetensors.torch import load_file

    from decspec.stdlib.models.registry import shipped_drafts

    folder = shipped_drafts("smollm2-135m-instruct")
    assert folder is not None and shipped_drafts("no-such-model") is None
    files = [*folder.glob("*.safetensors"), *folder.glob("draft/*.safetensors")]
    assert sum(f.stat().st_size for f in files) < 25e6
    assert json.loads((folder / "eagle.json").read_text())["hidden_size"] == 576
    heads = json.loads((folder / "heads.json").read_text())
    assert {k: (v["hidden_size"], v["num_heads"]) for k, v in heads.items()} == {"medusa": (576, 4), "hydra": (576, 4)}
    ids = load_file(str(folder / "draft_vocab.safetensors"))["ids"]
    assert len(ids) == 8192 and int(ids.max()) < 49152 and len(set(ids.tolist())) == 8192
    draft = load_file(str(folder / "draft" / "model.safetensors"))
    assert draft["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576) and "model.embed_tokens.weight" not in draft
    assert all(v.dtype == torch.float16 for v in draft.values())


def test_warm_start_continues_from_the_saved_drafts(trained, tmp_path):
    """A new machine has no checkpoints: --warm-start begins each draft at the weights saved in --out."""
    work, out, _, _ = trained
    target = load_transformer(REFERENCE / "target")
    data = train_drafts.Data(work)
    for kind in ("eagle", "medusa", "hydra", "draft"):
        saved = train_drafts.saved_weights(kind, out)
        module = train_drafts.train(kind, target, data, tmp_path, steps=0, batch=1, length=8, lr=1e-3, save_every=1,
                                    log=lambda _: None, warm_start=out)
        state = train_drafts.own_parameters(module) if kind == "draft" else module.state_dict()
        assert set(saved) == set(state), kind
        assert all(torch.equal(state[k].float(), saved[k]) for k in saved), kind
        assert module.warm_started, kind
        (tmp_path / f"{kind}.ckpt").unlink(missing_ok=True)
        cold = train_drafts.train(kind, target, data, tmp_path, steps=0, batch=1, length=8, lr=1e-3, save_every=1,
                                  log=lambda _: None)
        cold_state = train_drafts.own_parameters(cold) if kind == "draft" else cold.state_dict()
        assert not all(torch.equal(cold_state[k].float(), saved[k]) for k in saved), kind
        assert not cold.warm_started, kind


def test_a_warm_started_run_records_the_training_it_continued(trained, tmp_path, capsys):
    """train_log.json keeps the lineage: the continued weights' steps, rate and data, also across a resume."""
    work, out, _, args = trained
    out2 = tmp_path / "out"
    import shutil

    shutil.copytree(out, out2)
    before = json.loads((out2 / "train_log.json").read_text())["eagle"]
    run = [*args, "--only", "eagle", "--warm-start"]
    run[run.index("--out") + 1], run[run.index("--work") + 1] = str(out2), str(tmp_path / "work")
    shutil.copytree(work, tmp_path / "work", ignore=shutil.ignore_patterns("*.ckpt"))
    run[run.index("--steps") + 1] = "2"
    assert train_drafts.main(run) == 0
    entry = json.loads((out2 / "train_log.json").read_text())["eagle"]
    assert entry["continued_from"] == {k: before[k] for k in ("steps", "batch", "length", "lr", "data") if k in before}
    assert entry["data"] == json.loads((out2 / "train_log.json").read_text())["data"]
    run[run.index("--steps") + 1] = "3"  # resumed from its own checkpoint: still a continuation of the same weights
    assert train_drafts.main(run) == 0
    again = json.loads((out2 / "train_log.json").read_text())["eagle"]
    assert again["continued_from"]["steps"] == 2 and again["continued_from"]["continued_from"] == entry["continued_from"]


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class _Scripted:
    """A Generator stand-in: requests are 'please explain item N now' (every third one too short, one a repeat),
    answers the prompt's length in tokens; records the temperatures asked for."""

    def __init__(self, tok):
        self.tok, self.calls, self.n = tok, [], 0

    def __call__(self, prompts, *, max_new, temperature, seed):
        self.calls.append((len(prompts), temperature))
        if temperature == 1.0:  # writing requests
            out = []
            for _ in prompts:
                self.n += 1
                text = "hi" if self.n % 3 == 0 else f"please explain item {min(self.n, 7) if self.n < 9 else self.n} now"
                out.append((self.tok.encode(text), self.n != 5))  # request 5 did not end by itself
            return out
        return [(self.tok.encode(" ok") * min(len(p) % 5 + 1, max_new), True) for p in prompts]


def test_magpie_keeps_usable_requests_holds_out_every_tenth_and_resumes(tmp_path):
    from benchmarks.prompts import CHAT

    assert train_drafts.benchmark_prompts() == set(CHAT)

    target = load_transformer(REFERENCE / "target")
    target.tokenizer.chat_template = CHATML
    prefix = train_drafts.magpie_prefix(target.tokenizer)
    assert target.tokenizer.decode(prefix).endswith("user\n") and "\x00" not in target.tokenizer.decode(prefix)
    gen = _Scripted(target.tokenizer)
    train_drafts.make_magpie(target, tmp_path, conversations=12, generator=gen, batch=4, max_new=6, log=lambda m: None)
    rows = [json.loads(line) for line in (tmp_path / train_drafts.MAGPIE_FILE).read_text().splitlines()]
    requests = [r["request"] for r in rows]
    assert len(set(requests)) == len(requests) >= 12 and not set(requests) & set(CHAT)
    assert all(len(q.split()) >= 4 for q in requests) and "please explain item 5 now" not in requests
    assert {t for _, t in gen.calls if t != 1.0} == {0.0, train_drafts.SAMPLE_TEMPERATURE}
    for r in rows:  # the answer follows the chat-templated request and ends with the model's EOS
        assert target.tokenizer.decode(r["prompt"]).endswith(f"{r['request']}<|im_end|>\n<|im_start|>assistant\n")
        assert r["answer"][-1] == target.eos_token_id
    data = train_drafts.Data(tmp_path)
    chat = [s for s in data.seqs if s["kind"] == "magpie"]
    assert len(chat) == 12 and [s["heldout"] for s in chat] == [i % 10 == 0 for i in range(12)]
    assert [s["greedy"] for s in chat] == [r["temperature"] == 0.0 for r in rows[:12]]
    first = chat[0]
    with torch.no_grad():
        expected = target(first["tokens"][None], target.new_cache(1, len(first["tokens"]))).hidden[0]
    assert torch.allclose(first["features"].float(), expected, atol=2e-2)  # float16 copies of the target's features
    calls = len(gen.calls)  # a second run finds everything done
    train_drafts.make_magpie(target, tmp_path, conversations=12, generator=gen, batch=4, max_new=6, log=lambda m: None)
    assert len(gen.calls) == calls


def test_magpie_gives_up_on_a_model_that_writes_no_requests(tmp_path):
    target = load_transformer(REFERENCE / "target")
    target.tokenizer.chat_template = CHATML

    def mute(prompts, **kw):
        return [([], True) for _ in prompts]

    with pytest.raises(SystemExit, match="no usable request"):
        train_drafts.make_magpie(target, tmp_path, conversations=3, generator=mute, batch=2, max_new=4, log=lambda m: None)


def test_the_server_generator_speaks_llama_cpp_completion(tmp_path):
    """Generator(server=URL) posts token-id prompts to /completion and reads its tokens and stop type."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            reply = {"tokens": [7, 8][: body["n_predict"]], "stop_type": "eos" if body["prompt"][0] == 1 else "limit"}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        gen = train_drafts.Generator(None, f"http://127.0.0.1:{server.server_port}", parallel=2)
        out = gen([[1, 2], [3]], max_new=2, temperature=0.0, seed=3)
    finally:
        server.shutdown()
    assert out == [([7, 8], True), ([7, 8], False)]
    assert sorted(b["prompt"] for b in seen) == [[1, 2], [3]] and all(b["temperature"] == 0.0 and b["return_tokens"] for b in seen)
