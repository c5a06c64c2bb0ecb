"""``fglens view``: the interactive run viewer — a local page over a store, or one self-contained HTML file."""

from __future__ import annotations

import argparse
import sys

from .common import fail

EPILOG = """\
examples:
  fglens view runs.zarr                      # serves a page on 127.0.0.1 (a free port) and opens the browser
  fglens view runs.zarr --port 8765 --no-open
  fglens view runs.zarr --html run.html      # one self-contained file (plotly.js and the data inside)
  fglens view runs.zarr --html run.html --run line-0007 --steps 0,10,20

The page: the run list with a filter; a run's layer x step heat map of any statistic and branch (weak layers
marked); click a cell for its word maps over the reference image, one panel per latent frame; compare two runs
of the same seed. Needs the `view` extra: pip install 'fglens[view]'. docs/viewer.md says more.
"""


def register(sub) -> None:
    parser = sub.add_parser(
        "view", help="interactive run viewer: a local page, or one self-contained HTML file",
        description="Browse a store's runs interactively: a page served from this machine (127.0.0.1 by default), "
        "or with --html one self-contained HTML file to open from disk or send to a colleague.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
    )
    parser.add_argument("store", metavar="STORE", help="an fglens store (.zarr)")
    parser.add_argument("--html", metavar="FILE", help="write one self-contained HTML file instead of serving")
    parser.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only; anything else exposes the "
                        "store's data to the network)")
    parser.add_argument("--no-open", action="store_true", help="do not open a browser")
    parser.add_argument("--run", action="append", metavar="ID", dest="runs",
                        help="with --html: a run to include (repeat; default: every run)")
    parser.add_argument("--steps", metavar="LIST", help="with --html: the steps whose word maps are embedded, "
                        "comma-separated (default: all)")
    parser.add_argument("--word", help="the word whose maps show first")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.set_defaults(func=run)


def _steps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--steps takes comma-separated step indices; got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    try:
        from ..view import NotAStore, StoreSource, ViewServer, export_html
        from ..view.assets import MissingPlotly, plotly_path
        from ..view.data import BadRequest
    except ImportError as exc:
        return fail("view", exc)
    try:
        plotly_path()
        source = StoreSource(args.store)
        if args.html:
            report = export_html(source, args.html, runs=args.runs, steps=_steps(args.steps), word=args.word)
            print(report.summary())
            return 0
        if args.runs or args.steps:
            return fail("view", "--run and --steps choose what --html embeds; the server shows every run")
        server = ViewServer(source, host=args.host, port=args.port, verbose=args.verbose)
    except (NotAStore, MissingPlotly, BadRequest, ValueError, OSError) as exc:
        return fail("view", exc)
    print(f"fglens view: serving {args.store} at {server.url} (Ctrl-C stops)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"fglens view: bound to {args.host}: anyone who can reach this address can read the store's runs",
              file=sys.stderr)
    if not args.no_open:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nfglens view: stopped")
    return 0
