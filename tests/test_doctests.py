"""Docstring examples in public modules run and print what they claim."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "decspec.api",
    "decspec.stream",
    "decspec.testing",
    "decspec.strategies",
    "decspec.verify",
    "decspec.cli",
    "decspec.backends.arguments",
    "decspec.backends.detokenize",
    "decspec.backends.logprobs",
    "decspec.backends.draws",
    "decspec.backends.exact.cells",
    "decspec.backends.exact.distribution",
    "decspec.dsl.diagnostics",
    "decspec.compiler.ir",
    "decspec.compiler.analysis",
    "decspec.compiler.passes",
    "decspec.compiler.passes.fold_sampler",
    "decspec.stdlib.combine",
    "decspec.stdlib.registry",
    "decspec.stdlib.samplers",
    "decspec.stdlib.sequoia",
    "decspec.stdlib.models.protocol",
    "decspec.stdlib.models.table",
    "decspec.stdlib.models.transformer",
    "decspec.stdlib.diffusion",
    "decspec.stdlib.models.diffusion_table",
    "decspec.stdlib.models.diffusion_random",
    "decspec.backends.diffusion_grammar",
    "decspec.backends.exact.diffusion",
    "decspec.verify_diffusion",
    "decspec.stdlib.models.diffusion",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
