"""Store safety: schema versions, no pickles, concurrent writers, killed writers, a full disk."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import fglens as fg
from fglens.store import RunWriter, ZarrSink

PROMPT = "a dog jumps over a fence"
LAYERS = ["blocks.0", "blocks.1", "blocks.2"]
WORDS = ["dog", "jumps", "fence"]
GRID = (2, 3, 4)
VARIABLES = ["word_mass", "entropy", "word_map"]
STEPS = 3


# -- a writer that needs no model: known values per (process, run, step) ---------------------------------------
def _values(writer: RunWriter, seed: list[int]) -> dict:
    rng = np.random.default_rng(seed)
    return {b: {v: torch.from_numpy(rng.random(writer._shape(v)[2:], dtype=np.float32)) for v in writer.variables}
            for b in ("cond", "uncond")}


def _write_run(store, run_id: str, seed: list[int], n_words: int, steps: int = STEPS) -> None:
    writer = RunWriter(ZarrSink(store, run_id), variables=VARIABLES, branches=["cond", "uncond"], layers=LAYERS,
                       words=WORDS[:n_words], grid=GRID, attrs={"prompt": run_id, "seed": seed[0], "num_steps": steps})
    for step in range(steps):
        writer.put(step, {"cond": 1000.0 - step}, _values(writer, [*seed, step]))
    writer.close({"complete": True, "num_steps": steps})


def _expected(run_id: str, seed: list[int], n_words: int, var: str, steps: int = STEPS) -> np.ndarray:
    probe = RunWriter.__new__(RunWriter)  # only for its shapes: the same layout the writer used
    probe.variables = VARIABLES
    probe.sizes = {"branch": 2, "layer": len(LAYERS), "word": n_words, "frame": GRID[0], "y": GRID[1], "x": GRID[2]}
    per_step = [_values(probe, [*seed, s]) for s in range(steps)]
    return np.stack([np.stack([per_step[s][b][var].numpy() for s in range(steps)]) for b in ("cond", "uncond")])


def _concurrent_writer(store: str, proc: int, runs: int, start, results) -> None:
    start.wait()
    for j in range(runs):
        _write_run(store, f"p{proc}-r{j}", [proc, j], n_words=1 + (proc + j) % 3)
    try:  # every process also tries to take the same run id: exactly one may win
        _write_run(store, "shared", [99, proc], n_words=1)
        results.put((proc, "won"))
    except FileExistsError as exc:
        results.put((proc, f"refused: {exc}"))


# -- checks --------------------------------------------------------------------------------------------------------
SAFE_TYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32",
              "float64", "string"}
SAFE_CODECS = {"bytes", "zstd", "gzip", "blosc", "crc32c", "transpose", "vlen-utf8"}


def pickle_problems(store: Path) -> list[str]:
    """Every file of the store accounted for, every array with a plain dtype and codecs that cannot unpickle."""
    problems, arrays = [], set()
    for meta_file in sorted(store.rglob("zarr.json")):
        meta = json.loads(meta_file.read_text())
        if meta.get("zarr_format") != 3:
            problems.append(f"{meta_file}: not zarr v3")
        if meta.get("node_type") == "array":
            arrays.add(meta_file.parent)
            codecs = [c["name"] if isinstance(c, dict) else str(c) for c in meta["codecs"]]
            if meta["data_type"] not in SAFE_TYPES:
                problems.append(f"{meta_file}: data type {meta['data_type']}")
            if meta["data_type"] == "string" and codecs[:1] != ["vlen-utf8"]:
                problems.append(f"{meta_file}: strings not stored as vlen-utf8")
            problems += [f"{meta_file}: codec {c}" for c in codecs if c not in SAFE_CODECS or "pickle" in c.lower()]
    for file in store.rglob("*"):
        if file.is_dir() or file.name == "zarr.json":
            continue
        parts = file.relative_to(store).parts
        owner = next((store.joinpath(*parts[:i]) for i in range(len(parts)) if parts[i] == "c"), None)
        if owner not in arrays:
            problems.append(f"{file}: not a chunk of a checked array")
    return problems


def test_store_of_a_traced_run_holds_no_pickles(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "clean.zarr"
    record = fg.Record(words=["dog", "fence"], maps=True, branches=("cond", "uncond"))
    with fg.trace(wan_i2v, record=record, store=store, edit=fg.Scale(["dog"], 2.0)):
        wan_i2v(image=ref_image, prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=2,
                output_type="latent")
    assert pickle_problems(store) == []
    run = store / fg.store.list_runs(store)[0]
    for name in ("word", "layer", "branch"):  # string coordinates: zarr v3 variable-length strings
        meta = json.loads((run / name / "zarr.json").read_text())
        assert meta["data_type"] == "string" and meta["codecs"][0]["name"] == "vlen-utf8"
    assert fg.open_run(store).word.values.tolist() == ["dog", "fence"]
    # the check itself finds a pickling codec, a zarr v2 array and a stray file
    bad = tmp_path / "bad.zarr"
    shutil.copytree(store, bad)
    meta_file = bad / run.name / "word" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["codecs"].insert(0, {"name": "numcodecs.pickle", "configuration": {}})
    meta_file.write_text(json.dumps(meta))
    (bad / run.name / "old").mkdir()
    (bad / run.name / "old" / ".zarray").write_text('{"filters": [{"id": "pickle"}]}')
    found = pickle_problems(bad)
    assert any("numcodecs.pickle" in p for p in found) and any(".zarray" in p for p in found), found


def test_newer_schema_is_refused_for_reading_and_writing(wan_i2v, tmp_path):
    store = tmp_path / "future.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    root.attrs.update({"fglens_store": "runs", "fglens_schema": fg.store.SCHEMA_VERSION + 1})
    for read in (fg.store.list_runs, fg.open_run, fg.open_runs, fg.store.run_table):
        with pytest.raises(ValueError, match=f"schema {fg.store.SCHEMA_VERSION + 1}.*Upgrade fglens"):
            read(store)
    with pytest.raises(ValueError, match="Upgrade fglens"):
        fg.trace(wan_i2v, store=store)
    with pytest.raises(ValueError, match="Upgrade fglens"):
        fg.store.store_path(store, run_id="x")
    with pytest.raises(ValueError, match="Upgrade fglens"):
        _write_run(store, "direct", [0], 1)
    assert list(os.listdir(store)) == ["zarr.json"]  # nothing was written


def test_run_of_a_newer_schema_is_refused(tmp_path):
    store = tmp_path / "mixed.zarr"
    _write_run(store, "old", [0], 1)
    _write_run(store, "new", [1], 1)
    assert fg.store.read_run(store, "old").attrs["fglens_schema"] == fg.store.SCHEMA_VERSION
    zarr.open_group(str(store / "new"), mode="r+", use_consolidated=False).attrs["fglens_schema"] = 99
    with pytest.raises(ValueError, match="run 'new'.*schema 99.*Upgrade fglens"):
        fg.open_run(store, run="new")
    with pytest.warns(RuntimeWarning, match="left out: run 'new'.*schema 99"):
        assert list(fg.open_runs(store).run.values) == ["old"]
    with pytest.raises(ValueError, match="run 'new'.*schema 99"):
        fg.open_runs(store, runs=["old", "new"])
    assert fg.open_runs(store, runs=["old"]).sizes["run"] == 1


def test_concurrent_writers_never_corrupt_each_other(tmp_path):
    """N spawned processes write k runs each into one new store, all at once; readers poll meanwhile."""
    store, procs, runs = tmp_path / "shared.zarr", 3, 3
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_concurrent_writer, args=(str(store), p, runs, start, results)) for p in range(procs)]
    for w in workers:
        w.start()
    polls = 0
    while any(w.is_alive() for w in workers):  # readers never see a broken store while writers work
        if (store / "zarr.json").exists():
            table = fg.store.run_table(store)
            if len(table):
                fg.open_runs(store, lazy=False)
                polls += 1
        time.sleep(0.05)
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    outcomes = sorted(results.get(timeout=10) for _ in range(procs))
    assert sum(o == "won" for _, o in outcomes) == 1, outcomes
    assert all("refused" in o and "shared" in o for _, o in outcomes if o != "won"), outcomes

    expected = sorted([f"p{p}-r{j}" for p in range(procs) for j in range(runs)] + ["shared"])
    assert fg.store.list_runs(store) == expected
    table = fg.store.run_table(store).set_index("id")
    assert table.complete.all() and (table.steps_written == STEPS).all()
    for p in range(procs):
        for j in range(runs):
            ds = fg.open_run(store, run=f"p{p}-r{j}")
            n_words = 1 + (p + j) % 3
            assert ds.word.values.tolist() == WORDS[:n_words]
            for var in VARIABLES:
                np.testing.assert_array_equal(ds[var].values, _expected("", [p, j], n_words, var))
    assert json.loads((store / "zarr.json").read_text())["attributes"] == {"fglens_store": "runs",
                                                                         "fglens_schema": fg.store.SCHEMA_VERSION}
    assert [e for e in os.listdir(store) if e.startswith(".")] == []  # no staging left behind
    assert fg.open_runs(store, lazy=False).sizes["run"] == len(expected)
    assert polls >= 1


def test_killed_writer_leaves_completed_runs_and_its_partial_run_readable(tmp_path):
    """SIGKILL a process in the middle of its third run: the first two and the steps it committed stay."""
    store = tmp_path / "killed.zarr"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_store_safety as t
        t._write_run({str(store)!r}, "done-0", [0], 1, steps=2)
        t._write_run({str(store)!r}, "done-1", [1], 3, steps=3)
        put = t.RunWriter.put
        def slow_put(self, *args, **kwargs):   # a slow sampler: the kill lands while the writer works
            time.sleep(0.05)
            put(self, *args, **kwargs)
        t.RunWriter.put = slow_put
        t._write_run({str(store)!r}, "killed", [2], 2, steps=400)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        info = fg.store.run_info(store, "killed")
        if info is not None and info["steps_written"] >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert fg.store.list_runs(store) == ["done-0", "done-1", "killed"]
    for run_id, seed, words, steps in (("done-0", [0], 1, 2), ("done-1", [1], 3, 3)):
        ds = fg.open_run(store, run=run_id)
        assert ds.attrs["complete"] is True and ds.sizes["step"] == steps
        np.testing.assert_array_equal(ds.word_map.values, _expected(run_id, seed, words, "word_map", steps))
    partial = fg.open_run(store, run="killed")
    info = fg.store.run_info(store, "killed")
    assert partial.attrs["complete"] is False and info["complete"] is False
    n = info["steps_written"]
    assert partial.sizes["step"] == n >= 3 and partial.step.values.tolist() == list(range(n))
    for var in VARIABLES:
        np.testing.assert_array_equal(partial[var].values, _expected("killed", [2], 2, var, n))
    assert fg.open_runs(store, lazy=False).steps_written.values.tolist() == [2, 3, info["steps_written"]]


def test_kill_in_the_middle_of_writing_a_step(tmp_path):
    """The process dies after some arrays grew for step 3 and before its chunks landed: 2 steps stay readable."""
    store = tmp_path / "torn.zarr"
    script = textwrap.dedent(
        f"""
        import os, sys, zarr
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store_safety import _write_run
        resize, count = zarr.Array.resize, [0]
        def dying_resize(self, shape):
            resize(self, shape)
            count[0] += 1
            if count[0] == 2 * 5 + 2:   # 5 arrays grow per step: die on the 3rd step, 2 arrays in
                os._exit(9)
        zarr.Array.resize = dying_resize
        _write_run({str(store)!r}, "torn", [7], 2, steps=4)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    lengths = {}
    for name in ("word_mass", "entropy", "word_map", "step", "timestep"):
        meta = json.loads((store / "torn" / name / "zarr.json").read_text())
        lengths[name] = meta["shape"][meta["dimension_names"].index("step")]
    assert sorted(lengths.values()) == [2, 2, 2, 3, 3], lengths  # the torn state really happened
    ds = fg.open_run(store, run="torn")
    assert ds.attrs["complete"] is False and ds.sizes["step"] == 2 and ds.step.values.tolist() == [0, 1]
    for var in VARIABLES:
        np.testing.assert_array_equal(ds[var].values, _expected("torn", [7], 2, var, steps=2))
    stacked = fg.open_runs(store, lazy=False)
    np.testing.assert_array_equal(stacked.word_map.isel(run=0).values, ds.word_map.values)


