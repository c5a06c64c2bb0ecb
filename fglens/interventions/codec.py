"""Anchor masks as JSON: exact float32 bytes, zlib-compressed, base64 (what `AnchorMask.spec()` stores).

Example:
    >>> import torch
    >>> masks = torch.tensor([[[0.0, 1.0], [0.25, 1.0]]])
    >>> torch.equal(decode_masks(encode_masks(masks)), masks)
    True
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def encode_masks(masks: torch.Tensor) -> dict[str, Any]:
    """``[W, Y, X]`` masks as JSON: float32 bytes, zlib-compressed, base64 (binary masks take a few hundred bytes)."""
    data = masks.detach().to("cpu", torch.float32).contiguous().numpy()
    return {"dtype": "float32", "shape": list(data.shape),
            "zlib_base64": base64.b64encode(zlib.compress(data.tobytes(), 9)).decode("ascii")}


def decode_masks(value: Mapping[str, Any]) -> torch.Tensor:
    """The masks `encode_masks` wrote, bit for bit."""
    try:
        raw = zlib.decompress(base64.b64decode(value["zlib_base64"]))
        data = np.frombuffer(raw, dtype=np.float32).reshape([int(n) for n in value["shape"]])
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise ValueError(f"an AnchorMask spec's 'masks' must be what AnchorMask.spec() writes ({{dtype, shape, "
                         f"zlib_base64}}); could not decode it: {exc}") from exc
    return torch.from_numpy(data.copy())
