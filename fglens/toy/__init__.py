"""A trained toy image-to-video world with exact ground truth.

A tiny but real `WanImageToVideoPipeline` (Wan VAE, UMT5 text encoder, CLIP vision encoder, Wan DiT), trained
here on a procedural world of coloured shapes that move, change colour or size, swap places, or sit still
while the camera pans or zooms. It ships with the package in two variants: ``base`` and ``weak`` (Condition
Isolation planted in known layers). `score` judges a video from its pixels against the exact ground truth.

Example:
    >>> import fglens as fg
    >>> item = fg.toy.suite(split="test", n=5, seed=0)[0]
    >>> item.prompt, item.words
    ('the blue square moves down', ['blue square'])
    >>> fg.toy.score(item.video(), item)["follows"]   # the ground truth follows its own instruction
    1.0
"""

from .evalsuite import ToyScorer, load_eval_suite, write_eval_suite
from .load import CALL, VARIANTS, info, pipeline, planted_layers, verify
from .score import score
from .suite import Item, load_items, save_items, suite
from .world import CATEGORIES, FRAMES, SIZE

__all__ = ["CALL", "CATEGORIES", "FRAMES", "SIZE", "VARIANTS", "Item", "ToyScorer", "info", "load_eval_suite",
           "load_items", "pipeline", "planted_layers", "save_items", "score", "suite", "verify", "write_eval_suite"]
