"""What each view of the run viewer needs, as JSON-ready dicts, read lazily through fglens' own readers.

Every answer is computed from one run's `xarray.Dataset` (opened with ``fg.open_run(..., load=False)``, so only
the chunks a view selects are read) and is a plain dict of strings, numbers and packed arrays: float32 values
travel as base64 of their little-endian bytes (`pack`), so the page shows exactly what the store holds, NaN
included. The server (`fglens.view.server`), the HTML export (`fglens.view.export`) and the notebook display
(`fg.view`) all answer from the same functions through a `Source`: a store on disk (`StoreSource`) or runs
already in memory (`DatasetSource`).

Example:
    >>> import fglens as fg
    >>> from fglens.view.data import DatasetSource
    >>> source = DatasetSource(fg.testing.tiny_run("wan", words=("dog",), maps=False))
    >>> answer = source.answer("heatmap", {"run": source.run_ids()[0], "var": "word_mass", "branch": "cond"})
    >>> answer["shape"], len(answer["layers"])
    ([4, 2], 4)
"""

from __future__ import annotations

import base64
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..store.reader import intervention_summary
from .wire import BadRequest, pack, request_key, unpack  # noqa: F401  (re-exported: the data's names)
from .wire import labels as _labels
from .wire import pick as _pick

#: variables that are never offered as a heat map: the maps themselves (a view of their own), flags, the image
NOT_HEATMAPS = ("word_map", "skipped", "reference_image")
#: the statistics `fg.find_weak_layers` can score layers by (the others are marked by the default rule)
WEAK_SCORES = ("similarity", "morans_i", "similarity_morans_i", "response", "response_morans_i")
#: the endpoints every source answers, with their required parameters
ENDPOINTS: dict[str, tuple[str, ...]] = {
    "runs": (),
    "run": ("run",),
    "heatmap": ("run", "var", "branch"),
    "weak": ("run",),
    "maps": ("run", "layer", "step", "word", "branch"),
    "balance": ("run", "branch"),
    "anchor": ("run",),
    "video": ("run",),
}
#: the word option of a heat map meaning "mean over the run's words"
ALL_WORDS = ""


class NotAStore(ValueError):
    """The path given to the viewer is not an fglens store (missing, or a directory fglens did not write)."""


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def heatmap_vars(ds: xr.Dataset) -> list[str]:
    """The variables of a run that can be drawn over layers x steps (they have both dims), sorted."""
    return sorted(str(v) for v, da in ds.data_vars.items()
                  if {"step", "layer"} <= set(da.dims) and v not in NOT_HEATMAPS and da.dtype.kind == "f")


def _seed(value: Any) -> int | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else None


def run_row(run: str, attrs: Mapping[str, Any], steps: int | None = None) -> dict[str, Any]:
    """One line of the run list from a run's attributes (no array data)."""
    words = attrs.get("words")
    if isinstance(words, str):
        try:
            words = json.loads(words)
        except ValueError:
            words = [words]
    return {
        "id": run, "prompt": str(attrs.get("prompt") or ""), "seed": _seed(attrs.get("seed")),
        "words": [str(w) for w in words or []], "intervention": intervention_summary(attrs.get("intervention")),
        "complete": attrs.get("complete") is True,
        "steps": int(attrs.get("steps_written", 0) if steps is None else steps),
        "num_steps": attrs.get("num_steps") if isinstance(attrs.get("num_steps"), int) else None,
        "model": str(attrs.get("model_class") or ""), "problem": None,
    }


