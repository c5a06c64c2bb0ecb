"""Recorded runs are ordinary xarray: string labels plot, `where`, go to pandas and to netCDF (issue 13).

zarr v3 returns stored strings as numpy's ``StringDType`` and the writer keeps labels as ``object``; both broke
xarray's plotting (non-numeric coordinates), ``where`` (dtype promotion) and ``to_netcdf``. Every reader of
fglens data hands out ``<U`` strings; the on-disk format is unchanged, so stores written before still open.
"""

import json

import matplotlib
import numpy as np
import pytest
import xarray as xr
import zarr

import fglens as fg
from fglens.store.reader import ordinary_strings

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, wan_i2v):
    store = tmp_path_factory.mktemp("interop") / "runs.zarr"
    memory = fg.testing.tiny_run("wan", words=("dog", "jumps"), steps=2, maps=False, pipe=wan_i2v)
    fg.testing.tiny_run("wan", words=("dog", "jumps"), steps=2, maps=False, pipe=wan_i2v, store=store)
    fg.testing.tiny_run("wan", words=("dog", "jumps"), steps=2, maps=False, pipe=wan_i2v, store=store, seed=1)
    return store, memory


def _runs(recorded):
    store, memory = recorded
    name = fg.store.list_runs(store)[0]
    return {"open_run": fg.open_run(store, name), "memory": memory,
            "lazy": fg.open_run(store, name, load=False)}


@pytest.mark.parametrize("which", ["open_run", "memory", "lazy"])
def test_labels_are_ordinary_strings(recorded, which):
    ds = _runs(recorded)[which]
    for name in ("branch", "layer", "word"):
        assert ds[name].dtype.kind == "U", (name, ds[name].dtype)
    assert list(ds.word.values) == ["dog", "jumps"]


@pytest.mark.parametrize("which", ["open_run", "memory", "lazy"])
def test_user_guide_lines_plot_where_pandas_and_netcdf(recorded, which, tmp_path):
    import matplotlib.pyplot as plt

    ds = _runs(recorded)[which]
    da = ds.word_mass.sel(branch="cond", word="dog").mean("frame")       # (step, layer), as in the user guide
    mesh = da.plot()
    assert mesh.axes.get_xlabel() == "layer" and [t.get_text() for t in mesh.axes.get_xticklabels()]
    plt.close("all")
    ds.text_share.sel(branch="cond").mean(("step", "frame")).plot.line(x="layer")
    plt.close("all")
    kept = ds.word_mass.where(ds.layer != "blocks.0")
    assert np.isnan(kept.sel(layer="blocks.0")).all() and not np.isnan(kept.sel(layer="blocks.1")).any()
    labels = ds.layer.where(ds.layer != "blocks.0")                          # strings through where
    assert list(labels.values[1:]) == ["blocks.1", "blocks.2", "blocks.3"]
    frame = ds.word_mass.to_dataframe()
    assert set(frame.index.get_level_values("word")) == {"dog", "jumps"}
    assert len(frame.xs("blocks.1", level="layer")) == len(frame) // 4
    path = tmp_path / "run.nc"
    ds.drop_vars("reference_image").drop_attrs().to_netcdf(path)
    back = xr.open_dataset(path).load()
    xr.testing.assert_allclose(back.word_mass, ds.word_mass.load())
    assert list(back.layer.values) == list(ds.layer.values)


def test_open_runs_labels_are_ordinary_strings_and_plot(recorded):
    import matplotlib.pyplot as plt

    runs = fg.open_runs(recorded[0])
    for name in ("branch", "layer", "word_label", "run", "prompt"):
        assert runs[name].dtype.kind == "U", (name, runs[name].dtype)
    runs.word_mass.sel(branch="cond", word=0).mean(("run", "frame")).plot()
    plt.close("all")
    assert runs.word_label.where(runs.word_label == "dog").notnull().sum() == 2
    assert len(runs.word_mass.to_dataframe()) == runs.word_mass.size


def test_the_on_disk_format_is_unchanged_so_older_stores_open(recorded):
    """The writer still stores labels as zarr strings: what older fglens wrote is what this one reads."""
    store, _ = recorded
    name = fg.store.list_runs(store)[0]
    raw = zarr.open_group(store / name, mode="r")
    assert raw["layer"][...].dtype.kind == "T"                          # as zarr returns it, then and now
    assert fg.open_run(store, name).layer.dtype.kind == "U"


def test_eval_results_reason_where_missing(tmp_path):
    """docs/eval.md's ``ds.reason.where(ds.missing)`` on results written like `run_eval` writes them."""
    from fglens.eval.runner import RESULTS_ATTR, open_results

    reason = np.array([["", "missing: no judge"]], dtype=object)
    ds = xr.Dataset(
        {"score": (("item", "scorer"), [[0.5, np.nan]]), "missing": (("item", "scorer"), [[False, True]]),
         "reason": (("item", "scorer"), reason)},
        coords={"item": np.array(["a"], dtype=object), "scorer": np.array(["motion", "vlm_judge"], dtype=object)},
        attrs={RESULTS_ATTR: json.dumps(1)})
    ds.to_zarr(tmp_path / "results.zarr", mode="w", zarr_format=3, consolidated=False)
    back = open_results(tmp_path / "results.zarr")
    why = back.reason.where(back.missing)
    assert why.sel(scorer="vlm_judge").item() == "missing: no judge" and why.sel(scorer="motion").isnull().all()
    assert back.scorer.dtype.kind == "U"


def test_ordinary_strings_leaves_mixed_objects_alone():
    ds = xr.Dataset(coords={"seed": ("run", np.array([1, None], dtype=object)), "w": ["a"]})
    out = ordinary_strings(ds)
    assert out.seed.dtype == object and out.w.dtype.kind == "U"
