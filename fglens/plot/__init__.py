"""The paper's figures, drawn with seaborn: per-layer profiles, layer x step heatmaps, word maps, the balance
of the conditions, before/after comparisons and CLIP anchors.

Every function returns a `matplotlib.figure.Figure` and, given ``path=``, saves it there (any format matplotlib
knows from the suffix: .png, .pdf, .svg, ...; parent folders are created; ``dpi=200`` by default). Figures are
built as bare `Figure` objects, not through pyplot: nothing is shown, no global figure is opened or closed,
and the matplotlib backend is left as it is (a notebook's inline backend displays the returned figure).

Accepted run inputs (the ``ds`` argument): one run `xarray.Dataset`; a Dataset with a ``run`` dim (`fg.open_runs`:
runs stacked on ``run``, words possibly NaN-padded, word names in a ``word_label`` coordinate); or a list of
either. Runs are joined as rows of samples, never as arrays, so their words may differ; their layers must
agree. ``branch="cond"`` by default; ``steps`` selects as in `fg.find_weak_layers` and `fg.Where`: a pair of
floats is a half-open fraction of the schedule (``(0.0, 0.5)``: the first half), ints are step indices, None
is every recorded step. Titles say which branch and steps a figure shows.

Confidence bands are seaborn's 95 % bootstrap intervals of the mean (``errorbar=("ci", 95)``, fixed seed) over
the samples named in each figure's title: runs x steps x words x frames, with frames (then steps) averaged
first when a layer would otherwise get more than ``max_samples`` rows. Samples within a run are correlated
(neighbouring frames and steps), so the band is a measure of spread across what was recorded, narrower than
a band over independent prompts would be; record several prompts and seeds for a band over prompts.

Layout (checked by ``tests/test_plot_layout.py`` on Wan2.1, Wan2.2 and HunyuanVideo runs): legends sit above
the top panel, never over the data; titles and labels wrap between words; a figure grows until each vertical
label fits its panel. On a heatmap of an edited run the cells its intervention acts on are outlined.

Example:
    >>> import fglens as fg
    >>> ds = fg.testing.tiny_run("wan", words=("dog", "fence"))
    >>> fig = fg.plot.layer_profile(ds, weak=["blocks.2"])
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['text–visual similarity S', "Moran's I of the word map"]
"""

from .anchor import anchor
from .balance import condition_balance
from .compare import compare
from .heatmap import layer_step_heatmap
from .layout import (  # noqa: F401 (the constants figures share, for users and tests)
    CI,
    COLUMN_WIDTH,
    DPI,
    FSG,
    LABELS,
    MAX_HEIGHT,
    MAX_SAMPLES,
    PAGE_WIDTH,
    PROFILE_VARS,
    RESPONSIVE_COLOR,
    SHORT,
    SIGNED,
    UNDERLAYS,
    WEAK_COLOR,
)
from .maps import word_maps
from .profile import layer_profile

__all__ = ["anchor", "compare", "condition_balance", "layer_profile", "layer_step_heatmap", "word_maps"]
