"""The model's own attention call, made through the kernel that also returns the row log-sum-exp.

Joint attention (HunyuanVideo, CogVideoX) normalises video→text probabilities over *all* keys, so recording
them exactly needs each query row's log-sum-exp (LSE) over all keys. Recomputing it costs a second
attention pass. But where diffusers' native backend would run PyTorch's CPU flash kernel anyway, that very
kernel returns the LSE next to the output: calling it directly, with exactly the arguments
`F.scaled_dot_product_attention` would pass it, gives the same output bits and the LSE for free.

`dispatch_with_lse` (diffusers' dispatcher) and `sdpa_call_with_lse` (a direct `F.scaled_dot_product_attention`
call) do that when they can prove it is the same kernel, and return None otherwise; the caller then runs the
original call and computes the LSE separately (exact, slower).
"""

from __future__ import annotations

from typing import Any

import torch

_FLASH = 1  # torch's SDPBackend.flash_attention, as returned by torch._fused_sdp_choice


def _native_backend_active(kwargs: dict[str, Any]) -> bool:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    backend = kwargs.get("backend")
    if backend is None:
        backend = _AttentionBackendRegistry.get_active_backend()[0]
    try:
        return AttentionBackendName(backend) == AttentionBackendName.NATIVE
    except ValueError:
        return False


def sdpa_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(output, lse)`` for `F.scaled_dot_product_attention` arguments (layout ``[B, H, S, D]``), bit-identical
    to it, or None unless it would run PyTorch's CPU flash kernel (no dropout, causal mask or GQA)."""
    if q.device.type != "cpu" or q.requires_grad:
        return None
    mask = attn_mask
    if mask is not None and mask.dtype == torch.bool:  # as F.scaled_dot_product_attention converts it, in one
        # tensor (zeros_like + logical_not + masked_fill kept three mask-sized ones alive: S x S for a query mask)
        mask = torch.where(mask, torch.zeros((), dtype=q.dtype), torch.full((), float("-inf"), dtype=q.dtype))
    if torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=scale, enable_gqa=False) != _FLASH:
        return None
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask, scale=scale)[:2]
    return out, lse


_SDPA_ARGS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def sdpa_call_with_lse(q, k, v, args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`sdpa_with_lse` for the raw arguments of a ``F.scaled_dot_product_attention(q, k, v, *args, **kwargs)`` call."""
    call = dict(zip(_SDPA_ARGS, args, strict=False)) | {k_: v_ for k_, v_ in kwargs.items() if k_ in _SDPA_ARGS}
    if call.get("dropout_p", 0.0) or call.get("is_causal", False) or call.get("enable_gqa", False):
        return None
    return sdpa_with_lse(q, k, v, call.get("attn_mask"), call.get("scale"))


def dispatch_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, args: tuple, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(output [B, S, H, D], lse [B, H, S])`` bit-identical to diffusers' native `dispatch_attention_fn`.

    `args` / `kwargs` are the remaining arguments of the `dispatch_attention_fn` call. Returns None unless the
    native backend is active, the call runs on the CPU without dropout, causal masking, GQA or context
    parallelism, and PyTorch would choose its flash kernel for it.
    """
    names = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa", "attention_kwargs")
    call = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
    if (
        call.get("dropout_p", 0.0)
        or call.get("is_causal", False)
        or call.get("enable_gqa", False)
        or call.get("attention_kwargs")
        or kwargs.get("parallel_config") is not None
        or not _native_backend_active(kwargs)
    ):
        return None
    mask = call.get("attn_mask")
    if mask is not None and mask.ndim == 2 and mask.shape[0] == query.shape[0] and mask.shape[1] == key.shape[1]:
        mask = mask.unsqueeze(1).unsqueeze(1)  # as diffusers' native backend reshapes it
    q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
    result = sdpa_with_lse(q, k, v, mask, call.get("scale"))
    if result is None:
        return None
    out, lse = result
    return out.permute(0, 2, 1, 3), lse


def run_call(run: Any, run_with_lse: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, need_lse: bool,
             softmax_scale: float | None, key_bias: torch.Tensor | None,
             **overrides: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's kernel on `q`, `k`, `v` (with `overrides`, e.g. ``scale=``): ``(output, row LSE)`` when `need_lse`,
    from the kernel where it returns one, else recomputed over the keys (`softmax_scale`; `key_bias`: their
    additive mask); ``(output, None)`` otherwise."""
    from ..core.probs import row_logsumexp

    fast = run_with_lse(q, k, v, **overrides) if need_lse else None
    if fast is not None:
        return fast
    out = run(q, k, v, **overrides)
    return out, (row_logsumexp(q, k, 4096, softmax_scale, key_bias) if need_lse else None)
