"""What every scorer shares: `Missing` (a score that could not be computed) and the check of a video array."""

from __future__ import annotations

from typing import Any

import numpy as np


class Missing(float):
    """A score that could not be computed: NaN, with a ``reason`` (``"missing: ..."`` when an input such as a
    model is absent, otherwise why the item cannot be scored).

    Example:
        >>> import math
        >>> m = Missing("missing: no VLM judge")
        >>> math.isnan(m), m.reason
        (True, 'missing: no VLM judge')
    """

    reason: str

    def __new__(cls, reason: str) -> Missing:
        obj = super().__new__(cls, float("nan"))
        obj.reason = str(reason)
        return obj

    def __repr__(self) -> str:
        return f"Missing({self.reason!r})"


def check_video(video: Any) -> np.ndarray:
    """`video` as a float32 ``[F, H, W, 3]`` array (values in [0, 1]); a clear error for any other shape."""
    array = np.asarray(video, dtype=np.float32)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"a video is an [F, H, W, 3] array in [0, 1]; got shape {array.shape}")
    return array
