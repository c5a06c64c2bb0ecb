"""The paper's figures, drawn with seaborn: per-layer profiles, layer x step heatmaps, word maps, the balance
of the conditions, before/after comparisons and CLIP anchors.

Every function returns a `matplotlib.figure.Figure` and, given ``path=``, saves it there (any format matplotlib
knows from the suffix: .png, .pdf, .svg, ...; parent folders are created; ``dpi=200`` by default). Figures are
built as bare `Figure` objects, not through pyplot: nothing is shown, no global figure is opened or closed,
and the matplotlib backend is left as it is (a notebook's inline backend displays the returned figure).

Accepted run inputs (the ``ds`` argument): one run `xarray.Dataset`; a Dataset with a ``run`` dim (`fg.open_runs`:
runs stacked on ``run``, words possibly NaN-padded, word names in a ``word_label`` coordinate); or a list of
either. Runs are joined as rows of samples, never as arrays, so their words may differ; their layers must
agree. ``branch="cond"`` by default; ``steps`` selects as in `fg.find_weak_layers` and `fg.Where`: a pair of
floats is a half-open fraction of the schedule (``(0.0, 0.5)``: the first half), ints are step indices, None
is every recorded step. Titles say which branch and steps a figure shows.

Confidence bands are seaborn's 95 % bootstrap intervals of the mean (``errorbar=("ci", 95)``, fixed seed) over
the samples named in each figure's title: runs x steps x words x frames, with frames (then steps) averaged
first when a layer would otherwise get more than ``max_samples`` rows. Samples within a run are correlated
(neighbouring frames and steps), so the band is a measure of spread across what was recorded, narrower than
a band over independent prompts would be; record several prompts and seeds for a band over prompts.

Layout (checked by ``tests/test_plot_layout.py`` on Wan2.1, Wan2.2 and HunyuanVideo runs): legends sit above
the top panel, never over the data; titles and labels wrap between words; a figure grows until each vertical
label fits its panel. On a heatmap of an edited run the cells its intervention acts on are outlined.

Example:
    >>> import fglens as fg
    >>> ds = fg.testing.tiny_run("wan", words=("dog", "fence"))
    >>> fig = fg.plot.layer_profile(ds, weak=["blocks.2"])
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['text–visual similarity S', "Moran's I of the word map"]
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from .stats.table import STATISTICS, recordable
from .store.select import same_layers, select_steps, split_runs

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["anchor", "compare", "condition_balance", "layer_profile", "layer_step_heatmap", "word_maps"]

#: axis labels of the recorded statistics (what the number means; declared in `fglens.stats.table`)
LABELS: dict[str, str] = {name: s.long_name for name, s in recordable().items()}
#: short names for titles
SHORT: dict[str, str] = {name: s.short for name, s in recordable().items()}
#: statistics whose sign means something (cosine similarity, spatial autocorrelation): coloured with a diverging
#: map centred on zero
SIGNED = frozenset(name for name, s in STATISTICS.items() if s.signed)


def _upper_first(text: str) -> str:
    """``"Moran's I"`` stays ``"Moran's I"`` (``str.capitalize`` would write ``"Moran's i"``)."""
    return text[:1].upper() + text[1:]


#: per-layer statistics (``branch, step, layer, ...``) the profile figures accept
PROFILE_VARS = tuple(LABELS)
DPI = 200
MAX_SAMPLES = 4000  # rows per layer handed to seaborn's bootstrap
WEAK_COLOR = "0.55"  # neutral grey: never one of the data colours
RESPONSIVE_COLOR = "0.1"  # near-black triangles
PAGE_WIDTH, COLUMN_WIDTH = 7.0, 3.5  # inches
MAX_HEIGHT = 9.5  # inches: figures grow up to this to fit their labels, then labels wrap
CI = "95\u00a0%\u00a0CI"  # no-break spaces: a title never breaks inside it
GLUED = ("−", "-", "×", "/", "+", "=")  # operators wrapped with the word before them
UNDERLAYS = ("grey", "contours")  # how word_maps draws the reference image under its maps
FSG = "Fine-grained Semantic Guidance (FSG)"  # the anchors' operator, spelled out (docs/concepts.md)


# ----------------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------------


def _as_runs(data: Any) -> list[xr.Dataset]:
    """One Dataset per run (see `fglens.store.select.split_runs`), all with the same layers."""
    runs = split_runs(data, what="fg.plot")
    same_layers(runs)
    return [run for _, run in runs]


def _layers(run: xr.Dataset) -> list[str]:
    return [str(v) for v in run["layer"].values] if "layer" in run.dims else []


def _words(run: xr.Dataset) -> list[str]:
    """Word names per word slot (`word_label` of `fg.open_runs` when present; padding slots give '')."""
    names = run["word_label"].values if "word_label" in run.coords else run["word"].values
    return ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in names]


def _steps_text(run: xr.Dataset, steps: Any) -> str:
    """What the selected steps are, for titles."""
    chosen = select_steps(run, steps)
    span = f"{chosen[0]}–{chosen[-1]}" if len(chosen) > 1 else f"{chosen[0]}"
    if steps is None:
        return f"all steps ({span})" if len(chosen) > 1 else f"step {span}"
    if isinstance(steps, tuple) and len(steps) == 2 and any(isinstance(s, float) for s in steps):
        lo, hi = steps
        part = "first half" if (lo, hi) == (0.0, 0.5) else f"{lo:g}–{hi:g} of the schedule"
        return f"{part}: steps {span}"
    return f"steps {chosen}" if len(chosen) <= 6 else f"{len(chosen)} steps {span}"


def _check_var(run: xr.Dataset, var: str) -> None:
    if var in run.data_vars:
        return
    present = sorted(v for v in run.data_vars if "layer" in run[v].dims)
    hint = ""
    if var == "word_map":
        hint = "; record it with fg.Record(maps=True)"
    elif var == "text_share":
        hint = "; text_share exists only for Wan's separate image attention (joint attention has text_mass)"
    elif var in ("text_mass", "image_mass"):
        hint = f"; {var} exists only for joint attention (HunyuanVideo, CogVideoX); Wan has text_share"
    raise ValueError(f"this run has no variable {var!r}{hint}. Variables present: {present}")


def _select(run: xr.Dataset, var: str, branch: str, steps: Any) -> xr.DataArray:
    """`var` of one run at `branch` and the chosen steps (dims step, layer, ...), coordinates dropped."""
    _check_var(run, var)
    da = run[var]
    branches = [str(b) for b in run["branch"].values] if "branch" in run.dims else []
    if branch not in branches:
        raise ValueError(f"branch {branch!r} was not recorded; recorded branches: {branches}")
    da = da.sel(branch=branch).sel(step=select_steps(run, steps))
    return da.reset_coords(drop=True)


def _samples(
    runs: list[xr.Dataset], var: str, branch: str, steps: Any, max_samples: int = MAX_SAMPLES
) -> tuple[pd.DataFrame, str]:
    """Long table of samples (columns ``run, layer, step[, word][, frame], value``; ``layer`` is the depth
    position), NaNs dropped, and a text saying what one sample is."""
    arrays = [_select(run, var, branch, steps) for run in runs]
    n_layers = len(_layers(runs[0]))
    averaged: list[str] = []
    for dim in ("frame", "step"):
        rows = sum(a.size for a in arrays) / max(n_layers, 1)
        if rows <= max_samples:
            break
        if dim in arrays[0].dims and arrays[0].sizes[dim] > 1:
            arrays = [a.mean(dim, skipna=True) for a in arrays]
            averaged.append(dim)
    frames = []
    for i, da in enumerate(arrays):
        df = da.to_dataframe(name="value").reset_index()
        df["layer"] = df["layer"].map({name: pos for pos, name in enumerate(_layers(runs[0]))})
        df.insert(0, "run", i)
        frames.append(df)
    table = pd.concat(frames, ignore_index=True).dropna(subset=["value"])
    if table.empty:
        raise ValueError(
            f"no recorded values of {var!r} in branch {branch!r} at the chosen steps (all NaN: "
            "the branch or the layers were not recorded there)"
        )
    counts = []
    if len(runs) > 1:
        counts.append(f"{len(runs)}\u00a0runs")
    for dim in ("step", "word", "frame"):
        if dim in arrays[0].dims:
            counts.append(f"{arrays[0].sizes[dim]}\u00a0{dim}s" if arrays[0].sizes[dim] != 1 else f"1\u00a0{dim}")
    unit = "\u00a0× ".join(counts) or "1 sample"
    if averaged:
        unit += " (" + ", ".join(f"{d}-averaged" for d in averaged) + ")"
    return table, unit


def _weak_positions(weak: Any, layers: list[str]) -> tuple[list[int], list[int]]:
    """Depth positions of the weak and responsive layers from a `WeakLayers`, a list of layers, or None."""
    if weak is None:
        return [], []
    if hasattr(weak, "weak"):
        lists = (list(weak.weak), list(getattr(weak, "responsive", []) or []))
    elif isinstance(weak, (str, int)):
        lists = ([weak], [])
    elif isinstance(weak, Iterable):
        lists = (list(weak), [])
    else:
        raise TypeError(f"weak must be a fglens WeakLayers, a list of layer names or None; got {type(weak).__name__}")
    return _positions(lists[0], layers), _positions(lists[1], layers)


def _weak_note(weak: Any, run: xr.Dataset, steps: Any) -> list[str]:
    """A title line saying over which steps a `WeakLayers` found its layers, where they are not the figure's steps
    (`fg.find_weak_layers` scores the first half by default, the profile draws all steps)."""
    params = getattr(weak, "params", None)
    if not isinstance(params, Mapping) or "steps" not in params:
        return []
    found = params["steps"]
    if isinstance(found, list) and len(found) == 2 and any(isinstance(s, float) for s in found):
        found = (float(found[0]), float(found[1]))
    try:
        if select_steps(run, found) == select_steps(run, steps):
            return []
        text = _steps_text(run, found)
    except (TypeError, ValueError):  # steps this run did not record: say what the diagnosis used
        text = f"steps {found}"
    return [f"weak / responsive layers: fg.find_weak_layers over {text}"]


def _positions(names: Sequence[Any], layers: list[str]) -> list[int]:
    out = []
    for name in names:
        if isinstance(name, (int, np.integer)):
            if not -len(layers) <= int(name) < len(layers):
                raise ValueError(f"layer index {name} is out of range for {len(layers)} layers")
            out.append(int(name) % len(layers))
        elif str(name) in layers:
            out.append(layers.index(str(name)))
        else:
            raise ValueError(f"unknown layer {name!r}; the run's layers are {layers}")
    return out


# ----------------------------------------------------------------------------------------------------------
# the run's intervention: where it acts
# ----------------------------------------------------------------------------------------------------------


def _intervention(run: xr.Dataset) -> dict[str, Any] | None:
    """The run's intervention spec (its ``intervention`` attribute, or the coordinate of `fg.open_runs`), or
    None for a run without one."""
    import json

    for source in (run.coords, run.attrs):
        value = source.get("intervention")
        if isinstance(value, xr.DataArray):
            value = value.values.item() if value.ndim == 0 else None
        if isinstance(value, str):
            if value in ("", "none", "null"):
                return None
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if isinstance(value, Mapping):
            return dict(value)
    return None


def _edit_scopes(run: xr.Dataset, branch: str) -> list[tuple[str, list[str], list[int]]]:
    """(kind, layers, steps) for each part of the run's intervention that acts on `branch`: the recorded layers
    and steps it edits, read from its stored spec (``where`` as `fg.Where` takes it; a `CacheTransfer` without
    ``where.layers`` edits its ``dst``; a layer index names that block of each transformer, as when tracing)."""
    from .interventions.scope import Where
    from .store.select import schedule_length

    spec = _intervention(run)
    if spec is None:
        return []
    layers = _layers(run)
    stacks: dict[str, list[str]] = {}
    for name in layers:
        parts = name.split(".")
        stacks.setdefault(".".join(parts[:-2]), []).append(name)
    recorded = [int(v) for v in run["step"].values]
    total = schedule_length(run)
    out = []
    for part in spec.get("parts") or [spec]:
        where = part.get("where") or {}
        branches = where.get("branches")
        if branches is not None and branch not in branches:
            continue
        wanted = where.get("layers")
        if wanted is None:
            wanted = part.get("dst") if part.get("type") == "CacheTransfer" else None
        if wanted is None:
            chosen = list(layers)
        else:
            chosen = []
            for item in wanted:
                if isinstance(item, int) and not isinstance(item, bool):
                    chosen += [stack[item] for stack in stacks.values() if -len(stack) <= item < len(stack)]
                elif str(item) in layers:
                    chosen.append(str(item))
        raw = where.get("steps")
        if isinstance(raw, list) and len(raw) == 2 and any(isinstance(v, float) for v in raw):
            raw = (float(raw[0]), float(raw[1]))
        try:
            scope = Where(steps=raw)
            steps = [s for s in recorded if scope.has_step(s, total)]
        except (TypeError, ValueError):
            steps = list(recorded)
        chosen = [name for name in layers if name in chosen]
        if chosen and steps:
            out.append((str(part.get("type", "intervention")), chosen, steps))
    return out


def _span(items: Sequence[Any], every: Sequence[Any]) -> str:
    """``blocks.1–blocks.3`` for a run of neighbours in `every`, else the items listed."""
    if len(items) > 2 and [every.index(i) for i in items] == list(range(every.index(items[0]),
                                                                       every.index(items[-1]) + 1)):
        return f"{items[0]}–{items[-1]}"
    return ", ".join(map(str, items))


def _edit_note(run: xr.Dataset, branch: str) -> str | None:
    """A title line saying where the run's intervention acts (kinds, layers, steps), or None."""
    scopes = _edit_scopes(run, branch)
    if not scopes:
        return None
    layers, steps = _layers(run), [int(v) for v in run["step"].values]
    parts = [f"{kind} on {_span(chosen, layers)} at step{'s' if len(at) > 1 else ''} {_span(at, steps)}"
             for kind, chosen, at in scopes]
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------------------
# figure plumbing
# ----------------------------------------------------------------------------------------------------------


