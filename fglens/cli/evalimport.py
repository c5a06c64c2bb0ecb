"""``fglens eval import vbench2``: VBench-2.0's instruction-following prompts as an fglens suite.

Reads ``VBench2_full_info.json`` from the installed ``vbench2`` package (``pip install --no-deps vbench2==0.1.1``),
never the network; the reference images come from a folder (``--images``) or a local text-to-image pipeline
(``--t2i``). See `fglens.eval.vbench2`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from .common import UsageError, fail

EPILOG = """\
examples:
  fglens eval import vbench2 --dimensions Dynamic_Attribute,Camera_Motion --images refs/ --out suite/
  fglens eval import vbench2 --t2i /models/sdxl --size 480,832 --limit 20 --out suite/
  fglens eval suite/suite.jsonl --pipeline /models/Wan2.1-I2V-14B-480P-Diffusers --out eval/

Writes OUT/suite.jsonl and OUT/images/<id>.png (one per item).
"""


def build_parser() -> argparse.ArgumentParser:
    from ..eval.vbench2 import DIMENSIONS

    parser = argparse.ArgumentParser(
        prog="fglens eval import", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Turn a benchmark's prompts into an fglens image-to-video suite.")
    parser.add_argument("benchmark", choices=("vbench2",), help="the benchmark (vbench2: VBench-2.0)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the suite's folder")
    parser.add_argument("--dimensions", default=None, metavar="D1,D2",
                        help=f"VBench-2.0 dimensions (default: all of {', '.join(DIMENSIONS)})")
    images = parser.add_mutually_exclusive_group(required=True)
    images.add_argument("--images", default=None, metavar="DIR", help="reference images named <id>.png/.jpg")
    images.add_argument("--t2i", default=None, metavar="PATH",
                        help="a local diffusers text-to-image pipeline that draws each item's reference image")
    parser.add_argument("--size", default="480,832", metavar="H,W", help="generated image size (default 480,832)")
    parser.add_argument("--steps", type=int, default=None, help="--t2i denoising steps (default: the pipeline's)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many items per dimension")
    parser.add_argument("--device", default=None, help="--t2i device (default: cuda when available, else cpu)")
    return parser


def main(argv: Sequence[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(list(argv))
    try:
        try:
            size = tuple(int(x) for x in args.size.split(","))
        except ValueError:
            size = ()
        if len(size) != 2 or min(size) < 1:
            raise UsageError(f"--size takes HEIGHT,WIDTH in pixels (e.g. 480,832); got {args.size!r}")
        if args.limit is not None and args.limit < 1:
            raise UsageError(f"--limit must be a positive integer; got {args.limit}")
        from ..eval.vbench2 import import_vbench2

        dims = [d.strip() for d in args.dimensions.split(",")] if args.dimensions else None
        suite = import_vbench2(args.out, dimensions=dims, images=args.images, t2i=args.t2i, size=size,
                               steps=args.steps, limit=args.limit, device=args.device)
    except UsageError as exc:
        return fail("eval import", exc)
    except (ValueError, OSError, ModuleNotFoundError) as exc:
        return fail("eval import", exc)
    with open(suite) as f:
        count = sum(1 for _ in f)
    print(f"wrote {suite} ({count} items) and their reference images in {suite.parent / 'images'}")
    return 0
