"""``fglens sweep``: trace every line of a JSONL spec (image, prompt, words, seed, intervention) into one store,
on one process or under torchrun / accelerate launch (each rank takes its share), resumable."""

from __future__ import annotations

import argparse
import os
import sys


def register(sub) -> None:
    parser = sub.add_parser(
        "sweep", help="trace many prompts and seeds into one store, on one or many processes, resumably",
        description="Each line of SPEC is one run: {\"image\": path (relative to SPEC's folder), \"prompt\": ..., "
        "\"words\": [...],\n\"seed\": int, \"intervention\": recipe or null, \"id\": optional} plus optional "
        "steps/height/width/num_frames.\nEvery line is checked before any sampling starts. Under torchrun or "
        "accelerate launch, rank r of K\ntakes lines i with i % K == r. A re-run skips complete runs and redoes "
        "incomplete ones.\nExit status: 0 if every line of this rank is done, 1 if a line failed, 2 if the sweep "
        "was refused.\nSee docs/sweeps.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  fglens sweep spec.jsonl --pipeline /models/Wan2.1-I2V-14B-480P-Diffusers "
        "--store sweep.zarr\n  torchrun --nproc_per_node 8 -m fglens.cli sweep spec.jsonl --pipeline /models/wan "
        "--store sweep.zarr\n  fglens sweep spec.jsonl --pipeline tiny-wan --store tiny.zarr --steps 2",
    )
    parser.add_argument("spec", help="the JSONL spec, one run per line")
    parser.add_argument("--pipeline", required=True,
                        help="a local diffusers pipeline folder, or a built-in tiny pipeline (tiny-wan, tiny-hunyuan, "
                        "...)")
    parser.add_argument("--store", required=True, help="the zarr store every rank writes its runs into")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps for lines that do not set them")
    parser.add_argument("--height", type=int, default=None, help="video height for lines that do not set it")
    parser.add_argument("--width", type=int, default=None, help="video width for lines that do not set it")
    parser.add_argument("--frames", "--num-frames", dest="num_frames", type=int, default=None,
                        help="frames for lines that do not set them (--num-frames is the same)")
    parser.add_argument("--maps", action="store_true", help="also record the word attention maps (word_map)")
    parser.add_argument("--branches", nargs="+", default=None, choices=("cond", "uncond"),
                        help="CFG branches to record (default: cond)")
    parser.add_argument("--layers", default=None,
                        help="comma-separated layers to record, indices or names (default: all)")
    parser.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                        help="dtype of a pipeline loaded from a folder (default: as stored)")
    parser.add_argument("--device", default=None,
                        help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    parser.add_argument("--force-new-sweep", action="store_true",
                        help="start this spec in a store that a different sweep used (its runs are kept)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing line")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _layers(text: str | None) -> list[int | str] | None:
    if text is None:
        return None
    return [int(item) if item.strip().lstrip("-").isdigit() else item.strip() for item in text.split(",") if item]


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..sweep import run_sweep

    record = {}
    if args.maps:
        record["maps"] = True
    if args.branches:
        record["branches"] = list(args.branches)
    if args.layers:
        record["layers"] = _layers(args.layers)
    try:
        result = run_sweep(
            args.spec, args.pipeline, args.store, device=args.device, dtype=args.dtype, steps=args.steps,
            height=args.height, width=args.width, num_frames=args.num_frames, record=record,
            force_new_sweep=args.force_new_sweep, fail_fast=args.fail_fast, progress=not args.no_progress,
        )
    except (ValueError, TypeError, OSError) as exc:
        print(f"fglens sweep: {exc}", file=sys.stderr)
        return 2
    print(f"fglens sweep {result.sweep_id} -> {result.store}: {result.summary()}", flush=True)
    for index, error in sorted(result.failed.items()):
        print(f"  failed: line index {index} ({result.run_ids[index]}): {error}", flush=True)
    return 0 if result.ok else 1