@contextmanager
def _style(style: str = "whitegrid"):
    """seaborn's paper style for the figure being built (restored afterwards; the user's rcParams are kept)."""
    import seaborn as sns

    with sns.axes_style(style), sns.plotting_context("paper", font_scale=1.0):
        yield sns


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _finish(fig: Figure, path: str | os.PathLike | None, dpi: float) -> Figure:
    """Fit its labels (`_fit_labels`); save `fig` to `path` (format from the suffix, parent folders created) when
    given; return it."""
    _fit_labels(fig)
    if path is None:
        return fig
    path = Path(path).expanduser()
    fmt = path.suffix.lower().lstrip(".")
    known = fig.canvas.get_supported_filetypes()
    if fmt not in known:
        raise ValueError(f"cannot save a figure as {str(path)!r}: the suffix must be one of {sorted(known)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def _text_width(text: str, size: Any) -> float:
    """Width in points of one line of `text` at font size `size` (points or a name like ``"medium"``), as
    matplotlib lays it out in the current style's font."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    return float(text_to_path.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)[0])


def _wrap(text: str, width: float, size: Any) -> str:
    """`text` wrapped on plain spaces so that each line is at most `width` points wide at font size `size`.

    Lines break only between words (a word longer than the width gets a line of its own), never at a no-break
    space (so "95 % CI" and counts like "2 steps" stay whole) and never before an operator of `GLUED`; the
    text's own line breaks are kept.
    """
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        words: list[str] = []
        for word in paragraph.split(" "):
            if word in GLUED and words:
                words[-1] += " " + word  # a line may end with "−" or "×", never start with it
            elif word:
                words.append(word)
        for word in words:
            trial = f"{line} {word}" if line else word
            if line and _text_width(trial, size) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return "\n".join(lines)


def _title(fig: Figure, title: str | None, headline: str, *details: str) -> None:
    """The figure's title: `title` when given, else a headline (what is shown) above detail lines (branch, steps,
    what the mean and band are over), each wrapped on word boundaries to the figure's width."""
    width = fig.get_figwidth() * 72 - 16  # points, less a margin
    lines = title.split("\n") if title is not None else [headline, *details]
    fig.suptitle("\n".join(_wrap(line, width, "medium") for line in lines), fontsize="medium")


