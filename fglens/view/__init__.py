"""An interactive viewer of recorded runs, in the browser and in notebooks (docs/viewer.md).

- ``fglens view runs.zarr``: a local page (`ViewServer`, 127.0.0.1, a free port) over the store's runs;
- ``fglens view runs.zarr --html run.html``: one self-contained HTML file (`export_html`);
- ``fg.view(ds, word="dog")``: the same viewer inline in a notebook (`Viewer`, its data embedded), or with
  ``lazy=True`` a widget that reads each view's data from the kernel when it is shown (`fglens.view.widget`);
- ``%load_ext fglens.view.notebook``: a run's Dataset shown in the notebook as that viewer (`fglens.view.notebook`).

The page shows the run list with a filter; for one run the layer x step heat map of any statistic and branch,
the weak and responsive layers marked (`fg.find_weak_layers`); a cell's word maps over the reference image, one
panel per latent frame, with a word picker, a step slider and a latent-frame player; two runs of the same seed
side by side with their difference; the condition balance per layer; the anchor mask of an anchored run; the
video kept with a run. Data are read lazily through `fg.open_run(load=False)` (`fglens.view.data`); the page
draws with plotly.js from the ``plotly`` package (``pip install 'fglens[view]'``), never from a CDN.

Example:
    >>> import fglens as fg
    >>> viewer = fg.view(fg.testing.tiny_run("wan", words=("dog",), maps=True), word="dog")
    >>> viewer._repr_html_().startswith("<iframe")
    True
"""

from __future__ import annotations

import html as html_lib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import BadRequest, DatasetSource, NotAStore, Source, StoreSource
from .export import ExportReport, export_data, export_html
from .server import ViewServer

__all__ = ["BadRequest", "DatasetSource", "ExportReport", "NotAStore", "Source", "StoreSource", "ViewServer",
           "Viewer", "export_data", "export_html", "view"]


class Viewer:
    """The viewer of some runs as one self-contained page: displayed inline by Jupyter (`_repr_html_`: an
    ``<iframe>`` holding the page, so its script and plotly.js are isolated from the notebook's), or saved.

    Example:
        >>> import fglens as fg
        >>> viewer = fg.view(fg.testing.tiny_run("wan", words=("dog",), maps=False))
        >>> "fglens-data" in viewer.html
        True
    """

    def __init__(self, html: str, counts: dict[str, int], height: int = 900):
        self.html = html
        self.counts = counts
        self.height = height

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html_lib.escape(self.html, quote=True)}" style="width:100%;height:{self.height}px;'
                f'border:1px solid #ddd" sandbox="allow-scripts" title="fglens view"></iframe>')

    def save(self, path: str | os.PathLike) -> Path:
        """Write the page to `path` (a file that opens offline from disk) and return the path."""
        target = Path(path)
        target.write_text(self.html, encoding="utf-8")
        return target

    def __repr__(self) -> str:
        c = self.counts
        return (f"<fglens Viewer: {c['runs']} run(s), {c['heatmaps']} heat maps, {c['maps']} word-map sets, "
                f"{len(self.html.encode()) / 1e6:.1f} MB page; display it in a notebook or .save('view.html')>")


def view(data: Any, word: str | None = None, *, run: str | None = None, runs: Sequence[str] | None = None,
         steps: Sequence[int] | None = None, height: int = 900, lazy: bool = False) -> Any:
    """The interactive viewer of runs, for a notebook: ``fg.view(run.dataset, word="dog")``.

    Args:
        data: one run's Dataset (``run.dataset``, ``fg.open_run``), a list of them, or a store's path.
        word: the word whose maps show first.
        run: the run shown first; runs: the runs of a store to include (default: all).
        steps: the steps whose word maps are embedded (default: all).
        height: the inline display's height in pixels.
        lazy: return a `fglens.view.widget.ViewWidget` instead: nothing embedded, each view's data read from
            the kernel when the page asks (a live kernel is needed; `runs` and `steps` do not apply).

    Example:
        >>> import fglens as fg
        >>> fg.view(fg.testing.tiny_run("wan", words=("dog",), maps=True), word="dog").counts["maps"]
        8
    """
    from .export import _build

    source = data if isinstance(data, Source) else (
        StoreSource(data) if isinstance(data, (str, os.PathLike)) else DatasetSource(data))
    if lazy:
        if runs is not None or steps is not None:
            raise ValueError("fg.view(..., lazy=True) reads any run and step on request: runs= and steps= choose "
                             "what an embedded page holds and do not apply; drop them or leave lazy off")
        from .widget import ViewWidget

        return ViewWidget(source, word=word, run=run, height=height)
    html, counts = _build(source, runs, steps, word, run)
    return Viewer(html, counts, height)
