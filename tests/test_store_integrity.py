"""Stores detect their own damage (issue 12, items 8 and 9): checksummed chunks, missing chunks, one bad run
that does not take the store down."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import fglens as fg
from fglens.cli import main
from fglens.cli.common import UsageError
from fglens.cli.plot import select_runs
from fglens.store import DamagedRun, RunWriter, UnreadableRun, ZarrSink, verify_run

LAYERS = ["blocks.0", "blocks.1"]
STEPS = 3


def _write(store: Path, run: str, seed: int, *, nan_step: int | None = None) -> None:
    writer = RunWriter(ZarrSink(store, run), variables=["word_mass", "entropy"], branches=["cond"], layers=LAYERS,
                       words=["dog"], grid=(2, 3, 4), attrs={"prompt": run, "seed": seed, "num_steps": STEPS})
    rng = np.random.default_rng(seed)
    for step in range(STEPS):
        values = {v: torch.from_numpy(rng.random(writer._shape(v)[2:], dtype=np.float32))
                  for v in writer.variables}
        if step == nan_step:  # a chunk of fill values only: still written, so its absence is detectable
            values = {v: torch.full_like(t, float("nan")) for v, t in values.items()}
        writer.put(step, {"cond": 1000.0 - step}, {"cond": values})
    writer.close({"complete": True, "num_steps": STEPS})


@pytest.fixture()
def store(tmp_path) -> Path:
    path = tmp_path / "runs.zarr"
    for i, name in enumerate(("good", "other")):
        _write(path, name, i, nan_step=1)
    return path


def test_whole_runs_verify_and_every_chunk_carries_a_checksum(store, capsys):
    verdict = verify_run(store, "good")
    assert verdict.ok and verdict.checksummed and verdict.chunks >= 2 * STEPS
    meta = json.loads((store / "good" / "word_mass" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]][-1] == "crc32c"
    assert (store / "good" / "word_mass" / "c" / "0" / "1").exists()  # the all-NaN step's chunk was written
    ds = fg.open_run(store, "good", verify=True)
    assert np.isnan(ds.word_mass.isel(step=1)).all() and not np.isnan(ds.word_mass.isel(step=0)).any()
    assert main(["inspect", str(store), "--verify"]) == 0
    assert "good: ok" in capsys.readouterr().out


def _chunk(store: Path, run: str, step: int) -> Path:
    files = sorted(p for p in (store / run / "word_mass" / "c" / "0" / str(step)).rglob("*") if p.is_file())
    assert files
    return files[0]


def test_a_flipped_byte_is_detected_and_named(store, capsys):
    chunk = _chunk(store, "good", 2)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    verdict = verify_run(store, "good")
    assert not verdict.ok and any("damaged" in p and str(chunk) in p for p in verdict.problems)
    with pytest.raises(DamagedRun, match=r"run 'good' .* is damaged: chunk c/0/2/.*word_mass"):
        fg.open_run(store, "good", verify=True)
    assert verify_run(store, "other").ok  # the other run is untouched
    assert main(["inspect", str(store), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "good: DAMAGED" in out and str(chunk) in out and "other: ok" in out


def test_a_deleted_chunk_is_missing_not_nan(store):
    chunk = _chunk(store, "good", 0)
    chunk.unlink()
    assert fg.open_run(store, "good").attrs["complete"]  # without verify it reads (as NaN): why verify exists
    with pytest.raises(DamagedRun, match=r"chunk c/0/0/.* of 'word_mass' is missing"):
        fg.open_run(store, "good", verify=True)


def test_a_corrupt_run_metadata_does_not_take_the_store_down(store, capsys):
    bad = store / "good" / "zarr.json"
    bad.write_text(bad.read_text()[:40])  # truncated JSON
    table = fg.store.run_table(store)
    row = table.set_index("id").loc["good"]
    assert str(bad) in row["problem"] and "damaged" in row["problem"] and not row["complete"]
    assert not isinstance(table.set_index("id").loc["other"]["problem"], str)
    with pytest.warns(RuntimeWarning, match=f"left out: run 'good' .*{bad}"):
        ds = fg.open_runs(store)
    assert list(ds.run.values) == ["other"]
    with pytest.raises(UnreadableRun, match=str(bad)):
        fg.open_runs(store, runs=["good", "other"])
    with pytest.raises(UnreadableRun, match=str(bad)):
        fg.open_run(store, "good")
    with pytest.raises(UnreadableRun, match=str(bad)):
        fg.store.run_info(store, "good")
    assert main(["inspect", str(store)]) == 0
    out = capsys.readouterr().out
    assert "UNREADABLE" in out and str(bad) in out and "other" in out
    assert main(["inspect", str(store), "--verify"]) == 1
    assert "good: DAMAGED" in capsys.readouterr().out
    assert list(select_runs(str(store), None, every=True)) == ["other"]
    assert "skipped" in capsys.readouterr().out
    with pytest.raises(UsageError, match=str(bad)):
        select_runs(str(store), ["good"], every=False)


def test_a_run_of_a_newer_schema_is_listed_with_its_problem(store):
    import zarr

    zarr.open_group(str(store / "good"), mode="r+", use_consolidated=False).attrs["fglens_schema"] = 99
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata now stale
        table = fg.store.run_table(store).set_index("id")
        assert "schema 99" in table.loc["good"]["problem"] and "Upgrade fglens" in table.loc["good"]["problem"]
        with pytest.warns(RuntimeWarning, match="left out: run 'good'.*schema 99"):
            assert list(fg.open_runs(store).run.values) == ["other"]
        with pytest.raises(UnreadableRun, match="schema 99"):
            fg.store.run_info(store, "good")
