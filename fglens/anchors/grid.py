"""The latent token grid and maps on it: pure tensor functions, below both `clip` and `masks`.

`latent_grid` is the DiT's token grid of a video size, `to_grid` resizes a map that covers the whole image to
it, and `minmax` scales each map to [0, 1]. (`fglens.anchors.masks` re-exports them.)

Example:
    >>> import torch
    >>> latent_grid(480, 832), tuple(to_grid(torch.ones(1, 4, 6), (8, 12)).shape)
    ((30, 52), (1, 8, 12))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["latent_grid", "minmax", "to_grid"]


def latent_grid(height: int, width: int, factor: int = 16) -> tuple[int, int]:
    """The latent token grid ``(H', W')`` of a ``height x width`` video: VAE stride x patch size = `factor`.

    Wan 2.1/2.2 and HunyuanVideo: 8 x 2 = 16.

    Example:
        >>> latent_grid(480, 832)
        (30, 52)
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"the pixels per latent token side must be a positive integer (16 for Wan, 8 for the toy "
                         f"world); got {factor!r}")
    if height < factor or width < factor:
        raise ValueError(f"{height}x{width} is smaller than one latent token ({factor} px)")
    return (int(height) // factor, int(width) // factor)


def _check_grid(grid_hw: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in grid_hw)
    except (TypeError, ValueError):
        raise ValueError(f"grid_hw must be (H', W'), got {grid_hw!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"grid_hw must be positive, got {grid_hw!r}")
    return h, w


def to_grid(maps: torch.Tensor, grid_hw: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resize maps ``[W, h, w]`` (or ``[h, w]``) covering the whole image to the latent grid ``[W, H', W']``.

    Args:
        maps: the maps, e.g. `WordMaps.maps`.
        grid_hw: ``(H', W')``, e.g. ``latent_grid(height, width)``.
        mode: ``"bilinear"`` (antialiased when shrinking; default), ``"bicubic"`` (same, clamped to the
            input range), ``"area"`` (box average; best when shrinking) or ``"nearest"``.

    Returns:
        float32 ``[W, H', W']`` (``[H', W']`` for a 2-D input).
    """
    grid = _check_grid(grid_hw)
    squeeze = maps.ndim == 2
    x = maps[None] if squeeze else maps
    if x.ndim != 3:
        raise ValueError(f"maps must be [W, h, w] or [h, w], got {tuple(maps.shape)}")
    x = x.to(torch.float32)[None]
    if tuple(x.shape[-2:]) == grid:
        out = x
    elif mode in ("bilinear", "bicubic"):
        out = F.interpolate(x, size=grid, mode=mode, align_corners=False, antialias=True)
        if mode == "bicubic":
            lo = x.amin(dim=(-2, -1), keepdim=True)
            hi = x.amax(dim=(-2, -1), keepdim=True)
            out = torch.maximum(torch.minimum(out, hi), lo)
    elif mode in ("area", "nearest"):
        out = F.interpolate(x, size=grid, mode=mode)
    else:
        raise ValueError(f"unknown mode {mode!r}; use 'bilinear', 'bicubic', 'area' or 'nearest'")
    out = out[0]
    return out[0] if squeeze else out


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each 2-D map (last two dims) scaled to [0, 1]; a constant map (no signal) gives zeros."""
    x = maps.to(torch.float32)
    lo = x.amin(dim=(-2, -1), keepdim=True)
    span = x.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))
