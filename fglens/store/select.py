"""Choosing runs and steps in recorded data: what the diagnosis, the figures and the CLI share.

- `split_runs` turns what a user holds — one run, a Dataset with a ``run`` dim (`fg.open_runs`), a list of
  either, or the path of a store — into one labelled Dataset per run;
- `same_layers` checks that runs can be compared layer by layer;
- `schedule_length` and `select_steps` pick steps the way `fg.Where` does: ``None`` (every recorded step),
  a ``(start, stop)`` pair of floats (a half-open fraction of the schedule), or step indices.

Example:
    >>> import fglens as fg
    >>> from fglens.store.select import select_steps, split_runs
    >>> ds = fg.testing.tiny_run("wan", words=("dog",), steps=4, maps=False)
    >>> [label == ds.attrs["run"] for label, _ in split_runs([ds])]
    [True]
    >>> select_steps(ds, (0.0, 0.5)), select_steps(ds, [3])
    ([0, 1], [3])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..core.scope import Where


def split_runs(data: Any, *, what: str = "this function") -> list[tuple[str, xr.Dataset]]:
    """``(label, run)`` for every run of `data`: a run Dataset, a Dataset with a ``run`` dim, a list of either,
    or the path of a store (every run in it). Labels are the run names, made unique when they repeat."""
    if isinstance(data, (str, os.PathLike)):
        from .reader import list_runs, open_run

        names = list_runs(data)
        if not names:
            raise ValueError(f"the store {os.fspath(data)} holds no runs")
        return [(name, open_run(data, name)) for name in names]
    items = list(data) if isinstance(data, (list, tuple)) else [data]
    out: list[tuple[str, xr.Dataset]] = []
    for i, item in enumerate(items):
        if not isinstance(item, xr.Dataset):
            which = f"item {i} of the runs is a {type(item).__name__}" if isinstance(data, (list, tuple)) else (
                f"got a {type(item).__name__}")
            raise TypeError(
                f"{what} takes a run xarray.Dataset (run.dataset, fg.open_run), a Dataset with a 'run' dim "
                f"(fg.open_runs), a list of them, or a store path; {which}"
            )
        if "run" in item.dims:
            labels = [str(v) for v in item["run"].values] if "run" in item.coords else None
            out += [(labels[j] if labels else f"{i}:{j}", item.isel(run=j)) for j in range(item.sizes["run"])]
        else:
            out.append((str(item.attrs.get("run", f"#{i}")), item))
    if not out:
        raise ValueError(f"{what} got no runs (an empty list, or a Dataset with an empty 'run' dim)")
    labels = [label for label, _ in out]
    return [(label if labels.count(label) == 1 else f"{label}#{i}", ds) for i, (label, ds) in enumerate(out)]


def same_layers(runs: Sequence[tuple[str, xr.Dataset]]) -> list[str]:
    """The layer names shared by every run, or an error naming two runs that differ."""
    first_label, first = runs[0]
    if "layer" not in first.dims:
        raise ValueError(f"run {first_label} has no 'layer' dim (dims: {dict(first.sizes)}): is it an fglens run?")
    layers = [str(v) for v in first["layer"].values]
    for label, ds in runs[1:]:
        other = [str(v) for v in ds["layer"].values] if "layer" in ds.dims else []
        if other != layers:
            raise ValueError(f"runs must have the same layers: run {first_label} has {_short(layers)}, run {label} "
                             f"has {_short(other)}; use runs of one model together")
    return layers


def schedule_length(run: xr.Dataset) -> int:
    """The number of steps of the run's schedule: its ``num_steps`` coordinate (`fg.open_runs`) or attribute,
    else the number of steps that hold data (a run without either, e.g. on a bare transformer)."""
    for source in (run.coords, run.attrs):
        value = source.get("num_steps")
        if value is None or isinstance(value, bool):
            continue
        value = np.asarray(value.values if isinstance(value, xr.DataArray) else value)
        if value.ndim == 0 and np.issubdtype(value.dtype, np.number) and np.isfinite(value):
            return int(value)
    has = [run[v].notnull().any([d for d in run[v].dims if d != "step"]) for v in run.data_vars
           if "step" in run[v].dims]
    if has:
        return int(np.asarray(xr.concat(has, "v").any("v")).sum())
    return int(run.sizes.get("step", 0))


def select_steps(run: xr.Dataset, steps: Any, *, label: str | None = None) -> list[int]:
    """The recorded step indices chosen by `steps`: None (all), a ``(start, stop)`` pair of floats (a fraction
    of the schedule, as in `fg.Where`), or step indices (each must have been recorded)."""
    where = f" of run {label}" if label else ""
    if "step" not in run.dims:
        raise ValueError(f"no 'step' dim{where}: is it an fglens run?")
    recorded = [int(s) for s in run["step"].values]
    if steps is None:
        return recorded
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        steps = [int(steps)]
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or any(
        isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) for s in steps
    ):
        raise TypeError(f"steps must be None, a (start, stop) pair of floats (fractions of the schedule) or step "
                        f"indices; got {steps!r}")
    if any(isinstance(s, (float, np.floating)) for s in steps):
        if len(steps) != 2:
            raise ValueError(f"a fraction range of steps is a (start, stop) pair; got {steps!r}")
        scope = Where(steps=(float(steps[0]), float(steps[1])))  # checks 0 <= start <= stop <= 1
        n = schedule_length(run)
        chosen = [s for s in recorded if scope.has_step(s, n)]
        if not chosen:
            raise ValueError(f"steps={tuple(steps)} selects none of the recorded steps{where} {_short(recorded)} "
                             f"(a schedule of {n} steps)")
        return chosen
    wanted = [int(s) for s in steps]
    if any(s < 0 for s in wanted):
        raise ValueError(f"step indices must be >= 0; got {wanted}")
    missing = [s for s in wanted if s not in recorded]
    if missing:
        raise ValueError(f"steps {missing} were not recorded{' in run ' + label if label else ''}; recorded steps: "
                         f"{_short(recorded)}")
    return list(dict.fromkeys(wanted))


def _short(items: Sequence[Any], n: int = 8) -> str:
    items = [str(x) for x in items]
    return "[" + ", ".join(items if len(items) <= n else [*items[:3], "...", *items[-3:]]) + "]"
