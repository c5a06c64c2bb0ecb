"""`layer_profile`: the paper's central figure, one statistic per panel over the layers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .data import _as_runs, _layers, _samples, _steps_text, _weak_note, _weak_positions
from .layout import (
    CI,
    COLUMN_WIDTH,
    DPI,
    LABELS,
    MAX_SAMPLES,
    PAGE_WIDTH,
    PROFILE_VARS,
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
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def layer_profile(
    ds: Any,
    weak: Any = None,
    vars: Sequence[str] = ("similarity", "morans_i"),
    branch: str = "cond",
    steps: Any = None,
    path: str | os.PathLike | None = None,
    *,
    max_samples: int = MAX_SAMPLES,
    n_boot: int = 1000,
    width: float | None = None,
    dpi: float = DPI,
    title: str | None = None,
) -> Figure:
    """The paper's central figure: the per-layer mean of each statistic with a 95 % confidence band.

    One panel per variable, sharing the layer axis (layers in depth order, named). The line is the mean over
    all samples (runs x steps x words x frames; frames, then steps, averaged first when a layer would get more
    than `max_samples` rows — the title says which); the band is seaborn's 95 % bootstrap interval of that
    mean. Semantic-weak layers are shaded, responsive layers marked with a triangle; when `weak` is a
    `WeakLayers` found over other steps than the figure's (`fg.find_weak_layers` scores the first half by
    default), the title says which.

    Args:
        ds: a run, runs stacked on a ``run`` dim, or a list of runs (see the module docstring).
        weak: a `fglens.diagnose.WeakLayers` (its ``.weak`` and ``.responsive``), a list of weak layer names
            (or indices), or None.
        vars: per-layer statistics to plot, one panel each (e.g. ``"similarity"``, ``"morans_i"``,
            ``"word_mass"``, ``"entropy"``, ``"text_share"``).
        branch: ``"cond"`` or ``"uncond"``.
        steps: None (all), a ``(start, stop)`` fraction pair of floats, or step indices.
        path: save the figure there (format from the suffix).
        max_samples: rows per layer given to the bootstrap before frames / steps are averaged.
        n_boot: bootstrap resamples.
        width: figure width in inches (default: a column for up to 8 layers, else a page).

    Example:
        >>> import fglens as fg
        >>> ds = fg.testing.tiny_run("wan", words=("dog",), maps=False)
        >>> fig = fg.plot.layer_profile(ds, weak=["blocks.1"], steps=(0.0, 0.5))
        >>> fig.axes[-1].get_xlabel()
        'layer (depth order)'
    """
    runs = _as_runs(ds)
    layers = _layers(runs[0])
    if isinstance(vars, str):
        vars = (vars,)
    vars = tuple(vars)
    if not vars:
        raise ValueError(f"vars must name at least one statistic, e.g. {PROFILE_VARS}")
    weak_pos, responsive_pos = _weak_positions(weak, layers)
    tables = [_samples(runs, var, branch, steps, max_samples) for var in vars]
    width = width or (COLUMN_WIDTH if len(layers) <= 8 else PAGE_WIDTH)
    with _style() as sns:
        fig = _figure(width, 1.0 + 2.0 * len(vars))
        axes = fig.subplots(len(vars), 1, sharex=True, squeeze=False)[:, 0]
        palette = sns.color_palette("colorblind", len(vars))
        for i, (ax, var, (table, _)) in enumerate(zip(axes, vars, tables, strict=True)):
            _mark_layers(ax, weak_pos, responsive_pos, legend=i == 0)
            _profile_line(sns, ax, table, palette[i], None, n_boot)
            ax.set_ylabel(_label(LABELS.get(var, var)))
            ax.set_xlabel("layer (depth order)" if ax is axes[-1] else "")
            _layer_axis(ax, layers)
            if i == 0 and (weak_pos or responsive_pos):
                _legend_above(ax)
        names = " and ".join(SHORT.get(v, v) for v in vars)
        units = [unit for _, unit in tables]
        groups: dict[str, list[str]] = {}
        for v, u in zip(vars, units, strict=True):
            groups.setdefault(u, []).append(SHORT.get(v, v))
        over = units[0] if len(groups) == 1 else "; ".join(f"{', '.join(g)}: {u}" for u, g in groups.items())
        _title(fig, title, f"Per-layer {names}", f"{branch} branch, {_steps_text(runs[0], steps)}",
               f"mean, {CI} over {over}", *_weak_note(weak, runs[0], steps))
        return _finish(fig, path, dpi)


