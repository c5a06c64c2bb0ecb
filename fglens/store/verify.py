"""Integrity of a stored run: every committed chunk is on disk and matches its checksum.

Runs are written with a crc32c checksum after each chunk (`fglens.store.schema.chunk_codecs`) and with every
chunk written, even one that holds only fill values, so a reader can tell damage from data: a flipped byte
fails its chunk's checksum, and a chunk file that is gone is missing from the grid that the run's shape and
its committed ``steps_written`` promise (rather than reading back as NaN). Runs written before checksums
existed can still be checked for missing chunks; `Verdict.checksummed` says which kind a run is.

Example:
    >>> import fglens as fg, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "runs.zarr")
    >>> ds = fg.testing.tiny_run("wan", words=("dog",), maps=False, store=path)
    >>> verdict = fg.store.verify_run(path, ds.attrs["run"])
    >>> verdict.ok, verdict.checksummed, verdict.chunks > 0
    (True, True, True)
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DamagedRun(ValueError):
    """A run whose chunks are missing or fail their checksums; the message names each damaged file."""


@dataclass(frozen=True)
class Verdict:
    """What `verify_run` found: `problems` (one sentence per damaged or missing chunk, naming its file; empty
    when the run is whole), whether the run's chunks carry checksums, and how many chunks were read."""

    run: str
    problems: tuple[str, ...]
    checksummed: bool
    chunks: int

    @property
    def ok(self) -> bool:
        return not self.problems

    def error(self, path: str | os.PathLike, shown: int = 5) -> DamagedRun:
        """The `DamagedRun` that says what is wrong (the first `shown` problems and how many more)."""
        more = len(self.problems) - shown
        text = "; ".join(self.problems[:shown]) + (f"; and {more} more" if more > 0 else "")
        return DamagedRun(f"run {self.run!r} in {path} is damaged: {text}. Re-record it (its other runs are "
                          "unaffected).")


def _chunk_keys(meta: dict[str, Any], steps: int):
    """(grid index, key) of every chunk the array must hold: all of them, along ``step`` the committed ones."""
    shape = meta["shape"]
    chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
    dims = meta.get("dimension_names") or [None] * len(shape)
    grid = [math.ceil(n / c) if c else 0 for n, c in zip(shape, chunk, strict=True)]
    if "step" in dims:
        i = dims.index("step")
        grid[i] = min(grid[i], math.ceil(steps / chunk[i]))
    encoding = meta.get("chunk_key_encoding") or {}
    sep = (encoding.get("configuration") or {}).get("separator", "/")
    for index in itertools.product(*map(range, grid)):
        if encoding.get("name", "default") == "v2":
            yield index, sep.join(map(str, index)) or "0"
        else:
            yield index, "c" + "".join(sep + str(i) for i in index)


def check_chunks(run: str, run_dir: str | os.PathLike, arrays: dict[str, dict[str, Any]], steps: int) -> Verdict:
    """Read every committed chunk of the run's `arrays` (name -> zarr metadata; its checksum is checked as it
    decodes) and look for missing ones; `steps` is the run's committed ``steps_written``. Never raises for
    damage. `fglens.store.verify_run` calls this with what the run's metadata says."""
    import zarr

    problems: list[str] = []
    checked, checksummed = 0, True
    for name, array_meta in arrays.items():
        checksummed &= any(c.get("name") == "crc32c" for c in array_meta.get("codecs", []))
        folder = Path(run_dir) / name
        try:
            array = zarr.open_array(str(folder), mode="r", zarr_format=3)
        except Exception as exc:  # noqa: BLE001 - whatever zarr raises, the run is damaged there
            problems.append(f"array {name!r} cannot be opened ({folder}: {exc})")
            continue
        for index, key in _chunk_keys(array_meta, steps):
            file = folder / key
            if not file.is_file():
                problems.append(f"chunk {key} of {name!r} is missing ({file})")
                continue
            try:
                array.get_block_selection(index)
            except Exception as exc:  # noqa: BLE001 - a checksum mismatch, a truncated or garbled chunk
                problems.append(f"chunk {key} of {name!r} is damaged ({file}: {exc})")
            checked += 1
    return Verdict(run, tuple(problems), checksummed, checked)
