"""The toy world's tiny CLIP: shipped and checked, localises better than its random-weights control and than
chance, trains deterministically and resumes exactly, anchors toy items on the DiT's 8×8 token grid.

How well it localises on 100 test items is measured by `fglens toy train-clip` (docs/toy-world.md).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fglens as fg  # noqa: E402
from fglens.toy.clip import (  # noqa: E402
    CLIP_WEIGHTS,
    NAMES,
    TOKEN_GRID,
    ClipTrainConfig,
    cell_coverage,
    classification,
    config,
    localisation,
    random_clip,
    train_clip,
)
from fglens.toy.load import WEIGHTS, manifest, verify  # noqa: E402

SMOKE = dict(batch=8, pool=8, warmup=1, cooldown=0, lr=3e-3, checkpoint_every=4, progress=False)


@pytest.fixture(scope="module")
def clip():
    return fg.toy.clip()


@pytest.fixture(scope="module")
def items():
    return fg.toy.suite("test", n=30, seed=0)


def test_the_shipped_clip_loads_offline_and_its_files_match_their_checksums(clip, tmp_path):
    verify(only="clip")
    files = manifest()
    shipped = sorted(f for f in files if f.startswith("clip/"))
    assert shipped == ["clip/clip.json", "clip/open_clip_config.json", "clip/open_clip_model.safetensors"]
    assert any(f.startswith("base/") for f in files) and any(f.startswith("weak/") for f in files)
    assert sum((WEIGHTS / f).stat().st_size for f in files) <= 25 * 2**20
    assert clip.weights == str(CLIP_WEIGHTS / "open_clip_model.safetensors")
    assert clip.patch_size == (8, 8) and clip.image_size == (64, 64)
    info = json.loads((CLIP_WEIGHTS / "clip.json").read_text())
    assert info["config"]["seed"] == 0 and info["names"] == list(NAMES)
    # a damaged CLIP file is named; the pipelines do not read the CLIP's files, and the CLIP not theirs
    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy)
    target = copy / "clip" / "open_clip_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    verify(copy, only="base")
    with pytest.raises(ValueError, match="open_clip_model.safetensors does not match"):
        verify(copy, only="clip")
    (copy / "shared" / "vae" / "config.json").unlink()
    (copy / "clip" / "open_clip_model.safetensors").write_bytes(
        (WEIGHTS / "clip" / "open_clip_model.safetensors").read_bytes())
    verify(copy, only="clip")


def test_it_points_at_the_named_objects_far_better_than_its_random_control_and_chance(clip, items):
    trained = localisation(clip, items)
    control = localisation(random_clip(0), items)
    assert trained["words"] == control["words"] >= 20
    # chance: the share of the 8×8 cells an object touches (a random cell's hit rate), about a tenth
    assert 0.05 < trained["chance"] == control["chance"] < 0.2
    assert trained["pointing"] >= 0.8
    assert trained["pointing"] >= control["pointing"] + 0.3
    assert trained["iou"] >= control["iou"] + 0.2
    # and the named object, not just an object: in scenes of several objects (chance: 1 / objects)
    assert trained["multi"] == control["multi"] >= 10 and 0.3 < trained["own_chance"] < 0.55
    assert trained["own"] >= 0.9 and control["own"] <= trained["own"] - 0.3


def test_it_knows_shapes_partly(clip, items):
    # colour alone finds an object (one per colour in a scene); its shape knowledge is partial (module docstring)
    result = classification(clip, items)
    assert result["shape_chance"] == pytest.approx(1 / 3)
    assert result["shape_patches"] >= result["shape_chance"] + 0.15
    assert result["accuracy_patches"] >= result["base_rate"]
    control = classification(random_clip(0), items)
    assert control["shape_patches"] < result["shape_patches"] - 0.15


def test_clip_anchors_land_on_the_toy_dits_token_grid(clip, items):
    from fglens.toy.experiment import clip_anchor, focal_guidance, truth_anchor

    item = next(it for it in items if len(it.words) == 2)
    anchor = clip_anchor(item, 2.0, clip)
    assert anchor.words == item.words and tuple(anchor.masks.shape) == (2, *TOKEN_GRID)
    assert anchor.regions.grid_hw == TOKEN_GRID and anchor.regions.similarity.grid_hw == TOKEN_GRID
    # the pipeline's token grid is 8×8 per frame: the masks are used as they are, not resized
    tokens = anchor.token_masks((5, 8, 8), torch.device("cpu"))
    assert torch.equal(tokens.view(2, 5, 8, 8)[:, 3], anchor.masks)
    truth = truth_anchor(item, 2.0).token_masks((5, 8, 8), torch.device("cpu")).view(2, 5, 8, 8)[:, 0]
    for k in range(2):  # each word's CLIP region overlaps its own object more than the other one
        own, other = (float((anchor.masks[k] * truth[j]).sum()) for j in (k, 1 - k))
        assert own > other
    build = focal_guidance(["blocks.4"], ["blocks.1"], anchor="clip", clip=clip)
    camera = next(it for it in items if it.category == "camera_motion")
    parts = {type(p).__name__: p for p in build(item).parts()}
    assert parts["AnchorMask"].words == item.words and torch.equal(parts["AnchorMask"].masks, anchor.masks)
    assert [type(p).__name__ for p in build(camera).parts()] == ["CacheTransfer"]
    assert focal_guidance(["blocks.4"], [], anchor="clip", cache=False, clip=clip)(camera) is None
    with pytest.raises(ValueError, match="names no object"):
        clip_anchor(camera, 2.0, clip)
    with pytest.raises(ValueError, match="anchor must be 'truth', 'clip' or None"):
        focal_guidance(["blocks.4"], [], anchor="sam")
    with pytest.raises(ValueError, match="clip= is used by anchor='clip' only"):
        focal_guidance(["blocks.4"], [], anchor="truth", clip=clip)


def test_cell_coverage_counts_each_token_cell():
    mask = np.zeros((64, 64), bool)
    mask[4:12, 0:8] = True  # half of cell (0, 0), half of cell (1, 0)
    cover = cell_coverage(mask)
    assert cover.shape == TOKEN_GRID and cover[0, 0] == cover[1, 0] == 0.5 and cover.sum() == 1.0
    with pytest.raises(ValueError, match="does not tile"):
        cell_coverage(np.zeros((60, 64), bool))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip-straight")
    return out, train_clip(out, steps=8, **SMOKE)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "open_clip_model.safetensors")


def test_a_smoke_run_learns_and_writes_an_open_clip_folder(straight):
    out, info = straight
    loss = info["loss"]
    assert len(loss) == 8 and sum(loss[-3:]) / 3 < sum(loss[:3]) / 3
    saved = json.loads((out / "open_clip_config.json").read_text())
    assert saved == json.loads(json.dumps(config()))
    assert all(v.dtype == torch.float16 for v in _weights(out).values())
    loaded = fg.anchors.Clip(f"local-dir:{out}")  # open_clip's folder format, float16 read into float32
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert tuple(fg.toy.clip(path=out).word_maps(fg.toy.suite("test", n=1)[0].image, ["red circle"]).maps.shape) == (
        1, 8, 8)


def test_a_resumed_run_ends_exactly_where_a_straight_run_does(straight, tmp_path):
    out, info = straight
    train_clip(tmp_path, steps=4, **SMOKE)  # stops after 4 steps (checkpoint at 4)
    resumed = train_clip(tmp_path, steps=8, **SMOKE)  # picks up the checkpoint, runs 4 more
    assert resumed["loss"] == info["loss"]
    a, b = _weights(out), _weights(tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad, match", [
    (dict(steps=0), "steps must be a positive integer"),
    (dict(batch=2.5), "batch must be a positive integer"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(cooldown=20, steps=10), r"cooldown must be an integer in 0..steps \(10\)"),
    (dict(pool_type="max"), "pool_type must be 'avg' or 'tok'"),
    (dict(seed="0"), "seed must be an integer"),
])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ClipTrainConfig(**bad)


def test_bad_runs_and_folders_are_refused(straight, tmp_path):
    out, _ = straight
    with pytest.raises(ValueError, match="unknown training options"):
        train_clip(tmp_path, steps=2, epochs=3)
    with pytest.raises(ValueError, match="holds a pool of seed 0, n 8"):
        train_clip(out, steps=8, **{**SMOKE, "pool": 16})
    with pytest.raises(ValueError, match="a run with other settings"):
        train_clip(out, steps=8, **{**SMOKE, "lr": 1e-3})
    with pytest.raises(ValueError, match="already run 8 steps"):
        train_clip(out, steps=4, **SMOKE)
    with pytest.raises(FileNotFoundError, match="has no open_clip_config.json"):
        fg.toy.clip(path=tmp_path)
    with pytest.raises(ValueError, match="pool_type must be"):
        config("max")


def test_the_cli_trains_and_refuses_an_incomplete_ship(tmp_path, capsys):
    from fglens import cli

    assert cli.main(["toy", "ship"]) != 0
    assert "needs --base and --weak" in capsys.readouterr().err
    assert cli.main(["toy", "ship", "--base", "x"]) != 0
    out = tmp_path / "run"
    assert cli.main(["toy", "train-clip", "--out", str(out), "--steps", "2", "--batch", "4", "--pool", "4",
                     "--measure", "0", "--quiet"]) == 0
    assert (out / "open_clip_model.safetensors").is_file()
    assert json.loads((out / "clip.json").read_text())["config"]["steps"] == 2
    assert cli.main(["toy", "train-clip", "--out", str(tmp_path / "bad"), "--steps", "0", "--quiet"]) != 0


def test_shipping_a_clip_keeps_the_other_entries_and_refuses_damaged_weights(straight, tmp_path):
    from fglens.toy.load import ship_clip

    out, _ = straight
    root = tmp_path / "weights"
    shutil.copytree(WEIGHTS, root)
    before = manifest(root)
    after = ship_clip(out, root)
    assert {k: v for k, v in after.items() if not k.startswith("clip/")} == {
        k: v for k, v in before.items() if not k.startswith("clip/")}
    assert after != before and after == manifest(root)
    verify(root)
    assert fg.anchors.Clip(f"local-dir:{root / 'clip'}").weights.endswith("open_clip_model.safetensors")
    with pytest.raises(FileNotFoundError, match="not a finished `fglens toy train-clip` run"):
        ship_clip(tmp_path / "nothing", root)
    (root / "base.json").write_text("{}")
    with pytest.raises(ValueError, match="base.json does not match the manifest"):
        ship_clip(out, root)
