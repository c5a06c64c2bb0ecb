"""Every figure of fglens.plot (and the evaluation's category figure), drawn for Wan, Wan2.2 and HunyuanVideo
runs, is checked for collisions once rendered (issue 13, item 5): no two visible texts overlap (titles, the
suptitle, axis labels, tick labels of one axis or of neighbours, legend texts, colour bar labels, annotations),
no text leaves the canvas, no title breaks inside "95 % CI", and no legend lies over data (lines, markers,
confidence bands, bars, the weak-layer band).

Overlap is measured on the rendered boxes (``get_window_extent``) at 100 dpi; rotated texts are compared as the
rotated rectangles they are (not their axis-aligned hulls), and two boxes collide when they interpenetrate by
more than `TOLERANCE` pixels along every separating direction.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import Collection
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.transforms import Bbox

import fglens as fg
from fglens import plot, testing

TOLERANCE = 1.5  # pixels at 100 dpi: touching boxes (font ascent / descent padding) are not collisions
WORDS = ("dog", "jumps", "fence")
FAMILIES = ("wan", "wan22", "hunyuan")


# ----------------------------------------------------------------------------------------------------------
# the checker
# ----------------------------------------------------------------------------------------------------------


def _drawn_texts(fig) -> list[Text]:
    """Every Text the last draw put on the canvas: visible, non-empty, its axes visible, and for tick labels
    only the ticks inside the view (`Axis._update_ticks`, what `Axis.draw` draws)."""
    tick_labels, drawn = set(), set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_labels.update((id(tick.label1), id(tick.label2)))
            for tick in axis._update_ticks():  # the ticks Axis.draw draws
                drawn.update(id(t) for t in (tick.label1, tick.label2) if t.get_visible())
    out = []
    for text in fig.findobj(Text):
        if not text.get_visible() or not text.get_text().strip():
            continue
        if id(text) in tick_labels and id(text) not in drawn:
            continue
        parent = text.axes
        if parent is not None and not parent.get_visible():
            continue
        legend = next((lg for lg in _legends(fig) if text in lg.get_texts() or text is lg.get_title()), None)
        if legend is not None and not legend.get_visible():
            continue
        out.append(text)
    return out


def _legends(fig) -> list:
    return [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)


def _corners(text: Text, renderer) -> np.ndarray:
    """The four corners (display pixels) of the text's box, rotated as drawn."""
    box = text.get_window_extent(renderer)
    angle = text.get_rotation() % 180
    if angle == 0:
        return np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]])
    rotation = text.get_rotation()
    text.set_rotation(0)
    try:
        flat = text.get_window_extent(renderer)
    finally:
        text.set_rotation(rotation)
    w, h = flat.width, flat.height
    theta = math.radians(rotation)
    r = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    centre = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
    return centre + half @ r.T


def _penetration(a: np.ndarray, b: np.ndarray) -> float:
    """How deep two convex polygons interpenetrate: the smallest overlap of their projections over the
    separating-axis candidates (edge normals of both); <= 0 when they are apart."""
    depth = math.inf
    for poly in (a, b):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            norm = np.hypot(*edge)
            if norm == 0:
                continue
            axis = np.array([-edge[1], edge[0]]) / norm
            pa, pb = a @ axis, b @ axis
            depth = min(depth, min(pa.max(), pb.max()) - max(pa.min(), pb.min()))
    return depth


def _describe(text: Text) -> str:
    """The text, and which panel it belongs to (its title, else its y label), for the failure message."""
    fig = text.figure
    owner = next((ax for ax in fig.axes if text in ax.findobj(Text)), None)
    where = "the figure" if owner is None else repr(owner.get_title() or owner.get_ylabel() or "a panel")
    return f"{text.get_text()!r} (in {where})"


def text_collisions(fig) -> list[str]:
    """Pairs of drawn texts whose boxes overlap by more than TOLERANCE pixels, and texts leaving the canvas."""
    renderer = fig.canvas.get_renderer()
    texts = _drawn_texts(fig)
    boxes = [(t, _corners(t, renderer)) for t in texts]
    problems = []
    for (ta, ca), (tb, cb) in itertools.combinations(boxes, 2):
        depth = _penetration(ca, cb)
        if depth > TOLERANCE:
            problems.append(f"{_describe(ta)} overlaps {_describe(tb)} by {depth:.1f} px")
    width, height = fig.canvas.get_width_height()
    for text, corners in boxes:
        if (corners[:, 0].min() < -TOLERANCE or corners[:, 1].min() < -TOLERANCE
                or corners[:, 0].max() > width + TOLERANCE or corners[:, 1].max() > height + TOLERANCE):
            problems.append(f"{_describe(text)} leaves the canvas")
    return problems


