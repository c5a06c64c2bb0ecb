"""Pure tensor functions for the statistics of docs/concepts.md: no hooks, no I/O, no host synchronisation.

Shapes use B (batch), n (query tokens of a chunk), N (all video tokens), H (heads), D (head dim),
T (key columns), W (words), F (latent frames), Y x X (latent grid of a frame).

Example:
    >>> import torch
    >>> from fglens import stats
    >>> stats.morans_i(torch.tensor([[0., 1.], [1., 0.]]))   # a 2x2 checkerboard
    tensor(-1., dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rook_kernel(like: torch.Tensor) -> torch.Tensor:
    """The 3x3 rook kernel, made on the device (a host constant would cost a host-to-device copy per call)."""
    kernel = like.new_zeros((1, 1, 3, 3))
    kernel[..., 0, 1] = kernel[..., 1, 0] = kernel[..., 1, 2] = kernel[..., 2, 1] = 1.0
    return kernel


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float64 where the device has it (statistics are small; their divisions deserve the precision)."""
    return x.to(torch.float32 if x.device.type == "mps" else torch.float64)


def word_maps(probs: torch.Tensor, word_index: torch.Tensor) -> torch.Tensor:
    """Attention mass per word: ``probs [..., T] @ word_index [T, W] -> [..., W]``.

    `word_index[j, w]` is 1 where key column j belongs to word w. With head-mean probabilities this is
    the word attention map m_w[n] of docs/concepts.md.
    """
    return probs @ word_index.to(probs.dtype)


def normalized_entropy(probs: torch.Tensor, multiplicity: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Entropy of `probs [..., T]` divided by log(n_keys).

    Column j stands for `multiplicity[j]` identical keys that share its mass equally (collapsed padding),
    so its contribution is -p log(p / m). A distribution over one key has entropy 0.
    """
    p = probs.to(torch.float32)
    h = -(torch.special.xlogy(p, p) - p * torch.log(multiplicity.to(p))).sum(-1)
    return h / math.log(n_keys) if n_keys > 1 else torch.zeros_like(h)


def cosine_similarity(queries: torch.Tensor, mean_keys: torch.Tensor) -> torch.Tensor:
    """Text-visual similarity S_w[n] = cos(q[n], k̄_w): ``[B, n, C], [B, W, C] -> [B, n, W]``."""
    q = F.normalize(queries.to(torch.float32), dim=-1)
    k = F.normalize(mean_keys.to(torch.float32), dim=-1)
    return q @ k.transpose(-1, -2)


def cosine_from_dots(
    dot_sums: torch.Tensor, word_index: torch.Tensor, queries: torch.Tensor, mean_keys: torch.Tensor
) -> torch.Tensor:
    """`cosine_similarity` from the dot products already computed for the attention: ``dot_sums [B, n, T]`` of
    each query with each key token (summed over heads), `word_index [T, W]`, ``queries [B, n, C]``, ``mean_keys
    [B, W, C]``: cos(q, k̄_w) = (Σ_{t∈w} q·k_t / |w|) / (‖q‖ ‖k̄_w‖), each norm at least 1e-12 as in
    `torch.nn.functional.normalize`.

    Example:
        >>> q, k = torch.randn(1, 4, 6), torch.randn(1, 3, 6)
        >>> idx = torch.tensor([[1.0], [1.0], [0.0]])
        >>> ref = cosine_similarity(q, (idx.T @ k[0] / 2)[None])
        >>> bool(torch.allclose(cosine_from_dots(q @ k.transpose(1, 2), idx, q, (idx.T @ k[0] / 2)[None]), ref))
        True
    """
    idx = word_index.to(torch.float32)
    num = dot_sums.to(torch.float32) @ (idx / idx.sum(0).clamp_min(1))
    qn = torch.linalg.vector_norm(queries, dim=-1, dtype=torch.float32).clamp_min(1e-12)
    kn = torch.linalg.vector_norm(mean_keys.to(torch.float32), dim=-1).clamp_min(1e-12)
    return num / (qn[..., None] * kn[:, None, :])


def text_share(out_text: torch.Tensor, out_image: torch.Tensor) -> torch.Tensor:
    """‖O_text‖ / (‖O_text‖ + ‖O_image‖) per token: ``[B, n, C] x 2 -> [B, n]``; NaN where both are 0."""
    a = torch.linalg.vector_norm(out_text.to(torch.float32), dim=-1)
    b = torch.linalg.vector_norm(out_image.to(torch.float32), dim=-1)
    return a / (a + b)


def frame_mean(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Mean over the tokens of each latent frame: ``[..., N] -> [..., F]`` (tokens are frame-major)."""
    return x.unflatten(-1, (frames, -1)).mean(-1)


def morans_i(maps: torch.Tensor) -> torch.Tensor:
    """Moran's I of each map ``[..., Y, X] -> [...]`` with binary rook (4-neighbour) weights.

    I = (N / S0) Σ_ij w_ij z_i z_j / Σ_i z_i², z = m - mean(m), S0 = Σ_ij w_ij. One conv2d computes all
    maps at once. A constant map (all values equal) and a 1x1 grid give NaN, never a silent 0.
    Computed in float64 whatever the input dtype.
    """
    *lead, ny, nx = maps.shape
    m = _wide(maps).reshape(-1, 1, ny, nx)
    z = m - m.mean(dim=(-1, -2), keepdim=True)
    neighbours = F.conv2d(z, _rook_kernel(z), padding=1)
    num = (z * neighbours).sum(dim=(-1, -2, -3))
    den = (z * z).sum(dim=(-1, -2, -3))
    s0 = 2 * (ny * (nx - 1) + nx * (ny - 1))
    # constant means all values equal in the input's own dtype: exact for any dtype, integers included
    constant = (maps.amax(dim=(-1, -2)) == maps.amin(dim=(-1, -2))).reshape(-1)
    nan = torch.full_like(num, float("nan"))
    out = torch.where(constant | (s0 == 0), nan, (ny * nx / max(s0, 1)) * num / den.clamp_min(1e-300))
    return out.reshape(lead)


def reduce_frames(how: str, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Reduce a per-token quantity ``[..., N]`` (tokens frame-major on `grid` = (frames, y, x)) per latent frame, as
    a statistic of `fglens.stats.table` says: ``frame_mean`` and ``morans_i`` give ``[..., F]`` (Moran's I in
    float32), ``map`` keeps the tokens as ``[..., F, Y, X]``.

    Example:
        >>> reduce_frames("frame_mean", torch.arange(8.).reshape(1, 8), (2, 2, 2))
        tensor([[1.5000, 5.5000]])
    """
    if how == "frame_mean":
        return frame_mean(x, grid[0])
    if how == "morans_i":
        return morans_i(x.unflatten(-1, tuple(grid))).to(torch.float32)
    if how == "map":
        return x.unflatten(-1, tuple(grid))
    raise ValueError(f"unknown reduction {how!r}; known: frame_mean, morans_i, map")


__all__ = ["cosine_from_dots", "cosine_similarity", "frame_mean", "morans_i", "normalized_entropy", "reduce_frames",
           "text_share", "word_maps"]
