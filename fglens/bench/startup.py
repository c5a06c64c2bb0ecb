"""How long the ``fglens`` command takes to start: ``fglens --help`` and ``import fglens`` in fresh processes.

The command imports its subcommands' modules only to build the parser; torch, diffusers, xarray and matplotlib
are imported on first use (``fglens/__init__.py``, each command's ``run``). A regression here shows as seconds.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

from .targets import STARTUP_TARGET_S

#: what is timed, each in a fresh interpreter (the same one running the benchmark)
STARTUP_COMMANDS = {
    "fglens --help": [sys.executable, "-m", "fglens.cli", "--help"],
    "import fglens": [sys.executable, "-c", "import fglens"],
}


def measure_startup(repeats: int = 3) -> dict[str, Any]:
    """Wall seconds of each of `STARTUP_COMMANDS` (median and all of `repeats` runs, after one untimed run).

    Example:
        >>> result = measure_startup(repeats=1)
        >>> sorted(result["median_s"]), result["target_s"]
        (['fglens --help', 'import fglens'], 1.0)
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    all_s: dict[str, list[float]] = {}
    for name, command in STARTUP_COMMANDS.items():
        subprocess.run(command, check=True, capture_output=True)  # warm the file cache
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        all_s[name] = times
    return {"median_s": {k: statistics.median(v) for k, v in all_s.items()}, "all_s": all_s,
            "target_s": STARTUP_TARGET_S, "repeats": repeats}


def format_startup(result: dict[str, Any]) -> str:
    """One informative line: the command's start-up against `STARTUP_TARGET_S` (times vary with the machine's
    load, so this line never sets the exit status)."""
    median = result["median_s"]
    within = "within" if median["fglens --help"] < result["target_s"] else "OVER"
    return (f"INFO start-up (informative: wall time, varies with load): fglens --help {median['fglens --help']:.2f} s, "
            f"import fglens {median['import fglens']:.2f} s (median of {result['repeats']} fresh processes); "
            f"target < {result['target_s']:.0f} s: {within}")
