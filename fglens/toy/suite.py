"""Items of the toy world: a scene, an instruction, and the split they belong to.

Sampling is deterministic for a seed. The test split holds out what training never sees: positions of the
named object in some cells of the frame, a band of sizes, and some (colour, action) combinations. A train
item has none of those; a test item has at least one (`Item.held_out` says which).

Example:
    >>> items = suite("test", n=10, seed=0)
    >>> [it.category for it in items[:5]]
    ['object_motion', 'dynamic_attribute', 'camera_motion', 'interaction', 'static']
    >>> all(it.held_out for it in items), any(suite("train", n=10, seed=0)[i].held_out for i in range(10))
    (True, False)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
from PIL import Image

from .world import (
    CATEGORIES,
    COLOURS,
    DIRECTIONS,
    FRAMES,
    GROW,
    SHAPES,
    SIZE,
    TRAVEL,
    ZOOM_IN,
    Background,
    Instruction,
    Obj,
    Scene,
    approach_end,
    coverage,
    prompt,
    render,
    words,
)

SPLITS = ("train", "test")
SIZE_RANGE = (4.5, 9.5)  #: object half-extents drawn from this range ...
HELD_OUT_SIZES = (6.5, 7.5)  #: ... except this band, which only the test split uses
HELD_OUT_CELLS = frozenset({(1, 1), (2, 2), (0, 3), (3, 0)})  #: 16-pixel cells for the named object's start
_COMBO_KEYS = ("move-left", "move-right", "move-up", "move-down", "recolour", "grow", "shrink", "approach",
               "swap", "still")


@dataclass(frozen=True)
class Item:
    """One instruction in the toy world, with its exact ground truth.

    `image` is the reference frame (PIL), `prompt` the instruction, `words` its key words (the objects it
    names), `video()` the true clip (uint8 [frames, H, W, 3]), `masks()` the named objects' pixels in the
    reference frame (`video_masks()`: in every frame), `held_out` which held-out properties a test item has.
    """

    id: str
    split: str
    scene: Scene
    instruction: Instruction

    @property
    def prompt(self) -> str:
        return prompt(self.scene, self.instruction)

    @property
    def words(self) -> list[str]:
        return words(self.scene, self.instruction)

    @property
    def category(self) -> str:
        return self.instruction.category

    @cached_property
    def _video(self) -> np.ndarray:
        v = render(self.scene, self.instruction)
        v.setflags(write=False)
        return v

    def video(self) -> np.ndarray:
        """The exact ground-truth video, uint8 [frames, H, W, 3] (read-only)."""
        return self._video

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self._video[0])

    @cached_property
    def _coverage(self) -> np.ndarray:
        c = coverage(self.scene, self.instruction)
        c.setflags(write=False)
        return c

    def coverage(self) -> np.ndarray:
        """Per-frame, per-object coverage in [0, 1], [frames, objects, H, W] (read-only)."""
        return self._coverage

    def masks(self) -> dict[str, np.ndarray]:
        """Each named object's pixels (bool H×W) in the reference frame, keyed by its word."""
        cover = coverage(self.scene, self.instruction, frames=1)[0]
        named = [i for i in (self.instruction.target, self.instruction.other) if i is not None]
        return {self.scene.objects[i].name: cover[i] >= 0.5 for i in named}

    def video_masks(self) -> dict[str, np.ndarray]:
        """Each named object's pixels (bool [frames, H, W]) in every frame of the true video, keyed by its word: where
        the object is as it moves, grows or is covered (visible coverage >= 0.5, as `masks`)."""
        cover = self._coverage
        named = [i for i in (self.instruction.target, self.instruction.other) if i is not None]
        return {self.scene.objects[i].name: cover[:, i] >= 0.5 for i in named}

    @property
    def held_out(self) -> tuple[str, ...]:
        return held_out(self.scene, self.instruction)

    def to_dict(self) -> dict:
        return {"id": self.id, "split": self.split, "prompt": self.prompt, "category": self.category,
                "words": self.words, "scene": asdict(self.scene), "instruction": asdict(self.instruction)}

    @classmethod
    def from_dict(cls, d: dict) -> Item:
        sc = d["scene"]
        scene = Scene(Background(**{**sc["background"], "colour": tuple(sc["background"]["colour"])}),
                      tuple(Obj(o["shape"], o["colour"], o["size"], tuple(o["pos"])) for o in sc["objects"]))
        return cls(d["id"], d["split"], scene, Instruction(**d["instruction"]))


