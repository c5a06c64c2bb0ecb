"""The reference image a run keeps: the pipeline call's `image`, as a small RGB uint8 array.

Figures of stored runs (`fg.plot.word_maps`, ``fglens plot``) overlay the word maps on it, so a run must keep
the image without keeping a full-size copy: `reference_thumbnail` turns whatever a diffusers pipeline accepts
as `image` (a PIL image, an array, a tensor, or a list of them: the first is used) into an
``(image_y, image_x, 3)`` uint8 array whose long side is at most `REFERENCE_IMAGE_MAX_SIDE` (256) pixels,
resized with PIL's LANCZOS filter, aspect kept; smaller images are kept pixel for pixel.

Value ranges follow diffusers' image processor: integer arrays and tensors are 0..255; float ones are
0..1, or -1..1 when they hold negative values (diffusers' older convention), and are rounded as diffusers
rounds them (``round(x * 255)``).

Example:
    >>> import numpy as np, fglens as fg
    >>> from fglens.store.image import reference_thumbnail
    >>> reference_thumbnail(fg.testing.reference_image(48, 32)).shape
    (32, 48, 3)
    >>> reference_thumbnail(np.zeros((3, 600, 400), dtype=np.float32)).shape   # a [C, H, W] tensor-like array
    (256, 171, 3)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .schema import REFERENCE_IMAGE_MAX_SIDE

ACCEPTED = ("a PIL image, an HxW / HxWxC / CxHxW array or tensor (C = 1, 3 or 4; a leading batch axis is allowed "
            "and its first item used), or a list of these")


def thumbnail_size(width: int, height: int, max_side: int = REFERENCE_IMAGE_MAX_SIDE) -> tuple[int, int]:
    """``(width, height)`` of the stored image: unchanged when the long side fits, else scaled to `max_side`.

    Example:
        >>> thumbnail_size(832, 480), thumbnail_size(48, 32)
        ((256, 148), (48, 32))
    """
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def reference_thumbnail(image: Any, max_side: int = REFERENCE_IMAGE_MAX_SIDE) -> np.ndarray:
    """`image` as an RGB uint8 array ``(image_y, image_x, 3)`` with its long side at most `max_side` pixels.

    Raises `TypeError` / `ValueError` naming what was given and what is accepted.

    Example:
        >>> import fglens as fg
        >>> reference_thumbnail(fg.testing.reference_image(512, 256)).shape
        (128, 256, 3)
    """
    from PIL import Image

    if not isinstance(max_side, int) or max_side < 1:
        raise ValueError(f"max_side must be a positive int; got {max_side!r}")
    pil = _as_pil(image)
    size = thumbnail_size(pil.width, pil.height, max_side)
    if size != pil.size:
        pil = pil.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(pil, dtype=np.uint8).copy()


def _as_pil(image: Any):
    from PIL import Image

    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError(f"the reference image is an empty {type(image).__name__}; expected {ACCEPTED}")
        image = image[0]
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # a torch tensor, on any device
        image = image.detach().cpu()
        if image.dtype.is_floating_point:
            image = image.float()
        image = image.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"cannot keep a reference image of type {type(image).__name__}; expected {ACCEPTED}")
    arr = image
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or 0 in arr.shape:
        raise ValueError(f"cannot keep a reference image of shape {tuple(image.shape)}; expected {ACCEPTED}")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"cannot keep a reference image of dtype {arr.dtype}; expected integers 0..255 or floats "
                        "0..1 (or -1..1)")
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("the reference image holds NaN or infinite values")
        if arr.min() < 0:
            arr = (arr + 1.0) / 2.0  # diffusers' [-1, 1] tensors
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    arr = arr[..., :3] if arr.shape[-1] == 4 else np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr
    return Image.fromarray(np.ascontiguousarray(arr))
