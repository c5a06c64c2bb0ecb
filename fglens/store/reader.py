"""Reading runs back as xarray Datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import xarray as xr

from .schema import SCHEMA_VERSION

JSON_ATTRS = ("model_config", "record", "definitions", "word_positions", "grid", "intervention", "seed")


def _root(path: str | os.PathLike):
    import zarr

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no fglens store at {p}")
    try:
        root = zarr.open_group(str(p), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{p} is not a zarr store: {exc}") from exc
    if root.attrs.get("fglens_store") != "runs":
        raise ValueError(f"{p} is a zarr store but not an fglens store (no 'fglens_store' attribute)")
    version = root.attrs.get("fglens_schema", 0)
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{p} uses fglens store schema {version}; this fglens reads up to {SCHEMA_VERSION}. Upgrade fglens."
        )
    return root


def list_runs(path: str | os.PathLike) -> list[str]:
    """Names of the runs in a store, oldest first.

    Example:
        >>> import fglens as fg, tempfile, os
        >>> fg.store.list_runs(os.path.join(tempfile.mkdtemp(), "missing.zarr"))
        Traceback (most recent call last):
        ...
        FileNotFoundError: no fglens store at ...
    """
    root = _root(path)
    return sorted(name for name, _ in root.groups())


def decode_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The run attributes with JSON-encoded entries decoded (model_config, record, word_positions, ...)."""
    out = dict(attrs)
    for key in JSON_ATTRS:
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    return out


def open_run(path: str | os.PathLike, run: str | None = None, *, load: bool = True) -> xr.Dataset:
    """Open one run of a store as an `xarray.Dataset`.

    Args:
        path: the store (a ``.zarr`` directory written by `fg.trace(..., store=path)`).
        run: the run's name; may be omitted when the store holds exactly one run.
        load: read the values into memory (default) rather than lazily.

    Example:
        >>> import fglens as fg
        >>> ds = fg.open_run("runs/dog.zarr")                          # doctest: +SKIP
        >>> ds.morans_i.sel(branch="cond", word="dog").mean("frame")   # doctest: +SKIP
    """
    runs = list_runs(path)
    if run is None:
        if len(runs) != 1:
            raise ValueError(f"{path} holds {len(runs)} runs; pass run= one of {runs}")
        run = runs[0]
    elif run not in runs:
        raise KeyError(f"no run {run!r} in {path}; runs: {runs}")
    ds = xr.open_zarr(str(path), group=run, consolidated=False, zarr_format=3)
    if load:
        ds = ds.load()
    return ds.assign_attrs(run=run)
