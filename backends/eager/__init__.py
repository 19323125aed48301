"""The eager backend: the IR interpreted op by op with plain PyTorch (the reference semantics)."""
from decspec.backends.eager.rules import RULES

NAME = "eager"

__all__ = ["RULES", "NAME"]
