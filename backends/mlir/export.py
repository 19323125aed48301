"""Export a round to MLIR through torch-mlir's FX importer.

    export = export_mlir("specs/speculative.dec", dialect="linalg")    # models: random ones, or the decoder's
    export.text            # the module's text (what `decspec emit FILE.dec --format mlir` writes)
    export.module          # torch_mlir.ir.Module

The pipeline: torch.export of a pure module (round.py) at fixed shapes -> the rewrites in
DECOMPOSITIONS -> FxImporter (the weights become constants of the module) -> torch-mlir's
`torchdynamo-export-to-torch-backend-pipeline` (dialect "torch") -> one backend pipeline
(linalg-on-tensors, stablehlo or tosa). A failure at any step is reported with the aten op, and,
through the exported nodes' stack traces, the line of generated code, its decoding op and .dec line.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from decspec.backends.arguments import MAX_CONTEXT, MAX_POSITIONS, positive_int
from decspec.backends.runtime import max_draft_len
from decspec.dsl.diagnostics import DecError

INSTALL = "torch-mlir is not installed: pip install 'decspec[mlir]'"

# dialect -> torch-mlir backend pipeline after the torch backend form (None: stop at "torch")
DIALECTS = {
    "torch": None,
    "linalg": "torch-backend-to-linalg-on-tensors-backend-pipeline",
    "stablehlo": "torch-backend-to-stablehlo-backend-pipeline",
    "tosa": "torch-backend-to-tosa-backend-pipeline",
}
TORCH_BACKEND = "builtin.module(func.func(torch-match-quantized-custom-ops), torchdynamo-export-to-torch-backend-pipeline{ extra-library=})"
PARTS = ("round", "verify")
EXAMPLE_LENGTH = 16  # tokens of context per row in the inputs a round is traced with
# ops that run on the host, outside the tensor graph: nothing to export
HOST_OPS = {"recycle_tree": "token recycling's tree is not emitted by the inductor code generator yet, whose round the export traces"}
# what the host chooses or carries between rounds: inputs (and outputs) of the exported round (round.py RoundModule),
# not of the verify part, which starts after the proposal
ROUND_INPUTS = {
    "length_cap": "a cross-round length policy's cap is chosen on the host between rounds",
    "draft_arm": "a per-row draft view is chosen on the host between rounds",
    "model_select": "a per-row draft view is chosen on the host between rounds",
    "model_hidden": "draft heads read the hidden states a model's previous forwards kept beside its cache",
    "model_features": "an EAGLE head reads the features a model's previous forwards kept beside its cache",
}  # (cross-round draft states, lookahead's and token recycling's, are in and out of the round, and left out of the verify part)


def check_exportable(graph, part: str = "round") -> None:
    """Raise DecError naming the first op the export (of `part`) cannot carry, and its .dec line."""
    for op in graph.walk():
        line = f" (spec line {op.meta.line}:{op.meta.col})" if op.meta.line else ""
        if op.name in HOST_OPS:
            raise DecError(f"cannot export op '{op.name}'{line} to MLIR: {HOST_OPS[op.name]}")
        if part != "round" and op.name in ROUND_INPUTS:
            raise DecError(f"cannot export op '{op.name}'{line} to MLIR as part '{part}': {ROUND_INPUTS[op.name]}, an input of "
                           "the whole round's function only", hint="export part='round'")


def _require_torch_mlir():
    try:
        from torch_mlir import ir  # noqa: F401
        from torch_mlir.extras.fx_importer import FxImporter  # noqa: F401
    except ImportError:
        raise DecError(INSTALL) from None


# --- rewrites of aten ops torch-mlir cannot lower, each with the same result on its inputs ----------

def _sort_stable(x, *, stable=None, dim=-1, descending=False):
    # sort.stable has no lowering; the plain sort's order among exactly tied values may differ
    # (top_p reads only the sorted values; typical_p's order of equally typical tokens may change).
    return torch.ops.aten.sort.default(x, dim, descending)


def _searchsorted(sorted_seq, values, *, out_int32=False, right=False, side=None, sorter=None):
    # for a non-decreasing sequence, searchsorted = how many elements are < (right: <=) the value
    if sorter is not None:
        return NotImplemented
    right = right or side == "right"
    s, v = sorted_seq[..., None, :], values[..., :, None]  # [..., 1, V], [..., M, 1]
    hit = (s <= v) if right else (s < v)
    return hit.sum(-1).to(torch.int32 if out_int32 else torch.int64)


def _scatter_src(x, dim, index, src):
    # torch-mlir's TMTensor lowering of scatter crashes on a negative dim
    return NotImplemented if dim >= 0 else torch.ops.aten.scatter.src(x, dim % x.dim(), index, src)


def _scatter_value(x, dim, index, value):
    return NotImplemented if dim >= 0 else torch.ops.aten.scatter.value(x, dim % x.dim(), index, value)


def _and(a, b):
    # torch-mlir lowers bitwise_and, not __and__
    return torch.ops.aten.bitwise_and.Tensor(a, b)


def _or(a, b):
    return torch.ops.aten.bitwise_or.Tensor(a, b)


def decompositions() -> dict:
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table

    table = get_decomposition_table()
    aten = torch.ops.aten
    table.update({
        aten.sort.stable: _sort_stable,
        aten.searchsorted.Tensor: _searchsorted,
        aten.scatter.src: _scatter_src,
        aten.scatter.value: _scatter_value,
        aten.__and__.Tensor: _and,
        aten.__or__.Tensor: _or,
    })
    return table


# --- the export ---------------------------------------------------------------------------------

@dataclass
class MlirExport:
    """An exported round: the MLIR module, its text and what its function takes and returns."""

    module: Any  # torch_mlir.ir.Module
    text: str
    dialect: str
    part: str
    func_name: str
    input_names: list[str]
    output_names: list[str]
    example_inputs: tuple = ()
    source: str = ""  # the generated Python the module was traced from
    seconds: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


def _decoder(decoder_or_spec, models: dict | None, overrides: dict | None):
    import decspec
    from decspec.api import Decoder

    if isinstance(decoder_or_spec, Decoder):
        return decoder_or_spec
    return decspec.compile(decoder_or_spec, models=models, overrides=overrides)


def build_module(decoder, part: str, batch: int, capacity: int) -> torch.nn.Module:
    from decspec.backends.mlir.round import RoundModule, VerifyModule

    if part == "round":
        return RoundModule(decoder.graph, decoder._bound_models(), batch=batch, capacity=capacity,
                           grammars=decoder._bound_grammars())  # {} without a grammar
    models = decoder.models or {}
    vocab = next((m.vocab_size for m in models.values()), 512)
    return VerifyModule(decoder.graph, batch=batch, vocab=vocab)


@dataclass
class Traced:
    """A round (or its verify part) as a pure module and its torch.export program, before any MLIR."""

    module: torch.nn.Module
    program: Any  # torch.export.ExportedProgram, decomposed
    example_inputs: tuple
    seconds: float


def trace(decoder_or_spec, part: str = "round", *, batch: int = 1, capacity: int = 128, models: dict | None = None,
          overrides: dict | None = None) -> Traced:
    """torch.export of the pure round module at fixed shapes, with DECOMPOSITIONS applied."""
    if part not in PARTS:
        raise DecError(f"unknown part '{part}'; expected one of: {', '.join(PARTS)}")
    batch, capacity = positive_int("batch", batch), positive_int("capacity", capacity)
    if capacity > MAX_POSITIONS or batch * capacity > MAX_CONTEXT:
        raise DecError(f"batch {batch} x capacity {capacity:,} positions is more than decspec preallocates (at most "
                       f"{MAX_POSITIONS:,} positions per row, {MAX_CONTEXT:,} in all)")
    _require_torch_mlir()
    t0 = time.perf_counter()
    decoder = _decoder(decoder_or_spec, models, overrides)
    if decoder.graph is None and decoder.spec.slot("denoise") is not None:  # masked diffusion: a host loop (backends/diffusion.py)
        raise DecError("cannot export the `denoise` slot to MLIR: a diffusion decoder has no round graph, it runs on the host",
                       decoder.spec.slot("denoise").span, hint='run it with decspec.compile(spec, backend="eager")')
    if decoder.graph is None:  # a `search` spec: beam search runs on the host (backends/beam.py)
        raise DecError("cannot export the `search` slot to MLIR: beam search has no round graph, it runs on the host",
                       decoder.spec.slot("search").span, hint='run it with decspec.compile(spec, backend="eager")')
    check_exportable(decoder.graph, part)
    need = EXAMPLE_LENGTH + 2 * max_draft_len(decoder.graph) + 4  # the traced context, a round's drafts and padding
    if part == "round" and capacity < need:
        raise DecError(f"capacity {capacity} is too small for this round: it needs at least {need} positions (a traced "
                       f"context of {EXAMPLE_LENGTH} tokens, then a round's drafts and padding)")
    module = build_module(decoder, part, batch, capacity)
    module.eval()
    args = module.example_inputs(length=EXAMPLE_LENGTH) if part == "round" else module.example_inputs()
    try:
        with torch.no_grad():
            program = torch.export.export(module, args, strict=False)
            program = program.run_decompositions(decompositions())
    except DecError:
        raise
    except Exception as e:  # torch.export refused the traced round
        raise DecError(f"torch.export cannot trace the {part} of decoder '{decoder.spec.name}': {type(e).__name__}: "
                       f"{_first_line(e)}{_locate_in_text(str(e), module_source(module))}") from e
    return Traced(module, program, args, time.perf_counter() - t0)


def lower(traced: Traced, dialect: str = "torch") -> MlirExport:
    """Import a traced round with torch-mlir's FX importer and lower it to `dialect`."""
    if dialect not in DIALECTS:
        raise DecError(f"unknown MLIR dialect '{dialect}'; expected one of: {', '.join(DIALECTS)}")
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_d
    from torch_mlir.extras.fx_importer import FxImporter

    module = traced.module
    part = "round" if type(module).__name__ == "RoundModule" else "verify"
    t0 = time.perf_counter()
    context = ir.Context()  # one per module: importing twice into one context clashes over the weights' resources
    torch_d.register_dialect(context)
    importer = FxImporter(context=context)
    importer.import_frozen_program(_FrozenBuffers(traced.program), func_name=part)
    mlir_module = importer.module
    _run_pipeline(mlir_module, TORCH_BACKEND, "torch", module)
    if DIALECTS[dialect] is not None:
        _run_pipeline(mlir_module, f"builtin.module({DIALECTS[dialect]})", dialect, module)
    text = str(mlir_module)
    seconds = {"trace": traced.seconds, "lower": time.perf_counter() - t0}
    seconds["total"] = seconds["trace"] + seconds["lower"]
    return MlirExport(mlir_module, text, dialect, part, part, module.input_names(), module.output_names(),
                      traced.example_inputs, module_source(module), seconds)


