"""Reading a transformer's forward call, shared by the adapters: an argument by keyword or position, the latent
grid of a patch-embedded video latent, the step's timestep, and the grid of tokens packed from stated sizes.

Example:
    >>> import torch
    >>> latent_grid(torch.zeros(1, 16, 3, 8, 10), 1, 2, 2)
    (3, 4, 5)
    >>> step_timestep(torch.tensor([[0.0, 900.0, 900.0]])).tolist()
    [900.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def forward_arg(args: Sequence[Any], kwargs: dict[str, Any], name: str, position: int, default: Any = None) -> Any:
    """The forward's argument `name`, passed by keyword or at `position` (`default` when it is neither)."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def latent_grid(hidden: torch.Tensor, p_t: int, p_h: int, p_w: int) -> tuple[int, int, int]:
    """(frames, y, x) of the tokens a patch embedding of (p_t, p_h, p_w) makes of a [B, C, F, H, W] latent."""
    _, _, f, h, w = hidden.shape
    return f // p_t, h // p_h, w // p_w


def step_timestep(t: torch.Tensor) -> torch.Tensor:
    """The step's timestep per batch item: a per-token one ([B, N], 0 on a reference frame) read as its maximum."""
    return t.reshape(t.shape[0], -1).amax(dim=1) if t.ndim > 1 else t


def sized_grid(sizes: Sequence[Any], p_t: int, p: int, n_tokens: int, model: str) -> tuple[int, int, int]:
    """The grid of tokens packed from a latent of the stated (num_frames, height, width), checked against the
    `n_tokens` the forward holds (a `ValueError` naming `model` when they differ: tokens appended after the grid)."""
    grid = (int(sizes[0]) // p_t, int(sizes[1]) // p, int(sizes[2]) // p)
    if grid[0] * grid[1] * grid[2] != n_tokens:
        raise ValueError(f"{model}: num_frames, height, width give a {grid} grid of {grid[0] * grid[1] * grid[2]} "
                         f"tokens, but hidden_states holds {n_tokens} (tokens appended after the grid?)")
    return grid
