"""Exact attention probabilities for a subset of keys, in chunks of whole frames, never as an N x N map.

The fused kernel keeps the model's output path; these helpers recompute only the probabilities the
recorders need, with a float32 softmax, one chunk of query frames at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def frame_chunks(grid: tuple[int, int, int], frames_per_chunk: int) -> Iterator[tuple[int, int]]:
    """Token ranges ``(start, stop)`` covering `frames_per_chunk` whole latent frames each."""
    frames, ny, nx = grid
    per_frame = ny * nx
    for f0 in range(0, frames, frames_per_chunk):
        yield f0 * per_frame, min(frames, f0 + frames_per_chunk) * per_frame


def collapse_padding(key: torch.Tensor, n_real: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Collapse identical trailing pad keys into one column, exactly.

    Wan pads every prompt to 512 tokens with zero embeddings, which become identical keys. For keys
    ``[B, T, H, D]`` whose columns from `n_real` on are identical, returns ``keys [B, n_real + 1, H, D]``
    and ``multiplicity [n_real + 1]`` (1 for real columns, T - n_real for the pad column). A softmax over
    the collapsed keys with ``log(multiplicity)`` added to the logits gives, in the pad column, exactly
    the total mass of the pad keys. With no padding the keys are returned unchanged.
    """
    total = key.shape[1]
    if n_real >= total - 1:
        return key, torch.ones(total, device=key.device)
    return key[:, : n_real + 1], pad_multiplicity(n_real, total, key.device)


def pad_multiplicity(n_real: int, total: int, device: torch.device | None = None) -> torch.Tensor:
    """``[n_real + 1]``: 1 for each real key column, ``total - n_real`` for the one column standing for the pads."""
    mult = torch.ones(n_real + 1, device=device)
    mult[-1:].fill_(total - n_real)  # a fill, not an indexed store: that copies a host scalar (a sync on CUDA)
    return mult


def padding_is_uniform(key: torch.Tensor, n_real: int) -> torch.Tensor:
    """A device bool: are all keys from `n_real` on identical (so `collapse_padding` is exact)?"""
    if n_real >= key.shape[1] - 1:
        return torch.ones((), dtype=torch.bool, device=key.device)
    return (key[:, n_real:] == key[:, n_real : n_real + 1]).all()


_OUT_DTYPE_BMM: bool | None = None  # does this torch's CUDA `bmm` take ``out_dtype=`` (half inputs, float32 out)?


