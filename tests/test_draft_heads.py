"""Draft heads: `heads(target, kind = "medusa" | "hydra", max = k)`.

The heads read the target's hidden state at the position before the context's last token (kept
from the previous verification); each draft is sampled from its head's distribution, which the
verifier gets as q. Exactly lossless on table models with heads, statistically on a tiny
transformer with random heads, greedy = greedy decoding, inductor = eager, and the errors.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import decspec
from decspec.backends.prefix import PrefixCache
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.heads import HydraHeads, MedusaHeads
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.models.transformer import Transformer, TransformerConfig
from decspec.testing import assert_greedy_equivalent, assert_lossless, exact_distribution, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["medusa", "hydra"]


def spec(kind: str) -> Path:
    return ROOT / "specs" / f"{kind}.dec"


def with_heads(model: Transformer, n: int = 4, seed: int = 0, scale: float = 0.3) -> Transformer:
    """Random (untrained) Medusa and Hydra heads on a transformer."""
    C = model.config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    model.heads = {"medusa": MedusaHeads(C, n), "hydra": HydraHeads(C, n)}
    for heads in model.heads.values():
        heads.requires_grad_(False)
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale) if p.dim() > 1 else p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def text(kind: str, k: int = 2, stop: str = "", sampler: str = "temperature(1.0)") -> str:
    return f"""decoder d() {{
    target  = model("target")
    sampler = {sampler}
    propose = heads(target, kind = "{kind}", max = {k})
{f"    stop    = {stop}" if stop else ""}
    verify  = rejection
}}
"""


# --------------------------------------------------------------------------- lossless, exactly


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("order, prompt, temperature", [(0, [1], 1.0), (1, [0, 2], 0.7), (1, [3], 1.0)])
def test_exactly_lossless_on_table_models_with_heads(kind, order, prompt, temperature):
    target = LayeredTableModel.random(4, order, seed=21 + order)
    dec = decspec.compile(spec(kind), target=target, temperature=temperature, k=2)
    got = exact_distribution(dec, prompt, 3)
    assert tv_distance(got, target_distribution(dec, prompt, 3)) <= max(1e-12, got.error_bound)


@pytest.mark.parametrize("kind", KINDS)
def test_exactly_lossless_with_an_exit_policy_and_a_pipeline(kind):
    target = LayeredTableModel.random(3, 1, seed=4, eos_token_id=2)
    source = text(kind, k=3, stop="when draft.prob < 0.5", sampler="top_k(2) | temperature(0.9)")
    assert assert_lossless(source, models={"target": target}, prompt=[1], max_new_tokens=3, method="exact").method == "exact"


@pytest.mark.parametrize("kind", KINDS)
def test_statistically_lossless_on_a_tiny_transformer(kind):
    config = TransformerConfig(vocab_size=5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    target = with_heads(Transformer.random(config, 0))
    assert_lossless(text(kind), models={"target": target}, prompt=[1, 2], max_new_tokens=2, method="statistical", samples=3000)


# --------------------------------------------------------------------------- what the heads read


def test_model_hidden_is_the_state_before_the_last_token():
    """After a verification call the PrefixCache serves h at L-2 without a forward, equal to a fresh forward's."""
    model = random_models()["target"]
    session = PrefixCache(model, 2, 64)
    tokens = torch.tensor([[3, 4, 5, 6, 7, 0, 0, 0], [8, 9, 0, 0, 0, 0, 0, 0]])  # [B, S]
    length = torch.tensor([5, 2])
    session.hidden(tokens, length)  # first call: turns recording on, feeds ctx[:L-1]
    session.logits(tokens, length, torch.tensor([[1, 2], [3, 4]]), last=False)  # a verification call
    calls = session.calls
    tokens[0, 5], tokens[1, 2] = 1, 3  # commit one draft in each row: L = 6, 3
    h = session.hidden(tokens, torch.tensor([6, 3]))
    assert session.calls == calls  # served from the kept hidden states
    for b, L in enumerate([6, 3]):
        fresh = model.forward(tokens[b : b + 1, : L - 1], model.new_cache(1, 16)).hidden[0, -1]
        assert torch.allclose(h[b], fresh, atol=1e-5)
    assert torch.equal(session.hidden(tokens, torch.tensor([1, 3]))[0], torch.zeros(h.shape[1]))  # one token: nothing before it


