"""A trained toy image-to-video world with exact ground truth.

A tiny but real `WanImageToVideoPipeline` (Wan VAE, UMT5 text encoder, CLIP vision encoder, Wan DiT), trained
here on a procedural world of coloured shapes that move, change colour or size, swap places, or sit still
while the camera pans or zooms. It ships with the package in two variants: ``base`` and ``weak`` (Condition
Isolation planted in known layers). `score` judges a video from its pixels against the exact ground truth.
`clip` is a tiny open_clip model trained on the same world, for CLIP anchors (`fglens.toy.clip`).

Example:
    >>> import fglens as fg
    >>> item = fg.toy.suite(split="test", n=5, seed=0)[0]
    >>> item.prompt, item.words
    ('the blue square moves down', ['blue square'])
    >>> fg.toy.score(item.video(), item)["follows"]   # the ground truth follows its own instruction
    1.0
"""

import sys
import types
from typing import Any

from .evalsuite import ToyScorer, load_eval_suite, write_eval_suite
from .load import CALL, VARIANTS, info, pipeline, planted_layers, verify
from .score import score
from .suite import Item, load_items, save_items, suite
from .world import CATEGORIES, FRAMES, SIZE

__all__ = ["CALL", "CATEGORIES", "FRAMES", "SIZE", "VARIANTS", "Item", "ToyScorer", "clip", "info", "load_eval_suite",
           "load_items", "pipeline", "planted_layers", "save_items", "score", "suite", "verify", "write_eval_suite"]


def __getattr__(name: str) -> Any:
    if name == "clip":  # loaded on first use: it imports torch and open_clip, `import fglens.toy` does not
        from .clip import clip

        return clip
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """fglens.toy itself. Importing the submodule ``fglens.toy.clip`` makes Python set ``fglens.toy.clip`` to it;
    ``fg.toy.clip`` stays the loader function (as `fglens` does for ``fg.trace``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "clip" and isinstance(value, types.ModuleType) and hasattr(value, "clip"):
            value = value.clip
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