def _label(text: str, chars: int = 32) -> str:
    """An axis label wrapped on word boundaries when longer than about `chars` characters (panels of a paper
    figure are short); `_fit_labels` wraps it further where its panel is shorter still."""
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties

    size = rcParams["axes.labelsize"]
    return _wrap(text, chars * 0.55 * FontProperties(size=size).get_size_in_points(), size)


def _vertical_labels(fig: Figure) -> list[tuple[Axes, Any, float]]:
    """(axes, label, room) for every vertical axis label (y labels, colour bar labels): room is the height of its
    axes in points, as the layout placed it."""
    out = []
    height = fig.get_figheight() * 72
    for ax in fig.axes:
        label = ax.yaxis.label
        if ax.get_visible() and label.get_visible() and label.get_text().strip() and label.get_rotation() % 180 == 90:
            out.append((ax, label, ax.get_position().height * height))
    return out


def _needed(label: Any) -> float:
    return max(_text_width(line, label.get_fontsize()) for line in label.get_text().split("\n")) + 6.0


def _fit_labels(fig: Figure) -> None:
    """Make every vertical axis label fit the length of its axes, so that the labels of stacked panels cannot run
    together: the figure grows (up to `MAX_HEIGHT` inches), then labels still longer than their axes are wrapped
    on word boundaries."""
    engine = fig.get_layout_engine()
    if engine is None:
        return
    for _ in range(4):
        engine.execute(fig)
        labels = _vertical_labels(fig)
        short = max((_needed(label) - room for _, label, room in labels), default=0.0)
        if short <= 0 or fig.get_figheight() >= MAX_HEIGHT:
            break
        rows = len({round(ax.get_position().y0, 3) for ax, _, _ in labels}) or 1
        fig.set_figheight(min(MAX_HEIGHT, fig.get_figheight() + rows * short / 72 + 0.05))
    for _, label, room in _vertical_labels(fig):
        if _needed(label) > room:
            label.set_text(_wrap(" ".join(label.get_text().split("\n")), max(room - 6.0, 36.0), label.get_fontsize()))
    engine.execute(fig)


