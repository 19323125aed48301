"""The decspec CLI: check, ir, run; errors are diagnostics with exit code 1, never tracebacks."""
from __future__ import annotations

import io
import json

import re
import subprocess
import sys

import pytest

from decspec.cli import main

SPECS = ["specs/autoregressive.dec", "specs/speculative.dec", "specs/speculative_greedy.dec", "specs/prompt_lookup.dec"]


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
def test_run_on_the_shipped_models(spec, capsys):
    assert main(["run", spec, "--max-new-tokens", "6", "--batch", "2"]) == 0
    out, err = capsys.readouterr()
    assert "mean accepted tokens per round" in err and "tokens/s" in err  # stats on stderr, text on stdout
    assert out.count("class Stack:") == 2 and "#" not in out.replace("# ---", "")  # the prompt, then its continuation, per row


def test_run_a_beam_search_spec(capsys):
    assert main(["run", "specs/beam_search.dec", "--max-new-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    assert "(deterministic" in err.splitlines()[0]
    assert "# beam search: 4 finished hypotheses per prompt, best score -" in err and "rounds" not in err


def test_run_with_prompt_text_and_ids(capsys):
    assert main(["run", "specs/speculative_greedy.dec", "--prompt", "import os\\nimport sys\\n", "--escapes", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[0:2] == ["import os", "import sys"]
    assert main(["run", "specs/speculative.dec", "--prompt-ids", "1,2,3", "--max-new-tokens", "4"]) == 0
    assert "[0] [1, 2, 3] -> [" in capsys.readouterr().out


def test_run_with_model_directories(capsys):
    from decspec.stdlib.models.pretrained import REFERENCE

    args = ["run", "specs/speculative.dec", "--max-new-tokens", "4"]
    assert main(args + ["--target", str(REFERENCE / "target"), "--draft", str(REFERENCE / "draft")]) == 0
    assert str(REFERENCE / "target") in capsys.readouterr().err  # the header, on stderr
    assert main(args + ["--target", "/no/such/dir"]) == 1
    assert "/no/such/dir does not exist" in capsys.readouterr().err
    assert main(args + ["--target", str(REFERENCE / "target")]) == 1  # the spec needs a draft
    assert "pass --draft DIR" in capsys.readouterr().err
    assert main(args + ["--draft", str(REFERENCE / "draft")]) == 1
    assert "--draft needs --target" in capsys.readouterr().err


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


def test_run_on_another_backend(capsys):
    assert main(["run", "specs/speculative_greedy.dec", "--backend", "inductor", "--max-new-tokens", "4"]) == 0
    assert "tokens per round" in capsys.readouterr().err
    assert main(["run", "specs/speculative_greedy.dec", "--compile"]) == 1
    assert "--compile needs --backend inductor" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [(["--seed", str(2**64)], "seed must be an integer"),
                                           (["--max-new-tokens", str(10**11)], "the longest prompt .* exceeds the 512 positions")])
def test_a_refused_argument_prints_no_prompt_before_its_error(args, message, capsys):
    assert main(["run", "specs/autoregressive.dec", "--prompt", "PROMPT-TEXT", *args]) == 1
    out, err = capsys.readouterr()
    assert "PROMPT-TEXT" not in out and re.search(f"error: {message}", err)


# --------------------------------------------------------------------------- conventions (issue 17, item 6)

def test_version_json_prompt_file_threads_and_overrides_anywhere(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("decspec ")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("import os\n")
    assert main(["run", "speculative_greedy", "--prompt-file", str(prompt), "--max-new-tokens", "3", "--json",
                 "--threads", "1", "k=2"]) == 0  # a shipped spec by name; an override after the options
    out, err = capsys.readouterr()
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["prompt"] == "import os\n" and len(row["tokens"]) == 3 and row["finish_reason"] == "length"
    assert row["stats"]["new_tokens"] == 3 and err == ""
    monkeypatch.setattr("sys.stdin", io.StringIO("import os\n"))
    assert main(["run", "speculative_greedy", "--prompt-file", "-", "--max-new-tokens", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == row["tokens"]


@pytest.mark.parametrize("argv, message", [
    (["run", "speculative", "--prompt", "x", "--prompt-file", "f.txt"], "give one of --prompt, --prompt-file and --prompt-ids"),
    (["run", "speculative", "--prompt-file", "/no/such/file"], "cannot read the prompt file"),
    (["run", "speculative", "--threads", "0"], "--threads must be at least 1"),
    (["run", "speculatve"], "did you mean 'speculative'"),
    (["run", "elsewhere/specs/speculative.dec"], "addressable by name from anywhere: speculative"),
    (["emit", "speculative", "--target", "mlir"], "the output is chosen by --format"),
])
def test_conventions_refuse_with_one_line(argv, message, capsys):
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_exit_status_tells_usage_input_and_internal_errors_apart(capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["run", "speculative", "--no-such-option"])
    assert e.value.code == 2  # argparse: the command line itself
    assert main(["run", "no_such_spec"]) == 1  # an input decspec refused
    monkeypatch.setattr("decspec.cli._run", lambda args: 1 / 0)
    assert main(["run", "speculative"]) == 70  # a decspec bug
    assert "internal error: ZeroDivisionError" in capsys.readouterr().err