def run_summary(run: str, ds: xr.Dataset, image: bool = False) -> dict[str, Any]:
    """What the run view needs to draw its controls: labels of every dim, the statistics, whether it has maps
    and a reference image, and with `image` that image as a greyscale PNG data URI (``image``) with its size
    (``image_size``: height, width). Reads the coordinates only (and the image, one chunk, with `image`).

    Example:
        >>> import fglens as fg
        >>> ds = fg.testing.tiny_run("wan", words=("dog",), maps=True)
        >>> info = run_summary("r", ds)
        >>> info["words"], info["has_maps"], info["has_image"], info["grid"]
        (['dog'], True, True, [2, 3])
    """
    timesteps = ds["timestep"].values.tolist() if "timestep" in ds.coords else []
    maps = "word_map" in ds.data_vars
    out = {
        **run_row(run, ds.attrs, steps=int(ds.sizes.get("step", 0))),
        "variables": heatmap_vars(ds),
        "per_word": [v for v in heatmap_vars(ds) if "word" in ds[v].dims],
        "branches": _labels(ds, "branch"), "layers": _labels(ds, "layer"), "words": _labels(ds, "word"),
        "steps_list": [int(s) for s in ds["step"].values.tolist()] if "step" in ds.coords else [],
        "timesteps": [_finite(t) for t in timesteps],
        "frames": int(ds.sizes.get("frame", 0)),
        "grid": [int(ds.sizes["y"]), int(ds.sizes["x"])] if maps and "y" in ds.sizes else None,
        "has_maps": maps, "has_image": "reference_image" in ds.data_vars,
        "negative_prompt": str(ds.attrs.get("negative_prompt") or ""),
        "image": None, "image_size": None,
        "has_balance": any(v in ds.data_vars for v in ("text_share", "text_mass")),
        "has_video": False,
    }
    png = reference_png(ds) if image and out["has_image"] else None
    if png is not None:
        out["image"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        out["image_size"] = [int(ds.sizes["image_y"]), int(ds.sizes["image_x"])]
    return out


def heatmap(ds: xr.Dataset, var: str, branch: str, word: str = ALL_WORDS) -> dict[str, Any]:
    """One statistic over layers (rows, depth order) x steps (columns) for one branch: the mean over frames
    and, for a per-word statistic, over the run's words (`word` ``""``) or of one word. Reads only `var`'s
    chunks (one per step).

    Example:
        >>> import fglens as fg
        >>> ds = fg.testing.tiny_run("wan", words=("dog",), maps=False)
        >>> grid = unpack(heatmap(ds, "word_mass", "cond", "dog"))
        >>> bool(np.allclose(grid, ds.word_mass.sel(branch="cond", word="dog").mean("frame").T))
        True
    """
    if var not in heatmap_vars(ds):
        raise BadRequest(f"unknown statistic {var!r}; this run has {heatmap_vars(ds)}")
    da = ds[var].sel(branch=_pick(ds, "branch", branch, "branch"))
    if "word" in da.dims and word != ALL_WORDS:
        da = da.sel(word=_pick(ds, "word", word, "word"))
    elif word != ALL_WORDS:
        raise BadRequest(f"{var!r} is not a per-word statistic: give no word")
    rest = [d for d in da.dims if d not in ("layer", "step")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (a word the negative prompt lacks)
        grid = np.asarray(da.transpose("layer", "step", *rest).values, dtype=np.float64)
        grid = np.nanmean(grid.reshape(grid.shape[0], grid.shape[1], -1), axis=2) if rest else grid
    finite = grid[np.isfinite(grid)]
    return {
        **pack(grid.astype(np.float32)), "var": var, "branch": branch, "word": word,
        "layers": _labels(ds, "layer"), "steps": [int(s) for s in ds["step"].values.tolist()],
        "long_name": str(ds[var].attrs.get("long_name", var)),
        "min": float(finite.min()) if finite.size else None, "max": float(finite.max()) if finite.size else None,
        "mean_over": rest,
    }


def weak_layers(ds: xr.Dataset, score: str = "similarity", branch: str = "cond") -> dict[str, Any]:
    """The semantic-weak and responsive layers of `fg.find_weak_layers` with its default rule, or why there
    are none (the statistic was not recorded, too few layers, ...). Reads `score`'s first half of the steps.

    Example:
        >>> import fglens as fg
        >>> weak_layers(fg.testing.tiny_run("wan", maps=False))["score"]
        'similarity'
    """
    from ..diagnose import find_weak_layers

    out: dict[str, Any] = {"score": score, "branch": branch, "weak": [], "responsive": [], "note": ""}
    if score not in WEAK_SCORES:
        out["note"] = f"layers are scored by one of {list(WEAK_SCORES)}, not {score!r}"
        return out
    if score not in ds.data_vars:
        out["note"] = f"{score!r} was not recorded: no weak layers"
        return out
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = find_weak_layers(ds, score=score, branch=branch)
    except ValueError as exc:
        out["note"] = f"no weak layers: {exc}"
        return out
    out.update(weak=list(result.weak), responsive=list(result.responsive),
               z={k: _finite(v) for k, v in zip(result.layers, result.scores.values.tolist(), strict=True)},
               note="; ".join(str(w.message) for w in caught))
    return out


def word_maps(ds: xr.Dataset, layer: str, step: int | str, word: str, branch: str) -> dict[str, Any]:
    """One word's maps at one layer and step, one per latent frame: ``(frame, y, x)`` float32, and their range.
    Reads one chunk of ``word_map`` (the step's).

    Example:
        >>> import fglens as fg
        >>> ds = fg.testing.tiny_run("wan", words=("dog",), maps=True)
        >>> maps = word_maps(ds, "blocks.1", 0, "dog", "cond")
        >>> maps["shape"], bool((unpack(maps) == ds.word_map.sel(branch="cond", step=0, layer="blocks.1",
        ...                                                           word="dog").values).all())
        ([2, 2, 3], True)
    """
    if "word_map" not in ds.data_vars:
        raise BadRequest("this run has no word maps (record them with fg.Record(maps=True))")
    try:
        step = int(step)
    except (TypeError, ValueError):
        raise BadRequest(f"step must be an integer; got {step!r}") from None
    steps = [int(s) for s in ds["step"].values.tolist()]
    if step not in steps:
        raise BadRequest(f"unknown step {step}; this run has steps {steps}")
    da = ds["word_map"].sel(branch=_pick(ds, "branch", branch, "branch"), layer=_pick(ds, "layer", layer, "layer"),
                            word=_pick(ds, "word", word, "word"), step=step)
    values = np.asarray(da.transpose("frame", "y", "x").values, dtype=np.float32)
    finite = values[np.isfinite(values)]
    return {**pack(values), "layer": layer, "step": step, "word": word, "branch": branch,
            "min": float(finite.min()) if finite.size else None, "max": float(finite.max()) if finite.size else None}


def reference_png(ds: xr.Dataset, grey: bool = True) -> bytes | None:
    """The run's reference image as PNG bytes (greyscale by default: an underlay that cannot be mistaken for
    attention, as in `fg.plot.word_maps`), or None when the run kept none.

    Example:
        >>> import fglens as fg
        >>> reference_png(fg.testing.tiny_run("wan", words=("dog",), maps=False))[:4]
        b'\\x89PNG'
    """
    from PIL import Image

    if "reference_image" not in ds.data_vars:
        return None
    pixels = np.asarray(ds["reference_image"].transpose("image_y", "image_x", "channel").values, dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    buffer = io.BytesIO()
    (image.convert("L") if grey else image).save(buffer, format="PNG")
    return buffer.getvalue()


class Source:
    """Where the viewer's runs come from; `answer` serves every endpoint of `ENDPOINTS` from `dataset`."""

    label = ""

    def run_ids(self) -> list[str]:
        raise NotImplementedError

    def runs(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def dataset(self, run: str) -> xr.Dataset:
        raise NotImplementedError

    def has_video(self, run: str) -> bool:
        """Whether `video` has frames for `run` (without reading them)."""
        return False

    def video(self, run: str) -> dict[str, Any] | None:
        """The run's video as `fglens.view.video.video_frames` gives it, or None (the default: none kept)."""
        return None

    def check_run(self, run: Any) -> str:
        """`run` if it names a run of this source (anything else, ``..`` included, is a `BadRequest`)."""
        if not isinstance(run, str) or run not in self.run_ids():
            raise BadRequest(f"unknown run {run!r}")
        return run

    def answer(self, endpoint: str, params: Mapping[str, str]) -> dict[str, Any] | list[dict[str, Any]]:
        """The JSON-ready answer of one request (`BadRequest` for anything this source does not hold)."""
        if endpoint not in ENDPOINTS:
            raise BadRequest(f"unknown endpoint {endpoint!r}; endpoints: {sorted(ENDPOINTS)}")
        missing = [p for p in ENDPOINTS[endpoint] if p not in params]
        if missing:
            raise BadRequest(f"{endpoint} needs the parameters {missing}")
        if endpoint == "runs":
            return self.runs()
        run = self.check_run(params["run"])
        if endpoint == "video":
            from .video import NO_VIDEO

            return self.video(run) or {"frames": [], "shape": [0, 0, 0], "note": NO_VIDEO}
        ds = self.dataset(run)
        if endpoint == "run":
            return {**run_summary(run, ds, image=True), "has_video": self.has_video(run)}
        if endpoint == "balance":
            from .balance import condition_balance

            return condition_balance(ds, params["branch"], params.get("first"), params.get("last"))
        if endpoint == "anchor":
            from .anchor import anchor_masks

            return anchor_masks(ds.attrs)
        if endpoint == "heatmap":
            return heatmap(ds, params["var"], params["branch"], params.get("word", ALL_WORDS))
        if endpoint == "weak":
            return weak_layers(ds, params.get("score", "similarity"), params.get("branch", "cond"))
        return word_maps(ds, params["layer"], params["step"], params["word"], params["branch"])


class StoreSource(Source):
    """The runs of an fglens store on disk, opened lazily (``fg.open_run(load=False)``) per request.

    Raises `NotAStore` for a path that is missing or is not an fglens store.

    Example:
        >>> import tempfile
        >>> StoreSource(tempfile.mkdtemp())   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fglens.view.data.NotAStore: ... is not an fglens store ...
    """

    def __init__(self, path: str | os.PathLike):
        from ..store.layout import root_attrs

        self.path = Path(path)
        try:
            root_attrs(self.path)
        except FileNotFoundError:
            raise NotAStore(f"{self.path} is not an fglens store: it does not exist. Give the path of a store "
                            "written by fg.trace(..., store=PATH), fglens sweep or fglens diagnose --store") from None
        except (FileExistsError, ValueError) as exc:
            raise NotAStore(f"{self.path} is not an fglens store the viewer can read ({exc}). Give the path of a "
                            "store written by fg.trace(..., store=PATH), fglens sweep or fglens diagnose "
                            "--store") from None
        self.label = str(self.path)
        self._video_index: dict[str, Path] | None = None

    def run_ids(self) -> list[str]:
        from ..store import list_runs

        return list_runs(self.path)

    def runs(self) -> list[dict[str, Any]]:
        from ..store import UnreadableRun
        from ..store.reader import read_run

        rows = []
        for name in self.run_ids():
            try:
                meta = read_run(self.path, name)
            except UnreadableRun as exc:
                rows.append({**run_row(name, {}), "problem": str(exc)})
                continue
            rows.append(run_row(name, {**meta.attrs, "complete": meta.complete}, steps=meta.steps))
        return rows

    def dataset(self, run: str) -> xr.Dataset:
        from ..store import UnreadableRun, open_run

        try:
            return open_run(self.path, run, load=False)
        except UnreadableRun as exc:
            raise BadRequest(str(exc)) from None

    def _videos(self) -> dict[str, Path]:
        """Run id -> cached video next to the store (`fglens.view.video.find_videos`), indexed on first use."""
        if self._video_index is None:
            from .video import find_videos

            self._video_index = find_videos(self.path)
        return self._video_index

    def has_video(self, run: str) -> bool:
        return run in self._videos()

    def video(self, run: str) -> dict[str, Any] | None:
        from .video import video_frames

        path = self._videos().get(run)
        return None if path is None else video_frames(path, self.path.parent)


class DatasetSource(Source):
    """Runs already in memory: one run's Dataset (``run.dataset``, ``fg.open_run``) or a list of them.

    Example:
        >>> import fglens as fg
        >>> DatasetSource(fg.testing.tiny_run("wan", words=("dog",), maps=False)).runs()[0]["words"]
        ['dog']
    """

    def __init__(self, runs: xr.Dataset | Sequence[xr.Dataset]):
        datasets = [runs] if isinstance(runs, xr.Dataset) else list(runs)
        if not datasets or not all(isinstance(d, xr.Dataset) for d in datasets):
            raise TypeError("give one run's xarray.Dataset (run.dataset, fg.open_run) or a list of them")
        if any("run" in d.dims for d in datasets):
            raise TypeError("a Dataset with a `run` dim (fg.open_runs) is many runs: view the store itself "
                            "(fg.view('runs.zarr')) or give a list of fg.open_run(...) Datasets")
        self._runs: dict[str, xr.Dataset] = {}
        for i, d in enumerate(datasets):
            name = str(d.attrs.get("run") or f"run-{i}")
            self._runs[name if name not in self._runs else f"{name}-{i}"] = d
        self.label = "in-memory runs"

    def run_ids(self) -> list[str]:
        return list(self._runs)

    def runs(self) -> list[dict[str, Any]]:
        return [run_row(name, ds.attrs, steps=int(ds.sizes.get("step", 0))) for name, ds in self._runs.items()]

    def dataset(self, run: str) -> xr.Dataset:
        return self._runs[run]
