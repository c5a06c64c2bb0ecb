"""One self-contained HTML file of the viewer: plotly.js, the page's script and style, and exactly the answers
its views ask for, embedded — it opens from disk (``file://``), offline, in any browser.

For each exported run it embeds: its row in the run list and its summary (with the reference image, greyscale
PNG), the heat map of every statistic x branch x word choice (mean over words, or each word), the weak layers
of each score the heat maps use, the word maps of every branch x step x layer x word (``steps=`` limits
the steps: the word maps are most of a run's bytes), the condition balance of every branch x step range, the
anchor masks, and the video when one was kept with the run (`fglens.view.video`). `ExportReport` says what was
embedded and how large it is.

Example:
    >>> import fglens as fg, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "runs.zarr")
    >>> _ = fg.testing.tiny_run("wan", words=("dog",), maps=True, store=path)
    >>> report = export_html(path, os.path.join(os.path.dirname(path), "run.html"))
    >>> report.runs, report.maps, report.total_bytes > report.data_bytes > 0
    (1, 8, True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import xarray as xr

from .assets import page_html
from .data import WEAK_SCORES, Source, StoreSource, request_key


@dataclass(frozen=True)
class ExportReport:
    """What `export_html` wrote: the file, its size, the size of the data in it, and how many answers."""

    path: Path
    total_bytes: int
    data_bytes: int
    runs: int
    heatmaps: int
    maps: int
    balances: int = 0
    videos: int = 0

    def summary(self) -> str:
        """One line: ``wrote run.html: 4.9 MB (data 31.2 kB: 2 runs, 24 heat maps, 16 word-map sets)``."""
        from ..cli.inspect import human_size

        return (f"wrote {self.path}: {human_size(self.total_bytes)} (data {human_size(self.data_bytes)}: "
                f"{self.runs} run{'s' if self.runs != 1 else ''}, {self.heatmaps} heat maps, {self.maps} word-map "
                f"sets, {self.balances} condition balances, {self.videos} videos; the rest is plotly.js and the "
                f"viewer)")


def _source(store: Any) -> Source:
    from .data import DatasetSource

    if isinstance(store, Source):
        return store
    if isinstance(store, (xr.Dataset, list, tuple)):
        return DatasetSource(store)
    return StoreSource(store)


def export_data(store: Any, runs: Sequence[str] | None = None, steps: Sequence[int] | None = None,
                word: str | None = None, run: str | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """The embedded data of an export: ``{"answers": {request_key: answer}, "options": {...}}``, and counts.

    Args:
        store: a store path, a `Source`, or run Datasets.
        runs: the runs to embed (default: all).
        steps: the steps whose word maps are embedded (default: all).
        word: the word the page shows first; run: the run it opens first.

    Example:
        >>> import fglens as fg
        >>> data, counts = export_data(fg.testing.tiny_run("wan", words=("dog",), maps=False))
        >>> counts["runs"], counts["maps"], sorted(data["options"])[:2]
        (1, 0, ['created', 'run'])
    """
    source = _source(store)
    ids = source.run_ids()
    chosen = ids if runs is None else [source.check_run(r) for r in runs]
    answers: dict[str, Any] = {}
    counts = {"runs": 0, "heatmaps": 0, "maps": 0, "balances": 0, "videos": 0}

    def put(endpoint: str, params: dict[str, Any]) -> Any:
        answer = source.answer(endpoint, {k: str(v) for k, v in params.items()})
        answers[request_key(endpoint, params)] = answer
        return answer

    answers[request_key("runs", {})] = [r for r in source.runs() if r["id"] in chosen]
    for name in chosen:
        info = put("run", {"run": name})
        counts["runs"] += 1
        put("anchor", {"run": name})
        counts["videos"] += bool(put("video", {"run": name})["frames"])
        counts["balances"] += _put_balances(source, name, info, answers)
        for branch in info["branches"]:
            for var in info["variables"]:
                for w in ["", *info["words"]] if var in info["per_word"] else [""]:
                    put("heatmap", {"run": name, "var": var, "branch": branch, **({"word": w} if w else {})})
                    counts["heatmaps"] += 1
            for score in sorted({v if v in WEAK_SCORES else "similarity" for v in info["variables"]}):
                put("weak", {"run": name, "score": score, "branch": branch})
            if not info["has_maps"]:
                continue
            for step in info["steps_list"]:
                if steps is not None and step not in steps:
                    continue
                for layer in info["layers"]:
                    for w in info["words"]:
                        put("maps", {"run": name, "layer": layer, "step": step, "word": w, "branch": branch})
                        counts["maps"] += 1
    from .. import __version__

    options = {"word": word, "run": run or (chosen[0] if chosen else None), "version": __version__,
               "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "source": source.label}
    return {"answers": answers, "options": options}, counts


def _put_balances(source: Source, name: str, info: dict[str, Any], answers: dict[str, Any]) -> int:
    """Embed the condition balance of every branch and step range (first <= last) the page offers, from the
    balance variables read once; how many (branches x n(n+1)/2 for n steps: small answers, one value per layer
    and condition)."""
    from .balance import BALANCE_VARS, condition_balance

    if not info["has_balance"]:
        return 0
    ds = source.dataset(name)
    ds = ds[[v for v in BALANCE_VARS if v in ds.data_vars]].load()
    offered = info["steps_list"]
    n = 0
    for branch in info["branches"]:
        for i, first in enumerate(offered):
            for last in offered[i:]:
                params = {"run": name, "branch": branch, "first": first, "last": last}
                answers[request_key("balance", params)] = condition_balance(ds, branch, first, last)
                n += 1
    return n


def export_html(store: Any, path: str | os.PathLike, runs: Sequence[str] | None = None,
                steps: Sequence[int] | None = None, word: str | None = None, run: str | None = None) -> ExportReport:
    """Write the viewer for `store`'s runs as one self-contained HTML file at `path` (see the module docstring).

    Example:
        >>> report = export_html("runs.zarr", "run.html")      # doctest: +SKIP
        >>> print(report.summary())                           # doctest: +SKIP
        wrote run.html: 4.9 MB (data 31.2 kB: 2 runs, 24 heat maps, 16 word-map sets; ...)
    """
    html, report = _build(store, runs, steps, word, run)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(html, encoding="utf-8")
    return ExportReport(target, target.stat().st_size, report["data_bytes"], report["runs"], report["heatmaps"],
                        report["maps"], report["balances"], report["videos"])


def _build(store: Any, runs: Sequence[str] | None, steps: Sequence[int] | None, word: str | None,
           run: str | None) -> tuple[str, dict[str, int]]:
    """The page's HTML and its counts (``data_bytes``: the embedded JSON)."""
    from ..cli.inspect import human_size

    data, counts = export_data(store, runs, steps, word, run)
    size = len(json.dumps(data, separators=(",", ":")).encode())
    data["options"]["summary"] = (f"{counts['runs']} run{'s' if counts['runs'] != 1 else ''}, {counts['heatmaps']} "
                                  f"heat maps, {counts['maps']} word-map sets, {counts['balances']} condition "
                                  f"balances, {counts['videos']} videos; data {human_size(size)}")
    label = str(data["options"]["source"])
    return page_html(label, data), {**counts, "data_bytes": size}
