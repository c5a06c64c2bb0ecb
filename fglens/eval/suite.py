"""Evaluation suites: the JSONL format, loading with checks, and the built-in synthetic suite.

A suite is a JSON Lines file, one item per line. Paths are relative to the file's folder (or absolute):

.. code-block:: json

    {"id": "red-ball-turns-blue", "image": "images/red_ball.png", "prompt": "the red ball turns blue",
     "category": "dynamic_attribute", "words": ["ball", "blue"], "target": ["blue ball"], "subject": "ball",
     "questions": ["Does the ball turn blue?", "Is the ball blue at the end of the video?"]}

=============  =========  ===================================================================================
key            required   meaning
=============  =========  ===================================================================================
``image``      yes        the reference image (png/jpg/... that PIL reads)
``prompt``     yes        the instruction the video must follow
``category``   yes        one of `CATEGORIES` or `EXTRA_CATEGORIES` (spaces and ``-`` read as ``_``), or one
                          passed to `load_suite`
``words``      yes        the instruction's words; each must occur in the prompt as whole words (they are
                          recorded with `fg.Record` and handed to interventions' anchors)
``questions``  yes        yes/no questions a correct video answers "yes" (the VLM judge asks them)
``id``         no         a unique name (letters, digits, ``.``, ``_``, ``-``); default ``item-<line>``
``target``     no         text(s) describing the end state; the alignment-change scorer needs it
``subject``    no         the word CLIP locates for subject / background consistency (default: first word)
``anchor_``    no         ``anchor_words``: the words an intervention's anchor takes (a subset of ``words``,
``words``                 possibly empty: the nouns in the reference image); default: those CLIP sees in the
                          image (a recipe's ``anchor_words`` rule, see `fglens.interventions.recipe`)
=============  =========  ===================================================================================

Blank lines are skipped. Every error names the file, the line and what is accepted.

Example:
    >>> import tempfile
    >>> from fglens.eval.suite import load_suite, write_builtin_suite
    >>> suite = load_suite(write_builtin_suite(tempfile.mkdtemp(), width=48, height=32))
    >>> len(suite), sorted(set(suite.categories))[:2]
    (10, ['camera_motion', 'dynamic_attribute'])
    >>> suite["red-ball-turns-blue"].words
    ('ball', 'blue')
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ..jsonl import jsonl_lines

#: the categories of instruction the built-in suite covers (the paper's, plus object and camera motion)
CATEGORIES: tuple[str, ...] = (
    "dynamic_attribute", "human_motion", "human_interaction", "object_motion", "camera_motion",
)
#: further categories a suite may use without naming them: VBench-2.0's dimensions (`fglens.eval.vbench2`)
EXTRA_CATEGORIES: tuple[str, ...] = ("motion_order", "spatial_relationship", "complex_plot")

_REQUIRED = ("image", "prompt", "category", "words", "questions")
_OPTIONAL = ("id", "target", "subject", "anchor_words")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Item:
    """One instruction: a reference image, a prompt, its category, its words and yes/no questions."""

    id: str
    image: Path
    prompt: str
    category: str
    words: tuple[str, ...]
    questions: tuple[str, ...]
    target: tuple[str, ...] | None = None
    subject: str | None = None
    #: the words an anchor takes (a subset of `words`), or None: the recipe's rule decides
    anchor_words: tuple[str, ...] | None = None

    def load_image(self) -> Image.Image:
        """The reference image as RGB."""
        with Image.open(self.image) as im:
            return im.convert("RGB")

    @property
    def subject_word(self) -> str:
        """The word CLIP locates as the subject: `subject`, else the first of `words`."""
        return self.subject or self.words[0]

    def to_json(self, root: Path | None = None) -> dict:
        """The item as a JSON line's object; the image path relative to `root` when it lies below it."""
        image = self.image
        if root is not None:
            try:
                image = image.relative_to(root)
            except ValueError:
                pass
        out = {"id": self.id, "image": image.as_posix(), "prompt": self.prompt, "category": self.category,
               "words": list(self.words), "questions": list(self.questions)}
        if self.target is not None:
            out["target"] = list(self.target)
        if self.subject is not None:
            out["subject"] = self.subject
        if self.anchor_words is not None:
            out["anchor_words"] = list(self.anchor_words)
        return out


