"""Run a linalg-on-tensors export on the CPU: lower it to the LLVM dialect and JIT it with MLIR's
ExecutionEngine, all with the passes the torch-mlir wheel ships (no refbackend runtime library).

    export = export_mlir("specs/speculative.dec", dialect="linalg", part="verify")
    verify = compile_mlir(export)
    tokens, accepted, drafted = verify(*export.example_inputs)     # torch tensors in, torch tensors out

The pipeline, in three stages (BUFFERIZE, `_copies_to_linalg`, TO_LLVM):

1. bufferize: tm_tensor ops (sort, scan, scatter) first, then One-Shot Bufferize over the whole
   module (function boundaries included, identity layouts, copy-before-write: the tm_tensor
   bufferization leaves `to_tensor` ops One-Shot's analysis refuses), then ownership-based buffer
   deallocation (every result is a fresh buffer the caller owns and frees).
2. strided copies -> `linalg.copy` (`_copies_to_linalg`): a `memref.copy` into a subview would
   lower to a call of `memrefCopy` from MLIR's C runner library, which the wheel does not ship.
3. to LLVM: tm_tensor and linalg to loops, scf to cf, math to LLVM/libm, memref/arith/index/func/cf
   to LLVM, with the C interface wrappers (`_mlir_ciface_<name>`) `ExecutionEngine.invoke` calls.

Only static shapes: the call checks every input's shape and dtype against the function's signature.
torch-mlir's lowering of gather checks its indices with `cf.assert`, which calls abort(): an
out-of-range token id ends the process, so feed token ids below the vocabulary size.
"""
from __future__ import annotations

import ctypes
import functools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from decspec.dsl.diagnostics import DecError

BUFFERIZE = (
    "func.func(linalg-generalize-named-ops)",
    "func.func(tm-tensor-bufferize)",
    "one-shot-bufferize{copy-before-write bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map}",
    "buffer-deallocation-pipeline",
    "convert-bufferization-to-memref",
)
TO_LLVM = (
    "func.func(llvm-request-c-wrappers)",
    "func.func(tm-tensor-to-loops)",
    "func.func(convert-linalg-to-loops)",
    "lower-affine",
    "convert-scf-to-cf",
    "func.func(arith-expand)",
    "func.func(convert-math-to-llvm)",
    "convert-math-to-libm",
    "expand-strided-metadata",
    "lower-affine",
    "finalize-memref-to-llvm",
    "convert-arith-to-llvm",
    "convert-index-to-llvm",
    "convert-func-to-llvm",
    "convert-cf-to-llvm",
    "reconcile-unrealized-casts",
)

# MLIR element type -> numpy dtype (i1 memrefs hold one byte per element, as numpy's bool_)
DTYPES = {"f32": np.float32, "f64": np.float64, "i64": np.int64, "i32": np.int32, "i8": np.int8, "i1": np.bool_}
_FREE = ctypes.CDLL(None).free  # the JIT's allocations come from this process's malloc
_FREE.argtypes = [ctypes.c_void_p]
_GLOBAL = 0xDEADBEEF  # finalize-memref-to-llvm's `allocated` pointer for a constant global: never freed


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: Any  # numpy dtype

    def descriptor_type(self):
        return _descriptor_type(len(self.shape), np.dtype(self.dtype))


@functools.lru_cache(maxsize=None)
def _descriptor_type(rank: int, dtype: np.dtype):
    """The ctypes struct of a ranked memref descriptor: allocated, aligned, offset, sizes[rank], strides[rank]."""
    fields = [("allocated", ctypes.c_void_p), ("aligned", ctypes.POINTER(np.ctypeslib.as_ctypes_type(dtype))),
              ("offset", ctypes.c_int64)]
    if rank:
        fields += [("sizes", ctypes.c_int64 * rank), ("strides", ctypes.c_int64 * rank)]
    return type(f"MemRef{rank}d_{dtype.name}", (ctypes.Structure,), {"_fields_": fields})


