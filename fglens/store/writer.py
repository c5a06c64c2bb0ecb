"""Writing runs: a background thread turns each forward's small device tensors into one zarr chunk per step.

The tracer hands over device tensors after one non-blocking copy per forward (`to_host`); the writer
thread waits for that copy, merges the CFG branches of a step, and writes the step when the next one
starts. The queue between them is bounded (`max_pending`): when the disk is slower than sampling, `put`
blocks instead of letting host memory grow. A run appears in the store, all at once, with
``complete = False``; after each step the run's ``steps_written`` attribute is raised, and ``complete``
becomes True only at a clean close, so a run cut short stays readable with the steps written so far.
The run's reference image (``reference_image``, when given) is part of what appears at creation: it is
written once, as one chunk, never per step.
Store-level rules for many concurrent writers are in `fglens.store.layout`.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import uuid
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..stats.table import variable_attrs
from .layout import check_run_id, claim_run, disk_size, ensure_root, root_attrs
from .reader import ordinary_strings
from .schema import (
    FLAG_ATTRS,
    IMAGE_DIMS,
    LEADING_DIMS,
    REFERENCE_IMAGE,
    SCHEMA_VERSION,
    VARIABLE_DIMS,
    chunk_codecs,
)

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
    """``run-<UTC time to the microsecond>-<8 random hex>``: ids sort by creation, also within one second."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
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
        once = {n: v for n, v in self.template.data_vars.items() if "step" not in v.dims}  # the reference image
        return ordinary_strings(ds.assign(once).assign_attrs(self.attrs))  # <U labels, as open_run gives

    def __str__(self) -> str:
        return "the in-memory run"


class StoreTarget(os.PathLike):
    """A store path plus how to name the run written there: what `store_path(path, run_id=...)` returns.

    Pass it as ``store=`` to `fg.trace`: the run gets `run_id` instead of a generated name (a second pipeline
    call in the same block gets ``<run_id>-1``, see `fg.trace`). An existing complete run with that id is
    never replaced; an incomplete one only with ``overwrite_incomplete=True``.

    Example:
        >>> import fglens as fg, tempfile, os
        >>> target = fg.store.store_path(os.path.join(tempfile.mkdtemp(), "sweep.zarr"), run_id="line-0007")
        >>> target.run_id, os.fspath(target).endswith("sweep.zarr")
        ('line-0007', True)
    """

    def __init__(self, path: str | os.PathLike, run_id: str, overwrite_incomplete: bool = False):
        self.path = Path(path)
        self.run_id = check_run_id(run_id)
        self.overwrite_incomplete = bool(overwrite_incomplete)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return (f"StoreTarget({str(self.path)!r}, run_id={self.run_id!r}, "
                f"overwrite_incomplete={self.overwrite_incomplete})")