@dataclass(frozen=True)
class Suite:
    """Items in file order; ``suite["id"]`` gets one, ``len(suite)`` counts them."""

    items: tuple[Item, ...]
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, item_id: str) -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise KeyError(f"no item {item_id!r} in the suite; items: {[i.id for i in self.items]}")

    @property
    def categories(self) -> tuple[str, ...]:
        """The category of each item, in order."""
        return tuple(item.category for item in self.items)

    def select(self, ids: Sequence[str] | None = None, categories: Sequence[str] | None = None) -> Suite:
        """The items with one of `ids` and one of `categories` (None: no filter), in suite order.

        Example:
            >>> import tempfile
            >>> suite = builtin_suite(tempfile.mkdtemp(), width=48, height=32)
            >>> [i.id for i in suite.select(categories=["camera_motion"])]
            ['camera-pans-left', 'camera-zooms-in']
        """
        if ids is not None:
            unknown = sorted(set(ids) - {i.id for i in self.items})
            if unknown:
                raise KeyError(f"no items {unknown} in the suite; items: {[i.id for i in self.items]}")
        if categories is not None:
            wanted = {_category(c) for c in categories}
            unknown = sorted(wanted - set(self.categories))
            if unknown:
                raise KeyError(f"no items of categories {unknown}; the suite has {sorted(set(self.categories))}")
        chosen = tuple(i for i in self.items if (ids is None or i.id in ids)
                       and (categories is None or i.category in wanted))
        return Suite(chosen, self.path)


def _category(value: str) -> str:
    return re.sub(r"[\s-]+", "_", str(value).strip().lower())