class _FrozenBuffers:
    """The program as `import_frozen_program` should see it: buffers (e.g. RoPE's inv_freq) frozen into
    constants like parameters. torch-mlir reads buffers only for programs without `constants`, so
    otherwise they would become extra function arguments."""

    class _Signature:
        def __init__(self, sig):
            self._sig = sig
            self.inputs_to_lifted_tensor_constants = {**sig.inputs_to_lifted_tensor_constants, **sig.inputs_to_buffers}

        def __getattr__(self, name):
            return getattr(self._sig, name)

    def __init__(self, program):
        self._program = program
        sig = program.graph_signature
        self.graph_signature = self._Signature(sig)
        self.constants = dict(program.constants)
        for name in sig.inputs_to_buffers.values():
            self.constants[name] = program.state_dict[name] if name in program.state_dict else program.constants[name]

    def __getattr__(self, name):
        return getattr(self._program, name)


def export_mlir(decoder_or_spec, dialect: str = "torch", part: str = "round", *, batch: int = 1, capacity: int = 128,
                models: dict | None = None, overrides: dict | None = None) -> MlirExport:
    """Export one round of a decoder (or spec path/text) to MLIR in `dialect` (torch | linalg | stablehlo | tosa).

    part="round": the whole round, with the models and their static KV caches as explicit inputs and
    outputs; part="verify": only what follows the proposal and the model calls (no model). Shapes are
    fixed: batch rows, a context and cache of `capacity` positions. Without models, a spec path binds
    the shipped reference pair. The function is named after the part (`@round`, `@verify`).

    >>> export = export_mlir("specs/speculative.dec", dialect="linalg", part="verify")   # doctest: +SKIP
    >>> export.input_names                                                                 # doctest: +SKIP
    ['target_logits', 'drafts', 'q', 'drafted', 'u']
    """
    if dialect not in DIALECTS:
        raise DecError(f"unknown MLIR dialect '{dialect}'; expected one of: {', '.join(DIALECTS)}")
    return lower(trace(decoder_or_spec, part, batch=batch, capacity=capacity, models=models, overrides=overrides), dialect)


