"""benchmarks/output.py: a benchmark writes nothing unless asked (--out / --markdown / --doc PATH, or --write)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks.output import OPTIONS, add_output_args, outputs

OUT, DOC = Path("/repo/benchmarks/results/x.json"), Path("/repo/docs/x.md")


def parse(argv: list[str], doc: Path | None = DOC, doc_flag: str = "--markdown") -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=4)
    add_output_args(ap, OUT, doc, doc_flag)
    return ap.parse_args(argv)


@pytest.mark.parametrize("doc_flag", ["--markdown", "--doc"])
def test_nothing_by_default_the_committed_files_with_write_given_paths_win(doc_flag):
    assert outputs(parse([], doc_flag=doc_flag), OUT, DOC) == (None, None)
    assert outputs(parse(["--write"], doc_flag=doc_flag), OUT, DOC) == (OUT, DOC)
    assert outputs(parse(["--out", "a.json"], doc_flag=doc_flag), OUT, DOC) == (Path("a.json"), None)
    assert outputs(parse([doc_flag, "b.md"], doc_flag=doc_flag), OUT, DOC) == (None, Path("b.md"))
    assert outputs(parse([doc_flag, "b.md", "--write"], doc_flag=doc_flag), OUT, DOC) == (OUT, Path("b.md"))


def test_json_only_benchmarks_have_no_page_flag():
    assert outputs(parse(["--write"], doc=None), OUT) == (OUT, None)
    with pytest.raises(SystemExit):
        parse(["--markdown", "b.md"], doc=None)


def test_options_names_every_attribute_it_adds():  # benchmarks that record vars(args) leave these out
    assert set(vars(parse([]))) - {"k"} <= set(OPTIONS)
    assert set(vars(parse([], doc_flag="--doc"))) - {"k"} <= set(OPTIONS)
