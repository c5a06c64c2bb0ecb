"""Many runs as one Dataset: `fg.open_runs` (word slots, step padding, dask and plain lazy paths) and `run_table`."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import fglens as fg

PROMPT = "a dog jumps over a fence"
#: run id -> (words, steps, cut after this many steps or None, seed, maps)
RUNS = {
    "a-two-words": (["dog", "fence"], 3, None, 1, True),
    "b-one-word": (["dog"], 2, None, 2, True),
    "c-cut-short": (["fence", "dog", "jumps"], 4, 2, 3, True),
}


def _record(store, run_id, words, steps, cut, seed, maps, pipe, image, edit=None):
    def stop(pipe, i, t, kwargs):
        if cut is not None and i == cut - 1:
            raise RuntimeError("cut")
        return kwargs

    target = fg.store.store_path(store, run_id=run_id)
    record = fg.Record(words=words, maps=maps, branches=("cond", "uncond"))
    try:
        with fg.trace(pipe, record=record, store=target, edit=edit):
            pipe(image=image, prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=steps,
                 generator=torch.Generator().manual_seed(seed), output_type="latent", callback_on_step_end=stop)
    except RuntimeError as exc:
        assert cut is not None and "cut" in str(exc)


@pytest.fixture(scope="module")
def store(wan_i2v, ref_image, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "sweep.zarr"
    for run_id, spec in RUNS.items():
        edit = fg.Scale(["dog"], 2.0) if run_id == "b-one-word" else None
        _record(path, run_id, *spec, wan_i2v, ref_image, edit=edit)
    return path


def _expected(store, var):
    """The stacked array built independently: each run's zarr array read directly, placed into NaN padding."""
    runs = sorted(RUNS)
    arrays = [zarr.open_array(str(store / r / var), mode="r") for r in runs]
    n_words = max(len(RUNS[r][0]) for r in runs)
    written = [fg.store.run_info(store, r)["steps_written"] for r in runs]
    n_steps = max(written)
    dims = json.loads((store / runs[0] / var / "zarr.json").read_text())["dimension_names"]
    shape = [len(runs)] + [n_steps if d == "step" else n_words if d == "word" else n
                           for d, n in zip(dims, arrays[0].shape, strict=True)]
    out = np.full(shape, np.nan, dtype=np.float64)
    for i, (a, steps) in enumerate(zip(arrays, written, strict=True)):
        data = np.asarray(a[...], dtype=np.float64)
        data = data[tuple(slice(0, steps) if d == "step" else slice(None) for d in dims)]
        out[(i, *(slice(0, n) for n in data.shape))] = data
    return out


def test_open_runs_stacks_runs_with_word_slots_and_step_padding(store):
    ds = fg.open_runs(store, lazy=False)
    assert list(ds.run.values) == sorted(RUNS)
    assert ds.sizes["run"] == 3 and ds.sizes["word"] == 3 and ds.sizes["step"] == 3
    assert list(ds.word.values) == [0, 1, 2]
    assert ds.word_label.dims == ("run", "word")
    assert ds.word_label.values.tolist() == [["dog", "fence", ""], ["dog", "", ""], ["fence", "dog", "jumps"]]
    assert ds.word_mass.dims == ("run", "branch", "step", "layer", "word", "frame")
    assert ds.word_map.dims == ("run", "branch", "step", "layer", "word", "frame", "y", "x")
    for var in ("word_mass", "word_map", "entropy", "text_share", "morans_i"):
        np.testing.assert_array_equal(ds[var].values.astype(np.float64), _expected(store, var), err_msg=var)
    # padding is NaN exactly where a run has no word or no step; recorded values are finite there
    wm = ds.word_mass.sel(branch="cond")
    assert np.isnan(wm.sel(run="b-one-word", word=[1, 2])).all()
    assert np.isnan(wm.sel(run="b-one-word", step=2)).all()
    assert np.isnan(wm.sel(run="c-cut-short", step=2)).all()
    assert np.isfinite(wm.sel(run="a-two-words", word=[0, 1])).all()
    assert np.isfinite(wm.sel(run="c-cut-short", step=[0, 1])).all()
    # per-run coordinates
    assert ds.complete.values.tolist() == [True, True, False]
    assert ds.steps_written.values.tolist() == [3, 2, 2]
    assert ds.seed.values.tolist() == [1, 2, 3]
    assert set(ds.prompt.values.tolist()) == {PROMPT}
    assert ds.model_class.values.tolist() == ["WanTransformer3DModel"] * 3
    assert ds.intervention.sel(run="a-two-words").item() == "none"
    assert json.loads(ds.intervention.sel(run="b-one-word").item())["type"] == "Scale"
    assert ds.timestep.dims == ("run", "step")
    for r in RUNS:
        one = fg.open_run(store, run=r)
        n = one.sizes["step"]
        np.testing.assert_array_equal(ds.timestep.sel(run=r).values[:n], one.timestep.values)
        assert np.isnan(ds.timestep.sel(run=r).values[n:]).all()
    # selecting a word by its label across runs
    dog = ds.word_mass.where(ds.word_label == "dog").max("word")
    for r in RUNS:
        np.testing.assert_allclose(dog.sel(run=r).dropna("step", how="all"),
                                   fg.open_run(store, run=r).word_mass.sel(word="dog"), rtol=0, atol=0)


def test_open_runs_is_dask_backed_when_dask_is_installed(store):
    pytest.importorskip("dask.array")
    import dask.array as da

    ds = fg.open_runs(store)
    assert isinstance(ds.word_mass.data, da.Array)
    assert ds.word_mass.data.chunks[0] == (1, 1, 1)  # one chunk per run
    assert set(ds.word_mass.data.chunks[2]) == {1}  # and per step, as stored
    assert not any(isinstance(ds[c].data, da.Array) for c in ds.coords)  # labels in memory: groupby works
    assert ds.word_mass.mean(["branch", "step", "layer", "frame"]).groupby("prompt").mean().sizes["prompt"] >= 1
    np.testing.assert_array_equal(ds.word_mass.values.astype(np.float64), _expected(store, "word_mass"))


