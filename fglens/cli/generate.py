"""``fglens generate``: sample with Focal Guidance, write the video (mp4) and the recorded run.

The intervention is built from a recipe by `fglens.interventions.recipe.from_recipe`, the code path sweeps
and the evaluation use too. ``--layers auto`` / ``--src auto`` first record a diagnosis pass (same seed, no
edit, into the same store) and take fg.find_weak_layers' ``.weak`` as the repaired layers and its
``.responsive`` as the cache sources.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .common import UsageError, fail, finite_float
from .item import add_item_options, add_weak_options, check_weak_options, prepare
from .operators import add_operator_options, operator_entries, with_dense

EPILOG = """\
examples:
  fglens generate --pipeline tiny-wan --prompt "a dog jumps over the red fence" --words dog,jumps \\
      --out out/ --clip tiny
  fglens generate --pipeline /models/Wan2.1-I2V-14B-480P-Diffusers --image dog.png \\
      --prompt "a dog jumps over the red fence" --words dog,jumps --out out/ \\
      --layers 12,13 --src 30 --alpha 0.5 --clip ViT-H-14 --clip-weights /weights/clip-vit-h-14.safetensors \\
      --steps 50 --dtype bfloat16
  fglens generate --pipeline tiny-hunyuan --prompt "a dog jumps over the red fence" --words dog \\
      --out plain/ --edit none

Writes OUT/video.mp4 and adds the run (recorded with the words) to --store (default OUT/run.zarr); with
--layers auto or --src auto the diagnosis pass is stored there too, so `fglens plot STORE --all` draws
the before/after comparison. Without --clip the FSG anchor is dropped and only the cache transfer is applied.
"""


def register(sub) -> None:
    parser = sub.add_parser(
        "generate", help="sample with Focal Guidance; write the video (mp4) and the run",
        description="Sample a video with Focal Guidance (FSG anchor + attention cache transfer in the "
        "semantic-weak layers), write it as OUT/video.mp4 and record the run into a store.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
    )
    add_item_options(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for video.mp4 (and run.zarr)")
    parser.add_argument("--store", default=None, metavar="S.zarr", help="store for the run(s) (default: OUT/run.zarr)")
    parser.add_argument("--fps", type=int, default=16, help="frames per second of the mp4 (default: 16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/video.mp4")
    edit = parser.add_argument_group("Focal Guidance")
    edit.add_argument("--edit", choices=("focal-guidance", "none"), default="focal-guidance",
                      help="the intervention (default: focal-guidance; none: plain sampling, still recorded)")
    edit.add_argument("--layers", default="auto", metavar="auto|12,13",
                      help="layers to repair: block indices or canonical names, or auto (the semantic-weak "
                      "layers of a diagnosis pass; default)")
    edit.add_argument("--src", default="auto", metavar="auto|none|30",
                      help="cache-transfer source layers, auto (the responsive layers of a diagnosis pass; "
                      "default) or none (anchor only)")
    edit.add_argument("--alpha", type=finite_float, default=0.5, help="cache-transfer weight in [0, 1] (default: 0.5)")
    edit.add_argument("--strength", type=finite_float, default=2.0, help="anchor strength lambda (default: 2.0)")
    edit.add_argument("--edit-steps", default="0.0,0.5", metavar="START,STOP|I,J,..",
                      help="steps to edit: a fraction range of the schedule (floats) or step indices (ints) "
                      "(default: 0.0,0.5, the first half)")
    edit.add_argument("--clip", default=None, metavar="tiny|MODEL",
                      help="the CLIP of the FSG anchor: an open_clip model name with --clip-weights, or tiny "
                      "(random weights, for the tiny pipelines); without it the anchor is dropped")
    edit.add_argument("--clip-weights", default=None, metavar="PATH", help="local weights file of --clip MODEL")
    add_operator_options(edit)
    add_weak_options(parser)
    parser.set_defaults(func=run)


# -- options ----------------------------------------------------------------------------------------------------

def parse_layers(text: str, option: str, keywords: tuple[str, ...]) -> str | list[int | str]:
    """``"auto"`` / ``"none"`` (when in `keywords`), or a comma-separated list of block indices and layer names."""
    value = text.strip()
    if value.lower() in keywords:
        return value.lower()
    parts = [p.strip() for p in value.split(",")]
    if not value or any(not p for p in parts):
        raise UsageError(f"{option} takes {' or '.join(keywords)} or comma-separated block indices / layer names "
                         f"(e.g. 12,13 or blocks.12); got {text!r}")
    return [int(p) if p.lstrip("-").isdigit() else p for p in parts]


def parse_steps(text: str) -> list[float] | list[int]:
    """``"0.0,0.5"`` -> a fraction range; ``"0,1,2"`` -> step indices."""
    parts = [p.strip() for p in text.split(",")]
    try:
        if any("." in p for p in parts):
            values = [float(p) for p in parts]
            if len(values) != 2 or not 0.0 <= values[0] <= values[1] <= 1.0:
                raise ValueError
            return values
        return [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--edit-steps takes START,STOP fractions with 0 <= START <= STOP <= 1 (e.g. 0.0,0.5) or "
                         f"step indices (e.g. 0,1,2); got {text!r}") from None


def clip_spec(args: argparse.Namespace) -> str | dict[str, str] | None:
    """The recipe's ``clip`` entry from ``--clip`` / ``--clip-weights`` (None: no anchor)."""
    if args.clip is None:
        if args.clip_weights is not None:
            raise UsageError("--clip-weights needs --clip MODEL (the open_clip model name, e.g. ViT-H-14)")
        return None
    if args.clip == "tiny":
        if args.clip_weights is not None:
            raise UsageError("--clip tiny has random weights: it takes no --clip-weights")
        return "tiny"
    if args.clip_weights is None:
        raise UsageError(f"--clip {args.clip} needs --clip-weights PATH (a local weights file; fglens never "
                         "downloads), or use --clip tiny with the tiny pipelines")
    if not Path(args.clip_weights).expanduser().exists():
        raise UsageError(f"CLIP weights not found: {args.clip_weights} (--clip-weights takes a local file or folder)")
    return {"model": args.clip, "pretrained": args.clip_weights}


