"""`layer_step_heatmap`: a statistic over layers and steps, with the cells an intervention edited outlined."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from .data import _as_runs, _edit_note, _edit_scopes, _intervention, _layers, _select
from .layout import (
    COLUMN_WIDTH,
    DPI,
    LABELS,
    PAGE_WIDTH,
    SHORT,
    SIGNED,
    _figure,
    _finish,
    _label,
    _style,
    _title,
    _upper_first,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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


