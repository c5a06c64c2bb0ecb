"""The zarr run format: round trip, runs cut short, no overwrite, several runs per store, no pickles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import fglens as fg

PROMPT = "a dog jumps over a fence"


def _call(pipe, image, steps=3, **kw):
    return pipe(
        image=image, prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=steps,
        generator=torch.Generator().manual_seed(7), output_type="latent", **kw,
    )


def test_round_trip_equals_the_in_memory_run(wan_i2v, ref_image, tmp_path):
    record = fg.Record(words=["dog", "fence"], maps=True, branches=("cond", "uncond"))
    with fg.trace(wan_i2v, record=record) as mem:
        _call(wan_i2v, ref_image)
    store = tmp_path / "dog.zarr"
    with fg.trace(wan_i2v, record=record, store=store) as run:
        _call(wan_i2v, ref_image)
    on_disk = fg.open_run(store)
    xr.testing.assert_identical(run.dataset.drop_attrs(), on_disk.drop_attrs())
    xr.testing.assert_allclose(mem.dataset.drop_attrs(), on_disk.drop_attrs(), rtol=0, atol=0)
    assert on_disk.word_mass.dims == ("branch", "step", "layer", "word", "frame")
    assert on_disk.word_map.dims == ("branch", "step", "layer", "word", "frame", "y", "x")
    assert list(on_disk.branch.values) == ["cond", "uncond"]
    assert on_disk.timestep.dims == ("step",)
    # one chunk per step
    group = zarr.open_group(str(store), path=on_disk.attrs["run"], mode="r")
    assert group["word_mass"].chunks[1] == 1
    attrs = fg.store.decode_attrs(on_disk.attrs)
    assert attrs["complete"] is True and attrs["steps_written"] == 3
    assert attrs["prompt"] == PROMPT and attrs["seed"] == 7
    assert attrs["model_class"] == "WanTransformer3DModel"
    assert attrs["model_config"]["num_layers"] == 4
    assert attrs["word_positions"] == {"dog": [1], "fence": [5]}
    assert attrs["fglens_version"] == fg.__version__
    assert set(attrs["definitions"]) >= {"word_map", "morans_i", "similarity", "text_share", "entropy"}
    assert attrs["record"]["words"] == ["dog", "fence"]


def test_run_cut_short_by_an_exception_stays_readable(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "cut.zarr"

    def stop(pipe, i, t, kwargs):
        if i == 1:
            raise RuntimeError("cut")
        return kwargs

    with pytest.raises(RuntimeError, match="cut"):
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=store):
            _call(wan_i2v, ref_image, steps=4, callback_on_step_end=stop)
    ds = fg.open_run(store)
    assert ds.attrs["complete"] is False
    assert list(ds.step.values) == [0, 1]  # the steps that ran
    assert np.isfinite(ds.word_mass.values).all()


def test_run_of_a_killed_process_stays_readable(tmp_path):
    store = tmp_path / "killed.zarr"
    script = textwrap.dedent(
        f"""
        import os, time, torch, fglens as fg
        pipe = fg.testing.tiny_wan_i2v_pipeline()
        def die(pipe, i, t, kwargs):
            if i == 2:
                time.sleep(1.0)   # let the writer thread write what it has
                os._exit(3)       # no cleanup, no finally, no atexit
            return kwargs
        with fg.trace(pipe, record=fg.Record(words=["dog"]), store={str(store)!r}):
            pipe(image=fg.testing.reference_image(), prompt="a dog jumps", height=32, width=48, num_frames=5,
                 num_inference_steps=5, output_type="latent", callback_on_step_end=die)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    ds = fg.open_run(store)
    assert ds.attrs["complete"] is False
    assert 1 <= ds.sizes["step"] <= 3
    assert np.isfinite(ds.word_mass.isel(step=0).values).all()


def test_existing_non_fglens_path_is_never_overwritten(wan_i2v, tmp_path):
    precious = tmp_path / "data.zarr"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an fglens store"):
        fg.trace(wan_i2v, store=precious)
    assert (precious / "notes.txt").read_text() == "mine"
    plain_zarr = tmp_path / "other.zarr"
    zarr.open_group(str(plain_zarr), mode="w")
    with pytest.raises(FileExistsError):
        fg.trace(wan_i2v, store=plain_zarr)


def test_runs_are_added_never_replaced(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "many.zarr"
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=store) as first:
        _call(wan_i2v, ref_image, steps=2)
        _call(wan_i2v, ref_image, steps=3)  # a second pipeline call is a second run
    assert len(first.run_ids) == 2 and len(first.datasets) == 2
    with fg.trace(wan_i2v, record=fg.Record(words=["fence"]), store=store) as second:
        _call(wan_i2v, ref_image, steps=2)
    runs = fg.store.list_runs(store)
    assert runs == sorted(first.run_ids + second.run_ids)
    with pytest.raises(ValueError, match="holds 3 runs; pass run="):
        fg.open_run(store)
    assert fg.open_run(store, run=first.run_ids[1]).sizes["step"] == 3
    assert list(fg.open_run(store, run=second.run_ids[0]).word.values) == ["fence"]
    with pytest.raises(KeyError, match="no run 'nope'"):
        fg.open_run(store, run="nope")


