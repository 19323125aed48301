"""The code examples in the docs run."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), flags=re.S)


def file_blocks(doc: str) -> dict[str, str]:
    """Blocks whose first line names a file (`# conftest.py`): a worked example's files, by name."""
    return {m.group(1): block for block in python_blocks(doc) if (m := re.match(r"# (\w+\.py)\n", block))}


def test_testing_md_example_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    (block,) = [b for b in python_blocks("docs/testing.md") if b not in file_blocks("docs/testing.md").values()]
    exec(compile(block, "docs/testing.md", "exec"), {})


def test_embedding_md_examples_run(monkeypatch):
    """docs/embedding.md's blocks, one after another in one namespace (each builds on the ones before)."""
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for block in python_blocks("docs/embedding.md"):
        exec(compile(block, "docs/embedding.md", "exec"), namespace)
