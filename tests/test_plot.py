"""fglens.plot: every figure renders headless to a PNG, with labelled axes, for Wan and HunyuanVideo runs; the
plotted numbers are the Dataset's own means, computed here independently with xarray; clear errors."""

import json
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.patches import Rectangle
from PIL import Image

import fglens as fg
from fglens import plot, testing
from fglens.plot import layout

DPI = 50  # small files: the tests check content, not looks
WORDS = ("dog", "jumps", "fence")


@pytest.fixture(scope="module")
def wan_pipe():
    return testing.tiny_wan_i2v_pipeline()


@pytest.fixture(scope="module")
def wan(wan_pipe):
    return testing.tiny_run("wan", words=WORDS, maps=True, pipe=wan_pipe)


@pytest.fixture(scope="module")
def wan_seed1(wan_pipe):
    return testing.tiny_run("wan", words=WORDS, maps=True, seed=1, pipe=wan_pipe)


@pytest.fixture(scope="module")
def hunyuan():
    return testing.tiny_run("hunyuan", words=WORDS, maps=True, pipe=testing.tiny_hunyuan_i2v_pipeline())


@pytest.fixture(scope="module")
def wan22_run(wan22):
    return testing.tiny_run("wan", words=("dog",), maps=True, pipe=wan22)


@pytest.fixture(params=["wan", "hunyuan"])
def run(request, wan, hunyuan):
    return {"wan": wan, "hunyuan": hunyuan}[request.param]


def _png(path) -> None:
    """A real, non-empty PNG file."""
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 50 and image.height > 50


def _title(fig) -> str:
    text = fig.get_suptitle()
    assert text.strip(), "the figure has no title"
    return text


def _per_layer(ds: xr.Dataset, var: str, steps=None) -> np.ndarray:
    """Independent reference: mean over everything but the layer (NaN skipped), cond branch."""
    da = ds[var].sel(branch="cond")
    if steps is not None:
        da = da.sel(step=steps)
    return da.mean([d for d in da.dims if d != "layer"], skipna=True).values.astype(float)


def _band(ax, x: float) -> tuple[float, float]:
    """The (low, high) of the confidence band drawn at x."""
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert bands, "no confidence band drawn"
    verts = bands[0].get_paths()[0].vertices
    ys = verts[np.isclose(verts[:, 0], x), 1]
    return float(ys.min()), float(ys.max())


# ----------------------------------------------------------------------------------------------------------
# layer_profile
# ----------------------------------------------------------------------------------------------------------


def test_layer_profile_draws_the_per_layer_means_with_weak_layers_shaded(run, tmp_path):
    layers = [str(v) for v in run.layer.values]
    weak = SimpleNamespace(weak=[layers[1], layers[2]], responsive=[layers[3]])  # duck-typed WeakLayers
    path = tmp_path / "profile.png"
    fig = plot.layer_profile(run, weak=weak, path=path, dpi=DPI)
    _png(path)
    assert "cond branch" in _title(fig) and "all steps" in _title(fig)
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == [plot.LABELS["similarity"], plot.LABELS["morans_i"]]
    assert axes[-1].get_xlabel() == "layer (depth order)"
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == layers
    for ax, var in zip(axes, ("similarity", "morans_i"), strict=True):
        line = next(line for line in ax.lines if line.get_gid() != "responsive" and len(line.get_xdata()) > 1)
        np.testing.assert_array_equal(line.get_xdata(), np.arange(len(layers)))
        np.testing.assert_allclose(line.get_ydata(), _per_layer(run, var), rtol=1e-5, atol=1e-7)
        spans = sorted(p.get_x() for p in ax.patches if isinstance(p, Rectangle) and p.get_gid() == "weak")
        assert spans == [0.5, 1.5]  # layers 1 and 2, each ±0.5 around its position
        marks = [line for line in ax.lines if line.get_gid() == "responsive"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [3]
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["semantic-weak layer", "responsive layer"]


def test_layer_profile_steps_fraction_and_plain_list_of_weak_layers(wan):
    fig = plot.layer_profile(wan, weak=["blocks.3", 0], vars="word_mass", steps=(0.0, 0.5), n_boot=200)
    assert "first half: steps 0" in _title(fig)
    (ax,) = fig.axes
    line = next(line for line in ax.lines if len(line.get_xdata()) > 1)
    np.testing.assert_allclose(line.get_ydata(), _per_layer(wan, "word_mass", steps=[0]), rtol=1e-5)
    spans = sorted(p.get_x() for p in ax.patches if p.get_gid() == "weak")
    assert spans == [-0.5, 2.5]


def test_layer_profile_says_over_which_steps_the_weak_layers_were_found(wan):
    """find_weak_layers scores the first half by default, the profile draws all steps: the title says so (issue 12,
    item 15); it says nothing extra when the steps are the same."""
    weak = fg.find_weak_layers(wan, exclude_edges=0.0)
    note = "weak / responsive layers: fg.find_weak_layers over first half: steps 0"
    fig = plot.layer_profile(wan, weak=weak, vars="similarity", n_boot=50)
    assert "all steps" in _title(fig) and note in " ".join(_title(fig).split())
    fig = plot.layer_profile(wan, weak=weak, vars="similarity", steps=(0.0, 0.5), n_boot=50)
    assert "fg.find_weak_layers over" not in _title(fig)
    everything = fg.find_weak_layers(wan, exclude_edges=0.0, steps=None)
    assert "fg.find_weak_layers over" not in _title(plot.layer_profile(wan, weak=everything, vars="similarity",
                                                                       n_boot=50))
    fig = plot.compare(wan, wan, weak=weak, var="similarity", n_boot=50)
    assert note in " ".join(_title(fig).split())


def test_layer_profile_over_several_runs_draws_bands_and_stacked_runs_match_the_list(wan, wan_seed1):
    fig = plot.layer_profile([wan, wan_seed1], vars=("similarity",), dpi=DPI)
    assert "2\u00a0runs" in _title(fig)
    ax = fig.axes[0]
    line = next(line for line in ax.lines if len(line.get_xdata()) > 1)
    pooled = xr.concat([wan.similarity, wan_seed1.similarity], dim="run")
    expected = _per_layer(pooled.to_dataset(), "similarity")
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-5)
    for x, mean in enumerate(expected):
        low, high = _band(ax, x)
        assert low < mean < high  # a real band around the mean, not a line
    # the same two runs stacked on a `run` dim (as fg.open_runs returns them) give the same figure data
    stacked = xr.concat([wan, wan_seed1], dim="run", coords="minimal", compat="override", combine_attrs="override")
    stacked = stacked.assign_coords(run=["a", "b"], word_label=(("run", "word"), [list(WORDS)] * 2))
    again = plot.layer_profile(stacked, vars=("similarity",))
    line2 = next(line for line in again.axes[0].lines if len(line.get_xdata()) > 1)
    np.testing.assert_allclose(line2.get_ydata(), line.get_ydata(), rtol=1e-6)


