"""The viewer as a notebook widget that reads lazily from the kernel (anywidget): ``fg.view(ds, lazy=True)``.

`fg.view` without ``lazy`` embeds every answer its views may ask for in the page (like ``fglens view --html``),
so a long run makes a large notebook. `ViewWidget` embeds none: its page (the same one, plotly.js inline) runs
in a sandboxed ``<iframe>`` inside the widget, and each request the page makes — a heat map, one cell's word
maps, a condition balance — goes to the widget's front end (``postMessage``), to the kernel as a custom widget
message, through `answer` (the same `Source.answer` the server uses, so the same values and the same lazy
reads), and back by the request's id. Each view of a widget tags its requests, so two displays of one widget
never take each other's answers. It needs a live kernel: a saved notebook shows the last frame only.

Example:
    >>> import fglens as fg
    >>> w = fg.view(fg.testing.tiny_run("wan", words=("dog",), maps=True), word="dog", lazy=True)
    >>> reply = w.answer({"fglens": 1, "id": 7, "view": "v", "endpoint": "runs", "params": {}})
    >>> reply["id"], reply["view"], len(reply["answer"]), "fglens-data" in w.page
    (7, 'v', 1, True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import anywidget
    import traitlets
except ImportError as exc:  # the `view` extra
    raise ImportError("the lazy notebook viewer is an anywidget: pip install 'fglens[view]'") from exc

from .assets import page_html
from .data import Source
from .wire import BadRequest

_ESM = (Path(__file__).parent / "static" / "widget.js").read_text(encoding="utf-8")


class ViewWidget(anywidget.AnyWidget):
    """The viewer of a `Source`'s runs, answering its page's requests from the kernel one at a time.

    ``page`` is the viewer's page without data (its requests are bridged); ``height`` the display's height in
    pixels; ``requests`` counts the requests answered (a user sees what the views asked for).
    """

    _esm = _ESM
    page = traitlets.Unicode("").tag(sync=True)
    height = traitlets.Int(900).tag(sync=True)

    def __init__(self, source: Source, word: str | None = None, run: str | None = None, height: int = 900):
        from .. import __version__

        options = {"word": word, "run": run, "version": __version__, "source": source.label}
        super().__init__(page=page_html(source.label, {"bridge": True, "answers": {}, "options": options}),
                         height=height)
        self.source = source
        self.requests = 0
        self.on_msg(self._on_msg)

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """The reply to one request of the page: ``{"fglens": 1, "id", "view", "answer"}``, or ``"error"`` (a
        bad request, said as the server would: what was wrong and what is accepted)."""
        reply: dict[str, Any] = {"fglens": 1, "id": message.get("id"), "view": message.get("view")}
        params = message.get("params") or {}
        if not isinstance(params, dict):
            return {**reply, "error": f"params must be an object, got {type(params).__name__}"}
        try:
            reply["answer"] = self.source.answer(str(message.get("endpoint")),
                                                 {str(k): str(v) for k, v in params.items()})
        except BadRequest as exc:
            reply["error"] = str(exc)
        self.requests += 1
        return reply

    def _on_msg(self, widget: Any, content: Any, buffers: Any) -> None:
        if isinstance(content, dict) and content.get("fglens") == 1:
            self.send(self.answer(content))
