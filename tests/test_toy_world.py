"""The toy world: exact ground truth, held-out splits, and the pixel scorer (1 on the truth, 0 on wrong videos)."""

from __future__ import annotations

import numpy as np
import pytest

from fglens.toy import score, suite
from fglens.toy.suite import HELD_OUT_CELLS, Item, held_out, load_items, save_items
from fglens.toy.world import CATEGORIES, COLOURS, DIRECTIONS, FRAMES, SIZE, TRAVEL, Instruction, render

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "in": "out", "out": "in"}


@pytest.fixture(scope="module")
def items() -> list[Item]:
    return suite("test", n=40, seed=3) + suite("train", n=40, seed=3)


def _wrong(item: Item) -> list[tuple[str, Instruction]]:
    """Instructions that do something else in the same scene, each with a name."""
    ins = item.instruction
    k = ins.kind
    if k in ("move", "pan", "zoom"):
        return [("opposite direction", Instruction(k, target=ins.target, direction=OPPOSITE[ins.direction]))]
    if k == "recolour":
        other = next(c for c in COLOURS if c not in {o.colour for o in item.scene.objects} and c != ins.colour)
        return [("wrong colour", Instruction(k, target=ins.target, colour=other))]
    if k in ("grow", "shrink"):
        return [("opposite size change", Instruction("shrink" if k == "grow" else "grow", target=ins.target))]
    if k == "approach":
        return [("the other object moves", Instruction(k, target=ins.other, other=ins.target))]
    if k == "swap":
        return [("only one moves", Instruction("approach", target=ins.target, other=ins.other))]
    return [("it moves", Instruction("move", target=ins.target, direction=d)) for d in DIRECTIONS]


def test_every_category_is_covered(items):
    assert {it.category for it in items} == set(CATEGORIES)
    assert {it.instruction.kind for it in items} >= {"move", "recolour", "pan", "approach", "swap", "still"}


def test_score_is_one_on_the_ground_truth(items):
    for item in items:
        result = score(item.video(), item)
        assert result["follows"] == 1.0, (item.prompt, result["reason"])
        assert result["fidelity"] == 1.0 and result["first_frame"] == 1.0


def test_score_is_zero_on_frozen_videos_except_static(items):
    for item in items:
        frozen = np.repeat(item.video()[:1], FRAMES, axis=0)
        expected = 1.0 if item.category == "static" else 0.0
        assert score(frozen, item)["follows"] == expected, item.prompt


def test_score_is_zero_when_the_video_does_the_wrong_thing(items):
    checked = set()
    for item in items:
        for name, wrong in _wrong(item):
            from fglens.toy.suite import _valid

            if not _valid(item.scene, wrong):
                continue
            video = render(item.scene, wrong)
            assert score(video, item)["follows"] == 0.0, (item.prompt, name)
            checked.add(item.category)
    assert checked == set(CATEGORIES)


def test_score_accepts_float_frames_and_refuses_bad_videos(items):
    item = items[0]
    assert score(item.video() / 255.0, item)["follows"] == 1.0
    with pytest.raises(ValueError, match="9 frames"):
        score(item.video()[:5], item)
    with pytest.raises(ValueError, match="64x64"):
        score(np.zeros((FRAMES, 32, 32, 3), np.uint8), item)
    with pytest.raises(ValueError, match="non-finite"):
        score(np.full((FRAMES, SIZE, SIZE, 3), np.nan), item)


def test_render_is_exact():
    from fglens.toy.world import Background, Obj, Scene

    scene = Scene(Background("plain", (30, 40, 50)), (Obj("square", "red", 5.0, (20.0, 30.0)),))
    video = render(scene, Instruction("move", target=0, direction="right"))
    red = (video == COLOURS["red"]).all(-1)
    xs = [np.nonzero(red[f].any(0))[0] for f in (0, FRAMES - 1)]
    assert xs[1].min() - xs[0].min() == TRAVEL  # moved exactly TRAVEL pixels
    assert red[0].sum() == red[-1].sum()  # same size
    from fglens.toy.world import coverage

    untouched = coverage(scene, Instruction("move", target=0, direction="right"))[0, 0] == 0
    assert (video[0][untouched] == (30, 40, 50)).all()  # plain background untouched outside the square
    assert 0 < (~untouched & ~red[0]).sum() < red[0].sum()  # only an antialiased rim is mixed


def test_splits_hold_out_what_training_never_sees():
    train, test = suite("train", n=60, seed=1), suite("test", n=60, seed=1)
    assert not any(it.held_out for it in train)
    assert all(it.held_out for it in test)
    kinds = {h for it in test for h in it.held_out}
    assert kinds == {"position", "size", "combination"}
    for it in train:
        subject = it.scene.objects[it.instruction.target if it.instruction.target is not None else 0]
        assert (int(subject.pos[0]) // 16, int(subject.pos[1]) // 16) not in HELD_OUT_CELLS
        assert held_out(it.scene, it.instruction) == ()


def test_suite_is_deterministic_and_round_trips(tmp_path):
    a, b = suite("test", n=12, seed=7), suite("test", n=12, seed=7)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert [x.prompt for x in suite("test", n=12, seed=8)] != [x.prompt for x in a]
    save_items(a, tmp_path / "items.jsonl")
    again = load_items(tmp_path / "items.jsonl")
    assert [x.to_dict() for x in again] == [x.to_dict() for x in a]
    assert all((x.video() == y.video()).all() for x, y in zip(a, again, strict=False))


def test_words_are_in_the_prompt_and_masks_cover_the_named_objects(items):
    for item in items:
        for w in item.words:
            assert w in item.prompt
        for word, mask in item.masks().items():
            colour = word.split()[0]
            pixels = (item.video()[0] == COLOURS[colour]).all(-1)
            assert (pixels & mask).sum() >= 0.8 * pixels.sum() > 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown split"):
        suite("val", n=1)
    with pytest.raises(ValueError, match="unknown category"):
        suite("test", n=1, categories=("flying",))
    with pytest.raises(ValueError, match="n must be"):
        suite("test", n=-1)
