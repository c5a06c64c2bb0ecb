"""Bootstrap intervals of fglens.eval.stats: exact means, edge cases, and coverage of the true mean at the
stated rate on synthetic scores with item effects and seed noise (the structure of real results)."""

import numpy as np
import pytest
import xarray as xr
from scipy import stats as sps

from fglens.eval.stats import bootstrap_ci, category_table, paired_difference, summarize

# coverage runs: 300 repetitions at 90 % -> the hit count is Binomial(300, 0.9) when the intervals are right;
# accept within 3.3 standard deviations (two-sided p ~ 0.001), i.e. 0.843 .. 0.957
REPS, LEVEL = 300, 0.90
TOL = 3.3 * np.sqrt(LEVEL * (1 - LEVEL) / REPS)


def _scores(rng, n_items, n_seeds, mean, concentration=8.0, noise=20.0):
    """Scores in [0, 1]: each item's true score p_i ~ Beta with mean `mean`, each seed's score ~ Beta with mean
    p_i. The population mean of an item's expected score is exactly `mean`."""
    p = rng.beta(mean * concentration, (1 - mean) * concentration, size=n_items)
    return rng.beta(p[:, None] * noise, (1 - p[:, None]) * noise, size=(n_items, n_seeds))


def test_mean_is_the_mean_of_item_means_and_nan_items_are_dropped():
    scores = np.array([[0.2, 0.4], [0.9, np.nan], [np.nan, np.nan], [0.5, 0.7]])
    mean, low, high = bootstrap_ci(scores, n_resamples=500)
    assert mean == pytest.approx(np.mean([0.3, 0.9, 0.6]))
    assert low < mean < high


def test_edge_cases_one_item_no_items_identical_values_and_bad_arguments():
    assert np.isnan(bootstrap_ci(np.array([[0.5, 0.7]]))[1:]).all()
    assert bootstrap_ci(np.array([[0.5, 0.7]]))[0] == pytest.approx(0.6)
    assert np.isnan(bootstrap_ci(np.full((3, 2), np.nan))).all()
    assert bootstrap_ci(np.full((4, 3), 0.25)) == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(np.ones((3, 2)), confidence=95)
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(np.ones((3, 2)), method="bca")
    with pytest.raises(ValueError, match="same shape"):
        paired_difference(np.ones((3, 2)), np.ones((3, 3)))


def test_interval_matches_scipy_on_item_means():
    rng = np.random.default_rng(3)
    scores = _scores(rng, 12, 3, 0.6)
    _, low, high = bootstrap_ci(scores, confidence=0.9, n_resamples=2000, method="percentile", seed=7)
    ref = sps.bootstrap((scores.mean(1),), np.mean, confidence_level=0.9, n_resamples=2000, method="percentile",
                        rng=np.random.default_rng(7)).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high))


def test_intervals_cover_the_true_mean_at_the_stated_rate():
    rng = np.random.default_rng(2026)
    hits = 0
    for rep in range(REPS):
        _, low, high = bootstrap_ci(_scores(rng, 30, 3, 0.6), confidence=LEVEL, n_resamples=1000, seed=rep)
        hits += low <= 0.6 <= high
    assert abs(hits / REPS - LEVEL) <= TOL, f"coverage {hits / REPS:.3f} at {LEVEL}"


def test_the_coverage_check_catches_the_wrong_resampling_unit():
    """Positive control: resampling the seeds as if they were separate items ignores that seeds of one item are
    correlated; its intervals are too narrow and the coverage check above rejects them."""
    rng = np.random.default_rng(2026)
    hits = 0
    for rep in range(REPS):
        flat = _scores(rng, 30, 3, 0.6).reshape(-1, 1)  # 90 "items" of one seed each
        _, low, high = bootstrap_ci(flat, confidence=LEVEL, n_resamples=1000, seed=rep)
        hits += low <= 0.6 <= high
    assert hits / REPS < LEVEL - TOL


def test_paired_difference_intervals_cover_the_true_difference():
    rng = np.random.default_rng(7)
    hits = 0
    for rep in range(REPS):
        base = _scores(rng, 30, 3, 0.5)
        # the intervention adds a per-item effect with mean 0.05 plus per-seed noise, on the same seeds
        treat = base + rng.normal(0.05, 0.04, size=(30, 1)) + rng.normal(0, 0.03, size=(30, 3))
        mean, low, high = paired_difference(base, treat, confidence=LEVEL, n_resamples=1000, seed=rep)
        assert mean == pytest.approx((treat - base).mean())
        hits += low <= 0.05 <= high
    assert abs(hits / REPS - LEVEL) <= TOL, f"coverage {hits / REPS:.3f} at {LEVEL}"


def _results(rng):
    categories = ["dynamic_attribute"] * 4 + ["camera_motion"] * 3
    score = rng.uniform(size=(7, 2, 2, 2))
    score[0, :, :, 1] = np.nan  # one item never scored by the second scorer
    ds = xr.Dataset({"score": (("item", "seed", "condition", "scorer"), score)},
                    coords={"item": [f"i{k}" for k in range(7)], "seed": [0, 1],
                            "condition": ["baseline", "intervention"], "scorer": ["motion", "vlm_judge"],
                            "category": ("item", categories)})
    ds["total"] = ds["score"].mean("scorer", skipna=True)
    return ds, np.asarray(categories)


def test_summarize_per_category_means_differences_and_gain():
    ds, categories = _results(np.random.default_rng(0))
    out = summarize(ds, n_resamples=500)
    assert out["mean"].dims == ("category", "condition", "metric")
    assert list(out["category"].values) == ["dynamic_attribute", "camera_motion", "all"]
    assert list(out["metric"].values) == ["motion", "vlm_judge", "total"]
    score = ds["score"].values
    for cat in ("dynamic_attribute", "camera_motion", "all"):
        rows = np.ones(7, bool) if cat == "all" else categories == cat
        for k, metric in enumerate(["motion", "vlm_judge"]):
            block = score[rows][..., k]  # item, seed, condition
            keep = ~np.isnan(block[..., 0]).all(1)
            base = block[keep, :, 0].mean(1).mean()
            treat = block[keep, :, 1].mean(1).mean()
            cell = out.sel(category=cat, metric=metric)
            assert float(cell["mean"].sel(condition="baseline")) == pytest.approx(base)
            assert float(cell["diff"]) == pytest.approx((block[keep, :, 1] - block[keep, :, 0]).mean())
            assert float(cell["gain"]) == pytest.approx(treat / base - 1)
            assert int(cell["n_items"].sel(condition="baseline")) == keep.sum()
    assert out.attrs["resampling"].startswith("items resampled")
    table = category_table(out)
    assert len(table) == 9 and {"baseline", "intervention_low", "diff_high", "gain"} <= set(table.columns)


def test_summarize_without_intervention_has_no_differences():
    ds, _ = _results(np.random.default_rng(1))
    out = summarize(ds.sel(condition=["baseline"]), n_resamples=200)
    assert "diff" not in out and out.sizes["condition"] == 1