def test_newer_schema_is_refused(tmp_path):
    store = tmp_path / "future.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    root.attrs.update({"fglens_store": "runs", "fglens_schema": fg.store.SCHEMA_VERSION + 1})
    with pytest.raises(ValueError, match="Upgrade fglens"):
        fg.store.list_runs(store)


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fglens store"):
        fg.open_run(tmp_path / "nothing.zarr")


def test_store_holds_no_pickles(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "clean.zarr"
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"], maps=True), store=store):
        _call(wan_i2v, ref_image, steps=2)
    metadata = [json.loads(p.read_text()) for p in Path(store).rglob("zarr.json")]
    assert metadata and all(m["zarr_format"] == 3 for m in metadata)
    text = json.dumps(metadata).lower()
    assert "pickle" not in text and "object" not in text


# -- run ids chosen by the caller (sweeps), and what the store guarantees about them ------------------------------
def test_fixed_run_id_is_used_and_a_complete_run_is_never_replaced(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "sweep.zarr"
    target = fg.store.store_path(store, run_id="line-0001")
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=target) as run:
        _call(wan_i2v, ref_image, steps=2)
    assert run.run_ids == ["line-0001"] and fg.store.list_runs(store) == ["line-0001"]
    first = fg.open_run(store, run="line-0001")
    assert first.attrs["run"] == "line-0001" and first.attrs["complete"] is True
    for overwrite in (False, True):
        again = fg.store.store_path(store, run_id="line-0001", overwrite_incomplete=overwrite)
        with pytest.raises(FileExistsError, match="'line-0001'.*is complete; fglens never overwrites"):
            with fg.trace(wan_i2v, record=fg.Record(words=["fence"]), store=again):
                _call(wan_i2v, ref_image, steps=3)
    xr.testing.assert_identical(fg.open_run(store, run="line-0001"), first)


def test_incomplete_run_is_replaced_only_when_asked(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "resume.zarr"

    def stop(pipe, i, t, kwargs):
        if i == 1:
            raise RuntimeError("cut")
        return kwargs

    with pytest.raises(RuntimeError, match="cut"):
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=fg.store.store_path(store, run_id="line-2")):
            _call(wan_i2v, ref_image, steps=4, callback_on_step_end=stop)
    assert fg.store.run_info(store, "line-2")["complete"] is False
    with pytest.raises(FileExistsError, match=r"incomplete \(2 of 4 steps written\); pass overwrite_incomplete=True"):
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=fg.store.store_path(store, run_id="line-2")):
            _call(wan_i2v, ref_image, steps=4)
    assert fg.store.run_info(store, "line-2")["steps_written"] == 2  # untouched
    target = fg.store.store_path(store, run_id="line-2", overwrite_incomplete=True)
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=target):
        _call(wan_i2v, ref_image, steps=4)
    ds = fg.open_run(store, run="line-2")
    assert ds.attrs["complete"] is True and ds.sizes["step"] == 4
    assert sorted(os.listdir(store)) == ["line-2", "zarr.json"]  # the old run is gone, no staging left


def test_unusable_run_ids_are_refused(tmp_path):
    store = tmp_path / "ids.zarr"
    for bad in ("", "../escape", "a/b", ".hidden", "x" * 201, "zarr.json", 7):
        with pytest.raises(ValueError, match="is not usable as a run name"):
            fg.store.store_path(store, run_id=bad)
    with pytest.raises(ValueError, match="overwrite_incomplete=True needs run_id="):
        fg.store.store_path(store, overwrite_incomplete=True)
    assert not store.exists()


def test_root_is_written_once_and_runs_are_self_contained(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "once.zarr"
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=store):
        _call(wan_i2v, ref_image, steps=2)
    root = store / "zarr.json"
    before = (root.read_bytes(), os.stat(root).st_mtime_ns, os.stat(root).st_ino)
    with fg.trace(wan_i2v, record=fg.Record(words=["fence"]), store=store):
        _call(wan_i2v, ref_image, steps=2)
    assert (root.read_bytes(), os.stat(root).st_mtime_ns, os.stat(root).st_ino) == before
    assert json.loads(root.read_text())["attributes"] == {"fglens_store": "runs",
                                                          "fglens_schema": fg.store.SCHEMA_VERSION}
    for name in fg.store.list_runs(store):
        meta = json.loads((store / name / "zarr.json").read_text())
        assert meta["attributes"]["fglens_schema"] == fg.store.SCHEMA_VERSION
        assert meta["consolidated_metadata"]["metadata"]["word_mass"]["shape"][1] == 2  # consolidated at close
        alone = xr.open_zarr(store / name, consolidated=True)  # a run directory is a zarr store by itself
        xr.testing.assert_identical(alone.load().drop_attrs(), fg.open_run(store, run=name).drop_attrs())
