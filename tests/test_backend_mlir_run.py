"""The mlir backend, run: the linalg-on-tensors export lowered to LLVM and JIT-compiled by MLIR's
ExecutionEngine (backends/mlir/run.py) gives the eager rules' tokens on the same inputs."""
from __future__ import annotations

import functools
import glob
import math
import os
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch_mlir.extras.fx_importer", reason="torch-mlir is an optional extra: pip install 'decspec[mlir]'")
pytest.importorskip("torch_mlir.execution_engine", reason="this torch-mlir wheel has no ExecutionEngine")

from torch_mlir import ir  # noqa: E402

import decspec  # noqa: E402
from decspec.backends.eager.rules import RULES  # noqa: E402
from decspec.backends.interpreter import run_graph  # noqa: E402
from decspec.backends.mlir import MlirExport, lower, trace  # noqa: E402
from decspec.backends.mlir.export import HOST_OPS, Traced, decompositions  # noqa: E402
from decspec.backends.mlir.run import compile_mlir  # noqa: E402
from decspec.backends.mlir.round import verified_ops  # noqa: E402
from decspec.dsl.diagnostics import DecError  # noqa: E402
from decspec.stdlib.models.default import random_models  # noqa: E402
from decspec.stdlib.models.transformer import Transformer, TransformerConfig  # noqa: E402
from decspec.stdlib.samplers import top_p  # noqa: E402
from decspec.strategies import tied_logits  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, SEEDS = 4, range(4)


def _spec_path(spec: str) -> str:
    return os.path.join(ROOT, "specs", f"{spec}.dec")


def _runs_on_host(spec: str) -> bool:
    return any(op.name in HOST_OPS for op in decspec.compile(_spec_path(spec)).graph.walk())


SPECS = [s for s in sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ROOT, "specs", "*.dec")))
         if decspec.compile(_spec_path(s)).graph is not None and not _runs_on_host(s)]  # beam search: no round graph

TINY = """
func.func @tiny(%x: tensor<2x3xf32>, %n: tensor<i64>) -> (tensor<2x3xf32>, tensor<i64>, tensor<2x3xi1>) {
  %e = tensor.empty() : tensor<2x3xf32>
  %b = tensor.empty() : tensor<2x3xi1>
  %y = linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>],
                       iterator_types = ["parallel", "parallel"]} ins(%x : tensor<2x3xf32>) outs(%e : tensor<2x3xf32>) {
  ^bb0(%a: f32, %o: f32):
    %two = arith.constant 2.0 : f32
    %r = arith.mulf %a, %two : f32
    linalg.yield %r : f32
  } -> tensor<2x3xf32>
  %p = linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>],
                       iterator_types = ["parallel", "parallel"]} ins(%x : tensor<2x3xf32>) outs(%b : tensor<2x3xi1>) {
  ^bb0(%a: f32, %o: i1):
    %zero = arith.constant 0.0 : f32
    %r = arith.cmpf ogt, %a, %zero : f32
    linalg.yield %r : i1
  } -> tensor<2x3xi1>
  return %y, %n, %p : tensor<2x3xf32>, tensor<i64>, tensor<2x3xi1>
}
"""


def tiny_export() -> MlirExport:
    context = ir.Context()
    with context:
        module = ir.Module.parse(TINY)
    return MlirExport(module, TINY, "linalg", "verify", "tiny", ["x", "n"], ["y", "n", "positive"])


@pytest.fixture(scope="module")
def executor():
    """The tiny function compiled, or a skip saying why this wheel cannot JIT."""
    try:
        return compile_mlir(tiny_export())
    except DecError as e:
        pytest.skip(f"the MLIR executor cannot be built here: {e}")


@functools.lru_cache(maxsize=None)
def _compiled(spec: str, opt_level: int):
    """(traced verify part, its compiled linalg export), or the DecError message the export gave."""
    try:
        traced = trace(_spec_path(spec), "verify", batch=BATCH, models=random_models(0))
    except DecError as e:
        return str(e)
    return traced, compile_mlir(lower(traced, "linalg"), opt_level=opt_level)


def compiled(spec: str, opt_level: int = 0):
    got = _compiled(spec, opt_level)
    if isinstance(got, str):  # tests/test_backend_mlir.py reports what cannot be exported
        pytest.skip(f"the verify part of {spec}.dec does not export: {got}")
    return got


def eager_verify(module, args) -> tuple[torch.Tensor, ...]:
    """What the eager interpreter's rules commit given the verify part's inputs (the same uniform
    columns as the generated code reads), as in tests/test_backend_mlir.py."""
    graph = module.graph
    rest = verified_ops(graph)  # the proposal's ops (draft states included) are the module's inputs
    env = {op.outputs[i]: a for (_, op, i), a in zip(module.inputs, args)}
    col, u = 0, args[-1]
    for op in rest:
        if op.name == "uniform":
            shape = [int(d) for d in op.param("shape")[1:]]
            width = math.prod(shape)
            env[op.outputs[0]] = u[:, col] if not shape else u[:, col:col + width].reshape(-1, *shape)
            col += width
    sub = SimpleNamespace(inputs=list(env), ops=[op for op in rest if op.name != "uniform"], outputs=[])
    state = SimpleNamespace(committed=None)
    run_graph(sub, list(env.values()), state, RULES, "eager")
    return tuple(state.committed)


