"""A store on disk, and the rules that let many processes write into it at once without coordination.

A store is a directory holding a zarr v3 group (the *root*); each run is a subdirectory that is itself a
complete zarr v3 group (it can even be opened on its own). Every rule below relies only on what a POSIX
file system makes atomic: creating a file with `os.link` (fails if the name exists), `os.rename` of a
directory (fails if the destination is a non-empty directory) and replacing a file with `os.replace`
(what zarr-python does for every metadata and chunk write).

- The root's ``zarr.json`` is written once, atomically and exclusively, by whichever writer comes first;
  nobody rewrites it afterwards (no root attributes updated, no root consolidated metadata), so there is
  nothing for concurrent writers to race on.
- A run is built under a hidden staging name (``.claim-...``) and renamed into place, so it appears at once
  with all its arrays and ``complete = False``; if another writer took the name meanwhile, the rename fails
  and the run id is reported taken. A run's directory is written only by the process that claimed it.
- Readers list runs from the directory, never from root metadata; names starting with ``.`` are never runs.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .schema import SCHEMA_VERSION, check_schema

#: attributes of a store's root group, written once when the store is created
ROOT_ATTRS = {"fglens_store": "runs", "fglens_schema": SCHEMA_VERSION}
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_run_id(run_id: object) -> str:
    """Return `run_id` if it can name a run: 1-200 letters, digits, ``.``, ``_`` or ``-``, starting alphanumeric.

    Example:
        >>> check_run_id("sweep-0007")
        'sweep-0007'
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or run_id == "zarr.json":
        raise ValueError(
            f"run id {run_id!r} is not usable as a run name: use 1-200 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it becomes a directory name in the store)"
        )
    return run_id