def qk_dots(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Unscaled float32 dot products ``[B, H, n, T]`` of queries ``[B, n, H, D]`` and keys ``[B, T, H, D]``.

    Every product is exact and every sum is accumulated in float32: on CUDA with bfloat16/float16 inputs by one
    tensor-core GEMM with a float32 output (a product of two half-precision numbers is exact in float32), with no
    float32 copy of the queries; otherwise by a float32 einsum of the upcast inputs (the same numbers, summed in
    another order).

    Example:
        >>> q, k = torch.randn(1, 5, 2, 4), torch.randn(1, 3, 2, 4)
        >>> qk_dots(q, k).shape
        torch.Size([1, 2, 5, 3])
    """
    global _OUT_DTYPE_BMM
    differentiable = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad)
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and key.dtype == query.dtype \
            and _OUT_DTYPE_BMM is not False and not differentiable:  # (training: the einsum, which autograd takes)
        b, n, h, d = query.shape
        q = query.permute(0, 2, 1, 3).reshape(b * h, n, d)
        k = key.permute(0, 2, 3, 1).reshape(b * h, d, key.shape[1])
        try:
            out = torch.bmm(q, k, out_dtype=torch.float32)
            _OUT_DTYPE_BMM = True
            return out.unflatten(0, (b, h))
        except (TypeError, RuntimeError):  # an older torch: no half-in, float32-out GEMM
            _OUT_DTYPE_BMM = False
    return torch.einsum("bnhd,bthd->bhnt", query.to(torch.float32), key.to(torch.float32))


def chunk_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    multiplicity: torch.Tensor | None = None,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax probabilities ``[B, H, n, T]`` (float32) for queries ``[B, n, H, D]`` and keys ``[B, T, H, D]``,
    with an optional additive logit bias ``[B, H, n, T]`` (an intervention's)."""
    return probs_from_dots(qk_dots(query, key), default_scale(query, scale), multiplicity, bias)


def default_scale(query: torch.Tensor, scale: float | None) -> float:
    """The softmax scale of a call: `scale`, or 1/sqrt(head dim) of ``query [..., D]`` when None (SDPA's default)."""
    return 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale


def probs_from_dots(
    dots: torch.Tensor, scale: float, multiplicity: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`chunk_probs` from the unscaled dot products `dots` ``[B, H, n, T]`` (`qk_dots`); `dots` is left as is."""
    # one pass: log(multiplicity) + scale * dots, a new tensor (the in-place addition below touches no caller's)
    logits = dots * scale if multiplicity is None else torch.add(torch.log(multiplicity.to(dots)), dots, alpha=scale)
    if bias is not None:
        logits = logits.add_(bias) if bias.shape == logits.shape else logits + bias
    return torch.softmax(logits, dim=-1)



def key_logits(
    query: torch.Tensor, key: torch.Tensor, scale: float | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 logits ``[B, H, n, T]`` of queries ``[B, n, H, D]`` and keys ``[B, T, H, D]``, plus a key bias
    ``[B, T]`` (e.g. -inf for masked padding)."""
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    out = qk_dots(query, key).mul_(scale)
    return out if bias is None else out.add_(bias[:, None, None, :])


def frames_per_chunk(grid: tuple[int, int, int], bytes_per_token: int, budget_bytes: int) -> int:
    """How many whole frames of queries fit in `budget_bytes` when each query token costs `bytes_per_token`."""
    _, ny, nx = grid
    return max(1, budget_bytes // max(1, bytes_per_token * ny * nx))


def logsumexp_over_keys(
    query: torch.Tensor,
    key: torch.Tensor,
    key_chunk: int,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row log-sum-exp ``[B, H, n]`` of the logits of queries ``[B, n, H, D]`` over all keys ``[B, T, H, D]``
    (plus an additive key bias ``[B, T]``, e.g. -inf for padding).

    Accumulated over chunks of `key_chunk` keys with logaddexp, so no ``n x T`` block is ever held whole.
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    out = None
    for k0 in range(0, key.shape[1], key_chunk):
        logits = qk_dots(query, key[:, k0 : k0 + key_chunk]).mul_(scale)
        if bias is not None:
            logits.add_(bias[:, None, None, k0 : k0 + key_chunk])
        part = torch.logsumexp(logits, -1)
        out = part if out is None else torch.logaddexp(out, part)
    return out


def row_logsumexp(
    query: torch.Tensor,
    key: torch.Tensor,
    key_chunk: int,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row log-sum-exp ``[B, H, n]`` over all keys, from a fused kernel where the device has one that returns it.

    On the CPU, PyTorch's flash-attention kernel returns the row log-sum-exp with its output (float32, exact to
    ~1e-6), several times faster than explicit logits; elsewhere `logsumexp_over_keys` accumulates it in chunks.
    """
    if query.device.type == "cpu":
        q = query.to(torch.float32).transpose(1, 2)
        k = key.to(torch.float32).transpose(1, 2)
        mask = None if bias is None else bias[:, None, None, :].to(torch.float32)
        _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, k, attn_mask=mask, scale=scale)[:2]
        return lse
    return logsumexp_over_keys(query, key, key_chunk, scale, bias)


def key_bias(mask: torch.Tensor | None, n_keys: int) -> torch.Tensor | None:
    """An attention mask that varies only along the keys, as an additive float bias ``[B, n_keys]``.

    Accepts boolean (True = attend) or additive masks of shape ``[B, T]`` or ``[B, 1, 1, T]`` (broadcast over
    heads and queries). Anything else is refused: fglens' joint probabilities assume key-only masks.
    """
    if mask is None:
        return None
    m = mask
    if m.ndim == 4 and m.shape[1] == 1 and m.shape[2] == 1:
        m = m[:, 0, 0]
    if m.ndim != 2 or m.shape[-1] != n_keys:
        raise ValueError(
            f"fglens supports attention masks over keys only ([B, {n_keys}] or [B, 1, 1, {n_keys}]); "
            f"got shape {tuple(mask.shape)}"
        )
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, device=m.device).masked_fill(m.logical_not(), float("-inf"))
    return m.to(torch.float32)

#: an additive mask entry at or below this is a masked key (LTX's -10000, -inf from a boolean mask): the kernel's
#: exp of it, next to any real key's logit, is 0 in float32 and float64 alike
MASKED = -1000.0


def mask_bias(mask: torch.Tensor | None, n_keys: int) -> torch.Tensor | None:
    """A separate text call's attention mask (LTX-Video's padding mask) as an additive float32 logit bias
    ``[B, 1 or H, 1, T]`` that broadcasts over the query rows of ``[B, H, n, T]`` logits, head by head as the kernel
    applies it: exact for any key-only mask, per-head ones included.

    Accepts boolean (True = attend) or additive masks of shape ``[B, T]``, ``[B, 1, T]`` or ``[B, 1 or H, 1, T]``.
    A mask that varies along the queries is refused: fglens' text probabilities assume key-only masks.

    Example:
        >>> mask_bias(torch.tensor([[True, False]]), 2)
        tensor([[[[0., -inf]]]])
    """
    if mask is None:
        return None
    m = mask
    if m.ndim == 2:
        m = m[:, None, None, :]
    elif m.ndim == 3 and m.shape[1] == 1:
        m = m[:, None]
    if m.ndim != 4 or m.shape[2] != 1 or m.shape[-1] != n_keys:
        raise ValueError(
            f"fglens supports text attention masks over keys only ([B, {n_keys}], [B, 1, {n_keys}] or "
            f"[B, heads, 1, {n_keys}]); got shape {tuple(mask.shape)}"
        )
    if m.dtype == torch.bool:
        return torch.zeros(m.shape, device=m.device).masked_fill(m.logical_not(), float("-inf"))
    return m.to(torch.float32)


def open_keys(bias: torch.Tensor) -> torch.Tensor:
    """``[B]``: how many keys a `mask_bias` leaves open (above `MASKED`) in at least one head: the support of the
    head-mean attention, the entropy's normaliser."""
    return (bias > MASKED).any(1)[:, 0].sum(-1)


def bias_logits(
    biases: Sequence[Any], rows: slice, cols: slice, items: list[int] | None = None
) -> torch.Tensor | None:
    """The summed bias ``[B, H, n, T]`` of `biases` (`fglens.core.call.Bias`) on query rows `rows` and key columns
    `cols` (for recorders)."""
    if not biases:
        return None
    total = None
    for b in biases:
        q, k = b.q[:, rows], b.k[:, cols]
        if items is not None and len(items) != q.shape[0]:
            q, k = q[items], k[items]
        part = torch.einsum("bnhr,bthr->bhnt", q.to(torch.float32), k.to(torch.float32))
        total = part if total is None else total + part
    return total


def mix(dst: torch.Tensor, src: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The cache transfer's mix ``(1 - w)·dst + w·src``, as ``dst + w·(src - dst)``: of probabilities, outputs or
    masses. `fglens.interventions.cache` applies it to the model's attention and the recorders to the maps they
    recompute, so both see the same post-edit attention.

    Example:
        >>> mix(torch.tensor([0.2]), torch.tensor([0.6]), torch.tensor([0.25]))
        tensor([0.3000])
    """
    return dst + weight * (src - dst)


def rest_scale(mass_dst: torch.Tensor, mass_new: torch.Tensor) -> torch.Tensor:
    """In one joint softmax whose text block's mass went from `mass_dst` to `mass_new` by a mix, the factor of the rest
    of the row (video and image keys), so that the row still sums to 1: ``(1 - mass_new) / (1 - mass_dst)``."""
    return (1 - mass_new) / (1 - mass_dst).clamp_min(1e-12)


@dataclass
class Mix:
    """What one cache transfer did to one attention call's text probabilities: ``P <- mix(P, P_src, w)``.

    The cache transfer builds it when it edits a call (`EditCall.mixes`); the recorders apply it to the maps they
    recompute, so that both see the same post-edit attention.

    Attributes:
        weight: the mix weight ``[B, N, H]`` over the call's video query rows (0 outside the transfer's scope).
        source: ``source(rows, n_keys, multiplicity, items)`` -> the source's text probabilities ``[b, H, n, n_keys]``
            (float32) for video query rows `rows` of batch items `items` (None: all), on the call's first `n_keys`
            text keys, the last of them standing for `multiplicity`'s count of identical pad keys when given.
        head_mean: mix the source map averaged over its heads into every head (else head by head).

    Example:
        >>> src = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])  # [b=1, H=2, n=1, T=2]
        >>> m = Mix(torch.ones(1, 1, 2), lambda rows, n, mult, items: src[:, :, rows], head_mean=True)
        >>> m.apply(torch.zeros(1, 2, 1, 2), slice(0, 1))[0, :, 0]
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]])
    """

    weight: torch.Tensor
    source: Callable[[slice, int, torch.Tensor | None, list[int] | None], torch.Tensor]
    head_mean: bool = False

    def probs(self, rows: slice, n_keys: int, multiplicity: torch.Tensor | None = None,
              items: list[int] | None = None) -> torch.Tensor:
        """The source probabilities this mix puts in: ``[b, H, n, n_keys]``, or ``[b, 1, n, n_keys]`` (head mean)."""
        p = self.source(rows, n_keys, multiplicity, items)
        return p.mean(1, keepdim=True) if self.head_mean else p

    def apply(self, p: torch.Tensor, rows: slice, multiplicity: torch.Tensor | None = None,
              items: list[int] | None = None) -> torch.Tensor:
        """`p` (``[b, H, n, T]``, the destination's probabilities on video rows `rows`) after this mix."""
        w = self.weight if items is None else self.weight[items]
        w = w[:, rows].transpose(1, 2)[..., None].to(p.dtype)
        return mix(p, self.probs(rows, p.shape[-1], multiplicity, items), w)
