"""``fglens eval``: run an instruction-following suite with and without an intervention; write the results
Dataset and a report (a table and a figure per category). See docs/eval.md."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from .common import finite_float
from .operators import add_operator_options, operator_entries, with_dense

EPILOG = """\
examples:
  fglens eval builtin --pipeline tiny-wan --out eval/ --edit focal-guidance --layers 1,2 --src 3 \\
      --clip tiny --seeds 0,1 --steps 2
  fglens eval my_suite.jsonl --pipeline /models/Wan2.1-I2V-14B-480P-Diffusers --out eval/ \\
      --edit focal-guidance --layers 12,13,14 --src 30 --alpha 0.5 \\
      --clip ViT-H-14 --clip-weights /weights/clip-vit-h-14.safetensors --vlm /models/llava-1.5-7b-hf \\
      --steps 50 --dtype bfloat16
  fglens eval my_suite.jsonl --pipeline /models/wan --out eval/ \\
      --recipe '{"type": "cache_transfer", "src": [30], "dst": [12, 13], "alpha": 0.5}'

SUITE is a JSONL file (one item per line: image, prompt, category, words, questions; see docs/eval.md) or
"builtin" (ten drawn items, two per category, made at the video's size into OUT/suite/). Writes
OUT/results.zarr (scores over item, seed, condition, scorer, and the per-category summary), OUT/report.md,
OUT/summary.csv, OUT/figures/<category>.png, the runs in OUT/runs.zarr and the videos in OUT/videos/
(reused by a re-run). Scorers without their model (--clip, --vlm) are reported as missing, never faked.

`fglens eval import vbench2 --images DIR | --t2i PATH --out SUITE/` writes a suite from VBench-2.0's prompts
(`fglens eval import --help`).
"""

EDITS = ("none", "focal-guidance", "cache-transfer", "anchor-mask", "scale", "ablate")


def register(sub) -> None:
    parser = sub.add_parser(
        "eval", help="instruction-following evaluation: a suite with and without an intervention",
        description="Generate each item of SUITE with and without an intervention over the same seeds, score the "
        "videos (CLIP alignment and its change, subject / background consistency, motion, a VLM judge) and report "
        "per-category means with bootstrap intervals and the paired differences.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
    )
    parser.add_argument("suite", help="a JSONL suite file, or builtin")
    parser.add_argument("--pipeline", required=True,
                        help="a local diffusers pipeline folder, or a built-in tiny pipeline (tiny-wan, tiny-hunyuan)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, the same for both conditions "
                        "(default: 0,1,2)")
    parser.add_argument("--items", default=None, help="comma-separated item ids to run (default: all)")
    parser.add_argument("--categories", default=None, help="comma-separated categories to run (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--frames", "--num-frames", dest="num_frames", type=int, default=None,
                        help="number of video frames (default: the pipeline's; --num-frames is the same)")
    parser.add_argument("--guidance-scale", type=finite_float, default=None)
    parser.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                        help="dtype of a pipeline loaded from a folder and of the --vlm judge (default: as stored)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    edit = parser.add_argument_group("intervention (see fglens.interventions.recipe)")
    edit.add_argument("--edit", choices=EDITS, default="none", help="the intervention (default: none = baseline only)")
    edit.add_argument("--recipe", default=None, metavar="JSON|FILE",
                      help="a full recipe as JSON text or a .json file, instead of --edit and its options")
    edit.add_argument("--layers", default=None, metavar="12,13", help="layers the edit applies to")
    edit.add_argument("--src", default=None, metavar="30", help="cache-transfer source layers")
    edit.add_argument("--dst", default=None, metavar="12,13", help="cache-transfer destination layers")
    edit.add_argument("--alpha", type=finite_float, default=None,
                      help="cache-transfer weight in [0, 1] (recipe default 0.5)")
    edit.add_argument("--strength", type=finite_float, default=None, help="anchor strength (recipe default 2.0)")
    edit.add_argument("--factor", type=finite_float, default=None, help="scale factor (--edit scale)")
    edit.add_argument("--segment", choices=("image", "text"), default=None, help="segment to ablate (--edit ablate)")
    edit.add_argument("--edit-steps", default=None, metavar="0.0,0.5",
                      help="steps to edit: a fraction range (floats) or step indices (ints)")
    edit.add_argument("--anchor-clip", default=None, metavar="tiny|MODEL",
                      help="the CLIP of the anchor (default: --clip)")
    edit.add_argument("--anchor-clip-weights", default=None, metavar="PATH")
    add_operator_options(edit)
    score = parser.add_argument_group("scoring")
    score.add_argument("--clip", default=None, metavar="tiny|MODEL",
                       help="the open_clip model of the CLIP scorers (with --clip-weights), or tiny (random weights: "
                       "tests the plumbing, measures nothing); without it those scorers are missing")
    score.add_argument("--clip-weights", default=None, metavar="PATH", help="local weights of --clip MODEL")
    score.add_argument("--vlm", default=None, metavar="DIR",
                       help="a local vision-language model folder for the judge; without it the judge is missing")
    score.add_argument("--vlm-frames", type=int, default=4, help="frames the judge sees (default: 4)")
    score.add_argument("--dino", default=None, metavar="DIR",
                       help="a local DINOv2 model folder: adds VBench's dino_subject_consistency")
    score.add_argument("--raft", default=None, metavar="FILE",
                       help="local torchvision raft_large weights: adds VBench's raft_dynamic_degree")
    score.add_argument("--motion-scale", type=finite_float, default=0.02,
                       help="motion saturation scale (default: 0.02)")
    score.add_argument("--change-scale", type=finite_float, default=0.02,
                       help="alignment-change saturation scale (default: 0.02)")
    score.add_argument("--confidence", type=finite_float, default=0.95, help="interval confidence (default: 0.95)")
    score.add_argument("--resamples", type=int, default=9999, help="bootstrap resamples (default: 9999)")
    parser.add_argument("--lora", default=None, metavar="DIR",
                        help="a post-trained LoRA (fglens train's OUT): adds the conditions lora and, with --edit, "
                        "lora+intervention, on the same seeds, each compared with the baseline")
    parser.add_argument("--mp4", action="store_true", help="also write each video as an mp4")
    parser.add_argument("--no-record", action="store_true", help="do not record the runs into OUT/runs.zarr")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


def _clip_entry(model: str | None, weights: str | None, option: str) -> str | dict[str, str] | None:
    from .common import UsageError

    if model is None:
        if weights is not None:
            raise UsageError(f"{option}-weights needs {option} MODEL (an open_clip model name, e.g. ViT-H-14)")
        return None
    if model == "tiny":
        if weights is not None:
            raise UsageError(f"{option} tiny has random weights: it takes no {option}-weights")
        return "tiny"
    if weights is None:
        raise UsageError(f"{option} {model} needs {option}-weights PATH (a local file; fglens never downloads), "
                         "or tiny for the tiny pipelines")
    if not Path(weights).expanduser().exists():
        raise UsageError(f"CLIP weights not found: {weights} ({option}-weights takes a local file or folder)")
    return {"model": model, "pretrained": weights}


def recipe(args: argparse.Namespace) -> dict[str, Any] | None:
    """The intervention recipe of the options (None for --edit none), checked by `parse_recipe`."""
    from ..interventions.recipe import parse_recipe
    from .common import UsageError
    from .generate import parse_layers, parse_steps

    if args.recipe is not None:
        text = args.recipe
        if Path(text).suffix == ".json" and Path(text).is_file():
            text = Path(text).read_text()
        try:
            return parse_recipe(text)
        except ValueError as exc:
            raise UsageError(f"--recipe: {exc}") from exc
    if args.edit == "none":
        return None
    out: dict[str, Any] = {"type": args.edit.replace("-", "_")}
    for key in ("layers", "src", "dst"):
        value = getattr(args, key)
        if value is not None:
            out[key] = parse_layers(value, f"--{key}", ())
    for key in ("alpha", "strength", "factor", "segment"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    if args.edit_steps is not None:
        out["steps"] = parse_steps(args.edit_steps)
    out.update(operator_entries(args))
    if args.edit in ("focal-guidance", "anchor-mask"):
        clip = _clip_entry(args.anchor_clip, args.anchor_clip_weights, "--anchor-clip") \
            or _clip_entry(args.clip, args.clip_weights, "--clip")
        if clip is not None:
            out["clip"] = with_dense(clip, args)
        elif args.edit == "focal-guidance":
            out["anchor"] = False
            print("note: no --clip / --anchor-clip: the FSG anchor is dropped; only the cache transfer is applied")
    try:
        return parse_recipe({k: v for k, v in out.items() if k in ("type", "anchor", "threshold") or v is not None})
    except ValueError as exc:
        raise UsageError(f"--edit {args.edit}: {exc}") from exc


def _scoring_clip(args: argparse.Namespace):
    entry = _clip_entry(args.clip, args.clip_weights, "--clip")
    if entry is None:
        return None
    from ..interventions.recipe import load_clip

    return load_clip(entry)


def _torch_dtype(name: str | None):
    if name is None:
        return None
    import torch

    return getattr(torch, name)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .common import UsageError, fail

    try:
        seeds = [int(s) for s in _csv(args.seeds) or []]
    except ValueError:
        return fail("eval", f"--seeds takes comma-separated integers (e.g. 0,1,2); got {args.seeds!r}")
    try:
        edit = recipe(args)
        if edit is not None and edit.get("type") == "focal_guidance" and not edit.get("anchor", True) \
                and edit.get("src") is None:
            raise UsageError("nothing to apply: focal-guidance without --clip (anchor) and without --src (cache)")
        from ..eval import default_scorers, load_suite, run_eval, write_report

        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        suite: Any = args.suite if args.suite == "builtin" else load_suite(args.suite)
        scorers = default_scorers(_scoring_clip(args), args.vlm, motion_scale=args.motion_scale,
                                  change_scale=args.change_scale, vlm_frames=args.vlm_frames,
                                  vlm_dtype=_torch_dtype(args.dtype), vlm_device=args.device, dino=args.dino,
                                  raft=args.raft)
        ev = run_eval(suite, args.pipeline, out, edit=edit, seeds=seeds, scorers=scorers, steps=args.steps,
                      height=args.height, width=args.width, num_frames=args.num_frames,
                      guidance_scale=args.guidance_scale, record=not args.no_record, mp4=args.mp4,
                      confidence=args.confidence, n_resamples=args.resamples, dtype=args.dtype, device=args.device,
                      items=_csv(args.items), categories=_csv(args.categories), progress=not args.no_progress,
                      lora=args.lora)
    except UsageError as exc:
        return fail("eval", exc)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return fail("eval", exc)
    report = write_report(ev.results, ev.summary, out)
    _print_summary(ev)
    runs = f"   runs: {out / 'runs.zarr'}" if (out / "runs.zarr").exists() else ""
    print(f"\nresults: {out / 'results.zarr'}   report: {report}{runs}")
    missing = json.loads(ev.results.attrs.get("missing_scorers", "[]"))
    if missing:
        print(f"missing scorers (NaN, left out of the totals): {', '.join(missing)}")
    from ..eval.report import random_weight_notes

    for note in random_weight_notes(ev.results):
        print(f"note: {note}")
    return 0


def _print_summary(ev) -> None:
    summary = ev.summary
    conditions = [str(c) for c in summary["condition"].values]
    contrasts = [str(c) for c in summary["contrast"].values] if "contrast_diff" in summary else []
    width = max([18, *(len(c) + 2 for c in conditions)])
    head = f"{'category':<20}" + "".join(f"{c:>{width}}" for c in conditions)
    head += "".join(f"{c + ' − baseline':>34}" for c in contrasts)
    print("total score (mean over items; 95 % interval of each paired difference):" if contrasts else "total score:")
    print(head)
    for cat in summary["category"].values:
        cell = summary.sel(category=cat, metric="total")
        row = f"{str(cat):<20}" + "".join(f"{float(cell['mean'].sel(condition=c)):>{width}.4f}" for c in conditions)
        for c in contrasts:
            one = cell.sel(contrast=c)
            low, high = float(one["contrast_low"]), float(one["contrast_high"])
            interval = "(one item: no CI)" if math.isnan(low) else f"[{low:+.4f}, {high:+.4f}]"
            row += f"{float(one['contrast_diff']):>+12.4f} {interval:>21}"
        print(row)
