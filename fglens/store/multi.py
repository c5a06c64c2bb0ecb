"""Many runs of a store as one `xarray.Dataset` with a ``run`` dim, read lazily.

Runs are stacked without copying: each variable is one lazy array over ``(run, branch, step, layer, ...)``
whose reads go to the runs' own zarr chunks (`_RunStack`). Words are aligned on slots: the ``word`` dim
is a slot index 0..W-1 (W: the most words of any run), the coordinate ``word_label`` (run, word) names the
word of each slot, and slots a run does not have are NaN (label ``""``). Steps are aligned on the step
index, and steps a run does not have (fewer steps, or cut short) are NaN, as is its ``timestep`` (run, step).
With dask installed the arrays are dask arrays chunked like the store (one chunk per run and step).

Reference images (``reference_image``, kept by image-to-video runs) are stacked the same lazy way: padded
with 0 to the largest image along ``image_y`` and ``image_x``, each run's own size in the coordinate
``image_size (run, image_side)``; a run without an image is all 0 with size (0, 0).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from .reader import RunMeta, UnreadableRun, intervention_text, list_runs, read_run
from .schema import IMAGE_DIMS, REFERENCE_IMAGE, SKIPPED

#: dims that must be identical in every run opened together
_SHARED_DIMS = ("branch", "layer", "frame", "y", "x")


def open_runs(
    path: str | os.PathLike,
    runs: Sequence[str] | None = None,
    *,
    lazy: bool = True,
    complete_only: bool = False,
) -> xr.Dataset:
    """Open several runs of a store as one `xarray.Dataset` with a ``run`` dim.

    Args:
        path: the store.
        runs: run names to open, in this order (default: every run, sorted by name).
        lazy: keep the values on disk until used (dask arrays when dask is installed, otherwise xarray's
            lazily indexed arrays); ``False`` loads everything.
        complete_only: leave out runs that are not complete (cut short, or still being written).

    A run that cannot be read (damaged metadata, a newer schema: `fglens.store.UnreadableRun`) is left out of
    a whole store with a warning naming its folder and why; asked for by name in `runs`, it raises.

    Coordinates along ``run``: ``run`` (its name), ``prompt``, ``seed`` (None when not recorded),
    ``intervention`` (its JSON text, or ``"none"``), ``complete``, ``model_class``, ``steps_written``,
    ``num_steps`` (the length of its schedule; NaN when unknown), and, when any run kept its reference image,
    ``image_size`` (run, image_side): the height and width of that run's image inside ``reference_image``
    (run, image_y, image_x, channel), which is padded with 0 to the largest image ((0, 0): no image).
    ``word`` is a slot index with ``word_label`` (run, word) naming each slot; ``timestep`` is (run, step);
    slots and steps a run does not have are NaN. The runs must share their layers, branches and latent grid.

    Example:
        >>> import fglens as fg
        >>> ds = fg.open_runs("sweep.zarr", complete_only=True)                        # doctest: +SKIP
        >>> dog = ds.word_mass.where(ds.word_label == "dog").max("word")               # doctest: +SKIP
        >>> dog.sel(branch="cond").mean(["step", "frame"]).groupby("prompt").mean()    # doctest: +SKIP
    """
    names = list_runs(path)
    if runs is None:
        selected = names
    else:
        selected = [runs] if isinstance(runs, str) else list(runs)
        unknown = [r for r in selected if r not in names]
        if unknown:
            raise KeyError(f"no run(s) {unknown} in {path}; runs: {names}")
    metas = []
    for name in selected:
        try:
            metas.append(read_run(path, name))
        except UnreadableRun as exc:
            if runs is not None:  # asked for by name: refused, with the path and the reason
                raise
            warnings.warn(f"left out: {exc}", RuntimeWarning, stacklevel=2)
    if complete_only:
        metas = [m for m in metas if m.complete]
    if not metas:
        raise ValueError(f"no {'complete ' if complete_only else ''}runs to open in {path} (runs: {names})")
    ds = _stack([_RunView(m) for m in metas])
    if lazy:
        if _have_dask():  # one dask chunk per run and step, as stored; coordinates stay in memory (groupby)
            small = {c: ds.coords[c].variable for c in ds.coords if c not in ds.dims}
            ds = ds.chunk({d: 1 for d in ("run", "step") if ds.sizes.get(d, 0) > 0}).assign_coords(small)
        return ds
    return ds.load()


def _have_dask() -> bool:
    try:
        import dask  # noqa: F401
        import dask.array  # noqa: F401
    except ImportError:
        return False
    return True


class _RunView:
    """One run opened for stacking: its zarr arrays, its dim labels, its committed steps."""

    def __init__(self, meta: RunMeta):
        import zarr

        self.meta = meta
        self.group = zarr.open_group(meta.dir, mode="r", zarr_format=3, use_consolidated=meta.consolidated)
        self.dims = {name: tuple(m["dimension_names"]) for name, m in meta.arrays.items()}
        self.steps = meta.steps
        self.labels = {d: self._read(d) for d in (*_SHARED_DIMS, "word") if d in self.dims}
        self.step_values = self._read("step")[: self.steps].astype(np.int64) if "step" in self.dims else np.zeros(0)
        self.timestep = self._read("timestep")[: self.steps] if "timestep" in self.dims else np.full(self.steps, np.nan)
        coords = {c for m in meta.arrays.values() for c in str(m.get("attributes", {}).get("coordinates", "")).split()}
        self.variables = [n for n in self.dims if n not in self.dims[n] and n not in coords]
        shape = meta.arrays[REFERENCE_IMAGE]["shape"] if REFERENCE_IMAGE in self.dims else (0, 0)
        self.image_size = (int(shape[0]), int(shape[1]))  # from the metadata: no chunk is read

    def _read(self, name: str) -> np.ndarray:
        values = np.asarray(self.group[name][...])
        if values.dtype.kind == "T":  # zarr's variable-width strings: ordinary <U labels, as open_run gives
            return values.astype(f"<U{max(int(np.strings.str_len(values).max()) if values.size else 1, 1)}")
        return values


def _stack(views: list[_RunView]) -> xr.Dataset:
    _check_shared(views)
    steps = np.unique(np.concatenate([v.step_values for v in views])).astype(np.int64)
    n_words = max(len(v.labels.get("word", ())) for v in views)
    variables: dict[str, tuple[str, ...]] = {}
    for v in views:
        for name in v.variables:
            dims = variables.setdefault(name, v.dims[name])
            if dims != v.dims[name]:
                raise ValueError(f"variable {name!r} has dims {dims} in one run and {v.dims[name]} in run "
                                 f"{v.meta.name!r}; such runs cannot be opened together")
    if REFERENCE_IMAGE in variables and variables[REFERENCE_IMAGE] != IMAGE_DIMS:
        raise ValueError(f"{REFERENCE_IMAGE!r} has dims {variables[REFERENCE_IMAGE]}; expected {IMAGE_DIMS}")
    image_y, image_x = (max(v.image_size[i] for v in views) for i in (0, 1))
    sizes = {"run": len(views), "step": len(steps), "word": n_words, "image_y": image_y, "image_x": image_x,
             "channel": 3, **{d: len(lab) for v in views for d, lab in v.labels.items() if d in _SHARED_DIMS}}
    padded = ("step", "word", "image_y", "image_x")

    # where each run's data sits along the padded dims: local index, or -1 for padding
    def local(view: _RunView, dim: str) -> np.ndarray:
        if dim == "step":
            at = {int(s): i for i, s in enumerate(view.step_values)}
            return np.asarray([at.get(int(s), -1) for s in steps], dtype=np.int64)
        n, total = {"word": (len(view.labels.get("word", ())), n_words), "image_y": (view.image_size[0], image_y),
                    "image_x": (view.image_size[1], image_x)}[dim]
        return np.where(np.arange(total) < n, np.arange(total), -1)

    data_vars = {}
    for name, dims in variables.items():
        arrays = [v.group[name] if name in v.variables else None for v in views]
        maps = [{ax: local(v, d) for ax, d in enumerate(dims, start=1) if d in padded} for v in views]
        shape = (len(views), *(sizes[d] for d in dims))
        # images: uint8 padded with black; the skipped flag: False where a run has none (it had no step cache)
        fill = 0 if name in (REFERENCE_IMAGE, SKIPPED) else np.nan
        stack = _RunStack(arrays, maps, shape, fill=fill)
        data_vars[name] = xr.Variable(("run", *dims), indexing.LazilyIndexedArray(stack))

    coords: dict[str, Any] = {d: v.labels[d] for v in reversed(views) for d in _SHARED_DIMS if d in v.labels}
    coords["step"] = steps
    coords["timestep"] = (("run", "step"), np.stack([_pad(v.timestep, local(v, "step"), np.nan, np.float64)
                                                     for v in views]))
    if n_words:
        coords["word"] = np.arange(n_words)
        coords["word_label"] = (("run", "word"), np.stack(
            [_pad(v.labels.get("word", []), local(v, "word"), "", object) for v in views]).astype(str))
    attrs = [v.meta.attrs for v in views]
    coords.update({
        "run": [v.meta.name for v in views],
        "prompt": ("run", [a.get("prompt") or "" for a in attrs]),
        "seed": ("run", np.asarray([a.get("seed") if isinstance(a.get("seed"), int) else None for a in attrs],
                                   dtype=object)),
        "intervention": ("run", [intervention_text(a.get("intervention")) for a in attrs]),
        "complete": ("run", np.asarray([v.meta.complete for v in views], dtype=bool)),
        "model_class": ("run", [a.get("model_class") or "" for a in attrs]),
        "steps_written": ("run", np.asarray([v.steps for v in views], dtype=np.int64)),
        "num_steps": ("run", np.asarray([a["num_steps"] if isinstance(a.get("num_steps"), int) else np.nan
                                         for a in attrs], dtype=np.float64)),
    })
    if REFERENCE_IMAGE in data_vars:
        coords["image_side"] = ["image_y", "image_x"]
        coords["image_size"] = (("run", "image_side"), np.asarray([v.image_size for v in views], dtype=np.int64))
    shared = {k: val for k, val in attrs[0].items()
              if all(k in a and _same(a[k], val) for a in attrs[1:])
              and k not in ("run", "complete", "steps_written", "size_bytes", "created")}
    return xr.Dataset(data_vars, coords=coords, attrs=shared)


def _check_shared(views: list[_RunView]) -> None:
    """Runs opened together must agree on every shared dim they have (a run without maps has no y, x)."""
    for dim in _SHARED_DIMS:
        groups: dict[tuple, list[str]] = {}
        for v in views:
            if dim in v.labels:
                groups.setdefault(tuple(np.asarray(v.labels[dim]).tolist()), []).append(v.meta.name)
        if len(groups) > 1:
            lines = "\n".join(f"  {names}: {len(labels)} ({_short(labels)})" for labels, names in groups.items())
            raise ValueError(
                f"these runs cannot share one Dataset: their {dim!r} labels differ\n{lines}\n"
                "pick runs that match with open_runs(path, runs=[...])"
            )


def _short(labels: tuple) -> str:
    labels = [str(x) for x in labels]
    return ", ".join(labels) if len(labels) <= 4 else f"{labels[0]}, {labels[1]}, ..., {labels[-1]}"


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except ValueError:
        return False


def _pad(values: Any, where: np.ndarray, fill: Any, dtype: Any) -> np.ndarray:
    """`values` at the padded positions: ``out[i] = values[where[i]]``, and `fill` where ``where[i]`` is -1."""
    out = np.full(len(where), fill, dtype=dtype)
    keep = where >= 0
    out[keep] = np.asarray(values, dtype=dtype)[where[keep]]
    return out


class _RunStack(BackendArray):
    """A lazy ``(run, ...)`` array over the runs' zarr arrays, `fill` where a run has no data (padding).

    With the default NaN fill the dtype is promoted to a float; with a number fill (0 for the reference images)
    the runs' own dtype is kept.
    """

    def __init__(self, arrays: list, maps: list[dict[int, np.ndarray]], shape: tuple[int, ...],
                 fill: float = np.nan):
        self.arrays = arrays
        self.maps = maps
        self.shape = shape
        self.fill = fill
        dtypes = [np.dtype(a.dtype) for a in arrays if a is not None]
        dtype = dtypes[0] if dtypes else np.dtype(np.float32)
        self.dtype = np.promote_types(dtype, np.float32) if np.isnan(fill) else dtype

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, self.shape, [None if a is None else (str(a.store), a.path) for a in self.arrays],
                [{k: v.tolist() for k, v in m.items()} for m in self.maps])

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._getitem)

    def _getitem(self, key: tuple) -> np.ndarray:
        index, drop = [], []
        for axis, k in enumerate(key):
            if isinstance(k, (int, np.integer)):
                drop.append(axis)
            index.append(np.arange(self.shape[axis])[k].reshape(-1))
        out = np.full([len(i) for i in index], self.fill, dtype=self.dtype)
        for pos, r in enumerate(index[0]):
            array = self.arrays[r]
            if array is None:
                continue
            local, where = [], []
            for axis, wanted in enumerate(index[1:], start=1):
                mapped = self.maps[r][axis][wanted] if axis in self.maps[r] else wanted
                keep = mapped >= 0
                local.append(mapped[keep])
                where.append(np.flatnonzero(keep))
            if any(len(w) == 0 for w in where):
                continue
            out[pos][np.ix_(*where)] = array.oindex[tuple(_as_slice(i) for i in local)]
        return out.squeeze(axis=tuple(drop)) if drop else out


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A run of consecutive indices as a slice (one contiguous zarr read), anything else as is."""
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index
