"""Sweeps: many prompts and seeds, traced on one or many processes, into one store, resumable.

A sweep is a JSONL *spec*: one JSON object per line, one pipeline call (one run) per line::

    {"image": "imgs/dog.png", "prompt": "a dog jumps over the fence", "words": ["dog", "jumps"], "seed": 0,
     "intervention": null, "id": "dog-0", "steps": 30}

Required fields: ``prompt``, ``words``, ``seed``, and ``image`` for image-to-video pipelines (a path relative to
the spec file's folder). Optional: ``intervention`` (a recipe, see `fglens.interventions.recipe`, or null),
``anchor_words`` (the words the recipe's anchor takes: a subset of ``words``, possibly empty; default: the
recipe's rule, the words CLIP sees in the image), ``id`` (names the line's run), and per-line call options
``steps``, ``height``, ``width``, ``num_frames``, ``negative_prompt``, ``guidance_scale`` (sweep-wide defaults
come from `run_sweep`'s arguments / the CLI).
Blank lines are ignored.

`run_sweep` checks every line before any sampling starts (fields, JSON, words in the prompt as the pipeline's
own tokenizer splits it, intervention layers against the model, image size against the video), and the
store: a store remembers the fingerprint of the sweep that uses it (``.fglens-sweep.json`` in the store's
folder, written once, atomically); a different spec is refused unless ``force_new_sweep=True``.

Ranks: under ``torchrun`` / ``accelerate launch`` (env ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) rank r of K takes
the lines i with ``i % K == r``, samples on ``cuda:LOCAL_RANK`` when CUDA is available, and writes its own
runs into the shared store; no process group, no coordination. Each line's run is named
``<sweep id>-<line index>`` (or ``<sweep id>-<id>``), the sweep id coming from the fingerprint, so a
re-run finds it: a complete run is skipped, an incomplete one (a killed process) is replaced.

Example:
    >>> import json, os, tempfile
    >>> from fglens.sweep import run_sweep
    >>> from fglens.testing import reference_image
    >>> folder = tempfile.mkdtemp()
    >>> reference_image().save(os.path.join(folder, "ref.png"))
    >>> lines = [{"image": "ref.png", "prompt": "a dog jumps over the red fence", "words": ["dog"], "seed": s}
    ...          for s in (0, 1)]
    >>> spec = os.path.join(folder, "spec.jsonl")
    >>> _ = open(spec, "w").write("\\n".join(json.dumps(line) for line in lines))
    >>> store = os.path.join(folder, "sweep.zarr")
    >>> run_sweep(spec, "tiny-wan", store, steps=2, progress=False).summary()
    'rank 0/1: 2 line(s): done 2, skipped 0, redone 0, failed 0'
    >>> run_sweep(spec, "tiny-wan", store, steps=2, progress=False).summary()   # resume: nothing left to do
    'rank 0/1: 2 line(s): done 0, skipped 2, redone 0, failed 0'
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .jobs import CALL_OPTIONS, CallOptions, run_item
from .jsonl import jsonl_lines

#: fields every spec line must have (``image`` too, for image-to-video pipelines)
REQUIRED = ("prompt", "words", "seed")
#: every field a spec line may have
FIELDS = ("image", *REQUIRED, "intervention", "anchor_words", "id", *CALL_OPTIONS)
#: the file in the store's folder that holds the fingerprint of the sweep using it
SWEEP_FILE = ".fglens-sweep.json"
#: options of `fg.Record` a sweep passes on (the words come from each line)
RECORD_OPTIONS = ("stats", "maps", "layers", "steps", "branches", "chunk_bytes")


class SweepError(ValueError):
    """A sweep refused before any work: a bad spec line (its number is in the message), or a store in use."""


@dataclass(frozen=True)
class SweepLine:
    """One line of a spec, checked for its fields and types.

    Attributes:
        index: position among the spec's items (0-based; blank lines do not count); decides the rank.
        lineno: line number in the file (1-based), for messages.
        image: the reference image, resolved against the spec's folder (None when the line has none).
        image_text: the image path as the line wrote it.
        options: the call options (`CALL_OPTIONS`) with sweep-wide defaults filled in.
    """

    index: int
    lineno: int
    prompt: str
    words: tuple[str, ...]
    seed: int
    image: Path | None = None
    image_text: str | None = None
    intervention: dict[str, Any] | None = None
    id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    anchor_words: tuple[str, ...] | None = None

    def normalised(self) -> dict[str, Any]:
        """What the fingerprint hashes: every field that changes the run (the image by its bytes)."""
        digest = None
        if self.image is not None and self.image.is_file():
            digest = hashlib.sha256(self.image.read_bytes()).hexdigest()
        out = {"prompt": self.prompt, "words": list(self.words), "seed": self.seed, "image": self.image_text,
               "image_sha256": digest, "intervention": self.intervention, "id": self.id,
               "options": {k: self.options[k] for k in sorted(self.options)}}
        if self.anchor_words is not None:  # absent from the fingerprints of lines without it, as before it existed
            out["anchor_words"] = list(self.anchor_words)
        return out


@dataclass
class SweepResult:
    """What one rank did. Line indices in each list; `failed` maps a line index to its error."""

    sweep_id: str
    fingerprint: str
    store: Path
    rank: int
    world_size: int
    lines: list[int]
    run_ids: dict[int, str]
    done: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    redone: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    stopped: bool = False

    @property
    def ok(self) -> bool:
        """No line failed and none was left out by ``fail_fast``."""
        return not self.failed and not self.stopped

    def summary(self) -> str:
        """One line: ``rank r/K: n line(s): done a, skipped b, redone c, failed d``."""
        text = (f"rank {self.rank}/{self.world_size}: {len(self.lines)} line(s): done {len(self.done)}, "
                f"skipped {len(self.skipped)}, redone {len(self.redone)}, failed {len(self.failed)}")
        if self.stopped:
            left = len(self.lines) - len(self.done) - len(self.skipped) - len(self.redone) - len(self.failed)
            text += f" (stopped by fail-fast; {left} not attempted)"
        return text


# -- the spec -------------------------------------------------------------------------------------------------
def load_spec(path: str | os.PathLike, defaults: Mapping[str, Any] | None = None) -> list[SweepLine]:
    """Read and check a JSONL spec (fields and types only; `check_spec` checks it against a pipeline).

    Every bad line is reported at once, each with its line number, in one `SweepError`.

    Example:
        >>> import os, tempfile
        >>> from fglens.sweep import load_spec
        >>> spec = os.path.join(tempfile.mkdtemp(), "spec.jsonl")
        >>> _ = open(spec, "w").write('{"prompt": "a dog", "words": ["dog"]}\\n')
        >>> load_spec(spec)
        Traceback (most recent call last):
        ...
        fglens.sweep.SweepError: ...spec.jsonl line 1: missing field(s) 'seed'; ...
    """
    from .interventions.recipe import parse_recipe

    spec = Path(path)
    if not spec.is_file():
        raise FileNotFoundError(f"no sweep spec at {spec}")
    defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
    unknown = sorted(set(defaults) - set(CALL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown sweep-wide option(s) {unknown}; accepted: {', '.join(CALL_OPTIONS)}")
    lines: list[SweepLine] = []
    errors: list[str] = []
    for lineno, where, item in jsonl_lines(spec):
        if isinstance(item, ValueError):
            errors.append(str(item))
            continue
        try:
            lines.append(_line(item, len(lines), lineno, spec.parent, defaults, parse_recipe))
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
    if not lines and not errors:
        errors.append(f"{spec} holds no spec lines")
    ids = {}
    for line in lines:
        if line.id is not None:
            if line.id in ids:
                errors.append(f"{spec} line {line.lineno}: id {line.id!r} is already used on line {ids[line.id]}")
            ids.setdefault(line.id, line.lineno)
    _raise(errors)
    return lines


def _line(item: Any, index: int, lineno: int, folder: Path, defaults: Mapping[str, Any], parse_recipe) -> SweepLine:
    if not isinstance(item, dict):
        raise ValueError(f"a spec line is a JSON object with {', '.join(REQUIRED)}; got {type(item).__name__}")
    missing = [k for k in REQUIRED if k not in item]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(map(repr, missing))}; a line needs {', '.join(REQUIRED)} "
                         f"(and image for image-to-video), optionally {', '.join(FIELDS[4:])}")
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; accepted: {', '.join(FIELDS)}")
    prompt, words, seed = item["prompt"], item["words"], item["seed"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"'prompt' must be a non-empty string; got {prompt!r}")
    if (not isinstance(words, list) or not words
            or not all(isinstance(w, str) and w.strip() for w in words)):
        raise ValueError(f"'words' must be a non-empty list of words of the prompt; got {words!r}")
    anchor_words = item.get("anchor_words")
    if anchor_words is not None and (not isinstance(anchor_words, list)
                                     or not all(isinstance(w, str) and w in words for w in anchor_words)):
        raise ValueError(f"'anchor_words' must be a list of the line's words {words} (possibly empty); "
                         f"got {anchor_words!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"'seed' must be a non-negative integer; got {seed!r}")
    image = item.get("image")
    if image is not None and not isinstance(image, str):
        raise ValueError(f"'image' must be a path (relative to the spec's folder) or null; got {image!r}")
    if image is not None and not (folder / image).is_file():
        raise ValueError(f"image {image!r} not found (looked for {folder / image}; paths are relative to the "
                         "spec's folder)")
    run_id = item.get("id")
    if run_id is not None:
        from .store import check_run_id

        if not isinstance(run_id, str):
            raise ValueError(f"'id' must be a string; got {run_id!r}")
        check_run_id(run_id)
    try:
        recipe = parse_recipe(item.get("intervention"))
    except ValueError as exc:
        raise ValueError(f"bad intervention: {exc}") from exc
    options = {**defaults, **{k: item[k] for k in CALL_OPTIONS if item.get(k) is not None}}
    for key in ("steps", "height", "width", "num_frames"):
        value = options.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{key!r} must be a positive integer; got {value!r}")
    if not isinstance(options.get("negative_prompt", ""), str):
        raise ValueError(f"'negative_prompt' must be a string; got {options['negative_prompt']!r}")
    scale = options.get("guidance_scale", 1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise ValueError(f"'guidance_scale' must be a number; got {scale!r}")
    return SweepLine(index=index, lineno=lineno, prompt=prompt, words=tuple(words), seed=seed,
                     image=None if image is None else (folder / image), image_text=image,
                     intervention=recipe, id=run_id, options=options,
                     anchor_words=None if anchor_words is None else tuple(anchor_words))


def _raise(errors: list[str], limit: int = 20) -> None:
    if not errors:
        return
    shown = errors[:limit] + ([f"... and {len(errors) - limit} more"] if len(errors) > limit else [])
    head = "the sweep was not started: " if len(errors) > 1 else ""
    raise SweepError(head + ("\n  ".join([""] + shown) if len(errors) > 1 else shown[0]))


def check_spec(
    lines: Sequence[SweepLine],
    pipe: Any,
    *,
    clip: Any = None,
    record: Mapping[str, Any] | None = None,
    spec: str | os.PathLike = "spec",
) -> None:
    """Check every line against a loaded pipeline before any sampling; one `SweepError` lists every bad line.

    Per line: the image and size (`fglens.pipelines.call_kwargs`: image readable, size a multiple of the token
    patch, aspect ratio), the words (located in the prompt as the pipeline's tokenizer splits it, the way the
    tracer will), and the intervention (every layer it names exists in this model; cache pairings bind; an anchor
    has a CLIP model; its words are in the prompt). Also the sweep-wide `record` options (`fg.Record` arguments
    other than ``words``; its layers must exist).
    """
    from .adapters import adapter_for
    from .core.scope import resolve_layers
    from .pipelines import call_kwargs, takes_image
    from .trace.record import Record
    from .trace.tracer import TRANSFORMER_ATTRS

    adapters = [adapter_for(getattr(pipe, a), "" if a == "transformer" else f"{a}.")
                for a in TRANSFORMER_ATTRS if getattr(pipe, a, None) is not None]
    per_model = [a.layers() for a in adapters]
    kinds = {site.kind for a in adapters for site in a.sites()}
    try:
        resolve_layers(Record(words=["_"], **(record or {})).layers, per_model)
    except (ValueError, TypeError) as exc:
        raise SweepError(f"bad record options {dict(record or {})}: {exc}") from exc
    errors = []
    for line in lines:
        where = f"{spec} line {line.lineno}"
        try:
            image = _image(line, pipe)
            if image is None and takes_image(pipe):
                raise ValueError(f"missing field 'image': {type(pipe).__name__} is image-to-video (only the tiny "
                                 "pipelines have a default reference image)")
            call_kwargs(pipe, prompt=line.prompt, image=image, seed=line.seed, **line.options)
            tokens = prompt_tokens(pipe, line.prompt)
            tokens.locate(line.words)
            if line.intervention is not None:
                _check_recipe(line, tokens, per_model, kinds, clip)
        except (ValueError, TypeError, OSError) as exc:
            errors.append(f"{where}: {exc}")
    _raise(errors)


def effective_recipe(recipe: Mapping[str, Any], clip: Any = None) -> dict[str, Any]:
    """`recipe` as a sweep applies it: a ``focal_guidance`` without a ``clip`` (and no sweep-wide `clip`) but with
    cache sources (``src``) drops its FSG anchor and applies the cache transfer alone, as ``fglens generate``
    and ``fglens eval`` do without ``--clip``; the run's stored intervention then says ``"anchor": false``.

    Example:
        >>> effective_recipe({"type": "focal_guidance", "layers": [1], "src": [3]})["anchor"]
        False
        >>> "anchor" in effective_recipe({"type": "focal_guidance", "layers": [1], "src": [3], "clip": "tiny"})
        False
    """
    recipe = dict(recipe)
    if (recipe.get("type") == "focal_guidance" and recipe.get("anchor", True) and clip is None
            and recipe.get("clip") is None and recipe.get("src") is not None):
        recipe["anchor"] = False
    return recipe


def anchor_notes(lines: Sequence[SweepLine], clip: Any = None) -> list[str]:
    """The note printed before a sweep whose focal_guidance lines lose their anchor (see `effective_recipe`)."""
    dropped = [line.lineno for line in lines if line.intervention is not None
               and line.intervention.get("anchor", True) and not effective_recipe(line.intervention, clip)
               .get("anchor", True)]
    if not dropped:
        return []
    return [f"{len(dropped)} focal_guidance line(s) without a 'clip' (line {', '.join(map(str, dropped[:8]))}"
            f"{', ...' if len(dropped) > 8 else ''}): the FSG anchor is dropped; only the attention cache transfer "
            "is applied"]


def _image(line: SweepLine, pipe: Any) -> Any:
    """The line's image, or for a tiny image-to-video pipeline the default one at the line's size."""
    from .pipelines import default_image

    if line.image is not None:
        return line.image
    return default_image(pipe, line.options.get("height"), line.options.get("width"))


def _check_recipe(line: SweepLine, tokens, per_model, kinds, clip) -> None:
    from .core.scope import resolve_layers
    from .interventions.recipe import from_recipe, recipe_layers
    from .trace.editing import Editor

    recipe = effective_recipe(line.intervention, clip)
    try:
        resolve_layers(recipe_layers(recipe), per_model)
    except ValueError as exc:
        raise ValueError(f"the intervention names a layer this model does not have: {exc}") from exc
    if recipe.get("words"):
        tokens.locate(recipe["words"])
    kind = recipe["type"]
    anchored = kind == "anchor_mask" or (kind == "focal_guidance" and recipe.get("anchor", True))
    if anchored and clip is None:
        spec = recipe.get("clip")
        if spec is None:
            what = "and no 'src' for the cache transfer, so nothing is left to apply" if kind == "focal_guidance" \
                else "and nothing else to apply"
            raise ValueError(f"the {kind} intervention builds a CLIP anchor: give it a 'clip' "
                             "({\"model\": ..., \"pretrained\": \"/path/weights\"}, or \"tiny\" for tiny pipelines) "
                             f"{what}")
        if isinstance(spec, Mapping) and spec.get("pretrained") and not Path(spec["pretrained"]).exists():
            raise ValueError(f"the intervention's CLIP weights {spec['pretrained']} do not exist")
    # bind what can be built without the image (cache pairings, layers of every part) as the tracer would
    if kind in ("cache_transfer", "ablate", "scale") or (kind == "focal_guidance" and recipe.get("src") is not None):
        edit = from_recipe({**recipe, "anchor": False} if kind == "focal_guidance" else recipe, words=line.words)
        Editor(edit, per_model, kinds)


def prompt_tokens(pipe: Any, prompt: str):
    """The prompt as the pipeline's own tokenizer splits it for the transformer's text keys (`PromptTokens`): the
    adapter of its transformer says how (`Adapter.prompt_tokens`)."""
    from .adapters import adapter_for

    return adapter_for(pipe.transformer).prompt_tokens(pipe, prompt)


# -- fingerprint and the store's sweep record -----------------------------------------------------------------
def pipeline_identity(pipeline: Any) -> str:
    """How a sweep names its pipeline in the fingerprint: a tiny name, a local folder, or class + config hash."""
    from .pipelines import TINY

    if isinstance(pipeline, (str, os.PathLike)):
        name = str(pipeline)
        return name if name in TINY else str(Path(name).resolve())
    tiny = getattr(pipeline, "_fglens_tiny", None)
    if tiny:
        return str(tiny)
    source = getattr(pipeline, "name_or_path", None)
    if source:
        return str(Path(source).resolve()) if Path(source).exists() else str(source)
    config = json.dumps(dict(pipeline.transformer.config), sort_keys=True, default=str)
    return f"{type(pipeline).__name__}:{hashlib.sha256(config.encode()).hexdigest()[:16]}"


def fingerprint(lines: Sequence[SweepLine], pipeline: str, record: Mapping[str, Any] | None = None) -> str:
    """sha256 of the normalised lines, the pipeline's identity and the record options."""
    body = {"lines": [line.normalised() for line in lines], "pipeline": pipeline,
            "record": {k: record[k] for k in sorted(record or {})}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=list).encode()).hexdigest()


