"""``run.dataset`` in Jupyter as an interactive summary: an IPython display formatter for recorded fglens runs.

xarray draws a Dataset in a notebook itself (``Dataset._repr_html_``). Replacing that would mean subclassing
`xarray.Dataset` (which xarray advises against: every operation returns a plain Dataset again) or patching
xarray's class for every Dataset of the process. IPython instead lets a program register an HTML formatter for
a type, and that is what this module does, when asked: `enable` (or ``%load_ext fglens.view.notebook``) makes
one run's Dataset (it carries ``fglens_version`` and has no ``run`` dim) show as a line saying what the run is,
the viewer (`fg.view`) and xarray's own repr folded under it. Every other Dataset keeps xarray's repr,
unchanged; `disable` (``%unload_ext``) removes the formatter.

Example:
    >>> import fglens as fg
    >>> html = summary_html(fg.testing.tiny_run("wan", words=("dog",), maps=False))
    >>> html.startswith('<div class="fglens-summary">') and "<iframe" in html and "xr-wrap" in html
    True
"""

from __future__ import annotations

import html as html_lib
from typing import Any

import xarray as xr


def is_run(ds: Any) -> bool:
    """Whether `ds` is one recorded fglens run (what `fg.open_run` and ``run.dataset`` give)."""
    return isinstance(ds, xr.Dataset) and "fglens_version" in ds.attrs and "run" not in ds.dims


def summary_html(ds: xr.Dataset, height: int = 760) -> str:
    """One run's interactive summary: what it is in one line, the viewer, and xarray's repr (folded)."""
    from . import view
    from .assets import MissingPlotly
    from .data import run_row

    row = run_row(str(ds.attrs.get("run") or "run"), ds.attrs, steps=int(ds.sizes.get("step", 0)))
    line = (f"fglens run {row['id']}: “{row['prompt']}” (seed {row['seed']}), {row['steps']}"
            f"{'/' + str(row['num_steps']) if row['num_steps'] else ''} steps, words {', '.join(row['words'])}, "
            f"intervention {row['intervention']}{'' if row['complete'] else ', INCOMPLETE'}")
    try:
        viewer = view(ds, height=height)._repr_html_()
    except MissingPlotly as exc:
        viewer = f"<p>{html_lib.escape(str(exc))}</p>"
    return (f'<div class="fglens-summary"><p>{html_lib.escape(line)}</p>{viewer}'
            f"<details><summary>xarray.Dataset</summary>{ds._repr_html_()}</details></div>")


def _format(ds: xr.Dataset) -> str:
    return summary_html(ds) if is_run(ds) else ds._repr_html_()


def _formatter(ipython: Any) -> Any:
    if ipython is None:
        from IPython import get_ipython

        ipython = get_ipython()
    if ipython is None:
        raise RuntimeError("fglens.view.notebook.enable() works inside IPython or Jupyter")
    return ipython.display_formatter.formatters["text/html"]


def enable(ipython: Any = None) -> None:
    """Show one fglens run's Dataset as its interactive summary in this notebook (other Datasets unchanged)."""
    _formatter(ipython).for_type(xr.Dataset, _format)


def disable(ipython: Any = None) -> None:
    """Back to xarray's own repr for every Dataset."""
    _formatter(ipython).pop(xr.Dataset, None)


load_ipython_extension = enable  # %load_ext fglens.view.notebook
unload_ipython_extension = disable
