"""`compare`: two sets of runs (with / without an intervention) over the layers, and their difference."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ..store.select import select_steps
from .data import (
    _as_runs,
    _edit_note,
    _edit_scopes,
    _layer_means,
    _layers,
    _samples,
    _steps_text,
    _weak_note,
    _weak_positions,
)
from .layout import (
    CI,
    COLUMN_WIDTH,
    DPI,
    LABELS,
    MAX_SAMPLES,
    PAGE_WIDTH,
    SHORT,
    _figure,
    _finish,
    _label,
    _layer_axis,
    _legend_above,
    _mark_layers,
    _profile_line,
    _style,
    _title,
    _upper_first,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def compare(
    ds_a: Any,
    ds_b: Any,
    var: str = "similarity",
    labels: Sequence[str] = ("without", "with"),
    branch: str = "cond",
    steps: Any = None,
    path: str | os.PathLike | None = None,
    *,
    weak: Any = None,
    max_samples: int = MAX_SAMPLES,
    n_boot: int = 1000,
    dpi: float = DPI,
    title: str | None = None,
) -> Figure:
    """Before / after (e.g. without and with Focal Guidance): both per-layer profiles, and their difference.

    Top: the per-layer mean of `var` for `ds_a` and `ds_b` with 95 % CIs (as in `layer_profile`). Bottom:
    b − a per layer. When the two inputs hold the same samples (same runs, steps, words, frames: an A/B with
    the same seeds), the difference is paired sample by sample and gets its own 95 % CI; otherwise it is the
    difference of the two means, without a band (the title says which). When an input is an edited run, the
    title says where its edit acts (from its ``intervention`` attribute) and, when those are not the steps
    drawn, that the means are over the figure's steps: pass ``steps=`` the edit's steps (e.g. ``(0.0, 0.5)``)
    to average only where it acts.

    Example:
        >>> import fglens as fg
        >>> a = fg.testing.tiny_run("wan", words=("dog",), maps=False)
        >>> b = fg.testing.tiny_run("wan", words=("dog",), maps=False, edit=fg.Scale(["dog"], 2.0))
        >>> fig = fg.plot.compare(a, b, var="word_mass", labels=("plain", "dog x2"))
        >>> fig.axes[1].get_ylabel()
        'Δ word mass (dog x2 − plain)'
    """
    runs_a, runs_b = _as_runs(ds_a), _as_runs(ds_b)
    layers = _layers(runs_a[0])
    if _layers(runs_b[0]) != layers:
        raise ValueError(f"compare needs the same layers in both inputs: a has {layers}, b has {_layers(runs_b[0])}")
    labels = tuple(labels)
    if len(labels) != 2:
        raise ValueError(f"labels must be two names (a, b); got {labels}")
    table_a, unit_a = _samples(runs_a, var, branch, steps, max_samples)
    table_b, unit_b = _samples(runs_b, var, branch, steps, max_samples)
    keys = [c for c in table_a.columns if c != "value"]
    paired = (
        list(table_b.columns) == list(table_a.columns)
        and len(table_a) == len(table_b)
        and table_a[keys].reset_index(drop=True).equals(table_b[keys].reset_index(drop=True))
    )
    weak_pos, responsive_pos = _weak_positions(weak, layers)
    width = COLUMN_WIDTH if len(layers) <= 8 else PAGE_WIDTH
    with _style() as sns:
        palette = sns.color_palette("colorblind")
        fig = _figure(width, 5.0)
        top, bottom = fig.subplots(2, 1, sharex=True)
        for ax in (top, bottom):
            _mark_layers(ax, weak_pos, responsive_pos, legend=ax is top)
        _profile_line(sns, top, table_a, palette[0], labels[0], n_boot)
        _profile_line(sns, top, table_b, palette[1], labels[1], n_boot, linestyle="--")
        top.set_ylabel(_label(LABELS.get(var, var), 28))
        _legend_above(top)
        bottom.axhline(0.0, color="0.3", linewidth=0.8)
        if paired:
            diff = table_a[keys].copy()
            diff["value"] = table_b["value"].to_numpy() - table_a["value"].to_numpy()
            _profile_line(sns, bottom, diff, "0.15", None, n_boot)
            how = f"paired sample by sample, {CI}"
        else:
            delta = _layer_means(table_b, len(layers)) - _layer_means(table_a, len(layers))
            bottom.plot(np.arange(len(layers)), delta, color="0.15", marker="o", markersize=4, linewidth=1.5)
            how = "difference of means (inputs not paired)"
        bottom.set_ylabel(_label(f"Δ {SHORT.get(var, var)} ({labels[1]} − {labels[0]})", 28))
        for ax in (top, bottom):
            ax.set_xlabel("layer (depth order)" if ax is bottom else "")
            _layer_axis(ax, layers)
        over = unit_a if unit_a == unit_b else f"{unit_a} ({labels[0]}), {unit_b} ({labels[1]})"
        steps_text = _steps_text(runs_a[0], steps)
        _title(fig, title, f"{_upper_first(SHORT.get(var, var))}: {labels[0]} vs {labels[1]}",
               f"{branch} branch, {steps_text}", f"mean, {CI} over {over}", f"Δ: {how}",
               *_compare_edit_note(runs_a, runs_b, labels, branch, steps, steps_text),
               *_weak_note(weak, runs_a[0], steps))
        return _finish(fig, path, dpi)


def _compare_edit_note(runs_a: list[xr.Dataset], runs_b: list[xr.Dataset], labels: Sequence[str], branch: str,
                       steps: Any, steps_text: str) -> list[str]:
    """Title lines saying where each input's intervention acts and, when that is not every step drawn, that the
    means are over the figure's steps (the steps after an edit differ too, through the latents)."""
    lines = []
    drawn = select_steps(runs_a[0], steps)
    for label, runs in zip(labels, (runs_a, runs_b), strict=True):
        scopes = _edit_scopes(runs[0], branch)
        note = _edit_note(runs[0], branch)
        if note is None:
            continue
        acted = sorted({s for _, _, at in scopes for s in at})
        line = f"edit of “{label}”: {note}"
        if acted != drawn:
            line += f"; means over {steps_text}"
        lines.append(line)
    return lines


