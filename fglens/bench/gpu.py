"""``fglens bench --gpu``: recording and FocalGuidance on realistic Wan2.1 shapes, random weights, on a CUDA GPU.

The transformer is `diffusers.WanTransformer3DModel` built from the released configurations (`GPU_CONFIGS`) but
with only ``layers`` = K blocks (``num_layers=K``: the other blocks are never allocated), random weights, in
bfloat16 (the modules diffusers keeps in float32 when loading in bfloat16, ``_keep_in_fp32_modules``, stay in
float32), driven as the Wan pipeline drives it: 832x480 video, 81 frames -> latents ``[1, C, 21, 60, 104]`` ->
21 x 30 x 52 = 32,760 video tokens, the text padded to 512 rows (`TEXT_TOKENS` real), and for I2V 257 CLIP image
tokens. Three modes, each a fresh context per forward (as in the CPU benchmark): ``plain``; ``traced``
(``fg.trace`` with the default statistics for two words); ``fg`` (`fg.FocalGuidance`, anchor and cache transfer,
on the middle half of the K blocks, the cache's source the last block, timed in the steady state after a
priming forward).

Per mode it measures

* time: CUDA events around the forward (``step_s``) and from the first block's start to the last block's end
  (``blocks_s``: forward hooks that only record events), median of ``repeats`` after ``warmup`` rounds, the modes
  interleaved;
* memory: ``torch.cuda.max_memory_allocated`` over the forward (and, for ``fg``, its priming forward and the
  cache it holds), minus ``memory_allocated`` before it, the peak statistics reset between modes;
  ``extra_bytes`` = that peak minus plain's;
* FLOPs: `torch.utils.flop_counter.FlopCounterMode`, total and inside the blocks.

K blocks are not a whole step, so `gpu_summary` reports, and says which is which, (a) what was measured: the
K-block forward's ratio over plain, and (b) what is extrapolated to the full model of L blocks (40 for
Wan2.1-14B): the plain step as the time outside the blocks plus L/K times the K blocks' time, the recorder's
cost per traced layer as (traced − plain block time) / K, its per-forward cost outside the blocks once, and the
step overhead with all L blocks traced. The GPU targets (docs/performance.md, "Targets") are held against (b);
the edit's cost is per edited layer, divided by the number of edited blocks (the source block's capture
included, so it errs high).

The same function runs on the CPU with a tiny configuration (``device="cpu"``, `SMOKE_CONFIG`): that is how the
test suite runs this code path end to end without a GPU; its numbers are no GPU numbers.

Example:
    >>> recs = run_gpu_benchmark(["tiny"], configs={"tiny": SMOKE_CONFIG}, layers=2, frames=5, height=64,
    ...                          width=80, repeats=1, warmup=0, device="cpu", dtype=torch.float32)
    >>> [(r["mode"], r["n_tokens"], r["edited_blocks"]) for r in recs]
    [('plain', 40, None), ('traced', 40, None), ('fg', 40, [0])]
"""

from __future__ import annotations

import gc
import os
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .meters import LiveBytesMeter, ensure_cpu_attention_flops
from .modes import EditRun, fg_layers, mode_context
from .report import verdict_tag
from .run import Log
from .targets import EDIT_TARGET, RECORD_MEMORY_TARGET, RECORD_STEP_TARGET
from .workload import IMAGE_TOKENS, TEXT_ROWS

_WAN = {"patch_size": (1, 2, 2), "attention_head_dim": 128, "out_channels": 16, "text_dim": 4096, "freq_dim": 256,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}
#: released Wan2.1 transformer configurations (diffusers' ``transformer/config.json``), less ``num_layers``:
#: ``full_layers`` is the real model's block count
GPU_CONFIGS: dict[str, dict[str, Any]] = {
    "1.3b": {"label": "Wan2.1-T2V-1.3B", "full_layers": 30, "config": {
        **_WAN, "num_attention_heads": 12, "in_channels": 16, "ffn_dim": 8960, "image_dim": None,
        "added_kv_proj_dim": None}},
    "14b": {"label": "Wan2.1-I2V-14B-480P", "full_layers": 40, "config": {
        **_WAN, "num_attention_heads": 40, "in_channels": 36, "ffn_dim": 13824, "image_dim": 1280,
        "added_kv_proj_dim": 5120}},
}
#: a tiny I2V configuration for running this code path on the CPU in tests (not offered by the command's help)
SMOKE_CONFIG: dict[str, Any] = {"label": "tiny Wan I2V (CPU smoke test)", "full_layers": 8, "config": {
    **_WAN, "attention_head_dim": 16, "text_dim": 32, "freq_dim": 32,
    "num_attention_heads": 2, "in_channels": 36, "ffn_dim": 64, "image_dim": 8, "added_kv_proj_dim": 32}}