def test_tiny_function_round_trips(executor):
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
    y, n, positive = executor(x, torch.tensor(7))
    assert torch.equal(y, 2 * x) and int(n) == 7 and n.shape == () and torch.equal(positive, x > 0)
    assert executor.output_names == ["y", "n", "positive"]
    assert "llvm.func @_mlir_ciface_tiny" in executor.llvm_text  # the C interface `invoke` calls


@pytest.mark.parametrize("spec", SPECS)
def test_verify_runs_like_eager(spec, executor):
    traced, verify = compiled(spec)
    for seed in SEEDS:
        args = traced.module.example_inputs(seed)
        before = [a.clone() for a in args]
        ours = verify(*args)
        assert all(torch.equal(a, b) for a, b in zip(args, before))  # the inputs are not written
        eager = eager_verify(traced.module, args)
        assert len(ours) == len(eager) == 3
        for name, a, b in zip(verify.output_names, ours, eager):
            assert a.dtype == b.dtype and torch.equal(a, b), f"{spec} seed {seed}: {name} {a.tolist()} != eager {b.tolist()}"


def test_optimized_build_agrees(executor):
    traced, fast = compiled("speculative", opt_level=2)
    _, plain = compiled("speculative", opt_level=0)
    for seed in SEEDS:
        args = traced.module.example_inputs(seed)
        assert all(torch.equal(a, b) for a, b in zip(fast(*args), plain(*args)))


def test_inputs_are_checked(executor):
    traced, verify = compiled("speculative")
    args = list(traced.module.example_inputs(0))
    with pytest.raises(DecError, match=r"takes 5 inputs \(drafts, q, drafted, target_logits, u\), got 4"):
        verify(*args[:-1])
    name = verify.input_names[-1]
    with pytest.raises(DecError, match=rf"input '{name}': expected float32\[{BATCH}, \d+\], got float64"):
        verify(*args[:-1], args[-1].double())
    with pytest.raises(DecError, match=rf"input '{name}': expected float32\[{BATCH}, \d+\], got float32\[1, 3\]"):
        verify(*args[:-1], torch.rand(1, 3))


def test_only_linalg_exports_run():
    traced, _ = compiled("speculative_greedy")
    with pytest.raises(DecError, match="linalg-on-tensors exports; this one is in the torch dialect"):
        compile_mlir(lower(traced, "torch"))


def _tiny_models(seed: int = 0) -> dict:
    def config(layers, hidden):
        return TransformerConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                 num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)

    return {"target": Transformer.random(config(2, 32), seed), "draft": Transformer.random(config(1, 32), seed + 1)}


@pytest.mark.parametrize("spec", ["speculative", "staged"])  # staged: its inner rounds write the drafts in place
def test_round_runs_like_torch(executor, spec):
    """The whole round (models, static caches) through the same pipeline, against the torch module it was
    exported from (tests/test_backend_mlir.py checks that module against the generated round)."""
    traced = trace(_spec_path(spec), "round", models=_tiny_models(), capacity=32)
    round_fn = compile_mlir(lower(traced, "linalg"))
    for seed in range(2):
        args = traced.module.example_inputs(seed, length=8)
        ours = round_fn(*args)
        with torch.no_grad():
            ref = traced.module(*args)
        for name, a, b in zip(round_fn.output_names, ours, ref):
            if b.is_floating_point():  # the updated K/V caches: same math, other summation order
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
            else:
                assert torch.equal(a, b), f"seed {seed}: {name} {a.tolist()} != {b.tolist()}"


class _TopP(torch.nn.Module):
    """samplers.top_p alone, as a module the export takes."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def input_names(self) -> list[str]:
        return ["logits"]

    def output_names(self) -> list[str]:
        return ["kept"]

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return top_p(logits, self.p)


@functools.lru_cache(maxsize=None)
def _compiled_top_p(p: float, shape: tuple[int, int]):
    module, x = _TopP(p), torch.zeros(shape)
    program = torch.export.export(module, (x,), strict=False).run_decompositions(decompositions())
    return compile_mlir(lower(Traced(module, program, (x,), 0.0), "linalg"))


@settings(max_examples=40)
@given(x=tied_logits(rows=8, vocab=24), p=st.sampled_from([0.0, 0.5, 0.9]))
def test_top_p_runs_like_eager_on_ties(executor, x, p):
    """The export turns the stable sort into a plain one (decompositions()); top_p reads only the sorted values, so
    on logits full of ties and near-ties it keeps exactly eager's tokens."""
    (ours,) = _compiled_top_p(p, tuple(x.shape))(x)
    assert torch.equal(ours, top_p(x, p))
