"""`fg.intervention_from_spec`: a stored run's `intervention` attribute rebuilds the exact intervention, and a rerun
with it reproduces the run bit for bit (issue 14, item 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fglens as fg

CALL = dict(prompt="a dog jumps over the red fence", height=48, width=80, num_frames=9, num_inference_steps=3,
            output_type="latent")


def _edit() -> fg.Intervention:
    soft = torch.rand(3, 5, generator=torch.Generator().manual_seed(0))  # not binary: every bit of it matters
    anchor = fg.AnchorMask(torch.stack([soft, (soft > 0.5).float()]), ["dog", "fence"], strength=3.0, frames=0.5)
    preset = fg.FocalGuidance(anchor=anchor, cache=fg.CacheTransfer(src=[0], dst=[1], alpha=0.7), layers=[1],
                              steps=(0.0, 0.7))
    return fg.compose(preset, fg.Scale("jumps", 1.5, where=fg.Where(heads=[0], frames=[1, 2])),
                      fg.Ablate("image", where=fg.Where(layers=[0], steps=[2])))


def _run(pipe, image, edit, store):
    with fg.trace(pipe, record=fg.Record(words=["dog", "jumps"]), edit=edit, store=store) as run:
        frames = pipe(image=image, generator=torch.Generator().manual_seed(3), **CALL).frames
    return frames, run


def test_a_stored_runs_spec_rebuilds_the_intervention_and_reproduces_the_run(wan_i2v, ref_image, tmp_path):
    edit = _edit()
    frames, run = _run(wan_i2v, ref_image, edit, tmp_path / "a.zarr")
    stored = fg.open_run(tmp_path / "a.zarr").attrs["intervention"]  # JSON text in the store
    rebuilt = fg.intervention_from_spec(stored)
    assert rebuilt.spec() == json.loads(stored) == json.loads(json.dumps(edit.spec()))
    assert [type(p).__name__ for p in rebuilt.parts()] == ["AnchorMask", "CacheTransfer", "Scale", "Ablate"]
    anchor = rebuilt.parts()[0]
    assert torch.equal(anchor.masks, edit.parts()[0].masks) and anchor.frames == 0.5
    again, rerun = _run(wan_i2v, ref_image, rebuilt, tmp_path / "b.zarr")
    assert torch.equal(frames, again)  # bit for bit
    for var in run.dataset.data_vars:
        np.testing.assert_array_equal(run.dataset[var].values, rerun.dataset[var].values, err_msg=var)
    plain, _ = _run(wan_i2v, ref_image, None, tmp_path / "c.zarr")
    assert not torch.equal(frames, plain)  # the edit mattered, so reproducing it means something


def test_focal_guidance_comes_back_as_the_preset():
    anchor = fg.AnchorMask.from_mask(torch.ones(2, 3), "dog", strength=2.0)
    edit = fg.FocalGuidance(anchor=anchor, cache=fg.CacheTransfer(src=[3], dst=[1, 2]), layers=[1, 2])
    again = fg.intervention_from_spec(json.dumps(edit.spec()))
    assert isinstance(again, fg.FocalGuidance) and again.spec() == edit.spec()
    assert again.parts()[1].where.steps == (0.0, 0.5)  # a fraction range stays a fraction range


@pytest.mark.parametrize("spec, match", [
    ("{not json", "must be JSON"),
    ({"words": ["dog"]}, "an object with a 'type'"),
    ({"type": "Magic"}, r"unknown intervention type 'Magic' in a spec; known: AnchorMask, CacheTransfer"),
    ({"type": "Scale", "words": ["dog"]}, r"the Scale spec lacks 'factor'"),
    ({"type": "AnchorMask", "words": ["dog"], "strength": 1.0, "frames": "all", "mask_shape": [1, 2, 3]},
     "holds no masks"),
    ({"type": "AnchorMask", "words": ["dog"], "strength": 1.0, "frames": "all",
      "masks": {"shape": [1, 2, 3], "zlib_base64": "AAAA"}}, "could not decode it"),
    ({"type": "Compose", "parts": []}, "needs its 'parts'"),
    ({"type": "Scale", "words": ["dog"], "factor": float("nan")}, "must be a finite number"),
])
def test_bad_specs_are_refused_with_what_was_wrong(spec, match):
    with pytest.raises(ValueError, match=match):
        fg.intervention_from_spec(spec)