def module_source(module) -> str:
    return getattr(module, "source", "")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _run_pipeline(mlir_module, pipeline: str, dialect: str, module) -> None:
    from torch_mlir import ir
    from torch_mlir.passmanager import PassManager

    with mlir_module.context as ctx:
        ctx.emit_error_diagnostics = False  # capture diagnostics in the MLIRError
        try:
            PassManager.parse(pipeline).run(mlir_module.operation)
        except ir.MLIRError as e:
            diags = list(getattr(e, "error_diagnostics", []))
            if not diags:
                raise DecError(f"torch-mlir cannot lower the {module_kind(module)} to {dialect}: {e}") from None
            d = next((d for d in diags if "legalize" in d.message), diags[0])
            raise DecError(
                f"torch-mlir cannot lower the {module_kind(module)} to the {dialect} dialect: {_aten_op(d.message)}"
                f"{_locate_in_text(str(d.location), module_source(module))}"
            ) from None


def module_kind(module) -> str:
    return "round" if type(module).__name__ == "RoundModule" else "verify part"


def _aten_op(message: str) -> str:
    """The failing op, e.g. "torch.aten.sort.stable", from an MLIR diagnostic; else its first line."""
    m = re.search(r'name = "(torch\.[\w.]+)"', message) or re.search(r"operation '([\w.]+)'", message)
    return f"op '{m.group(1)}' has no lowering" if m else message.splitlines()[0][:300]


_LOC = re.compile(r'"<decspec (?:round|verify) [^>]*>"?:(\d+)|<decspec (?:round|verify) [^>]*>", line (\d+)')
_OP_COMMENT = re.compile(r"#\s*(\w+)(?: \(line (\d+)\))?[^#]*$")


def _locate_in_text(text: str, source: str) -> str:
    """' (from op NAME, spec line N; generated line: ...)' for the innermost generated line named in text."""
    lines = source.splitlines()
    hits = [int(a or b) for a, b in _LOC.findall(text)]
    if not hits or not lines:
        return ""
    n = hits[-1]
    if not 0 < n <= len(lines):
        return ""
    code = lines[n - 1].strip()
    m = _OP_COMMENT.search(code)
    if not m:
        return f" (generated line {n}: {code})"
    op, line = m.group(1), m.group(2)
    spec = f", spec line {line}" if line else ""
    return f" (from decspec op '{op}'{spec}; generated line {n}: {code.split('  #')[0]})"


def write(export: MlirExport, path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        f.write(export.text)
