"""The decspec CLI: check, ir, run; errors are diagnostics with exit code 1, never tracebacks."""
from __future__ import annotations

import subprocess
import sys

import pytest

from decspec.cli import main

SPECS = ["specs/autoregressive.dec", "specs/speculative.dec", "specs/speculative_greedy.dec"]


@pytest.mark.parametrize("spec", SPECS)
def test_check_prints_verdict(spec, capsys):
    assert main(["check", spec]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and out.count("lossless") >= 1


def test_check_overrides(capsys):
    assert main(["check", "specs/speculative.dec", "k=7", "temperature=0.5"]) == 0
    assert "k=7" in capsys.readouterr().out


@pytest.mark.parametrize("after", ["lower", "cse", "dce"])
def test_ir_after_each_pass(after, capsys):
    assert main(["ir", "specs/speculative.dec", "--after", after]) == 0
    assert capsys.readouterr().out.startswith('round[spec="speculative"')


def test_unknown_pass_is_a_diagnostic(capsys):
    assert main(["ir", "specs/speculative.dec", "--after", "cs"]) == 1
    assert "did you mean 'cse'" in capsys.readouterr().err


@pytest.mark.parametrize("spec", SPECS)
def test_run_on_default_models(spec, capsys):
    assert main(["run", spec, "--max-new-tokens", "6", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "rounds=" in out and out.count("->") == 2


def test_errors_are_diagnostics_not_tracebacks(tmp_path, capsys):
    bad = tmp_path / "bad.dec"
    bad.write_text('decoder d() {\n    target = model("target")\n    verify = rejecton\n}\n')
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.dec:3" in err and "Traceback" not in err
    assert main(["run", "specs/speculative.dec", "--prompt-ids", "a,b"]) == 1
    assert main(["check", "specs/speculative.dec", "k"]) == 1


def test_python_dash_m_and_console_script():
    out = subprocess.run([sys.executable, "-m", "decspec", "check", "specs/speculative.dec"], capture_output=True, text=True)
    assert out.returncode == 0 and "lossless" in out.stdout
