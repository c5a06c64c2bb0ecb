"""Tracing adds no host synchronisation inside transformer forwards.

On the CPU a device-to-host copy cannot be told from a plain copy, but every scalar read (`.item()`,
`float(t)`, `bool(t)`, `int(t)`) goes through `aten._local_scalar_dense`. We count those while the
transformer runs, untraced and traced: fglens must add none.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fglens as fg
from fglens.trace.record import STATS


class ScalarReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.inside = 0
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.inside and func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def _count(pipe, image, traced: bool) -> int:
    mode = ScalarReads()

    def enter(*_):
        mode.inside += 1

    def leave(*_):
        mode.inside -= 1

    handles = [pipe.transformer.register_forward_pre_hook(enter), pipe.transformer.register_forward_hook(leave)]
    try:
        with mode:
            kwargs = dict(image=image, prompt="a dog jumps over a fence", height=32, width=48, num_frames=5,
                          num_inference_steps=2, output_type="latent")
            if traced:
                record = fg.Record(words=["dog"], stats=list(STATS), maps=True, branches=("cond", "uncond"))
                with fg.trace(pipe, record=record):
                    pipe(**kwargs)
            else:
                pipe(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return mode.reads


def test_tracing_adds_no_scalar_reads_inside_forwards(wan_i2v, ref_image):
    plain = _count(wan_i2v, ref_image, traced=False)
    traced = _count(wan_i2v, ref_image, traced=True)
    assert traced == plain, f"fglens added {traced - plain} host scalar reads inside transformer forwards"


def test_the_counter_sees_a_scalar_read(wan_i2v, ref_image):
    # positive control: a hook that reads a scalar is counted
    h = wan_i2v.transformer.blocks[0].register_forward_hook(lambda m, a, out: None if float(out.sum()) else None)
    try:
        assert _count(wan_i2v, ref_image, traced=False) >= 4  # 2 steps x 2 branches
    finally:
        h.remove()
