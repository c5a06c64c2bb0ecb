"""`fglens sweep` (the arguments given) in which one rank exits (``os._exit(1)``) in the middle of the k-th run it
samples, once a step of that run is in the store: the fault the torchrun resume test injects (tests/test_sweep.py).

Environment: ``KILL_AFTER`` = k (1-based, counting the runs the rank samples, not those it skips), ``KILL_RANK``
= the rank that dies (every other rank runs normally). Run it as torchrun's script.
"""

from __future__ import annotations

import os
import sys
import time

import fglens.pipelines as pipelines
import fglens.sweep as sweep
from fglens.cli import main
from fglens.store import run_info


def _killer(store, run_id: str):
    """A step-end callback that ends the process at once when a step of the run is committed to the store."""

    def callback(pipe, i, t, tensors):
        if i >= 1:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (run_info(store, run_id) or {}).get("steps_written", 0) < 1:
                time.sleep(0.01)
            os._exit(1)
        return tensors

    return callback


def _install(kill_after: int) -> None:
    armed: dict = {"n": 0, "target": None}
    run_line, call_kwargs = sweep._run_line, pipelines.call_kwargs

    def counting_run_line(line, pipe, store, run_id, *args, **kwargs):
        armed["n"] += 1
        armed["target"] = (store, run_id) if armed["n"] == kill_after else None
        try:
            return run_line(line, pipe, store, run_id, *args, **kwargs)
        finally:
            armed["target"] = None

    def arming_call_kwargs(*args, **kwargs):
        out = call_kwargs(*args, **kwargs)
        if armed["target"] is not None:
            out["callback_on_step_end"] = _killer(*armed["target"])
        return out

    sweep._run_line, pipelines.call_kwargs = counting_run_line, arming_call_kwargs


if __name__ == "__main__":
    if int(os.environ.get("RANK", "0")) == int(os.environ["KILL_RANK"]):
        _install(int(os.environ["KILL_AFTER"]))
    sys.exit(main(sys.argv[1:]))