def _legend_above(ax: Axes, **kwargs: Any) -> None:
    """The axes' legend outside it, just above its top edge (never over the data), in as many columns as fit
    the axes' width (measured: the layout is run, the legend laid out, and redone with fewer columns while it
    is wider; a legend wider than its axes would make the constrained layout give up)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    fig = ax.figure
    fig.get_layout_engine().execute(fig)
    room = 0.95 * ax.get_position().width * fig.get_figwidth() * fig.dpi  # pixels, a margin for later labels
    for ncol in range(len(labels), 0, -1):
        legend = ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=ncol, frameon=False,
                           borderaxespad=0.0, handlelength=1.5, columnspacing=1.2, **kwargs)
        if legend.get_window_extent().width <= room:  # the figure's own renderer
            break


def _layer_axis(ax: Axes, layers: list[str], max_ticks: int = 24) -> None:
    """Layers in depth order on x, named; thinned to at most `max_ticks` labels; group boundaries dotted."""
    step = max(1, math.ceil(len(layers) / max_ticks))
    ticks = list(range(0, len(layers), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([layers[i] for i in ticks], rotation=90 if len(layers) > 8 else 30,
                       ha="center" if len(layers) > 8 else "right")
    ax.set_xlim(-0.5, len(layers) - 0.5)
    groups = [re.sub(r"\.?\d+$", "", name) for name in layers]
    for i in range(1, len(layers)):
        if groups[i] != groups[i - 1]:
            ax.axvline(i - 0.5, color="0.4", linestyle=":", linewidth=0.8, zorder=0)


def _mark_layers(ax: Axes, weak: list[int], responsive: list[int], legend: bool) -> None:
    """Shade the weak layers; mark the responsive ones with a triangle at the top of the panel."""
    for i, pos in enumerate(weak):
        span = ax.axvspan(pos - 0.5, pos + 0.5, color=WEAK_COLOR, alpha=0.25, linewidth=0, zorder=0,
                          label="semantic-weak layer" if legend and i == 0 else None)
        span.set_gid("weak")
    if responsive:
        ax.margins(y=0.15)  # headroom, so that the triangles sit above the data
        ax.plot(responsive, [0.96] * len(responsive), linestyle="none", marker="v", markersize=6,
                color=RESPONSIVE_COLOR, transform=ax.get_xaxis_transform(), clip_on=False, gid="responsive",
                label="responsive layer" if legend else None)


def _profile_line(
    sns: Any, ax: Axes, table: pd.DataFrame, color: Any, label: str | None, n_boot: int, linestyle: str = "-"
) -> None:
    """Per-layer mean of the samples with seaborn's 95 % bootstrap band (fixed seed: reproducible)."""
    sns.lineplot(data=table, x="layer", y="value", errorbar=("ci", 95), n_boot=n_boot, seed=0, estimator="mean",
                 color=color, marker="o", markersize=4, linewidth=1.5, linestyle=linestyle, label=label, ax=ax)


# ----------------------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------------------


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


def layer_step_heatmap(
    ds: Any,
    var: str = "similarity",
    branch: str = "cond",
    path: str | os.PathLike | None = None,
    *,
    steps: Any = None,
    cmap: str | None = None,
    dpi: float = DPI,
    title: str | None = None,
) -> Figure:
    """A statistic over layers (rows, depth order) x denoising steps (columns), averaged over everything else.

    Each cell is the mean over words (for per-word statistics) and frames within each run (NaN skipped), then
    over runs (each run weighs the same). Columns are labelled with the step index and its timestep. Signed
    statistics (`SIGNED`: similarity, Moran's I) get a diverging map centred on zero (``vlag``), the others
    ``viridis``; `cmap` overrides. The subtitle gives the range of the cells, so that a narrow range does not
    read as a strong effect; cells without a value (NaN) are hatched grey and the subtitle says so. For an
    edited run (its ``intervention`` attribute), the cells the edit acts on (its layers x steps in this branch)
    are outlined in black and the subtitle names them.

    Example:
        >>> import fglens as fg
        >>> ds = fg.testing.tiny_run("hunyuan", words=("dog",), maps=False)
        >>> fig = fg.plot.layer_step_heatmap(ds, var="morans_i")
        >>> fig.axes[0].get_ylabel(), fig.axes[0].get_xlabel()
        ('layer (depth order)', 'denoising step (timestep)')
    """
    runs = _as_runs(ds)
    layers = _layers(runs[0])
    per_run = []
    for run in runs:
        da = _select(run, var, branch, steps)
        rest = [d for d in da.dims if d not in ("layer", "step")]
        per_run.append(da.mean(rest, skipna=True).transpose("layer", "step"))
    grid = xr.concat(per_run, dim="run", join="outer").mean("run", skipna=True)
    if bool(np.isnan(grid.values).all()):
        raise ValueError(f"no recorded values of {var!r} in branch {branch!r} (all NaN)")
    timesteps = {}
    for run in runs:
        if "timestep" in run.coords:
            timesteps.update(zip(run["step"].values.tolist(), run["timestep"].values.tolist(), strict=True))
    columns = [f"{s}\n{timesteps[s]:.0f}" if s in timesteps else f"{s}" for s in grid["step"].values.tolist()]
    table = pd.DataFrame(grid.values, index=layers, columns=columns)
    height = min(9.0, 1.4 + 0.22 * len(layers))
    width = min(PAGE_WIDTH, 2.4 + 0.35 * len(columns))
    width = max(width, COLUMN_WIDTH)
    every = max(1, math.ceil(len(columns) / max(4, int(2.2 * (width - 1.6)))))  # step labels that fit
    signed = var in SIGNED
    values = grid.values[np.isfinite(grid.values)]
    low, high = float(values.min()), float(values.max())
    with _style("white") as sns:
        fig = _figure(width, max(height, 2.4))
        ax = fig.subplots()
        ax.set_facecolor("0.85")  # NaN cells: seaborn leaves them blank; grey with hatching says "no value"
        ax.patch.set_hatch("//")
        ax.patch.set_edgecolor("0.6")
        reach = max(abs(low), abs(high)) or 1.0  # signed: a symmetric scale, so 0 is the map's middle colour
        sns.heatmap(table, ax=ax, cmap=cmap or ("vlag" if signed else "viridis"),
                    **({"vmin": -reach, "vmax": reach, "center": 0.0} if signed else {}), xticklabels=every,
                    yticklabels="auto", linewidths=0,
                    cbar_kws={"label": _label(LABELS.get(var, var))})
        ax.set_xlabel("denoising step (timestep)")
        ax.set_ylabel("layer (depth order)")
        ax.tick_params(axis="x", labelrotation=0)
        parts = (["words"] if "word" in runs[0][var].dims else []) + ["frames"]
        parts += [f"{len(runs)}\u00a0runs"] if len(runs) > 1 else []
        over = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        details = [f"{branch} branch, mean over {over}",
                   f"cells range {low:.4g} to {high:.4g}" + (", colours centred on 0" if signed else "")
                   + ("; hatched grey: no value (NaN)" if values.size < grid.size else "")]
        details += _mark_edits(ax, runs, branch, layers, [int(v) for v in grid["step"].values])
        _title(fig, title, f"{_upper_first(SHORT.get(var, var))} per layer and step", *details)
        return _finish(fig, path, dpi)


