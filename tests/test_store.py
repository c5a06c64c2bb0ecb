"""The zarr run format: round trip, runs cut short, no overwrite, several runs per store, no pickles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from PIL import Image

import fglens as fg

PROMPT = "a dog jumps over a fence"


def _call(pipe, image, steps=3, **kw):
    return pipe(
        image=image, prompt=PROMPT, height=32, width=48, num_frames=5, num_inference_steps=steps,
        generator=torch.Generator().manual_seed(7), output_type="latent", **kw,
    )


def test_round_trip_equals_the_in_memory_run(wan_i2v, ref_image, tmp_path):
    record = fg.Record(words=["dog", "fence"], maps=True, branches=("cond", "uncond"))
    with fg.trace(wan_i2v, record=record) as mem:
        _call(wan_i2v, ref_image)
    store = tmp_path / "dog.zarr"
    with fg.trace(wan_i2v, record=record, store=store) as run:
        _call(wan_i2v, ref_image)
    on_disk = fg.open_run(store)
    xr.testing.assert_identical(run.dataset.drop_attrs(), on_disk.drop_attrs())
    xr.testing.assert_allclose(mem.dataset.drop_attrs(), on_disk.drop_attrs(), rtol=0, atol=0)
    assert on_disk.word_mass.dims == ("branch", "step", "layer", "word", "frame")
    assert on_disk.word_map.dims == ("branch", "step", "layer", "word", "frame", "y", "x")
    assert list(on_disk.branch.values) == ["cond", "uncond"]
    assert on_disk.timestep.dims == ("step",)
    # one chunk per step
    group = zarr.open_group(str(store), path=on_disk.attrs["run"], mode="r")
    assert group["word_mass"].chunks[1] == 1
    attrs = fg.store.decode_attrs(on_disk.attrs)
    assert attrs["complete"] is True and attrs["steps_written"] == 3
    assert attrs["prompt"] == PROMPT and attrs["seed"] == 7
    assert attrs["model_class"] == "WanTransformer3DModel"
    assert attrs["model_config"]["num_layers"] == 4
    assert attrs["word_positions"] == {"dog": [1], "fence": [5]}
    assert attrs["fglens_version"] == fg.__version__
    assert set(attrs["definitions"]) >= {"word_map", "morans_i", "similarity", "text_share", "entropy"}
    assert attrs["record"]["words"] == ["dog", "fence"]


def test_run_cut_short_by_an_exception_stays_readable(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "cut.zarr"

    def stop(pipe, i, t, kwargs):
        if i == 1:
            raise RuntimeError("cut")
        return kwargs

    with pytest.raises(RuntimeError, match="cut"):
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=store):
            _call(wan_i2v, ref_image, steps=4, callback_on_step_end=stop)
    ds = fg.open_run(store)
    assert ds.attrs["complete"] is False
    assert list(ds.step.values) == [0, 1]  # the steps that ran
    assert np.isfinite(ds.word_mass.values).all()


def test_run_of_a_killed_process_stays_readable(tmp_path):
    store = tmp_path / "killed.zarr"
    script = textwrap.dedent(
        f"""
        import os, time, torch, fglens as fg
        pipe = fg.testing.tiny_wan_i2v_pipeline()
        def die(pipe, i, t, kwargs):
            if i == 2:
                time.sleep(1.0)   # let the writer thread write what it has
                os._exit(3)       # no cleanup, no finally, no atexit
            return kwargs
        with fg.trace(pipe, record=fg.Record(words=["dog"]), store={str(store)!r}):
            pipe(image=fg.testing.reference_image(), prompt="a dog jumps", height=32, width=48, num_frames=5,
                 num_inference_steps=5, output_type="latent", callback_on_step_end=die)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    ds = fg.open_run(store)
    assert ds.attrs["complete"] is False
    assert 1 <= ds.sizes["step"] <= 3
    assert np.isfinite(ds.word_mass.isel(step=0).values).all()


