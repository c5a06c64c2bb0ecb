"""Real setups on a CUDA GPU (issue 17, docs/compatibility.md): attention backends and offloading under fg.trace.

Skipped without CUDA (the CI machine has none); run on a GPU with ``pytest tests/test_cuda_compat.py``. Each setup is
compared with the same tiny Wan I2V pipeline sampled on the GPU with no such setup: recording never changes the
frames, and the recorded statistics and edited frames are equal (offloading) or follow the backend's own numbers.
"""

from __future__ import annotations

import pytest
import torch

import fglens as fg
from fglens import testing

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (docs/compatibility.md)")


def _call(pipe):
    return pipe(**testing.tiny_call_kwargs("wan", steps=2)).frames.float().cpu()


def _edit():
    anchor = fg.AnchorMask.from_mask(torch.ones(2, 3), "dog", strength=2.0)
    cache = fg.CacheTransfer(src=["blocks.3"], dst=["blocks.1", "blocks.2"], alpha=0.5)
    return fg.FocalGuidance(anchor=anchor, cache=cache, layers=["blocks.1", "blocks.2"], steps=None,
                            branches=("cond", "uncond"))


def _traced(pipe, edit=None):
    with fg.trace(pipe, record=fg.Record(words=["dog", "fence"], maps=True), edit=edit) as run:
        frames = _call(pipe)
    return frames, run.dataset


def _max_diff(a, b) -> float:
    return max(float(abs(v.astype("float64") - b[name].astype("float64")).max(skipna=True))
               for name, v in a.data_vars.items() if v.dtype.kind == "f" and v.size)


def _processors(pipe) -> list[str]:
    return [type(m.processor).__name__ for m in pipe.transformer.modules() if hasattr(m, "processor")]


@pytest.fixture(scope="module")
def on_gpu():
    pipe = testing.tiny_wan_i2v_pipeline().to("cuda")
    plain = _call(pipe)
    frames, ds = _traced(pipe)
    edited, eds = _traced(pipe, _edit())
    return {"plain": plain, "frames": frames, "ds": ds, "edited": edited, "eds": eds, "procs": _processors(pipe)}


OFFLOAD = {
    "model_cpu_offload": lambda p: p.enable_model_cpu_offload(),
    "sequential_cpu_offload": lambda p: p.enable_sequential_cpu_offload(),
    "group_block": lambda p: p.to("cuda").transformer.enable_group_offload(
        "cuda", offload_type="block_level", num_blocks_per_group=1),
    "group_block_stream": lambda p: p.to("cuda").transformer.enable_group_offload(
        "cuda", offload_type="block_level", num_blocks_per_group=1, use_stream=True),
    "group_leaf": lambda p: p.to("cuda").transformer.enable_group_offload("cuda", offload_type="leaf_level"),
    "group_leaf_stream": lambda p: p.to("cuda").transformer.enable_group_offload(
        "cuda", offload_type="leaf_level", use_stream=True),
}


@pytest.mark.parametrize("setup", list(OFFLOAD))
def test_offloading_records_and_edits_as_on_the_gpu(on_gpu, setup):
    pipe = testing.tiny_wan_i2v_pipeline()
    OFFLOAD[setup](pipe)
    plain = _call(pipe)
    frames, ds = _traced(pipe)
    edited, eds = _traced(pipe, _edit())
    assert torch.equal(plain, on_gpu["plain"]) and torch.equal(frames, plain)
    assert _max_diff(ds, on_gpu["ds"]) == 0.0
    assert torch.equal(edited, on_gpu["edited"]) and _max_diff(eds, on_gpu["eds"]) == 0.0
    assert _processors(pipe) == on_gpu["procs"]  # fglens' processors are gone, the offloading hooks stay


BACKENDS = ["native", "_native_math", "_native_efficient", "_native_flash", "_native_cudnn", "flex"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_backends_keep_frames_and_record_the_backends_own_numbers(backend):
    pipe = testing.tiny_wan_i2v_pipeline()
    pipe.transformer = testing.tiny_wan_transformer(head_dim=64)  # the flash kernels take head dims of 64/128
    pipe.to("cuda", torch.bfloat16)
    reference = _traced(pipe)  # native
    pipe.transformer.set_attention_backend(backend)
    try:
        plain = _call(pipe)
        frames, ds = _traced(pipe)
        edited, _ = _traced(pipe, _edit())
    finally:
        pipe.transformer.set_attention_backend("native")
    assert torch.equal(frames, plain)  # recording never changes the frames
    # a backend's own rounding moves the next layers' q/k: bf16-sized, never more (measured up to 0.03, 0.08)
    assert _max_diff(ds, reference[1]) < 0.1
    assert float((plain - reference[0]).abs().max()) < 0.2
    assert float((edited - plain).abs().max()) > 0  # the edit acts on every backend
