"""The suite format of fglens.eval: the built-in suite, loading with relative paths, and clear errors."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from fglens.eval.suite import CATEGORIES, builtin_suite, load_suite, save_suite, write_builtin_suite


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return builtin_suite(tmp_path_factory.mktemp("suite"), width=48, height=32)


def test_builtin_suite_covers_every_category_with_drawn_images(suite):
    assert len(suite) == 10
    assert sorted(set(suite.categories)) == sorted(CATEGORIES)
    assert all(suite.categories.count(c) == 2 for c in CATEGORIES)
    for item in suite:
        image = item.load_image()
        assert image.size == (48, 32)
        assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) >= 3  # a drawing, not a blank canvas
        assert item.questions and all(q.endswith("?") for q in item.questions)
    assert suite["red-ball-turns-blue"].target == ("blue ball",)


def test_builtin_prompts_tokenize_into_whole_words_on_the_tiny_tokenizers(suite):
    from fglens.testing import tiny_llama3_tokenizer, tiny_t5_tokenizer

    t5, llama = tiny_t5_tokenizer(), tiny_llama3_tokenizer()
    for item in suite:
        pieces = t5.tokenize(item.prompt)
        assert pieces == ["▁" + w for w in item.prompt.split()], item.prompt
        assert llama.tokenize(" " + item.prompt) == ["Ġ" + w for w in item.prompt.split()], item.prompt
        assert all(w in item.prompt.split() for w in item.words)


def test_relative_image_paths_start_at_the_suite_file(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    (folder / "pics").mkdir(parents=True)
    Image.new("RGB", (48, 32), "red").save(folder / "pics" / "ball.png")
    line = {"image": "pics/ball.png", "prompt": "a red ball rolls left", "category": "object motion",
            "words": ["ball", "left"], "questions": ["Does the ball roll to the left?"]}
    (folder / "suite.jsonl").write_text(json.dumps(line) + "\n\n")
    monkeypatch.chdir(tmp_path)  # not the suite's folder
    loaded = load_suite("mine/suite.jsonl")
    item = loaded.items[0]
    assert item.image == (folder / "pics" / "ball.png").resolve()
    assert item.category == "object_motion" and item.id == "item-1" and item.subject_word == "ball"
    again = load_suite(save_suite(loaded, tmp_path / "copy" / "suite.jsonl"))
    assert again.items[0].image == item.image and again.items[0].words == item.words


def _write(tmp_path, *objs):
    Image.new("RGB", (48, 32)).save(tmp_path / "a.png")
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return path


GOOD = {"image": "a.png", "prompt": "a dog runs", "category": "object_motion", "words": ["dog"],
        "questions": ["Does the dog run?"]}


@pytest.mark.parametrize("change, message", [
    ({"category": "dance"}, r"line 1: unknown category 'dance'; accepted: \['dynamic_attribute'"),
    ({"words": ["cat"]}, r"words \['cat'\] are not in the prompt 'a dog runs'"),
    ({"words": ["do"]}, r"words \['do'\] are not in the prompt"),  # whole words only
    ({"questions": []}, "'questions' must not be empty"),
    ({"image": "missing.png"}, "reference image not found: .*missing.png"),
    ({"id": "a/b"}, "id 'a/b' must be letters"),
    ({"colour": "red"}, r"unknown keys \['colour'\]"),
])
def test_bad_items_are_refused_with_the_line_and_what_is_accepted(tmp_path, change, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_suite(_write(tmp_path, {**GOOD, **change}))


def test_missing_keys_bad_json_duplicate_ids_and_custom_categories(tmp_path):
    missing = {k: v for k, v in GOOD.items() if k != "words"}
    with pytest.raises(ValueError, match=r"line 1: missing \['words'\]"):
        load_suite(_write(tmp_path, missing))
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_suite(_write(tmp_path, GOOD, "{oops"))
    with pytest.raises(ValueError, match="line 2: id 'x' is already used on line 1"):
        load_suite(_write(tmp_path, {**GOOD, "id": "x"}, {**GOOD, "id": "x"}))
    with pytest.raises(FileNotFoundError, match="no suite file"):
        load_suite(tmp_path / "none.jsonl")
    custom = load_suite(_write(tmp_path, {**GOOD, "category": "Dance"}), categories=[*CATEGORIES, "dance"])
    assert custom.categories == ("dance",)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no items"):
        load_suite(tmp_path / "empty.jsonl")


def test_select_by_ids_and_categories(suite):
    assert [i.id for i in suite.select(ids=["man-waves", "camera-zooms-in"])] == ["man-waves", "camera-zooms-in"]
    assert set(suite.select(categories=["human motion"]).categories) == {"human_motion"}
    with pytest.raises(KeyError, match="no items"):
        suite.select(ids=["nope"])


def test_write_builtin_suite_writes_relative_paths(tmp_path):
    path = write_builtin_suite(tmp_path, width=96, height=64)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(not os.path.isabs(line["image"]) and (tmp_path / line["image"]).is_file() for line in lines)
