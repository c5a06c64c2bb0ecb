"""Figure plumbing shared by every figure: constants, seaborn style, sizes, wrapped titles and labels, legends,
layer axes and marks."""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..stats.table import STATISTICS, recordable

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


#: axis labels of the recorded statistics (what the number means; declared in `fglens.stats.table`)
LABELS: dict[str, str] = {name: s.long_name for name, s in recordable().items()}
#: short names for titles
SHORT: dict[str, str] = {name: s.short for name, s in recordable().items()}
#: statistics whose sign means something (cosine similarity, spatial autocorrelation): coloured with a diverging
#: map centred on zero
SIGNED = frozenset(name for name, s in STATISTICS.items() if s.signed)


def _upper_first(text: str) -> str:
    """``"Moran's I"`` stays ``"Moran's I"`` (``str.capitalize`` would write ``"Moran's i"``)."""
    return text[:1].upper() + text[1:]


#: per-layer statistics (``branch, step, layer, ...``) the profile figures accept
PROFILE_VARS = tuple(LABELS)
DPI = 200
MAX_SAMPLES = 4000  # rows per layer handed to seaborn's bootstrap
WEAK_COLOR = "0.55"  # neutral grey: never one of the data colours
RESPONSIVE_COLOR = "0.1"  # near-black triangles
PAGE_WIDTH, COLUMN_WIDTH = 7.0, 3.5  # inches
MAX_HEIGHT = 9.5  # inches: figures grow up to this to fit their labels, then labels wrap
CI = "95\u00a0%\u00a0CI"  # no-break spaces: a title never breaks inside it
GLUED = ("−", "-", "×", "/", "+", "=")  # operators wrapped with the word before them
UNDERLAYS = ("grey", "contours")  # how word_maps draws the reference image under its maps
FSG = "Fine-grained Semantic Guidance (FSG)"  # the anchors' operator, spelled out (docs/concepts.md)


# ----------------------------------------------------------------------------------------------------------
# figure plumbing
# ----------------------------------------------------------------------------------------------------------


@contextmanager
def _style(style: str = "whitegrid"):
    """seaborn's paper style for the figure being built (restored afterwards; the user's rcParams are kept)."""
    import seaborn as sns

    with sns.axes_style(style), sns.plotting_context("paper", font_scale=1.0):
        yield sns


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _finish(fig: Figure, path: str | os.PathLike | None, dpi: float) -> Figure:
    """Fit its labels (`_fit_labels`); save `fig` to `path` (format from the suffix, parent folders created) when
    given; return it."""
    _fit_labels(fig)
    if path is None:
        return fig
    path = Path(path).expanduser()
    fmt = path.suffix.lower().lstrip(".")
    known = fig.canvas.get_supported_filetypes()
    if fmt not in known:
        raise ValueError(f"cannot save a figure as {str(path)!r}: the suffix must be one of {sorted(known)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def _text_width(text: str, size: Any) -> float:
    """Width in points of one line of `text` at font size `size` (points or a name like ``"medium"``), as
    matplotlib lays it out in the current style's font."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    return float(text_to_path.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)[0])


def _wrap(text: str, width: float, size: Any) -> str:
    """`text` wrapped on plain spaces so that each line is at most `width` points wide at font size `size`.

    Lines break only between words (a word longer than the width gets a line of its own), never at a no-break
    space (so "95 % CI" and counts like "2 steps" stay whole) and never before an operator of `GLUED`; the
    text's own line breaks are kept.
    """
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        words: list[str] = []
        for word in paragraph.split(" "):
            if word in GLUED and words:
                words[-1] += " " + word  # a line may end with "−" or "×", never start with it
            elif word:
                words.append(word)
        for word in words:
            trial = f"{line} {word}" if line else word
            if line and _text_width(trial, size) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return "\n".join(lines)


def _title(fig: Figure, title: str | None, headline: str, *details: str) -> None:
    """The figure's title: `title` when given, else a headline (what is shown) above detail lines (branch, steps,
    what the mean and band are over), each wrapped on word boundaries to the figure's width."""
    width = fig.get_figwidth() * 72 - 16  # points, less a margin
    lines = title.split("\n") if title is not None else [headline, *details]
    fig.suptitle("\n".join(_wrap(line, width, "medium") for line in lines), fontsize="medium")


def _label(text: str, chars: int = 32) -> str:
    """An axis label wrapped on word boundaries when longer than about `chars` characters (panels of a paper
    figure are short); `_fit_labels` wraps it further where its panel is shorter still."""
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties

    size = rcParams["axes.labelsize"]
    return _wrap(text, chars * 0.55 * FontProperties(size=size).get_size_in_points(), size)


