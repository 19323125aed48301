"""Decoding that combines distributions (stdlib/combine.py): contrastive decoding, speculative contrastive decoding, DoLa.

The scores are checked against computations written from the papers' definitions on random logits, DoLa's greedy
decoding against Hugging Face's generate(dola_layers=...) on the shipped reference target (tests/data/dola_hf.json, made
by tests/data/make_dola_fixture.py), and speculative decoding of a contrastive target exactly on the exact backend.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import decspec
from decspec.cli import main
from decspec.compiler.analysis import losslessness
from decspec.dsl.check import load
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.combine import contrastive_scores, dola_scores
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.testing import exact_distribution, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


def table_pair(vocab: int = 4, order: int = 1, seed: int = 0) -> dict:
    return {"target": LayeredTableModel.random(vocab, order, seed), "draft": LayeredTableModel.random(vocab, order, seed + 1, temperature=2.0)}


# --------------------------------------------------------------------------- the scores, from the papers


def paper_contrastive(expert: list[float], amateur: list[float], alpha: float, beta: float, form: str, tau: float = 1.0) -> list[float]:
    """One row, as the papers write it: the plausible set from the expert's probabilities; O'Brien & Lewis weight the raw
    logits, Li et al. subtract log-probabilities (the amateur's at temperature tau)."""
    amateur = [x / tau for x in amateur]
    pe = [math.exp(x) for x in expert]
    pe = [x / sum(pe) for x in pe]
    za = math.log(sum(math.exp(x) for x in amateur))
    out = []
    for i, p in enumerate(pe):
        if p < alpha * max(pe):
            out.append(-math.inf)
        elif form == "weighted":
            out.append((1 + beta) * expert[i] - beta * amateur[i])
        else:
            out.append(math.log(p) - (amateur[i] - za))
    return out


def softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    e = [math.exp(x - top) if x > -math.inf else 0.0 for x in xs]
    return [x / sum(e) for x in e]


@pytest.mark.parametrize("form", ["weighted", "difference"])
@pytest.mark.parametrize("alpha, beta, tau", [(0.1, 0.5, 1.0), (0.5, 1.0, 0.5), (0.0, 0.0, 2.0)])
def test_contrastive_scores_follow_the_papers(form, alpha, beta, tau):
    gen = torch.Generator().manual_seed(7)
    expert, amateur = (3 * torch.randn(5, 11, generator=gen, dtype=torch.float64) for _ in range(2))
    got = contrastive_scores(expert, amateur, alpha, beta, form, tau)
    for row in range(5):
        ref = paper_contrastive(expert[row].tolist(), amateur[row].tolist(), alpha, beta, form, tau)
        assert [x == -math.inf for x in got[row].tolist()] == [x == -math.inf for x in ref]
        assert torch.allclose(torch.softmax(got[row], -1), torch.tensor(softmax(ref), dtype=torch.float64), atol=1e-12)


def test_contrastive_cut_keeps_only_the_plausible_tokens():
    expert = torch.tensor([[0.0, math.log(0.5), math.log(0.05), -math.inf]]).double()
    amateur = torch.zeros(1, 4).double()
    scores = contrastive_scores(expert, amateur, alpha=0.1, beta=0.5)
    assert scores.isfinite().tolist() == [[True, True, False, False]]  # 0.05 / max < 0.1; the expert's -inf stays out


def paper_dola(final: list[float], premature: list[list[float]], relative_top: float) -> list[float]:
    """One row: the premature layer with the largest divergence mean_v 0.5 (M log(M / p_f) + M log(M / p_j)) (Hugging
    Face's form), then log p_final - log p_M on the relative-top set."""
    def log_softmax(xs):
        z = math.log(sum(math.exp(x) for x in xs))
        return [x - z for x in xs]

    lf = log_softmax(final)
    best, chosen = -1.0, None
    for layer in premature:
        lp = log_softmax(layer)
        m = [0.5 * (math.exp(a) + math.exp(b)) for a, b in zip(lf, lp)]
        div = sum(0.5 * (mi * (math.log(mi) - a) + mi * (math.log(mi) - b)) for mi, a, b in zip(m, lf, lp)) / len(m)
        if div > best:
            best, chosen = div, lp
    cut = max(lf) + math.log(relative_top)
    return [a - b if a >= cut else -math.inf for a, b in zip(lf, chosen)]


@pytest.mark.parametrize("layers", [1, 3])
def test_dola_scores_follow_the_definition(layers):
    gen = torch.Generator().manual_seed(3)
    final = 2 * torch.randn(6, 9, generator=gen, dtype=torch.float64)
    premature = [2 * torch.randn(6, 9, generator=gen, dtype=torch.float64) for _ in range(layers)]
    got = dola_scores(final, premature, 0.1)
    for row in range(6):
        ref = paper_dola(final[row].tolist(), [p[row].tolist() for p in premature], 0.1)
        assert [x == -math.inf for x in got[row].tolist()] == [x == -math.inf for x in ref]
        finite = [(g, r) for g, r in zip(got[row].tolist(), ref) if r > -math.inf]
        assert all(abs(g - r) < 1e-12 for g, r in finite)


# --------------------------------------------------------------------------- DoLa against Hugging Face


def test_dola_greedy_matches_hugging_face_token_for_token():
    from decspec.stdlib.models.pretrained import reference_models

    fixture = json.loads((ROOT / "tests" / "data" / "dola_hf.json").read_text())
    source = (SPECS / "dola.dec").read_text()
    target = reference_models()["target"]
    by_layers: dict[tuple, list] = {}
    for case in fixture["cases"]:
        by_layers.setdefault(tuple(case["layers"]), []).append(case)
    differ_with_norm = 0
    for layers, cases in by_layers.items():
        spec, given = source, {"layers": list(layers), "repetition": 1.0}  # HF's fixture: repetition_penalty=1.0
        prompts, expected = [c["prompt"] for c in cases], [c["tokens"] for c in cases]
        new = max(map(len, expected))
        got = decspec.compile(spec, models={"target": target}, **given).generate(prompts, max_new_tokens=new, seed=0).tokens
        assert got == expected, f"dola layers {list(layers)}"
        if layers == (1, 2, 3):  # the fixture tells the logit lens from normed exits (HF reads the raw hidden states)
            normed = spec.replace("relative_top = relative_top", "relative_top = relative_top, norm = true")
            got = decspec.compile(normed, models={"target": target}, **given).generate(prompts, max_new_tokens=new, seed=0).tokens
            differ_with_norm = sum(g != e for g, e in zip(got, expected))
    assert differ_with_norm > 0


def test_dola_on_the_hugging_face_adapter_matches_too():
    """The same checkpoint behind HFModel (installed transformers, hidden_states[i] read without the final norm)."""
    from decspec.stdlib.models.hf import HFModel

    fixture = json.loads((ROOT / "tests" / "data" / "dola_hf.json").read_text())
    cases = [c for c in fixture["cases"] if c["layers"] == [2, 4]]
    target = HFModel.from_pretrained(ROOT / "stdlib" / "models" / "reference" / "target")
    got = decspec.compile(SPECS / "dola.dec", models={"target": target}, layers=[2, 4], repetition=1.0).generate([c["prompt"] for c in cases], max_new_tokens=16, seed=0).tokens
    assert got == [c["tokens"] for c in cases]


# --------------------------------------------------------------------------- losslessness w.r.t. the combined distribution


@pytest.mark.parametrize("overrides", [{}, {"alpha": 0.3, "beta": 1.0, "temperature": 0.7, "k": 2}])
def test_speculative_contrastive_samples_the_contrastive_distribution_exactly(overrides):
    dec = decspec.compile(SPECS / "speculative_contrastive.dec", models=table_pair(), **overrides)
    got, expected = exact_distribution(dec, [1], 3), target_distribution(dec, [1], 3)
    assert tv_distance(got, expected) <= 1e-12
    plain = decspec.compile(SPECS / "speculative.dec", models=table_pair(), temperature=overrides.get("temperature", 1.0), top_p=1.0)
    assert tv_distance(expected, target_distribution(plain, [1], 3)) > 0.05  # the contrastive distribution is not the expert's


WRONG = """decoder wrong(k: int = 2) {
    target  = model("target")
    propose = autoregressive(contrastive(expert = model("target"), amateur = model("draft"), alpha = 0.1), max = k)
    verify  = rejection
}"""


def test_verifying_against_the_plain_expert_is_not_contrastive_decoding():
    """Drafting from the contrastive distribution but verifying against the expert samples the expert: lossless for
    the spec's own target, as the analysis says, and far from the contrastive distribution, which the exact check shows."""
    wrong = decspec.compile(WRONG, models=table_pair())
    right = decspec.compile(SPECS / "speculative_contrastive.dec", models=table_pair(), k=2)
    got = exact_distribution(wrong, [1], 3)
    assert "the target's distribution" in str(wrong.verdict) and wrong.verdict.lossless
    assert tv_distance(got, target_distribution(wrong, [1], 3)) <= 1e-12
    assert tv_distance(got, target_distribution(right, [1], 3)) > 0.05


def test_a_lossy_verifier_of_a_contrastive_target_is_caught():
    text = (SPECS / "speculative_contrastive.dec").read_text().replace("verify  = rejection", "verify  = topk_match(k = 2)")
    verdict = losslessness(load(text))
    assert not verdict.lossless and "verify = topk_match" in str(verdict)
    dec = decspec.compile(text, models=table_pair(), k=2)
    assert tv_distance(exact_distribution(dec, [1], 3), target_distribution(dec, [1], 3)) > 0.01


def test_a_grammar_masks_each_part_before_the_combination():
    """Speculative contrastive decoding under a regex grammar: exactly the contrastive distribution of the masked parts
    (the plausibility cut taken among the tokens the grammar allows)."""
    vocab = [b"a", b"b", b"c", b"{", None]  # the EOS last
    models = {role: LayeredTableModel.random(5, 1, seed, temperature=t, eos_token_id=4) for role, seed, t in (("target", 0, 1.0), ("draft", 1, 2.0))}
    text = (SPECS / "speculative_contrastive.dec").read_text().replace(
        "    verify  = rejection", '    verify  = rejection\n    grammar = regex("""(ab|c)+b?""")')
    dec = decspec.compile(text, models=models, vocab=vocab, k=2, alpha=0.3)
    ir = str(dec.graph)
    assert ir.index("grammar_mask") < ir.index("logits_combine")
    got, expected = exact_distribution(dec, [1], 4), target_distribution(dec, [1], 4)
    assert tv_distance(got, expected) <= max(1e-12, got.error_bound)
    ended = [b"".join(vocab[t] for t in tokens[:-1]) for tokens in got if tokens[-1] == 4]
    assert ended and all(re.fullmatch(rb"(ab|c)+b?", row) for row in ended)


def test_check_names_the_combined_distribution(capsys):
    assert main(["check", str(SPECS / "speculative_contrastive.dec")]) == 0
    out = capsys.readouterr().out
    assert "lossless" in out and "output follows the combined distribution target = contrastive(" in out
    assert "rejection sampling" in out


# --------------------------------------------------------------------------- lowering, backends, errors


def test_a_combined_target_lowers_to_its_parts_and_one_combine_op():
    ir = str(decspec.compile(SPECS / "dola.dec", models=random_models(), layers=[1, 2]).graph)
    assert 'model_call[model="target/lens1"' in ir and 'logits_combine[kind="dola", relative_top=0.1]' in ir
    ir = str(decspec.compile(SPECS / "speculative_contrastive.dec", models=random_models()).graph)
    assert ir.count("logits_combine") == 1  # the verifier's: the drafts are the amateur's own


@pytest.mark.parametrize("spec", ["contrastive", "speculative_contrastive", "dola"])
def test_inductor_emits_the_combination_and_matches_eager(spec):
    kwargs = {"models": random_models()}
    eager = decspec.compile(SPECS / f"{spec}.dec", **kwargs).generate([[1, 2, 3], [5]], max_new_tokens=5, seed=3).tokens
    emitted = decspec.compile(SPECS / f"{spec}.dec", backend="inductor", **kwargs)
    assert emitted.generate([[1, 2, 3], [5]], max_new_tokens=5, seed=3).tokens == eager


def test_a_compiled_combined_round_is_one_graph():
    """torch.compile (through dynamo's eager backend: the same graphs and breaks, without inductor's compile time): one
    graph, no graph break, no recompile on a second call; the eager tokens."""
    from torch._dynamo.utils import counters

    pair = random_models(seed=2)
    prompts = [[5, 6, 7, 8], [9]]
    torch._dynamo.reset()
    counters.clear()
    dec = decspec.compile(SPECS / "speculative_contrastive.dec", models=pair, backend="inductor", k=2)
    dec.backend_options = {"compile": True, "dynamo_backend": "eager"}
    eager = decspec.compile(SPECS / "speculative_contrastive.dec", models=pair, k=2)
    for seed in (3, 4):
        assert dec.generate(prompts, max_new_tokens=4, seed=seed).tokens == eager.generate(prompts, max_new_tokens=4, seed=seed).tokens
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_dola_refuses_a_layer_the_model_does_not_have():
    with pytest.raises(DecError, match=r"layer 4 is not a premature layer of model 'target', which has 4 layers"):
        decspec.compile(SPECS / "dola.dec", models=random_models(), layers=[1, 4]).generate([[1]], max_new_tokens=1)


def test_contrastive_refuses_an_unknown_form():
    text = (SPECS / "contrastive.dec").read_text().replace("beta = beta)", 'beta = beta, form = "ratio")')
    with pytest.raises(DecError, match="contrastive form must be 'weighted' or 'difference'"):
        decspec.compile(text, models=random_models())


def test_beam_search_over_a_combined_target_is_refused():
    text = (SPECS / "contrastive.dec").read_text().replace("    sampler = greedy", "    search  = beam(width = 2)")
    with pytest.raises(DecError, match="`search` needs a target bound by name; 'contrastive' combines"):
        decspec.compile(text, models=random_models())


def test_logprobs_of_a_combined_target_are_refused_not_the_experts():
    dec = decspec.compile(SPECS / "contrastive.dec", models=random_models())
    with pytest.raises(DecError, match="logprobs are not reported for a combined target"):
        dec.generate([[1, 2]], max_new_tokens=2, logprobs=True)
