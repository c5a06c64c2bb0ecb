"""One rank of `tests/test_parallel.py` (run under torchrun, gloo, on the CPU): diffusers' context parallelism on the
tiny Wan I2V transformer, and what fg.trace does with it. Prints one ``RESULT {json}`` line per rank."""

import json
import os

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig

import fglens as fg

dist.init_process_group("gloo")
# diffusers 0.42.1's enable_parallelism places each rank on device `rank % torch.accelerator.device_count()`, which is
# 0 on a machine without an accelerator (ZeroDivisionError); one "device" is what a CPU process has
torch.accelerator.device_count = lambda: 1
rank = dist.get_rank()


def call(pipe):
    return pipe(**fg.testing.tiny_call_kwargs("wan", steps=2), guidance_scale=3.0).frames


result = {"rank": rank}
single = call(fg.testing.tiny_wan_i2v_pipeline())
CONFIGS = {"ulysses": ContextParallelConfig(ulysses_degree=2), "ring": ContextParallelConfig(ring_degree=2)}
for mode, config in CONFIGS.items():
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    pipe.transformer.enable_parallelism(config=config)
    processors = [type(m.processor).__name__ for m in pipe.transformer.modules() if hasattr(m, "processor")]
    try:
        frames = call(pipe)
        result[f"{mode}_frames_vs_one_process"] = float((frames - single).abs().max())
    except Exception as error:  # noqa: BLE001 - what diffusers itself does on this machine, reported
        result[f"{mode}_sampling_error"] = f"{type(error).__name__}: {error}"
    try:
        with fg.trace(pipe, record=fg.Record(words=["dog"])):
            call(pipe)
        result[f"{mode}_trace"] = "traced"
    except ValueError as error:
        result[f"{mode}_trace"] = str(error)
    after = [type(m.processor).__name__ for m in pipe.transformer.modules() if hasattr(m, "processor")]
    result[f"{mode}_processors_kept"] = after == processors
try:  # tensor parallelism: each rank holds a share of the heads
    from diffusers import TensorParallelConfig

    pipe = fg.testing.tiny_wan_i2v_pipeline()
    pipe.transformer.enable_parallelism(config=TensorParallelConfig(tp_degree=2))
    result["tensor_frames_vs_one_process"] = float((call(pipe) - single).abs().max())
    try:
        with fg.trace(pipe, record=fg.Record(words=["dog"])):
            call(pipe)
        result["tensor_trace"] = "traced"
    except ValueError as error:
        result["tensor_trace"] = str(error)
except Exception as error:  # noqa: BLE001 - what diffusers itself does on this machine, reported
    result["tensor_error"] = f"{type(error).__name__}: {error}"
print("RESULT " + json.dumps(result), flush=True)
dist.destroy_process_group()
os._exit(0)
