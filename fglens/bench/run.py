"""Running the CPU benchmark: every mode at every token count N, measured the same way.

For each (N, mode) it measures

* ``flops``: matmul / convolution / attention FLOPs with `torch.utils.flop_counter.FlopCounterMode`, with a
  formula registered for the CPU attention kernel (`ensure_cpu_attention_flops`); element-wise work (softmax,
  exp, logsumexp) is not counted;
* ``peak_bytes``: the peak of live tensor bytes allocated during the forward (`LiveBytesMeter`, the same meter
  for every mode; parameters, buffers and inputs excluded), and ``recorder_bytes`` =
  ``peak_bytes(mode) - peak_bytes(plain)`` at the same N;
* ``wall_s``: the median of ``repeats`` timings of the forward alone, the modes interleaved inside each repeat,
  after one warm-up forward per mode.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import generic
from .generic import GENERIC
from .meters import LiveBytesMeter, ensure_cpu_attention_flops
from .modes import EditRun, edit_modes, edited_blocks, edits, fg_layers, is_edit, mode_context, parse_edit_mode
from .naive import NaiveJointRecorder, NaiveRecorder
from .workload import (
    JOINT_IMAGE_TOKENS,
    JOINT_TEXT_REAL,
    JOINT_TEXT_ROWS,
    MODEL_MODES,
    MODELS,
    frame_size_for,
    hunyuan_inputs,
    wan_inputs,
)

#: a progress callback (e.g. ``print``), or None
Log = Callable[[str], None] | None


def _timed_forward(transformer: torch.nn.Module, inputs: dict[str, Any], mode: str, model: str = "wan") -> float:
    """Seconds of one forward of `mode` (the context's entry and exit are not timed; no GC pause inside)."""
    with mode_context(mode, transformer, model, inputs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter()
            transformer(**inputs)
            return time.perf_counter() - start
        finally:
            if enabled:
                gc.enable()


def _statistics(recorder: Any) -> dict[str, np.ndarray]:
    """``{statistic: array [layer, ...]}`` of batch item 0 from a closed `fg.trace` or a `NaiveRecorder`."""
    if isinstance(recorder, EditRun):
        return {}
    if isinstance(recorder, (NaiveRecorder, NaiveJointRecorder)):
        return {v: torch.stack([per[i] for i in sorted(per)]).numpy() for v, per in recorder.values.items()}
    ds = recorder.dataset.sel(branch="cond").isel(step=0)
    return {str(v): np.asarray(ds[v].values) for v in ds.data_vars}


def _measured_forward(transformer: torch.nn.Module, inputs: dict[str, Any], mode: str, model: str = "wan"
                      ) -> dict[str, Any]:
    """FLOPs (total and per op), peak live bytes, the output and the recorded statistics of one forward of
    `mode` (an edit mode's priming forward is neither counted nor metered; its cache's size is reported)."""
    from torch.utils.flop_counter import FlopCounterMode

    ensure_cpu_attention_flops()
    cache_bytes = None
    with mode_context(mode, transformer, model, inputs) as recorder:
        with FlopCounterMode(display=False) as counter, LiveBytesMeter() as meter:
            output = transformer(**inputs)[0]
        if isinstance(recorder, EditRun):
            cache_bytes = recorder.cache_bytes()
    by_op = {str(op): int(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}
    return {
        "flops": int(counter.get_total_flops()), "flops_by_op": by_op, "peak_bytes": int(meter.peak),
        "statistics": {} if recorder is None else _statistics(recorder), "output": output,
        "cache_bytes": cache_bytes,
    }


def max_abs_difference(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float | None:
    """Largest absolute difference over the statistics both hold (NaN where both are NaN counts as equal)."""
    shared = [v for v in a if v in b and np.shape(a[v]) == np.shape(b[v])]
    if not shared:
        return None
    return max(float(np.nanmax(np.abs(np.asarray(a[v], np.float64) - np.asarray(b[v], np.float64)), initial=0.0))
               for v in shared)


def run_benchmark(
    tokens: Sequence[int],
    repeats: int = 3,
    *,
    model: str = "wan",
    modes: Sequence[str] | None = None,
    edit: bool = False,
    frame_hw: tuple[int, int] | None = None,
    num_layers: int = 4,
    num_double: int = 2,
    num_single: int = 2,
    heads: int = 4,
    head_dim: int = 32,
    seed: int = 0,
    log: Log = None,
) -> list[dict[str, Any]]:
    """Measure every mode at every token count; one record per (N, mode).

    Args:
        tokens: token counts N; each a whole number of latent frames of `frame_hw`.
        repeats: interleaved timing repeats; ``wall_s`` is their median.
        model: ``"wan"`` (the tiny Wan stack), ``"hunyuan"`` (the joint-attention proxy) or one of the generic rows
            (`fglens.bench.generic.GENERIC`: the model's tiny pipeline's transformer at `num_layers` x `heads` x
            `head_dim`, fed the inputs that pipeline builds).
        modes: which of the model's modes (`MODEL_MODES`, and for Wan the edit modes of `edit_modes`) to run;
            ``"fg"`` is `fg.FocalGuidance` on the middle half of the blocks (`fg_layers`), next to the recorders;
            by default all of `MODEL_MODES`, or all of `edit_modes` with `edit`; ``recorder_bytes`` needs
            ``"plain"``.
        edit: the edit benchmark (Wan only): plain against `fg.FocalGuidance` on 1 .. blocks - 1 layers.
        frame_hw: latent frame (Y, X); by default the largest of `FRAME_SIZES` that divides every N.
        num_layers: the tiny Wan transformer's blocks (and a generic row's).
        num_double, num_single: the tiny HunyuanVideo transformer's double- and single-stream blocks.
        heads, head_dim: attention size of either.
        seed: weights and inputs.
        log: progress callback (e.g. ``print``), or None.

    Returns:
        Records with keys ``model, n_tokens, mode, grid, flops, flops_by_op, peak_bytes, recorder_bytes, wall_s,
        wall_s_all`` and the model size (``num_layers`` counts every attention block; for the joint proxy also
        ``num_double, num_single, context_rows, context_image, context_real``); ``fg`` and the edit modes add
        ``edit, edited_layers, edited_blocks, source_layer, edit_record, cache_bytes, max_abs_diff_vs_plain``.

    Example:
        >>> recs = run_benchmark([80], repeats=1, modes=("plain", "fg"), frame_hw=(4, 5), num_layers=2)
        >>> [(r["mode"], r["edited_blocks"] if r["mode"] == "fg" else None) for r in recs]
        [('plain', None), ('fg', [0])]
        >>> recs[1]["flops"] > recs[0]["flops"] and recs[1]["max_abs_diff_vs_plain"] > 0
        True
    """
    from ..testing import tiny_hunyuan_transformer, tiny_wan_transformer

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; models are {MODELS}")
    if (edit or any(is_edit(m) for m in modes or ())) and model != "wan":
        raise ValueError("the edit benchmark runs on the Wan stack only (its joint-attention "
                         "version is not written yet; the fg mode runs on both)")
    if modes is None:
        modes = edit_modes(num_layers) if edit else MODEL_MODES[model]
    modes = tuple(modes)
    unknown = [m for m in modes if m not in MODEL_MODES[model] and not is_edit(m)]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown} for {model!r}; modes are {MODEL_MODES[model]}"
                         + (" and the edit modes (fg{k}, anchor{k}, cache{k}, fg{k}_rec)" if model == "wan" else ""))
    for m in modes:
        parsed = parse_edit_mode(m)
        if parsed is not None and not 1 <= parsed[1] < num_layers:
            raise ValueError(f"edit mode {m!r}: k must be 1 .. {num_layers - 1} (the last block is the source)")
    blocks = num_double + num_single if model == "hunyuan" else num_layers
    if "fg" in modes:
        fg_layers(blocks)  # at least 2 blocks
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    tokens = sorted(dict.fromkeys(int(n) for n in tokens))
    frame_hw = frame_size_for(tokens) if frame_hw is None else tuple(frame_hw)
    size: dict[str, Any] = {"heads": heads, "head_dim": head_dim}
    if model == "wan":
        transformer = tiny_wan_transformer(num_layers=num_layers, heads=heads, head_dim=head_dim, seed=seed)
        max_frames = transformer.config.rope_max_seq_len
        for n in tokens:
            if n // (frame_hw[0] * frame_hw[1]) > max_frames:
                raise ValueError(f"N={n} needs more than {max_frames} latent frames of {frame_hw[0]}x{frame_hw[1]}")
        size["num_layers"] = num_layers

        def make_inputs(n: int) -> dict[str, Any]:
            return wan_inputs(n, frame_hw, seed=seed)
    elif model in GENERIC:
        pipe, transformer = generic.build(model, num_layers=num_layers, heads=heads, head_dim=head_dim, seed=seed)
        size |= {"num_layers": num_layers, "model_class": type(transformer).__name__,
                 "pipeline_class": type(pipe).__name__}

        def make_inputs(n: int) -> dict[str, Any]:
            return generic.pipeline_inputs(pipe, n, frame_hw, seed=seed)
    else:
        transformer = tiny_hunyuan_transformer(num_double=num_double, num_single=num_single, heads=heads,
                                               head_dim=head_dim, seed=seed)
        size |= {"num_layers": num_double + num_single, "num_double": num_double, "num_single": num_single,
                 "context_rows": JOINT_IMAGE_TOKENS + JOINT_TEXT_ROWS, "context_image": JOINT_IMAGE_TOKENS,
                 "context_real": JOINT_IMAGE_TOKENS + JOINT_TEXT_REAL}

        def make_inputs(n: int) -> dict[str, Any]:
            return hunyuan_inputs(n, frame_hw, transformer.config, seed=seed)
    say = log or (lambda _msg: None)
    records: list[dict[str, Any]] = []
    with torch.no_grad():
        for n in tokens:
            inputs = make_inputs(n)
            grid = [n // (frame_hw[0] * frame_hw[1]), *frame_hw]
            extra = generic.extra_tokens(inputs) if model in GENERIC else {}  # LTX-2: its audio tokens at this N
            t0 = time.perf_counter()
            say(f"{model} N={n}: {len(modes)} modes ({', '.join(modes)}): warm-up, FLOPs and memory, then "
                f"{repeats} timed round(s) ...")
            for mode in modes:  # warm-up
                _timed_forward(transformer, inputs, mode, model)
            measured = {mode: _measured_forward(transformer, inputs, mode, model) for mode in modes}
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(repeats):
                for mode in modes:
                    times[mode].append(_timed_forward(transformer, inputs, mode, model))
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            say(f"{model} N={n} (grid {grid[0]}x{grid[1]}x{grid[2]}): {time.perf_counter() - t0:.1f} s")
            base = measured["plain"]["peak_bytes"] if "plain" in measured else None
            reference = next((measured[m]["statistics"] for m in ("traced_ref", "traced") if m in measured), None)
            plain_out = measured["plain"]["output"] if "plain" in measured else None
            for mode in modes:
                m = measured[mode]
                record = {
                    "model": model, "n_tokens": n, "mode": mode, "grid": grid,
                    "flops": m["flops"], "peak_bytes": m["peak_bytes"],
                    "recorder_bytes": None if base is None else m["peak_bytes"] - base,
                    "wall_s": statistics.median(times[mode]), "wall_s_min": min(times[mode]),
                    "wall_s_all": times[mode], "flops_by_op": m["flops_by_op"],
                    **size, **extra, "load_avg_1min": load,
                }
                if edits(mode):
                    parsed = parse_edit_mode(mode) or ("fg", 0, False)
                    edited = edited_blocks(mode, blocks)
                    record |= {"edit": parsed[0], "edited_layers": len(edited), "edited_blocks": edited,
                               "edit_record": parsed[2], "source_layer": blocks - 1, "cache_bytes": m["cache_bytes"],
                               "max_abs_diff_vs_plain": None if plain_out is None else
                               float((m["output"] - plain_out).abs().max())}
                if mode == "naive" and reference is not None:
                    # the positive control computes the same statistics as fglens: by how much they differ
                    record["max_abs_diff_vs_fglens"] = max_abs_difference(m["statistics"], reference)
                    record["statistics_compared"] = sorted(set(m["statistics"]) & set(reference))
                records.append(record)
    return records

