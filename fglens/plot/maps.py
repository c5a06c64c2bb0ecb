"""`word_maps`: one word's attention maps over the run's reference image, layers x latent frames."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .data import _as_runs, _layers, _positions, _select, _steps_text, _words
from .layout import DPI, PAGE_WIDTH, UNDERLAYS, _figure, _finish, _style, _text_width, _title

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def _spread(n: int, limit: int = 8) -> list[int]:
    """All of ``range(n)``, or `limit` evenly spaced positions (first and last included)."""
    if n <= limit:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, limit)})


def _as_rgb(image: Any) -> np.ndarray:
    """A PIL image, HxWx3 (or HxW) array or [3, H, W] tensor as a float HxWx3 array in [0, 1]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"image must be a PIL image, an HxWx3 / HxW array or a [3, H, W] tensor; got {arr.shape}")
    if arr.max() > 1.0:
        arr = arr / 255.0
    return np.clip(np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr, 0.0, 1.0)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """An HxWx3 image in [0, 1] as its HxW brightness (ITU-R BT.601 weights, as PIL's ``convert("L")``)."""
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _stored_image(run: xr.Dataset) -> np.ndarray | None:
    """The run's own ``reference_image`` as a float HxWx3 array in [0, 1], or None when it kept none.

    A run of `fg.open_runs` has its image padded to the largest of the runs: it is cut to ``image_size``.
    """
    if "reference_image" not in run.data_vars:
        return None
    pixels = run["reference_image"]
    if "image_size" in run.coords:
        height, width = (int(v) for v in np.asarray(run["image_size"].values).reshape(-1)[:2])
        if height == 0 or width == 0:
            return None
        pixels = pixels.isel(image_y=slice(0, height), image_x=slice(0, width))
    return np.asarray(pixels.transpose("image_y", "image_x", "channel").values, dtype=np.float32) / 255.0


