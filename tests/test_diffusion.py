"""Masked-diffusion decoding (the `denoise` slot): schedules, the runtime, the exact TV from the sequential process,
the lossless draft-verify spec, and grammar-constrained diffusion decoding, on table diffusion models."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.backends.diffusion_grammar import DiffusionGrammar
from decspec.backends.exact.diffusion import diffusion_distribution, schedule_tv
from decspec.compiler.analysis import losslessness
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.diffusion import plan
from decspec.stdlib.grammars import compile_grammar
from decspec.stdlib.models.diffusion_table import DiffusionTableModel
from decspec.stdlib.models.table import TableModel
from decspec.testing import assert_samples_match, tv_distance
from decspec.verify import verify_spec

ROOT = Path(__file__).resolve().parent.parent


def spec(denoise: str, sampler: str = "", extra: str = "") -> str:
    return f'decoder d {{ target = model("target"); {sampler} {extra} denoise = {denoise} }}'


def schedule(denoise: str, sampler: str = ""):
    return plan(load(spec(denoise, sampler)))


# --------------------------------------------------------------------------- the language


def test_plans_of_the_shipped_specs():
    assert str(plan(load(ROOT / "specs/fast_dllm.dec"))) == (
        "Denoise(length=32, steps=32, rule='confidence', threshold=0.9, cache='prefix', accept=None, "
        "stages=(('temperature', (('t', 0.0),)),))")
    semi = plan(load(ROOT / "specs/semi_ar_blocks.dec"))
    assert (semi.length, semi.steps, semi.rule, semi.threshold, semi.parallel) == (32, 16, "confidence", None, True)
    spec_ = plan(load(ROOT / "specs/diffusion_speculative.dec"))
    assert (spec_.accept, spec_.rule, spec_.sequential().accept) == ("rejection", "left_to_right", None)
    assert schedule("blocks(length = 4, unmask = entropy(0.5))").threshold == -0.5  # the score is -entropy
    assert not schedule("blocks(length = 4)").parallel and schedule("blocks(length = 4, unmask = margin(0.2))").parallel


@pytest.mark.parametrize("text, message", [
    ('denoise = blocks(length = 4); propose = autoregressive(model("d")); verify = rejection', "'denoise' cannot be combined with 'propose'"),
    ("denoise = blocks(length = 4, steps = 5)", "5 steps for a block of 4 positions"),
    ('denoise = blocks(cache = "all")', "'cache' must be one of"),
    ('denoise = draft_verify(accept = "some")', "'accept' must be one of"),
    ("sampler = repetition_penalty(1.2); denoise = blocks", "counts the tokens before each position"),
    ("denoise = blocks(unmask = top_k(2))", "'top_k' is a sampler, but an unmasking rule is expected here"),
    ("denoise = blocks(unmask = confidance)", "unknown unmasking rule 'confidance'"),
])
def test_bad_specs_are_diagnostics(text, message):
    with pytest.raises(DecError, match=re.escape(message)):
        plan(load(f'decoder d {{ target = model("target"); {text} }}'))


def test_the_verdicts():
    assert decspec.compile(ROOT / "specs/diffusion_speculative.dec", target=_table()).verdict.lossless
    for name in ("fast_dllm", "semi_ar_blocks", "diffusion_regex"):
        assert not losslessness(load(ROOT / f"specs/{name}.dec")).lossless
    assert decspec.compile(spec("blocks(length = 4)"), target=_table()).verdict.lossless  # the sequential process itself
    cached = decspec.compile(spec('blocks(length = 4, cache = "dual")'), target=_table()).verdict
    assert not cached.lossless and "cache = 'dual'" in str(cached)


# --------------------------------------------------------------------------- exactness


def _table(vocab: int = 3, seed: int = 0, eos: int | None = None, temperature: float = 1.0) -> DiffusionTableModel:
    return DiffusionTableModel.random(vocab, seed, eos_token_id=eos, temperature=temperature)


@settings(max_examples=6)
@given(vocab=st.integers(2, 3), seed=st.integers(0, 10**6), block=st.integers(1, 4), eos=st.booleans(),
       temperature=st.sampled_from([0.5, 1.0, 2.0]))
def test_draft_verify_is_the_sequential_process_exactly(vocab, seed, block, eos, temperature):
    model = _table(vocab, seed, eos=0 if eos else None, temperature=temperature)
    lossless = schedule(f"draft_verify(length = {block})", "sampler = temperature(0.8);")
    got = diffusion_distribution(lossless, model, [1], 4, [0] if eos else None)
    reference = diffusion_distribution(schedule("blocks(length = 1, unmask = left_to_right)", "sampler = temperature(0.8);"),
                                       model, [1], 4, [0] if eos else None)  # left to right, one position per step: any block
    assert tv_distance(got, reference) <= max(got.error_bound, 1e-12)
    assert abs(sum(got.values()) - 1) <= 1e-12


def test_left_to_right_reference_is_the_chain_rule():
    """The sequential reference of draft_verify, computed independently: prod_i p(x_i | x_<i, the rest masked)."""
    model, N = _table(3, 7), 3
    got = diffusion_distribution(schedule("draft_verify(length = 3)"), model, [2], N)
    mask = model.mask_id
    for xs in itertools.product(range(3), repeat=N):
        prob = 1.0
        for i in range(N):
            canvas = (2,) + xs[:i] + (mask,) * (N - i)
            prob *= float(torch.softmax(model.denoise(torch.tensor([canvas]))[0, 1 + i].double(), -1)[xs[i]])
        assert got[xs] == pytest.approx(prob, abs=1e-12)


def test_a_wrong_draft_verify_is_caught():
    model = _table(3, 1)
    accept_all = schedule('draft_verify(length = 3, accept = "all")')
    assert schedule_tv(accept_all, model, [0], 3) > 0.05
    report = verify_spec(spec('draft_verify(length = 3, accept = "all")'), configs=2)
    assert not report.verdict.lossless and "lossy: TV" in str(report) and report.exit_code == 0


def test_verify_fails_a_spec_that_claims_too_much(monkeypatch):
    """A wrong variant that claims losslessness (accept every draft, contract kept) makes `decspec verify` exit 1."""
    import decspec.stdlib.diffusion as diffusion

    monkeypatch.setattr(diffusion, "losslessness", lambda s: (True, ["claimed"]))
    report = verify_spec(spec('draft_verify(length = 3, accept = "all")'), configs=2)
    assert report.exit_code == 1 and "NOT lossless" in str(report)


@pytest.mark.parametrize("denoise", [
    "blocks(length = 3, unmask = confidence(0.3))",
    "blocks(length = 3, steps = 1, unmask = margin)",
    "blocks(length = 3, steps = 2, unmask = entropy)",
    'blocks(length = 2, cache = "prefix")',
    'blocks(length = 2, steps = 1, cache = "dual")',
    "blocks(length = 3, steps = 1, unmask = random)",
])
def test_parallel_schedules_are_measurably_lossy(denoise):
    tv = max(schedule_tv(schedule(denoise), _table(3, s), [0], 3) for s in range(2))
    assert 1e-3 < tv <= 1
    assert schedule_tv(schedule(denoise).sequential(), _table(3, 0), [0], 3) == 0  # the reference against itself


def test_check_prints_the_exact_tv(capsys):
    from decspec.cli import main

    assert main(["check", str(ROOT / "specs/semi_ar_blocks.dec"), "block=4", "steps=2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"lossy: TV [0-9.e-]+ from the sequential process blocks\(length=4, steps=4", out), out
    assert main(["check", str(ROOT / "specs/diffusion_speculative.dec")]) == 0
    assert re.search(r"\nlossless: TV [0-9.e-]+ from the sequential process", capsys.readouterr().out)


# --------------------------------------------------------------------------- the runtime


@pytest.mark.parametrize("denoise, temperature", [
    ("blocks(length = 2, unmask = confidence(0.4))", 1.0),
    ('blocks(length = 3, steps = 2, cache = "dual")', 1.0),
    ("draft_verify(length = 3)", 1.0),
    ("blocks(length = 3, steps = 2, unmask = random)", 1.0),
])
def test_runtime_samples_follow_the_exact_distribution(denoise, temperature):
    model = _table(3, 2, eos=2)
    dec = decspec.compile(spec(denoise, f"sampler = temperature({temperature});"), target=model)
    out = dec.generate([[0, 1]] * 1500, max_new_tokens=3, seed=0)
    assert_samples_match(out.tokens, dec.distribution([0, 1], 3))


@settings(max_examples=8)
@given(rule=st.sampled_from(["confidence(0.5)", "margin(0.3)", "entropy(0.8)", "left_to_right", "confidence"]),  # greedy: not random
       block=st.integers(1, 4), steps=st.integers(0, 4), cache=st.sampled_from(["none", "prefix", "dual"]),
       seed=st.integers(0, 10**6), eos=st.booleans())
def test_every_greedy_schedule_runs_its_exact_point_mass(rule, block, steps, cache, seed, eos):
    """The runtime and the exact enumeration agree on every rule, schedule and cache: greedy, the exact distribution is
    one sequence, the one generate returns."""
    model = _table(3, seed, eos=0 if eos else None)
    dec = decspec.compile(spec(f'blocks(length = {block}, steps = {min(steps, block)}, unmask = {rule}, cache = "{cache}")',
                               "sampler = temperature(0.0);"), target=model)
    out = dec.generate([[1, 2]], max_new_tokens=4)
    assert dec.distribution([1, 2], 4) == {tuple(out.tokens[0]): pytest.approx(1.0)}


def test_greedy_runtime_is_the_exact_point_mass_and_rows_do_not_see_their_padding():
    model = _table(4, 3)
    dec = decspec.compile(ROOT / "specs/fast_dllm.dec", target=model, block=3, threshold=0.5)
    prompts = [[0, 1, 2], [3], [2, 2]]
    out = dec.generate(prompts, max_new_tokens=5)
    for p, row in zip(prompts, out.tokens):
        assert dec.distribution(p, 5) == {tuple(row): pytest.approx(1.0)}
        assert dec.generate([p], max_new_tokens=5).tokens == [row]


@pytest.mark.parametrize("name", ["fast_dllm", "semi_ar_blocks", "diffusion_speculative"])
def test_a_torch_model_in_a_ragged_batch_decodes_each_row_as_alone(name):
    from decspec.stdlib.models.diffusion_random import RandomDiffusionLM

    dec = decspec.compile(ROOT / f"specs/{name}.dec", target=RandomDiffusionLM(24, seed=1), block=8, temperature=0.0,
                          **({"steps": 4} if name == "semi_ar_blocks" else {}))
    prompts = [[1, 2, 3, 4], [5], [6, 7]]
    out = dec.generate(prompts, max_new_tokens=12)
    assert [len(r) for r in out.tokens] == [12] * 3
    assert [dec.generate([p], max_new_tokens=12).tokens[0] for p in prompts] == out.tokens


def test_eos_ends_rows_and_stats_count_steps_and_calls():
    model = _table(3, 5, eos=0)
    dec = decspec.compile(spec("draft_verify(length = 4)", "sampler = temperature(1.0);"), target=model)
    out = dec.generate([[1]] * 40, max_new_tokens=8, seed=3)
    for row, why in zip(out.tokens, out.finish_reason):
        assert (0 not in row[:-1]) and (why == "stop") == (row[-1:] == [0])
    assert out.stats.model_calls["target"] == 2 * out.stats.rounds  # one draft call and one verify call a step
    sequential = decspec.compile(spec("blocks(length = 4)"), target=_table(3, 5))
    res = sequential.generate([[1], [2, 1]], max_new_tokens=6)
    assert res.stats.tokens_per_step == 1.0 and res.stats.rounds == 6 == res.stats.model_calls["target"]
    cached = decspec.compile(spec('blocks(length = 4, steps = 2, cache = "prefix")'), target=_table(3, 5))
    res = cached.generate([[1]], max_new_tokens=6)  # blocks of 4 and 2: 2 + 1 steps, and a prefill per block
    assert (res.stats.rounds, res.stats.model_calls["target"], res.stats.tokens_per_step) == (3, 5, 2.0)


def test_wrong_models_and_arguments_are_diagnostics():
    with pytest.raises(DecError, match=r"(?s)model 'target' is TableModel, a causal model.*hint: bind a DiffusionLM to 'target'"):
        decspec.compile(ROOT / "specs/fast_dllm.dec", target=TableModel.random(4, 1, seed=0))
    with pytest.raises(DecError, match=r"(?s)model 'target' is DiffusionTableModel, a masked-diffusion model.*hint: decode it with a diffusion spec"):
        decspec.compile(ROOT / "specs/speculative.dec", target=_table(), draft=_table())
    dec = decspec.compile(ROOT / "specs/fast_dllm.dec", target=_table())
    with pytest.raises(DecError, match="holds the mask token"):
        dec.generate([[0, 3]], max_new_tokens=2)
    with pytest.raises(DecError, match="exceed the model's max_length"):
        dec.generate([[0]], max_new_tokens=64)
    with pytest.raises(DecError, match=r"one temperature for every row of a call \(got \[1.0, 0.5\]\)"):
        dec.generate([[0], [1]], max_new_tokens=2, temperature=[1.0, 0.5])
    with pytest.raises(DecError, match="stop strings"):
        dec.generate([[0]], max_new_tokens=2, stop="x")
    set_per_call = dec.generate([[0], [1]] * 3, max_new_tokens=4, seed=2, temperature=1.0).tokens
    assert set_per_call == decspec.compile(ROOT / "specs/fast_dllm.dec", target=_table(), temperature=1.0).generate(
        [[0], [1]] * 3, max_new_tokens=4, seed=2).tokens != dec.generate([[0], [1]] * 3, max_new_tokens=4, seed=2).tokens
    with pytest.raises(DecError, match="cannot run the `denoise` slot"):
        decspec.compile(ROOT / "specs/fast_dllm.dec", target=_table(), backend="inductor")
    with pytest.raises(DecError, match="has no round graph"):
        from decspec.compiler.lower import lower

        lower(load(ROOT / "specs/fast_dllm.dec"))


def test_the_default_target_is_the_shipped_diffusion_model_or_a_clear_error():
    dec = decspec.compile(ROOT / "specs/semi_ar_blocks.dec")
    try:
        from decspec.stdlib.models.diffusion import reference_diffusion  # noqa: F401  (D1's model, once shipped)
    except ImportError:
        with pytest.raises(DecError, match="no masked-diffusion model ships with decspec yet"):
            dec.generate([[1]], max_new_tokens=2)
    else:
        assert len(dec.generate([[1]], max_new_tokens=4, eos_token_id=None).tokens[0]) == 4


# --------------------------------------------------------------------------- grammar-constrained diffusion decoding

PATTERN = r"-?\d+(\.\d)?"
VOCAB = [b"1", b"-", b".", b"12", None]  # a two-byte token too; EOS last (id 4), mask id 5


def _grammar() -> DiffusionGrammar:
    return DiffusionGrammar(compile_grammar("regex", PATTERN, VOCAB, eos_id=4), mask_id=5, vocab_size=6)


def _valid(tokens) -> bool:
    """A full canvas is valid: the text before the first EOS matches the regex in full, and only EOS follows it."""
    cut = tokens.index(4) if 4 in tokens else len(tokens)
    return all(t == 4 for t in tokens[cut:]) and re.fullmatch(PATTERN, b"".join(VOCAB[t] for t in tokens[:cut]).decode()) is not None


@settings(max_examples=25)
@given(st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 5, 5]), min_size=1, max_size=4))
def test_allowed_sets_are_the_brute_force_completions(gen):
    completions = [c for c in itertools.product(range(5), repeat=len(gen)) if _valid(c)
                   and all(g == 5 or g == t for g, t in zip(gen, c))]
    if not completions:
        with pytest.raises(DecError, match="no .* tokens after the prompt spell"):
            _grammar().allowed_row(gen)
        return
    allowed = _grammar().allowed_row(gen)
    for i, g in enumerate(gen):
        if g == 5:
            assert set(allowed[i].nonzero()[0].tolist()) == {c[i] for c in completions}


def test_grammar_constrained_outputs_match_and_the_sequential_process_is_the_masked_one():
    model = DiffusionTableModel.random(5, 4, eos_token_id=4, temperature=0.7)
    seq = decspec.compile(spec("blocks(length = 3, unmask = left_to_right)", "sampler = temperature(1.0);",
                               f'grammar = regex("""{PATTERN}""");'), target=model, vocab=VOCAB)
    got = seq.distribution([0], 3)
    expected: dict = {}  # prod_i p(x_i | x_<i, the rest masked), restricted to the brute-force completable tokens
    for c in itertools.product(range(5), repeat=3):
        if not _valid(c):
            continue
        prob = 1.0
        for i in range(3):
            canvas = (0,) + c[:i] + (5,) * (3 - i)
            ok = {d[i] for d in itertools.product(range(5), repeat=3) if _valid(d) and d[:i] == c[:i]}
            p = torch.softmax(model.denoise(torch.tensor([canvas]))[0, 1 + i].double(), -1)
            prob *= float(p[c[i]] / sum(p[t] for t in ok))
        key = tuple(c[:c.index(4) + 1]) if 4 in c else c
        expected[key] = expected.get(key, 0.0) + prob
    assert tv_distance(got, expected) < 1e-12
    parallel = decspec.compile(spec("blocks(length = 3, steps = 1)", "sampler = temperature(1.0);",
                                    f'grammar = regex("""{PATTERN}""");'), target=model, vocab=VOCAB)
    dist = parallel.distribution([0], 3)
    assert abs(sum(dist.values()) - 1) < 1e-12 and all(_valid(k + (4,) * (3 - len(k))) for k in dist)
    out = parallel.generate([[0]] * 200, max_new_tokens=3, seed=0)
    assert all(tuple(r) in dist for r in out.tokens)


def test_decspec_run_binds_the_default_diffusion_model(monkeypatch, capsys):
    import decspec.backends.diffusion as runtime
    from decspec.cli import main
    from decspec.stdlib.models.diffusion_random import RandomDiffusionLM

    monkeypatch.setattr(runtime, "default_model", lambda: RandomDiffusionLM(16, seed=0))
    assert main(["run", str(ROOT / "specs/semi_ar_blocks.dec"), "--prompt-ids", "1,2", "--max-new-tokens", "8",
                 "block=4", "steps=2"]) == 0
    out, err = capsys.readouterr()
    assert "[0] [1, 2] -> [" in out and "# 4 denoising steps, 2.00 tokens per step, 4 model calls, new tokens 8" in err


def test_the_benchmark_rows_on_a_tiny_model(monkeypatch):
    import argparse

    import benchmarks.diffusion as bench
    from decspec.stdlib.models.diffusion_random import RandomDiffusionLM

    monkeypatch.setattr(bench, "target_model", lambda: (RandomDiffusionLM(16, seed=0), "tiny random", False))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the suite's threads are the suite's
    result = bench.measure(argparse.Namespace(prompts=2, new_tokens=8, block=8, repeats=1, threads=1))
    rows = {r["schedule"]: r for r in result["rows"]}
    assert len(rows) == len(bench.schedules(8)) and not result["real_model"]
    for name in ("sequential (confidence)", "sequential (left_to_right)", "draft_verify (lossless)"):
        assert rows[name]["exact_match"] == 1.0 and rows[name]["lossless"]
    assert rows["semi-AR, 4 tokens/step"]["tokens_per_step"] == 4.0 == 8 / rows["semi-AR, 4 tokens/step"]["steps"]
    assert rows["draft_verify (lossless)"]["model_calls"] == 2 * rows["draft_verify (lossless)"]["steps"]
    assert rows["draft_verify (lossless)"]["nll"] == pytest.approx(rows["sequential (left_to_right)"]["nll"])
    assert "Not a real model" in bench.page(result)


def test_ctrl_c_returns_the_positions_known_so_far():
    from decspec.backends.runtime import Interrupted

    class Interrupting(DiffusionTableModel):
        def denoise(self, tokens, **kw):
            if self.calls == 3:
                raise KeyboardInterrupt
            return super().denoise(tokens, **kw)

    dec = decspec.compile(spec("blocks(length = 2, unmask = left_to_right)"), target=Interrupting(3, seed=0))
    with pytest.raises(Interrupted) as e:
        dec.generate([[1], [2]], max_new_tokens=6)
    assert [len(r) for r in e.value.result.tokens] == [3, 3] and e.value.result.stats.rounds == 3


class MaskOutside:
    """A table diffusion model in DiffusionTransformer's convention: logits over the real tokens only (vocab_size of
    them), the mask id vocab_size, outside the logits."""

    def __init__(self, table: DiffusionTableModel):
        self.table, self.vocab_size, self.mask_id = table, table.vocab_size - 1, table.mask_id
        self.max_length, self.eos_token_id = table.max_length, table.eos_token_id

    def denoise(self, tokens, **kw):
        return self.table.denoise(tokens, **kw)[..., :-1]

    def prefill(self, tokens, **kw):
        return self.table.prefill(tokens, **kw)


@pytest.mark.parametrize("denoise", ["draft_verify(length = 2)", 'blocks(length = 3, unmask = confidence(0.4), cache = "prefix")'])
def test_a_model_without_a_mask_logit_decodes_the_same(denoise):
    table = _table(3, 4, eos=2)
    inside, outside = (decspec.compile(spec(denoise, "sampler = temperature(1.0);"), target=m) for m in (table, MaskOutside(table)))
    assert tv_distance(inside.distribution([0], 3), outside.distribution([0], 3)) < 1e-12
    assert inside.generate([[0], [1, 1]], max_new_tokens=4, seed=5).tokens == outside.generate([[0], [1, 1]], max_new_tokens=4, seed=5).tokens
    grammar = f'grammar = regex("""{PATTERN}""");'
    table = DiffusionTableModel.random(5, 4, eos_token_id=4)
    dec = decspec.compile(spec("blocks(length = 3, steps = 1)", "sampler = temperature(1.0);", grammar), target=MaskOutside(table),
                          vocab=VOCAB)
    assert all(_valid(k + (4,) * (3 - len(k))) for k in dec.distribution([0], 3))


def test_random_order_under_a_grammar_samples_its_exact_distribution():
    model = DiffusionTableModel.random(5, 6, eos_token_id=4, temperature=0.7)
    dec = decspec.compile(spec("blocks(length = 3, steps = 2, unmask = random)", "sampler = temperature(1.0);",
                               f'grammar = regex("""{PATTERN}""");'), target=model, vocab=VOCAB)
    dist = dec.distribution([0], 3)
    assert abs(sum(dist.values()) - 1) < 1e-12 and all(_valid(k + (4,) * (3 - len(k))) for k in dist)
    assert_samples_match(dec.generate([[0]] * 1500, max_new_tokens=3, seed=1).tokens, dist)


def test_a_context_free_grammar_is_refused_at_compile_time():
    vocab = [bytes([i]) for i in range(256)] + [None]
    with pytest.raises(DecError, match="needs a regular grammar"):
        decspec.compile(spec("blocks(length = 4)", extra="grammar = json;"), target=DiffusionTableModel.random(256, 0, eos_token_id=256),
                        vocab=vocab)
