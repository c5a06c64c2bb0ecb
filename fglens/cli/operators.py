"""The operator parameters every command that applies an intervention takes (``generate``, ``eval``): the anchor's
words, frames, threshold and CLIP dense method, and the cache transfer's mode, pairing, heads and source map.

Each option maps to one recipe key (`fglens.interventions.recipe`); an option left out leaves the recipe's
default. Importing this module is cheap (no torch).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_operator_options(parser)
    >>> operator_entries(parser.parse_args(["--cache-heads", "mean", "--anchor-frames", "0.5"]))
    {'frames': 0.5, 'heads': 'mean'}
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import UsageError


def add_operator_options(group: Any) -> None:
    """Add the operator options to a parser or argument group."""
    group.add_argument("--anchor-words", default=None, metavar="visible|all|W1,W2",
                       help="the words the anchor takes: visible (those CLIP sees in the image; the default), all "
                       "(every word), or a comma-separated list")
    group.add_argument("--anchor-frames", default=None, metavar="all|first|GAMMA",
                       help="frames the anchor acts on: all (default), first, or a decay GAMMA in (0, 1]")
    group.add_argument("--anchor-targets", default=None, metavar="text,outside,image,reference",
                       help="which keys the anchor pulls the word's region to (default: text)")
    group.add_argument("--threshold", default=None, choices=("otsu", "quantile", "soft"),
                       help="how CLIP's word map becomes the anchor mask (default: otsu; soft keeps the map)")
    group.add_argument("--clip-dense", default=None, metavar="METHOD",
                       help="CLIP's dense-feature method (fglens.anchors.DENSE_METHODS; default clearclip)")
    group.add_argument("--cache-mode", default=None, choices=("auto", "same_step", "prev_step"),
                       help="when the source map is taken (default: auto)")
    group.add_argument("--pairing", default=None, choices=("auto", "zip", "nearest"),
                       help="which source each destination takes (default: auto)")
    group.add_argument("--cache-heads", default=None, choices=("each", "mean"),
                       help="head by head (each; default) or the source's head-averaged map into every head")
    group.add_argument("--source-map", default=None, choices=("edited", "clean"),
                       help="the source map with its own edits (edited; default) or without them (clean)")


def operator_entries(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe keys of the operator options given (errors: `UsageError`)."""
    out: dict[str, Any] = {}
    words = args.anchor_words
    if words is not None:
        if words in ("visible", "all"):
            out["anchor_words"] = words
        else:
            listed = [w.strip() for w in words.split(",")]
            if not all(listed):
                raise UsageError(f"--anchor-words takes visible, all or comma-separated words; got {words!r}")
            out["words"] = listed
    if args.anchor_frames is not None:
        out["frames"] = _frames(args.anchor_frames)
    if args.anchor_targets is not None:
        targets = [t.strip() for t in args.anchor_targets.split(",")]
        if not all(targets):
            raise UsageError(f"--anchor-targets takes comma-separated targets; got {args.anchor_targets!r}")
        out["targets"] = targets
    if args.threshold is not None:
        out["threshold"] = None if args.threshold == "soft" else args.threshold
    for option, key in (("cache_mode", "mode"), ("pairing", "pairing"), ("cache_heads", "heads"),
                        ("source_map", "source_map")):
        if getattr(args, option) is not None:
            out[key] = getattr(args, option)
    return out


def with_dense(clip: Any, args: argparse.Namespace) -> Any:
    """The recipe's ``clip`` entry with ``--clip-dense`` applied (refused without a named CLIP model)."""
    if args.clip_dense is None:
        return clip
    if not isinstance(clip, dict):
        raise UsageError("--clip-dense needs a CLIP model given by name and local weights (not tiny, not none)")
    return {**clip, "dense": args.clip_dense}


def _frames(text: str) -> str | float:
    if text in ("all", "first"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise UsageError(f"--anchor-frames takes all, first or a decay in (0, 1]; got {text!r}")
    return value
