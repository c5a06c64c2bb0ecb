"""Dense patch features from a CLIP vision tower: `DenseSpec` (how the last block runs: ClearCLIP, SCLIP,
MaskCLIP, raw) and the image preparation. Computed from open_clip's own modules; nothing is modified or hooked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

Attention = Literal["qq", "kk", "qq+kk", "qk", "identity"]


@dataclass(frozen=True)
class DenseSpec:
    """How the last vision block is run to get dense patch features.

    Attributes:
        attention: ``"qq"`` softmax(q qᵀ) (ClearCLIP), ``"kk"`` softmax(k kᵀ), ``"qq+kk"``
            softmax(q qᵀ) + softmax(k kᵀ) (SCLIP's correlative self-attention), ``"qk"`` the model's own
            attention, ``"identity"`` each token keeps its own value (MaskCLIP's value path).
        residual: keep the residual connection around the attention.
        ffn: keep the block's feed-forward network (with its residual).
    """

    attention: Attention = "qq"
    residual: bool = False
    ffn: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ("qq", "kk", "qq+kk", "qk", "identity"):
            raise ValueError(f"unknown attention {self.attention!r}; use 'qq', 'kk', 'qq+kk', 'qk' or 'identity'")


#: Named dense methods. ``"raw"`` is the unmodified model (the baseline the others improve on).
DENSE_METHODS: dict[str, DenseSpec] = {
    "clearclip": DenseSpec("qq", residual=False, ffn=False),
    "sclip": DenseSpec("qq+kk", residual=False, ffn=False),
    "maskclip": DenseSpec("identity", residual=False, ffn=False),
    "raw": DenseSpec("qk", residual=True, ffn=True),
}




# ----------------------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------------------


def _image_tensor(image: Any) -> torch.Tensor:
    """PIL image / HxWx3 uint8 array / [3,H,W] or [1,3,H,W] float tensor in [0,1] -> [1,3,H,W] float32."""
    if isinstance(image, torch.Tensor):
        x = image.detach().to(torch.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"an image tensor must be [3, H, W] or [1, 3, H, W] in [0, 1]; got {tuple(image.shape)}")
        return x.cpu()
    if isinstance(image, np.ndarray):
        from PIL import Image

        image = Image.fromarray(image)
    if hasattr(image, "convert") and hasattr(image, "size"):
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    raise TypeError(f"expected a PIL image, an HxWx3 uint8 array or a [3, H, W] tensor; got {type(image).__name__}")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)


def _round_to(value: float, step: int) -> int:
    return max(step, int(round(value / step)) * step)




def _attention_weights(
    q: torch.Tensor, k: torch.Tensor, kind: str, scale: float | torch.Tensor, cosine: bool
) -> torch.Tensor:
    """[B, H, L, L] attention of the requested kind; `cosine` = scaled cosine attention (q, k unit-norm)."""
    if cosine:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)

    def soft(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.softmax((a @ b.transpose(-1, -2)).float() * scale, dim=-1)

    if kind == "qq":
        return soft(q, q)
    if kind == "kk":
        return soft(k, k)
    if kind == "qq+kk":
        return soft(q, q) + soft(k, k)
    if kind == "qk":
        return soft(q, k)
    raise AssertionError(kind)  # pragma: no cover


def _dense_block(block: torch.nn.Module, x: torch.Tensor, spec: DenseSpec) -> torch.Tensor:
    """Run an open_clip residual block on batch-first tokens [B, L, C] the way `spec` says."""
    from open_clip.transformer import Attention as OpenClipAttention

    y = block.ln_1(x)
    attn = block.attn
    B, L, C = y.shape
    heads = attn.num_heads
    if isinstance(attn, torch.nn.MultiheadAttention):
        if attn._qkv_same_embed_dim:
            wq, wk, wv = attn.in_proj_weight.chunk(3, dim=0)
        else:
            wq, wk, wv = attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight
        bq, bk, bv = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
        q, k, v = F.linear(y, wq, bq), F.linear(y, wk, bk), F.linear(y, wv, bv)
        q, k, v = (t.reshape(B, L, heads, -1).transpose(1, 2) for t in (q, k, v))
        scale: float | torch.Tensor = q.shape[-1] ** -0.5
        cosine = False
        post: Callable[[torch.Tensor], torch.Tensor] = attn.out_proj
    elif isinstance(attn, OpenClipAttention):
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, L, heads, -1).transpose(1, 2) for t in (q, k, v))
        q, k = attn.ln_q(q), attn.ln_k(k)
        cosine = attn.logit_scale is not None
        if cosine:
            scale = torch.clamp(attn.logit_scale, max=attn.logit_scale_max).exp().float()
        else:
            scale = attn.scale

        def post(o: torch.Tensor) -> torch.Tensor:
            return attn.out_proj(attn.ln_inner(o))

    else:
        raise TypeError(f"unsupported attention module {type(attn).__name__} in the last vision block")

    if spec.attention == "identity":
        out = v
    else:
        weights = _attention_weights(q, k, spec.attention, scale, cosine)
        out = weights.to(v.dtype) @ v
    if getattr(attn, "head_scale", None) is not None:
        out = out * attn.head_scale
    out = post(out.transpose(1, 2).reshape(B, L, C))
    ln_attn = getattr(block, "ln_attn", None)
    if ln_attn is not None:
        out = ln_attn(out)
    out = block.ls_1(out)
    if spec.residual:
        out = x + out
    if spec.ffn:
        out = out + block.ls_2(block.mlp(block.ln_2(out)))
    return out
