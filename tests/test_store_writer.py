"""The background writer: bounded memory under a slow disk (back-pressure), every step landing, errors raised once."""

from __future__ import annotations

import errno
import threading
import time
import tracemalloc
import weakref

import numpy as np
import pytest
import torch

from fglens.store import RunWriter

GRID = (4, 64, 64)
LAYERS = ["blocks.0", "blocks.1"]
WORDS = ["dog", "fence"]


class SlowDisk:
    """A sink that needs `delay` seconds per step and keeps only a summary of each step it receives."""

    def __init__(self, delay: float, fail_at: int | None = None):
        self.delay, self.fail_at = delay, fail_at
        self.landed: list[tuple[int, float, float, bool]] = []
        self.final: dict | None = None

    def create(self, template) -> None:
        self.template = template

    def append(self, ds) -> None:
        time.sleep(self.delay)
        step = int(ds.step.values[0])
        if step == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        values = ds.word_map.values
        self.landed.append((step, float(values.flat[0]), float(ds.timestep.values[0]),
                            bool((values == values.flat[0]).all())))

    def update_attrs(self, attrs) -> None:
        self.final = dict(attrs)

    def __str__(self) -> str:
        return "the slow test disk"


class Live:
    """How many payloads exist right now (created and not yet freed), and the most that ever did."""

    def __init__(self):
        self.now = self.most = 0
        self._lock = threading.Lock()

    def track(self, obj) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        weakref.finalize(obj, self._free)

    def _free(self) -> None:
        with self._lock:
            self.now -= 1


def produce(max_pending: int, steps: int = 40, delay: float = 0.02):
    """A producer far faster than the disk; returns the sink, the live-payload count, traced peak and bytes per put."""
    sink = SlowDisk(delay)
    writer = RunWriter(sink, variables=["word_map"], branches=["cond"], layers=LAYERS, words=WORDS, grid=GRID,
                       attrs={}, max_pending=max_pending)
    shape = writer._shape("word_map")[2:]
    payload = int(np.prod(shape)) * 4
    live = Live()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    started = time.perf_counter()
    for step in range(steps):
        tensor = torch.from_numpy(np.full(shape, float(step), dtype=np.float32))  # numpy memory: traced
        live.track(tensor)
        writer.put(step, {"cond": 1000.0 - step}, {"cond": {"word_map": tensor}})
        del tensor
    putting = time.perf_counter() - started
    writer.close({"complete": True, "num_steps": steps})
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return sink, live, peak, payload, putting


def test_slow_disk_keeps_memory_bounded_and_every_step_lands():
    steps, delay, max_pending = 40, 0.02, 3
    sink, live, peak, payload, putting = produce(max_pending, steps, delay)
    # at most: the queue, the one forward the writer thread holds, the one being handed over
    assert live.most <= max_pending + 2, live.most
    assert peak < (max_pending + 7) * payload, (peak, payload)  # + the writer's step buffers
    # put blocked: the producer could not finish before the disk had taken all but the queued steps
    assert putting >= (steps - max_pending - 2) * delay
    assert [s for s, *_ in sink.landed] == list(range(steps))
    assert all(value == step and t == 1000.0 - step and uniform for step, value, t, uniform in sink.landed)
    assert sink.final["steps_written"] == steps and sink.final["complete"] is True


def test_without_back_pressure_the_same_measure_grows_with_the_run():
    """Positive control: an (effectively) unbounded queue lets payloads pile up, and the measures show it."""
    steps = 40
    sink, live, peak, payload, _ = produce(max_pending=10_000, steps=steps)
    assert live.most >= steps // 2
    assert peak > 15 * payload
    assert [s for s, *_ in sink.landed] == list(range(steps))


def test_write_error_is_raised_once_and_the_run_is_left_incomplete():
    sink = SlowDisk(0.0, fail_at=2)
    writer = RunWriter(sink, variables=["word_map"], branches=["cond"], layers=LAYERS, words=WORDS, grid=GRID,
                       attrs={}, max_pending=2)
    shape = writer._shape("word_map")[2:]
    raised = []
    for step in range(6):
        try:
            writer.put(step, {"cond": 1.0}, {"cond": {"word_map": torch.full(shape, float(step))}})
        except RuntimeError as exc:
            raised.append(exc)
        time.sleep(0.01)
    writer.close({"complete": True})  # already reported: not raised again
    assert len(raised) == 1 and isinstance(raised[0].__cause__, OSError)
    assert "could not write the slow test disk" in str(raised[0]) and "2 step(s) written" in str(raised[0])
    assert sink.final["complete"] is False and sink.final["steps_written"] == 2
    assert [s for s, *_ in sink.landed] == [0, 1]


def test_error_at_the_last_step_is_raised_by_close():
    sink = SlowDisk(0.0, fail_at=1)
    writer = RunWriter(sink, variables=["word_map"], branches=["cond"], layers=LAYERS, words=WORDS, grid=GRID,
                       attrs={})
    shape = writer._shape("word_map")[2:]
    for step in range(2):
        writer.put(step, {"cond": 1.0}, {"cond": {"word_map": torch.zeros(shape)}})
    with pytest.raises(RuntimeError, match="No space left on device.*1 step"):
        writer.close({"complete": True})
    assert sink.final["complete"] is False


def test_max_pending_must_be_positive():
    with pytest.raises(ValueError, match="max_pending must be a positive int"):
        RunWriter(SlowDisk(0.0), variables=["entropy"], branches=["cond"], layers=LAYERS, words=[], grid=GRID,
                  attrs={}, max_pending=0)