def test_existing_non_fglens_path_is_never_overwritten(wan_i2v, tmp_path):
    precious = tmp_path / "data.zarr"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an fglens store"):
        fg.trace(wan_i2v, store=precious)
    assert (precious / "notes.txt").read_text() == "mine"
    plain_zarr = tmp_path / "other.zarr"
    zarr.open_group(str(plain_zarr), mode="w")
    with pytest.raises(FileExistsError):
        fg.trace(wan_i2v, store=plain_zarr)


def test_runs_are_added_never_replaced(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "many.zarr"
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=store) as first:
        _call(wan_i2v, ref_image, steps=2)
        _call(wan_i2v, ref_image, steps=3)  # a second pipeline call is a second run
    assert len(first.run_ids) == 2 and len(first.datasets) == 2
    with fg.trace(wan_i2v, record=fg.Record(words=["fence"]), store=store) as second:
        _call(wan_i2v, ref_image, steps=2)
    runs = fg.store.list_runs(store)
    assert runs == sorted(first.run_ids + second.run_ids)
    with pytest.raises(ValueError, match="holds 3 runs; pass run="):
        fg.open_run(store)
    assert fg.open_run(store, run=first.run_ids[1]).sizes["step"] == 3
    assert list(fg.open_run(store, run=second.run_ids[0]).word.values) == ["fence"]
    with pytest.raises(KeyError, match="no run 'nope'"):
        fg.open_run(store, run="nope")


def test_newer_schema_is_refused(tmp_path):
    store = tmp_path / "future.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    root.attrs.update({"fglens_store": "runs", "fglens_schema": fg.store.SCHEMA_VERSION + 1})
    with pytest.raises(ValueError, match="Upgrade fglens"):
        fg.store.list_runs(store)


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fglens store"):
        fg.open_run(tmp_path / "nothing.zarr")


def test_store_holds_no_pickles(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "clean.zarr"
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"], maps=True), store=store):
        _call(wan_i2v, ref_image, steps=2)
    metadata = [json.loads(p.read_text()) for p in Path(store).rglob("zarr.json")]
    assert metadata and all(m["zarr_format"] == 3 for m in metadata)
    text = json.dumps(metadata).lower()
    assert "pickle" not in text and "object" not in text


# -- run ids chosen by the caller (sweeps), and what the store guarantees about them ------------------------------
def test_fixed_run_id_is_used_and_a_complete_run_is_never_replaced(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "sweep.zarr"
    target = fg.store.store_path(store, run_id="line-0001")
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=target) as run:
        _call(wan_i2v, ref_image, steps=2)
    assert run.run_ids == ["line-0001"] and fg.store.list_runs(store) == ["line-0001"]
    first = fg.open_run(store, run="line-0001")
    assert first.attrs["run"] == "line-0001" and first.attrs["complete"] is True
    for overwrite in (False, True):
        again = fg.store.store_path(store, run_id="line-0001", overwrite_incomplete=overwrite)
        with pytest.raises(FileExistsError, match="'line-0001'.*is complete; fglens never overwrites"):
            with fg.trace(wan_i2v, record=fg.Record(words=["fence"]), store=again):
                _call(wan_i2v, ref_image, steps=3)
    xr.testing.assert_identical(fg.open_run(store, run="line-0001"), first)


def test_incomplete_run_is_replaced_only_when_asked(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "resume.zarr"

    def stop(pipe, i, t, kwargs):
        if i == 1:
            raise RuntimeError("cut")
        return kwargs

    with pytest.raises(RuntimeError, match="cut"):
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=fg.store.store_path(store, run_id="line-2")):
            _call(wan_i2v, ref_image, steps=4, callback_on_step_end=stop)
    assert fg.store.run_info(store, "line-2")["complete"] is False
    with pytest.raises(FileExistsError, match=r"incomplete \(2 of 4 steps written\); pass overwrite_incomplete=True"):
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=fg.store.store_path(store, run_id="line-2")):
            _call(wan_i2v, ref_image, steps=4)
    assert fg.store.run_info(store, "line-2")["steps_written"] == 2  # untouched
    target = fg.store.store_path(store, run_id="line-2", overwrite_incomplete=True)
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=target):
        _call(wan_i2v, ref_image, steps=4)
    ds = fg.open_run(store, run="line-2")
    assert ds.attrs["complete"] is True and ds.sizes["step"] == 4
    assert sorted(os.listdir(store)) == ["line-2", "zarr.json"]  # the old run is gone, no staging left