def _runs_of(items: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted positions as (first, last) pairs."""
    out: list[tuple[int, int]] = []
    for i in sorted(items):
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _mark_edits(ax: Axes, runs: list[xr.Dataset], branch: str, layers: list[str], steps: list[int]) -> list[str]:
    """Outline the heatmap cells (layer x step) the runs' intervention edited; the title lines that say so."""
    from matplotlib.patches import Rectangle

    specs = {repr(_intervention(run)) for run in runs}
    if len(specs) > 1:
        return ["the runs have different interventions: edited cells not outlined"]
    scopes = _edit_scopes(runs[0], branch)
    first = True
    for _, chosen, at in scopes:
        rows = [layers.index(name) for name in chosen]
        cols = [steps.index(s) for s in at if s in steps]
        for r0, r1 in _runs_of(rows):
            for c0, c1 in _runs_of(cols):
                ax.add_patch(Rectangle((c0, r0), c1 - c0 + 1, r1 - r0 + 1, fill=False, edgecolor="black",
                                       linewidth=1.6, clip_on=False, gid="edited", zorder=5,
                                       label="edited" if first else None))
                first = False
    note = _edit_note(runs[0], branch)
    return [f"outlined: the cells edited ({note})"] if note and not first else []


def _spread(n: int, limit: int = 8) -> list[int]:
    """All of ``range(n)``, or `limit` evenly spaced positions (first and last included)."""
    if n <= limit:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, limit)})