@dataclass
class CompiledMlir:
    """A JIT-compiled exported function: call it with torch tensors (or numpy arrays) of the export's
    static shapes; it returns a tuple of torch tensors named by `output_names`."""

    engine: Any  # torch_mlir.execution_engine.ExecutionEngine
    func_name: str
    input_names: list[str]
    output_names: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    llvm_module: Any = None  # torch_mlir.ir.Module in the LLVM dialect, what the engine compiled
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def llvm_text(self) -> str:
        return str(self.llvm_module)

    def __post_init__(self):
        # the C interface returns several results as one struct of their descriptors, through a pointer
        fields = [(f"r{i}", s.descriptor_type()) for i, s in enumerate(self.outputs)]
        self._result_type = type("Results", (ctypes.Structure,), {"_fields_": fields})

    def __call__(self, *args) -> tuple[torch.Tensor, ...]:
        if len(args) != len(self.inputs):
            names = ", ".join(self.input_names)
            raise DecError(f"@{self.func_name} takes {len(self.inputs)} inputs ({names}), got {len(args)}")
        arrays = [self._array(name, spec, a) for name, spec, a in zip(self.input_names, self.inputs, args)]
        descs = [_descriptor(spec, a) for spec, a in zip(self.inputs, arrays)]
        results = self._result_type()
        self.engine.invoke(self.func_name, ctypes.pointer(ctypes.pointer(results)),
                           *(ctypes.pointer(ctypes.pointer(d)) for d in descs))
        outs, owned = [], set()
        inputs = {a.ctypes.data for a in arrays}
        for i, spec in enumerate(self.outputs):
            d = getattr(results, f"r{i}")
            outs.append(torch.from_numpy(_read(spec, d)))
            if d.allocated and d.allocated not in inputs and d.allocated != _GLOBAL:  # every result is ours to free
                owned.add(d.allocated)
        for ptr in owned:
            _FREE(ptr)
        return tuple(outs)

    def _array(self, name: str, spec: TensorSpec, value) -> np.ndarray:
        a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if tuple(a.shape) != spec.shape or a.dtype != spec.dtype:
            raise DecError(f"@{self.func_name} input '{name}': expected {np.dtype(spec.dtype).name}{list(spec.shape)}, "
                           f"got {a.dtype.name}{list(a.shape)}")
        return np.ascontiguousarray(a)


