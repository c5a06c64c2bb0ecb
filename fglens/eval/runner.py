"""Run a suite: generate each item with and without an intervention over the same seeds, record the runs, cache
the videos, score them, and write the results.

Output folder (``out``):

- ``runs.zarr`` — an fglens store with one run per generated video (`fg.trace` with ``fg.Record(words=item's
  words)``; the intervention's runs carry its spec in their ``intervention`` attribute);
- ``videos/<item>/seed<seed>-<condition>-<key>.npz`` — the frames (uint8) and a JSON ``meta`` entry; ``key``
  hashes everything that decides the video (pipeline, item, image bytes, seed, call sizes and steps, the
  intervention recipe), so a re-run reuses the videos it already made and any change makes new ones. Scores are
  always computed from the cached uint8 frames, so a re-run scores the same pixels. (Weights are not hashed:
  clear ``videos/`` when the weights at a pipeline path change.)
- ``results.zarr`` — the results `xarray.Dataset` (dims ``item, seed, condition, scorer``) with the per-category
  summary in its group ``summary`` (`open_results`, `open_summary`).

Conditions are ``"baseline"`` (no intervention) and ``"intervention"``, and with a post-trained LoRA (``lora=``, a
folder `fg.train.FocalLoRA.fit` wrote) also ``"lora"`` (the adapter on, no intervention) and ``"lora+intervention"``;
all use the same seeds, so every baseline video has a paired video in each other condition made from the same
initial noise.

Example:
    >>> import tempfile
    >>> from fglens.eval import builtin_suite, run_eval
    >>> from fglens.eval.scorers import MotionMagnitude
    >>> folder = tempfile.mkdtemp()
    >>> suite = builtin_suite(folder, width=48, height=32).select(ids=["man-waves"])
    >>> ev = run_eval(suite, "tiny-wan", folder + "/out", edit={"type": "scale", "factor": 2.0}, seeds=[0],
    ...               steps=2, scorers=[MotionMagnitude()])
    >>> ev.results["score"].dims, ev.results["score"].shape
    (('item', 'seed', 'condition', 'scorer'), (1, 1, 2, 1))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..store.reader import ordinary_strings
from .scorers import Scorer, default_scorers
from .stats import category_table, summarize
from .suite import Item, Suite, builtin_suite, load_suite

CONDITIONS = ("baseline", "intervention", "lora", "lora+intervention")
#: the name the evaluation gives a post-trained adapter while it runs
LORA_ADAPTER = "fglens-eval-lora"
RESULTS_ATTR = "fglens_results"


@dataclass(frozen=True)
class Video:
    """One generated (or cached) video: which item, seed and condition, where its frames are, its run id."""

    item: str
    seed: int
    condition: str
    path: Path
    run: str
    cached: bool


@dataclass
class Evaluation:
    """What `run_eval` returns: the results, the per-category summary and the output folder."""

    results: xr.Dataset
    summary: xr.Dataset
    out: Path

    def table(self):
        """The summary as a `pandas.DataFrame` (one row per category and metric)."""
        return category_table(self.summary)


# --------------------------------------------------------------------------------------------------------------
# identities and the video cache
# --------------------------------------------------------------------------------------------------------------


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(_canonical(obj), sort_keys=True).encode()).hexdigest()


def _canonical(obj: Any) -> Any:
    """`obj` as plain JSON values that are the same in every process: mappings with sorted string keys, sets sorted
    (their order follows PYTHONHASHSEED), numpy scalars as numbers, anything else as its `str`."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (set, frozenset)):
        return sorted((_canonical(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    return str(obj)


def _model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A model config without diffusers' bookkeeping keys (``_use_default_values`` lists a set, so its order changes
    from one process to the next; ``_diffusers_version`` and the like say nothing of the weights' architecture)."""
    return {k: v for k, v in config.items() if not str(k).startswith("_")}


def pipeline_id(pipe: Any, source: str | os.PathLike | None = None) -> dict[str, Any]:
    """What identifies a pipeline in the cache key: its class, its name or folder, its transformer's config."""
    tiny = getattr(pipe, "_fglens_tiny", None)
    if tiny is None and hasattr(pipe, "_fglens_call_defaults"):  # built by fglens.testing directly
        tiny = "tiny (fglens.testing)"
    name = tiny or (str(Path(source).resolve()) if source is not None else None)
    if name is None:
        config = getattr(pipe, "config", {}) or {}
        name = config.get("_name_or_path") if hasattr(config, "get") else None
    transformer = getattr(pipe, "transformer", None)
    config = dict(getattr(transformer, "config", {}) or {})
    return {"class": type(pipe).__name__, "name": name, "transformer": _hash(_model_config(config))}


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_id(edit: Any, anchor_clip: Any) -> Any:
    from ..core.protocol import Intervention

    if isinstance(edit, Intervention):
        return {"object": edit.spec()}
    from ..interventions.recipe import parse_recipe

    return {"recipe": parse_recipe(edit), "anchor_clip": repr(anchor_clip) if anchor_clip is not None else None}


def load_video(path: str | os.PathLike) -> np.ndarray:
    """The frames of a cached video as float32 ``[F, H, W, 3]`` in [0, 1]."""
    with np.load(path, allow_pickle=False) as data:
        return data["frames"].astype(np.float32) / 255.0


def video_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON ``meta`` entry of a cached video (item, seed, condition, run, key inputs)."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


def _save_video(path: Path, frames: np.ndarray, meta: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    quantised = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    from ..store.layout import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a crash never leaves a half-written video under the name
        np.savez_compressed(f, frames=quantised, meta=np.array(json.dumps(meta, default=str)))


# --------------------------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------------------------


def _call_sizes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    skip = ("prompt", "image", "generator")
    return {k: v for k, v in kwargs.items() if k not in skip}


def _anchor_clip(edit: Any, anchor_clip: Any) -> Any:
    """Load the recipe's CLIP once for all items (from_recipe would load it per item)."""
    from ..interventions.recipe import load_clip, parse_recipe

    if anchor_clip is not None or not isinstance(edit, (Mapping, str)):
        return anchor_clip
    recipe = parse_recipe(edit) or {}
    needs = recipe.get("type") == "anchor_mask" or (recipe.get("type") == "focal_guidance" and
                                                    recipe.get("anchor", True))
    return load_clip(recipe.get("clip")) if needs and recipe.get("clip") is not None else None


def generate(
    suite: Suite,
    pipe: Any,
    out: str | os.PathLike,
    *,
    edit: Any = None,
    seeds: Sequence[int] = (0, 1, 2),
    steps: int | None = None,
    call: Mapping[str, Any] | None = None,
    anchor_clip: Any = None,
    record: bool = True,
    mp4: bool = False,
    source: str | os.PathLike | None = None,
    progress: bool = False,
    lora: str | os.PathLike | None = None,
) -> list[Video]:
    """Generate (or reuse from the cache) every item x seed x condition; see the module docstring for where
    things go. ``call`` holds extra `fglens.pipelines.call_kwargs` arguments (height, width, num_frames,
    guidance_scale, negative_prompt). Every item is checked before the first video is made. `lora`: a folder of
    a LoRA in diffusers' format, loaded for the ``lora`` conditions and removed again before returning."""
    import fglens as fg

    from ..core.protocol import Intervention
    from ..interventions.recipe import from_recipe, parse_recipe
    from ..jobs import CallOptions
    from ..pipelines import spatial_multiple

    out = Path(out)
    call = dict(call or {})
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers; got {seeds}")
    if edit is not None and not isinstance(edit, Intervention):
        edit = parse_recipe(edit)  # a bad recipe fails here, before any work
    conditions = [c for c in CONDITIONS if (edit is not None or "intervention" not in c)
                  and (lora is not None or "lora" not in c)]
    lora_id = _lora_id(lora) if lora is not None else None  # a missing or foreign folder: an error now
    anchor_clip = _anchor_clip(edit, anchor_clip)
    pid = pipeline_id(pipe, source)
    edit_id = _edit_id(edit, anchor_clip) if edit is not None else None

    options = CallOptions.from_mapping({"steps": steps, **call})
    checked = {item.id: options.kwargs(pipe, prompt=item.prompt, image=item.image)
               for item in suite}  # image, sizes and aspect ratio of every item, before any sampling

    def intervention(item: Item, kwargs: Mapping[str, Any]) -> Any:
        if isinstance(edit, Intervention):
            return edit
        return from_recipe(edit, image=kwargs["image"], prompt=item.prompt, words=list(item.words),
                           anchor_words=item.anchor_words, clip=anchor_clip,
                           size=(kwargs.get("height"), kwargs.get("width")), token_px=spatial_multiple(pipe))

    if edit is not None:  # unknown layers and other binding errors, before any sampling
        first = suite.items[0]
        fg.trace(pipe, edit=intervention(first, checked[first.id]))

    item_ids = {item.id: {"id": item.id, "prompt": item.prompt, "words": list(item.words),
                          "image": _file_hash(item.image),
                          **({} if item.anchor_words is None else {"anchor_words": list(item.anchor_words)})}
                for item in suite}
    jobs = [(item, seed, cond) for item in suite for seed in seeds for cond in conditions]
    with _lora_loaded(pipe, lora) as use_lora:
        return _generate(jobs, pipe, out, options, item_ids, pid, edit_id, lora_id, intervention, use_lora,
                         record, mp4, progress)


def _generate(jobs, pipe, out: Path, options, item_ids, pid, edit_id, lora_id, intervention, use_lora, record: bool,
              mp4: bool, progress: bool) -> list[Video]:
    from ..jobs import run_item
    from ..pipelines import frames_of, save_video

    store = out / "runs.zarr"
    videos: list[Video] = []
    bar = _progress(len(jobs), "generating", progress)
    for item, seed, cond in jobs:
        kwargs = options.kwargs(pipe, prompt=item.prompt, image=item.image, seed=seed)
        key_inputs = {"pipeline": pid, "item": item_ids[item.id], "seed": seed, "call": _call_sizes(kwargs),
                      "edit": edit_id if "intervention" in cond else None}
        if "lora" in cond:  # the adapter's bytes decide the video too (videos without it keep their old keys)
            key_inputs["lora"] = lora_id
        key = _hash(key_inputs)[:16]
        path = out / "videos" / item.id / f"seed{seed}-{cond}-{key}.npz"
        if path.is_file():
            videos.append(Video(item.id, seed, cond, path, video_meta(path).get("run", ""), True))
            bar.update()
            continue
        obj = intervention(item, kwargs) if "intervention" in cond else None
        use_lora("lora" in cond)
        output, run = run_item(pipe, kwargs, words=item.words, record={} if record else None, edit=obj, store=store)
        run_id = run.run_ids[-1] if record and run.run_ids else ""
        frames = frames_of(output)
        meta = {**key_inputs, "key": key, "condition": cond, "run": run_id,
                "store": str(store) if record else None, "created": datetime.now(timezone.utc).isoformat()}
        _save_video(path, frames, meta)
        if mp4:
            save_video(frames, path.with_suffix(".mp4"))
        videos.append(Video(item.id, seed, cond, path, run_id, False))
        bar.update()
    bar.close()
    return videos


def _lora_id(folder: str | os.PathLike) -> str:
    """The sha256 of a LoRA folder's weights (diffusers' ``pytorch_lora_weights.safetensors``)."""
    path = Path(folder) / "pytorch_lora_weights.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"--lora {folder}: no pytorch_lora_weights.safetensors there (a folder written by "
                                "fglens train / fg.train.FocalLoRA.fit or a pipeline's save_lora_weights)")
    return _file_hash(path)


@contextmanager
def _lora_loaded(pipe: Any, folder: str | os.PathLike | None):
    """Load the adapter (if any) and yield ``use(on)``, which switches it on or off; remove it on the way out."""
    if folder is None:
        yield lambda on: None
        return
    if not hasattr(pipe, "load_lora_weights"):
        raise TypeError(f"{type(pipe).__name__} cannot load LoRA weights (no load_lora_weights)")
    present = list(pipe.get_list_adapters()) if hasattr(pipe, "get_list_adapters") and pipe.get_list_adapters() \
        else []
    if present:
        raise ValueError(f"the pipeline already has LoRA adapters ({present}): the lora conditions compare the "
                         "model with and without the given adapter alone; unload them first (unload_lora_weights)")
    pipe.load_lora_weights(str(folder), adapter_name=LORA_ADAPTER)

    def use(on: bool) -> None:
        if on:
            pipe.enable_lora()
        else:
            pipe.disable_lora()

    try:
        yield use
    finally:
        pipe.delete_adapters(LORA_ADAPTER)


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled)


# --------------------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------------------


def score_videos(
    videos: Sequence[Video], suite: Suite, scorers: Sequence[Scorer], *, out: str | os.PathLike | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Score every video with every scorer: the results Dataset (dims ``item, seed, condition, scorer``).

    Variables: ``score`` (NaN where a scorer could not score), ``missing`` (True there), ``reason`` (why; "" where
    scored), ``total`` (item, seed, condition: the mean of the scores that exist). Coordinates ``category`` and
    ``prompt`` along ``item``; ``run`` (the run's name in ``runs.zarr``) and ``video`` (the cached file, relative
    to ``out``) along ``item, seed, condition``.
    """
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise ValueError(f"scorer names must be distinct; got {names}")
    if not videos:
        raise ValueError("no videos to score")
    items = [item.id for item in suite if any(v.item == item.id for v in videos)]
    seeds = sorted({v.seed for v in videos})
    conditions = [c for c in CONDITIONS if any(v.condition == c for v in videos)]
    shape = (len(items), len(seeds), len(conditions))
    score = np.full((*shape, len(names)), np.nan)
    reason = np.full((*shape, len(names)), "not generated", dtype=object)
    runs, paths = np.full(shape, "", dtype=object), np.full(shape, "", dtype=object)
    root = Path(out) if out is not None else None
    bar = _progress(len(videos), "scoring", progress)
    for v in videos:
        i, s, c = items.index(v.item), seeds.index(v.seed), conditions.index(v.condition)
        frames = load_video(v.path)
        for k, scorer in enumerate(scorers):
            value = scorer.score(frames, suite[v.item])
            value_f = float(value)
            if not math.isnan(value_f) and not -1e-9 <= value_f <= 1 + 1e-9:
                raise ValueError(f"scorer {scorer.name} gave {value_f} for {v.item}, outside [0, 1]")
            score[i, s, c, k] = value_f
            reason[i, s, c, k] = getattr(value, "reason", "cannot score") if math.isnan(value_f) else ""
        runs[i, s, c] = v.run
        paths[i, s, c] = str(v.path.relative_to(root)) if root is not None and v.path.is_relative_to(root) \
            else str(v.path)
        bar.update()
    bar.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, as they should
        total = np.nanmean(score, axis=-1)
    obj = lambda xs: np.asarray(list(xs), dtype=object)  # noqa: E731 - variable-length strings in zarr
    by_id = {item.id: item for item in suite}
    dims = ("item", "seed", "condition")
    ds = xr.Dataset(
        {"score": ((*dims, "scorer"), score), "total": (dims, total),
         "missing": ((*dims, "scorer"), np.isnan(score)), "reason": ((*dims, "scorer"), reason)},
        coords={"item": obj(items), "seed": np.asarray(seeds, dtype=np.int64), "condition": obj(conditions),
                "scorer": obj(names), "category": ("item", obj(by_id[i].category for i in items)),
                "prompt": ("item", obj(by_id[i].prompt for i in items)), "run": (dims, runs), "video": (dims, paths)},
    )
    missing_everywhere = [n for k, n in enumerate(names) if np.isnan(score[..., k]).all()]
    ds.attrs.update({
        RESULTS_ATTR: 1,
        "scorers": json.dumps({s.name: {"class": type(s).__name__, **getattr(s, "spec", {})} for s in scorers},
                              default=str),
        "missing_scorers": json.dumps(missing_everywhere),
        "total": "mean over scorers of the scores that exist (missing ones left out)",
    })
    return ds


# --------------------------------------------------------------------------------------------------------------
# results on disk
# --------------------------------------------------------------------------------------------------------------


def _refuse_foreign(path: Path) -> None:
    if not path.exists():
        return
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as exc:  # noqa: BLE001 - anything unreadable is not ours to overwrite
        raise FileExistsError(f"{path} exists and is not an fglens results store; not overwriting it") from exc
    if RESULTS_ATTR not in attrs:
        raise FileExistsError(f"{path} exists and is not an fglens results store; not overwriting it")


def write_results(results: xr.Dataset, summary: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write the results (root) and the summary (group ``summary``) as one zarr v3 store; an existing results
    store at `path` is replaced, any other existing path is refused."""
    path = Path(path)
    _refuse_foreign(path)
    results.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    summary.to_zarr(path, group="summary", mode="w", zarr_format=3, consolidated=False)
    import zarr

    # consolidated metadata of both groups, last: a plain xr.open_zarr(path) then opens it without a warning
    with warnings.catch_warnings():  # "consolidated metadata is not part of the zarr v3 spec (yet)"
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path), zarr_format=3)
    return path


def open_results(path: str | os.PathLike) -> xr.Dataset:
    """The results Dataset written by `run_eval` (``out/results.zarr``), loaded into memory.

    Example:
        >>> open_results("missing.zarr")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no fglens results at missing.zarr
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no fglens results at {path}")
    ds = ordinary_strings(xr.open_zarr(path, consolidated=False).load())
    if RESULTS_ATTR not in ds.attrs:
        raise ValueError(f"{path} is a zarr store but not fglens evaluation results")
    return ds


def open_summary(path: str | os.PathLike) -> xr.Dataset:
    """The per-category summary stored with the results (group ``summary`` of ``out/results.zarr``)."""
    open_results(path)
    return ordinary_strings(xr.open_zarr(Path(path), group="summary", consolidated=False).load())


# --------------------------------------------------------------------------------------------------------------
# everything
# --------------------------------------------------------------------------------------------------------------


def run_eval(
    suite: Suite | str | os.PathLike,
    pipeline: Any,
    out: str | os.PathLike,
    *,
    edit: Any = None,
    seeds: Sequence[int] = (0, 1, 2),
    scorers: Sequence[Scorer] | None = None,
    clip: Any = None,
    vlm: str | os.PathLike | None = None,
    steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    anchor_clip: Any = None,
    record: bool = True,
    mp4: bool = False,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    items: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    dtype: str | None = None,
    device: str | None = None,
    progress: bool = False,
    lora: str | os.PathLike | None = None,
) -> Evaluation:
    """Evaluate a pipeline on a suite, with and without an intervention, and write everything to `out`.

    Args:
        suite: a `Suite`, the path of a JSONL suite, or ``"builtin"``: the built-in suite, drawn at the video's
            size into ``out/suite/``.
        pipeline: a diffusers pipeline, a built-in tiny pipeline name (``"tiny-wan"``) or a local folder (loaded
            with `dtype` and `device`, see `fglens.pipelines.load_pipeline`).
        out: the output folder (created); see the module docstring for its layout.
        edit: the intervention: a recipe (dict or JSON text, see `fglens.interventions.recipe`; built per item,
            so anchors follow each item's image and words) or an `fg.Intervention` used for every item. None:
            only the baseline is generated.
        seeds: the seeds, the same for both conditions.
        scorers: the scorers (default: `default_scorers(clip, vlm)`).
        clip: the `fglens.anchors.Clip` of the CLIP scorers (None: they are reported missing).
        vlm: a local vision-language model folder for the judge (None: reported missing).
        steps, height, width, num_frames, guidance_scale, negative_prompt: the pipeline call (default: the
            pipeline's own; the tiny pipelines use small sizes).
        anchor_clip: the CLIP for the recipe's anchors (default: the recipe's ``clip`` entry, loaded once).
        record: record each run into ``out/runs.zarr`` with ``fg.Record(words=item's words)``.
        mp4: also write each video as an mp4 next to its cached frames.
        confidence, n_resamples: of the bootstrap intervals (`fglens.eval.stats`).
        items, categories: run only these item ids / categories (`Suite.select`).
        dtype, device: for a pipeline loaded from a folder.
        progress: show progress bars.
        lora: a post-trained LoRA folder (`fg.train.FocalLoRA.fit`, ``fglens train``): adds the conditions
            ``lora`` and, with an `edit`, ``lora+intervention`` (same seeds), each compared with the baseline.
    """
    from ..pipelines import TINY, default_size, load_pipeline

    out = Path(out)
    _refuse_foreign(out / "results.zarr")
    if not isinstance(suite, Suite) and str(suite) != "builtin":
        suite = load_suite(suite)  # a bad suite fails before the pipeline is loaded
    if isinstance(suite, Suite) and (items is not None or categories is not None):
        suite = suite.select(ids=items, categories=categories)
    source = None
    loaded = isinstance(pipeline, (str, os.PathLike))
    if loaded:
        source = None if str(pipeline) in TINY else pipeline
        pipeline = load_pipeline(pipeline, dtype=dtype, device=device)
    call = {k: v for k, v in dict(height=height, width=width, num_frames=num_frames, guidance_scale=guidance_scale,
                                  negative_prompt=negative_prompt).items() if v is not None}
    if not isinstance(suite, Suite):
        size = {**default_size(pipeline), **call}
        suite = builtin_suite(out / "suite", width=size.get("width") or 96, height=size.get("height") or 64)
        if items is not None or categories is not None:
            suite = suite.select(ids=items, categories=categories)
    scorers = list(scorers) if scorers is not None else default_scorers(clip, vlm)
    out.mkdir(parents=True, exist_ok=True)
    videos = generate(suite, pipeline, out, edit=edit, seeds=seeds, steps=steps, call=call, anchor_clip=anchor_clip,
                      record=record, mp4=mp4, source=source, progress=progress, lora=lora)
    pid = pipeline_id(pipeline, source)
    if loaded:  # ours: free its memory before the scorers load their models (a VLM judge needs the room)
        del pipeline
        _free_accelerator_memory()
    results = score_videos(videos, suite, scorers, out=out, progress=progress)
    from .. import __version__
    from ..core.protocol import Intervention
    from ..interventions.recipe import parse_recipe

    edit_spec = edit.spec() if isinstance(edit, Intervention) else parse_recipe(edit)
    results.attrs.update({
        "suite": str(suite.path) if suite.path is not None else "",
        "pipeline": json.dumps(pid),
        "intervention": json.dumps(edit_spec, default=str),
        "seeds": json.dumps([int(s) for s in seeds]),
        "call": json.dumps({"steps": steps, **call}, default=str),
        "runs_store": str(out / "runs.zarr") if record else "",
        "lora": json.dumps({"path": str(lora), "sha256": _lora_id(lora)}) if lora is not None else "",
        "fglens_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(),
    })
    summary = summarize(results, confidence=confidence, n_resamples=n_resamples)
    write_results(results, summary, out / "results.zarr")
    return Evaluation(results, summary, out)