def _strings(value: object, key: str, where: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: {key!r} must be a list of non-empty strings; got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{where}: {key!r} must not be empty")
    return tuple(v.strip() for v in value)


def _in_prompt(word: str, prompt: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", prompt, re.IGNORECASE) is not None


def parse_item(obj: object, *, root: Path, line: int, categories: Sequence[str] = CATEGORIES,
               where: str = "") -> Item:
    """Check one JSON object of a suite and return its `Item` (paths resolved against `root`)."""
    where = where or f"line {line}"
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: an item is a JSON object; got {type(obj).__name__}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing {missing}; an item needs {list(_REQUIRED)} (optional: {list(_OPTIONAL)})")
    unknown = sorted(set(obj) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; accepted: {list(_REQUIRED + _OPTIONAL)}")
    item_id = str(obj.get("id", f"item-{line}"))
    if not _ID.match(item_id):
        raise ValueError(f"{where}: id {item_id!r} must be letters, digits, '.', '_' or '-' (it names files)")
    prompt = obj["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: 'prompt' must be a non-empty string")
    category = _category(obj["category"])
    if category not in categories:
        raise ValueError(f"{where}: unknown category {obj['category']!r}; accepted: {list(categories)}")
    words = _strings(obj["words"], "words", where)
    absent = [w for w in words if not _in_prompt(w, prompt)]
    if absent:
        raise ValueError(f"{where}: words {absent} are not in the prompt {prompt!r} (each must occur as whole words)")
    if len(set(words)) != len(words):
        raise ValueError(f"{where}: duplicate words in {list(words)}")
    questions = _strings(obj["questions"], "questions", where)
    target = _strings(obj["target"], "target", where) if obj.get("target") is not None else None
    subject = obj.get("subject")
    if subject is not None and (not isinstance(subject, str) or not subject.strip()):
        raise ValueError(f"{where}: 'subject' must be a non-empty string")
    anchor_words = None
    if obj.get("anchor_words") is not None:
        anchor_words = _word_subset(obj["anchor_words"], words, where)
    if not isinstance(obj["image"], str) or not obj["image"].strip():
        raise ValueError(f"{where}: 'image' must be a path (relative to the suite file's folder, or absolute)")
    image = Path(obj["image"]).expanduser()
    image = image if image.is_absolute() else (root / image)
    if not image.is_file():
        raise FileNotFoundError(f"{where}: reference image not found: {image} (relative paths start at {root})")
    try:
        with Image.open(image) as im:
            im.verify()
    except OSError as exc:
        raise ValueError(f"{where}: {image} is not an image PIL can read: {exc}") from exc
    return Item(item_id, image.resolve(), prompt.strip(), category, words, questions, target,
                subject.strip() if subject else None, anchor_words)


def _word_subset(value: object, words: Sequence[str], where: str) -> tuple[str, ...]:
    """An ``anchor_words`` list: strings among `words` (possibly none of them)."""
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise ValueError(f"{where}: 'anchor_words' must be a list of the item's words (possibly empty); got {value!r}")
    unknown = [w for w in value if w not in words]
    if unknown:
        raise ValueError(f"{where}: anchor_words {unknown} are not among the item's words {list(words)}")
    return tuple(value)


def load_suite(path: str | os.PathLike, *, categories: Sequence[str] | None = None) -> Suite:
    """Read and check a JSONL suite; image paths are resolved against the file's folder.

    Args:
        path: the ``.jsonl`` file.
        categories: the accepted categories (default `CATEGORIES` and `EXTRA_CATEGORIES`); pass your own list
            to accept others.

    Raises:
        FileNotFoundError: no such suite file, or an item's image is missing.
        ValueError: a line that is not JSON, a missing or unknown key, an unknown category, a word that is not
            in its prompt, duplicate ids, an empty suite. The message names the file and the line.

    Example:
        >>> import pathlib, tempfile
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "bad.jsonl"
        >>> _ = p.write_text('{"image": "x.png", "prompt": "a dog", "category": "dance", "words": ["dog"], '
        ...                  '"questions": ["Is there a dog?"]}\\n')
        >>> load_suite(p)
        Traceback (most recent call last):
        ...
        ValueError: .../bad.jsonl line 1: unknown category 'dance'; accepted: ['dynamic_attribute', ...]
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no suite file at {file}: a suite is a .jsonl file, one item per line")
    accepted = tuple(_category(c) for c in (categories if categories is not None
                                            else (*CATEGORIES, *EXTRA_CATEGORIES)))
    items: list[Item] = []
    seen: dict[str, int] = {}
    for line_no, where, obj in jsonl_lines(file):
        if isinstance(obj, ValueError):
            raise obj
        item = parse_item(obj, root=file.parent.resolve(), line=line_no, categories=accepted, where=where)
        if item.id in seen:
            raise ValueError(f"{where}: id {item.id!r} is already used on line {seen[item.id]}")
        seen[item.id] = line_no
        items.append(item)
    if not items:
        raise ValueError(f"{file} holds no items")
    return Suite(tuple(items), file.resolve())


def save_suite(suite: Suite | Sequence[Item], path: str | os.PathLike) -> Path:
    """Write items as a JSONL suite; image paths are written relative to the file's folder when below it."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    root = file.parent.resolve()
    lines = [json.dumps(item.to_json(root)) for item in suite]
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return file


# --------------------------------------------------------------------------------------------------------------
# the built-in synthetic suite
# --------------------------------------------------------------------------------------------------------------


def _scene(width: int, height: int, sky: tuple[int, int, int], ground: tuple[int, int, int], horizon: float = 0.65):
    image = Image.new("RGB", (width, height), sky)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, int(horizon * height), width, height], fill=ground)
    return image, draw


def _figure(draw: ImageDraw.ImageDraw, x: float, width: int, height: int, colour, dress: bool = False) -> None:
    """A stick figure standing at horizontal position `x` (fraction of the width)."""
    cx, s = x * width, height / 64
    line = max(1, round(3 * s))
    head = 5 * s
    draw.ellipse([cx - head, 10 * s, cx + head, 10 * s + 2 * head], fill=colour)
    draw.line([cx, 20 * s, cx, 38 * s], fill=colour, width=line)
    draw.line([cx - 9 * s, 26 * s, cx + 9 * s, 26 * s], fill=colour, width=line)
    if dress:
        draw.polygon([(cx, 26 * s), (cx - 8 * s, 44 * s), (cx + 8 * s, 44 * s)], fill=colour)
    draw.line([cx, 38 * s, cx - 6 * s, 54 * s], fill=colour, width=line)
    draw.line([cx, 38 * s, cx + 6 * s, 54 * s], fill=colour, width=line)


def _red_ball(width: int, height: int) -> Image.Image:
    image, draw = _scene(width, height, (170, 190, 210), (120, 110, 90))
    r = 0.16 * height
    cx, cy = 0.45 * width, 0.65 * height - r
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(220, 30, 30))
    return image