def _as_rgb(image: Any) -> np.ndarray:
    """A PIL image, HxWx3 (or HxW) array or [3, H, W] tensor as a float HxWx3 array in [0, 1]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"image must be a PIL image, an HxWx3 / HxW array or a [3, H, W] tensor; got {arr.shape}")
    if arr.max() > 1.0:
        arr = arr / 255.0
    return np.clip(np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr, 0.0, 1.0)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """An HxWx3 image in [0, 1] as its HxW brightness (ITU-R BT.601 weights, as PIL's ``convert("L")``)."""
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _stored_image(run: xr.Dataset) -> np.ndarray | None:
    """The run's own ``reference_image`` as a float HxWx3 array in [0, 1], or None when it kept none.

    A run of `fg.open_runs` has its image padded to the largest of the runs: it is cut to ``image_size``.
    """
    if "reference_image" not in run.data_vars:
        return None
    pixels = run["reference_image"]
    if "image_size" in run.coords:
        height, width = (int(v) for v in np.asarray(run["image_size"].values).reshape(-1)[:2])
        if height == 0 or width == 0:
            return None
        pixels = pixels.isel(image_y=slice(0, height), image_x=slice(0, width))
    return np.asarray(pixels.transpose("image_y", "image_x", "channel").values, dtype=np.float32) / 255.0


def word_maps(
    ds: Any,
    word: str,
    layers: Any = None,
    frames: Any = None,
    image: Any = None,
    steps: Any = None,
    branch: str = "cond",
    path: str | os.PathLike | None = None,
    *,
    step: Any = None,
    run: int | str | None = None,
    underlay: str = "grey",
    shared_scale: bool = False,
    alpha: float = 0.6,
    cmap: str = "magma",
    interpolation: str = "nearest",
    dpi: float = DPI,
    title: str | None = None,
) -> Figure:
    """A grid of one word's attention maps: rows = layers, columns = latent frames, mean over the chosen steps.

    Needs the ``word_map`` variable (``fg.Record(maps=True)``). The maps are on the latent token grid
    (H' x W'), the reference image stretched to the grid's extent as the pipeline resizes it. The image is an
    underlay that cannot be mistaken for attention: in grey under the map drawn at opacity `alpha`
    (``underlay="grey"``), or as white contour lines of its brightness over the map drawn opaque
    (``underlay="contours"``: the colours are exactly the colour bar's). One colour bar is shared by all panels;
    with ``shared_scale=True`` its range spans every recorded word's maps (same layers, frames and steps), so
    that the figures of different words can be compared colour for colour.

    Args:
        word: a recorded word.
        image: the image under the maps: None (default) uses the run's own ``reference_image`` (kept by
            image-to-video runs, ``fg.Record(image=True)``) and draws no overlay when the run has none; a PIL
            image, array or tensor draws over that image instead; False draws the maps alone; True requires the
            run's own image (an error when it has none).
        layers: layer names or indices (default: all, or 8 evenly spaced when there are more).
        frames: latent frame indices (default: all, or 8 evenly spaced).
        steps: None (all steps), a ``(start, stop)`` fraction pair, or step indices: the maps are averaged
            over these steps (the same ``steps=`` as the other figures; ``step=`` is accepted as an alias).
        run: which run when several are given (index or run id); required then.
        underlay: ``"grey"`` (the image in greyscale under the map) or ``"contours"`` (its outlines over it).
        shared_scale: one colour range for all words (default: the range of this word's panels).

    Example:
        >>> import fglens as fg
        >>> ds = fg.testing.tiny_run("wan", words=("dog", "fence"), maps=True)
        >>> fig = fg.plot.word_maps(ds, "dog")   # over the run's own reference image, in grey
        >>> len([ax for ax in fig.axes if ax.images]), len(fig.axes[0].images)   # 4 layers x 2 frames; image + map
        (8, 2)
        >>> len(fg.plot.word_maps(ds, "dog", image=False).axes[0].images)   # the maps alone
        1
        >>> a, b = (fg.plot.word_maps(ds, w, shared_scale=True) for w in ("dog", "fence"))
        >>> a.axes[0].images[-1].norm.vmax == b.axes[0].images[-1].norm.vmax   # one scale for both words
        True
    """
    if underlay not in UNDERLAYS:
        raise ValueError(f"underlay must be one of {UNDERLAYS}; got {underlay!r}")
    if step is not None:
        if steps is not None:
            raise TypeError("word_maps() got both steps= and its alias step=; pass steps= only")
        steps = step
    runs = _as_runs(ds)
    if len(runs) > 1:
        if run is None:
            raise ValueError(f"{len(runs)} runs given: choose one with run= (an index 0..{len(runs) - 1} or a run id)")
        ids = [str(r.coords["run"].item() if "run" in r.coords else r.attrs.get("run", "")) for r in runs]
        index = ids.index(run) if isinstance(run, str) and run in ids else run
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < len(runs):
            raise ValueError(f"unknown run {run!r}; give an index 0..{len(runs) - 1} or one of {ids}")
        one = runs[int(index)]
    else:
        one = runs[0]
    words = _words(one)
    if "word_map" not in one.data_vars:
        recorded = [w for w in words if w]
        raise ValueError(
            "this run has no word_map variable: word maps are stored only when recording with maps=True. "
            f"Record again with fg.trace(pipe, record=fg.Record(words={recorded!r}, maps=True), ...); "
            "its other variables (word_mass, morans_i, ...) are per-frame means of those maps"
        )
    if word not in words:
        raise ValueError(f"unknown word {word!r}; the run's words are {[w for w in words if w]}")
    layer_names = _layers(one)
    if layers is None:
        rows = _spread(len(layer_names))
    else:
        rows = _positions([layers] if isinstance(layers, (str, int, np.integer)) else list(layers), layer_names)
    frame_ids = [int(f) for f in one["frame"].values]
    if frames is None:
        cols = _spread(len(frame_ids))
    else:
        wanted = [frames] if isinstance(frames, (int, np.integer)) else list(frames)
        missing = [f for f in wanted if int(f) not in frame_ids]
        if missing:
            raise ValueError(f"unknown frame(s) {missing}; the run has latent frames {frame_ids}")
        cols = [frame_ids.index(int(f)) for f in wanted]
    every = _select(one, "word_map", branch, steps).mean("step", skipna=True).isel(layer=rows, frame=cols)
    every = every.transpose("word", "layer", "frame", "y", "x").values
    maps = every[words.index(word)]
    if np.isnan(maps).all():
        raise ValueError(f"the word_map of {word!r} holds no values in branch {branch!r} at the chosen steps")
    scaled = every[[i for i, w in enumerate(words) if w]] if shared_scale else maps
    ny, nx = maps.shape[-2:]
    background = contours = None
    if image is None or image is True:
        rgb = _stored_image(one)
        if rgb is None and image is True:
            raise ValueError("image=True asks for the run's own reference image, and this run kept none (a "
                             "text-to-video run, fg.Record(image=False), or a run recorded before fglens kept it); "
                             "pass the image itself, or image=None")
    else:
        rgb = None if image is False else _as_rgb(image)
    if rgb is not None:
        from PIL import Image

        scale = max(1, min(16, 512 // max(ny, nx)))  # the pipeline's resize: the whole image to the grid's aspect
        pil = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
        pil = pil.resize((nx * scale, ny * scale), Image.Resampling.LANCZOS)
        grey = _luminance(np.asarray(pil, dtype=np.float32) / 255.0)
        if underlay == "grey":
            background = grey
        else:
            ys = -0.5 + (np.arange(grey.shape[0]) + 0.5) / scale
            xs = -0.5 + (np.arange(grey.shape[1]) + 0.5) / scale
            contours = (xs, ys, grey)
    vmax = float(np.nanmax(scaled))
    vmin = 0.0 if float(np.nanmin(scaled)) >= 0.0 else float(np.nanmin(scaled))
    cell = min(1.6, PAGE_WIDTH / (len(cols) + 0.8)) * max(0.35, min(1.6, ny / nx))
    from matplotlib import rcParams

    with _style("white"):
        names = [layer_names[pos] for pos in rows]
        labels = max(_text_width(name, rcParams["axes.labelsize"]) for name in names) / 72  # row labels, inches
        width = min(PAGE_WIDTH, 0.8 + labels + min(1.6, PAGE_WIDTH / (len(cols) + 0.8)) * len(cols))
        extent = (-0.5, nx - 0.5, ny - 0.5, -0.5)
        fig = _figure(max(width, 2.4), 1.0 + cell * len(rows))
        axes = fig.subplots(len(rows), len(cols), squeeze=False)
        im = None
        for r, name in enumerate(names):
            for c, frame_pos in enumerate(cols):
                ax = axes[r, c]
                if background is not None:
                    ax.imshow(background, cmap="gray", vmin=0.0, vmax=1.0, extent=extent, interpolation="bilinear")
                im = ax.imshow(maps[r, c], cmap=cmap, vmin=vmin, vmax=vmax, extent=extent,
                               alpha=alpha if background is not None else 1.0, interpolation=interpolation)
                if contours is not None:
                    ax.contour(*contours, levels=4, colors="white", linewidths=0.6, alpha=0.9)
                    ax.set_xlim(extent[0], extent[1])
                    ax.set_ylim(extent[2], extent[3])
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"frame {frame_ids[frame_pos]}")
                if c == 0:  # row labels read horizontally: long layer names never run into the next row's
                    ax.set_ylabel(name, rotation=0, ha="right", va="center")
        from matplotlib.cm import ScalarMappable

        scale_text = ("one colour scale for all words" if shared_scale and len(scaled) > 1
                      else "colour scale of this word")
        fig.colorbar(ScalarMappable(norm=im.norm, cmap=im.cmap), ax=axes.ravel().tolist(), shrink=0.9,
                     label=f"attention to “{word}” (head mean)")  # the colours at full opacity
        under = ("" if background is None and contours is None else
                 "; under the maps: the reference image in grey" if background is not None else
                 "; white lines: contours of the reference image")
        _title(fig, title, f"Attention map of “{word}”", f"{branch} branch, mean over {_steps_text(one, steps)}",
               f"rows: layers; columns: latent frames ({ny}×{nx} tokens){under}; {scale_text}")
        return _finish(fig, path, dpi)


def _family(runs: list[xr.Dataset]) -> str:
    run = runs[0]
    if "text_share" in run.data_vars:
        return "wan"
    if "text_mass" in run.data_vars:
        return "joint"
    from .store import decode_attrs

    family = str(decode_attrs(dict(run.attrs)).get("model_family", "unknown"))
    raise ValueError(
        f"condition_balance needs text_share (Wan) or text_mass / image_mass (joint attention: HunyuanVideo, "
        f"CogVideoX); this run (model family {family!r}) has neither: its variables are {sorted(run.data_vars)}"
    )


def condition_balance(
    ds: Any,
    branch: str = "cond",
    path: str | os.PathLike | None = None,
    *,
    steps: Any = None,
    n_boot: int = 1000,
    max_samples: int = MAX_SAMPLES,
    dpi: float = DPI,
    title: str | None = None,
) -> Figure:
    """How much each layer listens to the text against the visual conditions (Condition Isolation).

    - Wan (separate text and image attention): ``text_share`` per layer, mean and 95 % CI over runs x steps x
      frames; 0.5 marks equal text and image output norms.
    - Joint attention (HunyuanVideo, CogVideoX): stacked mean attention mass per layer on the text tokens,
      the image-derived tokens and the video tokens (video = 1 - text - image), and below it the text mass
      alone with its 95 % CI (it is often small next to the others).

    The family is read from the variables present.

    Example:
        >>> import fglens as fg
        >>> ds = fg.testing.tiny_run("hunyuan", words=("dog",), maps=False)
        >>> fig = fg.plot.condition_balance(ds)
        >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        ['text', 'image-derived', 'video']
    """
    runs = _as_runs(ds)
    layers = _layers(runs[0])
    family = _family(runs)
    steps_text = _steps_text(runs[0], steps)
    width = COLUMN_WIDTH if len(layers) <= 8 else PAGE_WIDTH
    with _style() as sns:
        palette = sns.color_palette("colorblind")
        if family == "wan":
            table, unit = _samples(runs, "text_share", branch, steps, max_samples)
            fig = _figure(width, 3.2)
            ax = fig.subplots()
            ax.axhline(0.5, color="0.3", linestyle="--", linewidth=1, label="text = image")
            _profile_line(sns, ax, table, palette[0], "text share", n_boot)
            ax.set_ylabel(_label(LABELS["text_share"], 24))
            ax.set_xlabel("layer (depth order)")
            _layer_axis(ax, layers)
            _legend_above(ax)
            _title(fig, title, "Text vs image condition per layer", f"{branch} branch, {steps_text}",
                   f"mean, {CI} over {unit}")
            return _finish(fig, path, dpi)

        text, unit = _samples(runs, "text_mass", branch, steps, max_samples)
        has_image = "image_mass" in runs[0].data_vars
        means = {"text": _layer_means(text, len(layers))}
        if has_image:
            means["image-derived"] = _layer_means(_samples(runs, "image_mass", branch, steps, max_samples)[0],
                                                  len(layers))
        means["video"] = 1.0 - sum(means.values())
        fig = _figure(width, 5.0)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1.4, 1.0))
        base = np.zeros(len(layers))
        x = np.arange(len(layers))
        colors = {"text": palette[0], "image-derived": palette[1], "video": palette[7]}
        hatches = {"text": "", "image-derived": "//", "video": ""}
        for name, values in means.items():
            top.bar(x, values, bottom=base, width=0.8, color=colors[name], hatch=hatches[name], edgecolor="white",
                    linewidth=0.5, label=name, gid=name)
            base = base + np.nan_to_num(values)
        top.set_ylim(0, 1)
        top.set_ylabel("share of attention")
        top.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(means))
        _profile_line(sns, bottom, text, palette[0], None, n_boot)
        bottom.set_ylabel("text mass")
        for ax in (top, bottom):
            ax.set_xlabel("layer (depth order)" if ax is bottom else "")
            _layer_axis(ax, layers)
        _title(fig, title, "Attention on text / image / video tokens", f"{branch} branch, {steps_text}",
               f"means over {unit}; below: text mass, {CI}")
        return _finish(fig, path, dpi)