def _stack(runs: dict[str, xr.Dataset]) -> xr.Dataset:
    """Runs stacked on a `run` dim as fg.open_runs describes it: words become slots 0..max-1, NaN-padded, with
    their names in a (run, word) `word_label` coordinate."""
    slots = max(d.sizes["word"] for d in runs.values())
    labels, parts = [], []
    for d in runs.values():
        labels.append([str(w) for w in d.word.values] + [""] * (slots - d.sizes["word"]))
        parts.append(d.assign_coords(word=np.arange(d.sizes["word"])).reindex(word=np.arange(slots)))
    stacked = xr.concat(parts, dim="run", coords="minimal", compat="override", combine_attrs="override")
    return stacked.assign_coords(run=list(runs), word_label=(("run", "word"), labels))


def test_runs_stacked_with_padded_words(wan, wan_seed1):
    stacked = _stack({"a": wan, "b": wan_seed1.sel(word=["fence"])})
    assert np.isnan(stacked.similarity.sel(run="b", word=2)).all()  # the padding
    fig = plot.layer_profile(stacked, vars=("similarity",))
    line = next(line for line in fig.axes[0].lines if len(line.get_xdata()) > 1)
    # pooled samples: 3 words of run a and 1 word of run b, every step and frame
    pooled = np.concatenate([
        wan.similarity.sel(branch="cond").transpose("layer", ...).values.reshape(4, -1),
        wan_seed1.similarity.sel(branch="cond", word=["fence"]).transpose("layer", ...).values.reshape(4, -1),
    ], axis=1)
    np.testing.assert_allclose(line.get_ydata(), pooled.mean(axis=1), rtol=1e-5)
    maps = plot.word_maps(stacked, "fence", run="b", layers=[0], frames=[0])
    expected = wan_seed1.word_map.sel(branch="cond", word="fence", layer="blocks.0", frame=0).mean("step").values
    np.testing.assert_allclose(np.asarray(maps.axes[0].images[-1].get_array()), expected, rtol=1e-6)  # the map: on top
    with pytest.raises(ValueError, match=r"unknown word 'dog'; the run's words are \['fence'\]"):
        plot.word_maps(stacked, "dog", run="b")
    with pytest.raises(ValueError, match=r"unknown run 'c'.*\['a', 'b'\]"):
        plot.word_maps(stacked, "dog", run="c")


def test_layer_profile_averages_frames_first_past_max_samples(wan):
    fig = plot.layer_profile(wan, vars=("similarity",), max_samples=5)
    assert "frame-averaged" in _title(fig)
    line = next(line for line in fig.axes[0].lines if len(line.get_xdata()) > 1)
    # mean of frame means = mean over all (same number of frames everywhere, no NaN in similarity)
    np.testing.assert_allclose(line.get_ydata(), _per_layer(wan, "similarity"), rtol=1e-5)


def test_many_layers_thin_the_tick_labels_and_many_samples_are_averaged():
    """A synthetic 40-layer run (Wan-14B depth): every 2nd layer named, frames then steps averaged."""
    rng = np.random.default_rng(0)
    layers = [f"blocks.{i}" for i in range(40)]
    ds = xr.Dataset(
        {"similarity": (("branch", "step", "layer", "word", "frame"), rng.normal(size=(1, 10, 40, 2, 3)))},
        coords={"branch": ["cond"], "step": np.arange(10), "layer": layers, "word": ["dog", "cat"],
                "frame": np.arange(3)},
    )
    fig = plot.layer_profile(ds, weak=["blocks.17"], vars="similarity", max_samples=10, n_boot=100)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == layers[::2]
    assert "(frame-averaged, step-averaged)" in _title(fig)
    line = next(line for line in ax.lines if len(line.get_xdata()) > 1)
    np.testing.assert_allclose(line.get_ydata(), _per_layer(ds, "similarity"), rtol=1e-10)
    assert [p.get_x() for p in ax.patches if p.get_gid() == "weak"] == [16.5]


