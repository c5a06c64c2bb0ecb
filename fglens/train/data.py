"""What a training job reads: items of (reference image, prompt), optionally with a video and masks.

`items` takes an evaluation suite (``suite.jsonl``, `fglens.eval.load_suite`; images and prompts, no videos), a toy
world items file (``toy.jsonl``, `fg.toy.save_items`; videos and masks rendered from each item's scene), or items
that carry their own ground-truth video and masks (the toy world's `fg.toy.suite(...)`): the distillation loss needs
images and prompts only, the flow-matching loss needs videos too, the anchor loss videos and masks.

A mask is a pixel mask of where a word's object is: boolean or in [0, 1], ``[H, W]`` (the reference image's, the same
in every frame) or ``[F, H, W]`` (one per frame of the item's video), at the video's size.

Example:
    >>> import tempfile
    >>> from fglens.eval import builtin_suite
    >>> data = items(builtin_suite(tempfile.mkdtemp(), width=48, height=32).path)
    >>> len(data), data[0].video is None, data[0].masks is None
    (10, True, True)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class TrainItem:
    """One training example: the reference image, the prompt, its words, its video (uint8 ``[F, H, W, 3]``) when the
    data has one, and its masks (``{word: [H, W] or [F, H, W] pixel mask}``, see the module) when the data has them.

    Example:
        >>> import numpy as np, fglens as fg
        >>> mask = np.zeros((32, 48), bool); mask[8:24, :24] = True
        >>> item = TrainItem("a", fg.testing.reference_image(), "a dog jumps", ("dog",), masks={"dog": mask})
        >>> sorted(item.masks)
        ['dog']
    """

    id: str
    image: Image.Image
    prompt: str
    words: tuple[str, ...] = ()
    video: np.ndarray | None = None
    masks: Mapping[str, np.ndarray] | None = None


def _masks_of(it: Any) -> dict[str, np.ndarray] | None:
    """An item's masks: per frame (``video_masks()``, the toy world's) when it has them, else ``masks`` (a method or a
    mapping); None when it has neither."""
    for name in ("video_masks", "masks"):
        value = getattr(it, name, None)
        if callable(value):
            value = value()
        if value is not None:
            return {str(k): np.asarray(v) for k, v in dict(value).items()}
    return None


def _is_toy_file(path: str | os.PathLike) -> bool:
    """Is `path` a toy world items file (`fg.toy.save_items`: one JSON object with a scene per line)?"""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and "scene" in first and "instruction" in first
    return False


def items(source: str | os.PathLike | Sequence[Any]) -> list[TrainItem]:
    """Training items from a suite file (``suite.jsonl``), a toy world items file (``toy.jsonl``), a loaded
    `fglens.eval.Suite`, or a sequence of items with ``image``, ``prompt`` and ``words`` attributes and optionally a
    ``video()`` method and ``video_masks()`` / ``masks()`` (the toy world's items). An empty source is an error.

    Example:
        >>> import fglens as fg
        >>> data = items(fg.toy.suite("train", n=2, seed=0))
        >>> data[0].video.shape, {w: m.shape for w, m in data[0].masks.items()}
        ((9, 64, 64, 3), {'blue triangle': (9, 64, 64)})
    """
    if isinstance(source, (str, os.PathLike)) and _is_toy_file(source):
        from ..toy.suite import load_items

        source = load_items(source)
    if isinstance(source, (str, os.PathLike)):
        from ..eval.suite import load_suite

        out = [TrainItem(i.id, i.load_image(), i.prompt, tuple(i.words)) for i in load_suite(source)]
    else:
        out = []
        for n, it in enumerate(source):
            if isinstance(it, TrainItem):
                out.append(it)
                continue
            missing = [a for a in ("image", "prompt") if not hasattr(it, a)]
            if missing:
                raise TypeError(f"training item {n} has no {missing}; give items with image and prompt (and "
                                "optionally words, video() and masks()), or a suite.jsonl path")
            video = it.video() if callable(getattr(it, "video", None)) else getattr(it, "video", None)
            image = it.load_image() if callable(getattr(it, "load_image", None)) else it.image  # a suite's Item
            out.append(TrainItem(str(getattr(it, "id", n)), image, it.prompt, tuple(getattr(it, "words", ())),
                                 None if video is None else np.asarray(video), _masks_of(it)))
    if not out:
        raise ValueError(f"no training items in {source!r}")
    return out


def digest(data: Sequence[TrainItem]) -> str:
    """A sha256 over the items' ids, prompts, images, videos and masks (the manifest's data digest)."""
    h = hashlib.sha256()
    for it in data:
        h.update(f"{it.id}\0{it.prompt}\0".encode())
        h.update(np.asarray(it.image.convert("RGB")).tobytes())
        if it.video is not None:
            h.update(np.ascontiguousarray(it.video).tobytes())
        for word, mask in sorted((it.masks or {}).items()):
            mask = np.asarray(mask)
            h.update(f"\0{word}\0{mask.dtype}{mask.shape}".encode())
            h.update(np.ascontiguousarray(mask).tobytes())
    return h.hexdigest()


__all__ = ["TrainItem", "digest", "items"]