def recipe(layers: list, src: list | None, args: argparse.Namespace, clip: Any) -> dict[str, Any]:
    """The focal_guidance recipe (`fglens.interventions.recipe`) of the options."""
    out: dict[str, Any] = {"type": "focal_guidance", "layers": layers, "src": src or None, "alpha": args.alpha,
                           "strength": args.strength, "steps": parse_steps(args.edit_steps),
                           "anchor": clip is not None, **operator_entries(args)}
    if clip is not None:
        out["clip"] = with_dense(clip, args)
    return out


def build(item: Any, store: Any, args: argparse.Namespace, spec: dict[str, Any]):
    """The intervention of `spec` for `item`, and the trace that records it (errors: `UsageError`)."""
    from ..interventions.recipe import from_recipe
    from ..pipelines import spatial_multiple
    from .item import tracer

    try:
        edit = from_recipe(spec, image=item.image, prompt=item.prompt, words=item.words, size=item.size,
                           token_px=spatial_multiple(item.pipe))
        return edit, tracer(item, store, args.maps, edit)
    except (FileNotFoundError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UsageError(f"cannot build Focal Guidance {json.dumps(spec)}: {exc}") from exc


def _steps_text(steps: list) -> str:
    if any(isinstance(s, float) for s in steps):
        return f"{steps[0]:g}–{steps[1]:g} of the schedule"
    return ", ".join(map(str, steps))


def _names(layers: list) -> str:
    return ", ".join(map(str, layers)) if layers else "none"


def random_weight_notes(pipeline: str, clip: Any) -> list[str]:
    """What of this call has random weights (a tiny pipeline, ``--clip tiny``), said before sampling.

    Example:
        >>> random_weight_notes("tiny-wan", "tiny")[1]
        '--clip tiny has random weights: the anchor regions of the words are arbitrary'
        >>> random_weight_notes("/models/wan", {"model": "ViT-H-14", "pretrained": "/w.safetensors"})
        []
    """
    from ..pipelines import TINY

    notes = []
    if pipeline in TINY:
        notes.append(f"{pipeline} has random weights: the video is noise and shows what the command does, "
                     "nothing about a model")
    if clip == "tiny":
        notes.append("--clip tiny has random weights: the anchor regions of the words are arbitrary")
    return notes


def cache_pairs(trace: Any) -> list[tuple[str, str]]:
    """The (source, destination) layer pairs the cache transfer of `trace`'s edit uses, as bound to its models:
    each destination's one source after the pairing rule (with several sources, the nearest), not every source
    offered."""
    from ..interventions.cache import CacheTransfer

    return [(source, dst) for part in trace.editor.parts if isinstance(part, CacheTransfer)
            for dst, (source, _) in part.pairs.items()]


# -- the command ------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    video = out / "video.mp4"
    store = args.store if args.store is not None else str(out / "run.zarr")
    fg_edit = args.edit == "focal-guidance"
    try:
        check_weak_options(args)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        if video.exists() and not args.overwrite:
            raise UsageError(f"{video} exists: choose another --out, or pass --overwrite to replace it")
        if args.fps < 1:
            raise UsageError(f"--fps must be at least 1; got {args.fps}")
        layers = parse_layers(args.layers, "--layers", ("auto",))
        src = parse_layers(args.src, "--src", ("auto", "none"))
        if not 0.0 <= args.alpha <= 1.0:
            raise UsageError(f"--alpha must be in [0, 1]; got {args.alpha}")
        parse_steps(args.edit_steps)
        clip = clip_spec(args) if fg_edit else None
        if fg_edit and clip is None and src == "none":
            raise UsageError("nothing to apply: no --clip for the FSG anchor and --src none for the cache "
                             "transfer; give --clip tiny|MODEL --clip-weights PATH, or --src auto|LAYERS, or "
                             "--edit none")
        args.store = store
        item = prepare(args)
        anchor_note = "no --clip given: the FSG anchor is dropped; only the attention cache transfer is applied"
        if fg_edit and clip is not None and item.image is None:
            anchor_note = (f"{type(item.pipe).__name__} is text-to-video: no reference image to anchor the words "
                           "in; the FSG anchor is dropped; only the attention cache transfer is applied")
            clip = None
            if src == "none":
                raise UsageError("nothing to apply: the anchor needs a reference image and --src is none")
        explicit = fg_edit and layers != "auto" and src != "auto"
        if explicit:  # everything is known: build (and check) the edit before any sampling
            spec = recipe(layers, None if src == "none" else src, args, clip)
            edit, trace = build(item, store, args, spec)
    except UsageError as exc:
        return fail("generate", exc)

    from ..pipelines import frames_of, save_video
    from .item import find_weak, sample, tracer

    for note in random_weight_notes(args.pipeline, clip if fg_edit else None):
        print(f"note: {note}")
    if fg_edit and clip is None:
        print(f"note: {anchor_note}")
    if fg_edit and not explicit:
        diag, _ = sample(tracer(item, store, args.maps, score=args.score), item, output_type="latent")
        print(f"diagnosis pass (same seed, no edit): run {diag.attrs['run']} in {store}")
        try:
            weak = find_weak(diag, args)
        except ValueError as exc:
            return fail("generate", f"no weak-layer diagnosis of run {diag.attrs['run']}: {exc}")
        print(f"  semantic-weak layers: {_names(weak.weak)}; responsive layers: {_names(weak.responsive)}")
        if layers == "auto":
            if not weak.weak:
                return fail("generate", f"fg.find_weak_layers found no semantic-weak layer (robust z of {args.score} "
                            f"< {args.z}) in run {diag.attrs['run']}: pass --layers explicitly, or a higher --z")
            layers = list(weak.weak)
        if src == "auto":
            src = [r for r in weak.responsive if r not in {str(x) for x in layers}]
            if not src and clip is None:
                return fail("generate", "no responsive layer outside --layers to take the cache from, and no "
                            "--clip for the anchor: pass --src LAYERS or --clip")
        try:
            spec = recipe(layers, None if src == "none" else src, args, clip)
            edit, trace = build(item, store, args, spec)
        except UsageError as exc:
            return fail("generate", exc)
    if fg_edit:
        pairs = cache_pairs(trace)
        used = ", ".join(f"{d} <- {s}" for s, d in pairs) or "none"
        offered = "" if len({s for s, _ in pairs}) == len(spec["src"] or []) else (
            f" (nearest of {_names(spec['src'])}{', responsive' if args.src == 'auto' else ''})")
        print(f"Focal Guidance on layers {_names(layers)}"
              f"{' (semantic-weak)' if args.layers == 'auto' else ''}; cache {used}{offered}, alpha {args.alpha}; "
              f"anchor {'on ' + ', '.join(item.words) + f', strength {args.strength}' if clip else 'off'}; "
              f"steps {_steps_text(spec['steps'])}, cond branch")
        print(f"  recipe: {json.dumps(spec)}")
    else:
        trace = tracer(item, store, args.maps)

    ds, output = sample(trace, item, output_type="np")
    frames = frames_of(output)
    save_video(frames, video, fps=args.fps)
    print(f"wrote {video} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, {args.fps} fps)")
    print(f"wrote run {ds.attrs['run']} to {store} (words {', '.join(item.words)})")
    print(f"plot it with: fglens plot {store} {'--all' if fg_edit and not explicit else ''} --out {out / 'figures'}"
          .replace("  ", " "))
    return 0
