"""``fglens diagnose``: record one run of a pipeline, print a per-layer table and its semantic-weak layers.

The pieces the sampling commands share (options, checks before sampling, recording, the per-layer table) are in
`fglens.cli.item`; the one-line user error and the numeric option type in `fglens.cli.common`.

Importing this module is cheap (no torch): heavy imports happen inside the functions.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .common import UsageError, fail
from .item import (
    add_item_options,
    add_weak_options,
    check_weak_options,
    describe,
    find_weak,
    layer_table,
    prepare,
    sample,
    tracer,
    weak_report,
)

EPILOG = """\
examples:
  fglens diagnose --pipeline tiny-wan --prompt "a dog jumps over the red fence" --words dog,jumps \\
      --store runs.zarr
  fglens diagnose --pipeline /models/Wan2.1-I2V-14B-480P-Diffusers --image dog.png \\
      --prompt "a dog jumps over the red fence" --words dog,jumps,fence --store runs.zarr \\
      --steps 50 --height 480 --width 832 --frames 81 --dtype bfloat16 --json weak.json

Records the cond branch with fg.Record(words=...), prints the mean of each statistic per layer and the
layers fg.find_weak_layers names (semantic-weak: repair them; responsive: cache sources).
"""

def register(sub) -> None:
    parser = sub.add_parser(
        "diagnose", help="record one run and name the semantic-weak and responsive layers",
        description="Record one run of a pipeline (fg.trace with fg.Record(words=...)), print a per-layer table "
        "and the semantic-weak and responsive layers found by fg.find_weak_layers.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
    )
    add_item_options(parser)
    parser.add_argument("--store", required=True, metavar="S.zarr",
                        help="the store to add the run to (created if missing; nothing in it is overwritten)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the diagnosis (weak.to_dict()) here")
    add_weak_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        check_weak_options(args)
        item = prepare(args)
    except UsageError as exc:
        return fail("diagnose", exc)
    ds, _ = sample(tracer(item, args.store, args.maps, score=args.score), item)
    print(describe(ds, "diagnose"))
    print()
    print(layer_table(ds))
    print("\n  (means over steps, words and frames of the cond branch)\n")
    try:
        weak = find_weak(ds, args)
    except ValueError as exc:
        print(f"no weak-layer diagnosis: {exc}")
        weak = None
    if weak is not None:
        print(weak_report(weak))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"run": ds.attrs["run"], "store": str(args.store),
                                                   **weak.to_dict()}, indent=2))
            print(f"\nwrote the diagnosis to {args.json}")
    print(f"\nwrote run {ds.attrs['run']} to {args.store}")
    print(f"plot it with: fglens plot {args.store} --run {ds.attrs['run']} --out figures/")
    return 0
