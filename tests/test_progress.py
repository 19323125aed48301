"""decspec/progress.py: bars on a terminal only (or DECSPEC_PROGRESS=1), never in pipes, logs or tests."""
from __future__ import annotations

import io

import pytest

from decspec.progress import enabled, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("setting, tty, shown", [("", False, False), ("", True, True), ("0", True, False), ("1", False, True)])
def test_bars_show_on_a_terminal_unless_turned_off(setting, tty, shown, monkeypatch):
    monkeypatch.setenv("DECSPEC_PROGRESS", setting)
    err = Terminal() if tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert enabled() is shown
    items = list(range(5))
    assert list(progress(items, "counting")) == items  # the items pass through either way
    assert ("decspec: counting" in err.getvalue()) is shown


def test_quantizing_shows_a_bar(monkeypatch):
    from decspec.stdlib.models.quant import quantize
    from decspec.stdlib.models.transformer import Transformer, TransformerConfig

    config = TransformerConfig(vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=128)
    monkeypatch.setenv("DECSPEC_PROGRESS", "1")
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    quantize(Transformer.random(config, seed=0))
    assert "decspec: quantizing to int4" in err.getvalue()


def test_a_compiling_round_shows_a_ticking_status_line_then_its_time(monkeypatch):
    """A status line ticks while a step runs, then says how long it took; off the terminal nothing is shown (the
    compiled round's first call uses it: tests/test_backend_inductor.py)."""
    import time

    from decspec.progress import status

    monkeypatch.setenv("DECSPEC_PROGRESS", "1")
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with status("compiling the round"):
        time.sleep(1.2)
    lines = err.getvalue().split("\r")
    assert "decspec: compiling the round 1 s" in lines and lines[-1].startswith("\033[Kdecspec: compiling the round: 1.")
    monkeypatch.setenv("DECSPEC_PROGRESS", "0")
    quiet = io.StringIO()
    monkeypatch.setattr("sys.stderr", quiet)
    with status("compiling the round"):
        pass
    assert quiet.getvalue() == ""