def word_maps(
    ds: Any,
    word: str,
    layers: Any = None,
    frames: Any = None,
    image: Any = None,
    steps: Any = None,
    branch: str = "cond",
    path: str | os.PathLike | None = None,
    *,
    step: Any = None,
    run: int | str | None = None,
    underlay: str = "grey",
    shared_scale: bool = False,
    alpha: float = 0.6,
    cmap: str = "magma",
    interpolation: str = "nearest",
    dpi: float = DPI,
    title: str | None = None,
) -> Figure:
    """A grid of one word's attention maps: rows = layers, columns = latent frames, mean over the chosen steps.

    Needs the ``word_map`` variable (``fg.Record(maps=True)``). The maps are on the latent token grid
    (H' x W'), the reference image stretched to the grid's extent as the pipeline resizes it. The image is an
    underlay that cannot be mistaken for attention: in grey under the map drawn at opacity `alpha`
    (``underlay="grey"``), or as white contour lines of its brightness over the map drawn opaque
    (``underlay="contours"``: the colours are exactly the colour bar's). One colour bar is shared by all panels;
    with ``shared_scale=True`` its range spans every recorded word's maps (same layers, frames and steps), so
    that the figures of different words can be compared colour for colour.

    Args:
        word: a recorded word.
        image: the image under the maps: None (default) uses the run's own ``reference_image`` (kept by
            image-to-video runs, ``fg.Record(image=True)``) and draws no overlay when the run has none; a PIL
            image, array or tensor draws over that image instead; False draws the maps alone; True requires the
            run's own image (an error when it has none).
        layers: layer names or indices (default: all, or 8 evenly spaced when there are more).
        frames: latent frame indices (default: all, or 8 evenly spaced).
        steps: None (all steps), a ``(start, stop)`` fraction pair, or step indices: the maps are averaged
            over these steps (the same ``steps=`` as the other figures; ``step=`` is accepted as an alias).
        run: which run when several are given (index or run id); required then.
        underlay: ``"grey"`` (the image in greyscale under the map) or ``"contours"`` (its outlines over it).
        shared_scale: one colour range for all words (default: the range of this word's panels).

    Example:
        >>> import fglens as fg
        >>> ds = fg.testing.tiny_run("wan", words=("dog", "fence"), maps=True)
        >>> fig = fg.plot.word_maps(ds, "dog")   # over the run's own reference image, in grey
        >>> len([ax for ax in fig.axes if ax.images]), len(fig.axes[0].images)   # 4 layers x 2 frames; image + map
        (8, 2)
        >>> len(fg.plot.word_maps(ds, "dog", image=False).axes[0].images)   # the maps alone
        1
        >>> a, b = (fg.plot.word_maps(ds, w, shared_scale=True) for w in ("dog", "fence"))
        >>> a.axes[0].images[-1].norm.vmax == b.axes[0].images[-1].norm.vmax   # one scale for both words
        True
    """
    if underlay not in UNDERLAYS:
        raise ValueError(f"underlay must be one of {UNDERLAYS}; got {underlay!r}")
    if step is not None:
        if steps is not None:
            raise TypeError("word_maps() got both steps= and its alias step=; pass steps= only")
        steps = step
    runs = _as_runs(ds)
    if len(runs) > 1:
        if run is None:
            raise ValueError(f"{len(runs)} runs given: choose one with run= (an index 0..{len(runs) - 1} or a run id)")
        ids = [str(r.coords["run"].item() if "run" in r.coords else r.attrs.get("run", "")) for r in runs]
        index = ids.index(run) if isinstance(run, str) and run in ids else run
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < len(runs):
            raise ValueError(f"unknown run {run!r}; give an index 0..{len(runs) - 1} or one of {ids}")
        one = runs[int(index)]
    else:
        one = runs[0]
    words = _words(one)
    if "word_map" not in one.data_vars:
        recorded = [w for w in words if w]
        raise ValueError(
            "this run has no word_map variable: word maps are stored only when recording with maps=True. "
            f"Record again with fg.trace(pipe, record=fg.Record(words={recorded!r}, maps=True), ...); "
            "its other variables (word_mass, morans_i, ...) are per-frame means of those maps"
        )
    if word not in words:
        raise ValueError(f"unknown word {word!r}; the run's words are {[w for w in words if w]}")
    layer_names = _layers(one)
    if layers is None:
        rows = _spread(len(layer_names))
    else:
        rows = _positions([layers] if isinstance(layers, (str, int, np.integer)) else list(layers), layer_names)
    frame_ids = [int(f) for f in one["frame"].values]
    if frames is None:
        cols = _spread(len(frame_ids))
    else:
        wanted = [frames] if isinstance(frames, (int, np.integer)) else list(frames)
        missing = [f for f in wanted if int(f) not in frame_ids]
        if missing:
            raise ValueError(f"unknown frame(s) {missing}; the run has latent frames {frame_ids}")
        cols = [frame_ids.index(int(f)) for f in wanted]
    every = _select(one, "word_map", branch, steps).mean("step", skipna=True).isel(layer=rows, frame=cols)
    every = every.transpose("word", "layer", "frame", "y", "x").values
    maps = every[words.index(word)]
    if np.isnan(maps).all():
        raise ValueError(f"the word_map of {word!r} holds no values in branch {branch!r} at the chosen steps")
    scaled = every[[i for i, w in enumerate(words) if w]] if shared_scale else maps
    ny, nx = maps.shape[-2:]
    background = contours = None
    if image is None or image is True:
        rgb = _stored_image(one)
        if rgb is None and image is True:
            raise ValueError("image=True asks for the run's own reference image, and this run kept none (a "
                             "text-to-video run, fg.Record(image=False), or a run recorded before fglens kept it); "
                             "pass the image itself, or image=None")
    else:
        rgb = None if image is False else _as_rgb(image)
    if rgb is not None:
        from PIL import Image

        scale = max(1, min(16, 512 // max(ny, nx)))  # the pipeline's resize: the whole image to the grid's aspect
        pil = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
        pil = pil.resize((nx * scale, ny * scale), Image.Resampling.LANCZOS)
        grey = _luminance(np.asarray(pil, dtype=np.float32) / 255.0)
        if underlay == "grey":
            background = grey
        else:
            ys = -0.5 + (np.arange(grey.shape[0]) + 0.5) / scale
            xs = -0.5 + (np.arange(grey.shape[1]) + 0.5) / scale
            contours = (xs, ys, grey)
    vmax = float(np.nanmax(scaled))
    vmin = 0.0 if float(np.nanmin(scaled)) >= 0.0 else float(np.nanmin(scaled))
    cell = min(1.6, PAGE_WIDTH / (len(cols) + 0.8)) * max(0.35, min(1.6, ny / nx))
    from matplotlib import rcParams

    with _style("white"):
        names = [layer_names[pos] for pos in rows]
        labels = max(_text_width(name, rcParams["axes.labelsize"]) for name in names) / 72  # row labels, inches
        width = min(PAGE_WIDTH, 0.8 + labels + min(1.6, PAGE_WIDTH / (len(cols) + 0.8)) * len(cols))
        extent = (-0.5, nx - 0.5, ny - 0.5, -0.5)
        fig = _figure(max(width, 2.4), 1.0 + cell * len(rows))
        axes = fig.subplots(len(rows), len(cols), squeeze=False)
        im = None
        for r, name in enumerate(names):
            for c, frame_pos in enumerate(cols):
                ax = axes[r, c]
                if background is not None:
                    ax.imshow(background, cmap="gray", vmin=0.0, vmax=1.0, extent=extent, interpolation="bilinear")
                im = ax.imshow(maps[r, c], cmap=cmap, vmin=vmin, vmax=vmax, extent=extent,
                               alpha=alpha if background is not None else 1.0, interpolation=interpolation)
                if contours is not None:
                    ax.contour(*contours, levels=4, colors="white", linewidths=0.6, alpha=0.9)
                    ax.set_xlim(extent[0], extent[1])
                    ax.set_ylim(extent[2], extent[3])
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"frame {frame_ids[frame_pos]}")
                if c == 0:  # row labels read horizontally: long layer names never run into the next row's
                    ax.set_ylabel(name, rotation=0, ha="right", va="center")
        from matplotlib.cm import ScalarMappable

        scale_text = ("one colour scale for all words" if shared_scale and len(scaled) > 1
                      else "colour scale of this word")
        fig.colorbar(ScalarMappable(norm=im.norm, cmap=im.cmap), ax=axes.ravel().tolist(), shrink=0.9,
                     label=f"attention to “{word}” (head mean)")  # the colours at full opacity
        under = ("" if background is None and contours is None else
                 "; under the maps: the reference image in grey" if background is not None else
                 "; white lines: contours of the reference image")
        _title(fig, title, f"Attention map of “{word}”", f"{branch} branch, mean over {_steps_text(one, steps)}",
               f"rows: layers; columns: latent frames ({ny}×{nx} tokens){under}; {scale_text}")
        return _finish(fig, path, dpi)


