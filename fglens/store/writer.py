"""Writing runs: a background thread turns each forward's small device tensors into one zarr chunk per step.

The tracer hands over device tensors after one non-blocking copy per forward (`to_host`); the writer
thread waits for that copy, merges the CFG branches of a step, and writes the step when the next one
starts. The run's group is created with ``complete = False`` and marked complete only at a clean close,
so a run cut short stays readable with the steps written so far.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from .schema import LEADING_DIMS, SCHEMA_VERSION, VARIABLE_DIMS

_STOP = object()


def to_host(values: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Start one non-blocking device-to-host copy of a nested dict of tensors; return it and an event."""
    event = None
    moved = _map(values, lambda t: t.to("cpu", non_blocking=True) if t.device.type != "cpu" else t)
    devices = {t.device for t in _leaves(values)}
    cuda = [d for d in devices if d.type == "cuda"]
    if cuda:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(cuda[0]))
    return moved, event


def _map(tree: Any, fn) -> Any:
    if isinstance(tree, Mapping):
        return {k: _map(v, fn) for k, v in tree.items()}
    return fn(tree) if isinstance(tree, torch.Tensor) else tree


def _leaves(tree: Any):
    if isinstance(tree, Mapping):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, torch.Tensor):
        yield tree


def _json_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as zarr/xarray accept them: scalars and strings as is, anything nested as JSON text."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if v is None:
            out[k] = "null"
        elif isinstance(v, (str, bool, int, float)):
            out[k] = v
        else:
            out[k] = json.dumps(v, default=str)
    return out


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"run-{stamp}-{uuid.uuid4().hex[:8]}"


# -- sinks ---------------------------------------------------------------------------------------------------
class MemorySink:
    """Keeps the steps in memory (a trace without `store=`)."""

    def __init__(self) -> None:
        self.steps: list[xr.Dataset] = []
        self.attrs: dict[str, Any] = {}
        self.template: xr.Dataset | None = None

    def create(self, template: xr.Dataset) -> None:
        self.template = template
        self.attrs = dict(template.attrs)

    def append(self, ds: xr.Dataset) -> None:
        self.steps.append(ds)

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        self.attrs.update(attrs)

    def dataset(self) -> xr.Dataset:
        ds = xr.concat(self.steps, dim="step") if self.steps else self.template
        return ds.assign_attrs(self.attrs)


class ZarrSink:
    """Writes one run as a group of a zarr v3 store, one chunk per step."""

    def __init__(self, path: str | os.PathLike, run_id: str):
        self.path = str(path)
        self.run_id = run_id
        self.attrs: dict[str, Any] = {}
        self._created = False

    def create(self, template: xr.Dataset) -> None:
        import zarr

        root = zarr.open_group(self.path, mode="a", zarr_format=3)
        root.attrs.update({"fglens_schema": SCHEMA_VERSION, "fglens_store": "runs"})
        if self.run_id in root:
            raise FileExistsError(f"run {self.run_id!r} already exists in {self.path}; runs are never overwritten")
        self.template = template
        self.attrs = dict(template.attrs)

    def append(self, ds: xr.Dataset) -> None:
        if not self._created:
            encoding = {name: {"chunks": tuple(1 if d == "step" else s for d, s in zip(v.dims, v.shape, strict=True))}
                        for name, v in ds.data_vars.items()}
            ds.assign_attrs(self.attrs).to_zarr(
                self.path, group=self.run_id, mode="w-", zarr_format=3, consolidated=False, encoding=encoding
            )
            self._created = True
        else:
            # xarray rewrites the group's attributes on append: hand it the run's own
            ds.assign_attrs(self.attrs).to_zarr(self.path, group=self.run_id, append_dim="step", consolidated=False)

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        import zarr

        self.attrs.update(attrs)
        if not self._created:  # nothing recorded: still leave a readable, empty run
            self.template.assign_attrs(self.attrs).to_zarr(
                self.path, group=self.run_id, mode="w-", zarr_format=3, consolidated=False
            )
            self._created = True
            return
        group = zarr.open_group(self.path, path=self.run_id, mode="r+", zarr_format=3)
        group.attrs.update(attrs)

    def dataset(self) -> xr.Dataset:
        from .reader import open_run

        return open_run(self.path, run=self.run_id)


