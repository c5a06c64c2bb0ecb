"""``fglens bench``: time, FLOPs and peak memory of plain vs traced vs a naive recorder (see fglens.bench)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    parser = sub.add_parser(
        "bench", help="time, FLOPs and peak memory: plain vs traced vs a naive materialising recorder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  fglens bench --json bench.json\n  fglens bench --model hunyuan --tokens 960,1920\n"
        "  fglens bench --edit",
    )
    parser.add_argument("--json", default=None, help="also write one record per (N, mode) to this file")
    parser.add_argument("--tokens", default="960,1920,3840,7680", help="comma-separated token counts N")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats (median reported)")
    parser.add_argument(
        "--model", choices=("wan", "hunyuan", "all"), default="all",
        help="wan: the tiny Wan stack (separate text/image cross-attention); hunyuan: the joint-attention proxy "
        "(tiny HunyuanVideo, one softmax over [video | context]); all: both (default)",
    )
    parser.add_argument(
        "--edit", action="store_true",
        help="instead of recording, price fg.FocalGuidance (anchor + cache transfer) on the Wan stack: plain vs "
        "1 .. blocks-1 edited layers, the anchor alone and the cache alone; FLOPs, time and memory per edited layer",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import bench

    return bench.main(args)
