"""Reading runs back: list a store's runs, read their attributes quickly, open one run as an `xarray.Dataset`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .layout import disk_size, read_meta, root_attrs, run_dirs
from .schema import check_schema
from .verify import Verdict, check_chunks

JSON_ATTRS = ("model_config", "record", "definitions", "word_positions", "word_positions_uncond", "grid",
              "intervention", "seed", "words", "step_cache", "edits_skipped")


def list_runs(path: str | os.PathLike) -> list[str]:
    """Names of the runs in a store, sorted (generated names sort by creation time).

    Example:
        >>> import fglens as fg, tempfile, os
        >>> fg.store.list_runs(os.path.join(tempfile.mkdtemp(), "missing.zarr"))
        Traceback (most recent call last):
        ...
        FileNotFoundError: no fglens store at ...
    """
    root_attrs(path)
    return run_dirs(path)


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


@dataclass
class RunMeta:
    """What a run's metadata says, read without touching any chunk."""

    name: str
    dir: Path
    attrs: dict[str, Any]
    consolidated: bool
    _arrays: dict[str, dict[str, Any]] | None = None

    @property
    def arrays(self) -> dict[str, dict[str, Any]]:
        """Array name -> its zarr metadata (from the consolidated metadata when the run has it)."""
        if self._arrays is None:
            self._arrays = {}
            for entry in sorted(os.scandir(self.dir), key=lambda e: e.name):
                meta = (_meta_of(Path(entry.path), self.name, self.dir.parent)
                        if entry.is_dir() and not entry.name.startswith(".") else None)
                if meta is not None and meta.get("node_type") == "array":
                    self._arrays[entry.name] = meta
        return self._arrays

    @property
    def step_lengths(self) -> dict[str, int]:
        """Length along ``step`` of every array that has that dim."""
        return {name: m["shape"][m["dimension_names"].index("step")]
                for name, m in self.arrays.items() if "step" in (m.get("dimension_names") or [])}

    @property
    def steps(self) -> int:
        """Steps that are fully written: the committed ``steps_written``, never more than every array holds."""
        lengths = list(self.step_lengths.values())
        shortest = min(lengths) if lengths else 0
        committed = self.attrs.get("steps_written")
        return min(committed, shortest) if isinstance(committed, int) else shortest

    @property
    def complete(self) -> bool:
        return self.attrs.get("complete") is True


class UnreadableRun(ValueError):
    """A run this fglens cannot read: damaged metadata, or written by a newer fglens. The message names the
    run, its folder and the reason. Listings report such a run (`run_table`'s ``problem``, `fglens inspect`),
    `open_runs` of a whole store leaves it out with a warning, and opening it by name raises this."""


def _meta_of(node: Path, run: str, path: str | os.PathLike) -> dict[str, Any] | None:
    file = node / "zarr.json"
    try:
        meta = read_meta(node)
    except (OSError, ValueError) as exc:  # truncated or garbled JSON, unreadable file
        raise UnreadableRun(f"run {run!r} in {path} is unreadable: {file} is damaged "
                            f"({type(exc).__name__}: {exc})") from exc
    if meta is not None and not isinstance(meta, dict):
        raise UnreadableRun(f"run {run!r} in {path} is unreadable: {file} holds {type(meta).__name__}, not a "
                            "zarr metadata object")
    return meta


def read_run(path: str | os.PathLike, run: str) -> RunMeta:
    """The metadata of run `run` of the store at `path` (one small file for a run closed cleanly).

    Raises `UnreadableRun` for damaged metadata or a run written by a newer fglens, naming its folder.
    """
    run_dir = Path(path) / run
    meta = _meta_of(run_dir, run, path)
    if meta is None or meta.get("node_type") != "group":
        raise KeyError(f"no run {run!r} in {path}; runs: {run_dirs(path)}")
    try:
        check_schema(meta.get("attributes", {}).get("fglens_schema", 1), f"run {run!r} in {path} ({run_dir})")
    except ValueError as exc:
        raise UnreadableRun(str(exc)) from None
    consolidated = meta.get("consolidated_metadata") or None
    out = RunMeta(run, run_dir, meta.get("attributes", {}), consolidated is not None)
    if consolidated is not None:
        out._arrays = {k: v for k, v in consolidated.get("metadata", {}).items() if v.get("node_type") == "array"}
    return out