def test_unusable_run_ids_are_refused(tmp_path):
    store = tmp_path / "ids.zarr"
    for bad in ("", "../escape", "a/b", ".hidden", "x" * 201, "zarr.json", 7):
        with pytest.raises(ValueError, match="is not usable as a run name"):
            fg.store.store_path(store, run_id=bad)
    with pytest.raises(ValueError, match="overwrite_incomplete=True needs run_id="):
        fg.store.store_path(store, overwrite_incomplete=True)
    assert not store.exists()


def test_root_is_written_once_and_runs_are_self_contained(wan_i2v, ref_image, tmp_path):
    store = tmp_path / "once.zarr"
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=store):
        _call(wan_i2v, ref_image, steps=2)
    root = store / "zarr.json"
    before = (root.read_bytes(), os.stat(root).st_mtime_ns, os.stat(root).st_ino)
    with fg.trace(wan_i2v, record=fg.Record(words=["fence"]), store=store):
        _call(wan_i2v, ref_image, steps=2)
    assert (root.read_bytes(), os.stat(root).st_mtime_ns, os.stat(root).st_ino) == before
    assert json.loads(root.read_text())["attributes"] == {"fglens_store": "runs",
                                                          "fglens_schema": fg.store.SCHEMA_VERSION}
    for name in fg.store.list_runs(store):
        meta = json.loads((store / name / "zarr.json").read_text())
        assert meta["attributes"]["fglens_schema"] == fg.store.SCHEMA_VERSION
        assert meta["consolidated_metadata"]["metadata"]["word_mass"]["shape"][1] == 2  # consolidated at close
        alone = xr.open_zarr(store / name, consolidated=True)  # a run directory is a zarr store by itself
        xr.testing.assert_identical(alone.load().drop_attrs(), fg.open_run(store, run=name).drop_attrs())


# -- the reference image kept with each run ------------------------------------------------------------------------
def _pil_thumbnail(image: Image.Image) -> np.ndarray:
    """Independent expectation: PIL's own LANCZOS resize to a long side of 256 px (aspect kept), or the image as is."""
    w, h = image.size
    if max(w, h) > 256:
        s = 256 / max(w, h)
        image = image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    return np.asarray(image.convert("RGB"))


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _strip_image(run_dir: Path) -> None:
    """Make a run look like one written before runs kept their image: no array, nothing in its metadata."""
    shutil.rmtree(run_dir / "reference_image")
    meta = json.loads((run_dir / "zarr.json").read_text())
    meta.get("consolidated_metadata", {}).get("metadata", {}).pop("reference_image", None)
    meta["attributes"]["record"] = json.dumps({k: v for k, v in json.loads(meta["attributes"]["record"]).items()
                                               if k != "image"})
    (run_dir / "zarr.json").write_text(json.dumps(meta))