class ZarrSink:
    """Writes one run as a group of a zarr v3 store, one chunk per step.

    `path` may be a `StoreTarget`, whose run id then replaces `run_id`. The run directory is created
    complete with all its arrays (zero steps) at `create`, each step is appended and then committed by
    raising the run's ``steps_written`` attribute, and the final attributes are followed by the run's
    consolidated metadata. Nothing outside the run's own directory is written after the store's root
    exists, so concurrent writers of other runs cannot interfere.
    """

    def __init__(self, path: str | os.PathLike, run_id: str, *, overwrite_incomplete: bool = False):
        if isinstance(path, StoreTarget):
            run_id, overwrite_incomplete = path.run_id, overwrite_incomplete or path.overwrite_incomplete
        self.path = os.fspath(path)
        self.run_id = check_run_id(run_id)
        self.overwrite_incomplete = overwrite_incomplete
        self.run_dir = os.path.join(self.path, self.run_id)
        self.attrs: dict[str, Any] = {}
        self.steps_written = 0

    def create(self, template: xr.Dataset) -> None:
        self.attrs = {**template.attrs, "run": self.run_id, "fglens_schema": SCHEMA_VERSION, "complete": False,
                      "steps_written": 0}
        self.template = template.assign_attrs(self.attrs)
        encoding = {name: {"compressors": chunk_codecs()} for name in self.template.variables}  # checksummed chunks
        for name, v in self.template.variables.items():  # one chunk per step; the reference image in one chunk
            if "step" in v.dims or name == REFERENCE_IMAGE:
                encoding[name]["chunks"] = tuple(1 if d == "step" else max(n, 1)
                                                 for d, n in zip(v.dims, v.shape, strict=True))
        try:
            ensure_root(self.path)
            claim_run(
                self.path, self.run_id,
                lambda staging: self.template.to_zarr(staging, mode="w-", zarr_format=3, consolidated=False,
                                                      encoding=encoding, write_empty_chunks=True),
                overwrite_incomplete=self.overwrite_incomplete,
            )
        except FileExistsError:
            raise  # the run id is taken, or the path is not an fglens store: said as such
        except OSError as exc:  # a full disk, a lost mount: the documented RuntimeError, naming the store
            raise RuntimeError(f"fglens could not create {self}: {exc}") from exc

    def _check_folder(self) -> None:
        if not os.path.isdir(self.run_dir):  # else zarr reports it as a missing key, e.g. "'word'"
            raise FileNotFoundError(f"the run's folder {self.run_dir} no longer exists (removed while the run was "
                                    "being written)")

    def append(self, ds: xr.Dataset) -> None:
        self._check_folder()
        # xarray rewrites the group's attributes before appending: hand it the run's own (steps not yet raised)
        ds.assign_attrs(self.attrs).to_zarr(self.run_dir, append_dim="step", consolidated=False, zarr_format=3,
                                            write_empty_chunks=True)  # every committed chunk exists: verifiable
        self.steps_written += ds.sizes["step"]
        self._set_attrs({"steps_written": self.steps_written})  # the commit: readers trust this many steps

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Write the run's final attributes (with its size on disk), then its consolidated metadata."""
        self._set_attrs({**attrs, "size_bytes": disk_size(self.run_dir)})
        import zarr

        try:
            with warnings.catch_warnings():  # "consolidated metadata is not part of the zarr v3 spec (yet)"
                warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
                zarr.consolidate_metadata(self.run_dir, zarr_format=3)
        except OSError as exc:  # only a speed-up for readers: the run is whole without it
            warnings.warn(f"could not consolidate the metadata of {self}: {exc}", RuntimeWarning, stacklevel=2)

    def _set_attrs(self, attrs: Mapping[str, Any]) -> None:
        import zarr

        self.attrs.update(attrs)
        self._check_folder()
        group = zarr.open_group(self.run_dir, mode="r+", zarr_format=3, use_consolidated=False)
        group.attrs.update(attrs)

    def dataset(self) -> xr.Dataset:
        from .reader import open_run

        return open_run(self.path, run=self.run_id)

    def __str__(self) -> str:
        return f"run {self.run_id!r} of {self.path}"


