"""The numbers the benchmark's verdict lines hold measurements against: the GPU performance targets (listed in
docs/performance.md, "Targets") and the bounds of the CPU benchmark's own checks (see docs/performance.md for why
each bound is where it is)."""

from __future__ import annotations

# -- the design targets, on a GPU (Wan-14B, 480p) ------------------------------------------------------------------
RECORD_STEP_TARGET = 0.02  # recording adds <= 2 % to the step
RECORD_MEMORY_TARGET = 0.5e9  # recording adds <= 0.5 GB of memory (GB = 10^9 bytes)
EDIT_TARGET = 0.03  # editing adds <= 3 % to the step per edited layer

# -- the CPU benchmark --------------------------------------------------------------------------------------------
FLOP_TARGET = 1.03  # traced / plain FLOPs, for N >= FLOP_TARGET_MIN_N
FLOP_TARGET_MIN_N = 3840
#: recorder memory against N, least-squares slope of log(bytes) on log(N): at most this for fglens (linear, plus
#: fixed parts that bend the first doublings) ...
SLOPE_MAX = 1.2
#: ... and at least this for the naive positive control (quadratic in S = N + context: over N = 960 .. 7680 a pure
#: S² with the joint proxy's 396 context rows has slope 1.72; with no context, 2)
NAIVE_SLOPE_MIN = 1.6

# -- the command ----------------------------------------------------------------------------------------------
STARTUP_TARGET_S = 1.0  # `fglens --help` answers within a second (informative: wall time depends on the load)
