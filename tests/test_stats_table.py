"""The statistics table is the one place a variable is declared: the recorder, the schema, the run attributes and the
figures all read it, and each stored variable says what it is (`long_name`, `description`)."""

import pytest
import xarray as xr

import fglens as fg
from fglens import plot
from fglens.stats.table import STATISTICS, Statistic, maps, recordable
from fglens.store import DEFINITIONS, VARIABLE_DIMS
from fglens.store.schema import FLAG_ATTRS
from fglens.trace.record import DEFAULT_STATS, STATS, WORD_STATS


def test_every_reader_of_the_table_agrees_with_it():
    # the statistics, and the flags the tracer writes beside them (layers a step cache skipped)
    assert VARIABLE_DIMS == {**{n: s.dims for n, s in STATISTICS.items()}, **dict.fromkeys(FLAG_ATTRS, ())}
    assert all(DEFINITIONS[n] == a["description"] for n, a in FLAG_ATTRS.items())
    assert all(DEFINITIONS[n] == s.definition for n, s in STATISTICS.items())
    assert STATS == {n: s.kinds for n, s in STATISTICS.items() if s.recordable}
    assert set(WORD_STATS) == {n for n, s in STATISTICS.items() if "word" in s.dims}
    assert DEFAULT_STATS == ("word_mass", "morans_i", "similarity", "text_share", "text_mass", "image_mass", "entropy")
    assert set(plot.LABELS) == set(recordable())
    assert plot.SIGNED == {"morans_i", "similarity", "similarity_morans_i", "similarity_map", "response",
                           "response_morans_i", "response_map"}
    assert set(maps()) == {"word_map", "similarity_map", "response_map"}


def test_a_statistic_needs_a_known_source_and_reduction():
    with pytest.raises(ValueError, match="source must be one of"):
        Statistic("x", ("frame",), frozenset({"text"}), "values", "frame_mean", "d", "l", "s")
    with pytest.raises(ValueError, match="reduce one of"):
        Statistic("x", ("frame",), frozenset({"text"}), "entropy", "median", "d", "l", "s")


@pytest.fixture(scope="module")
def run_dataset(tmp_path_factory):
    store = tmp_path_factory.mktemp("table") / "runs.zarr"
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    record = fg.Record(words=["dog"], stats=["word_mass", "similarity_morans_i"], maps=["similarity_map"])
    with fg.trace(pipe, record=record, store=store) as run:
        pipe(**fg.testing.tiny_call_kwargs("wan", steps=1))
    return run.dataset, store


def test_stored_variables_carry_their_long_name_and_description(run_dataset):
    ds, store = run_dataset
    on_disk = fg.open_run(store)
    for data in (ds, on_disk, xr.open_zarr(next(p for p in store.iterdir() if p.is_dir()))):
        assert set(data.data_vars) >= {"word_mass", "similarity_morans_i", "similarity_map"}
        assert "word_map" not in data  # maps=[...] keeps only the maps it names
        for var in ("word_mass", "similarity_morans_i", "similarity_map"):
            assert data[var].attrs["long_name"] == STATISTICS[var].long_name
            assert data[var].attrs["description"] == STATISTICS[var].definition


def test_the_similarity_map_reduces_to_the_recorded_similarity(run_dataset):
    """Two statistics from one per-token source: the frame mean of the stored map is the stored `similarity`
    (both are recorded from the same tensor; the float64 reference of each is in test_trace_wan)."""
    ds, _ = run_dataset
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    with fg.trace(pipe, record=fg.Record(words=["dog"], stats=["similarity"], maps=["similarity_map"])) as run:
        pipe(**fg.testing.tiny_call_kwargs("wan", steps=1))
    got = run.dataset
    xr.testing.assert_allclose(got.similarity_map.mean(["y", "x"]), got.similarity, rtol=1e-5, atol=1e-6)


def test_record_maps_takes_true_or_names():
    assert fg.Record(maps=True).map_names == ("word_map",)
    assert fg.Record(maps=False).map_names == ()
    assert fg.Record(maps="similarity_map").map_names == ("similarity_map",)
    assert fg.Record(maps=["word_map", "similarity_map"]).spec()["maps"] == ["word_map", "similarity_map"]
    with pytest.raises(ValueError, match="unknown map.*'word_mass'.*takes True/False or names"):
        fg.Record(maps=["word_mass"])
    with pytest.raises(TypeError, match="maps takes True/False or names"):
        fg.Record(maps=3)
