"""Which words an anchor takes (issue 15 item 6): CLIP's presence rule, the items' own `anchor_words` in suites and
sweep lines, and the recipes' ``anchor_words`` rule."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fglens as fg  # noqa: E402
from fglens.interventions.recipe import from_recipe, parse_recipe  # noqa: E402


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return fg.anchors.Clip(fg.anchors.tiny_config())


def test_presence_is_the_cosine_margin_over_a_generic_noun_from_open_clips_own_towers(clip):
    """Reference: open_clip's own encode_image / encode_text on a square image of the tower's size, normalised by
    hand, the templates averaged by hand."""
    size = clip.image_size
    image = fg.testing.reference_image(size[1], size[0])
    x = (torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255.0)[None]
    x = (x - clip.mean) / clip.std
    with torch.no_grad():
        img = F.normalize(clip.model.encode_image(x).float()[0], dim=-1)
        torch.testing.assert_close(clip.image_features(image), img, rtol=1e-5, atol=1e-6)

        def text(word):
            feats = F.normalize(clip.model.encode_text(clip.tokenizer(
                [t.format(word) for t in fg.anchors.DEFAULT_TEMPLATES])).float(), dim=-1).mean(0)
            return F.normalize(feats, dim=-1)

        expected = {w: float(text(w) @ img - text("object") @ img) for w in ("dog", "fence", "jumps")}
    got = fg.anchors.word_presence(clip, image, ["dog", "fence", "jumps"])
    assert got.keys() == expected.keys()
    for w in expected:
        assert abs(got[w] - expected[w]) < 1e-5
    assert fg.anchors.visible_words(clip, image, ["dog", "fence", "jumps"]) == [w for w in expected if expected[w] > 0]
    assert fg.anchors.visible_words(clip, image, ["dog", "fence", "jumps"], margin=1e9) == []
    with pytest.raises(ValueError, match="margin must be a finite number"):
        fg.anchors.visible_words(clip, image, ["dog"], margin=float("nan"))


def test_the_toy_clip_sees_the_named_objects():
    """The rule on a trained CLIP: most named objects of held-out toy items pass (0.95 of 200 items measured, see
    fglens.anchors.presence); objects absent from the scene score below present ones on average."""
    toy_clip = fg.toy.clip()
    items = fg.toy.suite("test", n=40, seed=0)
    kept, present, absent = [], [], []
    names = sorted({o.name for it in items for o in it.scene.objects})
    for it in items:
        in_scene = [o.name for o in it.scene.objects]
        scores = fg.anchors.word_presence(toy_clip, it.image, names)
        kept += [scores[w] > 0 for w in it.words if w in it.masks()]
        present += [scores[w] for w in in_scene]
        absent += [scores[w] for w in names if w not in in_scene]
    assert sum(kept) / len(kept) >= 0.85
    assert sum(present) / len(present) > sum(absent) / len(absent) + 0.02


def test_recipes_anchor_the_items_own_words_or_the_rule(clip, wan_i2v, ref_image):
    prompt, words = "a dog jumps over the red fence", ["dog", "jumps", "fence"]
    base = {"type": "anchor_mask", "clip": "tiny"}
    visible = fg.anchors.visible_words(clip, ref_image, words)
    built = from_recipe(base, image=ref_image, prompt=prompt, words=words, clip=clip)
    assert (built.words if built is not None else []) == visible  # the default rule
    assert from_recipe({**base, "anchor_words": "all"}, image=ref_image, prompt=prompt, words=words,
                       clip=clip).words == words
    assert from_recipe(base, image=ref_image, prompt=prompt, words=words, clip=clip,
                       anchor_words=["fence"]).words == ["fence"]
    assert from_recipe({**base, "words": ["dog"]}, image=ref_image, prompt=prompt, words=words, clip=clip,
                       anchor_words=["fence"]).words == ["dog"]  # the recipe's own words win
    # no word to anchor: no anchor; a focal_guidance recipe keeps its cache transfer
    assert from_recipe(base, image=ref_image, prompt=prompt, words=words, clip=clip, anchor_words=[]) is None
    fgd = from_recipe({"type": "focal_guidance", "layers": [1], "src": [3], "clip": "tiny"}, image=ref_image,
                      prompt=prompt, words=words, clip=clip, anchor_words=[])
    assert [type(p).__name__ for p in fgd.parts()] == ["CacheTransfer"]
    assert from_recipe({"type": "focal_guidance", "layers": [1], "clip": "tiny"}, image=ref_image, prompt=prompt,
                       words=words, clip=clip, anchor_words=[]) is None
    with pytest.raises(ValueError, match="'anchor_words' is one of"):
        parse_recipe({**base, "anchor_words": "nouns"})


def test_suites_and_sweep_lines_carry_anchor_words(tmp_path):
    from fglens.eval.suite import load_suite
    from fglens.sweep import load_spec

    fg.testing.reference_image().save(tmp_path / "ref.png")
    line = {"image": "ref.png", "prompt": "the camera pans over the dog", "category": "camera_motion",
            "words": ["pans", "dog"], "questions": ["Does the camera pan?"], "anchor_words": ["dog"]}
    (tmp_path / "suite.jsonl").write_text(json.dumps(line) + "\n")
    (item,) = load_suite(tmp_path / "suite.jsonl")
    assert item.anchor_words == ("dog",) and item.to_json()["anchor_words"] == ["dog"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({**line, "anchor_words": ["cat"]}) + "\n")
    with pytest.raises(ValueError, match=r"anchor_words \['cat'\] are not among the item's words"):
        load_suite(tmp_path / "bad.jsonl")

    spec_line = {"image": "ref.png", "prompt": "the camera pans over the dog", "words": ["pans", "dog"], "seed": 0,
                 "anchor_words": []}
    (tmp_path / "spec.jsonl").write_text(json.dumps(spec_line) + "\n")
    (parsed,) = load_spec(tmp_path / "spec.jsonl")
    assert parsed.anchor_words == () and parsed.normalised()["anchor_words"] == []
    (tmp_path / "spec2.jsonl").write_text(json.dumps({**spec_line, "anchor_words": ["cat"]}) + "\n")
    with pytest.raises(ValueError, match="'anchor_words' must be a list of the line's words"):
        load_spec(tmp_path / "spec2.jsonl")
    plain = {k: v for k, v in spec_line.items() if k != "anchor_words"}
    (tmp_path / "spec3.jsonl").write_text(json.dumps(plain) + "\n")
    assert "anchor_words" not in load_spec(tmp_path / "spec3.jsonl")[0].normalised()  # old fingerprints unchanged


def test_the_toy_eval_suite_anchors_objects_not_the_camera(tmp_path):
    from fglens.toy.evalsuite import load_eval_suite, write_eval_suite

    items = fg.toy.suite("test", n=20, seed=0)
    suite = load_eval_suite(write_eval_suite(items, tmp_path))
    by_id = {it.id: it for it in items}
    for entry in suite:
        assert list(entry.anchor_words) == list(by_id[entry.id].masks())
    assert any(not entry.anchor_words for entry in suite)  # a camera item: nothing to anchor
