"""Backends: interpreters over the one IR. Each is a module with NAME and RULES."""
from __future__ import annotations

from types import ModuleType

from decspec.dsl.diagnostics import DecError, did_you_mean, excerpt

BACKENDS = ("eager", "exact", "inductor")


def get_backend(name: str) -> ModuleType:
    if not isinstance(name, str):
        raise DecError(f"backend must be a backend's name, one of {', '.join(BACKENDS)} (got {excerpt(repr(name))})")
    if name == "eager":
        from decspec.backends import eager

        return eager
    if name == "inductor":
        from decspec.backends import inductor

        return inductor
    if name == "exact":
        from decspec.backends import exact

        return exact
    raise DecError(f"unknown backend '{excerpt(name)}'", hint=did_you_mean(name, BACKENDS) or f"available: {', '.join(BACKENDS)}")
