"""decspec/progress.py: bars on a terminal only (or DECSPEC_PROGRESS=1), never in pipes, logs or tests."""
from __future__ import annotations

import copy
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
    from decspec.stdlib.models.pretrained import reference_models
    from decspec.stdlib.models.quant import quantize

    monkeypatch.setenv("DECSPEC_PROGRESS", "1")
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    quantize(copy.deepcopy(reference_models()["target"]))
    assert "decspec: quantizing to int4" in err.getvalue()
