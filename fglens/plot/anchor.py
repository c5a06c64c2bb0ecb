"""`anchor`: the anchor masks of an `fg.AnchorMask` over its image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .layout import DPI, FSG, PAGE_WIDTH, _figure, _finish, _style, _title
from .maps import _as_rgb

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def _anchor_parts(anchor: Any) -> tuple[list[str], np.ndarray | None, Any]:
    """(words, masks [W, Y, X] or None, AnchorRegions or None) of an AnchorMask, a FocalGuidance holding one,
    or an AnchorRegions."""
    if hasattr(anchor, "parts") and not hasattr(anchor, "masks"):
        found = [p for p in anchor.parts() if hasattr(p, "masks") and hasattr(p, "words")]
        if not found:
            raise ValueError(f"{type(anchor).__name__} holds no AnchorMask to draw")
        anchor = found[0]
    regions = getattr(anchor, "regions", None)
    if regions is None and hasattr(anchor, "similarity") and hasattr(anchor, "mask"):
        regions = anchor  # an AnchorRegions itself
    masks = getattr(anchor, "masks", None)
    if masks is None and regions is not None:
        masks = regions.mask
    words = list(getattr(anchor, "words", None) or (regions.words if regions is not None else []))
    if masks is None and regions is None:
        raise ValueError(
            f"nothing to draw: {type(anchor).__name__} has neither masks nor CLIP regions; pass an fg.AnchorMask "
            "(from_clip or from_mask) or an fglens.anchors.AnchorRegions"
        )
    arr = None if masks is None else np.asarray(masks.detach().cpu() if hasattr(masks, "detach") else masks, float)
    return words, arr, regions


def anchor(
    image: Any,
    anchor: Any,
    word: str | Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    *,
    alpha: float = 0.55,
    dpi: float = DPI,
    title: str | None = None,
) -> Figure:
    """Where each anchored word sits in the reference image: the CLIP region map and the mask over the image.

    One row per word. Columns: the image; the CLIP cosine-similarity map on CLIP's patch grid over the image
    (only for `fg.AnchorMask.from_clip` anchors, which keep their `regions`); the anchor mask M_w on the latent
    grid over the image (binary from Otsu / a quantile, or soft), outlined. Anchors built with `from_mask`
    have masks only, and get the image and mask columns.

    Args:
        image: the reference frame (PIL image, HxWx3 array or [3, H, W] tensor), or None for no background.
        anchor: an `fg.AnchorMask`, an `fg.FocalGuidance` holding one, or an `fglens.anchors.AnchorRegions`.
        word: one word or a list (default: every anchored word).

    Example:
        >>> import fglens as fg
        >>> clip = fg.anchors.Clip(fg.anchors.tiny_config())
        >>> image = fg.testing.reference_image(96, 64)
        >>> a = fg.AnchorMask.from_clip(image, "a dog runs", ["dog"], clip)
        >>> fig = fg.plot.anchor(image, a)
        >>> [ax.get_title() for ax in fig.axes[:3]]
        ['reference image', 'CLIP similarity (patches)', 'anchor mask (latent grid)']
    """
    from matplotlib.cm import ScalarMappable

    words, masks, regions = _anchor_parts(anchor)
    chosen = words if word is None else ([word] if isinstance(word, str) else list(word))
    unknown = [w for w in chosen if w not in words]
    if unknown:
        raise ValueError(f"unknown word(s) {unknown}; the anchor's words are {words}")
    rgb = None if image is None else _as_rgb(image)
    columns = (["image"] if rgb is not None else []) + (["similarity"] if regions is not None else []) + ["mask"]
    titles = {"image": "reference image", "similarity": "CLIP similarity (patches)",
              "mask": "anchor mask (latent grid)"}
    ny, nx = masks.shape[-2:]
    aspect = (rgb.shape[0] / rgb.shape[1]) if rgb is not None else ny / nx
    cell = min(2.2, PAGE_WIDTH / (len(columns) + 0.6))
    with _style("white"):
        fig = _figure(min(PAGE_WIDTH, cell * len(columns) + 1.2), 0.8 + cell * max(0.4, aspect) * len(chosen))
        axes = fig.subplots(len(chosen), len(columns), squeeze=False)
        extent = None if rgb is None else (-0.5, rgb.shape[1] - 0.5, rgb.shape[0] - 0.5, -0.5)
        for r, w in enumerate(chosen):
            k = words.index(w)
            for c, col in enumerate(columns):
                ax = axes[r, c]
                if rgb is not None:
                    ax.imshow(rgb, extent=extent)
                over = alpha if rgb is not None else 1.0
                if col == "similarity":
                    sim = np.asarray(regions.similarity[w], dtype=float)
                    im = ax.imshow(sim, cmap="viridis", alpha=over, interpolation="nearest",
                                   extent=extent or (-0.5, sim.shape[1] - 0.5, sim.shape[0] - 0.5, -0.5))
                    fig.colorbar(ScalarMappable(norm=im.norm, cmap=im.cmap), ax=ax, shrink=0.8,
                                 label="cosine similarity")
                elif col == "mask":
                    mask = masks[k]
                    box = extent or (-0.5, mask.shape[1] - 0.5, mask.shape[0] - 0.5, -0.5)
                    im = ax.imshow(mask, cmap="cividis", vmin=0.0, vmax=1.0, alpha=over, interpolation="nearest",
                                   extent=box)
                    if 0.0 < mask.max() and mask.min() < 1.0:  # outline the region at the cells' centres
                        ys = box[3] + (np.arange(mask.shape[0]) + 0.5) * (box[2] - box[3]) / mask.shape[0]
                        xs = box[0] + (np.arange(mask.shape[1]) + 0.5) * (box[1] - box[0]) / mask.shape[1]
                        ax.contour(xs, ys, mask, levels=[0.5], colors="white", linewidths=1.0)
                    fig.colorbar(ScalarMappable(norm=im.norm, cmap=im.cmap), ax=ax, shrink=0.8, label="mask M_w")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(titles[col])
                if c == 0:
                    ax.set_ylabel(f"“{w}”")
        if regions is not None:
            _title(fig, title, f"{FSG} anchors: CLIP regions and masks",
                   f"threshold: {regions.threshold or 'soft'}")
        else:
            _title(fig, title, f"{FSG} anchors: masks", "no CLIP regions (built from masks)")
        return _finish(fig, path, dpi)