def _green_tree(width: int, height: int) -> Image.Image:
    image, draw = _scene(width, height, (160, 200, 230), (90, 150, 70), horizon=0.75)
    cx = 0.5 * width
    draw.rectangle([cx - 0.04 * width, 0.45 * height, cx + 0.04 * width, 0.8 * height], fill=(100, 70, 40))
    r = 0.25 * height
    draw.ellipse([cx - r, 0.4 * height - r, cx + r, 0.4 * height + r], fill=(40, 150, 50))
    return image


def _one_figure(width: int, height: int) -> Image.Image:
    image, draw = _scene(width, height, (200, 205, 215), (150, 140, 120), horizon=0.8)
    _figure(draw, 0.55, width, height, (40, 40, 60))
    return image


def _woman(width: int, height: int) -> Image.Image:
    image, draw = _scene(width, height, (200, 205, 215), (150, 140, 120), horizon=0.8)
    _figure(draw, 0.6, width, height, (150, 40, 90), dress=True)
    return image


def _two_figures(width: int, height: int) -> Image.Image:
    image, draw = _scene(width, height, (205, 200, 190), (140, 130, 110), horizon=0.8)
    _figure(draw, 0.25, width, height, (40, 40, 60))
    _figure(draw, 0.75, width, height, (150, 40, 90), dress=True)
    return image


def _car_on_road(width: int, height: int) -> Image.Image:
    image, draw = _scene(width, height, (170, 200, 230), (90, 140, 70), horizon=0.55)
    draw.rectangle([0, 0.7 * height, width, 0.95 * height], fill=(80, 80, 85))
    x0, x1, y0, y1 = 0.55 * width, 0.8 * width, 0.6 * height, 0.82 * height
    draw.rectangle([x0, y0, x1, y1], fill=(30, 60, 200))
    r = 0.06 * height
    for cx in (x0 + 0.2 * (x1 - x0), x1 - 0.2 * (x1 - x0)):
        draw.ellipse([cx - r, y1 - r, cx + r, y1 + r], fill=(20, 20, 20))
    return image


def _house(width: int, height: int) -> Image.Image:
    image, draw = _scene(width, height, (150, 190, 230), (100, 160, 80), horizon=0.75)
    x0, x1, y0, y1 = 0.35 * width, 0.65 * width, 0.45 * height, 0.8 * height
    draw.rectangle([x0, y0, x1, y1], fill=(230, 220, 200))
    draw.polygon([(x0 - 0.03 * width, y0), (x1 + 0.03 * width, y0), ((x0 + x1) / 2, 0.2 * height)],
                 fill=(160, 50, 40))
    draw.rectangle([0.47 * width, 0.62 * height, 0.53 * width, y1], fill=(90, 60, 40))
    return image


#: drawings of the built-in suite: name -> function(width, height) -> PIL image
IMAGES: dict[str, Callable[[int, int], Image.Image]] = {
    "red_ball": _red_ball, "green_tree": _green_tree, "man": _one_figure, "woman": _woman,
    "two_figures": _two_figures, "car_on_road": _car_on_road, "house": _house,
}

