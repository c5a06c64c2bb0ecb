"""The `fglens` command.

Examples:
    fglens demo --out demo/          # record a run on the built-in tiny Wan I2V pipeline, print a table
    fglens bench --json bench.json   # plain vs traced vs naive recorder at several token counts
    fglens bench --edit              # plain vs fg.FocalGuidance on 1, 2, ... edited layers
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import fglens as fg

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    store = os.path.join(out, "demo.zarr")
    prompt = "a dog jumps over a fence"
    words = ["dog", "jumps", "fence"]
    pipe = fg.testing.tiny_wan_i2v_pipeline(num_layers=args.layers)
    image = fg.testing.reference_image(width=args.width, height=args.height)
    with fg.trace(pipe, record=fg.Record(words=words, maps=True), store=store) as run:
        pipe(
            image=image, prompt=prompt, height=args.height, width=args.width, num_frames=args.frames,
            num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed), output_type="np",
        )
    ds = run.dataset
    cond = ds.sel(branch="cond")
    print(f"fglens demo: traced {type(pipe).__name__} (random weights) on {prompt!r}")
    grid = tuple(fg.store.decode_attrs(ds.attrs)["grid"])
    print(f"  steps {ds.sizes['step']}, layers {ds.sizes['layer']}, words {list(ds.word.values)}, "
          f"latent grid (frame, y, x) = {grid}")
    print()
    header = f"  {'layer':<10}{'word_mass':>11}{'morans_i':>10}{'similarity':>12}{'text_share':>12}{'entropy':>9}"
    print(header)
    for layer in ds.layer.values:
        row = cond.sel(layer=layer)
        print(
            f"  {layer:<10}{float(row.word_mass.mean()):>11.4f}{float(row.morans_i.mean()):>10.3f}"
            f"{float(row.similarity.mean()):>12.3f}{float(row.text_share.mean()):>12.3f}{float(row.entropy.mean()):>9.3f}"
        )
    print("\n  (means over steps, words and frames of the cond branch)")
    print(f"\nwrote run {ds.attrs['run']} to {store}")
    print(f"open it with: fg.open_run({store!r}, run={ds.attrs['run']!r})")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fglens",
        description="Look inside video diffusion transformers and steer them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  fglens demo --out demo/\n  fglens bench --json bench.json",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="record a run on the built-in tiny Wan I2V pipeline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  fglens demo --out demo/    # writes demo/demo.zarr and prints a per-layer table",
    )
    demo.add_argument("--out", default="demo", help="output folder (default: demo/)")
    demo.add_argument("--steps", type=int, default=4)
    demo.add_argument("--layers", type=int, default=6)
    demo.add_argument("--height", type=int, default=64)
    demo.add_argument("--width", type=int, default=96)
    demo.add_argument("--frames", type=int, default=9)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    bench = sub.add_parser(
        "bench", help="time, FLOPs and peak memory: plain vs traced vs a naive materialising recorder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  fglens bench --json bench.json\n  fglens bench --model hunyuan --tokens 960,1920\n"
        "  fglens bench --edit",
    )
    bench.add_argument("--json", default=None, help="also write one record per (N, mode) to this file")
    bench.add_argument("--tokens", default="960,1920,3840,7680", help="comma-separated token counts N")
    bench.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats (median reported)")
    bench.add_argument(
        "--model", choices=("wan", "hunyuan", "all"), default="all",
        help="wan: the tiny Wan stack (separate text/image cross-attention); hunyuan: the joint-attention proxy "
        "(tiny HunyuanVideo, one softmax over [video | context]); all: both (default)",
    )
    bench.add_argument(
        "--edit", action="store_true",
        help="instead of recording, price fg.FocalGuidance (anchor + cache transfer) on the Wan stack: plain vs "
        "1 .. blocks-1 edited layers, the anchor alone and the cache alone; FLOPs, time and memory per edited layer",
    )
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
