"""Measurements on the toy world: sample items, score them, diagnose, and apply Focal Guidance.

Every video of an item is sampled with the same seed whatever the edit (paired seeds), so differences
between conditions are per item. Intervals are bootstrap intervals over items (`fglens.eval.stats`).

Example:
    >>> import fglens as fg
    >>> from fglens.toy.experiment import chance_levels
    >>> items = fg.toy.suite("test", n=10, seed=0)
    >>> levels = chance_levels(items)       # a random other instruction of the same category, from the truth
    >>> sorted(levels)[:2], 0.0 <= levels["object_motion"] <= 1.0
    (['all', 'camera_motion'], True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .load import CALL
from .score import score
from .suite import Item, _instruction, _valid
from .world import CATEGORIES, KIND_CATEGORY, render

if TYPE_CHECKING:  # pragma: no cover
    from ..anchors import Clip


def item_seed(item: Item, seed: int) -> int:
    """The sampling seed of an item: the same for every condition, different across items."""
    return int.from_bytes(hashlib.sha256(f"{item.id}/{seed}".encode()).digest()[:4], "little")


def sample(pipe, item: Item, *, seed: int = 0, edit=None, record=None, store=None, **call: Any) -> np.ndarray:
    """One video of `item` (float [F, H, W, 3] in [0, 1]), traced with `edit`/`record` when given."""
    import fglens as fg

    kwargs = {**CALL, **call}
    traced = fg.trace(pipe, edit=edit, record=record, store=store) if (edit or record) else nullcontext()
    with traced:
        out = pipe(image=item.image, prompt=item.prompt,
                   generator=torch.Generator().manual_seed(item_seed(item, seed)), **kwargs)
    return np.asarray(out.frames[0])


def evaluate(pipe, items: Sequence[Item], *, seed: int = 0, edit: Callable[[Item], Any] | None = None,
             progress: bool = False, **call: Any) -> list[dict]:
    """Score every item's video: one row per item (id, category, kind, held_out, prompt, follows, fidelity,
    first_frame, reason; `kind` is the instruction's, e.g. ``approach`` for "A moves to B"; `held_out` the item's
    held-out properties, e.g. ``["combination"]``, empty for a train item).

    `edit` maps an item to its intervention (anchors depend on the item's words), or None for plain sampling.
    """
    from tqdm.auto import tqdm

    rows = []
    for item in tqdm(items, disable=not progress, desc="items"):
        video = sample(pipe, item, seed=seed, edit=edit(item) if edit else None, **call)
        rows.append({"id": item.id, "category": item.category, "kind": item.instruction.kind,
                     "held_out": list(item.held_out), "prompt": item.prompt,
                     **score(video, item)})
    return rows


def chance_levels(items: Sequence[Item], *, seed: int = 0, tries: int = 200) -> dict[str, float]:
    """Per category, how often the true video of a *different* instruction of the same category (same scene)
    passes the item's check: the accuracy of a model that does something of the right kind at random."""
    rng = np.random.default_rng(seed)
    hits: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    for item in items:
        for _ in range(tries):
            other = _instruction(rng, item.category, item.scene)
            if other is None or other == item.instruction or not _valid(item.scene, other):
                continue
            if item.category == "static":  # one instruction only: the wrong kind is any other category's
                other = _instruction(rng, str(rng.choice([c for c in CATEGORIES if c != "static"])), item.scene)
                if other is None or not _valid(item.scene, other):
                    continue
            video = render(item.scene, other)
            hits[item.category].append(score(video, item)["follows"])
            break
    out = {c: float(np.mean(v)) for c, v in hits.items() if v}
    out["all"] = float(np.mean([x for v in hits.values() for x in v]))
    return out


def frozen_levels(items: Sequence[Item]) -> dict[str, float]:
    """Per category, the accuracy of a video that repeats the reference image (does nothing)."""
    out: dict[str, list[float]] = {}
    for item in items:
        video = np.repeat(item.video()[:1], len(item.video()), axis=0)
        out.setdefault(item.category, []).append(score(video, item)["follows"])
    levels = {c: float(np.mean(v)) for c, v in out.items()}
    levels["all"] = float(np.mean([x for v in out.values() for x in v]))
    return levels


HELD_OUT_GROUPS = ("position", "size", "combination", "none")  #: `by="held_out"`: an item with two is in both


def _groups(rows: Sequence[dict], by: str) -> list[str]:
    """The groups of `rows` by `by` ("category", "kind" or "held_out", in the world's order), then ``all``."""
    if by not in ("category", "kind", "held_out"):
        raise ValueError(f"rows are grouped by 'category', 'kind' or 'held_out', got {by!r}")
    if by == "held_out" and any("held_out" not in r for r in rows):
        raise ValueError("these rows do not record held_out (rows written before it was recorded); group them by "
                         "'category' or 'kind'")
    order = {"category": CATEGORIES, "kind": KIND_CATEGORY, "held_out": HELD_OUT_GROUPS}[by]
    return [g for g in order if any(_member(r, by, g) for r in rows)] + ["all"]


def _member(row: dict, by: str, group: str) -> bool:
    if group == "all":
        return True
    if by == "held_out":
        return group in row["held_out"] or (group == "none" and not row["held_out"])
    return row[by] == group


def summarize(rows: Sequence[dict], metric: str = "follows", *, confidence: float = 0.95,
              by: str = "category") -> dict[str, tuple]:
    """Per category (or instruction kind, `by="kind"`, or held-out property, `by="held_out"`) and ``all``: (mean,
    low, high, n) of `metric` with a bootstrap interval over items."""
    from ..eval.stats import bootstrap_ci

    out = {}
    for cat in _groups(rows, by):
        vals = np.array([r[metric] for r in rows if _member(r, by, cat)], np.float64)
        mean, low, high = bootstrap_ci(vals, confidence=confidence, n_resamples=4999, method="percentile")
        out[cat] = (mean, low, high, len(vals))
    return out


def paired(rows_a: Sequence[dict], rows_b: Sequence[dict], metric: str = "follows", *,
           by: str = "category") -> dict[str, tuple]:
    """Per category (or instruction kind, `by="kind"`, or held-out property, `by="held_out"`) and ``all``: the
    paired difference b − a (same items, same seeds) with its interval."""
    from ..eval.stats import paired_difference

    by_id = {r["id"]: r for r in rows_a}
    out = {}
    for cat in _groups(rows_b, by):
        pairs = [(by_id[r["id"]][metric], r[metric]) for r in rows_b if _member(r, by, cat)]
        a, b = (np.array(v, np.float64) for v in zip(*pairs, strict=False))
        mean, low, high = paired_difference(a, b, n_resamples=4999, method="percentile")
        out[cat] = (mean, low, high, len(pairs))
    return out


# ----------------------------------------------------------------------------------------------------------
# diagnosis and Focal Guidance
# ----------------------------------------------------------------------------------------------------------


def record_runs(pipe, items: Sequence[Item], *, seed: int = 0, store=None, **call: Any) -> list:
    """Record each item's cond-branch attention statistics (its words; the default ones, the Moran's I of the
    similarity map and the representation response: every score `fg.find_weak_layers` takes) and return the run
    Datasets."""
    import fglens as fg
    from fglens.trace import DEFAULT_STATS

    runs = []
    record = fg.Record(words=None, stats=(*DEFAULT_STATS, "similarity_morans_i", "response", "response_morans_i"))
    for item in items:
        with fg.trace(pipe, record=replace(record, words=item.words), store=store) as run:
            pipe(image=item.image, prompt=item.prompt,
                 generator=torch.Generator().manual_seed(item_seed(item, seed)), **{**CALL, **call})
        runs.append(run.dataset)
    return runs


def word_map_focus_items(items: Sequence[Item]) -> list[Item]:
    """The items whose first word names an object (camera instructions name none)."""
    return [it for it in items if it.words[0] in it.masks()]


def precision_recall(found: Sequence[str], truth: Sequence[str]) -> tuple[float, float]:
    """Precision and recall of named layers against the planted ones (NaN precision when none is named)."""
    found, truth = set(found), set(truth)
    precision = len(found & truth) / len(found) if found else float("nan")
    recall = len(found & truth) / len(truth) if truth else float("nan")
    return precision, recall


def truth_anchor(item: Item, strength: float):
    """An `fg.AnchorMask` from the ground-truth masks of the item's named objects (the upper bound)."""
    import fglens as fg

    return fg.AnchorMask({w: torch.from_numpy(m.astype(np.float32)) for w, m in item.masks().items()},
                         strength=strength)


def clip_anchor(item: Item, strength: float, clip: Clip | None = None, *, threshold: str | None = "otsu"):
    """An `fg.AnchorMask` from CLIP word maps of the item's named objects, on the toy DiT's 8×8 token grid.

    `clip` defaults to the shipped tiny CLIP (`fg.toy.clip()`). This is `fg.AnchorMask.from_clip` with the toy
    world's 8 px per token (the toy VAE compresses 4× and the DiT's patches are 2×2), which gives the DiT's own
    grid (`fglens.toy.clip.TOKEN_GRID`). `anchor.regions` keeps the similarity maps for plotting.

    Example:
        >>> import fglens as fg
        >>> item = fg.toy.suite("test", n=1, seed=0)[0]
        >>> anchor = clip_anchor(item, strength=2.0)
        >>> anchor.words, tuple(anchor.masks.shape)
        (['blue square'], (1, 8, 8))
    """
    import fglens as fg

    from .clip import TOKEN_GRID
    from .clip import clip as shipped_clip
    from .world import SIZE

    words = list(item.masks())
    if not words:
        raise ValueError(f"{item.prompt!r} names no object (a camera instruction): there is nothing to anchor")
    model = clip if clip is not None else shipped_clip()
    return fg.AnchorMask.from_clip(item.image, item.prompt, words, model, strength, threshold=threshold,
                                   token_px=SIZE // TOKEN_GRID[0])


ANCHORS = (None, "truth", "clip")  #: the anchors `focal_guidance` knows


def focal_guidance(weak_layers: Sequence[str], responsive: Sequence[str], *, anchor: str | None = "truth",
                   strength: float = 2.0, cache: bool = True, alpha: float = 0.5,
                   steps=(0.0, 0.5), clip: Clip | None = None) -> Callable[[Item], Any]:
    """Item -> `fg.FocalGuidance` on `weak_layers`: anchors from the ground truth (``anchor="truth"``) or from
    CLIP (``anchor="clip"``: `clip_anchor` with `clip`, by default the shipped tiny CLIP) and/or the cache
    transfer from `responsive` layers; `anchor=None` or `cache=False` give the ablations. Items that name no
    object (camera motion) get no anchor; with `cache=False` they are sampled unedited."""
    import fglens as fg

    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be 'truth', 'clip' or None; got {anchor!r}")
    if anchor is None and not cache:
        raise ValueError("Focal Guidance needs an anchor, a cache, or both")
    if clip is not None and anchor != "clip":
        raise ValueError(f"clip= is used by anchor='clip' only; got anchor={anchor!r}")
    if anchor == "clip" and clip is None:
        from .clip import clip as shipped_clip

        clip = shipped_clip()

    def make_anchor(item: Item):
        return truth_anchor(item, strength) if anchor == "truth" else clip_anchor(item, strength, clip)

    def build(item: Item):
        # camera instructions name no object: they get no anchor (and no edit at all without the cache)
        use_anchor = anchor is not None and bool(item.masks())
        if not use_anchor and not cache:
            return None
        return fg.FocalGuidance(
            anchor=make_anchor(item) if use_anchor else None,
            cache=fg.CacheTransfer(src=list(responsive), dst=list(weak_layers), alpha=alpha) if cache else None,
            layers=list(weak_layers), steps=steps)

    return build


__all__ = ["ANCHORS", "chance_levels", "clip_anchor", "evaluate", "focal_guidance", "frozen_levels", "item_seed",
           "paired", "precision_recall", "record_runs", "word_map_focus_items", "sample", "summarize", "truth_anchor"]