def test_reference_image_is_written_once_at_creation_as_one_chunk(wan_i2v, tmp_path, monkeypatch):
    from zarr.storage import LocalStore

    image = _noise_image(600, 400)
    writes: list[str] = []
    original = LocalStore.set

    async def counting_set(self, key, value, *args, **kwargs):
        writes.append(key)
        return await original(self, key, value, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "set", counting_set)
    store = tmp_path / "image.zarr"
    seen_at_step: list[np.ndarray] = []

    def peek(pipe, i, t, kwargs):  # during sampling: the image is already there, whole
        if i == 0:
            run = fg.store.list_runs(store)[0]
            seen_at_step.append(np.asarray(zarr.open_group(str(store / run), mode="r")["reference_image"][...]))
        return kwargs

    with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=store) as run:
        _call(wan_i2v, image, steps=3, callback_on_step_end=peek)
    monkeypatch.undo()
    expected = _pil_thumbnail(image)
    assert expected.shape == (171, 256, 3)
    on_disk = fg.open_run(store)
    assert on_disk.reference_image.dims == ("image_y", "image_x", "channel")
    assert on_disk.reference_image.dtype == np.uint8
    np.testing.assert_array_equal(on_disk.reference_image.values, expected)
    np.testing.assert_array_equal(seen_at_step[0], expected)
    array = zarr.open_group(str(store / run.run_ids[0]), mode="r")["reference_image"]
    assert array.chunks == array.shape == (171, 256, 3)  # one chunk
    chunk_writes = [k for k in writes if k.startswith("reference_image/c")]
    assert chunk_writes == ["reference_image/c/0/0/0"]  # once, not per step
    assert sum(k.startswith("word_mass/c") for k in writes) == 3  # the steps, for comparison
    assert fg.store.decode_attrs(on_disk.attrs)["record"]["image"] is True
    assert "reference_image" in fg.store.decode_attrs(on_disk.attrs)["definitions"]
    # the in-memory run keeps the same image
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"])) as mem:
        _call(wan_i2v, image, steps=1)
    np.testing.assert_array_equal(mem.dataset.reference_image.values, expected)


def test_reference_image_from_a_tensor_and_no_image_when_not_asked(wan_i2v, tmp_path):
    pixels = np.random.default_rng(1).random((3, 40, 300), dtype=np.float32)  # [C, H, W] in [0, 1], as diffusers
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"])) as run:
        _call(wan_i2v, torch.from_numpy(pixels), steps=1)
    as_pil = Image.fromarray(np.round(pixels.transpose(1, 2, 0) * 255).astype(np.uint8))
    np.testing.assert_array_equal(run.dataset.reference_image.values, _pil_thumbnail(as_pil))
    assert run.dataset.reference_image.shape == (34, 256, 3)
    store = tmp_path / "none.zarr"
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"], image=False), store=store) as off:
        _call(wan_i2v, _noise_image(48, 32), steps=1)
    assert "reference_image" not in off.dataset and "reference_image" not in fg.open_run(store)
    assert not (store / off.run_ids[0] / "reference_image").exists()
    assert fg.store.decode_attrs(off.dataset.attrs)["record"]["image"] is False
    with pytest.raises(TypeError, match="image must be True .* or False"):
        fg.Record(image="yes")


def test_hunyuan_run_keeps_the_users_image_not_the_negative_prompts_black_one():
    pipe = fg.testing.tiny_hunyuan_i2v_pipeline()
    image = _noise_image(500, 300, seed=2)
    kwargs = {**fg.testing.tiny_call_kwargs("hunyuan", steps=1), "image": image}
    with fg.trace(pipe, record=fg.Record(words=["dog"])) as run:
        pipe(**kwargs, true_cfg_scale=2.0, negative_prompt="blurry")  # encodes a black image for the negative
    np.testing.assert_array_equal(run.dataset.reference_image.values, _pil_thumbnail(image))
    assert run.dataset.reference_image.shape == (154, 256, 3)


