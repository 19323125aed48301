"""Where a benchmark writes: nowhere by default (it prints its table); the JSON to --out PATH, the page to
--markdown or --doc PATH, and with --write to the committed files (benchmarks/results/, docs/) where no path is given."""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ("out", "doc", "markdown", "write")  # the attributes add_output_args puts on the parsed arguments


def _shown(path: str | Path) -> str:
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else str(path)


def add_output_args(ap: argparse.ArgumentParser, out: str | Path, doc: str | Path | None = None, doc_flag: str = "--markdown") -> None:
    """--out PATH (the JSON), `doc_flag` PATH (the page, where the benchmark has one) and --write; `out` and `doc`
    are the committed files, for the help."""
    ap.add_argument("--out", type=Path, metavar="PATH", help="write the results as JSON here")
    if doc is not None:
        ap.add_argument(doc_flag, type=Path, metavar="PATH", help="write the page here")
    flags = "--out" + (f" / {doc_flag}" if doc is not None else "")
    committed = " and ".join(_shown(p) for p in (out, doc) if p is not None)
    ap.add_argument("--write", action="store_true", help=f"write the committed {committed} (a path given to {flags} wins)")


def outputs(args: argparse.Namespace, out: Path, doc: Path | None = None) -> tuple[Path | None, Path | None]:
    """The JSON and page paths to write, None where nothing is asked: the paths given, else with --write `out` and `doc`."""
    given_doc = getattr(args, "doc", None) or getattr(args, "markdown", None)
    return args.out or (out if args.write else None), given_doc or (doc if args.write else None)


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path`, making its folder, and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {_shown(path)}")


def markdown_rows(columns: list[str], rows: list[list[str]]) -> str:
    """A markdown table: the header `columns`, then `rows` of cells (a `|` inside a cell escaped)."""
    body = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    body += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows]
    return "\n".join(body)
