"""The toy world as an `fglens eval` suite, with the pixel scorer as an eval scorer.

`write_eval_suite` writes the items' reference images, an eval ``suite.jsonl`` (with yes/no questions and the
end state as ``target``) and ``toy.jsonl`` (the items in full); `ToyScorer` scores an eval video by looking its
item up there. `load_eval_suite` loads the suite with the toy world's categories.

Example:
    >>> import tempfile
    >>> from fglens.toy import suite
    >>> folder = tempfile.mkdtemp()
    >>> items = suite("test", n=5, seed=0)
    >>> path = write_eval_suite(items, folder)
    >>> evsuite = load_eval_suite(path)
    >>> scorer = ToyScorer.from_suite(path)
    >>> first = next(iter(evsuite))
    >>> scorer.score(items[0].video(), first), first.questions[0]
    (1.0, 'Does the blue square move down?')
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .score import score
from .suite import Item, load_items, save_items
from .world import CATEGORIES

_QUESTIONS = {
    "move": "Does the {a} move {d}?",
    "recolour": "Does the {a} turn {c}?",
    "grow": "Does the {a} grow?",
    "shrink": "Does the {a} shrink?",
    "pan": "Does the camera pan {d}?",
    "zoom": "Does the camera zoom {d}?",
    "approach": "Does the {a} move to the {b}?",
    "swap": "Do the {a} and the {b} swap places?",
    "still": "Does the {a} stay still?",
}


def _eval_line(item: Item, image: str) -> dict:
    ins, objs = item.instruction, item.scene.objects
    a = objs[ins.target].name if ins.target is not None else ""
    b = objs[ins.other].name if ins.other is not None else ""
    question = _QUESTIONS[ins.kind].format(a=a, b=b, d=ins.direction, c=ins.colour)
    line = {"id": item.id, "image": image, "prompt": item.prompt, "category": item.category,
            "words": item.words, "questions": [question],
            "anchor_words": [w for w in item.words if w in item.masks()]}  # the objects; not the camera's verb
    if ins.kind == "recolour":
        line["target"] = [f"{ins.colour} {objs[ins.target].shape}"]
    return line


def write_eval_suite(items: list[Item], folder: str | os.PathLike) -> Path:
    """Write ``suite.jsonl`` (eval format), ``toy.jsonl`` and ``images/``; returns the suite file's path."""
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for item in items:
        rel = f"images/{item.id}.png"
        item.image.save(root / rel)
        lines.append(json.dumps(_eval_line(item, rel)))
    (root / "suite.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    save_items(items, root / "toy.jsonl")
    return root / "suite.jsonl"


def load_eval_suite(path: str | os.PathLike):
    """The eval `Suite` of a written toy suite (the toy world's categories accepted)."""
    from ..eval.suite import load_suite

    return load_suite(path, categories=tuple(CATEGORIES))


class ToyScorer:
    """An `fglens eval` scorer: `fg.toy.score`'s ``follows`` (or another of its numbers) from the pixels."""

    def __init__(self, items: list[Item], metric: str = "follows") -> None:
        if metric not in ("follows", "fidelity", "first_frame"):
            raise ValueError(f"metric must be 'follows', 'fidelity' or 'first_frame'; got {metric!r}")
        self.items = {it.id: it for it in items}
        self.metric = metric
        self.name = f"toy_{metric}"
        self.spec: dict[str, Any] = {"metric": metric, "items": len(self.items)}

    @classmethod
    def from_suite(cls, suite_file: str | os.PathLike, metric: str = "follows") -> ToyScorer:
        """The scorer of a suite written by `write_eval_suite` (reads the ``toy.jsonl`` beside it)."""
        return cls(load_items(Path(suite_file).parent / "toy.jsonl"), metric)

    def score(self, video: np.ndarray, item) -> float:
        if item.id not in self.items:
            raise KeyError(f"item {item.id!r} is not a toy item of this scorer's suite")
        return float(score(video, self.items[item.id])[self.metric])