# -- the writer ----------------------------------------------------------------------------------------------
class RunWriter:
    """Background writer of one run. `put` blocks when `max_pending` forwards wait (back-pressure).

    `image`, an ``(image_y, image_x, 3)`` uint8 array, is stored as the run's ``reference_image`` when the run is
    created (`fglens.store.image.reference_thumbnail` makes one from a pipeline's `image` argument).
    """

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
        image: np.ndarray | None = None,
    ):
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive int (forwards allowed to wait), got {max_pending!r}")
        self.sink = sink
        self.variables = list(variables)
        labels = lambda xs: np.asarray(list(xs), dtype=object)  # noqa: E731 - variable-length strings in zarr
        self.coords = {
            "branch": labels(branches), "layer": labels(layers), "word": labels(words),
            "frame": np.arange(grid[0]), "y": np.arange(grid[1]), "x": np.arange(grid[2]),
        }
        self.sizes = {k: len(v) for k, v in self.coords.items()}
        self.image = None if image is None else _check_image(image)
        self.steps_written = 0
        self.checks: dict[str, bool] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None  # the first write error; the writer stops writing once set
        self._reported = False  # raised to the caller already (by `put`): not raised again at close
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
        """Drain the queue, write the last step, then write the run's final attributes.

        A write error (full disk, lost mount, ...) is raised here as `RuntimeError` from the original
        `OSError`, unless `put` has already raised it. Steps committed before the error stay readable.
        """
        self._queue.put(_STOP)
        self._thread.join()
        checks = {f"check_{k}": v for k, v in self.checks.items()}
        final = {**attrs, **checks, "steps_written": self.steps_written}
        if self._error is not None:
            final["complete"] = False  # steps were lost
        try:
            self.sink.update_attrs(_json_attrs(final))
        except Exception as exc:  # noqa: BLE001 - reported below, once
            if self._error is None:
                self._error = exc
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            raise RuntimeError(
                f"fglens could not write {self.sink}: {self._error}. The run is left incomplete with the "
                f"{self.steps_written} step(s) written before the error; other runs are untouched."
            ) from self._error

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
            self._buffer = {v: self._empty(v) for v in self.variables}
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

    def _empty(self, var: str, steps: int = 1) -> np.ndarray:
        """A step's buffer: NaN for a statistic (where nothing was recorded), False for a flag."""
        if var in FLAG_ATTRS:
            return np.zeros(self._shape(var, steps), dtype=bool)
        return np.full(self._shape(var, steps), np.nan, dtype=np.float32)

    def _dataset(self, arrays: Mapping[str, np.ndarray], steps: list[int], timesteps: list[float]) -> xr.Dataset:
        # each variable says what it is, as xarray users expect (`long_name`, `description`: fglens.stats.table)
        data_vars = {v: (LEADING_DIMS + VARIABLE_DIMS[v], arrays[v], FLAG_ATTRS.get(v) or variable_attrs(v))
                     for v in self.variables}
        used = {d for v in self.variables for d in VARIABLE_DIMS[v]} | set(LEADING_DIMS)
        coords: dict[str, Any] = {k: v for k, v in self.coords.items() if k in used}
        coords["step"] = np.asarray(steps, dtype=np.int64)
        coords["timestep"] = ("step", np.asarray(timesteps, dtype=np.float64))
        return xr.Dataset(data_vars, coords=coords)

    def _template(self, attrs: Mapping[str, Any]) -> xr.Dataset:
        empty = {v: self._empty(v, 0) for v in self.variables}
        template = self._dataset(empty, [], [])
        if self.image is not None:
            template[REFERENCE_IMAGE] = (IMAGE_DIMS, self.image)
        return template.assign_attrs(_json_attrs(attrs))


def _check_image(image: np.ndarray) -> np.ndarray:
    """The reference image as the run stores it: an ``(image_y, image_x, 3)`` uint8 array (see `fglens.store.image`)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise ValueError(f"RunWriter(image=...) takes an (image_y, image_x, 3) uint8 array (fglens.store.image."
                         f"reference_thumbnail makes one); got {arr.dtype} {arr.shape}")
    return arr


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before anything is sampled, a store path that cannot be written: `NotADirectoryError` when the nearest
    existing folder on the way is a file, `PermissionError` when it is not writable (no permission, or a read-only
    file system)."""
    p = Path(path)
    existing = p
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot write the store {p}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write the store {p}: {existing} is not writable (no permission, or a "
                              "read-only file system)")


def store_path(
    path: str | os.PathLike, *, run_id: str | None = None, overwrite_incomplete: bool = False
) -> Path | StoreTarget:
    """Check that `path` is a new location or an fglens store this fglens can write (runs are added, never replaced).

    With `run_id`, returns a `StoreTarget`: ``fg.trace(pipe, store=target)`` then writes the run under that
    id (deterministic ids let a sweep resume). Nothing is created until a run is written.

    Example:
        >>> import fglens as fg, tempfile, os
        >>> fg.store.store_path(os.path.join(tempfile.mkdtemp(), "runs.zarr")).name
        'runs.zarr'
    """
    if isinstance(path, StoreTarget):
        if run_id is not None and run_id != path.run_id:
            raise ValueError(f"store_path got a StoreTarget for run {path.run_id!r} and also run_id={run_id!r}")
        run_id, overwrite_incomplete = path.run_id, overwrite_incomplete or path.overwrite_incomplete
        path = path.path
    p = Path(path)
    root_attrs(p, missing_ok=True)  # raises for a path that is not an fglens store or is too new
    check_writable(p)
    if run_id is not None:
        return StoreTarget(p, run_id, overwrite_incomplete)
    if overwrite_incomplete:
        raise ValueError("overwrite_incomplete=True needs run_id=: generated run ids never collide")
    return p
