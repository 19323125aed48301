"""benchmarks/spec_table.py: spec discovery, rows on tiny random models, failure rows, the markdown page."""
from __future__ import annotations

import shutil

import pytest
import torch

from benchmarks import spec_table
from benchmarks.speed import SPECS
from decspec.stdlib.models.default import random_models


@pytest.fixture(scope="module")
def models():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the benchmark runs: fast on a loaded CPU
    with torch.no_grad():
        yield random_models(seed=0)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, 512, (n,), generator=g).tolist() for n in (5, 7)]  # 2 prompts


def test_discover_globs_dec_files_sorted_and_picks_subsets(tmp_path):
    for name in ("b.dec", "a.dec", "notes.txt"):
        (tmp_path / name).write_text("")
    assert [p.name for p in spec_table.discover(tmp_path)] == ["a.dec", "b.dec"]
    assert [p.name for p in spec_table.discover(tmp_path, ["b", "a.dec"])] == ["b.dec", "a.dec"]
    with pytest.raises(SystemExit, match="no spec 'c'.*known: a, b"):
        spec_table.discover(tmp_path, ["c"])
    shipped = {p.stem for p in spec_table.discover(SPECS)}
    assert {"autoregressive", "speculative", "speculative_greedy"} <= shipped
    assert shipped == {p.stem for p in SPECS.glob("*.dec")}  # whatever is there when it runs


def test_rows_on_tiny_models(tmp_path, models, ids):
    for name in ("speculative", "speculative_greedy"):
        shutil.copy(SPECS / f"{name}.dec", tmp_path)
    specs = spec_table.discover(tmp_path)
    rows = spec_table.measure(models, ids, specs, temperatures=[1.0, 0.0], new_tokens=4, log=lambda s: None)
    assert [(r["spec"], r["temperature"]) for r in rows] == [
        ("speculative", 0.0), ("speculative_greedy", 0.0), ("speculative", 1.0), ("speculative_greedy", 1.0)]
    by = {(r["spec"], r["temperature"]): r for r in rows}
    for r in rows:
        assert "error" not in r, r
        assert r["verdict"] == "lossless" and not r["grammar"]
        assert r["new_tokens"] == 2 * 4
        assert r["tokens_per_round"] == pytest.approx(r["new_tokens"] / r["rounds"])
        assert 0 <= r["mean_accepted"] <= 4  # at most the drafts of one round (k = 4, 5; 4 new tokens)
        assert 1.0 <= r["tokens_per_round"] <= 1 + r["mean_accepted"] + 1e-9
        assert len(r["all_seconds"]) == len(r["ar_all_seconds"]) == 1  # one repeat: one interleaved pass
        assert r["speedup"] == pytest.approx(r["tokens_per_second"] / r["ar_tokens_per_second"])
    # lossless specs reproduce autoregressive greedy decoding at temperature 0; no equality column at 1
    assert by[("speculative", 0.0)]["equals_greedy"] == 1.0
    assert by[("speculative_greedy", 0.0)]["equals_greedy"] == 1.0
    assert "equals_greedy" not in by[("speculative", 1.0)]
    # the temperature parameter is overridden where there is one; a fixed sampler is said so
    assert by[("speculative", 1.0)]["temperature_applied"] and "note" not in by[("speculative", 1.0)]
    assert not by[("speculative_greedy", 1.0)]["temperature_applied"]
    assert "sampler fixed (greedy)" in by[("speculative_greedy", 1.0)]["note"]


def test_penalty_samplers_are_flagged_for_the_greedy_column(models):
    _, fields = spec_table.prepare(SPECS / "penalties.dec", models, 0.0, "eager")
    assert "repetition_penalty" in fields["greedy_differs"] and fields["temperature_applied"]
    _, fields = spec_table.prepare(SPECS / "speculative.dec", models, 0.0, "eager")
    assert fields["greedy_differs"] is None


def test_failing_specs_give_reason_rows(tmp_path, models, ids):
    (tmp_path / "needs_oracle.dec").write_text(
        'decoder needs_oracle(temperature: float = 1.0) {\n    target = model("oracle")\n    sampler = temperature(temperature)\n}\n')
    (tmp_path / "broken.dec").write_text("decoder broken( {\n")
    (tmp_path / "grammar_no_tokenizer.dec").write_text(  # random models carry no tokenizer
        'decoder grammar_no_tokenizer(temperature: float = 0.0) {\n    target = model("target")\n'
        '    sampler = temperature(temperature)\n    grammar = regex("""[a-z]+""")\n}\n')
    rows = spec_table.measure(models, ids, spec_table.discover(tmp_path), temperatures=[0.0], new_tokens=4, log=lambda s: None)
    by = {r["spec"]: r for r in rows}
    assert set(by) == {"needs_oracle", "broken", "grammar_no_tokenizer"}
    assert "oracle" in by["needs_oracle"]["error"]
    assert "broken.dec" in by["broken"]["error"]
    assert by["grammar_no_tokenizer"]["error"]
    for r in rows:
        assert "tokens_per_second" not in r and "speedup" not in r
    assert all("failed: " in cells[-1] for cells in spec_table.table_rows(rows))


def _row(spec, t, **kw):
    base = {"spec": spec, "temperature": t, "backend": "eager", "verdict": "lossless", "grammar": False, "tokens_per_second": 100.0,
            "mean_accepted": 1.5, "tokens_per_round": 2.4, "rounds": 20, "speedup": 1.25}
    return {**base, **kw}


def test_markdown_groups_by_temperature_and_marks_grammar_and_failures():
    rows = [
        _row("speculative", 0.0, equals_greedy=1.0),
        _row("json_schema", 0.0, grammar=True, speedup=None, speedup_note="not comparable (grammar-constrained)",
             equals_greedy=None, equals_greedy_note="n/a (grammar-constrained)"),
        {"spec": "needs_x", "temperature": 0.0, "backend": "eager", "error": "decoder 'needs_x' needs model(s) 'x'"},
        _row("speculative", 1.0, speedup=0.8, note="a | note"),
    ]
    data = {"args": {"backend": "eager", "prompts": 4, "new_tokens": 48, "batch": 1, "repeats": 1, "threads": 1},
            "command": "python -m benchmarks.spec_table --prompts 4", "date": "2026-01-01 00:00 UTC", "machine": "test machine",
            "load_average": {"start": [3.0, 2.0, 1.0], "end": [4.0, 3.0, 2.0]}, "total_seconds": 12.0, "rows": rows}
    md = spec_table.render_markdown(data)
    assert "`python -m benchmarks.spec_table --prompts 4`" in md and "## How to read it" in md
    t0, t1 = md.index("## Temperature 0"), md.index("## Temperature 1")
    assert t0 < md.index("| json_schema |") < md.index("| needs_x |") < t1 < md.index("| speculative | lossless | 100.0 | 1.50 | 2.40 | 20 | 0.80 |")
    assert "| speculative | lossless | 100.0 | 1.50 | 2.40 | 20 | 1.25 | 100% |  |" in md
    assert "not comparable (grammar-constrained) | n/a (grammar-constrained)" in md
    assert "failed: decoder 'needs_x' needs model(s) 'x'" in md
    assert "a \\| note" in md  # a pipe in a note does not break the table
    assert "load average 3.0 at the start, 4.0 at the end" in md