# Prompts use only words the tiny pipelines' tokenizers know as whole pieces (fglens.testing._WORDS).
BUILTIN_ITEMS: tuple[dict, ...] = (
    {"id": "red-ball-turns-blue", "image": "red_ball", "category": "dynamic_attribute",
     "prompt": "the red ball turns blue", "words": ["ball", "blue"], "target": ["blue ball"], "subject": "ball",
     "questions": ["Does the ball turn blue?", "Is the ball blue at the end of the video?"]},
    {"id": "tree-turns-yellow", "image": "green_tree", "category": "dynamic_attribute",
     "prompt": "the green tree turns yellow", "words": ["tree", "yellow"], "target": ["yellow tree"],
     "subject": "tree", "questions": ["Do the leaves of the tree turn yellow?"]},
    {"id": "man-waves", "image": "man", "category": "human_motion", "prompt": "a man waves",
     "words": ["man", "waves"], "subject": "man", "questions": ["Does the man wave his hand?"]},
    {"id": "woman-walks-left", "image": "woman", "category": "human_motion", "prompt": "a woman walks left",
     "words": ["woman", "walks", "left"], "subject": "woman",
     "questions": ["Does the woman walk?", "Does the woman move to the left?"]},
    {"id": "man-walks-toward-woman", "image": "two_figures", "category": "human_interaction",
     "prompt": "a man walks toward the woman", "words": ["man", "walks", "toward", "woman"], "subject": "man",
     "questions": ["Does the man walk toward the woman?", "Does the distance between the two people shrink?"]},
    {"id": "man-dances-with-woman", "image": "two_figures", "category": "human_interaction",
     "prompt": "the man dances with the woman", "words": ["man", "dances", "woman"], "subject": "man",
     "questions": ["Are the man and the woman dancing together?"]},
    {"id": "ball-rolls-right", "image": "red_ball", "category": "object_motion",
     "prompt": "the red ball rolls right", "words": ["ball", "rolls", "right"], "subject": "ball",
     "questions": ["Does the ball roll to the right?"]},
    {"id": "car-drives-left", "image": "car_on_road", "category": "object_motion",
     "prompt": "a car drives left on the road", "words": ["car", "drives", "left"], "subject": "car",
     "questions": ["Does the car drive to the left?"]},
    {"id": "camera-pans-left", "image": "house", "category": "camera_motion",
     "prompt": "the camera pans left over the house", "words": ["camera", "pans", "left", "house"],
     "subject": "house", "questions": ["Does the camera pan to the left?",
                                       "Does the house move to the right in the picture?"]},
    {"id": "camera-zooms-in", "image": "green_tree", "category": "camera_motion",
     "prompt": "the camera zooms in on the tree", "words": ["camera", "zooms", "tree"], "subject": "tree",
     "questions": ["Does the camera zoom in?", "Does the tree get bigger in the picture?"]},
)


def write_builtin_suite(folder: str | os.PathLike, *, width: int = 96, height: int = 64) -> Path:
    """Draw the built-in suite's reference images at ``width`` x ``height`` into ``folder/images/`` and write
    ``folder/suite.jsonl``; returns the suite file's path.

    Ten items, two per category of `CATEGORIES`: simple drawings (a red ball, a tree, one or two stick
    figures, a car on a road, a house). Draw them at the video's size (or its aspect ratio), since pipelines
    refuse a reference image whose aspect ratio differs from the video's. Existing files are overwritten.
    """
    if width < 8 or height < 8:
        raise ValueError(f"the built-in images need at least 8x8 pixels; got {width}x{height}")
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, draw in IMAGES.items():
        draw(int(width), int(height)).save(root / "images" / f"{name}.png")
    lines = [json.dumps({**spec, "image": f"images/{spec['image']}.png"}) for spec in BUILTIN_ITEMS]
    path = root / "suite.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def builtin_suite(folder: str | os.PathLike, *, width: int = 96, height: int = 64) -> Suite:
    """`write_builtin_suite` then `load_suite`: the built-in suite, ready to run."""
    return load_suite(write_builtin_suite(folder, width=width, height=height))