# ----------------------------------------------------------------------------------------------------------
# layer_step_heatmap
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("var", ["similarity", "entropy"])
def test_layer_step_heatmap_cells_are_the_means_over_words_and_frames(run, var, tmp_path):
    path = tmp_path / "heat.png"
    fig = plot.layer_step_heatmap(run, var=var, path=path, dpi=DPI)
    _png(path)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "denoising step (timestep)" and ax.get_ylabel() == "layer (depth order)"
    assert fig.axes[1].get_ylabel() == plot.LABELS[var]  # the colour bar says what the colour is
    _title(fig)
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    da = run[var].sel(branch="cond")
    expected = da.mean([d for d in da.dims if d not in ("layer", "step")]).transpose("layer", "step").values
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(expected.shape), expected, rtol=1e-5)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == [f"{s}\n{t:.0f}" for s, t in zip(run.step.values, run.timestep.values, strict=True)]
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(v) for v in run.layer.values]


def test_layer_step_heatmap_says_what_it_averages_its_range_and_centres_signed_statistics(wan):
    """Honest labels and colours (issue 13): no "words" for a variable without words, "Moran's I" spelled so,
    the cells' range in the subtitle, a diverging map centred on 0 for signed statistics, NaN cells keyed."""
    entropy = " ".join(_title(plot.layer_step_heatmap(wan, var="entropy")).split())
    assert "mean over frames" in entropy and "words" not in entropy
    grid = wan.entropy.sel(branch="cond").mean("frame")
    assert f"cells range {float(grid.min()):.4g} to {float(grid.max()):.4g}" in entropy
    fig = plot.layer_step_heatmap(wan, var="morans_i")
    text = " ".join(_title(fig).split())  # titles wrap to the figure's width
    assert text.startswith("Moran's I per layer") and "mean over words and frames" in text
    assert "centred on 0" in text
    mesh = next(c for c in fig.axes[0].collections if isinstance(c, QuadMesh))
    assert np.isclose(-mesh.norm.vmin, mesh.norm.vmax) and mesh.norm.vmax > 0        # symmetric about 0
    mesh_viridis = next(c for c in plot.layer_step_heatmap(wan, var="entropy").axes[0].collections
                        if isinstance(c, QuadMesh))
    assert mesh_viridis.cmap.name == "viridis"
    holes = wan.copy(deep=True)
    holes["similarity"].loc[{"layer": "blocks.0"}] = np.nan
    assert "hatched grey: no value (NaN)" in " ".join(_title(plot.layer_step_heatmap(holes, var="similarity")).split())


def test_layer_step_heatmap_of_several_runs_is_the_mean_of_the_runs(wan, wan_seed1):
    fig = plot.layer_step_heatmap([wan, wan_seed1], var="word_mass")
    mesh = next(c for c in fig.axes[0].collections if isinstance(c, QuadMesh))
    per_run = [d.word_mass.sel(branch="cond").mean(("word", "frame")) for d in (wan, wan_seed1)]
    expected = ((per_run[0] + per_run[1]) / 2).transpose("layer", "step").values
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(expected.shape), expected, rtol=1e-5)
    assert "2\u00a0runs" in _title(fig)


def _outlined(fig) -> set[tuple[str, int]]:
    """The (layer, step) cells outlined as edited on a heatmap."""
    ax = fig.axes[0]
    layers = [t.get_text() for t in ax.get_yticklabels()]
    steps = [int(t.get_text().split("\n")[0]) for t in ax.get_xticklabels()]
    cells = set()
    for box in (p for p in ax.patches if p.get_gid() == "edited"):
        x0, y0 = round(box.get_x()), round(box.get_y())
        for dy in range(round(box.get_height())):
            for dx in range(round(box.get_width())):
                cells.add((layers[y0 + dy], steps[x0 + dx]))
    return cells


def test_layer_step_heatmap_outlines_the_cells_an_edit_acts_on(wan_pipe):
    """Issue 13, item 6: a recorded edit on layers 1 and 2 in the first half of 4 steps: exactly those 2 x 2
    cells are outlined and the subtitle names them; other branches and plain runs get no outline."""
    where = fg.Where(layers=[1, 2], steps=(0.0, 0.5), branches=("cond",))
    edited = testing.tiny_run("wan", words=("dog",), maps=False, pipe=wan_pipe, steps=4,
                              edit=fg.Scale(["dog"], 3.0, where=where))
    fig = plot.layer_step_heatmap(edited, var="word_mass")
    assert _outlined(fig) == {(layer, step) for layer in ("blocks.1", "blocks.2") for step in (0, 1)}
    text = " ".join(_title(fig).split())
    assert "outlined: the cells edited (Scale on blocks.1, blocks.2 at steps 0, 1)" in text
    assert _outlined(plot.layer_step_heatmap(edited, var="word_mass", steps=[1, 2, 3])) == {
        ("blocks.1", 1), ("blocks.2", 1)}
    plain = plot.layer_step_heatmap(edited.assign_attrs(intervention="null"), var="word_mass")
    assert _outlined(plain) == set() and "outlined" not in _title(plain)


def _with_edit(ds: xr.Dataset, spec: dict) -> xr.Dataset:
    return ds.assign_attrs(intervention=json.dumps(spec))


