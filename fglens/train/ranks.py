"""A training job on several processes: which examples of a step each rank takes, and the summed gradients.

Under ``torchrun`` / ``accelerate launch`` (``RANK``, ``WORLD_SIZE``; `fglens.sweep.rank_info`) each step's global
batch of examples is drawn the same way on every rank; rank r computes examples r, r + K, ... of it, and the
gradients are summed over ranks (``all_reduce``) before every rank takes the same optimiser step, so K processes
train the adapter one process would with the same global batch (up to the order of float sums). The process group
is torch.distributed's (gloo on the CPU, nccl on CUDA), created here when the launcher has not.

Example:
    >>> ranks = Ranks()            # one process
    >>> ranks.world, ranks.share(3), ranks.is_main
    (1, [0, 1, 2], True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Ranks:
    """This process's place among the job's processes."""

    def __init__(self, device: torch.device | None = None):
        from ..sweep import rank_info

        self.rank, self.world, self.local = rank_info()
        self.group = None
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
                dist.init_process_group(backend)
            self.group = dist.group.WORLD

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batch: int) -> list[int]:
        """The examples (indices into the step's global batch) this rank computes."""
        return list(range(self.rank, batch, self.world))

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum `tensors` over the ranks, in place (nothing on one process)."""
        if self.world > 1:
            import torch.distributed as dist

            flat = torch.cat([t.reshape(-1) for t in tensors])
            dist.all_reduce(flat)
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


__all__ = ["Ranks"]
