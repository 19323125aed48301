"""typical_p and the penalty samplers (repetition, frequency, presence): against Hugging Face's logits
processors on random logits, the token counts they read, and speculative decoding with them: exactly
lossless w.r.t. the penalized target (the target at verified position i penalized with ctx ++ d[:i]),
greedy speculation = greedy penalized decoding, inductor = eager, and HF `generate` on a tiny Llama."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.penalties import frequency_penalty, presence_penalty, repetition_penalty, token_counts
from decspec.stdlib.samplers import apply_pipeline, typical_p
from decspec.testing import assert_lossless, exact_distribution, model_pairs, pipeline_text, target_distribution, tv_distance

transformers = pytest.importorskip("transformers")


def random_logits(seed: int, B: int, V: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * scale


# --------------------------------------------------------------------------- against Hugging Face


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), V=st.integers(2, 50), mass=st.floats(0.05, 0.99), scale=st.sampled_from([0.5, 3.0, 10.0]))
def test_typical_p_is_hf_typical_logits_warper(seed, V, mass, scale):
    logits = random_logits(seed, 4, V, scale)
    logits[0, 0] = float("-inf")  # an already-masked token stays masked and is never counted as typical
    expected = transformers.TypicalLogitsWarper(mass)(torch.zeros(4, 1, dtype=torch.long), logits.clone())
    assert torch.equal(typical_p(logits, mass), expected)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), V=st.integers(2, 50), r=st.sampled_from([0.5, 1.0, 1.2, 2.0, 7.5]), T=st.integers(1, 12))
def test_repetition_penalty_is_hf_repetition_penalty(seed, V, r, T):
    logits = random_logits(seed, 3, V)
    ids = torch.randint(V, (3, T), generator=torch.Generator().manual_seed(seed + 1))
    expected = transformers.RepetitionPenaltyLogitsProcessor(r)(ids, logits.clone())
    counts = token_counts(ids, torch.full((3,), T), vocab=V)
    assert torch.equal(repetition_penalty(logits, counts, r), expected)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), V=st.integers(2, 20), a=st.sampled_from([-1.0, 0.0, 0.4, 2.0]), T=st.integers(1, 12))
def test_frequency_and_presence_penalties_are_openai_semantics(seed, V, a, T):
    logits = random_logits(seed, 1, V)[0]
    ids = torch.randint(V, (T,), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    counts = token_counts(torch.tensor([ids]), torch.tensor([T]), vocab=V)[0]
    freq = [x - a * ids.count(v) for v, x in enumerate(logits.tolist())]
    pres = [x - a * (ids.count(v) > 0) for v, x in enumerate(logits.tolist())]
    assert torch.allclose(frequency_penalty(logits, counts, a), torch.tensor(freq), atol=1e-6)
    assert torch.allclose(presence_penalty(logits, counts, a), torch.tensor(pres), atol=1e-6)


def test_token_counts_at_every_position_and_after_n_drafts():
    tokens = torch.tensor([[1, 1, 2, 9, 9], [0, 3, 3, 3, 3]])  # [B, S]; past each row's length is padding
    length = torch.tensor([3, 1])
    ext = torch.tensor([[2, 0], [3, 3]])  # [B, N]
    V = 4
    every = token_counts(tokens, length, ext, vocab=V, positions=True)  # [B, N+1, V]
    assert every.shape == (2, 3, V)
    assert every[0].tolist() == [[0, 2, 1, 0], [0, 2, 2, 0], [1, 2, 2, 0]]
    assert every[1].tolist() == [[1, 0, 0, 0], [1, 0, 0, 1], [1, 0, 0, 2]]
    for n in range(3):  # the last position after ctx ++ ext[:, :n], n an int or a 0-d tensor
        assert torch.equal(token_counts(tokens, length, ext, n, vocab=V), every[:, n])
        assert torch.equal(token_counts(tokens, length, ext, torch.tensor(n), vocab=V), every[:, n])


def test_a_penalty_without_the_context_is_an_error():
    with pytest.raises(ValueError, match="repetition_penalty"):
        apply_pipeline(torch.zeros(1, 3), (("repetition_penalty", (("r", 1.5),)),))


# --------------------------------------------------------------------------- speculation with penalties: exactly lossless


PENALTY_PIPELINES = st.lists(
    st.sampled_from([
        ("repetition_penalty", {"r": 1.8}), ("repetition_penalty", {"r": 0.6}), ("frequency_penalty", {"a": 0.7}),
        ("presence_penalty", {"a": -0.5}), ("typical_p", {"p": 0.6}), ("temperature", {"t": 0.7}), ("top_k", {"k": 2}),
    ]), min_size=1, max_size=3, unique_by=lambda s: s[0]).filter(lambda p: any(n.endswith("penalty") for n, _ in p))


def spec_text(pipeline, propose: str = "autoregressive(draft, max = k)", verify: str = "rejection") -> str:
    return (f"decoder pen(k: int = 2) {{\n    target = model(\"target\")\n    draft = model(\"draft\")\n"
            f"    sampler = {pipeline_text(pipeline)}\n    propose = {propose}\n    verify = {verify}\n}}\n")


@settings(max_examples=25, deadline=None)
@given(models=model_pairs(vocab=st.integers(2, 4)), pipeline=PENALTY_PIPELINES, k=st.integers(1, 3),
       prompt=st.lists(st.integers(0, 1), min_size=1, max_size=3), verify=st.sampled_from(["rejection", "greedy"]))
def test_speculation_with_penalties_is_exactly_lossless(models, pipeline, k, prompt, verify):
    check = assert_lossless(spec_text(pipeline, verify=verify), models=models, k=k, prompt=prompt, method="exact")
    assert check.method == "exact"


@settings(max_examples=10, deadline=None)
@given(models=model_pairs(vocab=st.integers(2, 4)), pipeline=PENALTY_PIPELINES, k=st.integers(1, 3))
def test_prompt_lookup_with_penalties_is_exactly_lossless(models, pipeline, k):
    """Lookup drafts repeat the context: exactly where penalties bite."""
    spec = spec_text(pipeline, propose="lookup(ngram = 2, max = k)").replace('    draft = model("draft")\n', "")
    assert_lossless(spec, models={"target": models["target"]}, k=k, prompt=[0, 1, 0, 1], method="exact")


def test_the_penalty_changes_the_target_distribution():
    """The check is not vacuous: the penalized target is far from the plain one, and the spec follows the penalized one."""
    target, draft = TableModel.random(3, 1, seed=0), TableModel.random(3, 1, seed=1, temperature=2.0)
    dec = decspec.compile("specs/penalties.dec", target=target, draft=draft, k=2, repetition=3.0, mass=0.99)
    got, penalized = exact_distribution(dec, [1, 1], 3), target_distribution(dec, [1, 1], 3)
    assert tv_distance(got, penalized) <= 1e-12
    assert tv_distance(got, target_distribution(target, [1, 1], 3, [("temperature", {"t": 0.8}), ("typical_p", {"p": 0.99})])) > 0.05


def greedy_penalized(model, prompt, n, r):
    """Greedy decoding of a table model with a repetition penalty, one full forward per token."""
    history = list(prompt)
    for _ in range(n):
        logits = model.forward(torch.tensor([history]), model.new_cache(1, len(history))).logits[0, -1]
        counts = token_counts(torch.tensor([history]), torch.tensor([len(history)]), vocab=logits.shape[-1])[0]
        history.append(int(repetition_penalty(logits, counts, r).argmax()))
    return history[len(prompt):]


@pytest.mark.parametrize("propose", ["autoregressive(draft, max = k)", "lookup(ngram = 2, max = k)"])
@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_greedy_speculation_is_greedy_penalized_decoding(propose, backend):
    pipeline = [("repetition_penalty", {"r": 1.7}), ("greedy", {})]
    text = spec_text(pipeline, propose=propose, verify="greedy")
    for seed in range(3):
        target, draft = TableModel.random(6, 2, seed=seed), TableModel.random(6, 2, seed=seed + 10)
        dec = decspec.compile(text, target=target, draft=draft, k=3, backend=backend)
        prompts = [[1, 2, 1, 2], [3]]
        got = dec.generate(prompts, max_new_tokens=12, seed=0, eos_token_id=None).tokens
        assert got == [greedy_penalized(target, p, 12, 1.7) for p in prompts]


def test_inductor_host_loop_counts_the_drafts_before_each_step():
    """The host-controlled draft loop passes the step as a tensor: the penalty masks ext[:, :i] by it."""
    text = spec_text([("presence_penalty", {"a": 1.5}), ("greedy", {})]).replace("verify = rejection", "stop = when draft.prob < 0.99\n    verify = greedy")
    target, draft = TableModel.random(5, 2, seed=3), TableModel.random(5, 2, seed=4)
    eager = decspec.compile(text, target=target, draft=draft, k=6).generate([[1, 2], [0]], max_new_tokens=10, seed=0).tokens
    dec = decspec.compile(text, target=target, draft=draft, k=6, backend="inductor")
    dec.backend_options = {"schedule": "host"}
    assert dec.generate([[1, 2], [0]], max_new_tokens=10, seed=0).tokens == eager


# --------------------------------------------------------------------------- passes


def test_fold_drops_identity_penalties_and_their_context_inputs():
    text = spec_text([("repetition_penalty", {"r": 1.0}), ("frequency_penalty", {"a": 0.0}), ("temperature", {"t": 0.5})])
    graph = run_pipeline(lower(load(text)))
    probs = [op for op in graph.walk() if op.name == "sampler_probs"]
    assert probs and all(len(op.inputs) == 1 for op in probs)  # no penalty left: no context read
    assert all([s.name for s in op.param("stages")] == ["temperature"] for op in probs)


def test_penalized_transforms_are_merged_only_for_the_same_context():
    text = spec_text([("presence_penalty", {"a": 0.5})])
    graph = run_pipeline(lower(load(text)), check=True)
    probs = [op for op in graph.walk() if op.name == "sampler_probs"]
    assert len(probs) == 2 and all(len(op.inputs) >= 3 for op in probs)  # draft step (ctx, drafts, i) and target (ctx, drafts)


def test_a_penalty_needs_the_context_the_draft_source_reads():
    """A stage that needs context, on logits that were not read after one, is a DecError at the sampler."""
    from decspec.compiler.lower import Lowering

    spec = load(spec_text([("repetition_penalty", {"r": 1.5})]))
    lw = Lowering(spec)
    logits = lw.b.input(lower(spec).ops[0].region.outputs[1].type)  # logits from nowhere: no context recorded
    with pytest.raises(DecError, match="repetition_penalty"):
        lw.probs(logits)


# --------------------------------------------------------------------------- Hugging Face generate, end to end


def test_autoregressive_greedy_with_repetition_penalty_is_hf_generate():
    from decspec.stdlib.models.hf import HFModel

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2)
    hf = transformers.LlamaForCausalLM(config).eval()
    prompt = [5, 9, 5, 9, 11]
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, repetition_penalty=1.3, eos_token_id=None,
                          pad_token_id=0)
    expected = out[0, len(prompt):].tolist()
    text = "decoder ar() {\n    target = model(\"target\")\n    sampler = repetition_penalty(1.3) | greedy\n}\n"
    dec = decspec.compile(text, target=HFModel(hf))
    assert dec.generate([prompt], max_new_tokens=16, eos_token_id=None).tokens == [expected]
    plain = decspec.compile(text.replace("repetition_penalty(1.3) | ", ""), target=HFModel(hf))
    assert plain.generate([prompt], max_new_tokens=16, eos_token_id=None).tokens != [expected]  # the penalty matters here