def _combo_key(ins: Instruction) -> str | None:
    if ins.kind in ("pan", "zoom"):
        return None
    return f"{ins.kind}-{ins.direction}" if ins.kind == "move" else ins.kind


def held_out(scene: Scene, ins: Instruction) -> tuple[str, ...]:
    """The held-out properties of an item: "position", "size" and/or "combination"."""
    subject = scene.objects[ins.target if ins.target is not None else 0]
    out = []
    cell = (int(subject.pos[0]) // 16, int(subject.pos[1]) // 16)
    if cell in HELD_OUT_CELLS:
        out.append("position")
    if HELD_OUT_SIZES[0] < subject.size < HELD_OUT_SIZES[1]:
        out.append("size")
    key = _combo_key(ins)
    if key is not None:
        ci, ki = list(COLOURS).index(subject.colour), _COMBO_KEYS.index(key)
        if (7 * ci + 3 * ki) % 5 == 0:
            out.append("combination")
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------------------


BACKGROUND_CLEARANCE = 110.0  #: least RGB distance from any background shade to any object colour


def _background(rng: np.random.Generator) -> Background:
    """A dark, unsaturated background whose every shade stays `BACKGROUND_CLEARANCE` from the palette."""
    palette = np.array(list(COLOURS.values()), np.float64)
    while True:
        pattern = str(rng.choice(["plain", "stripes", "checker", "waves"]))
        colour = tuple(int(c) for c in rng.integers(20, 100, size=3))
        amplitude = 0.0 if pattern == "plain" else float(rng.uniform(8, 18))
        shades = np.array(colour, np.float64)[None] + np.array([[-amplitude], [amplitude]])
        if np.linalg.norm(shades[:, None] - palette[None], axis=-1).min() >= BACKGROUND_CLEARANCE:
            return Background(pattern, colour, amplitude=amplitude, period=float(rng.uniform(6, 14)),
                              angle=float(rng.uniform(0, np.pi)))


def _size(rng: np.random.Generator) -> float:
    return float(rng.uniform(*SIZE_RANGE))


def _inside(pos, size: float, margin: float = 1.5) -> bool:
    return all(size + margin <= c <= SIZE - size - margin for c in pos)


def _seg_dist(p, a, b) -> float:
    p, a, b = (np.asarray(v, np.float64) for v in (p, a, b))
    ab = b - a
    t = 0.0 if not ab.any() else float(np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0, 1))
    return float(np.linalg.norm(p - (a + t * ab)))


def _valid(scene: Scene, ins: Instruction) -> bool:
    objs = scene.objects
    for i, a in enumerate(objs):  # apart at the start
        if not _inside(a.pos, a.size):
            return False
        for b in objs[i + 1:]:
            if np.hypot(a.pos[0] - b.pos[0], a.pos[1] - b.pos[1]) < 1.3 * (a.size + b.size) + 3:
                return False
    t, k = ins.target, ins.kind
    if k == "approach" and np.hypot(*np.subtract(objs[t].pos, objs[ins.other].pos)) < (
            objs[t].size + objs[ins.other].size + 1 + 10):
        return False  # too close already: the approach must be visible
    if k in ("move", "approach", "swap"):
        ends = {t: approach_end(scene, ins) if k == "approach" else None}
        if k == "move":
            dx, dy = DIRECTIONS[ins.direction]
            ends[t] = (objs[t].pos[0] + TRAVEL * dx, objs[t].pos[1] + TRAVEL * dy)
        if k == "swap":
            ends = {t: objs[ins.other].pos, ins.other: objs[t].pos}
        for i, end in ends.items():
            if not _inside(end, objs[i].size):
                return False
            for j, b in enumerate(objs):  # the path keeps clear of the bystanders
                if j in ends or (k == "approach" and j == ins.other):
                    continue
                if _seg_dist(b.pos, objs[i].pos, end) < 1.3 * (objs[i].size + b.size) + 2:
                    return False
    if k == "grow" and not _inside(objs[t].pos, objs[t].size * GROW):
        return False
    if k == "grow":
        for j, b in enumerate(objs):
            if j != t and np.hypot(*np.subtract(b.pos, objs[t].pos)) < 1.3 * (GROW * objs[t].size + b.size) + 2:
                return False
    if k == "pan":
        dx, dy = DIRECTIONS[ins.direction]
        if not all(_inside((o.pos[0] - TRAVEL * dx, o.pos[1] - TRAVEL * dy), o.size) for o in objs):
            return False
    if k == "zoom" and ins.direction == "in":
        c = SIZE / 2
        if not all(_inside((c + (o.pos[0] - c) * ZOOM_IN, c + (o.pos[1] - c) * ZOOM_IN), o.size * ZOOM_IN)
                   for o in objs):
            return False
    return True