def _processors(pipe) -> dict:
    return {name: m.processor for name, m in pipe.transformer.named_modules() if hasattr(m, "processor")}


@pytest.mark.parametrize("full_after", [2, 4], ids=["mid-run", "last-step"])
def test_full_disk_is_a_clear_error_and_loses_nothing_else(wan_i2v, ref_image, tmp_path, monkeypatch, full_after):
    """Writes into the run fail with ENOSPC once `full_after` of its 5 steps are committed."""
    from zarr.storage import LocalStore

    store = tmp_path / "full.zarr"
    record = fg.Record(words=["dog"], maps=True)
    kwargs = dict(image=ref_image, prompt=PROMPT, height=32, width=48, num_frames=5, output_type="latent")
    with fg.trace(wan_i2v, record=record, store=fg.store.store_path(store, run_id="before")):
        wan_i2v(num_inference_steps=2, **kwargs)
    before = fg.open_run(store, run="before")
    processors, hooks = _processors(wan_i2v), dict(wan_i2v.transformer._forward_pre_hooks)

    original_set, full = LocalStore.set, []

    async def set_on_a_filling_disk(self, key, value, *args, **kw):
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
        await original_set(self, key, value, *args, **kw)
        if Path(str(self.root)).name == "filling" and key == "zarr.json":
            attrs = json.loads(value.to_bytes())["attributes"]
            if attrs.get("steps_written") == full_after:
                full.append(key)

    monkeypatch.setattr(LocalStore, "set", set_on_a_filling_disk)
    with pytest.raises(RuntimeError, match="could not write run 'filling'.*No space left on device") as info:
        with fg.trace(wan_i2v, record=record, store=fg.store.store_path(store, run_id="filling")):
            wan_i2v(num_inference_steps=5, **kwargs)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert f"{full_after} step(s) written" in str(info.value)
    assert _processors(wan_i2v) == processors and dict(wan_i2v.transformer._forward_pre_hooks) == hooks
    monkeypatch.setattr(LocalStore, "set", original_set)  # the disk has room again

    xr_before = fg.open_run(store, run="before")
    np.testing.assert_array_equal(xr_before.word_map.values, before.word_map.values)
    partial = fg.open_run(store, run="filling")
    assert partial.attrs["complete"] is False and partial.sizes["step"] == full_after
    assert np.isfinite(partial.word_mass.values).all()
    assert fg.store.run_table(store).complete.tolist() == [True, False]


