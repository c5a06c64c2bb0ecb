"""`fglens bench`: what recording and editing cost, measured — the reference harness behind docs/performance.md.

**The CPU benchmark** (`run_benchmark`, ``fglens bench``) runs one transformer forward (one sampling step) of two
tiny random-weight stacks at several token counts N, in these modes, side by side:

* ``plain``: no tracing;
* ``traced``: ``fg.trace`` with the default statistics (word_mass, morans_i, similarity, entropy, and
  text_share on Wan or text_mass and image_mass on joint attention);
* ``traced_ref`` (Wan): the same plus ``ref_mass`` (self-attention mass on the first latent frame, computed
  exactly in chunks: it recomputes Q·K over all keys, so its FLOPs are higher by design);
* ``naive``: the positive control (`NaiveRecorder`, `NaiveJointRecorder`), the same statistics from the full
  probability matrices, so its memory grows quadratically with N;
* ``fg``: `fg.FocalGuidance` (an anchor and a cache transfer) on the middle half of the blocks (`fg_layers`),
  timed in the steady state.

For each (N, mode) it measures FLOPs (`FlopCounterMode`, the CPU attention kernel counted), the peak of live
tensor bytes (`LiveBytesMeter`) and the median time over interleaved repeats (see `fglens.bench.run`), and the
report (`format_report`) gives the time, FLOP and memory ratios over plain, FocalGuidance's cost per edited layer,
and a least-squares fit of log(recorder bytes) on log(N) (`memory_fit`: slope ≈ 1 for fglens, ≈ 2 for the naive
control), with a verdict line per target (`verdicts`); `plot_benchmark` draws it (``--plot``).

The Wan stack is a bare `WanTransformer3DModel` (`fglens.testing.tiny_wan_transformer`, 4 blocks, 4 heads x 32
dims, so that attention dominates as at full scale) driven as the Wan I2V pipeline drives it (latents
``[1, 36, F, 2Y, 2X]``, the text zero-padded to 512 rows, 257 CLIP image tokens). The joint-attention proxy is a
bare `HunyuanVideoTransformer3DModel` (2 double- + 2 single-stream blocks, 4 heads x 32 dims, token-replace I2V
with guidance embedding): latents ``[1, 4, F, 2Y, 2X]``, a context of 144 image-derived tokens then 252 text rows
(12 real, the rest masked padding). A bare transformer has no pipeline to say where the image tokens end, so fglens
counts the whole context as text there (``image_mass`` is 0) and the word positions are offset by the 144 tokens.

**The edit benchmark** (``run_benchmark(edit=True)``, ``fglens bench --edit``; Wan only) prices FocalGuidance
against the number of edited layers: ``fg{k}`` on blocks 0 .. k-1 for k = 1 .. blocks - 1, the anchor and the cache
alone on one layer (``anchor1``, ``cache1``) and ``fg{k}_rec`` (with a minimal Record); see `edit_overheads`.

**The GPU benchmark** (`fglens.bench.gpu.run_gpu_benchmark`, ``fglens bench --gpu``) runs plain, traced and fg on
a few blocks of the real Wan2.1-1.3B and -14B shapes at 480p in bfloat16 with random weights, against the GPU
targets (docs/performance.md, "Targets").

**Start-up** (`measure_startup`): ``fglens --help`` and ``import fglens`` in fresh processes, reported by every
``fglens bench`` run as an informative line (target < 1 s).

**Exit status** of ``fglens bench``: 1 when a verdict FAILs; INFO lines (CPU wall times, start-up) never fail.

Example:
    >>> from fglens.bench import run_benchmark, format_report
    >>> records = run_benchmark([160, 320], repeats=1, frame_hw=(8, 10), num_layers=2)  # doctest: +SKIP
    >>> sorted({r["mode"] for r in records})  # doctest: +SKIP
    ['fg', 'naive', 'plain', 'traced', 'traced_ref']
    >>> print(format_report(records))  # doctest: +SKIP
"""

from __future__ import annotations

from .analysis import (
    cache_qk_bytes,
    edit_flops_per_layer,
    edit_overheads,
    fg_overheads,
    growth_per_doubling,
    joint_recompute_flops,
    memory_fit,
    top_flop_ops,
)
from .command import main, parse_tokens
from .meters import LiveBytesMeter, ensure_cpu_attention_flops
from .modes import anchor_region, edit_modes, fg_layers, mode_context, parse_edit_mode
from .naive import NaiveJointRecorder, NaiveRecorder
from .plot import plot_benchmark
from .report import INFORMATIVE, failed, format_report, verdict_tag, verdicts
from .run import run_benchmark
from .startup import STARTUP_COMMANDS, format_startup, measure_startup
from .targets import (
    EDIT_TARGET,
    FLOP_TARGET,
    FLOP_TARGET_MIN_N,
    NAIVE_SLOPE_MIN,
    RECORD_MEMORY_TARGET,
    RECORD_STEP_TARGET,
    SLOPE_MAX,
    STARTUP_TARGET_S,
)
from .workload import JOINT_MODES, JOINT_WORDS, MODEL_MODES, MODELS, MODES, WORDS, hunyuan_inputs, wan_inputs

__all__ = [
    "EDIT_TARGET", "FLOP_TARGET", "FLOP_TARGET_MIN_N", "JOINT_MODES", "JOINT_WORDS", "MODELS", "MODEL_MODES", "MODES",
    "INFORMATIVE", "NAIVE_SLOPE_MIN", "RECORD_MEMORY_TARGET", "RECORD_STEP_TARGET", "SLOPE_MAX", "STARTUP_COMMANDS",
    "STARTUP_TARGET_S", "WORDS", "LiveBytesMeter", "NaiveJointRecorder", "NaiveRecorder", "anchor_region",
    "cache_qk_bytes", "edit_flops_per_layer", "edit_modes", "edit_overheads", "ensure_cpu_attention_flops", "failed",
    "fg_layers", "fg_overheads", "format_report", "format_startup", "growth_per_doubling", "hunyuan_inputs",
    "joint_recompute_flops", "main", "measure_startup", "memory_fit", "mode_context", "parse_edit_mode",
    "parse_tokens", "plot_benchmark", "run_benchmark", "top_flop_ops", "verdict_tag", "verdicts", "wan_inputs",
]