def run_info(path: str | os.PathLike, run: str) -> dict[str, Any] | None:
    """The decoded attributes of one run, or None when the store or the run does not exist.

    For a sweep: a run to skip has ``run_info(store, run_id)["complete"] is True``.

    Example:
        >>> import fglens as fg, tempfile, os
        >>> fg.store.run_info(os.path.join(tempfile.mkdtemp(), "new.zarr"), "line-0001") is None
        True
    """
    if root_attrs(path, missing_ok=True) is None or not (Path(path) / run / "zarr.json").exists():
        return None
    meta = read_run(path, run)
    return decode_attrs({**meta.attrs, "complete": meta.complete, "steps_written": meta.steps})


def run_table(path: str | os.PathLike):
    """One row per run of the store, from the runs' attributes only (no array data is read).

    Columns: ``id, prompt, seed, words, intervention`` (JSON text or ``"none"``), ``complete``,
    ``steps_written``, ``num_steps``, ``created``, ``model_class``, ``size_bytes`` (bytes on disk: recorded at
    close, measured for a run still open or cut short), ``problem`` (None, or why the run cannot be read:
    damaged metadata or a newer schema, naming the file; such a run is listed, not opened).

    Example:
        >>> import fglens as fg
        >>> fg.store.run_table("sweep.zarr")[["id", "complete", "steps_written"]]   # doctest: +SKIP
    """
    import pandas as pd

    columns = ["id", "prompt", "seed", "words", "intervention", "complete", "steps_written", "num_steps",
               "created", "model_class", "size_bytes", "problem"]
    rows = []
    for name in list_runs(path):
        try:
            meta = read_run(path, name)
        except UnreadableRun as exc:  # reported, not fatal: one bad run does not hide the others
            rows.append({"id": name, "intervention": "none", "complete": False, "steps_written": 0,
                         "size_bytes": disk_size(Path(path) / name), "problem": str(exc)})
            continue
        attrs = decode_attrs(meta.attrs)
        size = attrs.get("size_bytes") if meta.complete else None
        rows.append({
            "id": name, "prompt": attrs.get("prompt"), "seed": attrs.get("seed"), "words": attrs.get("words"),
            "intervention": intervention_text(meta.attrs.get("intervention")), "complete": meta.complete,
            "steps_written": meta.steps, "num_steps": attrs.get("num_steps"), "created": attrs.get("created"),
            "model_class": attrs.get("model_class"),
            "size_bytes": size if isinstance(size, int) else disk_size(meta.dir), "problem": None,
        })
    return pd.DataFrame(rows, columns=columns)


def intervention_text(value: Any) -> str:
    """A run's intervention as stored (JSON text), or ``"none"``."""
    if value is None or value == "null":
        return "none"
    return value if isinstance(value, str) else json.dumps(value)


def intervention_summary(text: Any) -> str:
    """A run's intervention (JSON text as in `run_table`, or its spec) as ``Type`` or ``Type(Part, Part)``; ``none``.

    Example:
        >>> intervention_summary('{"type": "focal_guidance", "parts": [{"type": "anchor"}, {"type": "cache"}]}')
        'focal_guidance(anchor, cache)'
    """
    if text in (None, "none", "null"):
        return "none"
    try:
        spec = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return str(text)
    if not isinstance(spec, Mapping):
        return str(spec)
    parts = [str(p.get("type", "?")) for p in spec.get("parts") or () if isinstance(p, Mapping)]
    kind = str(spec.get("type", "?"))
    return f"{kind}({', '.join(parts)})" if parts and parts != [kind] else kind


