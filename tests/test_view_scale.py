"""The viewer on a store of a few thousand runs: the run list (and so its filter, which runs in the page over that
list) reads each run's zarr.json and nothing else, and the page's first answers stay fast. The store is one tiny
recorded run cloned under new run ids: each clone has its own zarr.json (its ``run`` attribute renamed, its seed
varied) and links to the original's arrays, so it lists and opens like a recorded run."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

import fglens as fg
from fglens.view.data import StoreSource

pytest.importorskip("plotly", reason="the viewer's extra: pip install 'fglens[view]'")

N_RUNS = 3000
_opened: list[str] | None = None  # the files opened while counting (an audit hook cannot be removed: it is gated)


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], (str, Path)):
        _opened.append(os.fspath(args[0]))


sys.addaudithook(_audit)


class opened_files:  # noqa: N801 (used as a context manager, like open)
    """The files opened inside the block whose path lies under `root`."""

    def __init__(self, root: Path):
        self.root = os.fspath(root)
        self.files: list[str] = []

    def __enter__(self) -> opened_files:
        global _opened
        _opened = []
        return self

    def __exit__(self, *exc) -> None:
        global _opened
        self.files = [os.path.relpath(p, self.root) for p in _opened if os.path.abspath(p).startswith(self.root)]
        _opened = None


def clone_runs(store: Path, n: int) -> list[str]:
    """`n` clones of the store's one run, named as the store names runs (``run-<time>-<hex>``)."""
    (original,) = fg.store.list_runs(store)
    meta = json.loads((store / original / "zarr.json").read_text())
    arrays = [e.name for e in os.scandir(store / original) if e.name != "zarr.json"]
    names = []
    for i in range(n):
        name = f"run-20270101T000000.{i:06d}-{i:08x}"
        folder = store / name
        folder.mkdir()
        meta["attributes"].update(run=name, seed=i % 97)
        (folder / "zarr.json").write_text(json.dumps(meta))
        for entry in arrays:
            os.symlink(store / original / entry, folder / entry)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def big_store(tmp_path_factory, wan_i2v) -> Path:
    path = tmp_path_factory.mktemp("view-scale") / "runs.zarr"
    fg.testing.tiny_run("wan", words=("dog",), store=path, pipe=wan_i2v, maps=False)
    clone_runs(path, N_RUNS - 1)
    return path


def test_run_list_reads_only_each_runs_metadata(big_store):
    source = StoreSource(big_store)
    with opened_files(big_store.resolve()) as seen:
        start = time.perf_counter()
        rows = source.runs()
        elapsed = time.perf_counter() - start
    names = fg.store.list_runs(big_store)
    assert [r["id"] for r in rows] == names and len(rows) == N_RUNS
    # the store's zarr.json, then one small file per run: no array metadata, no chunk
    assert sorted(seen.files) == sorted(["zarr.json", *(f"{name}/zarr.json" for name in names)])
    assert {r["seed"] for r in rows} == set(range(97)) and all(r["complete"] for r in rows)
    assert elapsed < 10, f"listing {N_RUNS} runs took {elapsed:.1f} s"


def test_page_first_answers_are_fast(big_store):
    """What the page asks first (the page, the run list, then the first run and its heat map) over HTTP, timed;
    opening one run reads that run's files only."""
    from fglens.view import ViewServer

    server = ViewServer(big_store).start()
    try:
        start = time.perf_counter()
        with urllib.request.urlopen(server.url, timeout=30) as response:
            assert b"fglens view" in response.read()
        with urllib.request.urlopen(server.url + "api/runs", timeout=30) as response:
            rows = json.load(response)
        listed = time.perf_counter() - start
        name = rows[1234]["id"]
        with opened_files(big_store.resolve()) as seen:
            for endpoint, params in (("run", {}), ("heatmap", {"var": "similarity", "branch": "cond"}),
                                     ("balance", {"branch": "cond"})):
                query = urlencode({"run": name, **params})
                with urllib.request.urlopen(f"{server.url}api/{endpoint}?{query}", timeout=30) as response:
                    assert response.status == 200
        first = time.perf_counter() - start
    finally:
        server.stop()
    assert len(rows) == N_RUNS
    assert seen.files and {f.split("/", 1)[0] for f in seen.files} - {"zarr.json"} == {name}  # no other run
    assert listed < 10 and first < 15, (listed, first)
