"""``fglens bench --plot PATH``: the CPU benchmark in one figure. Per model (a row each): recorder bytes against N
on log-log axes with the least-squares lines (slopes and R² in the legend), and the time and FLOP ratios over plain
against N. Drawn on a matplotlib `Figure` (no pyplot, no display: the Agg canvas renders the file)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .analysis import Record, by_model, index, memory_fit, ratio
from .report import split_benchmarks

#: the modes drawn, in order, with their legend names
PLOT_MODES = {"traced": "traced (fglens)", "traced_ref": "traced_ref (fglens)", "naive": "naive (control)",
              "fg": "fg (FocalGuidance)"}
_TITLES = {"wan": "Wan stack", "hunyuan": "joint proxy (HunyuanVideo)"}


def plot_benchmark(records: Sequence[Record], path: str | os.PathLike | None = None):
    """Draw the recording benchmark's records (one row per model); save to `path` if given (format from its
    extension: png, pdf, svg, ...). Returns the matplotlib `Figure`.

    Example:
        >>> recs = [{"model": "wan", "n_tokens": n, "mode": m, "flops": f * n, "wall_s": w * n,
        ...          "peak_bytes": b, "recorder_bytes": rb}
        ...         for n in (960, 1920, 3840)
        ...         for m, f, w, b, rb in (("plain", 10, 1.0, 100, 0), ("traced", 10.1, 1.1, 100 + 8 * n, 8 * n),
        ...                                ("naive", 15, 3.0, 100 + n * n, n * n))]
        >>> fig = plot_benchmark(recs)
        >>> [ax.get_title() for ax in fig.axes]
        ['Wan stack: recorder memory', 'Wan stack: time / plain', 'Wan stack: FLOPs / plain']
        >>> sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts())
        ['naive (control): slope 2.00, R² 1.000', 'traced (fglens): slope 1.00, R² 1.000']
    """
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = {m: split_benchmarks(g)[0] for m, g in by_model(records).items()}
    groups = {m: g for m, g in groups.items() if any(r["mode"] != "plain" for r in g)}
    if not groups:
        raise ValueError("no recording-benchmark records to plot (plain and at least one other mode are needed)")
    palette = dict(zip(PLOT_MODES, sns.color_palette("colorblind", len(PLOT_MODES)), strict=True))
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(15, 4.2 * len(groups)), layout="constrained")
        FigureCanvasAgg(fig)
        axes = np.atleast_2d(fig.subplots(len(groups), 3, squeeze=False))
        for row, (model, group) in zip(axes, groups.items(), strict=True):
            _draw_memory(row[0], group, palette)
            for ax, key, what in ((row[1], "wall_s", "time"), (row[2], "flops", "FLOPs")):
                _draw_ratio(ax, group, key, palette)
                ax.set_ylabel(f"{what} / plain")
                ax.set_title(f"{_TITLES.get(model, model)}: {what} / plain")
            row[0].set_title(f"{_TITLES.get(model, model)}: recorder memory")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _draw_memory(ax, group: Sequence[Record], palette) -> None:
    for mode, name in PLOT_MODES.items():
        fit = memory_fit(group, mode)
        if fit is None:
            continue
        points = sorted((r["n_tokens"], r["recorder_bytes"]) for r in group if r["mode"] == mode
                        and r.get("recorder_bytes") is not None and r["recorder_bytes"] > 0)
        n = np.array([p[0] for p in points], dtype=float)
        b = np.array([p[1] for p in points], dtype=float) / 2**20
        r2 = "" if fit["r2"] is None else f", R² {fit['r2']:.3f}"
        ax.plot(n, b, "o", color=palette[mode])
        line = np.exp(fit["intercept"]) * n ** fit["slope"] / 2**20
        ax.plot(n, line, "-", color=palette[mode], label=f"{name}: slope {fit['slope']:.2f}{r2}")
    ax.set_yscale("log")
    _n_axis(ax, sorted({r["n_tokens"] for r in group}))
    ax.set_ylabel("extra peak memory over plain (MiB)")
    ax.legend(loc="best", fontsize="small")


def _draw_ratio(ax, group: Sequence[Record], key: str, palette) -> None:
    idx = index(group)
    ns = sorted({n for n, _ in idx})
    for mode, name in PLOT_MODES.items():
        pts = [(n, q) for n in ns if (q := ratio(idx, n, mode, key)) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", color=palette[mode], label=name)
    ax.axhline(1.0, color="0.4", lw=0.8, ls="--")
    _n_axis(ax, ns)
    ax.legend(loc="best", fontsize="small")


def _n_axis(ax, ns: Sequence[int]) -> None:
    """A log-scaled N axis ticked at the measured token counts."""
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("video tokens N")