def _clipped(box: Bbox, artist) -> Bbox | None:
    """`box` cut to the artist's clip box (the axes), or None when nothing is left."""
    clip = artist.get_clip_box() if artist.get_clip_on() else None
    return box if clip is None else Bbox.intersection(box, clip)


def _inset(box: Bbox, by: float) -> Bbox | None:
    if box.width <= 2 * by or box.height <= 2 * by:
        return None
    return Bbox.from_extents(box.x0 + by, box.y0 + by, box.x1 - by, box.y1 - by)


def legends_over_data(fig) -> list[str]:
    """Legends whose box (less TOLERANCE on each side) meets a data artist of any axes: a line or its markers,
    a confidence band or other collection, a bar or a shaded span."""
    renderer = fig.canvas.get_renderer()
    problems = []
    for legend in _legends(fig):
        if not legend.get_visible():
            continue
        box = _inset(legend.get_window_extent(renderer), TOLERANCE)
        if box is None:
            continue
        for ax in fig.axes:
            for artist in [*ax.lines, *ax.collections, *ax.patches]:
                if not artist.get_visible():
                    continue
                where = _clipped(box, artist)
                if where is None:
                    continue
                if _meets(artist, where, renderer):
                    name = artist.get_label() if not str(artist.get_label()).startswith("_") else type(artist).__name__
                    problems.append(f"the legend {[t.get_text() for t in legend.get_texts()]} covers {name!r} "
                                    f"(gid {artist.get_gid()!r}) in the axes {ax.get_ylabel()!r}")
    return problems


def _meets(artist, box: Bbox, renderer) -> bool:
    if isinstance(artist, Line2D):
        path = artist.get_transform().transform_path(artist.get_path())
        if len(path.vertices) > 1 and artist.get_linestyle() not in ("None", "none", "", " ") \
                and path.intersects_bbox(box, filled=False):
            return True
        if artist.get_marker() not in (None, "None", "none", "", " "):
            reach = artist.get_markersize() * _dpi(artist) / 72 / 2
            x, y = path.vertices.T
            return bool(np.any((x > box.x0 - reach) & (x < box.x1 + reach) & (y > box.y0 - reach)
                               & (y < box.y1 + reach)))
        return False
    if isinstance(artist, Collection):
        transform = artist.get_transform()
        return any(transform.transform_path(p).intersects_bbox(box, filled=True) for p in artist.get_paths())
    if isinstance(artist, Patch):
        extent = artist.get_window_extent(renderer)
        return extent.width > 0 and extent.height > 0 and box.overlaps(extent)
    return False


def _dpi(artist) -> float:
    return artist.figure.dpi


def check_layout(fig) -> None:
    """Fail with every collision of a rendered figure listed."""
    FigureCanvasAgg(fig)  # the figures are bare Figures: give them a raster canvas to draw on
    fig.set_dpi(100)
    fig.canvas.draw()
    problems = text_collisions(fig) + legends_over_data(fig)
    for text in _drawn_texts(fig):
        lines = text.get_text().split("\n")
        problems += [f"{_describe(text)}: a line starts with {line.strip()[:4]!r} (wrapped inside a unit)"
                     for line in lines[1:] if line.strip().startswith(("%", "CI", "×", "−"))]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------------------
# the runs: one recording per family, an edited copy made by arithmetic (the layout is what is tested here)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(wan_i2v, wan22) -> dict[str, xr.Dataset]:
    hunyuan = testing.tiny_hunyuan_i2v_pipeline()
    return {
        "wan": testing.tiny_run("wan", words=WORDS, pipe=wan_i2v),
        "wan22": testing.tiny_run("wan", words=WORDS, pipe=wan22),
        "hunyuan": testing.tiny_run("hunyuan", words=WORDS, pipe=hunyuan),
    }


def _edited(ds: xr.Dataset) -> xr.Dataset:
    """The run as if edited on its second layer over the first half of the steps (values shifted there)."""
    out = ds.copy(deep=True)
    layer = str(ds.layer.values[1])
    for var in ("similarity", "morans_i", "word_mass"):
        out[var].loc[{"layer": layer, "step": ds.step.values[:1]}] += 0.2
    out.attrs["intervention"] = json.dumps({"type": "Scale", "words": ["dog"], "factor": 3.0, "where": {
        "layers": [layer], "steps": [0.0, 0.5], "branches": ["cond"], "frames": None, "heads": None}})
    return out