def read_sweep_record(store: str | os.PathLike) -> dict[str, Any] | None:
    """The record of the sweep that uses `store` (``.fglens-sweep.json``), or None."""
    try:
        return json.loads((Path(store) / SWEEP_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _check_store(store: Path, fp: str, force: bool) -> None:
    old = read_sweep_record(store)
    if old is None or old.get("fingerprint") == fp or force:
        return
    raise SweepError(
        f"{store} is already used by sweep {old.get('sweep_id')} (spec {old.get('spec')}, {old.get('lines')} "
        "line(s)), and this spec differs from it (lines, images, pipeline or record options). Use a new store, or "
        "force_new_sweep=True (`fglens sweep --force-new-sweep`) to start a new sweep in this store; the old "
        "sweep's runs are kept."
    )


def _claim_store(store: Path, record: dict[str, Any], force: bool) -> None:
    """Write the sweep record once, atomically (`os.link` is exclusive); replace a different one only if forced."""
    from .store.layout import ensure_root, replace_file, write_once

    ensure_root(store)
    target = store / SWEEP_FILE
    if write_once(target, json.dumps(record, indent=2).encode()):
        return
    old = read_sweep_record(store) or {}
    if old.get("fingerprint") == record["fingerprint"]:
        return
    if not force:
        _check_store(store, record["fingerprint"], force)  # another sweep came first: refuse
    record = {**record, "replaced": [*old.pop("replaced", []), old]}
    replace_file(target, json.dumps(record, indent=2).encode())


# -- ranks ----------------------------------------------------------------------------------------------------
def rank_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank): from the arguments, else ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
    (set by torchrun and accelerate launch), else one process."""

    def env(name: str, default: int) -> int:
        value = os.environ.get(name)
        try:
            return default if value in (None, "") else int(value)
        except ValueError as exc:
            raise ValueError(f"environment variable {name}={value!r} is not an integer") from exc

    world = env("WORLD_SIZE", 1) if world_size is None else int(world_size)
    r = env("RANK", 0) if rank is None else int(rank)
    local = env("LOCAL_RANK", 0)
    if world < 1 or not 0 <= r < world:
        raise ValueError(f"rank {r} of world size {world}: need world_size >= 1 and 0 <= rank < world_size")
    return r, world, local


# -- the sweep ------------------------------------------------------------------------------------------------
def run_sweep(
    spec_path: str | os.PathLike,
    pipeline: Any,
    store: str | os.PathLike,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    record: Mapping[str, Any] | None = None,
    clip: Any = None,
    force_new_sweep: bool = False,
    fail_fast: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Trace this rank's share of a sweep spec into `store`, skipping lines already complete there.

    Args:
        spec_path: the JSONL spec (see the module docstring).
        pipeline: a built-in tiny name (``"tiny-wan"``), a local diffusers folder, or a loaded pipeline.
        store: the zarr store all ranks write into.
        rank, world_size: this process's share (default: from ``RANK`` / ``WORLD_SIZE``, else 0 of 1).
        device: where to load the pipeline (default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU); a
            loaded pipeline is moved only when `device` is given.
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"`` for a pipeline loaded from a folder.
        steps, height, width, num_frames: defaults for lines that do not set them.
        record: options of `fg.Record` for every run (``maps``, ``stats``, ``layers``, ``steps``, ``branches``).
        clip: an `fg.anchors.Clip` for anchor interventions (default: each recipe's own ``clip``).
        force_new_sweep: start this spec in a store used by a different sweep (its runs are kept).
        fail_fast: stop at the first failing line (default: report it and go on).
        progress: show a tqdm bar for this rank.

    Returns the `SweepResult` of this rank. Errors before any work (`SweepError`, `FileNotFoundError`, ...):
    a bad spec line, an unknown pipeline class, a store used by another sweep.
    """
    from .pipelines import load_pipeline
    from .store import check_run_id, store_path

    spec = Path(spec_path)
    r, world, local = rank_info(rank, world_size)
    record = dict(record or {})
    unknown = sorted(set(record) - set(RECORD_OPTIONS))
    if unknown:
        raise ValueError(f"unknown record option(s) {unknown}; accepted: {', '.join(RECORD_OPTIONS)}")
    lines = load_spec(spec, dict(steps=steps, height=height, width=width, num_frames=num_frames))
    store = Path(store_path(store))  # refuses a path that is not an fglens store, or a newer one
    fp = fingerprint(lines, pipeline_identity(pipeline), record)
    _check_store(store, fp, force_new_sweep)  # before loading any weights

    import torch

    if isinstance(pipeline, (str, os.PathLike)):
        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        pipe = load_pipeline(pipeline, dtype=dtype, device=device)
    else:
        pipe = pipeline if device is None else pipeline.to(device)
    check_spec(lines, pipe, clip=clip, record=record, spec=spec)
    if r == 0:
        for note in anchor_notes(lines, clip):
            print(f"note: {note}", file=sys.stderr)

    sweep_id = f"sweep-{fp[:10]}"
    digits = max(4, len(str(len(lines) - 1)))
    run_ids = {line.index: f"{sweep_id}-{line.id if line.id is not None else str(line.index).zfill(digits)}"
               for line in lines}
    for run_id in run_ids.values():
        check_run_id(run_id)
    _claim_store(store, {
        "fglens_sweep": 1, "sweep_id": sweep_id, "fingerprint": fp, "spec": str(spec.resolve()),
        "lines": len(lines), "pipeline": pipeline_identity(pipeline), "record": record,
        "created": datetime.now(timezone.utc).isoformat(),
    }, force_new_sweep)

    mine = [line for line in lines if line.index % world == r]
    result = SweepResult(sweep_id, fp, store, r, world, [line.index for line in mine],
                         {line.index: run_ids[line.index] for line in mine})
    _run_lines(mine, pipe, store, result, record, clip, fail_fast, progress)
    return result


def _run_lines(lines, pipe, store: Path, result: SweepResult, record, clip, fail_fast: bool, progress: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(lines), position=result.rank, desc=f"rank {result.rank}", disable=not progress,
               leave=True, dynamic_ncols=True)
    clips: dict[str, Any] = {}
    try:
        for line in lines:
            run_id = result.run_ids[line.index]
            state = run_state(store, run_id)
            if state == "complete":
                result.skipped.append(line.index)
            else:
                try:
                    # this rank alone owns the line, so no live process writes its run: an incomplete one, or a
                    # killed writer's staging folder, is replaced
                    _run_line(line, pipe, store, run_id, True, record, clip, clips)
                except Exception as exc:  # noqa: BLE001 - one failing line does not stop the others
                    result.failed[line.index] = f"{type(exc).__name__}: {exc}"
                    tqdm.write(f"rank {result.rank}: line {line.lineno} ({run_id}) failed:\n{traceback.format_exc()}",
                               file=sys.stderr)
                    if fail_fast:
                        result.stopped = True
                        break
                else:
                    (result.redone if state == "incomplete" else result.done).append(line.index)
            bar.set_postfix(done=len(result.done), skipped=len(result.skipped), redone=len(result.redone),
                            failed=len(result.failed), refresh=False)
            bar.update(1)
    finally:
        bar.close()


def run_state(store: str | os.PathLike, run_id: str) -> str:
    """``"complete"``, ``"incomplete"`` or ``"missing"``: the state of run `run_id` in `store`."""
    from .store import run_info

    info = run_info(store, run_id)
    if info is None:
        return "missing"
    return "complete" if info.get("complete") is True else "incomplete"


def _run_line(line: SweepLine, pipe, store: Path, run_id: str, replace: bool, record, clip, clips) -> None:
    import fglens as fg

    from .interventions.recipe import from_recipe, load_clip
    from .pipelines import spatial_multiple

    kwargs = CallOptions.from_mapping(line.options).kwargs(pipe, prompt=line.prompt, image=_image(line, pipe),
                                                           seed=line.seed, output_type="latent")
    edit = None
    if line.intervention is not None:
        spec = line.intervention.get("clip")
        if clip is None and spec is not None:  # one CLIP model per distinct spec, loaded once
            key = json.dumps(spec, sort_keys=True)
            if key not in clips:
                clips[key] = load_clip(spec)
        edit = from_recipe(effective_recipe(line.intervention, clip), image=kwargs.get("image"), prompt=line.prompt,
                           words=line.words, anchor_words=line.anchor_words,
                           clip=clip if clip is not None else clips.get(json.dumps(spec, sort_keys=True)),
                           size=(kwargs["height"], kwargs["width"]) if "height" in kwargs else None,
                           token_px=spatial_multiple(pipe))
    target = fg.store.store_path(store, run_id=run_id, overwrite_incomplete=replace)
    run_item(pipe, kwargs, words=line.words, record=record, edit=edit, store=target)