def test_edited_cells_follow_the_stored_scope_of_each_part(wan, wan22_run):
    """Read from the stored spec as fg.Where reads it: a layer index names that block of each transformer
    (Wan2.2's two experts), a CacheTransfer without where.layers edits its dst, parts are unioned, a part for
    another branch edits nothing here, step indices are steps."""
    fig = plot.layer_step_heatmap(_with_edit(wan22_run, {"type": "Scale", "where": {"layers": [1], "steps": [1]}}),
                                  var="word_mass")
    assert _outlined(fig) == {("blocks.1", 1), ("transformer_2.blocks.1", 1)}
    focal = {"type": "FocalGuidance", "parts": [
        {"type": "AnchorMask", "where": {"layers": ["blocks.1"], "steps": [0.0, 0.5], "branches": ["cond"]}},
        {"type": "CacheTransfer", "src": ["blocks.3"], "dst": ["blocks.2"], "where": {"steps": None}},
        {"type": "Ablate", "where": {"layers": [0], "branches": ["uncond"]}},
    ]}
    fig = plot.layer_step_heatmap(_with_edit(wan, focal), var="word_mass")
    assert _outlined(fig) == {("blocks.1", 0), ("blocks.2", 0), ("blocks.2", 1)}
    text = " ".join(_title(fig).split())
    assert "AnchorMask on blocks.1 at step 0; CacheTransfer on blocks.2 at steps 0, 1" in text
    assert "Ablate" not in text
    runs = [_with_edit(wan, focal), wan.assign_attrs(intervention="null")]
    assert "different interventions" in " ".join(_title(plot.layer_step_heatmap(runs, var="word_mass")).split())


# ----------------------------------------------------------------------------------------------------------
# word_maps
# ----------------------------------------------------------------------------------------------------------


def test_word_maps_grid_is_the_step_mean_map_over_the_image(run, tmp_path):
    path = tmp_path / "maps.png"
    fig = plot.word_maps(run, "dog", image=testing.reference_image(), path=path, dpi=DPI)
    _png(path)
    layers = [str(v) for v in run.layer.values]
    n_frames = run.sizes["frame"]
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == len(layers) * n_frames
    expected = run.word_map.sel(branch="cond", word="dog").mean("step").values  # (layer, frame, y, x)
    for i, ax in enumerate(panels):
        r, c = divmod(i, n_frames)
        background, overlay = ax.images  # the reference image in grey, then the map at alpha < 1
        assert background.get_array().ndim == 2 and background.get_cmap().name == "gray" and overlay.get_alpha() < 1
        np.testing.assert_allclose(np.asarray(overlay.get_array()), expected[r, c], rtol=1e-6)
        if c == 0:
            assert ax.get_ylabel() == layers[r]
        if r == 0:
            assert ax.get_title() == f"frame {c}"
    colorbars = [ax for ax in fig.axes if not ax.images]
    assert len(colorbars) == 1 and "dog" in colorbars[0].get_ylabel()  # one shared colour bar
    assert "“dog”" in _title(fig)


