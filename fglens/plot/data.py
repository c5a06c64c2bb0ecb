"""Inputs of the figures: runs, their samples, weak-layer notes and where a run's intervention acted."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..store.select import same_layers, select_steps, split_runs
from .layout import MAX_SAMPLES

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
    from ..core.scope import Where
    from ..store.select import schedule_length

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

def _layer_means(table: pd.DataFrame, n_layers: int) -> np.ndarray:
    """Mean of the samples per layer position (NaN where a layer has none)."""
    return table.groupby("layer")["value"].mean().reindex(range(n_layers)).to_numpy(dtype=float)
