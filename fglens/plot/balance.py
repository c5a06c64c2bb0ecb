"""`condition_balance`: how much attention goes to the text and to the image, per layer."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .data import _as_runs, _layer_means, _layers, _samples, _steps_text
from .layout import (
    CI,
    COLUMN_WIDTH,
    DPI,
    LABELS,
    MAX_SAMPLES,
    PAGE_WIDTH,
    _figure,
    _finish,
    _label,
    _layer_axis,
    _legend_above,
    _profile_line,
    _style,
    _title,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def _family(runs: list[xr.Dataset]) -> str:
    run = runs[0]
    if "text_share" in run.data_vars:
        return "wan"
    if "text_mass" in run.data_vars:
        return "joint"
    from ..store import decode_attrs

    family = str(decode_attrs(dict(run.attrs)).get("model_family", "unknown"))
    raise ValueError(
        f"condition_balance needs text_share (Wan) or text_mass / image_mass (joint attention: HunyuanVideo, "
        f"CogVideoX); this run (model family {family!r}) has neither: its variables are {sorted(run.data_vars)}"
    )


def condition_balance(
    ds: Any,
    branch: str = "cond",
    path: str | os.PathLike | None = None,
    *,
    steps: Any = None,
    n_boot: int = 1000,
    max_samples: int = MAX_SAMPLES,
    dpi: float = DPI,
    title: str | None = None,
) -> Figure:
    """How much each layer listens to the text against the visual conditions (Condition Isolation).

    - Wan (separate text and image attention): ``text_share`` per layer, mean and 95 % CI over runs x steps x
      frames; 0.5 marks equal text and image output norms.
    - Joint attention (HunyuanVideo, CogVideoX): stacked mean attention mass per layer on the text tokens,
      the image-derived tokens and the video tokens (video = 1 - text - image), and below it the text mass
      alone with its 95 % CI (it is often small next to the others).

    The family is read from the variables present.

    Example:
        >>> import fglens as fg
        >>> ds = fg.testing.tiny_run("hunyuan", words=("dog",), maps=False)
        >>> fig = fg.plot.condition_balance(ds)
        >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        ['text', 'image-derived', 'video']
    """
    runs = _as_runs(ds)
    layers = _layers(runs[0])
    family = _family(runs)
    steps_text = _steps_text(runs[0], steps)
    width = COLUMN_WIDTH if len(layers) <= 8 else PAGE_WIDTH
    with _style() as sns:
        palette = sns.color_palette("colorblind")
        if family == "wan":
            table, unit = _samples(runs, "text_share", branch, steps, max_samples)
            fig = _figure(width, 3.2)
            ax = fig.subplots()
            ax.axhline(0.5, color="0.3", linestyle="--", linewidth=1, label="text = image")
            _profile_line(sns, ax, table, palette[0], "text share", n_boot)
            ax.set_ylabel(_label(LABELS["text_share"], 24))
            ax.set_xlabel("layer (depth order)")
            _layer_axis(ax, layers)
            _legend_above(ax)
            _title(fig, title, "Text vs image condition per layer", f"{branch} branch, {steps_text}",
                   f"mean, {CI} over {unit}")
            return _finish(fig, path, dpi)

        text, unit = _samples(runs, "text_mass", branch, steps, max_samples)
        has_image = "image_mass" in runs[0].data_vars
        means = {"text": _layer_means(text, len(layers))}
        if has_image:
            means["image-derived"] = _layer_means(_samples(runs, "image_mass", branch, steps, max_samples)[0],
                                                  len(layers))
        means["video"] = 1.0 - sum(means.values())
        fig = _figure(width, 5.0)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1.4, 1.0))
        base = np.zeros(len(layers))
        x = np.arange(len(layers))
        colors = {"text": palette[0], "image-derived": palette[1], "video": palette[7]}
        hatches = {"text": "", "image-derived": "//", "video": ""}
        for name, values in means.items():
            top.bar(x, values, bottom=base, width=0.8, color=colors[name], hatch=hatches[name], edgecolor="white",
                    linewidth=0.5, label=name, gid=name)
            base = base + np.nan_to_num(values)
        top.set_ylim(0, 1)
        top.set_ylabel("share of attention")
        top.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(means))
        _profile_line(sns, bottom, text, palette[0], None, n_boot)
        bottom.set_ylabel("text mass")
        for ax in (top, bottom):
            ax.set_xlabel("layer (depth order)" if ax is bottom else "")
            _layer_axis(ax, layers)
        _title(fig, title, "Attention on text / image / video tokens", f"{branch} branch, {steps_text}",
               f"means over {unit}; below: text mass, {CI}")
        return _finish(fig, path, dpi)