def _descriptor(spec: TensorSpec, a: np.ndarray):
    d = spec.descriptor_type()()
    d.allocated = a.ctypes.data
    d.aligned = a.ctypes.data_as(type(d.aligned))
    d.offset = 0
    if spec.shape:
        d.sizes[:] = list(a.shape)
        d.strides[:] = [s // a.itemsize for s in a.strides]
    return d


def _read(spec: TensorSpec, d) -> np.ndarray:
    """A copy of the buffer a result descriptor points at (its strides honoured)."""
    itemsize = np.dtype(spec.dtype).itemsize
    base = ctypes.cast(d.aligned, ctypes.c_void_p).value + d.offset * itemsize
    if not spec.shape:
        return np.frombuffer((ctypes.c_char * itemsize).from_address(base), dtype=spec.dtype).reshape(()).copy()
    sizes, strides = list(d.sizes), list(d.strides)
    span = 1 + sum((n - 1) * s for n, s in zip(sizes, strides)) if all(sizes) else 0
    flat = np.frombuffer((ctypes.c_char * (span * itemsize)).from_address(base), dtype=spec.dtype)
    return np.lib.stride_tricks.as_strided(flat, sizes, [s * itemsize for s in strides]).copy()


def _signature(module, func_name: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from torch_mlir import ir

    for op in module.body.operations:
        if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == func_name:
            ftype = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
            return ([_tensor_spec(t, func_name) for t in ftype.inputs],
                    [_tensor_spec(t, func_name) for t in ftype.results])
    raise DecError(f"the module has no function @{func_name}")


def _tensor_spec(t, func_name: str) -> TensorSpec:
    from torch_mlir import ir

    if not isinstance(t, ir.RankedTensorType):
        raise DecError(f"cannot run @{func_name}: argument type {t} is not a ranked tensor")
    elem = str(t.element_type)
    if elem not in DTYPES or not t.has_static_shape:
        raise DecError(f"cannot run @{func_name}: tensor type {t} (static shapes of {', '.join(DTYPES)} only)")
    return TensorSpec(tuple(t.shape), np.dtype(DTYPES[elem]))


def _copies_to_linalg(module) -> int:
    """Rewrite each `memref.copy` with a strided operand as `linalg.copy`: finalize-memref-to-llvm lowers
    contiguous copies to memcpy but strided ones to a call of `memrefCopy` (MLIR's C runner utils,
    not in the wheel); linalg.copy becomes loops. -> how many were rewritten."""
    from torch_mlir import ir
    from torch_mlir.dialects import linalg

    copies = []

    def visit(op):
        if op.name == "memref.copy" and any("strided" in str(v.type) for v in op.operands):
            copies.append(op)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    for op in copies:
        with ir.InsertionPoint(op), op.location:
            linalg.copy(op.operands[0], outs=[op.operands[1]])
        op.erase()
    return len(copies)


def _run(module, passes: tuple[str, ...], stage: str, func_name: str) -> None:
    from torch_mlir import ir
    from torch_mlir.dialects import torch as _torch_d  # noqa: F401  (registers torch-mlir's passes: tm-tensor-*)
    from torch_mlir.passmanager import PassManager

    try:
        pipeline = PassManager.parse(f"builtin.module({','.join(passes)})")
    except ValueError as e:  # a pass this wheel does not register
        raise DecError(f"cannot lower @{func_name} to LLVM ({stage}): {str(e).splitlines()[0]}") from None
    try:
        pipeline.run(module.operation)
    except ir.MLIRError as e:
        diags = list(getattr(e, "error_diagnostics", []))
        detail = diags[0].message.splitlines()[0] if diags else str(e).splitlines()[0]
        raise DecError(f"cannot lower @{func_name} to LLVM ({stage}): {detail}") from None


def lower_to_llvm(export) -> Any:
    """A new module: `export.module` (linalg on tensors) lowered to the LLVM dialect; the export is untouched."""
    from torch_mlir import ir

    if export.dialect != "linalg":
        raise DecError(f"compile_mlir runs linalg-on-tensors exports; this one is in the {export.dialect} dialect "
                       "(export_mlir(..., dialect=\"linalg\"))")
    context = export.module.context  # it has the tm_tensor dialect loaded (the Python bindings cannot register it)
    with context, ir.Location.unknown():
        context.emit_error_diagnostics = False
        module = ir.Module.parse(str(export.module))
        _run(module, BUFFERIZE, "bufferize", export.func_name)
        _copies_to_linalg(module)
        _run(module, TO_LLVM, "to llvm", export.func_name)
    return module


def compile_mlir(export, *, opt_level: int = 0) -> CompiledMlir:
    """JIT-compile a linalg-on-tensors MlirExport (`export_mlir(..., dialect="linalg")`) for the CPU.

    >>> export = export_mlir("specs/speculative.dec", dialect="linalg", part="verify")   # doctest: +SKIP
    >>> tokens, accepted, drafted = compile_mlir(export)(*export.example_inputs)         # doctest: +SKIP

    opt_level is LLVM's (0-3). The default 0: on the CPU, -O2 made the round's call 1.2-1.5x faster
    for 3-5x the JIT's CPU time (31 s for the round with random_models), and the verify part no faster.
    """
    try:
        from torch_mlir.execution_engine import ExecutionEngine
    except ImportError:
        from decspec.backends.mlir.export import INSTALL

        raise DecError(INSTALL) from None
    t0 = time.perf_counter()
    module = lower_to_llvm(export)
    inputs, outputs = _signature(export.module, export.func_name)
    t1 = time.perf_counter()
    with module.context:
        try:
            engine = ExecutionEngine(module, opt_level=opt_level)
            engine.lookup(export.func_name)  # compiles now, not on the first call
        except RuntimeError as e:
            raise DecError(f"cannot JIT @{export.func_name}: {e}") from None
    seconds = {"lower": t1 - t0, "jit": time.perf_counter() - t1}
    return CompiledMlir(engine, export.func_name, list(export.input_names), list(export.output_names), inputs, outputs,
                        module, seconds)