def _layer_means(table: pd.DataFrame, n_layers: int) -> np.ndarray:
    """Mean of the samples per layer position (NaN where a layer has none)."""
    return table.groupby("layer")["value"].mean().reindex(range(n_layers)).to_numpy(dtype=float)


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


def _anchor_parts(anchor: Any) -> tuple[list[str], np.ndarray | None, Any]:
    """(words, masks [W, Y, X] or None, AnchorRegions or None) of an AnchorMask, a FocalGuidance holding one,
    or an AnchorRegions."""
    if hasattr(anchor, "parts") and not hasattr(anchor, "masks"):
        found = [p for p in anchor.parts() if hasattr(p, "masks") and hasattr(p, "words")]
        if not found:
            raise ValueError(f"{type(anchor).__name__} holds no AnchorMask to draw")
        anchor = found[0]
    regions = getattr(anchor, "regions", None)
    if regions is None and hasattr(anchor, "similarity") and hasattr(anchor, "mask"):
        regions = anchor  # an AnchorRegions itself
    masks = getattr(anchor, "masks", None)
    if masks is None and regions is not None:
        masks = regions.mask
    words = list(getattr(anchor, "words", None) or (regions.words if regions is not None else []))
    if masks is None and regions is None:
        raise ValueError(
            f"nothing to draw: {type(anchor).__name__} has neither masks nor CLIP regions; pass an fg.AnchorMask "
            "(from_clip or from_mask) or an fglens.anchors.AnchorRegions"
        )
    arr = None if masks is None else np.asarray(masks.detach().cpu() if hasattr(masks, "detach") else masks, float)
    return words, arr, regions


