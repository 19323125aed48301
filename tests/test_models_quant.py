"""Weight-only quantization (stdlib/models/quant.py): GGUF grids come back exactly, the kernel multiplies by the
values the layer's weight then holds, specs on a quantized target stay lossless against its own greedy."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decspec
from decspec.dsl.diagnostics import DecError
from decspec.stdlib.models.quant import GROUP, int4_planes, int8_planes, quantize, quantize_layer
from decspec.stdlib.models.transformer import Linear, Transformer, TransformerConfig

SETTINGS = settings(derandomize=True, max_examples=20, deadline=None)
CFG = TransformerConfig(vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def bf16_grid(shape, gen, lo=-60, hi=60, exp=-9) -> torch.Tensor:
    """Values k * 2^exp, k a small integer: exactly representable in bfloat16 (and their small sums too)."""
    return torch.randint(lo, hi, shape, generator=gen).float() * 2.0**exp


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**16))
def test_int4_recovers_a_q4_1_grid_exactly(n16, groups, seed):
    """llama.cpp's Q4_1 puts each group's min on code 0 and max on code 15: w = d * q + m comes back unchanged."""
    gen = torch.Generator().manual_seed(seed)
    N, K = 8 * n16 + 3, GROUP * groups  # N not a multiple of 16: the planes are padded, the output is not
    d = torch.randint(1, 16, (N, K // GROUP, 1), generator=gen).float() * 2.0**-10
    m = bf16_grid((N, K // GROUP, 1), gen, exp=-8)
    q = torch.randint(0, 16, (N, K // GROUP, GROUP), generator=gen)
    q[..., 0], q[..., 1] = 0, 15
    w = (d * q + m).reshape(N, K)
    planes, values = int4_planes(w, ())
    assert torch.equal(values, w)
    x = torch.randn(5, K, generator=gen)
    want = x.bfloat16().float() @ w.T
    assert torch.allclose(planes.matmul(x), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**16))
def test_int8_as_two_int4_planes_recovers_a_q8_0_grid_exactly(n16, groups, seed):
    gen = torch.Generator().manual_seed(seed)
    N, K = 16 * n16, GROUP * groups
    d = torch.randint(1, 16, (N, K // GROUP, 1), generator=gen).float() * 2.0**-12
    q = torch.randint(-127, 128, (N, K // GROUP, GROUP), generator=gen)
    q[..., 0] = torch.where(torch.rand(N, K // GROUP, generator=gen) < 0.5, 127, -127)  # the group's largest magnitude
    w = (d * q).reshape(N, K)
    planes, values = int8_planes(w, ())
    assert torch.equal(values, w) and len(planes.planes) == 2
    x = torch.randn(3, K, generator=gen)
    want = x.bfloat16().float() @ w.T
    assert torch.allclose(planes.matmul(x), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


@SETTINGS
@given(st.integers(0, 2**16))
def test_lossy_quantization_stays_within_half_a_step(seed):
    """Weights not on a grid: each value moves by at most half its group's step, plus the bfloat16 rounding
    (relative 2^-9) of the scale times the code and of the offset."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(48, 64, generator=gen)
    g = w.reshape(48, 2, GROUP)
    step = ((g.amax(-1) - g.amin(-1)) / 15)[..., None]
    _, values = int4_planes(w, ())
    zero = g.amin(-1, keepdim=True) + 8 * step
    assert ((values.reshape(48, 2, GROUP) - g).abs() <= 0.5 * step + (8 * step + zero.abs()) * 2.0**-8 + 1e-6).all()
    amax = g.abs().amax(-1, keepdim=True)
    _, values8 = int8_planes(w, ())
    assert ((values8.reshape(48, 2, GROUP) - g).abs() <= 0.5 * amax / 127 + amax * 2.0**-8 + 1e-6).all()


def test_quantized_layer_multiplies_by_its_weight_and_follows_writes():
    torch.manual_seed(0)
    layer = Linear(64, 40, torch.float32, "cpu", bias=True)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    quantize_layer(layer, "int4")
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        y = layer(x)
        ref = torch.nn.functional.linear(x.bfloat16().float(), layer.weight, layer.bias)
        assert y.shape == (2, 3, 40) and torch.allclose(y, ref, rtol=2e-2, atol=0.1)
        layer.weight.mul_(-1)  # an in-place write: the planes are remade from the new values
        assert torch.allclose(layer(x), torch.nn.functional.linear(x.bfloat16().float(), layer.weight, layer.bias), rtol=2e-2, atol=0.1)
    x.requires_grad_(True)  # gradients take the float weight
    layer(x).sum().backward()
    assert torch.allclose(x.grad, layer.weight.sum(0).expand_as(x))