def _instruction(rng: np.random.Generator, category: str, scene: Scene) -> Instruction | None:
    n = len(scene.objects)
    kind = str(rng.choice(CATEGORIES[category]))
    t = int(rng.integers(n))
    if kind == "move":
        return Instruction("move", target=t, direction=str(rng.choice(list(DIRECTIONS))))
    if kind == "recolour":
        free = [c for c in COLOURS if c not in {o.colour for o in scene.objects}]
        return Instruction("recolour", target=t, colour=str(rng.choice(free))) if free else None
    if kind in ("grow", "shrink", "still"):
        return Instruction(kind, target=t)
    if kind == "pan":
        return Instruction("pan", direction=str(rng.choice(list(DIRECTIONS))))
    if kind == "zoom":
        return Instruction("zoom", direction=str(rng.choice(["in", "out"])))
    if n < 2:
        return None
    other = int(rng.choice([i for i in range(n) if i != t]))
    return Instruction(kind, target=t, other=other)


def sample(rng: np.random.Generator, category: str, split: str, tries: int = 10_000) -> tuple[Scene, Instruction]:
    """One valid (scene, instruction) of `category` belonging to `split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")
    for _ in range(tries):
        n = int(rng.integers(2 if category == "interaction" else 1, 4))
        colours = rng.choice(list(COLOURS), size=n, replace=False)
        objs = tuple(Obj(str(rng.choice(SHAPES)), str(c), _size(rng),
                         (float(rng.uniform(6, SIZE - 6)), float(rng.uniform(6, SIZE - 6)))) for c in colours)
        scene = Scene(_background(rng), objs)
        ins = _instruction(rng, category, scene)
        if ins is None or not _valid(scene, ins):
            continue
        if bool(held_out(scene, ins)) == (split == "test"):
            return scene, ins
    raise RuntimeError(f"could not sample a valid {split} item of {category} in {tries} tries")


def suite(split: str = "test", n: int = 40, seed: int = 0, categories: tuple[str, ...] | None = None) -> list[Item]:
    """`n` items of `split`, categories in turn (object motion, dynamic attribute, camera, interaction,
    static), deterministic for `seed`; train and test never share an item."""
    cats = tuple(categories or CATEGORIES)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    digest = hashlib.sha256(f"fglens-toy/{split}/{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    out = []
    for i in range(n):
        scene, ins = sample(rng, cats[i % len(cats)], split)
        out.append(Item(f"{split}-{seed}-{i:04d}", split, scene, ins))
    return out


def save_items(items: list[Item], path) -> None:
    """Write items as JSON lines (scene and instruction in full: `load_items` rebuilds them exactly)."""
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it.to_dict()) + "\n")


def load_items(path) -> list[Item]:
    """The items `save_items` wrote (one JSON object per line)."""
    from ..jsonl import read_jsonl

    return [Item.from_dict(value) for value in read_jsonl(path)]


__all__ = ["FRAMES", "SIZE", "Item", "held_out", "load_items", "sample", "save_items", "suite"]