def anchor(
    image: Any,
    anchor: Any,
    word: str | Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    *,
    alpha: float = 0.55,
    dpi: float = DPI,
    title: str | None = None,
) -> Figure:
    """Where each anchored word sits in the reference image: the CLIP region map and the mask over the image.

    One row per word. Columns: the image; the CLIP cosine-similarity map on CLIP's patch grid over the image
    (only for `fg.AnchorMask.from_clip` anchors, which keep their `regions`); the anchor mask M_w on the latent
    grid over the image (binary from Otsu / a quantile, or soft), outlined. Anchors built with `from_mask`
    have masks only, and get the image and mask columns.

    Args:
        image: the reference frame (PIL image, HxWx3 array or [3, H, W] tensor), or None for no background.
        anchor: an `fg.AnchorMask`, an `fg.FocalGuidance` holding one, or an `fglens.anchors.AnchorRegions`.
        word: one word or a list (default: every anchored word).

    Example:
        >>> import fglens as fg
        >>> clip = fg.anchors.Clip(fg.anchors.tiny_config())
        >>> image = fg.testing.reference_image(96, 64)
        >>> a = fg.AnchorMask.from_clip(image, "a dog runs", ["dog"], clip)
        >>> fig = fg.plot.anchor(image, a)
        >>> [ax.get_title() for ax in fig.axes[:3]]
        ['reference image', 'CLIP similarity (patches)', 'anchor mask (latent grid)']
    """
    from matplotlib.cm import ScalarMappable

    words, masks, regions = _anchor_parts(anchor)
    chosen = words if word is None else ([word] if isinstance(word, str) else list(word))
    unknown = [w for w in chosen if w not in words]
    if unknown:
        raise ValueError(f"unknown word(s) {unknown}; the anchor's words are {words}")
    rgb = None if image is None else _as_rgb(image)
    columns = (["image"] if rgb is not None else []) + (["similarity"] if regions is not None else []) + ["mask"]
    titles = {"image": "reference image", "similarity": "CLIP similarity (patches)",
              "mask": "anchor mask (latent grid)"}
    ny, nx = masks.shape[-2:]
    aspect = (rgb.shape[0] / rgb.shape[1]) if rgb is not None else ny / nx
    cell = min(2.2, PAGE_WIDTH / (len(columns) + 0.6))
    with _style("white"):
        fig = _figure(min(PAGE_WIDTH, cell * len(columns) + 1.2), 0.8 + cell * max(0.4, aspect) * len(chosen))
        axes = fig.subplots(len(chosen), len(columns), squeeze=False)
        extent = None if rgb is None else (-0.5, rgb.shape[1] - 0.5, rgb.shape[0] - 0.5, -0.5)
        for r, w in enumerate(chosen):
            k = words.index(w)
            for c, col in enumerate(columns):
                ax = axes[r, c]
                if rgb is not None:
                    ax.imshow(rgb, extent=extent)
                over = alpha if rgb is not None else 1.0
                if col == "similarity":
                    sim = np.asarray(regions.similarity[w], dtype=float)
                    im = ax.imshow(sim, cmap="viridis", alpha=over, interpolation="nearest",
                                   extent=extent or (-0.5, sim.shape[1] - 0.5, sim.shape[0] - 0.5, -0.5))
                    fig.colorbar(ScalarMappable(norm=im.norm, cmap=im.cmap), ax=ax, shrink=0.8,
                                 label="cosine similarity")
                elif col == "mask":
                    mask = masks[k]
                    box = extent or (-0.5, mask.shape[1] - 0.5, mask.shape[0] - 0.5, -0.5)
                    im = ax.imshow(mask, cmap="cividis", vmin=0.0, vmax=1.0, alpha=over, interpolation="nearest",
                                   extent=box)
                    if 0.0 < mask.max() and mask.min() < 1.0:  # outline the region at the cells' centres
                        ys = box[3] + (np.arange(mask.shape[0]) + 0.5) * (box[2] - box[3]) / mask.shape[0]
                        xs = box[0] + (np.arange(mask.shape[1]) + 0.5) * (box[1] - box[0]) / mask.shape[1]
                        ax.contour(xs, ys, mask, levels=[0.5], colors="white", linewidths=1.0)
                    fig.colorbar(ScalarMappable(norm=im.norm, cmap=im.cmap), ax=ax, shrink=0.8, label="mask M_w")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(titles[col])
                if c == 0:
                    ax.set_ylabel(f"“{w}”")
        if regions is not None:
            _title(fig, title, f"{FSG} anchors: CLIP regions and masks",
                   f"threshold: {regions.threshold or 'soft'}")
        else:
            _title(fig, title, f"{FSG} anchors: masks", "no CLIP regions (built from masks)")
        return _finish(fig, path, dpi)
