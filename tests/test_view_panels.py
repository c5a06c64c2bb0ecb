"""The viewer's further panels, their data against fg.open_run: the condition balance per layer, the anchor mask of
an anchored run, the video kept next to a store (`fglens eval run`'s layout), and HunyuanVideo and CogVideoX runs
through every endpoint."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fglens as fg
from fglens.view.data import BadRequest, DatasetSource, StoreSource, request_key, unpack

pytest.importorskip("plotly", reason="the viewer's extra: pip install 'fglens[view]'")

MASK = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.25, 1.0]])  # on the tiny Wan call's latent grid (2 x 3)


def anchored_edit():
    return fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(MASK, "dog", strength=2.0), layers=[1])


def keep_video(store: Path, run: str, frames: np.ndarray, name: str = "seed0-intervention-0123.npz") -> Path:
    """A video kept as `fglens eval run` keeps it: OUT/videos/<item>/<name>.npz next to OUT/runs.zarr."""
    from fglens.eval.runner import _save_video

    path = store.parent / "videos" / "dog" / name
    _save_video(path, frames, {"run": run, "item": {"id": "dog"}, "seed": 0, "condition": "intervention"})
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, wan_i2v) -> Path:
    """runs.zarr of an eval-like folder: a plain run, and an anchored run whose video is kept beside the store."""
    path = tmp_path_factory.mktemp("view-panels") / "runs.zarr"
    fg.testing.tiny_run("wan", words=("dog", "fence"), store=path, pipe=wan_i2v)
    anchored = fg.testing.tiny_run("wan", words=("dog", "fence"), store=path, pipe=wan_i2v, edit=anchored_edit())
    frames = np.random.default_rng(0).random((5, 32, 48, 3))
    keep_video(path, anchored.attrs["run"], frames)
    return path


def expected_mean(ds, var: str, branch: str, steps) -> np.ndarray:
    """The layer means the balance sends: float64 mean over the steps and frames, then float32."""
    da = ds[var].sel(branch=branch, step=list(steps)).astype(np.float64)
    return da.mean([d for d in da.dims if d != "layer"]).transpose("layer").values


@pytest.mark.parametrize(("first", "last"), [(None, None), (0, 0), (1, 1), (0, 1)])
def test_balance_wan_exact(store, first, last):
    source = StoreSource(store)
    name = source.run_ids()[0]
    ds = fg.open_run(store, name)
    params = {"run": name, "branch": "cond", **({} if first is None else {"first": str(first), "last": str(last)})}
    answer = source.answer("balance", params)
    steps = [0, 1] if first is None else list(range(first, last + 1))
    assert answer["family"] == "separate" and answer["steps"] == steps and answer["lines"] == []
    assert answer["layers"] == [str(v) for v in ds.layer.values]
    text = expected_mean(ds, "text_share", "cond", steps)
    got = {s["name"]: unpack(s) for s in answer["stacked"]}
    assert list(got) == ["text", "image"]
    np.testing.assert_array_equal(got["text"], text.astype(np.float32))
    np.testing.assert_array_equal(got["image"], (1.0 - text).astype(np.float32))


def test_balance_refuses_bad_ranges(store):
    source = StoreSource(store)
    name = source.run_ids()[0]
    for params in ({"first": "1", "last": "0"}, {"first": "0", "last": "7"}, {"first": "x", "last": "1"}):
        with pytest.raises(BadRequest):
            source.answer("balance", {"run": name, "branch": "cond", **params})
    with pytest.raises(BadRequest):
        source.answer("balance", {"run": name, "branch": "uncond"})


def test_balance_reads_only_its_variables(store, monkeypatch):
    from test_view import _ChunkCounter

    source = StoreSource(store)
    name = source.run_ids()[0]
    counter = _ChunkCounter(monkeypatch)
    source.answer("balance", {"run": name, "branch": "cond", "first": "1", "last": "1"})
    data_vars = {"entropy", "morans_i", "similarity", "text_share", "word_map", "word_mass", "reference_image"}
    assert counter.arrays() & data_vars == {"text_share"}, counter.reads
    assert [k for k in counter.reads if k.startswith("text_share/")] == ["text_share/c/0/1/0/0"]  # step 1 only


def test_anchor_mask_is_the_runs(store):
    source = StoreSource(store)
    plain, anchored = source.run_ids()
    ds = fg.open_run(store, anchored)
    answer = source.answer("anchor", {"run": anchored})
    assert answer["note"] == "" and len(answer["anchors"]) == 1
    (anchor,) = answer["anchors"]
    rebuilt = fg.intervention_from_spec(ds.attrs["intervention"])  # what the store says the run used
    masks = next(p for p in rebuilt.parts() if isinstance(p, fg.AnchorMask)).masks.numpy()
    assert anchor["words"] == ["dog"] and anchor["strength"] == 2.0 and anchor["shape"] == [1, 2, 3]
    np.testing.assert_array_equal(unpack(anchor), masks)
    np.testing.assert_array_equal(unpack(anchor)[0], MASK.numpy())
    none = source.answer("anchor", {"run": plain})
    assert none == {"anchors": [], "note": "this run had no intervention, so no anchor mask"}


def test_anchor_of_another_intervention():
    from fglens.view.anchor import anchor_masks

    spec = fg.Scale(["dog"], 2.0).spec()
    note = anchor_masks({"intervention": json.dumps(spec)})["note"]
    assert note == "this run's intervention (Scale) has no anchor mask"
    composed = fg.compose(fg.Scale(["dog"], 2.0), fg.AnchorMask.from_mask(MASK, "fence")).spec()
    assert [a["words"] for a in anchor_masks({"intervention": composed})["anchors"]] == [["fence"]]


def test_video_kept_beside_the_store(store):
    from PIL import Image

    from fglens.eval.runner import load_video
    from fglens.store.image import reference_thumbnail

    source = StoreSource(store)
    plain, anchored = source.run_ids()
    assert source.answer("run", {"run": anchored})["has_video"]
    assert not source.answer("run", {"run": plain})["has_video"]
    answer = source.answer("video", {"run": anchored})
    stored = (load_video(next((store.parent / "videos").rglob("*.npz"))) * 255).round().astype(np.uint8)
    assert answer["shape"] == [5, 32, 48] and answer["condition"] == "intervention" and answer["item"] == "dog"
    assert answer["source"] == "videos/dog/seed0-intervention-0123.npz"
    for uri, frame in zip(answer["frames"], stored, strict=True):
        png = base64.b64decode(uri.split(",", 1)[1])
        drawn = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        np.testing.assert_array_equal(drawn, reference_thumbnail(frame))
    none = source.answer("video", {"run": plain})
    assert none["frames"] == [] and "no video was recorded" in none["note"] and "fglens eval run" in none["note"]


def test_video_index_reads_only_meta(store, monkeypatch):
    from fglens.view import video as video_module

    loads = []
    original = np.load

    def counting_load(path, *args, **kwargs):
        data = original(path, *args, **kwargs)
        real_getitem = type(data).__getitem__
        loads.append([])

        class Spy(type(data)):
            def __getitem__(self, key):
                loads[-1].append(key)
                return real_getitem(self, key)

        data.__class__ = Spy
        return data

    monkeypatch.setattr(video_module.np, "load", counting_load)
    found = video_module.find_videos(store)
    assert list(found) == [StoreSource(store).run_ids()[1]]
    assert loads == [["meta"]]  # the index never reads frames


def test_export_embeds_the_panels(store, tmp_path):
    from fglens.view import export_html

    report = export_html(store, tmp_path / "run.html")
    assert report.balances == 2 * 3 and report.videos == 1  # 2 runs x 1 branch x 3 step ranges of 2 steps
    html = (tmp_path / "run.html").read_text()
    start = html.index('id="fglens-data">') + len('id="fglens-data">')
    answers = json.loads(html[start:html.index("</script>", start)])["answers"]
    source = StoreSource(store)
    for name in source.run_ids():
        for first, last in ((0, 0), (0, 1), (1, 1)):
            params = {"run": name, "branch": "cond", "first": first, "last": last}
            assert answers[request_key("balance", params)] == source.answer(
                "balance", {k: str(v) for k, v in params.items()})
        assert answers[request_key("anchor", {"run": name})] == source.answer("anchor", {"run": name})
        assert answers[request_key("video", {"run": name})] == source.answer("video", {"run": name})
    assert "4 condition balances" not in report.summary() and "6 condition balances, 1 videos" in report.summary()


def _every_endpoint(ds, word: str = "dog") -> dict:
    """Every endpoint of one in-memory run, each checked against the Dataset itself."""
    source = DatasetSource(ds)
    name = source.run_ids()[0]
    info = source.answer("run", {"run": name})
    assert info["layers"] == [str(v) for v in ds.layer.values] and info["has_maps"] and info["has_balance"]
    for layer in (info["layers"][0], info["layers"][-1]):
        maps = source.answer("maps", {"run": name, "layer": layer, "step": "1", "word": word, "branch": "cond"})
        np.testing.assert_array_equal(unpack(maps), ds.word_map.sel(branch="cond", layer=layer, step=1, word=word)
                                      .transpose("frame", "y", "x").values)
    for var in info["variables"]:
        heat = source.answer("heatmap", {"run": name, "var": var, "branch": "cond"})
        da = ds[var].sel(branch="cond").astype(np.float64)
        expected = da.mean([d for d in da.dims if d not in ("layer", "step")]).transpose("layer", "step").values
        np.testing.assert_array_equal(unpack(heat), expected.astype(np.float32))
    assert isinstance(source.answer("weak", {"run": name})["weak"], list)
    assert source.answer("anchor", {"run": name})["anchors"] == []
    assert source.answer("video", {"run": name})["frames"] == []
    balance = source.answer("balance", {"run": name, "branch": "cond"})
    assert balance["family"] == "joint"
    got = {s["name"]: unpack(s) for s in balance["stacked"]}
    text, image = (expected_mean(ds, v, "cond", ds.step.values) for v in ("text_mass", "image_mass"))
    np.testing.assert_array_equal(got["text"], text.astype(np.float32))
    np.testing.assert_array_equal(got["image-derived"], image.astype(np.float32))
    np.testing.assert_array_equal(got["video"], (1.0 - text - image).astype(np.float32))
    return got


def test_hunyuan_run_every_endpoint():
    """HunyuanVideo I2V (joint attention, double and single blocks, token-replace image condition)."""
    got = _every_endpoint(fg.testing.tiny_run("hunyuan", words=("dog",), maps=True))
    assert list(got) == ["text", "image-derived", "video"] and got["image-derived"].max() > 0


def test_cogvideox_run_every_endpoint():
    """CogVideoX (text-to-video, joint attention over 226 padded T5 tokens; no reference image)."""
    pipe = fg.testing.tiny_cogvideox_pipeline(num_layers=2)
    with fg.trace(pipe, record=fg.Record(words=["dog"], maps=True)) as run:
        pipe(prompt="a dog runs", height=32, width=32, num_frames=9, num_inference_steps=2, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    ds = run.dataset
    info = DatasetSource(ds).answer("run", {"run": DatasetSource(ds).run_ids()[0]})
    assert not info["has_image"] and info["image"] is None and info["frames"] == ds.sizes["frame"]
    got = _every_endpoint(ds)
    assert list(got) == ["text", "image-derived", "video"]
