"""The code examples in the docs run."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), flags=re.S)


def test_testing_md_example_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    (block,) = python_blocks("docs/testing.md")
    exec(compile(block, "docs/testing.md", "exec"), {})