def _weak(ds: xr.Dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Wan2.2: the second expert has no score in the first half
        return fg.find_weak_layers(ds)


def _figures(family: str, ds: xr.Dataset):
    """(name, draw) for every figure `fglens plot` writes for a run of this family, and more variables."""
    weak = _weak(ds)
    stats = [v for v in plot.PROFILE_VARS if v in ds.data_vars]
    yield "layer_profile", lambda: plot.layer_profile(ds, weak=weak, n_boot=50)
    yield "layer_profile(4 vars)", lambda: plot.layer_profile(
        ds, weak=weak, vars=("similarity", "morans_i", "word_mass", "entropy"), n_boot=50)
    for var in stats:
        yield f"layer_step_heatmap({var})", lambda var=var: plot.layer_step_heatmap(ds, var=var)
    yield "layer_step_heatmap(edited)", lambda: plot.layer_step_heatmap(_edited(ds), var="word_mass")
    yield "word_maps", lambda: plot.word_maps(ds, "dog")
    yield "word_maps(shared)", lambda: plot.word_maps(ds, "fence", shared_scale=True)
    if "text_share" in ds.data_vars or "text_mass" in ds.data_vars:
        yield "condition_balance", lambda: plot.condition_balance(ds, n_boot=50)
    for var in ("similarity", "morans_i"):
        yield f"compare({var})", lambda var=var: plot.compare(
            ds, _edited(ds), var=var, labels=("without", "with Scale"), weak=weak, n_boot=50)


@pytest.mark.parametrize("family", FAMILIES)
def test_run_figures_have_no_colliding_text_and_no_legend_over_data(family, runs):
    failures = []
    for name, draw in _figures(family, runs[family]):
        try:
            with warnings.catch_warnings():  # a layout that gave up is a failure too
                warnings.filterwarnings("error", message="constrained_layout not applied")
                check_layout(draw())
        except (AssertionError, UserWarning) as exc:
            failures.append(f"{family} {name}:\n  " + str(exc).replace("\n", "\n  "))
    assert not failures, "\n".join(failures)


def test_anchor_figures_have_no_colliding_text():
    torch.manual_seed(0)
    clip = fg.anchors.Clip(fg.anchors.tiny_config())
    image = testing.reference_image(96, 64)
    anchor = fg.AnchorMask.from_clip(image, "a dog jumps over the fence", ["dog", "fence"], clip)
    check_layout(plot.anchor(image, anchor))
    mask = torch.zeros(4, 6)
    mask[1:3, 1:4] = 1.0
    check_layout(plot.anchor(image, fg.AnchorMask.from_mask(mask, "dog")))


def _eval_results(items: int, missing: bool, worse: bool = False) -> xr.Dataset:
    """Scores of `items` items x 2 seeds x 2 conditions x 3 scorers; `missing`: no judge; `worse`: the
    intervention below the baseline everywhere (all differences negative: the panel's top is near 0, where the
    old figure wrote "missing" upwards into the panel's title)."""
    rng = np.random.default_rng(0)
    scorers = ["motion", "clip_text", "judge"]
    score = rng.uniform(size=(items, 2, 2, len(scorers)))
    if worse:
        score[:, :, 1] = score[:, :, 0] - 0.2 - 0.05 * rng.uniform(size=score[:, :, 0].shape)
    if missing:
        score[..., 2] = np.nan  # no judge
    categories = (["object_motion", "camera_motion"] * items)[:items]
    results = xr.Dataset(
        {"score": (("item", "seed", "condition", "scorer"), score)},
        coords={"item": [f"item{i}" for i in range(items)], "condition": ["baseline", "intervention"],
                "scorer": scorers, "category": ("item", categories)})
    results["total"] = results["score"].mean("scorer", skipna=True)
    return results


@pytest.mark.parametrize(("items", "missing", "worse"), [(12, False, False), (4, True, True)])
def test_eval_figures_have_no_colliding_text_and_no_legend_over_data(items, missing, worse):
    from fglens.eval.report import category_figure
    from fglens.eval.stats import summarize

    results = _eval_results(items, missing, worse)
    summary = summarize(results, n_resamples=200)
    for category in (str(c) for c in summary.category.values):
        check_layout(category_figure(summary, category, results=results))