def test_layers_whose_input_is_not_a_multiple_of_the_group_stay_float():
    layer = Linear(48, 16, torch.float32, "cpu")
    with torch.no_grad():
        layer.weight.normal_()
    before = layer.weight.clone()
    quantize_layer(layer, "int4")
    assert "_int4" not in layer.__dict__ and torch.equal(layer.weight, before)


def test_quantized_model_is_close_to_its_float_weights_and_specs_stay_lossless():
    target = quantize(Transformer.random(CFG, seed=1))
    assert target.quantization == "int4" and all("_int4" in m.__dict__ for m in target.model.layers.modules() if isinstance(m, Linear))
    same_values = Transformer.random(CFG, seed=1)
    same_values.load_state_dict(target.state_dict())  # float32 arithmetic on the values the planes hold
    tokens = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8]])
    with torch.no_grad():
        q = target(tokens, target.new_cache(1, 16)).logits
        f = same_values(tokens, same_values.new_cache(1, 16)).logits
    assert 0 < (q - f).abs().max() < 0.05 * f.abs().max()
    draft = Transformer.random(CFG, seed=2)
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 1, 2, 3, 7, 8]]
    ar = decspec.compile("specs/autoregressive.dec", models={"target": target}, overrides={"temperature": "0"}).generate(prompts, max_new_tokens=20, eos_token_id=None)
    for spec, models in (("specs/speculative_greedy.dec", {"target": target, "draft": draft}),
                         ("specs/prompt_lookup.dec", {"target": target})):
        out = decspec.compile(spec, models=models, overrides={"temperature": "0"} if "lookup" in spec else {}).generate(
            prompts, max_new_tokens=20, eos_token_id=None)
        assert [list(map(int, r)) for r in out.tokens] == [list(map(int, r)) for r in ar.tokens], spec


def test_draft_vocabulary_of_a_quantized_model_is_quantized_alike():
    target = quantize(Transformer.random(CFG, seed=3))
    ids = torch.tensor([0, 5, 9, 17, 40, 79])
    target.set_draft_vocabulary(ids)
    sub = target.draft_lm_head
    assert "_int4" in sub.__dict__ and torch.equal(sub.weight, target.lm_head.weight[ids])
    x = torch.randn(2, CFG.hidden_size)
    with torch.no_grad():
        assert torch.allclose(sub(x)[:, ids], target.lm_head(x)[:, ids])


def test_bad_schemes_and_models_are_refused():
    with pytest.raises(DecError, match="int3"):
        quantize(Transformer.random(CFG, seed=0), "int3")
    with pytest.raises(DecError, match="built-in transformer"):
        quantize(torch.nn.Linear(32, 32))
    with pytest.raises(DecError, match="int3"):
        quantize(Transformer.random(CFG, seed=0), ["int3"])
    with pytest.raises(DecError, match="multiple of 32"):
        quantize(Transformer.random(TransformerConfig(vocab_size=80, hidden_size=48, intermediate_size=72, num_hidden_layers=1,
                                                      num_attention_heads=4, num_key_value_heads=2), seed=0))


def test_quantizing_twice_changes_nothing():
    model = quantize(Transformer.random(CFG, seed=4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cli_runs_a_quantized_target_and_refuses_quantizing_the_default_pair(capsys):
    from decspec.cli import main
    from decspec.stdlib.models.pretrained import REFERENCE

    assert main(["run", "specs/autoregressive.dec", "--target", str(REFERENCE / "target"), "--quantize", "int4",
                 "--prompt-ids", "5,6,7", "--max-new-tokens", "6"]) == 0
    assert "new tokens 6" in capsys.readouterr().err  # the stats, on stderr
    assert main(["run", "specs/autoregressive.dec", "--quantize", "int4", "--prompt-ids", "5,6,7"]) != 0
    assert "--quantize applies to --target" in capsys.readouterr().err
