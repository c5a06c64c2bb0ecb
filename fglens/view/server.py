"""The viewer's local web server: the standard library's `http.server`, threaded, serving one store.

It answers exactly these paths, and nothing else (404): ``/`` (the page), ``/assets/<name>`` for the
page's own files (`fglens.view.assets.ASSETS`: no file path is ever built from a request), ``/api/<endpoint>``
(`fglens.view.data.ENDPOINTS`, JSON; a run's reference image travels inside its ``run`` answer). Run names
are checked against the store's own list. It binds to 127.0.0.1 by default, refuses a request whose ``Host``
is not the address it serves (DNS rebinding) and any path holding ``..`` or an encoded dot or slash.

Example:
    >>> import fglens as fg, tempfile, os, urllib.request, json
    >>> path = os.path.join(tempfile.mkdtemp(), "runs.zarr")
    >>> _ = fg.testing.tiny_run("wan", words=("dog",), maps=False, store=path)
    >>> server = ViewServer(path).start()   # 127.0.0.1, a free port, in a background thread
    >>> server.url.startswith("http://127.0.0.1:")   # serve_forever() serves in this thread instead
    True
    >>> runs = json.load(urllib.request.urlopen(server.url + "api/runs"))
    >>> runs[0]["words"]
    ['dog']
    >>> server.stop()
"""

from __future__ import annotations

import json
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .assets import ASSETS, asset_bytes, page_html
from .data import BadRequest, Source, StoreSource

#: characters of a raw request path that are refused before any routing (traversal, encoded dots and slashes)
_REFUSED = ("..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", "\x00")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "fglens-view"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self' data: 'unsafe-inline' 'unsafe-eval'; "
                         "connect-src 'self'; frame-ancestors 'none'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        return host in self.server.allowed_hosts

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        parts = urlsplit(self.path)
        if any(bad in parts.path for bad in _REFUSED):  # query values are checked against the run's own labels
            return self._error(HTTPStatus.BAD_REQUEST, "path refused")
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            if path in ("/", "/index.html"):
                page = page_html(self.server.source.label).encode()
                return self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            if path.startswith("/assets/") and path[len("/assets/"):] in ASSETS:
                name = path[len("/assets/"):]
                return self._send(HTTPStatus.OK, asset_bytes(name), ASSETS[name][1])
            if path.startswith("/api/"):
                answer = self.server.source.answer(path[len("/api/"):], query)
                return self._send(HTTPStatus.OK, json.dumps(answer, allow_nan=False).encode(), "application/json")
        except BadRequest as exc:
            return self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:  # noqa: BLE001 (a damaged chunk must not kill the server: report it)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
        return self._error(HTTPStatus.NOT_FOUND, "not found")

    def do_POST(self) -> None:  # noqa: N802
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "the viewer only reads")

    do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    source: Source
    verbose: bool
    allowed_hosts: set[str]


class ViewServer:
    """The viewer's server for one store (or any `fglens.view.data.Source`).

    Args:
        store: the store's path (checked: `fglens.view.data.NotAStore` when it is not an fglens store) or a
            `Source`.
        host: the address to bind, ``127.0.0.1`` by default (only this machine can connect).
        port: the port; 0 (default) picks a free one.
        verbose: log each request to stderr.

    Example:
        >>> ViewServer("runs.zarr", port=8765).serve_forever()   # doctest: +SKIP
    """

    def __init__(self, store: str | os.PathLike | Source, host: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False):
        source = store if isinstance(store, Source) else StoreSource(store)
        self.httpd = _Server((host, port), _Handler)
        self.httpd.source = source
        self.httpd.verbose = verbose
        self.host, self.port = host, int(self.httpd.server_address[1])
        self.httpd.allowed_hosts = {"127.0.0.1", "localhost", "::1", host.lower()}
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8765/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def serve_forever(self) -> None:
        """Serve until interrupted (Ctrl-C), then close the socket."""
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def start(self) -> ViewServer:
        """Serve in a background (daemon) thread; `stop` ends it."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fglens-view", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