def open_run_dataset(meta: RunMeta, chunks: dict | None) -> xr.Dataset:
    """A run as a lazy Dataset holding its fully written steps (`chunks` as for `xarray.open_zarr`).

    A run whose writer was killed in the middle of a step can have arrays of different lengths along
    ``step``; each array is then cut to the committed steps. `meta` comes from `read_run`, which has already
    refused a newer schema.
    """
    kw = {"chunks": chunks, "zarr_format": 3, "consolidated": meta.consolidated}
    lengths, steps = meta.step_lengths, meta.steps
    ds = None
    if len(set(lengths.values())) <= 1:
        try:
            ds = xr.open_zarr(meta.dir, **kw)
        except ValueError:  # a live writer grew some arrays meanwhile: read array by array as below
            if meta.complete:
                raise
        if ds is not None and "step" in ds.dims and ds.sizes["step"] > steps:
            ds = ds.isel(step=slice(0, steps))
    if ds is None:
        parts = [xr.open_zarr(meta.dir, drop_variables=[o for o in lengths if o != name], **kw)
                 .isel(step=slice(0, steps)) for name in lengths]
        ds = xr.merge(parts, compat="override", join="exact", combine_attrs="override")
        coords = {c for m in meta.arrays.values() for c in str(m.get("attributes", {}).get("coordinates", "")).split()}
        ds = ds.set_coords([c for c in coords if c in ds.data_vars])
    ds = ordinary_strings(ds)
    return ds.assign_attrs({**meta.attrs, "run": meta.name, "complete": meta.complete, "steps_written": steps})


def verify_run(path: str | os.PathLike, run: str) -> Verdict:
    """Read every committed chunk of `run` (its checksum is checked as it decodes) and look for missing ones.

    Never raises for damage: an unreadable run's metadata is a problem too. `fg.open_run(..., verify=True)`
    raises `DamagedRun` from this; `fglens inspect --verify` prints it.
    """
    try:
        meta = read_run(path, run)
        arrays = meta.arrays
    except UnreadableRun as exc:
        return Verdict(run, (str(exc),), False, 0)
    return check_chunks(run, meta.dir, arrays, meta.steps)


def open_run(path: str | os.PathLike, run: str | None = None, *, load: bool = True,
             verify: bool = False) -> xr.Dataset:
    """Open one run of a store as an `xarray.Dataset`.

    Args:
        path: the store (a ``.zarr`` directory written by `fg.trace(..., store=path)`).
        run: the run's name; may be omitted when the store holds exactly one run.
        load: read the values into memory (default) rather than lazily.
        verify: first read every chunk and check it against its checksum, and that none is missing
            (`fglens.store.verify_run`); a damaged run raises `fglens.store.DamagedRun` naming the files.

    A run cut short (``complete`` False) holds the steps that were fully written (``steps_written``).

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
    if verify:
        verdict = verify_run(path, run)
        if not verdict.ok:
            raise verdict.error(path)
    ds = open_run_dataset(read_run(path, run), chunks=None)
    return ds.load() if load else ds


def ordinary_strings(ds: xr.Dataset) -> xr.Dataset:
    """`ds` with its string arrays as fixed-width unicode (``<U``), the string type all of xarray handles.

    zarr v3 returns stored strings as numpy's variable-width ``StringDType``, and the writer keeps labels as
    ``object`` arrays; on either, xarray's plotting, ``where``, pandas conversion or ``to_netcdf`` raise
    ("Plotting requires coordinates to be numeric...", ``DTypePromotionError``). String arrays are labels
    and reasons, small, so they are read into memory here; object arrays holding anything but ``str``
    (a seed that may be None) and all other arrays pass as they are.

    Example:
        >>> ds = xr.Dataset(coords={"word": np.array(["dog", "jumps"], dtype=np.dtypes.StringDType())})
        >>> ordinary_strings(ds).word.dtype
        dtype('<U5')
    """
    def plain(var) -> np.ndarray | None:
        kind = getattr(var.dtype, "kind", "")
        if kind not in ("T", "O"):
            return None
        values = np.asarray(var.values)
        if kind == "O" and not all(isinstance(x, str) for x in values.flat):
            return None
        width = max((len(x) for x in values.flat), default=1)
        return values.astype(f"<U{max(width, 1)}")

    fixed = {}
    for name, var in ds.variables.items():
        values = plain(var)
        if values is not None:
            fixed[name] = var.copy(data=values)
    if not fixed:
        return ds
    return ds.assign({n: v for n, v in fixed.items() if n in ds.data_vars}).assign_coords(
        {n: v for n, v in fixed.items() if n in ds.coords})
