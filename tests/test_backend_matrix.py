"""benchmarks/backend_matrix.py: one row per spec and backend, on tiny random models; a failure names the op it stops at.

The compile column runs dynamo with its "eager" backend here (the graphs, breaks and recompiles are dynamo's; no
inductor code generation), so the whole file takes seconds."""
from __future__ import annotations

import pytest
import torch

from benchmarks import backend_matrix as bm
from decspec.backends.inductor.codegen import NOT_YET
from decspec.compiler.lower import lower
from decspec.compiler.passes import run_pipeline
from decspec.dsl.check import load


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the benchmark runs
    yield
    torch.set_num_threads(threads)


def not_emitted_spec() -> tuple[str, set[str]] | None:
    """A shipped spec whose round holds an op the code generator does not emit yet (tree_greedy while trees are not
    emitted), with those ops; None once every spec's ops are emitted."""
    for name in ["tree_greedy"] + [p.stem for p in bm.discover()]:
        spec = load(bm.SPECS / f"{name}.dec")
        if spec.slot("search") is not None or spec.slot("denoise") is not None:  # no round graph
            continue
        ops = {op.name for op in run_pipeline(lower(spec)).walk()} & set(NOT_YET)
        if ops:
            return name, ops
    return None


RECYCLE_TREE = '''decoder recycle_tree(temperature: float = 0.0) {
    target  = model("target")
    sampler = temperature(temperature)
    propose = recycle(widths = [2, 1])
    verify  = multi_rejection
}
'''  # token recycling's tree: not emitted yet (codegen.NOT_YET), used by no shipped spec


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    ar = bm.matrix_row(bm.SPECS / "autoregressive.dec", columns=("eager", "exact", "inductor", "compile"), new_tokens=4,
                       exact_configs=2, dynamo="eager")
    found = not_emitted_spec()
    if found is None:  # every shipped spec's ops are emitted: a spec of our own with one that is not
        path = tmp_path_factory.mktemp("specs") / "recycle_tree.dec"
        path.write_text(RECYCLE_TREE)
        found = (path, {"recycle_tree"})
    else:
        found = (bm.SPECS / f"{found[0]}.dec", found[1])
    other = bm.matrix_row(found[0], columns=("eager", "inductor", "compile", "mlir"), new_tokens=4, dynamo="eager")
    return ar, other, (found[0].stem, found[1])


def test_autoregressive_is_one_graph_without_breaks_or_recompiles(rows):
    ar = rows[0]
    assert ar["eager"]["status"] == "ok", ar
    assert ar["exact"]["status"] == "ok" and ar["exact"]["note"] == "lossless, exactly", ar
    assert ar["inductor"]["status"] == "ok" and ar["inductor"]["equals_eager_greedy"] is True, ar
    c = ar["compile"]
    assert c["status"] == "ok", c
    assert c["dynamo_backend"] == "eager"
    assert c["graphs"] == 1 and c["graph_breaks"] == 0 and c["break_reasons"] == {}, c  # one graph per round
    assert c["recompiles"] == 0 and c["recompile_reasons"] == [], c  # new prompt lengths and sampler values: inputs
    assert c["equals_eager"] and c["equals_eager_other"] and c["same_tokens_warm"], c
    assert c["new_tokens"] == 2 * 4 and c["warm_tokens_per_second"] > 0
    cells = bm.table_rows([ar])[0]
    assert cells[:8] == ["autoregressive", "yes", "lossless, exactly", "yes", "1", "0", "0", cells[7]]


def test_an_op_not_emitted_is_named_in_the_row(rows):
    _, row, (name, ops) = rows
    assert row["eager"]["status"] == "ok", row  # eager runs everything
    for col in ("inductor", "compile"):
        assert row[col]["status"] == "failed", row
        named = bm.short(row[col]["reason"])
        assert named in {f"op '{op}' not emitted" for op in ops}, named
        assert "Traceback" not in row[col]["reason"] and "\n" not in row[col]["reason"]
    if row["mlir"]["status"] == "n/a":
        assert "mlir extra is not installed" in row["mlir"]["reason"]
    else:
        assert row["mlir"]["status"] == "failed" and "cannot export op '" in row["mlir"]["reason"], row["mlir"]  # names an op
        assert "Traceback" not in row["mlir"]["reason"]
    assert bm.table_rows([row])[0][3] == "no: " + bm.short(row["inductor"]["reason"])