# -- issue 12: permissions, a vanished run folder, no leaked directory handle -----------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_store_root_files_follow_the_umask(tmp_path, umask, mode):
    """The root's zarr.json and the sweep record were made by mkstemp (always 0600): unreadable to the other users
    of a shared file system while the run folders are 0755/0644. They follow the umask now, as zarr's files do."""
    from fglens.store.layout import ensure_root
    from fglens.sweep import SWEEP_FILE, _claim_store

    store = tmp_path / "shared.zarr"
    old = os.umask(umask)
    try:
        ensure_root(store)
        _claim_store(store, {"fingerprint": "f"}, force=False)
        _write_run(store, "run-0", [0], n_words=2, steps=1)
    finally:
        os.umask(old)
    assert (store / "zarr.json").stat().st_mode & 0o777 == mode
    assert (store / SWEEP_FILE).stat().st_mode & 0o777 == mode
    assert (store / "run-0" / "zarr.json").stat().st_mode & 0o777 == mode  # as the run's own files
    assert not [p for p in store.iterdir() if p.name.endswith(".partial")]


def test_a_run_folder_removed_mid_run_is_named_in_the_error(wan_i2v, ref_image, tmp_path):
    """Deleting the run's folder while it is written: the error says so (it was "could not write run ...: 'word'")."""
    store = tmp_path / "runs.zarr"

    def remove_the_run(pipe, i, t, kwargs):
        if i == 0:
            shutil.rmtree(store / "vanishing")
        return kwargs

    with pytest.raises(RuntimeError, match=r"could not write run 'vanishing'.*the run's folder .*vanishing no longer "
                                           r"exists \(removed while the run was being written\)") as info:
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=fg.store.store_path(store, run_id="vanishing")):
            wan_i2v(image=ref_image, prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=3,
                    output_type="latent", callback_on_step_end=remove_the_run)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert "'word'" not in str(info.value)