def test_reference_thumbnail_conversions_and_errors():
    from fglens.store.image import reference_thumbnail

    rgb = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(reference_thumbnail(rgb), rgb)  # small: kept pixel for pixel
    np.testing.assert_array_equal(reference_thumbnail([Image.fromarray(rgb)]), rgb)  # a list: its first image
    np.testing.assert_array_equal(reference_thumbnail(rgb[None].transpose(0, 3, 1, 2)), rgb)  # [1, C, H, W]
    signed = torch.from_numpy(rgb.astype(np.float32) / 255 * 2 - 1).permute(2, 0, 1)  # [-1, 1], [C, H, W]
    np.testing.assert_array_equal(reference_thumbnail(signed), rgb)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(reference_thumbnail(rgba), rgb)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(reference_thumbnail(grey), np.repeat(grey[..., None], 3, axis=-1))
    big = np.random.default_rng(4).integers(0, 256, (1000, 300, 3), dtype=np.uint8)
    out = reference_thumbnail(big)
    assert out.shape == (256, 77, 3)
    np.testing.assert_array_equal(out, _pil_thumbnail(Image.fromarray(big)))
    with pytest.raises(TypeError, match="cannot keep a reference image of type str; expected a PIL image"):
        reference_thumbnail("dog.png")
    with pytest.raises(ValueError, match=r"shape \(5, 7, 2\); expected a PIL image"):
        reference_thumbnail(np.zeros((5, 7, 2)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        reference_thumbnail(np.full((4, 4, 3), np.nan))
    with pytest.raises(ValueError, match="empty list"):
        reference_thumbnail([])


def test_open_runs_stacks_images_of_different_sizes_and_runs_without_one(wan_i2v, tmp_path, monkeypatch):
    store = tmp_path / "mixed.zarr"
    images = {"a-small": _noise_image(48, 32, seed=5), "b-large": _noise_image(400, 600, seed=6)}
    for run_id, image in images.items():
        with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=fg.store.store_path(store, run_id=run_id)):
            _call(wan_i2v, image, steps=1)
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"]), store=fg.store.store_path(store, run_id="c-old")):
        _call(wan_i2v, images["a-small"], steps=1)
    _strip_image(store / "c-old")  # as written before runs kept their image
    old = fg.open_run(store, run="c-old")  # still opens, and holds everything else
    assert "reference_image" not in old and np.isfinite(old.word_mass.values).all()
    expected = {r: _pil_thumbnail(im) for r, im in images.items()}
    assert expected["b-large"].shape == (256, 171, 3)

    from zarr.storage import LocalStore

    reads: list[str] = []
    original = LocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        reads.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting_get)
    ds = fg.open_runs(store)
    assert not [k for k in reads if k.startswith("reference_image/c")]  # lazy: no image read at open
    assert ds.reference_image.dims == ("run", "image_y", "image_x", "channel")
    assert ds.reference_image.shape == (3, 256, 171, 3) and ds.reference_image.dtype == np.uint8
    assert ds.image_size.dims == ("run", "image_side") and list(ds.image_side.values) == ["image_y", "image_x"]
    assert ds.image_size.values.tolist() == [[32, 48], [256, 171], [0, 0]]
    small = ds.reference_image.sel(run="a-small").values
    assert [k for k in reads if k.startswith("reference_image/c")] == ["reference_image/c/0/0/0"]
    monkeypatch.undo()
    np.testing.assert_array_equal(small[:32, :48], expected["a-small"])
    assert (small[32:] == 0).all() and (small[:, 48:] == 0).all()  # padded with 0
    loaded = fg.open_runs(store, lazy=False)
    np.testing.assert_array_equal(loaded.reference_image.sel(run="b-large").values, expected["b-large"])
    assert (loaded.reference_image.sel(run="c-old").values == 0).all()
    for r in images:  # each run's own image, cut to its size, is what open_run gives
        h, w = loaded.image_size.sel(run=r).values
        np.testing.assert_array_equal(loaded.reference_image.sel(run=r).values[:h, :w],
                                      fg.open_run(store, run=r).reference_image.values)
    # runs that all lack an image: no image variable, no image_size
    bare = fg.open_runs(store, runs=["c-old"], lazy=False)
    assert "reference_image" not in bare and "image_size" not in bare.coords
