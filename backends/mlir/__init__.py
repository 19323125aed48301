"""The mlir backend: a round exported through torch-mlir's FX importer, for running outside Python.

`export_mlir(decoder_or_spec, dialect=..., part=...)` -> MlirExport(module, text, ...). The round is
the inductor code generator's static-shape function (one source of truth), made pure: uniforms
and every model cache tensor are explicit inputs, the updated caches explicit outputs.
torch-mlir is an optional extra: `pip install 'decspec[mlir]'`. See docs/backends.md ("mlir").
"""
from decspec.backends.mlir.export import DIALECTS, PARTS, MlirExport, Traced, export_mlir, lower, trace
from decspec.backends.mlir.run import CompiledMlir, compile_mlir

NAME = "mlir"

__all__ = ["DIALECTS", "NAME", "PARTS", "CompiledMlir", "MlirExport", "Traced", "compile_mlir", "export_mlir", "lower", "trace"]
