"""Independent float64 references shared by the tests (never fglens code)."""

from __future__ import annotations

import numpy as np


def morans_i(m: np.ndarray) -> float:
    """Moran's I of a map with an explicit N x N binary rook weight matrix; NaN for a constant map."""
    ny, nx = m.shape
    w = np.zeros((ny * nx, ny * nx))
    for y in range(ny):
        for x in range(nx):
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                if 0 <= y + dy < ny and 0 <= x + dx < nx:
                    w[y * nx + x, (y + dy) * nx + x + dx] = 1
    z = m.reshape(-1) - m.mean()
    if not np.any(z):
        return float("nan")
    return float(ny * nx / w.sum() * (z @ w @ z) / (z @ z))
