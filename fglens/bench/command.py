"""The ``fglens bench`` command behind `fglens.cli.bench`: check the arguments, run the CPU benchmark (or, with
``--gpu``, the realistic-shape one), print the report, and write the JSON records and the plot when asked."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .analysis import by_model, edit_flops_per_layer, index, joint_recompute_flops, ratio, top_flop_ops
from .modes import is_edit
from .report import _LABEL, failed, format_report, verdicts
from .run import run_benchmark
from .startup import format_startup, measure_startup
from .targets import FLOP_TARGET
from .workload import MODELS, frame_size_for

CPU_REPEATS = 3
DEFAULT_TOKENS = "960,1920,3840,7680"


def parse_tokens(text: str) -> list[int]:
    """``"960,1920"`` -> ``[960, 1920]``.

    Example:
        >>> parse_tokens("960, 1920")
        [960, 1920]
    """
    try:
        tokens = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError as exc:
        raise ValueError(f"--tokens must be comma-separated integers, got {text!r}") from exc
    if not tokens:
        raise ValueError("--tokens names no token count")
    return tokens


def _given(args: argparse.Namespace, name: str, default: Any) -> Any:
    value = getattr(args, name, None)
    return default if value is None else value


def _fail(message: str) -> int:
    print(f"fglens bench: {message}", file=sys.stderr)
    return 2


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_output(path: str | None, flag: str) -> None:
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {Path(path).resolve().parent} does not exist")


def _main_train(args: argparse.Namespace, json_path: str | None) -> int:
    """``fglens bench --train`` (`fglens.bench.train`); INFO lines only."""
    from .train import run_train_benchmark, train_report

    others = [f for f, v in (("--gpu", "gpu"), ("--edit", "edit"), ("--model", "model"), ("--plot", "plot"))
              if getattr(args, v, None)]
    if others:
        return _fail(f"--train takes --tokens, --repeats and --json; not {', '.join(others)}")
    try:
        tokens = parse_tokens(getattr(args, "tokens", None) or "960,1920,3840")
        repeats = _given(args, "repeats", CPU_REPEATS)
        if repeats < 1:
            raise ValueError("--repeats must be at least 1")
        rows = run_train_benchmark(tokens, repeats=repeats)
    except ValueError as exc:
        return _fail(str(exc))
    print(train_report(rows))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def main(args: argparse.Namespace) -> int:
    """The ``fglens bench`` command: run, print the tables and verdicts, optionally write JSON and a plot.

    ``args.model`` picks ``wan``, ``hunyuan`` (the joint-attention proxy) or ``all`` (the default); ``args.gpu``
    runs `fglens.bench.gpu.run_gpu_benchmark` instead. Progress goes to stderr as it happens. Returns 0 when every
    target is met or not measurable, 1 when a verdict FAILs (informative lines, INFO, never fail: CPU wall
    times and the start-up time), 2 for unusable arguments or a GPU run without CUDA.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    json_path, plot_path = getattr(args, "json", None), getattr(args, "plot", None)
    try:
        _check_output(json_path, "--json")
        _check_output(plot_path, "--plot")
    except ValueError as exc:
        return _fail(str(exc))
    if getattr(args, "train", False):
        return _main_train(args, json_path)
    gpu_only = [f for f, v in (("--gpu-model", "gpu_model"), ("--layers", "layers"), ("--frames", "frames"))
                if getattr(args, v, None) is not None]
    cpu_only = [f for f, v in (("--tokens", "tokens"), ("--model", "model")) if getattr(args, v, None) is not None]
    if getattr(args, "gpu", False):
        if cpu_only:
            return _fail(f"{', '.join(cpu_only)}: for the CPU benchmark only; --gpu takes --gpu-model, --layers and "
                         "--frames")
        return _main_gpu(args, json_path, plot_path)
    if gpu_only:
        return _fail(f"{', '.join(gpu_only)}: for the GPU benchmark only, add --gpu (the CPU benchmark takes --tokens "
                     "and --model)")
    choice = getattr(args, "model", None) or "all"
    repeats = _given(args, "repeats", CPU_REPEATS)
    edit = bool(getattr(args, "edit", False))
    try:
        tokens = parse_tokens(getattr(args, "tokens", None) or DEFAULT_TOKENS)
        frame_size_for(tokens)
        if repeats < 1:
            raise ValueError("--repeats must be at least 1")
        if choice != "all" and choice not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)} or all, got {choice!r}")
        if edit and choice not in ("wan", "all"):
            raise ValueError("--edit runs on the Wan stack only (no joint-attention edit benchmark yet; the default "
                             "run's fg mode covers both)")
        if edit and plot_path:
            raise ValueError("--plot draws the recording benchmark (recorder memory, time and FLOP ratios against "
                             "N); --edit has none of it to draw")
    except ValueError as exc:
        return _fail(str(exc))
    models = ("wan",) if edit else MODELS if choice == "all" else (choice,)
    start = time.perf_counter()
    _log(f"fglens bench: {'the edit benchmark' if edit else 'recording'} on {', '.join(models)} at N = "
         f"{', '.join(map(str, tokens))}, {repeats} timed repeat(s) each; progress below, the report at the end")
    records: list[dict[str, Any]] = []
    try:
        for model in models:
            records += run_benchmark(tokens, repeats, model=model, edit=edit, log=_log)
    except ValueError as exc:
        return _fail(str(exc))
    _log("fglens bench: start-up time of the command")
    startup = measure_startup()
    print(format_report(records))
    print(format_startup(startup))
    _explain_flops(records)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    _write(records, json_path)
    if plot_path:
        from .plot import plot_benchmark

        plot_benchmark(records, plot_path)
        print(f"wrote the plot to {plot_path}")
    return _exit_status(failed(verdicts(records)))


