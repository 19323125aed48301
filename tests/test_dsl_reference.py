"""docs/language.md: its component reference is current, and its complete examples load."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from decspec.dsl.check import load
from decspec.dsl.reference import BEGIN, END, component_reference, usage, with_reference
from decspec.stdlib import registry

LANGUAGE_MD = Path(__file__).resolve().parents[1] / "docs" / "language.md"


def test_language_md_has_the_current_component_reference():
    doc = LANGUAGE_MD.read_text(encoding="utf-8")
    inside = doc[doc.index(BEGIN) + len(BEGIN):doc.index(END)]
    assert inside == "\n" + component_reference(), \
        "docs/language.md is stale: run `python -m decspec.dsl.reference --write docs/language.md`"
    assert with_reference(doc) == doc


def test_reference_lists_every_component_with_its_contract():
    entries = component_reference().split("#### ")
    for comp in registry.components():
        (body,) = [e for e in entries if e.startswith(f"`{usage(comp)}`\n") and comp.doc in e]
        assert "- contract: " in body
        assert all(f"| `{p.name}` | {p.type} |" in body for p in comp.params)
        if comp.cite:
            assert f"- cite: {comp.cite}" in body


def test_reference_shows_bounds_and_defaults():
    text = component_reference()
    assert "| `max` | int | `4` | `1 <= max <= 64` |" in text
    assert "#### `when COND`" in text and "#### `draft.prob`" in text and "#### `rejection`" in text


def test_with_reference_needs_the_markers():
    with pytest.raises(ValueError):
        with_reference("no markers here")


@pytest.mark.parametrize("block", re.findall(r"```dec\n(.*?)```", LANGUAGE_MD.read_text(encoding="utf-8"), re.S))
def test_dec_examples_in_the_docs_load(block):
    spec = load(block)
    assert spec.slot("target") is not None
