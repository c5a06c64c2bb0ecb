"""Word maps -> anchor masks on the DiT's latent token grid.

The DiT sees the reference frame through its latent grid ``(H', W')`` (Wan, HunyuanVideo:
``H' = height // 16``, ``W' = width // 16``; see `latent_grid`). The pipeline resizes the reference image
to ``height x width`` as a whole, so a CLIP map that covers the whole image is resized to ``(H', W')`` as
a whole too (`to_grid`, bilinear with antialiasing, or area). Then each word's map is thresholded
(`threshold`: Otsu, a quantile, or kept soft) into the mask M_w of the AnchorMask (docs/concepts.md, "The
operators of Focal Guidance").
Masks are float tensors in [0, 1]; `region_masks` does all of it and returns everything a plot needs.

Example:
    >>> import torch
    >>> from fglens.anchors import threshold, to_grid
    >>> sim = torch.zeros(1, 4, 6); sim[0, :2, :3] = 1.0        # one word, high in the top-left quarter
    >>> grid = to_grid(sim, (8, 12))
    >>> mask = threshold(grid, "otsu")
    >>> tuple(mask.shape), mask[0, :4, :6].mean().item(), mask[0, 4:, :].sum().item()
    ((1, 8, 12), 1.0, 0.0)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from .grid import _check_grid, latent_grid, minmax, to_grid

if TYPE_CHECKING:  # pragma: no cover
    from .clip import Clip, WordMaps

__all__ = [
    "AnchorRegions",
    "check_words",
    "latent_grid",
    "minmax",
    "otsu",
    "region_masks",
    "threshold",
    "to_grid",
]

Method = Literal["otsu", "quantile"]


def otsu(maps: torch.Tensor) -> torch.Tensor:
    """Otsu's threshold of each 2-D map (last two dims), exact (over all split points, no histogram).

    Returns the thresholds ``[...]``, midway between the two classes' nearest values; ``maps > t`` is the
    upper class. A constant map has no split and gets ``+inf`` (empty mask).
    """
    flat = maps.flatten(-2).to(torch.float64)
    n = flat.shape[-1]
    if n < 2:
        return torch.full(flat.shape[:-1], float("inf"), dtype=torch.float64)
    values, _ = flat.sort(dim=-1)
    csum = values.cumsum(dim=-1)
    size0 = torch.arange(1, n, dtype=torch.float64)  # split after position i-1: class 0 = values[:i]
    mean0 = csum[..., :-1] / size0
    mean1 = (csum[..., -1:] - csum[..., :-1]) / (n - size0)
    between = (size0 / n) * (1 - size0 / n) * (mean0 - mean1) ** 2
    valid = values[..., 1:] > values[..., :-1]  # a split between equal values is no split
    between = between.masked_fill(~valid, -1.0)
    best = between.argmax(dim=-1, keepdim=True)
    t = (values.gather(-1, best) + values.gather(-1, best + 1)) / 2
    t = t.squeeze(-1)
    return torch.where(valid.any(dim=-1), t, torch.full_like(t, float("inf")))


def threshold(maps: torch.Tensor, method: Method | None = "otsu", q: float = 0.8) -> torch.Tensor:
    """Masks in [0, 1] from maps ``[..., h, w]``, each 2-D map on its own.

    Args:
        maps: the (similarity) maps, e.g. ``to_grid(word_maps.maps, grid)``.
        method: ``"otsu"`` (1 above Otsu's threshold), ``"quantile"`` (1 on the top ``1 - q`` of the cells:
            exactly ``round((1 - q) * h * w)`` of them, ties broken by position), or None: soft, the map
            min-max scaled to [0, 1].
        q: the quantile for ``"quantile"``, in [0, 1].

    A constant map carries no location and gives an all-zero mask with every method.

    Example:
        >>> import torch
        >>> m = torch.arange(10.0).reshape(1, 2, 5)
        >>> threshold(m, "quantile", q=0.8)
        tensor([[[0., 0., 0., 0., 0.],
                 [0., 0., 0., 1., 1.]]])
    """
    x = maps.to(torch.float32)
    if x.ndim < 2:
        raise ValueError(f"maps must have at least 2 dims (h, w), got {tuple(maps.shape)}")
    if method is None:
        return minmax(x)
    if method == "otsu":
        t = otsu(x)
        return (x.to(torch.float64) > t[..., None, None]).to(torch.float32)
    if method == "quantile":
        if not 0.0 <= float(q) <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        flat = x.flatten(-2)
        n = flat.shape[-1]
        keep = int(round((1.0 - float(q)) * n))
        order = torch.sort(flat, dim=-1, descending=True, stable=True).indices[..., :keep]
        mask = torch.zeros_like(flat).scatter_(-1, order, 1.0)
        constant = flat.amax(dim=-1, keepdim=True) == flat.amin(dim=-1, keepdim=True)
        return mask.masked_fill(constant, 0.0).reshape(x.shape)
    raise ValueError(f"unknown threshold method {method!r}; use 'otsu', 'quantile' or None (soft)")


def check_words(words: Sequence[str], prompt: str) -> tuple[str, ...]:
    """Check that each word (or phrase) occurs in `prompt` as whole words, case-insensitively.

    Raises:
        ValueError: naming the words missing from the prompt (also for empty / duplicate words).

    Example:
        >>> check_words(["dog", "red fence"], "A dog jumps over a red fence.")
        ('dog', 'red fence')
    """
    from .wordmaps import _check_word_list

    words = _check_word_list(words)
    missing = [w for w in words if not re.search(r"(?<!\w)" + re.escape(w.strip()) + r"(?!\w)", prompt, re.IGNORECASE)]
    if missing:
        raise ValueError(f"words not in the prompt: {missing} (prompt: {prompt!r})")
    return words


@dataclass(frozen=True)
class AnchorRegions:
    """Where each word sits in the reference image, on the DiT's latent grid.

    Attributes:
        words: the words, in order.
        grid_hw: the latent grid ``(H', W')``.
        similarity: the CLIP `WordMaps` on the patch grid (raw cosine similarities; for plotting).
        grid: ``[W, H', W']`` the cosine maps resized to the latent grid.
        soft: ``[W, H', W']`` `grid` min-max scaled to [0, 1] per word.
        mask: ``[W, H', W']`` float in [0, 1]: binary when thresholded, equal to `soft` when not.
        threshold: ``"otsu"``, ``"quantile"`` or None (soft).
        q: the quantile used with ``"quantile"``.
    """

    words: tuple[str, ...]
    grid_hw: tuple[int, int]
    similarity: WordMaps
    grid: torch.Tensor
    soft: torch.Tensor
    mask: torch.Tensor
    threshold: str | None
    q: float

    def index(self, word: str) -> int:
        """Position of `word`; a clear KeyError when it is not one of the words."""
        try:
            return self.words.index(word)
        except ValueError:
            raise KeyError(f"{word!r} is not one of the anchored words {list(self.words)}") from None

    def __getitem__(self, word: str) -> torch.Tensor:
        """The mask ``[H', W']`` of `word`."""
        return self.mask[self.index(word)]

    def as_dict(self) -> dict[str, torch.Tensor]:
        """``{word: mask [H', W']}``."""
        return {w: self.mask[i] for i, w in enumerate(self.words)}

    def flat(self) -> torch.Tensor:
        """Masks over the tokens of one latent frame, ``[W, H' * W']`` in row-major (frame-major token) order."""
        return self.mask.flatten(-2)

    @property
    def coverage(self) -> torch.Tensor:
        """Mean mask value per word ``[W]`` (the covered fraction of a binary mask)."""
        return self.mask.mean(dim=(-2, -1))


def region_masks(
    clip: Clip,
    image: Any,
    words: Sequence[str],
    grid_hw: Sequence[int],
    *,
    prompt: str | None = None,
    threshold: Method | None = "otsu",
    q: float = 0.8,
    templates: Sequence[str] | None = None,
    text_features: torch.Tensor | None = None,
    mode: str = "bilinear",
    fit: Literal["grid", "pad"] = "grid",
    resolution: int | tuple[int, int] | None = None,
) -> AnchorRegions:
    """Word -> region masks of the reference image on the DiT's latent grid (the anchors of FSG).

    Args:
        clip: a `Clip`.
        image: the reference frame (PIL image of any aspect ratio, HxWx3 uint8 array, or [3, H, W] tensor).
        words: the key words (or short phrases) of the prompt.
        grid_hw: the latent grid ``(H', W')`` of the pipeline's height and width (`latent_grid`).
        prompt: when given, every word must occur in it (else a ValueError naming the missing words).
        threshold: ``"otsu"``, ``"quantile"`` (keep the top ``1 - q``) or None (soft masks).
        q: the quantile for ``"quantile"``.
        templates: prompt templates averaged per word (default `DEFAULT_TEMPLATES`; ``()`` = bare words).
        text_features: ``[W, C]`` embeddings that replace the text tower.
        mode: interpolation to the latent grid (see `to_grid`).
        fit, resolution: how CLIP sees a non-square image (see `Clip.patch_features`).

    Example:
        >>> import torch
        >>> from PIL import Image
        >>> from fglens.anchors import Clip, latent_grid, tiny_config
        >>> _ = torch.manual_seed(0)
        >>> clip = Clip(tiny_config())
        >>> regions = region_masks(clip, Image.new("RGB", (832, 480)), ["dog"], latent_grid(480, 832),
        ...                        prompt="a dog jumps")
        >>> tuple(regions.mask.shape), tuple(regions.similarity.maps.shape)
        ((1, 30, 52), (1, 8, 14))
    """
    from .clip import DEFAULT_TEMPLATES
    from .wordmaps import _check_word_list

    words = check_words(words, prompt) if prompt is not None else _check_word_list(words)
    grid = _check_grid(grid_hw)
    similarity = clip.word_maps(
        image,
        words,
        templates=DEFAULT_TEMPLATES if templates is None else templates,
        text_features=text_features,
        fit=fit,
        resolution=resolution,
    )
    on_grid = to_grid(similarity.maps, grid, mode=mode)
    soft = minmax(on_grid)
    mask = soft if threshold is None else _threshold(on_grid, threshold, q)
    return AnchorRegions(
        words=words,
        grid_hw=grid,
        similarity=similarity,
        grid=on_grid,
        soft=soft,
        mask=mask,
        threshold=threshold,
        q=float(q),
    )


_threshold = threshold