def _exit_status(failures: list) -> int:
    if failures:
        print(f"\nfglens bench: {len(failures)} target(s) FAIL (the FAIL lines above): exit status 1", file=sys.stderr)
        return 1
    return 0


def _explain_flops(records: list[dict[str, Any]]) -> None:
    """Where the FLOP overheads come from: by op, and against the analytic counts."""
    for model, group in by_model(records).items():
        idx = index(group)
        for (n, mode), r in sorted(idx.items()):
            q = ratio(idx, n, mode, "flops")
            if mode == "traced" and q is not None and q > FLOP_TARGET:
                ops = ", ".join(f"{op} {d / 1e6:+.1f} MFLOP" for op, d in top_flop_ops(r, idx[n, "plain"]) if d)
                print(f"  {_LABEL[model]}traced FLOP overhead at N={n} by op: {ops}")
                if model == "hunyuan":
                    split = joint_recompute_flops(r)
                    done = split["image"] + split["real text"]
                    print(f"    of which Q·K of the video queries against the unmasked context keys "
                          f"(2·H·N·D per key and block, {r['num_layers']} blocks): {done / 1e6:.1f} MFLOP = image "
                          f"{split['image'] / 1e6:.1f} + real text {split['real text'] / 1e6:.1f} "
                          f"(masked padding skipped: {split['masked padding'] / 1e6:.1f})")
    edits = [r for r in records if is_edit(r["mode"]) and r.get("edit") == "fg" and not r.get("edit_record")]
    if edits:
        top = max(edits, key=lambda r: (r["n_tokens"], r["edited_layers"]))
        plain = index(by_model(records)["wan"])[top["n_tokens"], "plain"]
        ops = ", ".join(f"{op} {d / 1e6:+.1f} MFLOP" for op, d in top_flop_ops(top, plain) if d)
        per = edit_flops_per_layer(top)
        print(f"  {top['mode']} FLOP overhead at N={top['n_tokens']} by op: {ops}; by formula per edited layer: "
              f"cache {per['cache'] / 1e6:.1f} + anchor {per['anchor'] / 1e6:.1f} MFLOP")


def _write(records: list[dict[str, Any]], path: str | None) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(records, fh, indent=1)
        print(f"wrote {len(records)} records to {path}")


def _main_gpu(args: argparse.Namespace, json_path: str | None, plot_path: str | None) -> int:
    import torch

    from .gpu import (
        GPU_CONFIGS,
        GPU_REPEATS,
        NO_CUDA,
        SMOKE_CONFIG,
        check_gpu_arguments,
        cuda_unavailable_reason,
        format_gpu_report,
        gpu_verdicts,
        run_gpu_benchmark,
    )

    if plot_path:
        return _fail("--plot draws the CPU benchmark; --gpu prints its tables (and writes --json)")
    if getattr(args, "edit", False):
        return _fail("--edit is a CPU benchmark; --gpu already prices FocalGuidance per edited layer (its fg mode)")
    configs = {**GPU_CONFIGS, "tiny": SMOKE_CONFIG}  # "tiny": the CPU smoke test's shape, not in --help
    choice = getattr(args, "gpu_model", None) or "all"
    names = list(GPU_CONFIGS) if choice == "all" else [c.strip() for c in choice.split(",") if c.strip()]
    if not names or any(n not in configs for n in names):
        return _fail(f"--gpu-model must be {', '.join(GPU_CONFIGS)} or all (comma-separated), got {choice!r}")
    layers, frames = _given(args, "layers", 4), _given(args, "frames", 81)
    repeats = _given(args, "repeats", GPU_REPEATS)
    try:
        check_gpu_arguments(names, layers=layers, frames=frames, repeats=repeats, configs=configs)
    except ValueError as exc:
        return _fail(str(exc))
    device = getattr(args, "device", None) or "cuda"
    if torch.device(device).type == "cuda" and (why := cuda_unavailable_reason()) is not None:
        return _fail(NO_CUDA.format(why=why).removeprefix("fglens bench "))
    start = time.perf_counter()
    records = run_gpu_benchmark(names, layers=layers, frames=frames, repeats=repeats, device=device,
                                dtype=torch.bfloat16, configs=configs, log=_log)
    print(format_gpu_report(records))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    _write(records, json_path)
    return _exit_status(failed(gpu_verdicts(records)))