def test_medusa_drafts_the_heads_argmax_from_h_before_the_last_token():
    target = with_heads(random_models(seed=3)["target"])
    dec = decspec.compile(spec("medusa"), target=target, k=3)
    prompt = [10, 11, 12, 13]
    h = target.forward(torch.tensor([prompt[:-1]]), target.new_cache(1, 16)).hidden[:, -1]  # h at L-2
    from decspec.backends.runtime import Context, RoundState
    from decspec.backends.eager import rules as eager
    from decspec.backends.interpreter import run_graph

    state = RoundState({"target": PrefixCache(target, 1, 64)}, torch.Generator().manual_seed(0), 1, torch.device("cpu"),
                       eager.RULES, "eager")
    ctx = Context(torch.tensor([prompt + [0] * 12]), torch.tensor([4]), torch.tensor([4]))
    loop = dec.graph.ops[0]
    drafts, q, count = eager.draft_loop(state, loop, ctx)
    assert drafts[0].tolist() == target.medusa(h)[0].argmax(-1)[:3].tolist() and count.tolist() == [3]


# --------------------------------------------------------------------------- greedy, and inductor = eager


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_equivalence_on_a_random_transformer(kind):
    target = with_heads(random_models(seed=1)["target"])
    assert_greedy_equivalent(spec(kind), models={"target": target}, prompts=[[1, 2, 3], [7], [4, 4, 4, 4, 4]],
                             max_new_tokens=12, exact=False)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("schedule", ["unrolled", "host"])
def test_inductor_gives_the_eager_tokens(kind, schedule):
    target = with_heads(random_models(seed=2)["target"], n=5)
    prompts = [[5, 6, 7, 8], [9]]
    source = text(kind, k=5, stop="when draft.prob < 0.002", sampler="greedy")
    out = {}
    for backend in ("eager", "inductor"):
        dec = decspec.compile(source, target=target, backend=backend)
        if backend == "inductor":
            dec.backend_options = {"schedule": schedule}
        res = dec.generate(prompts, max_new_tokens=10, seed=0)
        out[backend] = (res.tokens, res.stats.accepted)
    assert out["eager"] == out["inductor"]


def test_the_shipped_target_drafts_from_its_trained_heads():
    from decspec.stdlib.models.pretrained import reference_models

    target = reference_models()["target"]
    for kind in KINDS:
        eager = decspec.compile(spec(kind), target=target).generate(["def add(a, b):\n"], max_new_tokens=16, seed=0)
        inductor = decspec.compile(spec(kind), target=target, backend="inductor").generate(["def add(a, b):\n"], max_new_tokens=16, seed=0)
        assert eager.tokens == inductor.tokens and eager.stats.accepted == inductor.stats.accepted


def test_blockwise_parallel_decoding_is_greedy_decoding_of_the_shipped_target():
    """specs/blockwise.dec (Stern et al. 2018): the heads' argmax block, the longest prefix equal to the target's argmax."""
    from decspec.stdlib.models.pretrained import reference_models

    target = reference_models()["target"]
    prompts = ["def add(a, b):\n", "import os\nimport "]
    blockwise = decspec.compile(ROOT / "specs" / "blockwise.dec", target=target).generate(prompts, max_new_tokens=24, seed=0)
    greedy = decspec.compile(ROOT / "specs" / "autoregressive.dec", target=target, temperature=0.0).generate(prompts, max_new_tokens=24, seed=0)
    assert blockwise.tokens == greedy.tokens
    assert sum(map(sum, blockwise.stats.accepted)) > 0  # the trained heads do propose tokens the target keeps


# --------------------------------------------------------------------------- errors


def test_a_model_without_heads_says_how_to_train_them():
    with pytest.raises(DecError) as e:
        decspec.compile(spec("medusa"), target=random_models()["target"])._bound_models()
    message = str(e.value)
    assert "model 'target' (Transformer) has no medusa heads (it has: none)" in message
    assert "decspec.stdlib.models.train" in message and "medusa.dec:11:15" in message


def test_a_table_model_has_no_heads():
    with pytest.raises(DecError, match=r"\(TableModel\) has no hydra heads"):
        decspec.compile(spec("hydra"), target=TableModel.random(4, 1, seed=0))._bound_models()


def test_more_drafts_than_heads():
    with pytest.raises(DecError, match="heads\\(max = 6\\) drafts 6 tokens, but model 'target' has 4 medusa heads"):
        decspec.compile(spec("medusa"), target=LayeredTableModel.random(3, 1, seed=0), k=6)._bound_models()


def test_an_unknown_kind():
    with pytest.raises(DecError, match='heads\' kind must be "medusa" or "hydra", found \'eagle\''):
        decspec.compile(text("eagle"))


def test_inductor_needs_the_heads_model_to_verify():
    source = """decoder d() {
    target  = model("target")
    propose = heads(model("other"), max = 2)
    verify  = rejection
}
"""
    models = {"target": LayeredTableModel.random(3, 1, seed=0), "other": LayeredTableModel.random(3, 1, seed=1)}
    assert decspec.compile(source, models=models).generate([[1]], max_new_tokens=3, seed=0).tokens  # eager: fine
    with pytest.raises(DecError, match="reads model 'other''s hidden state from its previous verification call"):
        decspec.compile(source, models=models, backend="inductor").generate([[1]], max_new_tokens=3, seed=0)