# -- the writer ----------------------------------------------------------------------------------------------
class RunWriter:
    """Background writer of one run. `put` blocks when `max_pending` forwards wait (back-pressure)."""

    def __init__(
        self,
        sink: MemorySink | ZarrSink,
        *,
        variables: Sequence[str],
        branches: Sequence[str],
        layers: Sequence[str],
        words: Sequence[str],
        grid: tuple[int, int, int],
        attrs: Mapping[str, Any],
        max_pending: int = 8,
    ):
        self.sink = sink
        self.variables = list(variables)
        labels = lambda xs: np.asarray(list(xs), dtype=object)  # noqa: E731 - variable-length strings in zarr
        self.coords = {
            "branch": labels(branches), "layer": labels(layers), "word": labels(words),
            "frame": np.arange(grid[0]), "y": np.arange(grid[1]), "x": np.arange(grid[2]),
        }
        self.sizes = {k: len(v) for k, v in self.coords.items()}
        self.steps_written = 0
        self.checks: dict[str, bool] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._step: int | None = None
        self._buffer: dict[str, np.ndarray] = {}
        self._timestep = float("nan")
        self.sink.create(self._template(attrs))
        self._thread = threading.Thread(target=self._run, name="fglens-writer", daemon=True)
        self._thread.start()

    # -- main thread ------------------------------------------------------------------------------------
    def put(
        self,
        step: int,
        timestep: Mapping[str, Any],
        values: Mapping[str, Mapping[str, Any]],
        checks: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one forward's results (device tensors); blocks while `max_pending` forwards wait."""
        self._raise_if_failed()
        host, event = to_host({"timestep": dict(timestep), "values": dict(values), "checks": dict(checks or {})})
        self._queue.put((step, host, event))

    def close(self, attrs: Mapping[str, Any]) -> None:
        """Drain the queue, write the last step, then update the run's attributes."""
        self._queue.put(_STOP)
        self._thread.join()
        checks = {f"check_{k}": v for k, v in self.checks.items()}
        self.sink.update_attrs(_json_attrs({**attrs, **checks, "steps_written": self.steps_written}))
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"fglens could not write the run: {error}") from error

    # -- writer thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if self._error is not None:
                continue  # keep draining so the main thread never blocks on a dead writer
            try:
                self._merge(*item)
            except BaseException as exc:  # noqa: BLE001 - reported on the main thread
                self._error = exc
        try:
            if self._error is None:
                self._flush()
        except BaseException as exc:  # noqa: BLE001
            self._error = exc

    def _merge(self, step: int, host: Mapping[str, Any], event: Any) -> None:
        if event is not None:
            event.synchronize()
        if self._step is not None and step != self._step:
            self._flush()
        if self._step is None:
            self._step = step
            self._buffer = {v: np.full(self._shape(v), np.nan, dtype=np.float32) for v in self.variables}
            self._timestep = float("nan")
        for name, ok in host["checks"].items():
            self.checks[name] = self.checks.get(name, True) and bool(ok)
        for t in host["timestep"].values():
            self._timestep = float(t)
        for branch, per_var in host["values"].items():
            b = list(self.coords["branch"]).index(branch)
            for var, value in per_var.items():
                if var in self._buffer:
                    self._buffer[var][b, 0] = value.numpy()

    def _flush(self) -> None:
        if self._step is None:
            return
        ds = self._dataset(self._buffer, [self._step], [self._timestep])
        self.sink.append(ds)
        self.steps_written += 1
        self._step = None

    # -- layout -----------------------------------------------------------------------------------------
    def _shape(self, var: str, steps: int = 1) -> tuple[int, ...]:
        tail = tuple(self.sizes[d] for d in VARIABLE_DIMS[var])
        return (self.sizes["branch"], steps, self.sizes["layer"], *tail)

    def _dataset(self, arrays: Mapping[str, np.ndarray], steps: list[int], timesteps: list[float]) -> xr.Dataset:
        data_vars = {v: (LEADING_DIMS + VARIABLE_DIMS[v], arrays[v]) for v in self.variables}
        used = {d for v in self.variables for d in VARIABLE_DIMS[v]} | set(LEADING_DIMS)
        coords: dict[str, Any] = {k: v for k, v in self.coords.items() if k in used}
        coords["step"] = np.asarray(steps, dtype=np.int64)
        coords["timestep"] = ("step", np.asarray(timesteps, dtype=np.float64))
        return xr.Dataset(data_vars, coords=coords)

    def _template(self, attrs: Mapping[str, Any]) -> xr.Dataset:
        empty = {v: np.zeros(self._shape(v, 0), dtype=np.float32) for v in self.variables}
        return self._dataset(empty, [], []).assign_attrs(_json_attrs(attrs))


def store_path(path: str | os.PathLike) -> Path:
    """Check that `path` is a new location or an fglens store (runs are added, never overwritten)."""
    import zarr

    p = Path(path)
    if p.exists():
        try:
            root = zarr.open_group(str(p), mode="r")
            is_fglens = root.attrs.get("fglens_store") == "runs"
        except Exception:  # noqa: BLE001 - anything unreadable as a zarr group is "not ours"
            is_fglens = False
        if not is_fglens:
            raise FileExistsError(
                f"{p} exists and is not an fglens store; fglens never overwrites it. Choose a new path, or an "
                "existing fglens store to add a run to it."
            )
        version = root.attrs.get("fglens_schema", 0)
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"{p} was written with fglens store schema {version}; this fglens reads up to {SCHEMA_VERSION}. "
                "Upgrade fglens."
            )
    return p