def test_open_runs_without_dask_uses_plain_lazy_indexing(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    ds = fg.open_runs(store)
    data = ds.word_map.variable._data
    assert not isinstance(data, np.ndarray) and type(data).__name__ == "LazilyIndexedArray"
    one = ds.word_map.isel(run=2, step=1, word=[2, 0]).values
    np.testing.assert_array_equal(one.astype(np.float64), _expected(store, "word_map")[2, :, 1][:, :, [2, 0]])
    np.testing.assert_array_equal(ds.entropy.values.astype(np.float64), _expected(store, "entropy"))


@pytest.mark.parametrize("dask", [True, False], ids=["dask", "plain"])
def test_open_runs_reads_chunks_only_when_values_are_used(store, monkeypatch, dask):
    """Count the chunk reads of the data variables: none at open, exactly one for one run and step."""
    if dask:
        pytest.importorskip("dask.array")
    else:
        monkeypatch.setitem(sys.modules, "dask", None)
        monkeypatch.setitem(sys.modules, "dask.array", None)
    from zarr.storage import LocalStore

    reads: list[tuple[str, str]] = []
    original = LocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        reads.append((os.path.basename(str(self.root)), key))
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting_get)
    variables = {"word_mass", "word_map", "entropy", "text_share", "morans_i", "similarity"}

    def data_chunks():
        return sorted((run, key) for run, key in reads if key.split("/")[0] in variables and "/c/" in key)

    ds = fg.open_runs(store)
    assert data_chunks() == []
    value = ds.word_mass.sel(run="b-one-word").isel(step=1).values
    assert data_chunks() == [("b-one-word", "word_mass/c/0/1/0/0/0")]
    np.testing.assert_array_equal(value.astype(np.float64), _expected(store, "word_mass")[1, :, 1])


def test_open_runs_selection_and_complete_only(store):
    ds = fg.open_runs(store, complete_only=True, lazy=False)
    assert list(ds.run.values) == ["a-two-words", "b-one-word"]
    assert ds.sizes["word"] == 2 and ds.sizes["step"] == 3  # padded to these runs only
    picked = fg.open_runs(store, runs=["c-cut-short", "b-one-word"], lazy=False)
    assert list(picked.run.values) == ["c-cut-short", "b-one-word"]
    np.testing.assert_array_equal(picked.entropy.sel(run="b-one-word").values,
                                  ds.entropy.sel(run="b-one-word").isel(step=slice(0, 2)).values)
    assert picked.sizes["step"] == 2
    with pytest.raises(KeyError, match=r"no run\(s\) \['nope'\]"):
        fg.open_runs(store, runs=["nope"])
    with pytest.raises(ValueError, match="no complete runs"):
        fg.open_runs(store, runs=["c-cut-short"], complete_only=True)


def test_open_runs_refuses_runs_with_different_layers(store, tmp_path, wan_i2v, ref_image):
    other = tmp_path / "mixed.zarr"
    _record(other, "all-layers", ["dog"], 2, None, 0, False, wan_i2v, ref_image)
    record = fg.Record(words=["dog"], layers=[0, 1], branches=("cond", "uncond"))
    with fg.trace(wan_i2v, record=record, store=fg.store.store_path(other, run_id="two")):
        wan_i2v(image=ref_image, prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=2,
                output_type="latent")
    with pytest.raises(ValueError, match=r"'layer' labels differ(.|\n)*\['all-layers'\]: 4(.|\n)*\['two'\]: 2"):
        fg.open_runs(other)
    assert fg.open_runs(other, runs=["two"]).sizes["layer"] == 2


def test_run_table_lists_runs_from_attributes(store):
    table = fg.store.run_table(store)
    assert list(table.columns) == ["id", "prompt", "seed", "words", "intervention", "complete", "steps_written",
                                   "num_steps", "created", "model_class", "size_bytes", "problem"]
    assert table.id.tolist() == sorted(RUNS)
    assert table.complete.tolist() == [True, True, False]
    assert table.steps_written.tolist() == [3, 2, 2]
    assert table.num_steps.tolist() == [3, 2, 4]
    assert table.words.tolist() == [RUNS[r][0] for r in sorted(RUNS)]
    assert table.intervention.tolist()[0] == "none" and "Scale" in table.intervention.tolist()[1]
    for run_id, size in zip(table.id, table.size_bytes, strict=True):
        on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(store / run_id) for f in fs)
        assert 0 < size <= on_disk and on_disk - size < 64 * 1024  # metadata rewritten after the size was taken


def test_run_info_for_sweeps(store, tmp_path):
    info = fg.store.run_info(store, "a-two-words")
    assert info["complete"] is True and info["steps_written"] == 3 and info["words"] == ["dog", "fence"]
    assert fg.store.run_info(store, "c-cut-short")["complete"] is False
    assert fg.store.run_info(store, "missing") is None
    assert fg.store.run_info(tmp_path / "no-store.zarr", "a") is None


def test_open_run_and_open_runs_agree(store):
    ds = fg.open_runs(store, lazy=False)
    for r in RUNS:
        one = fg.open_run(store, run=r)
        words = list(one.word.values)
        stacked = ds.sel(run=r).isel(word=slice(0, len(words)), step=slice(0, one.sizes["step"]))
        xr.testing.assert_equal(stacked.word_mass.drop_vars(stacked.word_mass.coords),
                                one.word_mass.drop_vars(one.word_mass.coords))
