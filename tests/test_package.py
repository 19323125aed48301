"""The installed distribution's metadata (issue 17, item 7): a license, the pytest plugin's entry point, the console
script, and the specs shipped as package data."""
from __future__ import annotations

from importlib import metadata
from importlib.resources import files
from pathlib import Path


def test_the_distribution_says_its_license_and_ships_its_text():
    meta = metadata.metadata("decspec")
    assert meta["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in meta.get_all("License-File")
    text = (Path(__file__).parents[1] / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_the_entry_points_and_the_shipped_specs():
    points = metadata.entry_points()
    assert [p.value for p in points.select(group="pytest11", name="decspec.pytest_plugin")] == ["decspec.pytest_plugin"]
    assert [p.value for p in points.select(group="console_scripts", name="decspec")] == ["decspec.cli:main"]
    shipped = {p.name for p in files("decspec.specs").iterdir() if p.name.endswith(".dec")}
    assert shipped == {p.name for p in (Path(__file__).parents[1] / "specs").glob("*.dec")}
