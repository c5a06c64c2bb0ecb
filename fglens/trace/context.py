"""The values the tracer hands to recorders (and, later, interventions): one forward, one attention call."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..adapters.base import Site

BRANCHES = ("cond", "uncond")


@dataclass
class ForwardContext:
    """Where the sampler is when the transformer runs.

    Attributes:
        step: index of the denoising step (0-based), read from the pipeline's scheduler.
        num_steps: length of the schedule, or None for a bare transformer.
        timestep: the step's timestep per batch item, a device tensor (never read on the host by hooks).
        branches: the CFG branch of each batch item, e.g. ``("cond",)`` or ``("uncond", "cond")``.
        grid: latent grid (frames, y, x) of the video tokens.
        prefix: which transformer of the pipeline runs ("" or "transformer_2.").
        text_lengths: real text length per batch item, when read from the inputs (bare transformers).
    """

    step: int
    num_steps: int | None
    timestep: torch.Tensor
    branches: tuple[str, ...]
    grid: tuple[int, int, int]
    prefix: str = ""
    text_lengths: list[int] | None = None

    @property
    def n_tokens(self) -> int:
        f, y, x = self.grid
        return f * y * x


@dataclass
class AttentionCall:
    """One call of the attention kernel at a site, as the model makes it (layout ``[B, S, H, D]``).

    `output` is set once the kernel has run; it is the per-call output before `to_out`.
    """

    site: Site
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    forward: ForwardContext
    output: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)
