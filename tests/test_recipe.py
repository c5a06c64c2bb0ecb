"""Intervention recipes (JSON): parsed with clear errors, built into the same interventions as by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fglens as fg
from fglens.interventions.recipe import from_recipe, parse_recipe, recipe_layers


def test_parse_errors_name_what_is_accepted():
    assert parse_recipe(None) is None and parse_recipe("none") is None
    with pytest.raises(ValueError, match="unknown intervention type 'magic'; accepted: focal_guidance"):
        parse_recipe({"type": "magic"})
    with pytest.raises(ValueError, match=r"does not take \['lambda'\]"):
        parse_recipe({"type": "scale", "factor": 2, "lambda": 1})
    with pytest.raises(ValueError, match="needs 'dst'"):
        parse_recipe('{"type": "cache-transfer", "src": [1]}')
    with pytest.raises(ValueError, match="must be JSON"):
        parse_recipe("{type: scale")
    assert recipe_layers({"type": "focal-guidance", "layers": [1, 2], "src": 3}) == [1, 2, 3]


@pytest.mark.parametrize("text, key", [
    ('{"type": "focal_guidance", "layers": [1], "strength": NaN, "anchor": false, "src": [3]}', "'strength'"),
    ('{"type": "scale", "factor": Infinity, "words": ["dog"]}', "'factor'"),
    ('{"type": "cache_transfer", "src": [3], "dst": [1], "alpha": -Infinity}', "'alpha'"),
    ('{"type": "cache_transfer", "src": [3], "dst": [1], "steps": [0.0, NaN]}', "'steps'"),
])
def test_non_finite_recipe_values_are_refused_before_building(text, key):
    """JSON text may spell NaN and Infinity; a recipe holding one is refused by name (issue 12, item 3)."""
    with pytest.raises(ValueError, match=f"{key} must hold finite numbers; got (nan|inf|-inf)"):
        parse_recipe(text)
    with pytest.raises(ValueError, match="must hold finite numbers"):
        from_recipe(text, words=["dog"])


def test_recipes_build_the_interventions_they_name():
    assert from_recipe({"type": "scale", "factor": 2.0}, words=["dog"]).spec() == fg.Scale(["dog"], 2.0).spec()
    assert from_recipe({"type": "ablate", "segment": "image", "layers": [1]}).spec() == fg.Ablate(
        "image", where=fg.Where(layers=[1])).spec()
    spec = from_recipe({"type": "cache_transfer", "src": [3], "dst": [1, 2], "steps": [0.0, 0.5]}).spec()
    assert spec == fg.CacheTransfer([3], [1, 2], where=fg.Where(steps=(0.0, 0.5))).spec()
    with pytest.raises(ValueError, match="needs words"):
        from_recipe({"type": "scale", "factor": 2.0})
    with pytest.raises(ValueError, match="needs a CLIP model"):
        from_recipe({"type": "focal_guidance", "layers": [1]}, image=fg.testing.reference_image(), prompt="a dog",
                    words=["dog"])


def test_every_operator_parameter_reaches_the_intervention_from_a_recipe(ref_image):
    """Issue 15 item 6: the anchor's frames and threshold, the cache's mode, pairing, heads and source map."""
    cache = {"mode": "prev_step", "pairing": "nearest", "heads": "mean", "source_map": "clean"}
    spec = from_recipe({"type": "cache_transfer", "src": [3], "dst": [1, 2], **cache}).spec()
    assert spec == fg.CacheTransfer([3], [1, 2], **cache).spec()
    image = fg.testing.reference_image(64, 64)
    anchor = from_recipe({"type": "anchor_mask", "words": ["dog"], "clip": "tiny", "frames": "first",
                          "threshold": "quantile"}, image=image, prompt="a dog")
    assert anchor.frames == "first" and anchor.regions.threshold == "quantile"
    fgd = from_recipe({"type": "focal_guidance", "layers": [1], "src": [3], "clip": "tiny", "frames": 0.5,
                       "threshold": None, **cache}, image=image, prompt="a dog", words=["dog"])
    anchor_part, cache_part = fgd.parts()
    assert anchor_part.frames == 0.5 and anchor_part.regions.threshold is None
    assert {k: cache_part.spec()[k] for k in cache} == cache
    with pytest.raises(ValueError, match="heads must be"):
        from_recipe({"type": "cache_transfer", "src": [3], "dst": [1], "heads": "all"})
    with pytest.raises(ValueError, match="clip takes 'model', 'pretrained' and 'dense'"):
        from_recipe({"type": "anchor_mask", "words": ["dog"], "clip": {"model": "ViT-B-16", "weights": "x"}},
                    image=image, prompt="a dog")


def test_clip_anchors_land_on_the_pipelines_own_token_grid(ref_image):
    """16 px per token by default (Wan, HunyuanVideo, CogVideoX); the toy world's 8 px make a 4x finer grid; the
    CLI, sweeps and eval pass the pipeline's own value (spatial_multiple)."""
    from fglens.pipelines import spatial_multiple

    clip = fg.anchors.Clip(fg.anchors.tiny_config())
    image = fg.testing.reference_image(64, 64)
    assert tuple(fg.AnchorMask.from_clip(image, "a dog", ["dog"], clip).masks.shape) == (1, 4, 4)
    assert tuple(fg.AnchorMask.from_clip(image, "a dog", ["dog"], clip, token_px=8).masks.shape) == (1, 8, 8)
    recipe = {"type": "anchor_mask", "words": ["dog"], "clip": "tiny"}
    assert tuple(from_recipe(recipe, image=image, prompt="a dog", token_px=8).masks.shape) == (1, 8, 8)
    assert spatial_multiple(fg.toy.pipeline("base")) == 8 and spatial_multiple(fg.testing.tiny_wan_i2v_pipeline()) == 16
    for bad in (0, -8, 2.5):
        with pytest.raises(ValueError, match="pixels per latent token"):
            fg.AnchorMask.from_clip(image, "a dog", ["dog"], clip, token_px=bad)


def test_focal_guidance_recipe_equals_the_hand_built_edit(wan_i2v, ref_image):
    prompt = "a dog jumps over a fence"
    recipe = {"type": "focal-guidance", "layers": [1, 2], "src": [3], "alpha": 0.5, "strength": 2.0, "clip": "tiny"}
    built = from_recipe(recipe, image=ref_image, prompt=prompt, words=["dog"], size=(32, 48))
    torch.manual_seed(0)
    clip = fg.anchors.Clip(fg.anchors.tiny_config())
    anchor = fg.AnchorMask.from_clip(ref_image, prompt, ["dog"], clip, 2.0, height=32, width=48)
    by_hand = fg.FocalGuidance(anchor=anchor, cache=fg.CacheTransfer([3], [1, 2], 0.5), layers=[1, 2])
    assert built.spec() == by_hand.spec()

    def frames(edit):
        with fg.trace(wan_i2v, edit=edit):
            return wan_i2v(image=ref_image, prompt=prompt, height=32, width=48, num_frames=5, num_inference_steps=2,
                           generator=torch.Generator().manual_seed(0), output_type="np").frames[0]

    assert np.array_equal(frames(built), frames(by_hand))