def read_meta(node: str | os.PathLike) -> dict[str, Any] | None:
    """The ``zarr.json`` of a group or array directory, or None when it has none."""
    try:
        with open(Path(node) / "zarr.json", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _being_created(p: Path) -> bool:
    """An existing directory that holds nothing yet but zarr's own temporary files (another writer is creating it)."""
    if not p.is_dir():
        return False
    with os.scandir(p) as entries:  # closed even when `all` stops at the first other file
        return all(e.name.endswith(".partial") for e in entries)


def root_attrs(path: str | os.PathLike, *, missing_ok: bool = False) -> dict[str, Any] | None:
    """Check that `path` is an fglens store this fglens can read; return the root's attributes.

    With ``missing_ok``, a path that does not exist yet (or is being created by another writer) gives None.
    """
    p = Path(path)
    if not p.exists() or (missing_ok and _being_created(p)):
        if missing_ok:
            return None
        raise FileNotFoundError(f"no fglens store at {p}")
    try:
        meta = read_meta(p) if p.is_dir() else None
    except (OSError, ValueError):
        meta = None
    if meta is None or meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        raise FileExistsError(
            f"{p} exists and is not an fglens store (no zarr v3 group there); fglens never writes into it. "
            "Choose a new path, or an existing fglens store."
        )
    attrs = meta.get("attributes", {})
    if attrs.get("fglens_store") != "runs":
        raise FileExistsError(
            f"{p} is a zarr store but not an fglens store (no 'fglens_store' attribute); fglens never writes "
            "into it. Choose a new path, or an existing fglens store."
        )
    check_schema(attrs.get("fglens_schema", 0), str(p))
    return attrs


def ensure_root(path: str | os.PathLike) -> None:
    """Create the store's root group if it does not exist yet (write-once, safe against concurrent writers)."""
    p = Path(path)
    if root_attrs(p, missing_ok=True) is not None:
        return
    p.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": ROOT_ATTRS}, indent=2).encode()
    write_once(p / "zarr.json", body)  # False: another writer was first; its root is checked below
    root_attrs(p)


def write_once(target: str | os.PathLike, body: bytes) -> bool:
    """Create `target` holding `body`, atomically and exclusively: readers see the whole file or none, and of
    concurrent writers exactly one creates it (`os.link` fails on an existing name). False when it already existed
    (nothing is written then)."""
    target = Path(target)
    fd, tmp = temp_file(target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)


def replace_file(target: str | os.PathLike, body: bytes) -> None:
    """Replace `target` by a file holding `body`, atomically (`os.replace`): readers see the old file or the new."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(body)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A new temporary path beside `target` to write the whole file to; on success it replaces `target` atomically
    (`os.replace`), on an error it is removed: a crash never leaves a half-written file under `target`'s name.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "x.bin"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_bytes(b"whole")
        >>> target.read_bytes()
        b'whole'
    """
    target = Path(target)
    fd, tmp = temp_file(target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_dirs(path: str | os.PathLike) -> list[str]:
    """Names of the runs in the store at `path` (directories holding a zarr group), sorted."""
    names = []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if os.path.exists(os.path.join(entry.path, "zarr.json")):
                names.append(entry.name)
    return sorted(names)


def temp_file(folder: str | os.PathLike, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file in `folder` opened for writing: ``(fd, path)``. Unlike `tempfile.mkstemp` (always 0600), its mode
    follows the umask like every other file of the store, so the users of a shared file system can read it."""
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{uuid.uuid4().hex}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder}")


def disk_size(path: str | os.PathLike) -> int:
    """Bytes of all files under `path`."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # replaced meanwhile by a writer
                pass
    return total


def claim_run(
    path: str | os.PathLike, run_id: str, build: Callable[[Path], None], *, overwrite_incomplete: bool = False
) -> Path:
    """Create run `run_id` in the store at `path`: `build(staging_dir)` writes it, then it is renamed into place.

    An existing complete run is never replaced. An existing incomplete run is replaced only with
    ``overwrite_incomplete=True``, and only the caller can know that no live process is still writing it.
    If another writer creates the same run id meanwhile, `FileExistsError` is raised and nothing is replaced.
    """
    root = Path(path)
    target = root / check_run_id(run_id)
    if os.path.lexists(target):
        meta = _safe_meta(target)
        attrs = (meta or {}).get("attributes", {})
        if attrs.get("complete") is True:
            raise FileExistsError(f"run {run_id!r} in {root} is complete; fglens never overwrites a complete run")
        if not overwrite_incomplete:
            raise FileExistsError(
                f"run {run_id!r} already exists in {root} and is incomplete ({attrs.get('steps_written', '?')} of "
                f"{attrs.get('num_steps', '?')} steps written); pass overwrite_incomplete=True to replace it, and "
                "only when no live process is still writing it"
            )
        trash = root / f".trash-{run_id}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(target, trash)  # atomic: the old run vanishes at once, then is deleted at leisure
        except FileNotFoundError:
            pass
        else:
            shutil.rmtree(trash, ignore_errors=True)
    if overwrite_incomplete:  # the caller vouches that no live process writes this run: its stale claims go too
        _remove_stale_claims(root, run_id)
    staging = root / f".claim-{run_id}-{uuid.uuid4().hex[:8]}"
    try:
        build(staging)
        try:
            os.rename(staging, target)
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(
                    f"run {run_id!r} was created in {root} by another writer at the same time; nothing was replaced"
                ) from exc
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_stale_claims(root: Path, run_id: str) -> None:
    """Remove the staging folders (``.claim-<run_id>-<8 hex>``) a killed writer of `run_id` left behind; only this
    run id's, never another's whose id merely starts with it."""
    prefix = f".claim-{run_id}-"
    if not root.is_dir():
        return
    with os.scandir(root) as entries:
        stale = [e.path for e in entries if e.name.startswith(prefix) and len(e.name) == len(prefix) + 8
                 and all(c in "0123456789abcdef" for c in e.name[len(prefix):])]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)


def _safe_meta(node: Path) -> dict[str, Any] | None:
    try:
        return read_meta(node)
    except (OSError, ValueError):
        return None
