"""What a training job reads: items of (reference image, prompt), optionally with a video.

`items` takes an evaluation suite (``suite.jsonl``, `fglens.eval.load_suite`; images and prompts, no videos) or
items that carry their own ground-truth video (the toy world's `fg.toy.suite(...)`): the distillation loss needs
images and prompts only, the flow-matching loss needs videos too.

Example:
    >>> import tempfile
    >>> from fglens.eval import builtin_suite
    >>> data = items(builtin_suite(tempfile.mkdtemp(), width=48, height=32).path)
    >>> len(data), data[0].video is None
    (10, True)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class TrainItem:
    """One training example: the reference image, the prompt, its words, and its video (uint8 ``[F, H, W, 3]``)
    when the data has one."""

    id: str
    image: Image.Image
    prompt: str
    words: tuple[str, ...] = ()
    video: np.ndarray | None = None


def items(source: str | os.PathLike | Sequence[Any]) -> list[TrainItem]:
    """Training items from a suite file (``suite.jsonl``), a loaded `fglens.eval.Suite`, or a sequence of items with
    ``image``, ``prompt`` and ``words`` attributes and optionally a ``video()`` method (the toy world's items). An
    empty source is an error."""
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
                                "optionally words and video()), or a suite.jsonl path")
            video = it.video() if callable(getattr(it, "video", None)) else getattr(it, "video", None)
            image = it.load_image() if callable(getattr(it, "load_image", None)) else it.image  # a suite's Item
            out.append(TrainItem(str(getattr(it, "id", n)), image, it.prompt, tuple(getattr(it, "words", ())),
                                 None if video is None else np.asarray(video)))
    if not out:
        raise ValueError(f"no training items in {source!r}")
    return out


def digest(data: Sequence[TrainItem]) -> str:
    """A sha256 over the items' ids, prompts, images and videos (the manifest's data digest)."""
    h = hashlib.sha256()
    for it in data:
        h.update(f"{it.id}\0{it.prompt}\0".encode())
        h.update(np.asarray(it.image.convert("RGB")).tobytes())
        if it.video is not None:
            h.update(np.ascontiguousarray(it.video).tobytes())
    return h.hexdigest()


__all__ = ["TrainItem", "digest", "items"]
