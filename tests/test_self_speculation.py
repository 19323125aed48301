"""Self-speculation: `early_exit(target, layer = L)` and `skip_layers(target, layers = [...])` as draft models.

The binder makes each a view of the bound target under a role of its own; bad layer numbers are
diagnostics at the .dec position naming the model's layer count. Exactly lossless on layered table
models, statistically on a tiny transformer, greedy = greedy decoding on random transformers, and the
inductor round gives the eager tokens.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import decspec
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.default import random_models
from decspec.stdlib.models.layered_table import LayeredTableModel
from decspec.stdlib.models.table import TableModel
from decspec.stdlib.models.transformer import Transformer, TransformerConfig
from decspec.stdlib.models.views import EarlyExit, SkipLayers
from decspec.testing import assert_greedy_equivalent, assert_lossless, exact_distribution, target_distribution, tv_distance

ROOT = Path(__file__).resolve().parent.parent
SPECS = ["layerskip", "kangaroo", "swift"]


def spec(name: str) -> Path:
    return ROOT / "specs" / f"{name}.dec"


def inline(draft: str, extra: str = "") -> str:
    return f"""decoder d() {{
    target  = model("target")
    propose = autoregressive({draft}, max = 2)
{extra}    verify  = rejection
}}
"""


# --------------------------------------------------------------------------- binding


def test_the_binder_makes_views_of_the_bound_target():
    target = random_models()["target"]
    dec = decspec.compile(spec("layerskip"), target=target)
    models = dec._bound_models()
    assert set(models) == {"target", "target/exit3"}
    view = models["target/exit3"]
    assert isinstance(view, EarlyExit) and view.model is target and view.layer == 3
    assert dec.spec.models == ("target",)  # the caller binds only the target
    swift = decspec.compile(spec("swift"), target=target)._bound_models()["target/skip1_2"]
    assert isinstance(swift, SkipLayers) and swift.skip == (1, 2)


def test_roles_are_stable_names_in_the_ir():
    text = str(decspec.compile(spec("swift"), target=random_models()["target"], skip=[2, 1, 2]).graph)
    assert 'model_call[model="target/skip1_2", last=true]' in text
    assert 'model_call[model="target/exit2"' in str(decspec.compile(spec("kangaroo"), target=random_models()["target"]).graph)


@pytest.mark.parametrize("draft, message", [
    ("early_exit(target, layer = 9)", "early_exit at layer 9, but model 'target' has 4 layers"),
    ("skip_layers(target, layers = [1, 7])", "skip_layers skips layer 7, but model 'target' has 4 layers"),
    ("skip_layers(target, layers = [0, 1, 2, 3])", "skip_layers skips all 4 layers, but model 'target' has 4 layers"),
])
def test_bad_layers_name_the_position_and_the_layer_count(draft, message):
    with pytest.raises(DecError) as e:
        decspec.compile(inline(draft), target=random_models()["target"]).generate([[1]], max_new_tokens=1)
    text = str(e.value)
    assert message in text and "3:30" in text  # line 3, the call's column


def test_a_layer_from_a_parameter_is_checked_at_its_use():
    with pytest.raises(DecError, match="early_exit at layer 7, but model 'target' has 4 layers"):
        decspec.compile(spec("layerskip"), target=random_models()["target"], layer=7)._bound_models()
    with pytest.raises(DecError, match="'layer' must be at least 1"):
        decspec.compile(spec("layerskip"), layer=0)


def test_a_model_without_layers_is_a_diagnostic():
    with pytest.raises(DecError, match=r"early_exit needs a model with layers, but model 'target' \(TableModel\) has none"):
        decspec.compile(inline("early_exit(target, layer = 1)"), target=TableModel.random(4, 1, seed=0))._bound_models()


def test_the_target_slot_takes_a_plain_model():
    with pytest.raises(DecError, match="the target must be a model bound by name"):
        decspec.compile('decoder d() { target = early_exit(model("t"), layer = 2) }')


def test_a_view_of_a_view_is_refused():
    with pytest.raises(DecError, match="derives a draft from a model bound by name"):
        decspec.compile(inline("early_exit(skip_layers(target, layers = [1]), layer = 2)"))


# --------------------------------------------------------------------------- lossless, exactly


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("order, prompt, temperature", [(0, [1], 1.0), (1, [0, 2], 0.7), (1, [3], 1.3)])
def test_exactly_lossless_on_layered_tables(name, order, prompt, temperature):
    target = LayeredTableModel.random(4, order, seed=11 + order)
    dec = decspec.compile(spec(name), target=target, temperature=temperature, k=2)
    got = exact_distribution(dec, prompt, 3)
    assert tv_distance(got, target_distribution(dec, prompt, 3)) <= max(1e-12, got.error_bound)


def test_the_draft_differs_from_the_target():
    """The views really draft from fewer layers: the draft's distribution is not the target's."""
    target = LayeredTableModel.random(4, 1, seed=3)
    for view in (EarlyExit(target, 2), SkipLayers(target, (1,))):
        assert tv_distance(target_distribution(view, [1], 2), target_distribution(target, [1], 2)) > 0.05


def test_greedy_verifier_under_sampling_is_exactly_lossless():
    target = LayeredTableModel.random(3, 1, seed=5)
    text = inline("early_exit(target, layer = 2)").replace("verify  = rejection", "verify  = greedy")
    assert_lossless(text.replace("target  = model(\"target\")", "target  = model(\"target\")\n    sampler = temperature(0.8)"),
                    models={"target": target}, prompt=[1], max_new_tokens=3, method="exact")


# --------------------------------------------------------------------------- lossless, statistically (a transformer)


def tiny_transformer(seed: int = 0) -> Transformer:
    config = TransformerConfig(vocab_size=5, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    return Transformer.random(config, seed)


@pytest.mark.parametrize("draft", ["early_exit(target, layer = 1)", "skip_layers(target, layers = [1])"])
def test_statistically_lossless_on_a_tiny_transformer(draft):
    check = assert_lossless(inline(draft), models={"target": tiny_transformer()}, prompt=[1, 2], max_new_tokens=2,
                            method="statistical", samples=3000)
    assert check.method == "statistical"


# --------------------------------------------------------------------------- greedy, and inductor = eager


@pytest.mark.parametrize("name", SPECS)
def test_greedy_equivalence_on_a_random_transformer(name):
    target = random_models(seed=1)["target"]
    assert_greedy_equivalent(spec(name), models={"target": target}, prompts=[[1, 2, 3], [7], [4, 4, 4, 4, 4]],
                             max_new_tokens=12, exact=False)


@pytest.mark.parametrize("name", SPECS)
def test_inductor_gives_the_eager_tokens(name):
    target = random_models(seed=2)["target"]
    prompts = [[5, 6, 7, 8], [9]]
    out = {}
    for backend in ("eager", "inductor"):
        dec = decspec.compile(spec(name), target=target, backend=backend)
        res = dec.generate(prompts, max_new_tokens=10, seed=0)
        out[backend] = (res.tokens, res.stats.accepted)
    assert out["eager"] == out["inductor"]


def test_layered_table_views_match_partial_tables():
    model = LayeredTableModel.random(3, 1, seed=0)
    cache = model.new_cache(1, 8)
    out = model.forward(torch.tensor([[1, 2]]), cache, skip_layers=(0, 2))
    assert torch.allclose(out.logits[0, 1], model.layers[1][2] + model.layers[3][2])
    full = model.forward(torch.tensor([[0]]), model.new_cache(1, 4)).logits[0, 0]
    assert torch.equal(full, model.logits[0])  # full depth is the table itself