def _background(stored: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Independent expectation of the drawn background: the stored uint8 image, resized by PIL to the latent grid
    (``scale`` pixels per token, as the pipeline stretches the whole image to the grid's aspect), in grey (its
    brightness with the ITU-R BT.601 weights: an underlay that does not read as attention)."""
    scale = max(1, min(16, 512 // max(ny, nx)))
    resized = Image.fromarray(stored).resize((nx * scale, ny * scale), Image.Resampling.LANCZOS)
    rgb = np.asarray(resized, dtype=np.float64) / 255.0
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_word_maps_overlays_the_runs_own_reference_image(family, wan, hunyuan):
    run = {"wan": wan, "hunyuan": hunyuan}[family]
    given = np.asarray(testing.tiny_call_kwargs(family)["image"])  # small: kept pixel for pixel
    np.testing.assert_array_equal(run.reference_image.values, given)
    ny, nx = run.sizes["y"], run.sizes["x"]
    fig = plot.word_maps(run, "dog", layers=[0, 2], frames=[0])  # image=None: the run's own image
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    for ax in panels:
        background, overlay = ax.images
        np.testing.assert_allclose(np.asarray(background.get_array()), _background(given, ny, nx), atol=1e-6)
        assert overlay.get_alpha() < 1
    # drawn from the stored variable: another stored image gives another background
    other = (255 - run.reference_image).astype(np.uint8)
    fig = plot.word_maps(run.assign(reference_image=other), "dog", layers=[0], frames=[0])
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), _background(other.values, ny, nx),
                               atol=1e-6)
    assert len(plot.word_maps(run, "dog", layers=[0], frames=[0], image=False).axes[0].images) == 1
    explicit = testing.reference_image(96, 64)  # an image passed in wins over the stored one
    fig = plot.word_maps(run, "dog", layers=[0], frames=[0], image=explicit)
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()),
                               _background(np.asarray(explicit), ny, nx), atol=1e-6)


def test_word_maps_of_stacked_runs_cut_each_image_and_runs_without_one_plot_bare(wan_pipe, tmp_path):
    store = tmp_path / "images.zarr"
    images = {"a": testing.reference_image(48, 32), "b": testing.reference_image(640, 400)}
    kwargs = testing.tiny_call_kwargs("wan", steps=1)
    for run_id, image in images.items():
        with fg.trace(wan_pipe, record=fg.Record(words=["dog"], maps=True), store=store, run_id=run_id):
            wan_pipe(**{**kwargs, "image": image})
    with fg.trace(wan_pipe, record=fg.Record(words=["dog"], maps=True, image=False), store=store, run_id="c"):
        wan_pipe(**kwargs)
    stacked = fg.open_runs(store)
    ny, nx = stacked.sizes["y"], stacked.sizes["x"]
    for run_id, image in images.items():
        stored = np.asarray(image.resize((256, 160), Image.Resampling.LANCZOS)) if run_id == "b" else np.asarray(image)
        fig = plot.word_maps(stacked, "dog", run=run_id, layers=[0], frames=[0])
        background, _ = fig.axes[0].images
        np.testing.assert_allclose(np.asarray(background.get_array()), _background(stored, ny, nx), atol=1e-6)
    for data in (stacked, fg.open_run(store, run="c")):  # no image kept: the maps alone
        fig = plot.word_maps(data, "dog", run="c" if data is stacked else None, layers=[0], frames=[0])
        (only,) = fig.axes[0].images
        assert only.get_alpha() is None or only.get_alpha() == 1.0
        with pytest.raises(ValueError, match="image=True asks for the run's own reference image, and this run kept"):
            plot.word_maps(data, "dog", run="c" if data is stacked else None, image=True)


def test_word_maps_selects_layers_frames_and_steps(wan):
    fig = plot.word_maps(wan, "fence", layers=["blocks.3", 1], frames=[1], steps=[1], image=False)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_ylabel() for ax in panels] == ["blocks.3", "blocks.1"]
    expected = wan.word_map.sel(branch="cond", word="fence", step=1, frame=1)
    for ax, layer in zip(panels, ("blocks.3", "blocks.1"), strict=True):
        (image,) = ax.images  # image=False: the map alone
        np.testing.assert_allclose(np.asarray(image.get_array()), expected.sel(layer=layer).values, rtol=1e-6)
    alias = plot.word_maps(wan, "fence", layers=["blocks.3"], frames=[1], step=[1], image=False)  # old name
    np.testing.assert_allclose(np.asarray(alias.axes[0].images[0].get_array()),
                               expected.sel(layer="blocks.3").values, rtol=1e-6)
    with pytest.raises(TypeError, match="both steps= and its alias step="):
        plot.word_maps(wan, "fence", steps=[1], step=[0])


def test_word_maps_errors_say_what_exists(wan, wan_seed1):
    with pytest.raises(ValueError, match=r"fg.Record\(words=\['dog', 'jumps', 'fence'\], maps=True\)"):
        plot.word_maps(wan.drop_vars("word_map"), "dog")   # the exact line to record them, the run's words
    with pytest.raises(ValueError, match=r"unknown word 'cat'.*\['dog', 'jumps', 'fence'\]"):
        plot.word_maps(wan, "cat")
    with pytest.raises(ValueError, match=r"unknown layer 'blocks.9'.*blocks.0"):
        plot.word_maps(wan, "dog", layers=["blocks.9"])
    with pytest.raises(ValueError, match=r"unknown frame\(s\) \[5\].*\[0, 1\]"):
        plot.word_maps(wan, "dog", frames=[5])
    with pytest.raises(ValueError, match="choose one with run="):
        plot.word_maps([wan, wan_seed1], "dog")
    fig = plot.word_maps([wan, wan_seed1], "dog", run=1)
    first = next(ax for ax in fig.axes if ax.images)
    expected = wan_seed1.word_map.sel(branch="cond", word="dog", layer="blocks.0", frame=0).mean("step").values
    np.testing.assert_allclose(np.asarray(first.images[-1].get_array()), expected, rtol=1e-6)  # the map: on top


def test_word_maps_contour_underlay_draws_the_map_opaque_under_the_images_outlines(wan):
    """Issue 13, item 6: an underlay that cannot read as attention: the map at full opacity (its colours are the
    colour bar's), the reference image as white contour lines over it."""
    fig = plot.word_maps(wan, "dog", layers=[0], frames=[0], underlay="contours")
    ax = fig.axes[0]
    (only,) = ax.images
    assert only.get_alpha() in (None, 1.0)
    expected = wan.word_map.sel(branch="cond", word="dog", layer="blocks.0", frame=0).mean("step").values
    np.testing.assert_allclose(np.asarray(only.get_array()), expected, rtol=1e-6)
    assert ax.collections, "no contour lines of the image"
    assert [*ax.get_xlim(), *ax.get_ylim()] == list(only.get_extent())  # the contours do not widen the panel
    assert "contours of the reference image" in " ".join(_title(fig).split())
    assert "in grey" in " ".join(_title(plot.word_maps(wan, "dog", layers=[0], frames=[0])).split())
    with pytest.raises(ValueError, match=r"underlay must be one of \('grey', 'contours'\); got 'colour'"):
        plot.word_maps(wan, "dog", underlay="colour")


def test_word_maps_shared_scale_spans_every_words_maps(wan):
    """One colour scale across words (issue 13, item 6): the range of all recorded words' maps at the same
    layers, frames and steps; by default the word's own range."""
    maps = wan.word_map.sel(branch="cond", layer=["blocks.0", "blocks.2"], frame=[1]).mean("step")
    own = {w: plot.word_maps(wan, w, layers=[0, 2], frames=[1], image=False) for w in WORDS}
    shared = {w: plot.word_maps(wan, w, layers=[0, 2], frames=[1], image=False, shared_scale=True) for w in WORDS}
    for word in WORDS:
        assert own[word].axes[0].images[-1].norm.vmax == pytest.approx(float(maps.sel(word=word).max()))
        assert shared[word].axes[0].images[-1].norm.vmax == pytest.approx(float(maps.max()))
        assert "one colour scale for all words" in " ".join(_title(shared[word]).split())
        assert "colour scale of this word" in " ".join(_title(own[word]).split())
    assert len({own[w].axes[0].images[-1].norm.vmax for w in WORDS}) > 1  # the words' own ranges differ here


def test_word_maps_row_labels_read_horizontally(wan22_run):
    """Wan2.2's long layer names ("transformer_2.blocks.0") as vertical row labels ran into each other."""
    fig = plot.word_maps(wan22_run, "dog", frames=[0])
    rows = [ax for ax in fig.axes if ax.images]
    assert [ax.get_ylabel() for ax in rows] == [str(v) for v in wan22_run.layer.values]
    assert all(ax.yaxis.label.get_rotation() == 0 for ax in rows)


# ----------------------------------------------------------------------------------------------------------
# condition_balance
# ----------------------------------------------------------------------------------------------------------


def test_condition_balance_wan_is_text_share_per_layer(wan, tmp_path):
    path = tmp_path / "balance.png"
    fig = plot.condition_balance(wan, path=path, dpi=DPI)
    _png(path)
    (ax,) = fig.axes
    assert ax.get_ylabel() and ax.get_xlabel() == "layer (depth order)"
    assert "Text vs image" in _title(fig)
    line = next(line for line in ax.lines if len(line.get_xdata()) == wan.sizes["layer"])
    np.testing.assert_allclose(line.get_ydata(), _per_layer(wan, "text_share"), rtol=1e-5)
    assert any(list(line.get_ydata()) == [0.5, 0.5] for line in ax.lines)  # the equal-share reference


def test_condition_balance_hunyuan_stacks_text_image_and_video_mass(hunyuan, tmp_path):
    path = tmp_path / "balance.png"
    fig = plot.condition_balance(hunyuan, path=path, dpi=DPI)
    _png(path)
    top, bottom = fig.axes
    assert top.get_ylabel() == "share of attention" and bottom.get_ylabel() == "text mass"
    assert bottom.get_xlabel() == "layer (depth order)"
    text, image = _per_layer(hunyuan, "text_mass"), _per_layer(hunyuan, "image_mass")
    bars = {name: [p for p in top.patches if p.get_gid() == name] for name in ("text", "image-derived", "video")}
    np.testing.assert_allclose([p.get_height() for p in bars["text"]], text, rtol=1e-5)
    np.testing.assert_allclose([p.get_height() for p in bars["image-derived"]], image, rtol=1e-5)
    np.testing.assert_allclose([p.get_y() for p in bars["image-derived"]], text, rtol=1e-5)  # stacked
    np.testing.assert_allclose([p.get_height() for p in bars["video"]], 1 - text - image, rtol=1e-5)
    np.testing.assert_allclose([p.get_y() + p.get_height() for p in bars["video"]], 1.0, rtol=1e-6)
    line = next(line for line in bottom.lines if len(line.get_xdata()) > 1)
    np.testing.assert_allclose(line.get_ydata(), text, rtol=1e-5)


def test_condition_balance_without_image_tokens_stacks_text_and_video(hunyuan):
    """Joint attention without image-derived tokens (CogVideoX T2V): text and video only."""
    fig = plot.condition_balance(hunyuan.drop_vars("image_mass"))
    top = fig.axes[0]
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["text", "video"]
    video = [p.get_height() for p in top.patches if p.get_gid() == "video"]
    np.testing.assert_allclose(video, 1 - _per_layer(hunyuan, "text_mass"), rtol=1e-5)


def test_condition_balance_needs_a_balance_variable(wan):
    with pytest.raises(ValueError, match="needs text_share .* or text_mass"):
        plot.condition_balance(wan.drop_vars("text_share"))


# ----------------------------------------------------------------------------------------------------------
# compare
# ----------------------------------------------------------------------------------------------------------


def test_compare_before_after_an_edit(wan, wan_pipe, tmp_path):
    """A/B with the same seed: scaling the attention to 'dog' by 3 raises its word mass in every layer."""
    after = testing.tiny_run("wan", words=WORDS, maps=False, pipe=wan_pipe, edit=fg.Scale(["dog"], 3.0))
    before, after = wan.sel(word=["dog"]), after.sel(word=["dog"])
    path = tmp_path / "sub" / "dir" / "compare.png"  # parent folders are created
    fig = plot.compare(before, after, var="word_mass", labels=("plain", "dog ×3"), path=path, dpi=DPI)
    _png(path)
    top, bottom = fig.axes
    assert top.get_ylabel() == plot.LABELS["word_mass"] and "dog ×3 − plain" in bottom.get_ylabel()
    assert bottom.get_xlabel() == "layer (depth order)"
    assert "paired" in _title(fig)
    lines = [line for line in top.lines if len(line.get_xdata()) > 1]
    mean_a, mean_b = _per_layer(before, "word_mass"), _per_layer(after, "word_mass")
    np.testing.assert_allclose(lines[0].get_ydata(), mean_a, rtol=1e-5)
    np.testing.assert_allclose(lines[1].get_ydata(), mean_b, rtol=1e-5)
    diff = next(line for line in bottom.lines if len(line.get_xdata()) > 2)
    np.testing.assert_allclose(diff.get_ydata(), mean_b - mean_a, rtol=1e-4, atol=1e-7)
    assert (diff.get_ydata() > 0).all()
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["plain", "dog ×3"]


def test_compare_unpaired_inputs_and_mismatched_layers(wan, hunyuan, wan_seed1):
    fig = plot.compare(wan, wan_seed1.sel(word=["dog"]), var="similarity")
    assert "not paired" in _title(fig)
    diff = next(line for line in fig.axes[1].lines if len(line.get_xdata()) > 2)
    np.testing.assert_allclose(
        diff.get_ydata(), _per_layer(wan_seed1.sel(word=["dog"]), "similarity") - _per_layer(wan, "similarity"),
        rtol=1e-4, atol=1e-7,
    )
    with pytest.raises(ValueError, match="same layers.*blocks.0.*double.0"):
        plot.compare(wan, hunyuan)
    with pytest.raises(ValueError, match="same layers"):
        plot.compare(wan, wan.isel(layer=slice(0, 3)))


def test_compare_says_where_the_edit_acts_and_what_is_averaged(wan):
    """Issue 13, item 7: the edit acts on step 0 of 2; the figure averages all steps unless told otherwise, and
    says so; with steps= the edit's steps the means are where it acts, and nothing more is said."""
    spec = {"type": "Scale", "words": ["dog"], "where": {"layers": ["blocks.1"], "steps": [0.0, 0.5]}}
    edited = _with_edit(wan, spec)
    text = " ".join(_title(plot.compare(wan, edited, labels=("without", "with Scale"), n_boot=50)).split())
    assert "edit of “with Scale”: Scale on blocks.1 at step 0; means over all steps (0–1)" in text
    text = " ".join(_title(plot.compare(wan, edited, labels=("without", "with Scale"), steps=(0.0, 0.5),
                                        n_boot=50)).split())
    assert "edit of “with Scale”: Scale on blocks.1 at step 0" in text and "means over" not in text
    assert "edit of" not in _title(plot.compare(wan, wan, n_boot=50))


def test_legends_sit_above_the_axes_and_titles_break_between_words(wan):
    """Legends outside the data (above the top panel); "95 % CI" never split over two lines; operators never
    start a line."""
    weak = SimpleNamespace(weak=["blocks.1"], responsive=["blocks.3"])
    for fig in (plot.layer_profile(wan, weak=weak, n_boot=50), plot.compare(wan, wan, weak=weak, n_boot=50),
                plot.condition_balance(wan, n_boot=50)):
        legend = fig.axes[0].get_legend()
        assert legend.get_window_extent().y0 >= fig.axes[0].get_window_extent().y1
        assert "95\u00a0%\u00a0CI" in _title(fig)
    assert "95\u00a0%\u00a0CI" in layout._wrap("a mean, 95\u00a0%\u00a0CI over runs", 40, 9.6).split("\n")
    for width in range(20, 200, 5):
        lines = layout._wrap("Δ similarity (with Scale − without) × 2", width, 9.6).split("\n")
        assert not any(line.startswith(("−", "×")) for line in lines)
        assert " ".join(lines) == "Δ similarity (with Scale − without) × 2"


# ----------------------------------------------------------------------------------------------------------
# anchor
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return fg.anchors.Clip(fg.anchors.tiny_config())


def test_anchor_from_clip_draws_region_map_and_mask(clip, tmp_path):
    image = testing.reference_image(96, 64)
    anchor = fg.AnchorMask.from_clip(image, "a dog jumps over the fence", ["dog", "fence"], clip)
    path = tmp_path / "anchor.png"
    fig = plot.anchor(image, anchor, path=path, dpi=DPI)
    _png(path)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels[:3]] == [
        "reference image", "CLIP similarity (patches)", "anchor mask (latent grid)"
    ]
    assert [panels[0].get_ylabel(), panels[3].get_ylabel()] == ["“dog”", "“fence”"]
    for row, word in enumerate(("dog", "fence")):
        _, sim, mask = panels[3 * row : 3 * row + 3]
        np.testing.assert_allclose(np.asarray(sim.images[-1].get_array()), anchor.regions.similarity[word].numpy())
        np.testing.assert_allclose(np.asarray(mask.images[-1].get_array()), anchor.masks[row].numpy())
        assert sim.images[-1].get_extent() == mask.images[-1].get_extent() == [-0.5, 95.5, 63.5, -0.5]
    labels = [ax.get_ylabel() for ax in fig.axes if not ax.images]
    assert labels == ["cosine similarity", "mask M_w"] * 2
    assert "otsu" in _title(fig)
    assert "Fine-grained Semantic Guidance (FSG) anchors" in " ".join(_title(fig).split())  # FSG spelled out
    # one word only, and the anchor inside a FocalGuidance
    edit = fg.FocalGuidance(anchor=anchor, layers=[1])
    one = plot.anchor(image, edit, word="fence")
    assert len([ax for ax in one.axes if ax.images]) == 3


def test_anchor_from_mask_has_masks_only(tmp_path):
    mask = torch.zeros(4, 6)
    mask[1:3, 1:4] = 1.0
    anchor = fg.AnchorMask.from_mask(mask, "dog", strength=2.0)
    fig = plot.anchor(testing.reference_image(96, 64), anchor, path=tmp_path / "a.png", dpi=DPI)
    _png(tmp_path / "a.png")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["reference image", "anchor mask (latent grid)"]
    np.testing.assert_array_equal(np.asarray(panels[1].images[-1].get_array()), mask.numpy())
    assert "no CLIP regions" in _title(fig)
    no_image = plot.anchor(None, anchor)
    assert [ax.get_title() for ax in no_image.axes if ax.images] == ["anchor mask (latent grid)"]
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['cat'\].*\['dog'\]"):
        plot.anchor(None, anchor, word="cat")
    with pytest.raises(ValueError, match="nothing to draw"):
        plot.anchor(None, object())


# ----------------------------------------------------------------------------------------------------------
# inputs, saving, global state
# ----------------------------------------------------------------------------------------------------------


def test_bad_inputs_get_clear_errors(wan):
    with pytest.raises(TypeError, match="fg.plot takes a run xarray.Dataset"):
        plot.layer_profile({"similarity": 1})
    with pytest.raises(ValueError, match=r"no variable 'text_mass'.*Wan has text_share.*Variables present"):
        plot.layer_profile(wan, vars=("text_mass",))
    with pytest.raises(ValueError, match=r"branch 'uncond' was not recorded; recorded branches: \['cond'\]"):
        plot.layer_profile(wan, branch="uncond")
    with pytest.raises(ValueError, match=r"steps \[7\] were not recorded; recorded steps: \[0, 1\]"):
        plot.layer_step_heatmap(wan, steps=[7])
    with pytest.raises(ValueError, match="start <= stop"):
        plot.layer_profile(wan, steps=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"unknown layer 'blocks.40'; the run's layers are"):
        plot.layer_profile(wan, weak=["blocks.40"])
    with pytest.raises(ValueError, match="runs must have the same layers"):
        plot.layer_profile([wan, wan.isel(layer=[0, 1])])
    nan = wan.copy(deep=True)
    nan["similarity"][:] = np.nan
    with pytest.raises(ValueError, match="no recorded values of 'similarity'"):
        plot.layer_profile(nan, vars=("similarity",))


@pytest.mark.parametrize("suffix", ["pdf", "svg"])
def test_saves_in_the_format_of_the_suffix(wan, tmp_path, suffix):
    path = tmp_path / f"heat.{suffix}"
    plot.layer_step_heatmap(wan, path=path)
    head = path.read_bytes()[:200]
    assert head.startswith(b"%PDF") if suffix == "pdf" else b"<svg" in path.read_bytes()[:2000]


def test_unknown_suffix_is_refused_and_nothing_is_written(wan, tmp_path):
    with pytest.raises(ValueError, match="suffix must be one of"):
        plot.layer_step_heatmap(wan, path=tmp_path / "out" / "heat.xyz")
    assert not (tmp_path / "out").exists()


def test_figures_leave_pyplot_and_the_backend_alone(wan):
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    mine = plt.figure()  # a figure the user owns
    before, rc = plt.get_fignums(), dict(matplotlib.rcParams)
    fig = plot.layer_profile(wan)
    assert plt.get_fignums() == before and plt.fignum_exists(mine.number)
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == rc  # seaborn's paper style was scoped to the figure
    assert fig not in [plt.figure(n) for n in plt.get_fignums()]
    plt.close(mine)


# ----------------------------------------------------------------------------------------------------------
# the evaluation's category figure (fglens.eval.report)
# ----------------------------------------------------------------------------------------------------------


def test_eval_figure_draws_the_items_says_n_and_no_interval_from_two_items():
    """Issue 13, item 6: no 95 % interval drawn from one or two items (the items as dots, n under each metric);
    a missing scorer is said on its axis and in the title, not drawn as text into the panels."""
    from matplotlib.container import ErrorbarContainer

    from fglens.eval.report import MIN_ITEMS_FOR_CI, category_figure
    from fglens.eval.stats import summarize

    rng = np.random.default_rng(0)
    score = rng.uniform(size=(4, 2, 2, 2))
    score[..., 1] = np.nan  # the judge is missing
    results = xr.Dataset(
        {"score": (("item", "seed", "condition", "scorer"), score)},
        coords={"item": list("abcd"), "condition": ["baseline", "intervention"], "scorer": ["motion", "judge"],
                "category": ("item", ["small", "small", "other", "other"])})
    results["total"] = results["score"].mean("scorer", skipna=True)
    summary = summarize(results, n_resamples=200)
    assert MIN_ITEMS_FOR_CI == 3
    small = category_figure(summary, "small", results=results)
    top, bottom = small.axes
    assert not [c for ax in (top, bottom) for c in ax.containers if isinstance(c, ErrorbarContainer)]
    dots = [line for line in top.lines if line.get_gid() == "items"]
    assert sum(len(line.get_xdata()) for line in dots) == 2 * 2 * 2  # 2 items x 2 conditions x (motion, total)
    item_means = results["score"].sel(scorer="motion", condition="baseline").mean("seed").values[:2]
    np.testing.assert_allclose(sorted(dots[0].get_ydata()), sorted(item_means))
    ticks = [t.get_text() for t in bottom.get_xticklabels()]
    assert ticks == ["motion\nn\u00a0=\u00a02", "judge\n(no scores)", "total\nn\u00a0=\u00a02"]
    assert not top.texts and not bottom.texts
    assert "no scores (scorer missing): judge" in " ".join(small.get_suptitle().split())
    pooled = category_figure(summary, "all", results=results)  # 4 items: intervals drawn, for motion and total
    bars = [c for c in pooled.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and all(len(c.lines[2][0].get_segments()) == 2 for c in bars)
    assert [ax.get_ylabel() for ax in pooled.axes] == ["mean score", "intervention − baseline"]
