"""Bootstrap confidence intervals over items (seeds nested), paired differences, per-category summaries.

**Resampling unit: the item.** Scores of one item under different seeds are not independent (same image, same
prompt), so seeds are not resampled as if they were separate items. Each item's value is its mean over seeds
and the bootstrap resamples items with replacement (a cluster bootstrap: the seed-to-seed noise is inside each
item's mean, so it is carried into the interval). Intervals come from `scipy.stats.bootstrap` (BCa by default).

**Paired differences.** Baseline and intervention are generated with the same seeds, so the difference is
taken per item and seed (``intervention − baseline``), averaged over seeds within the item, and bootstrapped
over items in the same way; pairs where either side is NaN are left out.

An item whose seeds are all NaN is left out (``n_items`` counts those kept); with fewer than two items there is
no interval (NaN); identical values give a zero-width interval.

Example:
    >>> import numpy as np
    >>> from fglens.eval.stats import bootstrap_ci
    >>> scores = np.array([[0.5, 0.7], [0.6, 0.6], [0.9, 0.7], [0.4, 0.6]])   # 4 items x 2 seeds
    >>> mean, low, high = bootstrap_ci(scores, confidence=0.9, n_resamples=2000)
    >>> round(mean, 3), bool(low < mean < high)
    (0.625, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr

#: how the intervals are computed, stored with every summary
RESAMPLING = ("items resampled with replacement (cluster bootstrap); each item's value is its mean over seeds; "
              "paired differences are intervention - baseline per item and seed, averaged over seeds")


def _item_means(scores: np.ndarray) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"scores must be [items] or [items, seeds]; got shape {array.shape}")
    keep = ~np.isnan(array).all(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(array[keep], axis=1)


def bootstrap_ci(
    scores: np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int | None = 0,
) -> tuple[float, float, float]:
    """Mean over items of each item's mean over seeds, and its bootstrap interval over items.

    Args:
        scores: ``[items, seeds]`` (or ``[items]``); NaN where a score is missing.
        confidence: the interval's confidence level, in (0, 1).
        n_resamples: bootstrap resamples.
        method: ``"BCa"``, ``"percentile"`` or ``"basic"`` (as `scipy.stats.bootstrap`).
        seed: seeds the resampling, so a summary is reproducible (None: fresh randomness).

    Returns:
        ``(mean, low, high)``; NaN interval with fewer than two items, NaN everything with none.
    """
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if method not in ("BCa", "percentile", "basic"):
        raise ValueError(f"method must be 'BCa', 'percentile' or 'basic'; got {method!r}")
    values = _item_means(scores)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if values.size < 2:
        return mean, float("nan"), float("nan")
    if np.ptp(values) == 0:
        return mean, mean, mean
    result = stats.bootstrap((values,), np.mean, n_resamples=int(n_resamples), confidence_level=confidence,
                             method=method, vectorized=True, rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return mean, float(low), float(high)


def paired_difference(
    baseline: np.ndarray, intervention: np.ndarray, **kwargs
) -> tuple[float, float, float]:
    """Mean paired difference ``intervention − baseline`` (same items, same seeds) and its bootstrap interval
    over items; keyword arguments as `bootstrap_ci`.

    Example:
        >>> import numpy as np
        >>> base = np.array([[0.5, 0.6], [0.4, 0.5], [0.7, 0.6]])
        >>> round(paired_difference(base, base + 0.1)[0], 9)
        0.1
    """
    base, treat = np.asarray(baseline, dtype=np.float64), np.asarray(intervention, dtype=np.float64)
    if base.shape != treat.shape:
        raise ValueError(f"paired scores need the same shape (items, seeds); got {base.shape} and {treat.shape}")
    return bootstrap_ci(treat - base, **kwargs)


def summarize(
    results: xr.Dataset,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int | None = 0,
) -> xr.Dataset:
    """Per category (and ``"all"``, every item pooled), per condition and per metric (each scorer and
    ``total``): mean with its interval, and the paired difference of each other condition from the baseline with
    its interval and the relative gain ``mean_condition / mean_baseline − 1``.

    Args:
        results: the results Dataset of `fglens.eval.run_eval` (``score`` over item, seed, condition, scorer;
            ``total`` over item, seed, condition; ``category`` along item).

    Returns:
        A Dataset with dims ``category, condition, metric``: ``mean``, ``low``, ``high``, ``n_items``;
        ``contrast_diff``, ``contrast_low``, ``contrast_high``, ``contrast_gain``, ``contrast_pairs`` over
        ``category, contrast, metric`` (each condition other than the baseline, minus the baseline) when there is a
        baseline and another condition; and ``diff``, ``diff_low``, ``diff_high``, ``gain``, ``n_pairs`` over
        ``category, metric``, the ``intervention`` contrast, when that condition is present.
    """
    kwargs = dict(confidence=confidence, n_resamples=n_resamples, method=method, seed=seed)
    data = xr.concat([results["score"], results["total"].expand_dims(scorer=["total"])], dim="scorer")
    data = data.rename(scorer="metric").transpose("item", "seed", "condition", "metric")
    categories = list(dict.fromkeys(str(c) for c in results["category"].values)) + ["all"]
    conditions = [str(c) for c in results["condition"].values]
    metrics = [str(m) for m in data["metric"].values]
    shape = (len(categories), len(conditions), len(metrics))
    mean, low, high, n_items = (np.full(shape, np.nan) for _ in range(4))
    contrasts = [c for c in conditions if c != "baseline"] if "baseline" in conditions else []
    cshape = (len(categories), len(contrasts), len(metrics))
    cdiff, clow, chigh, cgain, cpairs = (np.full(cshape, np.nan) for _ in range(5))
    category = np.asarray([str(c) for c in results["category"].values])
    for a, cat in enumerate(categories):
        rows = np.ones(len(category), bool) if cat == "all" else category == cat
        block = data.values[rows]  # [items, seeds, conditions, metrics]
        for b in range(len(conditions)):
            for c in range(len(metrics)):
                mean[a, b, c], low[a, b, c], high[a, b, c] = bootstrap_ci(block[:, :, b, c], **kwargs)
                n_items[a, b, c] = _item_means(block[:, :, b, c]).size
        base = conditions.index("baseline") if contrasts else None
        for k, name in enumerate(contrasts):
            treat = conditions.index(name)
            for c in range(len(metrics)):
                d = block[:, :, treat, c] - block[:, :, base, c]
                cdiff[a, k, c], clow[a, k, c], chigh[a, k, c] = bootstrap_ci(d, **kwargs)
                cpairs[a, k, c] = _item_means(d).size
                with np.errstate(divide="ignore", invalid="ignore"):
                    cgain[a, k, c] = mean[a, treat, c] / mean[a, base, c] - 1.0
    coords = {"category": np.asarray(categories, dtype=object), "condition": np.asarray(conditions, dtype=object),
              "metric": np.asarray(metrics, dtype=object)}
    dims = ("category", "condition", "metric")
    out = xr.Dataset({"mean": (dims, mean), "low": (dims, low), "high": (dims, high), "n_items": (dims, n_items)},
                     coords=coords)
    if contrasts:
        cdims = ("category", "contrast", "metric")
        out = out.assign_coords(contrast=np.asarray(contrasts, dtype=object)).assign(
            contrast_diff=(cdims, cdiff), contrast_low=(cdims, clow), contrast_high=(cdims, chigh),
            contrast_gain=(cdims, cgain), contrast_pairs=(cdims, cpairs))
    if "intervention" in contrasts:  # the intervention's contrast under its historical names
        one = out.sel(contrast="intervention", drop=True)
        out = out.assign(diff=one["contrast_diff"], diff_low=one["contrast_low"], diff_high=one["contrast_high"],
                         gain=one["contrast_gain"], n_pairs=one["contrast_pairs"])
    out.attrs.update(confidence=float(confidence), n_resamples=int(n_resamples), method=method,
                     bootstrap_seed=-1 if seed is None else int(seed), resampling=RESAMPLING)
    return out


def category_table(summary: xr.Dataset, metrics: Sequence[str] | None = None):
    """The summary as a long `pandas.DataFrame`: one row per category and metric, columns per condition
    (``baseline``, ``baseline_low``, ...), and the paired difference columns when present: ``diff``, ``diff_low``,
    ``diff_high``, ``gain`` (intervention − baseline) and ``<condition>-baseline`` (``_low``, ``_high``, ``_gain``)
    for every condition."""
    import pandas as pd

    metrics = list(metrics) if metrics is not None else [str(m) for m in summary["metric"].values]
    rows = []
    for cat in summary["category"].values:
        for metric in metrics:
            row = {"category": str(cat), "metric": metric}
            for cond in summary["condition"].values:
                cell = summary.sel(category=cat, condition=cond, metric=metric)
                row[str(cond)] = float(cell["mean"])
                row[f"{cond}_low"] = float(cell["low"])
                row[f"{cond}_high"] = float(cell["high"])
                row["n_items"] = int(cell["n_items"]) if not np.isnan(cell["n_items"]) else 0
            if "diff" in summary:
                cell = summary.sel(category=cat, metric=metric)
                row.update(diff=float(cell["diff"]), diff_low=float(cell["diff_low"]),
                           diff_high=float(cell["diff_high"]), gain=float(cell["gain"]))
            if "contrast_diff" in summary:
                for contrast in summary["contrast"].values:
                    cell = summary.sel(category=cat, metric=metric, contrast=contrast)
                    name = f"{contrast}-baseline"
                    row.update({name: float(cell["contrast_diff"]), f"{name}_low": float(cell["contrast_low"]),
                                f"{name}_high": float(cell["contrast_high"]),
                                f"{name}_gain": float(cell["contrast_gain"])})
            rows.append(row)
    return pd.DataFrame(rows)
