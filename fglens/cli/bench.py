"""``fglens bench``: time, FLOPs and peak memory of plain vs traced vs FocalGuidance vs a naive recorder, on the CPU
or (``--gpu``) on realistic Wan2.1 shapes (see fglens.bench)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    parser = sub.add_parser(
        "bench", help="time, FLOPs and peak memory: plain vs traced vs FocalGuidance vs a naive materialising recorder",
        description="CPU (default): one forward of a tiny random-weight Wan stack, a HunyuanVideo joint-attention\n"
        "proxy and a row per other architecture (CogVideoX, SkyReels-V2, LTX-Video, Wan2.2-TI2V: plain and traced)\n"
        "at several token counts N: time, FLOP and peak-memory ratios traced/plain and fg/plain\n"
        "(FocalGuidance on the middle blocks) side by side, the naive materialising recorder as positive control,\n"
        "and a log-log fit of recorder memory against N (slope ~1 for fglens, ~2 for naive).\n"
        "--gpu: a few blocks of Wan2.1-1.3B / -14B at 480p, random weights, bfloat16, on CUDA, against the\n"
        "GPU targets (recording <= 2 % of a step and <= 0.5 GB; editing <= 3 % per layer; docs/performance.md).\n"
        "Every run also reports the command's start-up time. Progress goes to stderr. Exit status 1 when a\n"
        "target FAILs (INFO lines, CPU wall times and start-up, are informative and never fail).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  fglens bench --json bench.json --plot bench.png\n"
        "  fglens bench --model hunyuan --tokens 960,1920\n  fglens bench --edit\n"
        "  fglens bench --gpu --gpu-model 14b --layers 4 --frames 81",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write one record per (N, mode) to FILE")
    parser.add_argument("--plot", default=None, metavar="PATH",
                        help="also draw recorder memory against N (log-log, fitted slopes) and the time and FLOP "
                        "ratios to PATH (.png, .pdf, .svg)")
    parser.add_argument("--tokens", default=None,
                        help="comma-separated token counts N (CPU; default 960,1920,3840,7680)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved timing repeats, median reported (default 3 on the CPU, 10 with --gpu)")
    parser.add_argument(
        "--model", default=None,
        help="wan: the tiny Wan stack (separate text/image cross-attention); hunyuan: the joint-attention proxy "
        "(tiny HunyuanVideo, one softmax over [video | context]); cogvideox, skyreels, ltx, hunyuan15, ltx2, "
        "wan22-ti2v (every other adapter's tiny pipeline: its transformer at the benchmark's size, fed the inputs that "
        "pipeline builds; plain and traced); all: every one (default)",
    )
    parser.add_argument(
        "--edit", action="store_true",
        help="instead of recording, price fg.FocalGuidance (anchor + cache transfer) on the Wan stack: plain vs "
        "1 .. blocks-1 edited layers, the anchor alone and the cache alone; FLOPs, time and memory per edited layer",
    )
    parser.add_argument(
        "--train", action="store_true",
        help="instead, price a FocalLoRA distill training step against plain LoRA training of the same layers "
        "(time and peak memory per step, at --tokens)")
    gpu = parser.add_argument_group("GPU (--gpu)")
    gpu.add_argument("--gpu", action="store_true",
                     help="realistic shapes on a CUDA GPU: plain, traced and fg on --layers blocks of the Wan2.1 "
                     "configs, random weights, bfloat16; CUDA events, max_memory_allocated, FLOPs")
    gpu.add_argument("--gpu-model", default=None, metavar="{1.3b,14b,all}",
                     help="Wan2.1-T2V-1.3B (dim 1536, 30 blocks), Wan2.1-I2V-14B-480P (dim 5120, 40 blocks), or "
                     "both (default all)")
    gpu.add_argument("--layers", type=int, default=None,
                     help="blocks built and run, default 4 (the others are never allocated)")
    gpu.add_argument("--frames", "--num-frames", dest="frames", type=int, default=None,
                     help="video frames at 832x480, 1 + a multiple of 4; default 81 (21 x 30 x 52 = 32,760 tokens)")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # tests: the --gpu path on the CPU
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import bench

    return bench.main(args)