def test_page_summary_and_reasons(rows):
    ar, other, found = rows
    table = [ar] + ([other] if other else [])
    data = {"command": "python -m benchmarks.backend_matrix --specs x", "date": "2026-01-01 00:00 UTC", "machine": "test machine",
            "args": {"new_tokens": 4, "timeout": 60, "threads": 1, "exact_configs": 2, "dynamo_backend": "eager"},
            "load_average": {"start": [1.0, 1.0, 1.0], "end": [2.0, 1.0, 1.0]}, "total_seconds": 3.0, "rows": table,
            "summary": bm.summary(table), "torch_mlir": None}
    s = data["summary"]
    assert s["one_graph"] == ["autoregressive"] and s["graph_breaks"] == [] and s["recompiles"] == []
    assert s["inductor"] == 1 and s["compile"] == 1 and s["eager"] == len(table)
    md = bm.render_markdown(data)
    assert "`python -m benchmarks.backend_matrix --specs x`" in md and "2026-01-01 00:00 UTC" in md and "## How to read it" in md
    assert f"inductor runs 1 of {len(table)}" in md and "one graph per round with no graph breaks for 1" in md
    if other:
        # the compile column fails for the same reason on the same spec: one item names both
        assert f"- **inductor, compile**, failed: {bm.short(other['inductor']['reason'], 160)}: {found[0]}" in md


def test_runs_over_subsets_merge_into_one_page(rows, tmp_path):
    """--merge: runs of the same options over some of the specs each make one document, rows in specs/ order (a later
    run's row wins), each run's command, commit, date and load listed on the page."""
    import copy
    import json

    ar = rows[0]
    spec = copy.deepcopy(ar) | {"spec": "speculative"}
    run = {"command": "python -m benchmarks.backend_matrix --specs autoregressive", "date": "2026-01-01 00:00 UTC",
           "machine": "test machine", "args": {"new_tokens": 4, "timeout": 60, "threads": 1, "exact_configs": 2,
                                               "dynamo_backend": "eager"},
           "load_average": {"start": [1.0, 1.0, 1.0], "end": [2.0, 1.0, 1.0]}, "total_seconds": 3.0, "rows": [ar],
           "code_start": {"commit": "aaaaaaa", "changed": []}, "specs": ["autoregressive"], "torch_mlir": None}
    later = run | {"command": "python -m benchmarks.backend_matrix --specs speculative autoregressive", "rows": [spec, ar],
                   "code_start": {"commit": "bbbbbbb", "changed": []}, "specs": ["speculative", "autoregressive"]}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, data in zip(paths, (run, later)):
        path.write_text(json.dumps(data))
    bm.main(["--merge", *map(str, paths), "--out", str(tmp_path / "m.json"), "--markdown", str(tmp_path / "m.md")])
    merged = json.loads((tmp_path / "m.json").read_text())
    assert [r["spec"] for r in merged["rows"]] == ["autoregressive", "speculative"]
    assert [p["commit"] for p in merged["parts"]] == ["aaaaaaa", "bbbbbbb"] and merged["total_seconds"] == 6.0
    md = (tmp_path / "m.md").read_text()
    assert "Measured in 2 runs" in md and "at commit bbbbbbb" in md and "inductor runs 2 of 2" in md
    (tmp_path / "c.json").write_text(json.dumps(run | {"args": run["args"] | {"new_tokens": 8}}))
    with pytest.raises(SystemExit, match="options differ"):
        bm.main(["--merge", str(paths[0]), str(tmp_path / "c.json"), "--out", str(tmp_path / "x.json")])


def test_a_spec_past_its_timeout_is_a_row_not_an_error():
    row = bm.isolated_row(bm.SPECS / "autoregressive.dec", columns=("eager", "compile"), timeout=0.5)
    assert row["eager"]["status"] == "timed out" and "0.5 s" in row["eager"]["reason"]
    assert row["compile"] == {"status": "not run", "reason": "timed out earlier"}
    assert bm.table_rows([row])[0][1:3] == ["timed out", "–"]
