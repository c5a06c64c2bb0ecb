"""What the benchmark measures a forward with: FLOPs (`torch.utils.flop_counter`, with the CPU attention kernel
counted) and the peak of live tensor bytes (`LiveBytesMeter`), the same meters for every mode."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


# -- FLOPs ------------------------------------------------------------------------------------------------------
def ensure_cpu_attention_flops() -> None:
    """Count the CPU attention kernel in `FlopCounterMode` (torch has no formula for it; idempotent).

    On the CPU, ``F.scaled_dot_product_attention`` dispatches to
    ``aten._scaled_dot_product_flash_attention_for_cpu``, which `FlopCounterMode` reports as 0 FLOPs. This
    registers the same formula as for the CUDA flash kernel: 2·B·H·Sq·Sk·D for Q·Kᵀ plus 2·B·H·Sq·Sk·Dv
    for P·V.
    """
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_flop_count

    aten = torch.ops.aten
    targets = [
        getattr(aten, name)
        for name in ("_scaled_dot_product_flash_attention_for_cpu",)
        if hasattr(aten, name) and getattr(aten, name) not in flop_registry
    ]
    if not targets:
        return

    def cpu_sdpa_flop(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    register_flop_formula(targets)(cpu_sdpa_flop)


# -- memory ----------------------------------------------------------------------------------------------
def storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensors without storage
        return None
    nbytes = storage.nbytes()
    return (storage.data_ptr(), nbytes) if nbytes else None


class LiveBytesMeter(TorchDispatchMode):
    """Peak of the bytes of tensor storages created while the mode is active and still alive.

    Every op's outputs are inspected: a storage that is none of the op's inputs' storages and not already
    tracked is new (views, in-place ops and ``out=`` variants allocate nothing); its bytes count until its
    storage is freed (``weakref.finalize`` on the storage). Tensors that existed before (parameters,
    buffers, inputs, caches) are never counted. Allocations inside a kernel that never surface as a
    tensor (a fused kernel's scratch space) are invisible, the same way in every mode.

    Example:
        >>> with LiveBytesMeter() as meter:
        ...     x = torch.ones(1000)  # 4000 bytes
        ...     y = x * 2              # 4000 more while both are alive
        >>> meter.peak
        8000
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}
        self._finalizers: list[weakref.finalize] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            key[0] for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
            if (key := storage_key(t)) is not None
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        key = storage_key(t)
        if key is None:
            return
        ptr, nbytes = key
        if ptr in inputs or ptr in self._live:
            return
        self._live[ptr] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        self._finalizers.append(weakref.finalize(t.untyped_storage(), self._free, ptr))

    def _free(self, ptr: int) -> None:
        self.current -= self._live.pop(ptr, 0)

    def __exit__(self, exc_type, exc, tb):
        try:
            return super().__exit__(exc_type, exc, tb)
        finally:
            for fin in self._finalizers:
                fin.detach()
            self._finalizers.clear()

