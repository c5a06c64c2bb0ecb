"""diffusers' context parallelism (one video over K processes) under fg.trace, on the CPU with torchrun and gloo
(issue 17, docs/compatibility.md). fglens refuses a transformer split over processes at `fg.trace(...)` entry, before
any hook, with a sentence saying what to do; the run below checks that on a real 2-process Ulysses setup (the
variant diffusers runs on the CPU), and records what diffusers itself does with ring attention there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    worker = str(Path(__file__).with_name("parallel_worker.py"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker]
    done = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path_factory.mktemp("cp"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert sorted(r["rank"] for r in results) == [0, 1]
    return results


def test_ulysses_runs_on_cpu_and_fg_trace_refuses_it_before_any_hook(ranks):
    for r in ranks:
        assert r["ulysses_frames_vs_one_process"] < 1e-4  # diffusers' Ulysses on gloo: the one-process video
        refusal = r["ulysses_trace"]
        assert "context parallelism" in refusal and "Trace the same call on one process" in refusal
        assert r["ulysses_processors_kept"]


def test_ring_attention_is_refused_by_diffusers_itself_on_cpu_and_by_fg_trace(ranks):
    for r in ranks:
        # the native (SDPA) backend, the one that runs on a CPU, returns no log-sum-exp, which ring attention needs
        assert "return_lse" in r["ring_sampling_error"]
        assert "context parallelism" in r["ring_trace"]
        assert r["ring_processors_kept"]


def test_tensor_parallelism_is_not_offered_by_diffusers_for_wan(ranks):
    # fg.trace would refuse it too (fglens.trace.refuse); diffusers has no tensor-parallel plan for Wan
    for r in ranks:
        assert "_tp_plan" in r["tensor_error"]