def _vertical_labels(fig: Figure) -> list[tuple[Axes, Any, float]]:
    """(axes, label, room) for every vertical axis label (y labels, colour bar labels): room is the height of its
    axes in points, as the layout placed it."""
    out = []
    height = fig.get_figheight() * 72
    for ax in fig.axes:
        label = ax.yaxis.label
        if ax.get_visible() and label.get_visible() and label.get_text().strip() and label.get_rotation() % 180 == 90:
            out.append((ax, label, ax.get_position().height * height))
    return out


def _needed(label: Any) -> float:
    return max(_text_width(line, label.get_fontsize()) for line in label.get_text().split("\n")) + 6.0


def _fit_labels(fig: Figure) -> None:
    """Make every vertical axis label fit the length of its axes, so that the labels of stacked panels cannot run
    together: the figure grows (up to `MAX_HEIGHT` inches), then labels still longer than their axes are wrapped
    on word boundaries."""
    engine = fig.get_layout_engine()
    if engine is None:
        return
    for _ in range(4):
        engine.execute(fig)
        labels = _vertical_labels(fig)
        short = max((_needed(label) - room for _, label, room in labels), default=0.0)
        if short <= 0 or fig.get_figheight() >= MAX_HEIGHT:
            break
        rows = len({round(ax.get_position().y0, 3) for ax, _, _ in labels}) or 1
        fig.set_figheight(min(MAX_HEIGHT, fig.get_figheight() + rows * short / 72 + 0.05))
    for _, label, room in _vertical_labels(fig):
        if _needed(label) > room:
            label.set_text(_wrap(" ".join(label.get_text().split("\n")), max(room - 6.0, 36.0), label.get_fontsize()))
    engine.execute(fig)


def _legend_above(ax: Axes, **kwargs: Any) -> None:
    """The axes' legend outside it, just above its top edge (never over the data), in as many columns as fit
    the axes' width (measured: the layout is run, the legend laid out, and redone with fewer columns while it
    is wider; a legend wider than its axes would make the constrained layout give up)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    fig = ax.figure
    fig.get_layout_engine().execute(fig)
    room = 0.95 * ax.get_position().width * fig.get_figwidth() * fig.dpi  # pixels, a margin for later labels
    for ncol in range(len(labels), 0, -1):
        legend = ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=ncol, frameon=False,
                           borderaxespad=0.0, handlelength=1.5, columnspacing=1.2, **kwargs)
        if legend.get_window_extent().width <= room:  # the figure's own renderer
            break


def _layer_axis(ax: Axes, layers: list[str], max_ticks: int = 24) -> None:
    """Layers in depth order on x, named; thinned to at most `max_ticks` labels; group boundaries dotted."""
    step = max(1, math.ceil(len(layers) / max_ticks))
    ticks = list(range(0, len(layers), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([layers[i] for i in ticks], rotation=90 if len(layers) > 8 else 30,
                       ha="center" if len(layers) > 8 else "right")
    ax.set_xlim(-0.5, len(layers) - 0.5)
    groups = [re.sub(r"\.?\d+$", "", name) for name in layers]
    for i in range(1, len(layers)):
        if groups[i] != groups[i - 1]:
            ax.axvline(i - 0.5, color="0.4", linestyle=":", linewidth=0.8, zorder=0)


def _mark_layers(ax: Axes, weak: list[int], responsive: list[int], legend: bool) -> None:
    """Shade the weak layers; mark the responsive ones with a triangle at the top of the panel."""
    for i, pos in enumerate(weak):
        span = ax.axvspan(pos - 0.5, pos + 0.5, color=WEAK_COLOR, alpha=0.25, linewidth=0, zorder=0,
                          label="semantic-weak layer" if legend and i == 0 else None)
        span.set_gid("weak")
    if responsive:
        ax.margins(y=0.15)  # headroom, so that the triangles sit above the data
        ax.plot(responsive, [0.96] * len(responsive), linestyle="none", marker="v", markersize=6,
                color=RESPONSIVE_COLOR, transform=ax.get_xaxis_transform(), clip_on=False, gid="responsive",
                label="responsive layer" if legend else None)


def _profile_line(
    sns: Any, ax: Axes, table: pd.DataFrame, color: Any, label: str | None, n_boot: int, linestyle: str = "-"
) -> None:
    """Per-layer mean of the samples with seaborn's 95 % bootstrap band (fixed seed: reproducible)."""
    sns.lineplot(data=table, x="layer", y="value", errorbar=("ci", 95), n_boot=n_boot, seed=0, estimator="mean",
                 color=color, marker="o", markersize=4, linewidth=1.5, linestyle=linestyle, label=label, ax=ax)