def test_a_foreign_directory_as_a_store_leaks_no_directory_handle(tmp_path):
    import gc
    import warnings

    foreign = tmp_path / "photos"
    foreign.mkdir()
    for name in ("a.jpg", "b.jpg", "c.partial"):
        (foreign / name).write_bytes(b"x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FileExistsError, match="is not an fglens store"):
            fg.store.store_path(foreign)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


# -- issue 12, item 10: unwritable stores are refused before sampling; a full disk at creation names the store -----
def test_an_unwritable_store_is_refused_before_sampling(wan_i2v, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    below_a_file = tmp_path / "a-file" / "runs.zarr"
    with pytest.raises(NotADirectoryError, match=r"cannot write the store .*runs\.zarr: .*a-file is a file, not a "
                                                 r"folder"):
        fg.store.store_path(below_a_file)
    with pytest.raises(NotADirectoryError):
        fg.trace(wan_i2v, store=below_a_file)  # at construction, before any pipeline call
    read_only = tmp_path / "mounted-ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == read_only else real_access(p, mode))
    with pytest.raises(PermissionError, match=r"cannot write the store .*mounted-ro/runs\.zarr: .*mounted-ro is not "
                                              r"writable \(no permission, or a read-only file system\)"):
        fg.trace(wan_i2v, store=read_only / "runs.zarr")
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("store", ["a-file/runs.zarr", "a-file/deeper/runs.zarr"])
def test_the_cli_refuses_an_unwritable_store_with_one_line_and_exit_2(tmp_path, capsys, store):
    from fglens import cli

    (tmp_path / "a-file").write_text("not a folder")
    code = cli.main(["diagnose", "--pipeline", "tiny-wan", "--prompt", PROMPT, "--words", "dog",
                     "--store", str(tmp_path / store), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("fglens diagnose: cannot write the store") and "is a file, not a folder" in err


def test_a_full_disk_when_a_run_is_created_is_a_runtime_error_naming_the_store(wan_i2v, ref_image, tmp_path,
                                                                              monkeypatch):
    from zarr.storage import LocalStore

    async def no_space(self, key, value, *args, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)

    monkeypatch.setattr(LocalStore, "set", no_space)
    store = tmp_path / "runs.zarr"
    with pytest.raises(RuntimeError, match=r"fglens could not create run 'full' of .*runs\.zarr: .*No space left") \
            as info:
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=fg.store.store_path(store, run_id="full")):
            wan_i2v(image=ref_image, prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=1,
                    output_type="latent")
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert not store.exists() or fg.store.list_runs(store) == []


def test_replacing_a_run_removes_the_staging_folders_a_killed_writer_of_it_left(tmp_path):
    """A writer killed while building run 'a' leaves `.claim-a-<8 hex>`; a writer that may replace 'a' (it vouches
    that no live process writes it, as a sweep's rank does for its lines) removes it, and never touches the claim
    of a run whose id merely starts with 'a'."""
    from fglens.store.layout import claim_run, ensure_root

    root = tmp_path / "runs.zarr"
    ensure_root(root)
    stale, other = root / ".claim-a-0123abcd", root / ".claim-a-1-0123abcd"
    stale.mkdir()
    other.mkdir()
    claim_run(root, "b", lambda d: d.mkdir())  # a writer that may not replace leaves them alone
    assert stale.exists() and other.exists()
    claim_run(root, "a", lambda d: d.mkdir(), overwrite_incomplete=True)
    assert not stale.exists() and other.exists() and (root / "a").is_dir()
