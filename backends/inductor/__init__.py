"""The inductor backend: each round emitted as Python with static shapes (codegen.py) and run
through `torch.compile` (CPU: inductor's C++ kernels; CUDA: the same, plus CUDA graphs with
mode="reduce-overhead").

Status: the code generator, the static model calls and the runner are here and produce the eager
backend's tokens (greedy: token for token); compiling with torch.compile is opt-in
(`compile=True`) while its recompilation behaviour is measured (issue 4).
"""
from decspec.backends.inductor.codegen import build_round, can_emit, emit_python
from decspec.backends.inductor.runner import RoundRunner

NAME = "inductor"
RULES: dict = {}  # no interpreter rules: rounds are generated code

__all__ = ["NAME", "RULES", "RoundRunner", "build_round", "can_emit", "emit_python"]
