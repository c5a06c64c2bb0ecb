"""The `fglens` command."""

from __future__ import annotations

import pytest

import fglens as fg
from fglens import cli


def test_demo_writes_a_run_and_prints_a_table(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--steps", "2", "--layers", "3"]) == 0
    out = capsys.readouterr().out
    assert "blocks.2" in out and "word_mass" in out and str(tmp_path / "demo.zarr") in out
    ds = fg.open_run(tmp_path / "demo.zarr")
    assert ds.attrs["complete"] is True
    assert list(ds.word.values) == ["dog", "jumps", "fence"]
    assert ds.sizes["step"] == 2 and ds.sizes["layer"] == 3


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "example" in capsys.readouterr().out
