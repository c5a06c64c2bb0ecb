"""Tests of fglens.diagnose: Semantic-Weak Layer detection (docs/concepts.md) on synthetic runs with planted dips,
checked against a by-hand median / MAD computation, and end to end on the tiny pipelines."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import xarray as xr

import fglens as fg
from fglens import testing
from fglens.diagnose import WeakLayers, find_weak_layers

L = 20  # layers of the synthetic runs: exclude_edges=0.1 leaves out layers 0, 1 and 18, 19


# --------------------------------------------------------------------------------------------------------------
# synthetic runs and independent references
# --------------------------------------------------------------------------------------------------------------
def base_profile(n_layers: int = L, seed: int = 0, level: float = 0.4) -> np.ndarray:
    """Unremarkable layers: two tight clusters around `level`, so every robust z lies well inside (-1, 1)."""
    rng = np.random.default_rng(seed)
    signs = np.where(np.arange(n_layers) % 2 == 0, 1.0, -1.0)
    return level + 0.01 * signs * (1 + 0.2 * rng.uniform(size=n_layers))


def synth_run(
    sim: np.ndarray,
    moran: np.ndarray | None = None,
    *,
    uncond_sim: np.ndarray | None = None,
    words=("dog", "jumps"),
    frames: int = 3,
    layers=None,
    noise: float = 0.002,
    seed: int = 0,
    run_id: str = "run-a",
    num_steps: int | None = None,
) -> tuple[xr.Dataset, dict[str, np.ndarray]]:
    """A run Dataset with the dims of a recorded one; `sim` / `moran` are per (step, layer) or per layer.

    Returns the Dataset and the raw arrays (branch, step, layer, word, frame) it was built from, for references.
    """
    rng = np.random.default_rng(seed)
    sim = np.asarray(sim, dtype=np.float64)
    sim = np.broadcast_to(sim, (4, sim.shape[-1])) if sim.ndim == 1 else sim
    n_steps, n_layers = sim.shape
    moran = np.full_like(sim, 0.3) if moran is None else np.broadcast_to(np.asarray(moran, np.float64), sim.shape)
    shape = (2, n_steps, n_layers, len(words), frames)

    def cube(cond, uncond):
        out = np.full(shape, np.nan)
        out[0] = cond[:, :, None, None] + noise * rng.standard_normal(shape[1:])
        if uncond is not None:
            out[1] = np.broadcast_to(uncond, sim.shape)[:, :, None, None] + noise * rng.standard_normal(shape[1:])
        return out

    arrays = {"similarity": cube(sim, uncond_sim), "morans_i": cube(moran, None)}
    layers = [f"blocks.{i}" for i in range(n_layers)] if layers is None else list(layers)
    dims = ("branch", "step", "layer", "word", "frame")
    ds = xr.Dataset(
        {name: (dims, a.astype(np.float32)) for name, a in arrays.items()},
        coords={"branch": ["cond", "uncond"], "step": np.arange(n_steps), "layer": layers, "word": list(words),
                "frame": np.arange(frames), "timestep": ("step", np.linspace(1000, 0, n_steps))},
        attrs={"run": run_id, "num_steps": n_steps if num_steps is None else num_steps, "model_family": "wan"},
    )
    return ds, {name: a.astype(np.float32).astype(np.float64) for name, a in arrays.items()}


def median(values) -> float:
    """The median by hand: the middle of the sorted values (the mean of the two middle ones for an even count)."""
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def ref_z(x) -> list[float]:
    """Robust z-scores (x - median) / (1.4826 MAD) over the finite values, by hand."""
    finite = [float(v) for v in x if not math.isnan(v)]
    m = median(finite)
    mad = median([abs(v - m) for v in finite])
    return [(float(v) - m) / (1.4826 * mad) for v in x]


def ref_raw(array: np.ndarray, steps, branch: int = 0) -> np.ndarray:
    """Per-layer mean over the chosen steps of one branch, all words and frames, NaN skipped (by hand)."""
    out = []
    for layer in range(array.shape[2]):
        vals = [v for s in steps for v in array[branch, s, layer].ravel() if not math.isnan(v)]
        out.append(sum(vals) / len(vals) if vals else math.nan)
    return np.array(out)


def names(idx, prefix: str = "blocks.") -> list[str]:
    return [f"{prefix}{i}" for i in idx]


# --------------------------------------------------------------------------------------------------------------
# the rule on planted dips
# --------------------------------------------------------------------------------------------------------------
def test_finds_exactly_the_planted_layers_and_the_responsive_ones():
    sim = base_profile()
    sim[[6, 7, 12]] -= 0.2     # the planted weak layers
    sim[[9, 15]] += [0.1, 0.2]  # the planted responsive layers: 15 best, then 9
    ds, raw = synth_run(sim)
    premise = ref_z(ref_raw(raw["similarity"], [0, 1]))
    assert [i for i, v in enumerate(premise) if v < -1] == [6, 7, 12]  # the fixture plants what it says

    weak = find_weak_layers(ds, top_k=2)
    assert isinstance(weak, WeakLayers)
    assert weak.weak == names([6, 7, 12])
    assert weak.responsive == names([15, 9])
    assert weak.layers == names(range(L))


def test_z_scores_equal_a_by_hand_median_and_mad():
    rng = np.random.default_rng(3)
    sim = 0.3 + 0.05 * rng.standard_normal(L)  # an ordinary noisy profile: nothing planted
    ds, raw = synth_run(sim, noise=0.01)
    weak = find_weak_layers(ds, steps=(0.0, 0.5))
    expected_raw = ref_raw(raw["similarity"], [0, 1])
    np.testing.assert_allclose(weak.raw.values, expected_raw, rtol=1e-12)
    np.testing.assert_allclose(weak.scores.values, ref_z(expected_raw), rtol=1e-10)
    np.testing.assert_allclose(weak.components.sel(score="similarity").values, ref_z(expected_raw), rtol=1e-10)
    assert weak.scores.dims == ("layer",) and list(weak.scores.layer.values) == names(range(L))
    # the rule applied to the reference z: below -1 and not among the first or last 2 of 20 layers
    z = ref_z(expected_raw)
    assert weak.weak == [f"blocks.{i}" for i in range(2, L - 2) if z[i] < -1]
    ranked = sorted((i for i in range(L) if names([i])[0] not in weak.weak), key=lambda i: -z[i])
    assert weak.responsive == names(ranked[:3])


def test_an_even_number_of_layers_uses_the_mean_of_the_middle_pair():
    sim = np.array([0.0, 1.0, 2.0, 3.0, 10.0, -20.0])  # median 1.5, |dev| = 1.5 .5 .5 1.5 8.5 21.5 -> MAD 1.5
    ds, _ = synth_run(sim, noise=0.0)
    weak = find_weak_layers(ds, exclude_edges=0.0)
    expected = (sim - 1.5) / (1.4826 * 1.5)
    np.testing.assert_allclose(weak.scores.values, expected, rtol=1e-6)
    assert weak.weak == ["blocks.5"]  # blocks.0: z = -1.5 / 2.22 = -0.67


@pytest.mark.parametrize(("exclude", "found"), [(0.0, [0, 1, 10, 18, 19]), (0.1, [10]), (0.05, [1, 10, 18]),
                                                (0.3, [10]), (0.49, [])])
def test_edges_are_excluded(exclude, found):
    sim = base_profile()
    sim[[0, 1, 10, 18, 19]] -= 0.2
    weak = find_weak_layers(synth_run(sim)[0], exclude_edges=exclude)
    assert weak.weak == names(found)
    n_edge = math.ceil(exclude * L - 1e-9)
    assert weak.params["edges"] == names(list(range(n_edge)) + list(range(L - n_edge, L)))
    assert list(weak.scores.edge.values) == [i < n_edge or i >= L - n_edge for i in range(L)]


def test_the_threshold_z():
    sim = base_profile()
    sim[5] -= 0.03  # a shallow dip
    sim[12] -= 0.3  # a deep one
    ds, raw = synth_run(sim)
    z = ref_z(ref_raw(raw["similarity"], [0, 1]))
    assert -3 < z[5] < -1 and z[12] < -3
    assert find_weak_layers(ds, z=-1.0).weak == names([5, 12])
    assert find_weak_layers(ds, z=-3.0).weak == names([12])
    assert find_weak_layers(ds, z=-1000.0).weak == []
    assert find_weak_layers(ds, z=0).params["z"] == 0.0


def test_top_k():
    sim = base_profile()
    sim[[3, 8, 11]] += [0.3, 0.1, 0.2]
    sim[9] -= 0.3
    ds, _ = synth_run(sim)
    assert find_weak_layers(ds, top_k=0).responsive == []
    assert find_weak_layers(ds, top_k=1).responsive == ["blocks.3"]
    assert find_weak_layers(ds, top_k=3).responsive == names([3, 11, 8])
    everything = find_weak_layers(ds, top_k=100)
    assert len(everything.responsive) == L - 1 and "blocks.9" not in everything.responsive  # weak is never a source
    assert everything.weak == ["blocks.9"]


def test_responsive_layers_are_the_top_k_highest_z_among_the_layers_not_weak():
    """Issue 12, item 13: 6 layers, 2 weak, top_k=5 gives the 4 others, best first; code and docs say the same."""
    sim = base_profile(6)
    sim[[2, 3]] -= 0.3
    sim[5] += 0.05
    ds, _ = synth_run(sim)
    weak = find_weak_layers(ds, top_k=5, exclude_edges=0.0)
    assert weak.weak == ["blocks.2", "blocks.3"]
    assert weak.responsive[0] == "blocks.5" and sorted(weak.responsive) == names([0, 1, 4, 5])
    assert find_weak_layers(ds, top_k=2, exclude_edges=0.0).responsive == weak.responsive[:2]
    from pathlib import Path

    concepts = " ".join((Path(__file__).parents[1] / "docs" / "concepts.md").read_text().split())
    assert "the `top_k` (default 3) highest z_l among the layers that are not weak" in concepts
    assert "weak layers excluded" in " ".join(fg.diagnose.__doc__.split())


def test_steps_select_the_part_of_the_schedule():
    sim = np.tile(base_profile(), (4, 1))
    sim[2:, 10] -= 0.3  # the dip lives in the late steps only
    ds, _ = synth_run(sim)
    assert find_weak_layers(ds, steps=(0.0, 0.5)).weak == []
    assert find_weak_layers(ds, steps=(0.5, 1.0)).weak == ["blocks.10"]
    assert find_weak_layers(ds, steps=[2, 3]).weak == ["blocks.10"]
    assert find_weak_layers(ds, steps=range(2)).weak == []
    assert find_weak_layers(ds, steps=[3]).params["steps_used"] == {"run-a": [3]}
    assert find_weak_layers(ds, steps=None).params["steps_used"] == {"run-a": [0, 1, 2, 3]}
    assert find_weak_layers(ds, steps=(0.0, 0.5)).params["steps_used"] == {"run-a": [0, 1]}
    assert find_weak_layers(ds, steps=(0.5, 1.0)).params["steps"] == [0.5, 1.0]
    assert find_weak_layers(ds, steps=[0.5, 1.0]).weak == ["blocks.10"]  # a list of floats is a fraction too


def test_fractions_use_the_runs_schedule_length():
    # a run cut short: 4 of its 8 steps recorded; the first half of the schedule is steps 0..3, all recorded
    ds, _ = synth_run(base_profile(), num_steps=8)
    assert find_weak_layers(ds).params["steps_used"] == {"run-a": [0, 1, 2, 3]}
    with pytest.raises(ValueError, match="selects none of the recorded steps"):
        find_weak_layers(ds, steps=(0.5, 1.0))
    # without the attribute, the steps recorded define the schedule
    del ds.attrs["num_steps"]
    assert find_weak_layers(ds).params["steps_used"] == {"run-a": [0, 1]}


def test_branch():
    sim = base_profile()
    uncond = base_profile(seed=1)
    uncond[8] -= 0.3
    ds, _ = synth_run(sim, uncond_sim=uncond)
    assert find_weak_layers(ds).weak == []
    assert find_weak_layers(ds, branch="uncond").weak == ["blocks.8"]
    # the uncond branch of Moran's I was not recorded (all NaN): a clear error, not a silent NaN result
    with pytest.raises(ValueError, match="branch 'uncond' holds no morans_i values"):
        find_weak_layers(ds, branch="uncond", score="both")
    with pytest.raises(ValueError, match=r"branch 'uncond' was not recorded .*fg\.Record\(branches="):
        find_weak_layers(ds.sel(branch=["cond"]), branch="uncond")


def test_score_selects_the_statistic_and_both_averages_the_z_scores():
    sim = base_profile()
    moran = base_profile(seed=2, level=0.5)
    moran[13] -= 0.4
    sim[4] -= 0.3
    ds, raw = synth_run(sim, moran)
    assert find_weak_layers(ds, score="similarity").weak == ["blocks.4"]
    assert find_weak_layers(ds, score="morans_i").weak == ["blocks.13"]
    both = find_weak_layers(ds, score="both")
    z_s = ref_z(ref_raw(raw["similarity"], [0, 1]))
    z_m = ref_z(ref_raw(raw["morans_i"], [0, 1]))
    np.testing.assert_allclose(both.components.sel(score="similarity").values, z_s, rtol=1e-10)
    np.testing.assert_allclose(both.components.sel(score="morans_i").values, z_m, rtol=1e-10)
    np.testing.assert_allclose(both.scores.values, (np.array(z_s) + np.array(z_m)) / 2, rtol=1e-10)
    assert both.weak == [f"blocks.{i}" for i in range(2, L - 2) if (z_s[i] + z_m[i]) / 2 < -1]
    assert both.raw.dims == ("score", "layer") and list(both.raw.score.values) == ["similarity", "morans_i"]
    assert both.params["combine"] == "mean of the robust z-scores"


def test_nan_entries_are_skipped_and_an_all_nan_layer_is_reported():
    moran = base_profile(level=0.5)
    moran[11] -= 0.3
    ds, raw = synth_run(base_profile(), moran)
    rng = np.random.default_rng(5)
    holes = rng.uniform(size=ds.morans_i.shape) < 0.3  # constant maps give NaN Moran's I
    holes[0, :, 11, 0, 0] = False  # keep the planted layer scored
    ds["morans_i"] = ds.morans_i.where(~holes)
    raw["morans_i"][holes] = np.nan
    weak = find_weak_layers(ds, score="morans_i")
    expected = ref_raw(raw["morans_i"], [0, 1])
    np.testing.assert_allclose(weak.raw.values, expected, rtol=1e-6)
    np.testing.assert_allclose(weak.scores.values, ref_z(expected), rtol=1e-5)
    assert weak.weak == ["blocks.11"]

    ds["morans_i"][0, :, 7] = np.nan  # a layer whose maps were all constant in these steps
    raw["morans_i"][0, :, 7] = np.nan
    with pytest.warns(UserWarning, match=r"without a morans_i score.*blocks\.7"):
        weak = find_weak_layers(ds, score="morans_i", top_k=L)
    assert math.isnan(weak.scores.sel(layer="blocks.7")) and "blocks.7" not in weak.weak + weak.responsive
    z = ref_z(ref_raw(raw["morans_i"], [0, 1]))  # median and MAD over the 19 layers with a score
    np.testing.assert_allclose(weak.scores.values, z, rtol=1e-5)
    assert "blocks.11" in weak.weak and weak.weak == [f"blocks.{i}" for i in range(2, L - 2) if z[i] < -1]
    assert weak.to_dict()["scores"]["blocks.7"] is None


def test_many_runs_weigh_equally_whatever_their_words():
    sim_a, sim_b = base_profile(seed=0), base_profile(seed=1)
    sim_a[9] -= 0.3
    sim_b[9] -= 0.1
    a, raw_a = synth_run(sim_a, words=("dog",), seed=1, run_id="a")
    b, raw_b = synth_run(sim_b, words=("cat", "sits", "mat", "red"), seed=2, run_id="b")
    weak = find_weak_layers([a, b])
    per_run = (ref_raw(raw_a["similarity"], [0, 1]) + ref_raw(raw_b["similarity"], [0, 1])) / 2
    np.testing.assert_allclose(weak.raw.values, per_run, rtol=1e-12)
    # pooling all words would weigh run b four times as much: a different (wrong) answer
    pooled = np.array([np.concatenate([raw_a["similarity"][0, :2, i].ravel(),
                                       raw_b["similarity"][0, :2, i].ravel()]).mean() for i in range(L)])
    assert np.abs(weak.raw.values - pooled).max() > 0.01
    assert weak.weak == ["blocks.9"]
    assert weak.params["n_runs"] == 2 and weak.params["runs"] == ["a", "b"]
    assert find_weak_layers((a, b)).weak == weak.weak  # a tuple is fine too
    twice = find_weak_layers([a, a])  # the same run twice: kept apart in the record of steps used
    assert twice.params["runs"] == ["a#0", "a#1"] and set(twice.params["steps_used"]) == {"a#0", "a#1"}


def stack_runs(runs: list[xr.Dataset]) -> xr.Dataset:
    """Runs stacked on `run` the way fg.open_runs lays them out: word slots, per-run labels, NaN padding."""
    slots = max(r.sizes["word"] for r in runs)
    padded = []
    for r in runs:
        labels = [str(w) for w in r.word.values] + [""] * (slots - r.sizes["word"])
        p = r.drop_attrs().assign_coords(word=np.arange(r.sizes["word"])).reindex(word=np.arange(slots))
        padded.append(p.assign_coords(word_label=("word", labels)))
    out = xr.concat(padded, dim="run", coords="different", compat="equals", join="outer")
    return out.assign_coords(run=[r.attrs["run"] for r in runs], prompt=("run", ["p"] * len(runs)))


def test_a_run_dim_dataset_equals_the_list_of_its_runs():
    sim_a, sim_b = base_profile(seed=0), base_profile(seed=1)
    sim_a[14] -= 0.3
    a, _ = synth_run(sim_a, words=("dog",), seed=1, run_id="a")
    b, _ = synth_run(sim_b, words=("cat", "sits", "mat"), seed=2, run_id="b")
    stacked = stack_runs([a, b])
    assert stacked.similarity.dims[0] == "run" and bool(stacked.similarity.isnull().any())  # padded slots
    from_stack, from_list = find_weak_layers(stacked), find_weak_layers([a, b])
    np.testing.assert_allclose(from_stack.scores.values, from_list.scores.values, rtol=1e-12)
    assert from_stack.weak == from_list.weak == ["blocks.14"]
    assert from_stack.params["runs"] == ["a", "b"]


def test_a_run_dim_dataset_with_a_shorter_run_uses_each_runs_own_steps():
    a, _ = synth_run(base_profile(), run_id="a")  # 4 steps
    short = np.tile(base_profile(seed=1), (2, 1))
    b, _ = synth_run(short, run_id="b")  # 2 steps, NaN-padded to 4 when stacked
    del a.attrs["num_steps"], b.attrs["num_steps"]
    stacked = stack_runs([a, b])
    assert stacked.sizes["step"] == 4
    weak = find_weak_layers(stacked)
    assert weak.params["steps_used"] == {"a": [0, 1], "b": [0]}
    # a per-run num_steps coordinate wins
    weak = find_weak_layers(stacked.assign_coords(num_steps=("run", [4, 4])))
    assert weak.params["steps_used"] == {"a": [0, 1], "b": [0, 1]}


def test_wan22_experts_are_z_scored_and_edge_trimmed_separately():
    n = 10
    high, low = base_profile(n, seed=0, level=0.4), base_profile(n, seed=1, level=0.1)  # expert 2 lower overall
    high[4] -= 0.3
    low[6] -= 0.3
    layers = names(range(n)) + names(range(n), "transformer_2.blocks.")
    ds, raw = synth_run(np.concatenate([high, low]), layers=layers)
    weak = find_weak_layers(ds)
    assert weak.weak == ["blocks.4", "transformer_2.blocks.6"]  # one z over all 20 would call all of expert 2 weak
    z = ref_z(ref_raw(raw["similarity"], [0, 1])[:n]) + ref_z(ref_raw(raw["similarity"], [0, 1])[n:])
    np.testing.assert_allclose(weak.scores.values, z, rtol=1e-10)
    assert weak.params["stacks"] == {"transformer": layers[:n], "transformer_2": layers[n:]}
    assert weak.params["edges"] == ["blocks.0", "blocks.9", "transformer_2.blocks.0", "transformer_2.blocks.9"]
    assert list(weak.scores.transformer.values) == ["transformer"] * n + ["transformer_2"] * n


def test_wan22_expert_that_did_not_run_in_the_chosen_steps_is_left_out_with_a_warning():
    n = 10
    sim = np.tile(np.concatenate([base_profile(n), base_profile(n, seed=1)]), (4, 1))
    sim[:2, n:] = np.nan  # high-noise expert in steps 0-1, low-noise expert in steps 2-3, as a Wan2.2 run records
    sim[2:, :n] = np.nan
    sim[:2, 5] -= 0.3
    layers = names(range(n)) + names(range(n), "transformer_2.blocks.")
    ds, _ = synth_run(sim, layers=layers)
    with pytest.warns(UserWarning, match="stack 'transformer_2' has no similarity values"):
        weak = find_weak_layers(ds)
    assert weak.weak == ["blocks.5"]
    assert bool(weak.scores.sel(layer=layers[n:]).isnull().all())
    assert all(name in layers[:n] for name in weak.responsive)


def test_hunyuan_double_then_single_blocks_are_one_stack():
    layers = names(range(4), "double.") + names(range(6), "single.")
    sim = base_profile(10)
    sim[[0, 4, 9]] -= 0.3
    weak = find_weak_layers(synth_run(sim, layers=layers)[0])
    assert weak.params["stacks"] == {"transformer": layers}
    assert weak.params["edges"] == ["double.0", "single.5"]
    assert weak.weak == ["single.0"]


def test_an_edge_layer_below_the_threshold_is_neither_weak_nor_responsive():
    """Issue 13, item 7: a Wan2.2 expert's last layer at z = -25 was listed as "responsive (edge)" because the edge
    rule kept it out of the weak layers and top_k=3 took every layer left. A layer below the threshold is never a
    cache source; the summary says why it is not weak."""
    sim = base_profile(6)
    sim[5] -= 0.3  # the last layer: far below the others, but an edge layer
    ds, _ = synth_run(sim)
    weak = find_weak_layers(ds, top_k=10)
    assert float(weak.scores.sel(layer="blocks.5")) < -10 and bool(weak.scores.edge.sel(layer="blocks.5"))
    assert "blocks.5" not in weak.weak and "blocks.5" not in weak.responsive
    assert sorted(weak.responsive) == names([0, 1, 2, 3, 4])  # every other layer: all at z >= -1
    row = next(line for line in weak.summary().splitlines() if line.startswith("blocks.5"))
    assert row.endswith("below threshold (edge)")
    assert "blocks.5" in find_weak_layers(ds, exclude_edges=0.0).weak  # without the edge rule it is weak


def test_equal_scores_warn_and_mark_no_weak_layers():
    ds, _ = synth_run(np.full(L, 0.4), noise=0.0)
    with pytest.warns(UserWarning, match="MAD of similarity .* is 0"):
        weak = find_weak_layers(ds, z=0.0)
    assert weak.weak == [] and (weak.scores.values == 0).all()


# --------------------------------------------------------------------------------------------------------------
# results: to_dict, summary, repr
# --------------------------------------------------------------------------------------------------------------
def test_to_dict_is_json_and_records_every_parameter():
    sim = base_profile()
    sim[7] -= 0.3
    weak = find_weak_layers(synth_run(sim)[0], score="both", steps=[0, 1], z=-1.5, exclude_edges=0.2, top_k=4)
    d = json.loads(json.dumps(weak.to_dict(), allow_nan=False))
    assert d["weak"] == ["blocks.7"] and len(d["responsive"]) == 4
    assert d["layers"] == names(range(L)) and set(d["raw"]) == set(d["components"]) == {"similarity", "morans_i"}
    assert d["scores"]["blocks.7"] == pytest.approx(float(weak.scores.sel(layer="blocks.7")))
    p = d["params"]
    assert (p["score"], p["steps"], p["z"], p["exclude_edges"], p["top_k"], p["branch"], p["mad_scale"]) == (
        "both", [0, 1], -1.5, 0.2, 4, "cond", 1.4826)


def test_summary_and_repr_are_readable():
    sim = base_profile()
    sim[7] -= 0.3
    weak = find_weak_layers(synth_run(sim)[0], top_k=1)
    text = weak.summary()
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "transformer", "similarity", "z", "role"]
    assert len(lines) == L + 2
    row = next(line for line in lines if line.startswith("blocks.7 "))
    assert row.split()[-1] == "weak"
    assert lines[1].endswith("(edge)")
    assert "blocks.7" in repr(weak) and "DataArray" not in repr(weak)


# --------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_run():
    return synth_run(base_profile())[0]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(score="entropy"),
     r"unknown score 'entropy'; accepted: 'similarity', 'morans_i', 'similarity_morans_i', 'response', "
     r"'response_morans_i', 'both'"),
    (dict(z=0.5), "z must be a finite number <= 0"),
    (dict(z=float("nan")), "z must be a finite number <= 0"),
    (dict(z="low"), "z must be a finite number <= 0"),
    (dict(exclude_edges=0.5), r"exclude_edges must be a fraction in \[0, 0.5\)"),
    (dict(exclude_edges=-0.1), r"exclude_edges must be a fraction in \[0, 0.5\)"),
    (dict(top_k=-1), "top_k must be an integer >= 0"),
    (dict(top_k=2.0), "top_k must be an integer >= 0"),
    (dict(branch="both"), "unknown branch 'both'; accepted: 'cond', 'uncond'"),
    (dict(steps=(0.6, 0.2)), "0 <= start <= stop <= 1"),
    (dict(steps=(0.0, 0.5, 1.0)), r"a fraction range of steps is a \(start, stop\) pair"),
    (dict(steps=[-1]), "step indices must be >= 0"),
    (dict(steps=[0, 7]), r"steps \[7\] were not recorded in run run-a; recorded steps: \[0, 1, 2, 3\]"),
    (dict(steps=(0.5, 0.5)), "selects none of the recorded steps"),
    (dict(rule="permutation"), "unknown rule 'permutation'; accepted: 'robust_z', 'bootstrap'"),
    (dict(rule="bootstrap"), "rule='bootstrap' resamples the runs .* needs at least 2 of them.* got 1"),
    (dict(confidence=0.0), r"confidence must be a fraction in \(0, 1\]"),
    (dict(confidence=float("nan")), r"confidence must be a fraction in \(0, 1\]"),
    (dict(n_boot=0), "n_boot must be an integer >= 1"),
    (dict(seed=1.5), "seed must be an integer"),
])
def test_bad_parameters_are_clear_errors(plain_run, kwargs, message):
    with pytest.raises(ValueError, match=message):
        find_weak_layers(plain_run, **kwargs)


def test_bad_runs_are_clear_errors(plain_run, tmp_path):
    with pytest.raises(ValueError, match=r"has no 'similarity' variable .*fg\.Record\(words="):
        find_weak_layers(plain_run.drop_vars("similarity"))
    with pytest.raises(ValueError, match="has no 'morans_i' variable"):
        find_weak_layers(plain_run.drop_vars("morans_i"), score="both")
    other = plain_run.isel(layer=slice(0, 10)).assign_attrs(run="run-b")
    with pytest.raises(ValueError, match="runs must have the same layers: run run-a has .* run run-b has"):
        find_weak_layers([plain_run, other])
    with pytest.raises(ValueError, match="too few layers to z-score similarity .* 2 with a score, at least 3"):
        find_weak_layers(plain_run.isel(layer=[4, 5]))
    early_nan = plain_run.copy(deep=True)
    early_nan["similarity"][:, :2] = np.nan
    with pytest.raises(ValueError, match="no layer has a similarity score"):
        find_weak_layers(early_nan, steps=(0.0, 0.5))
    with pytest.raises(TypeError, match="steps must be None, a"):
        find_weak_layers(plain_run, steps="early")
    with pytest.raises(TypeError, match="takes a run xarray.Dataset .*, a Dataset with a 'run' dim .*, a list"):
        find_weak_layers({"similarity": 1})
    with pytest.raises(TypeError, match="item 1 of the runs is a DataArray"):
        find_weak_layers([plain_run, plain_run.similarity])
    with pytest.raises(ValueError, match="got no runs"):
        find_weak_layers([])
    with pytest.raises(FileNotFoundError, match="no fglens store"):
        find_weak_layers(tmp_path / "missing.zarr")


def test_the_input_is_not_modified(plain_run):
    before = plain_run.copy(deep=True)
    find_weak_layers(plain_run, score="both")
    xr.testing.assert_identical(plain_run, before)


# --------------------------------------------------------------------------------------------------------------
# end to end on the tiny pipelines
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_pipes():
    return {"wan": testing.tiny_wan_i2v_pipeline(), "hunyuan": testing.tiny_hunyuan_i2v_pipeline()}


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_a_real_tiny_run_gives_layers_that_plug_into_focal_guidance(tiny_pipes, family, tmp_path):
    pipe, store = tiny_pipes[family], tmp_path / "runs.zarr"
    ds = testing.tiny_run(family, steps=2, maps=False, pipe=pipe, store=store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a real run has a score for every layer
        weak = fg.find_weak_layers(ds, score="both", z=0.0, exclude_edges=0.0, top_k=2)
    layers = [str(x) for x in ds.layer.values]
    assert weak.layers == layers
    assert set(weak.weak) <= set(layers) and set(weak.responsive) <= set(layers)
    assert weak.weak and weak.responsive  # z < 0 over 4 layers: some below the median, the rest responsive
    assert np.isfinite(weak.scores.values).all()
    edit = fg.FocalGuidance(cache=fg.CacheTransfer(src=weak.responsive, dst=weak.weak), layers=weak.weak)
    edited = testing.tiny_run(family, steps=2, maps=False, pipe=pipe, edit=edit, store=store)
    spec = json.loads(edited.attrs["intervention"])
    assert spec["parts"][0]["dst"] == weak.weak and spec["parts"][0]["src"] == weak.responsive

    # the store's path, and fg.open_runs over it, read both runs: the same as the list of the two Datasets
    from_list = fg.find_weak_layers([ds, edited], exclude_edges=0.0)
    for other in (store, fg.open_runs(store)):
        result = fg.find_weak_layers(other, exclude_edges=0.0)
        assert result.params["n_runs"] == 2
        np.testing.assert_allclose(result.scores.values, from_list.scores.values, rtol=1e-6)
        assert result.weak == from_list.weak and result.responsive == from_list.responsive


# -- the bootstrap rule: a dip larger than the run-to-run noise ----------------------------------------------------


def _noisy_runs(profile, n_runs: int, noise: float, seed: int) -> list[xr.Dataset]:
    """`n_runs` one-step runs whose per-layer similarity is `profile` plus independent Gaussian noise per run."""
    rng = np.random.default_rng(seed)
    layers = [f"blocks.{i}" for i in range(len(profile))]
    return [xr.Dataset({"similarity": xr.DataArray(
        (np.asarray(profile) + rng.normal(0.0, noise, len(profile))).reshape(1, 1, -1, 1, 1),
        dims=("branch", "step", "layer", "word", "frame"), coords={"branch": ["cond"], "layer": layers})})
        for _ in range(n_runs)]


def test_bootstrap_names_no_layer_of_a_flat_profile_that_the_robust_z_rule_flags():
    """A flat profile plus noise (12 runs x 12 layers, 100 data sets): the robust z names a weak layer in most data
    sets (some layer is always below -1), the bootstrap rule in at most 5 % (docs/concepts.md: 2 of 100 measured),
    and says so."""
    named_z = named_boot = 0
    for data_seed in range(100):
        runs = _noisy_runs([0.3] * 12, 12, 0.05, data_seed)
        named_z += bool(find_weak_layers(runs, steps=None).weak)
        boot = find_weak_layers(runs, steps=None, rule="bootstrap", n_boot=200)
        named_boot += bool(boot.weak)
        conf = boot.scores.confidence
        assert ((conf >= 0) & (conf <= 1)).all() and (conf.where(boot.scores.edge, drop=True) == 0).all()  # edges
        if not boot.weak:
            assert boot.summary().splitlines()[-1].startswith(
                "no weak layer: no layer away from the edges is below z<-1.0 in at least 95% of 200 resamples")
    assert named_z >= 50 and named_boot <= 5, (named_z, named_boot)


def test_bootstrap_keeps_a_real_dip_with_full_confidence():
    for data_seed in range(20):
        runs = _noisy_runs([0.3] * 5 + [0.2] + [0.3] * 6, 12, 0.05, 1000 + data_seed)
        boot = find_weak_layers(runs, steps=None, rule="bootstrap", n_boot=200, seed=3)
        assert boot.weak == ["blocks.5"], (data_seed, boot.summary())
        assert float(boot.scores.confidence.sel(layer="blocks.5")) >= 0.95
        assert boot.params["rule"] == "bootstrap" and boot.params["n_boot"] == 200 and boot.params["seed"] == 3
        again = find_weak_layers(runs, steps=None, rule="bootstrap", n_boot=200, seed=3)
        np.testing.assert_array_equal(again.scores.confidence.values, boot.scores.confidence.values)
    assert "confidence" in boot.summary().splitlines()[0]
    assert json.loads(json.dumps(boot.to_dict()))["params"]["confidence"] == 0.95


def test_the_robust_z_rule_says_when_it_names_no_layer(plain_run):
    weak = find_weak_layers(plain_run, z=-50.0)
    assert weak.weak == [] and weak.summary().splitlines()[-1] == (
        "no weak layer: no layer away from the edges has z below -50.0")
