"""The page's own files: the HTML template, the viewer's script and style (in ``fglens/view/static``) and
plotly.js, served from the ``plotly`` package's copy (``plotly/package_data/plotly.min.js``): no CDN, nothing
fetched from elsewhere. `page_html` builds the page either with links to ``/assets/...`` (the server) or with
every asset and the data inline (the export and the notebook display).

Example:
    >>> html = page_html("runs.zarr")
    >>> 'src="assets/plotly.min.js"' in html and "cdn" not in html.lower()
    True
"""

from __future__ import annotations

import html as html_lib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

#: the only files the server serves: name -> (where it lives, its content type)
ASSETS: dict[str, tuple[str, str]] = {
    "viewer-core.js": ("static", "text/javascript; charset=utf-8"),
    "viewer-panels.js": ("static", "text/javascript; charset=utf-8"),
    "viewer.js": ("static", "text/javascript; charset=utf-8"),
    "viewer.css": ("static", "text/css; charset=utf-8"),
    "plotly.min.js": ("plotly", "text/javascript; charset=utf-8"),
}

#: the page's scripts after plotly.js, in the order they run: shared helpers, the run's panels, the page itself
SCRIPTS = ("viewer-core.js", "viewer-panels.js", "viewer.js")


class MissingPlotly(ImportError):
    """The viewer's plotting library is not installed: ``pip install 'fglens[view]'``."""


def plotly_path() -> Path:
    """The path of plotly.js inside the installed ``plotly`` package (`MissingPlotly` without it)."""
    try:
        import plotly
    except ImportError:
        raise MissingPlotly("the viewer draws with plotly.js, shipped by the `plotly` package: "
                            "pip install 'fglens[view]'") from None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise MissingPlotly(f"the installed plotly package has no {path}; reinstall it: pip install 'fglens[view]'")
    return path


@cache
def asset_bytes(name: str) -> bytes:
    """The bytes of one asset of `ASSETS` (a `KeyError` for any other name: nothing else is ever read)."""
    where, _ = ASSETS[name]
    if where == "plotly":
        return plotly_path().read_bytes()
    return resources.files("fglens.view").joinpath("static", name).read_bytes()


def _template() -> str:
    return resources.files("fglens.view").joinpath("static", "index.html").read_text(encoding="utf-8")


def _inline_script(text: str) -> str:
    """`text` safe inside ``<script>``: a literal ``</script`` (or ``<!--``) cannot close or change the element."""
    return text.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT").replace("<!--", "<\\!--")


def page_html(label: str, data: dict[str, Any] | None = None) -> str:
    """The viewer's page. Without `data`: for the server, assets linked under ``assets/``, answers fetched from
    ``api/``. With `data` (``{"answers": {request_key: answer}, "options": {...}}``): one self-contained page,
    plotly.js, the script, the style and the data inline.
    """
    page = _template().replace("{{TITLE}}", html_lib.escape(f"fglens view — {label}"))
    page = page.replace("{{LABEL}}", html_lib.escape(label))
    if data is None:
        head = '<link rel="stylesheet" href="assets/viewer.css">'
        scripts = "\n".join(f'<script src="assets/{name}"></script>' for name in ("plotly.min.js", *SCRIPTS))
        embedded = ""
    else:
        head = "<style>\n" + asset_bytes("viewer.css").decode() + "\n</style>"
        text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
        embedded = f'<script type="application/json" id="fglens-data">{text}</script>'
        scripts = "\n".join("<script>" + _inline_script(asset_bytes(name).decode()) + "</script>"
                             for name in ("plotly.min.js", *SCRIPTS))
    return page.replace("{{HEAD}}", head).replace("{{DATA}}", embedded).replace("{{SCRIPTS}}", scripts)
