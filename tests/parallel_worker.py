"""One rank of `tests/test_parallel.py` (run under torchrun, gloo, on the CPU): diffusers' context parallelism on the
tiny Wan I2V transformer, and what fg.trace does with it. Prints one ``RESULT {json}`` line per rank."""

import json
import os

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig

import fglens as fg


def call(pipe):
    return pipe(**fg.testing.tiny_call_kwargs("wan", steps=2), guidance_scale=3.0).frames


def traced(pipe) -> str:
    """"traced", or fg.trace's refusal."""
    try:
        with fg.trace(pipe, record=fg.Record(words=["dog"])):
            call(pipe)
        return "traced"
    except ValueError as error:
        return str(error)


def processors(pipe) -> list[str]:
    return [type(m.processor).__name__ for m in pipe.transformer.modules() if hasattr(m, "processor")]


def main() -> None:
    dist.init_process_group("gloo")
    # diffusers 0.42.1's enable_parallelism places each rank on device `rank % torch.accelerator.device_count()`,
    # which is 0 on a machine without an accelerator (ZeroDivisionError); one "device" is what a CPU process has
    torch.accelerator.device_count = lambda: 1
    result = {"rank": dist.get_rank()}
    single = call(fg.testing.tiny_wan_i2v_pipeline())
    configs = {"ulysses": ContextParallelConfig(ulysses_degree=2), "ring": ContextParallelConfig(ring_degree=2)}
    for mode, config in configs.items():
        pipe = fg.testing.tiny_wan_i2v_pipeline()
        pipe.transformer.enable_parallelism(config=config)
        before = processors(pipe)
        try:
            result[f"{mode}_frames_vs_one_process"] = float((call(pipe) - single).abs().max())
        except Exception as error:  # noqa: BLE001 - what diffusers itself does on this machine, reported
            result[f"{mode}_sampling_error"] = f"{type(error).__name__}: {error}"
        result[f"{mode}_trace"] = traced(pipe)
        result[f"{mode}_processors_kept"] = processors(pipe) == before
    try:  # tensor parallelism: each rank holds a share of the heads
        from diffusers import TensorParallelConfig

        pipe = fg.testing.tiny_wan_i2v_pipeline()
        pipe.transformer.enable_parallelism(config=TensorParallelConfig(tp_degree=2))
        result["tensor_frames_vs_one_process"] = float((call(pipe) - single).abs().max())
        result["tensor_trace"] = traced(pipe)
    except Exception as error:  # noqa: BLE001 - what diffusers itself does on this machine, reported
        result["tensor_error"] = f"{type(error).__name__}: {error}"
    print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":  # never on import: pytest --doctest-modules collects this file
    main()