GPU_MODES = ("plain", "traced", "fg")
TEXT_TOKENS = 64  # real prompt tokens among the 512 text rows
GPU_REPEATS = 10
GPU_WARMUP = 3
NO_CUDA = ("fglens bench --gpu needs a CUDA GPU, and torch.cuda.is_available() is False here ({why}); run "
           "`fglens bench` without --gpu for the CPU benchmark")


# -- the workload ---------------------------------------------------------------------------------------------
def latent_grid(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Video tokens (F', H', W') of a Wan video: VAE x4 in time (plus the first frame) and x8 in space, patch 2x2.

    Example:
        >>> latent_grid(81, 480, 832)
        (21, 30, 52)
    """
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"--frames must be 1 plus a multiple of 4 (Wan's VAE keeps the first frame and compresses "
                         f"the rest 4x in time), e.g. 81, 49, 17, 5; got {frames}")
    if height < 16 or width < 16 or height % 16 or width % 16:
        raise ValueError(f"height and width must be positive multiples of 16 (VAE x8, patch 2), got {width}x{height}")
    return (frames - 1) // 4 + 1, height // 16, width // 16


def build_transformer(spec: Mapping[str, Any], layers: int, device: torch.device, dtype: torch.dtype,
                      seed: int = 0) -> torch.nn.Module:
    """`WanTransformer3DModel` of `spec` with `layers` blocks only, random weights, made on `device` in `dtype`
    (the model's ``_keep_in_fp32_modules`` in float32, as diffusers loads them)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = WanTransformer3DModel(**spec["config"], num_layers=layers)
    model.eval().requires_grad_(False)
    keep = tuple(model._keep_in_fp32_modules or ())
    for name, module in model.named_modules():
        for table in (module._parameters, module._buffers):
            for key, t in table.items():
                if t is not None and t.is_floating_point():
                    t.data = t.data.to(torch.float32 if any(k in f"{name}.{key}" for k in keep) else dtype)
    return model


def gpu_inputs(spec: Mapping[str, Any], grid: tuple[int, int, int], device: torch.device, dtype: torch.dtype, *,
               text_tokens: int = TEXT_TOKENS, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments of one forward: latents ``[1, C, F', 2H', 2W']``, ``timestep``, the text ``[1, 512,
    text_dim]`` (random for the first `text_tokens` rows, zero after: Wan's padding) and, for I2V, the image
    tokens ``[1, 257, image_dim]``; made on the CPU from a seeded generator, then moved."""
    config = spec["config"]
    f, y, x = grid
    g = torch.Generator().manual_seed(seed)
    text = torch.zeros(1, TEXT_ROWS, config["text_dim"])
    text[:, :text_tokens] = torch.randn(1, text_tokens, config["text_dim"], generator=g)
    inputs = {
        "hidden_states": torch.randn(1, config["in_channels"], f, 2 * y, 2 * x, generator=g).to(device, dtype),
        "timestep": torch.tensor([500], device=device),
        "encoder_hidden_states": text.to(device, dtype),
        "return_dict": False,
    }
    if config.get("image_dim"):
        image = torch.randn(1, IMAGE_TOKENS, config["image_dim"], generator=g)
        inputs["encoder_hidden_states_image"] = image.to(device, dtype)
    return inputs


# -- measuring ------------------------------------------------------------------------------------------------
class Clock:
    """Marks on the device's timeline: CUDA events on a GPU (no host synchronisation until `sync`), the host's
    `time.perf_counter` on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        import time

        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start


class BlockSpan:
    """Marks the start of the first block and the end of the last one of every forward (hooks that only mark)."""

    def __init__(self, model: torch.nn.Module, clock: Clock):
        self.clock = clock
        self.start: Any = None
        self.end: Any = None
        blocks = model.blocks
        self._handles = [blocks[0].register_forward_pre_hook(self._on_start),
                         blocks[-1].register_forward_hook(self._on_end)]

    def _on_start(self, *_: Any) -> None:
        self.start = self.clock.mark()

    def _on_end(self, *_: Any) -> None:
        self.end = self.clock.mark()

    def seconds(self) -> float:
        return self.clock.seconds(self.start, self.end)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


_BLOCK = re.compile(r"\.blocks\.\d+$")


def _flops(model: torch.nn.Module, inputs: dict[str, Any], mode: str) -> tuple[int, int]:
    """(FLOPs of one forward of `mode`, of which inside the blocks)."""
    from torch.utils.flop_counter import FlopCounterMode

    ensure_cpu_attention_flops()
    with mode_context(mode, model, "wan", inputs), FlopCounterMode(display=False) as counter:
        model(**inputs)
    counts = counter.get_flop_counts()
    return int(counter.get_total_flops()), sum(int(sum(v.values())) for k, v in counts.items() if _BLOCK.search(k))


def _peak(model: torch.nn.Module, inputs: dict[str, Any], mode: str, device: torch.device) -> tuple[int, int | None]:
    """(peak bytes allocated over the mode's context and forward, above what was allocated before; the cache's
    bytes for ``fg``). On the CPU, the peak of live tensor bytes (`LiveBytesMeter`)."""
    cache = None
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with mode_context(mode, model, "wan", inputs) as run:
            model(**inputs)
            if isinstance(run, EditRun):
                cache = run.cache_bytes()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base), cache
    with LiveBytesMeter() as meter, mode_context(mode, model, "wan", inputs) as run:
        model(**inputs)
        if isinstance(run, EditRun):
            cache = run.cache_bytes()
    return int(meter.peak), cache


def _timed(model: torch.nn.Module, inputs: dict[str, Any], mode: str, clock: Clock, span: BlockSpan
           ) -> tuple[float, float]:
    """(seconds of one forward of `mode`, of which from the first block's start to the last block's end); the
    context's entry (and the edit's priming forward) and exit are not timed."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with mode_context(mode, model, "wan", inputs):
            clock.sync()
            start = clock.mark()
            model(**inputs)
            end = clock.mark()
        clock.sync()
        return clock.seconds(start, end), span.seconds()
    finally:
        if enabled:
            gc.enable()


def cuda_unavailable_reason() -> str | None:
    """Why the GPU benchmark cannot run here, or None when CUDA is available."""
    if torch.cuda.is_available():
        return None
    if not torch.backends.cuda.is_built():
        return "this torch build has no CUDA"
    return "no CUDA device is visible" + (f"; CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"
                                         if "CUDA_VISIBLE_DEVICES" in os.environ else "")


def check_gpu_arguments(models: Sequence[str], *, layers: int, frames: int, height: int = 480, width: int = 832,
                        repeats: int = 1, warmup: int = 0, text_tokens: int = TEXT_TOKENS,
                        configs: Mapping[str, Mapping[str, Any]] = GPU_CONFIGS) -> tuple[int, int, int]:
    """Raise a ValueError naming what is wrong and what is accepted, before anything is built; return the latent
    grid."""
    unknown = [m for m in models if m not in configs]
    if unknown or not models:
        raise ValueError(f"unknown GPU configuration(s) {unknown}; choose from {sorted(configs)}")
    if layers < 2:
        raise ValueError(f"--layers must be at least 2 (fg edits a block and takes its cache from the last), got "
                         f"{layers}")
    for name in models:
        if layers > configs[name]["full_layers"]:
            raise ValueError(f"--layers {layers}: {configs[name]['label']} has {configs[name]['full_layers']} blocks")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"--repeats must be at least 1 (got {repeats}) and warmup at least 0 (got {warmup})")
    if not 1 <= text_tokens <= TEXT_ROWS:
        raise ValueError(f"text_tokens must be 1 .. {TEXT_ROWS}, got {text_tokens}")
    return latent_grid(frames, height, width)


def run_gpu_benchmark(
    models: Sequence[str] = ("1.3b", "14b"),
    *,
    layers: int = 4,
    frames: int = 81,
    height: int = 480,
    width: int = 832,
    repeats: int = GPU_REPEATS,
    warmup: int = GPU_WARMUP,
    text_tokens: int = TEXT_TOKENS,
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    configs: Mapping[str, Mapping[str, Any]] = GPU_CONFIGS,
    seed: int = 0,
    log: Log = None,
) -> list[dict[str, Any]]:
    """Measure plain, traced and fg on K = `layers` blocks of each configuration; one record per (config, mode).

    Args:
        models: keys of `configs` (``"1.3b"``, ``"14b"``).
        layers: blocks built and run (K >= 2: fg needs an edited block and the cache's source).
        frames, height, width: the video (81 x 480 x 832 is Wan's 480p: 32,760 tokens); shrink `frames` to fit.
        repeats, warmup: timed rounds (median reported) and untimed rounds before them, every mode in each.
        text_tokens: real prompt tokens among the 512 text rows.
        device, dtype: ``"cuda"`` and bfloat16 for the real measurement; ``"cpu"`` runs the same code (tests).
        configs: name -> ``{"label", "full_layers", "config"}`` (`GPU_CONFIGS`; tests pass `SMOKE_CONFIG`).
        seed: weights and inputs.
        log: progress callback, or None.

    Raises:
        RuntimeError: `device` is CUDA and CUDA is not available (`NO_CUDA`).
        ValueError: unknown configuration, too few layers, frames or sizes Wan cannot have.
    """
    grid = check_gpu_arguments(models, layers=layers, frames=frames, height=height, width=width, repeats=repeats,
                               warmup=warmup, text_tokens=text_tokens, configs=configs)
    device = torch.device(device)
    if device.type == "cuda" and (why := cuda_unavailable_reason()) is not None:
        raise RuntimeError(NO_CUDA.format(why=why))
    say = log or (lambda _msg: None)
    records: list[dict[str, Any]] = []
    for name in models:
        spec = configs[name]
        model = build_transformer(spec, layers, device, dtype, seed)
        inputs = gpu_inputs(spec, grid, device, dtype, text_tokens=text_tokens, seed=seed)
        clock = Clock(device)
        span = BlockSpan(model, clock)
        try:
            with torch.no_grad():
                flops = {mode: _flops(model, inputs, mode) for mode in GPU_MODES}
                peaks = {mode: _peak(model, inputs, mode, device) for mode in GPU_MODES}
                for _ in range(warmup):
                    for mode in GPU_MODES:
                        _timed(model, inputs, mode, clock, span)
                times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in GPU_MODES}
                for _ in range(repeats):
                    for mode in GPU_MODES:
                        times[mode].append(_timed(model, inputs, mode, clock, span))
        finally:
            span.remove()
        edited, source = fg_layers(layers)
        plain_peak = peaks["plain"][0]
        for mode in GPU_MODES:
            steps, blocks = [t[0] for t in times[mode]], [t[1] for t in times[mode]]
            records.append({
                "config": name, "label": spec["label"], "mode": mode, "layers": layers,
                "full_layers": spec["full_layers"], "model_config": dict(spec["config"]),
                "n_tokens": grid[0] * grid[1] * grid[2], "grid": list(grid), "frames": frames, "height": height,
                "width": width, "text_tokens": text_tokens, "image_tokens": IMAGE_TOKENS if
                spec["config"].get("image_dim") else 0,
                "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                else "CPU", "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
                "flops": flops[mode][0], "block_flops": flops[mode][1],
                "peak_bytes": peaks[mode][0], "extra_bytes": peaks[mode][0] - plain_peak, "cache_bytes": peaks[mode][1],
                "step_s": statistics.median(steps), "blocks_s": statistics.median(blocks),
                "step_s_all": steps, "blocks_s_all": blocks, "repeats": repeats, "warmup": warmup,
                "edited_blocks": edited if mode == "fg" else None, "source_layer": source if mode == "fg" else None,
            })
        say(f"{spec['label']}: {layers} blocks, {grid[0]}x{grid[1]}x{grid[2]} tokens on {device}: done")
        del model, inputs
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records


# -- what the records say -------------------------------------------------------------------------------------------
def gpu_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration: what was measured on K blocks and what it extrapolates to on the full L-block model.

    For a mode m with step time S_m and block time B_m (K blocks), O_m = S_m - B_m the time outside the blocks:

    * ``record_k_ratio``, ``edit_k_ratio``: S_m / S_plain - 1, measured (K blocks: not a step's fraction);
    * ``full_step``: O_plain + (L/K)·B_plain, the plain L-block step in seconds, extrapolated;
    * ``record_layer_cost``: (B_traced - B_plain) / K, the recorder's seconds per traced layer, measured;
      ``record_per_layer``: that over the full step;
    * ``record_full``: ((O_traced - O_plain) + L·record_layer_cost) / full_step, the step overhead with all L
      blocks traced, extrapolated (the ≤ 2 % target);
    * ``edit_layer_cost``: (B_fg - B_plain) / k_edited; ``edit_per_layer``: over the full step (the ≤ 3 % per
      edited layer target), ``edit_per_layer_of_block``: over one plain block (B_plain / K);
    * the same with FLOPs for times (keys ending ``_flops``; exact), and ``record_extra_bytes``,
      ``edit_extra_bytes`` (measured).

    Example:
        >>> recs = [{"config": "x", "mode": m, "layers": 2, "full_layers": 10, "step_s": s, "blocks_s": b,
        ...          "flops": f, "block_flops": bf, "extra_bytes": e, "edited_blocks": [0] if m == "fg" else None}
        ...         for m, s, b, f, bf, e in (("plain", 1.0, 0.8, 100, 80, 0), ("traced", 1.02, 0.81, 101, 81, 5),
        ...                                   ("fg", 1.04, 0.84, 104, 84, 9))]
        >>> s = gpu_summary(recs)["x"]
        >>> round(s["full_step"], 3), round(s["record_layer_cost"], 4), round(s["record_full"], 4)
        (4.2, 0.005, 0.0143)
        >>> round(s["edit_per_layer"], 4), round(s["edit_per_layer_of_block"], 3)
        (0.0095, 0.1)
    """
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["config"] for r in records):
        by = {r["mode"]: r for r in records if r["config"] == name}
        if "plain" not in by:
            continue
        p = by["plain"]
        k, full = p["layers"], p["full_layers"]
        s: dict[str, Any] = {"layers": k, "full_layers": full}
        for unit, step, block in (("", "step_s", "blocks_s"), ("_flops", "flops", "block_flops")):
            outside = p[step] - p[block]
            full_step = outside + full / k * p[block]
            s["full_step" + unit] = full_step
            if "traced" in by:
                t = by["traced"]
                layer_cost = (t[block] - p[block]) / k
                s["record_k_ratio" + unit] = t[step] / p[step] - 1
                s["record_layer_cost" + unit] = layer_cost
                s["record_per_layer" + unit] = layer_cost / full_step
                s["record_full" + unit] = ((t[step] - t[block]) - outside + full * layer_cost) / full_step
            if "fg" in by:
                f = by["fg"]
                layer_cost = (f[block] - p[block]) / len(f["edited_blocks"])
                s["edit_k_ratio" + unit] = f[step] / p[step] - 1
                s["edit_layer_cost" + unit] = layer_cost
                s["edit_per_layer" + unit] = layer_cost / full_step
                s["edit_per_layer_of_block" + unit] = layer_cost / (p[block] / k)
        s["record_extra_bytes"] = by["traced"]["extra_bytes"] if "traced" in by else None
        s["edit_extra_bytes"] = by["fg"]["extra_bytes"] if "fg" in by else None
        out[name] = s
    return out


def gpu_verdicts(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """The GPU targets (docs/performance.md) per configuration, held against the extrapolated full step (time) and the
    measured extra memory; FLOPs and the measured K-block ratios are given alongside."""
    out: list[tuple[str, bool | None, str]] = []
    summary = gpu_summary(records)
    for name, s in summary.items():
        r = next(r for r in records if r["config"] == name)
        where = f"{r['label']}, {r['device_name']}, N={r['n_tokens']}" + (
            "" if r["n_tokens"] == 32760 else " (not the 480p x 81-frame shape of the target)")
        k, full = s["layers"], s["full_layers"]
        if "record_full" in s:
            out.append((
                f"{where}: recording adds <= {RECORD_STEP_TARGET:.0%} to the {full}-block step (extrapolated from {k} "
                "blocks: per-layer cost x L + per-forward cost, over the plain step extrapolated the same way)",
                s["record_full"] <= RECORD_STEP_TARGET,
                f"time {s['record_full']:+.2%} ({s['record_per_layer']:+.3%} per traced layer); FLOPs "
                f"{s['record_full_flops']:+.3%}; measured {k}-block forward: time {s['record_k_ratio']:+.2%}, FLOPs "
                f"{s['record_k_ratio_flops']:+.3%}",
            ))
            extra = s["record_extra_bytes"]
            out.append((
                f"{where}: recording adds <= {RECORD_MEMORY_TARGET / 1e9:.1f} GB of GPU memory (measured, {k} traced "
                "blocks)", extra <= RECORD_MEMORY_TARGET, f"{extra / 1e9:+.3f} GB",
            ))
        if "edit_per_layer" in s:
            fg = next(x for x in records if x["config"] == name and x["mode"] == "fg")
            out.append((
                f"{where}: editing adds <= {EDIT_TARGET:.0%} of the {full}-block step per edited layer (extrapolated; "
                f"fg on blocks {', '.join(map(str, fg['edited_blocks']))} of {k}, source {fg['source_layer']})",
                s["edit_per_layer"] <= EDIT_TARGET,
                f"time {s['edit_per_layer']:+.3%} per edited layer ({s['edit_per_layer_of_block']:+.1%} of one "
                f"block); FLOPs {s['edit_per_layer_flops']:+.3%} ({s['edit_per_layer_of_block_flops']:+.1%} of one "
                f"block); measured {k}-block forward: time {s['edit_k_ratio']:+.2%}; extra memory "
                f"{s['edit_extra_bytes'] / 1e9:+.3f} GB",
            ))
    return out


def format_gpu_report(records: Sequence[Mapping[str, Any]]) -> str:
    """The printed tables (one per configuration) and the verdict lines."""
    sections = []
    for name in dict.fromkeys(r["config"] for r in records):
        group = [r for r in records if r["config"] == name]
        r0, c = group[0], group[0]["model_config"]
        f, y, x = r0["grid"]
        heads, dim = c["num_attention_heads"], c["attention_head_dim"]
        image = f", image_dim {c['image_dim']}, {r0['image_tokens']} image tokens" if c.get("image_dim") else ", T2V"
        lines = [
            f"fglens bench --gpu: {r0['label']} shape (dim {heads * dim}, {heads} heads x {dim}, ffn {c['ffn_dim']}"
            f"{image}), {r0['layers']} of {r0['full_layers']} blocks, random weights, {r0['dtype']} on "
            f"{r0['device_name']}, torch {r0['torch']}; video {r0['width']}x{r0['height']}, {r0['frames']} frames -> "
            f"latent {f}x{y}x{x} = {r0['n_tokens']} tokens; text 512 rows ({r0['text_tokens']} real); median of "
            f"{r0['repeats']} after {r0['warmup']} warm-up rounds",
            "",
            f"{'mode':<8}{'step ms':>10}{'blocks ms':>11}{'other ms':>10}{'GFLOP':>10}{'block GFLOP':>13}"
            f"{'peak GiB':>10}{'extra GiB':>11}{'cache GiB':>11}{'step/plain':>12}",
        ]
        lines.append("-" * len(lines[-1]))
        plain = next((g for g in group if g["mode"] == "plain"), None)
        for g in group:
            cache = "" if g["cache_bytes"] is None else f"{g['cache_bytes'] / 2**30:.3f}"
            rel = "" if plain is None else f"{g['step_s'] / plain['step_s']:.4f}"
            lines.append(
                f"{g['mode']:<8}{1e3 * g['step_s']:>10.2f}{1e3 * g['blocks_s']:>11.2f}"
                f"{1e3 * (g['step_s'] - g['blocks_s']):>10.2f}{g['flops'] / 1e9:>10.1f}{g['block_flops'] / 1e9:>13.1f}"
                f"{g['peak_bytes'] / 2**30:>10.3f}{g['extra_bytes'] / 2**30:>11.3f}{cache:>11}{rel:>12}"
            )
        s = gpu_summary(group).get(name, {})
        if "full_step" in s:
            lines.append(f"full {r0['full_layers']}-block plain step, extrapolated: {1e3 * s['full_step']:.1f} ms, "
                         f"{s['full_step_flops'] / 1e12:.2f} TFLOP")
        sections.append("\n".join(lines))
    lines = ["\n\n".join(sections), ""]
    for target, ok, numbers in gpu_verdicts(records):
        tag = verdict_tag(target, ok)
        lines.append(f"{tag} {target}: {numbers}")
    if any(r["device"] == "cpu" for r in records):
        lines.append("(run on the CPU: these are no GPU numbers)")
    return "\n".join(lines)
