"""Joint attention with logit biases on a few key columns, computed where the bias acts.

On joint attention (HunyuanVideo, CogVideoX) one softmax runs over ``[video | context]`` keys, S of them. An
intervention's bias touches the video query rows and a few key columns C only (the text, the image-derived
tokens, the reference frame: `Bias.cols`). Widening the whole fused call by the bias dimensions (`augment`)
costs every query-key pair of it; instead:

- the video rows run the model's own kernel over the other keys R, returning the row log-sum-exp ``lse_R``;
- the columns C are computed explicitly with the bias: logits ``l = s·q·k + key mask + b`` over C only, in
  float32, a block of rows at a time;
- the two merge exactly: ``lse = logaddexp(lse_R, lse_C)``, ``out = exp(lse_R − lse)·out_R + Σ_C exp(l − lse)·v``;
- the rows that are not video (the context's own queries) run the model's kernel over all keys, as the model does.

The extra work is the explicit block, O(N·|C|·D), instead of O(N·S·e) for e bias dimensions (rounded up to 8):
with |C| = 396 context keys at N = 7,680 that is 5 % of the call instead of 25 % at head dimension 32. Nothing is
read on the host: the key ranges are host values, the blocks are slices. Used by `fglens.trace.editing` when a
call's biases all declare their columns and the intervention's scope covers the whole call (a frame-, head- or
item-scoped edit keeps the model's own output bit for bit outside its scope through the widened call instead).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..core.call import Bias, EditCall
from ..core.probs import key_logits
from .kernels import run_call

#: float32 logits held at once by the explicit block (rows x heads x columns)
BLOCK = 1 << 24


def bias_spans(biases: Sequence[Bias], n_keys: int) -> list[tuple[int, int]] | None:
    """The sorted, merged key ranges the biases act on, or None when a bias does not say (`Bias.cols`)."""
    spans = []
    for b in biases:
        if b.cols is None:
            return None
        spans += [(max(0, a), min(n_keys, z)) for a, z in b.cols if z > a]
    merged: list[tuple[int, int]] = []
    for a, z in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], z))
        else:
            merged.append((a, z))
    return merged


def _complement(spans: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    out, start = [], 0
    for a, z in spans:
        if a > start:
            out.append((start, a))
        start = z
    if start < n:
        out.append((start, n))
    return out


def _take(x: torch.Tensor, spans: list[tuple[int, int]], dim: int = 1) -> torch.Tensor:
    parts = [x.narrow(dim, a, z - a) for a, z in spans]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def split_call(call: EditCall, biases: Sequence[Bias], spans: list[tuple[int, int]], run: Callable,
               run_with_lse: Callable, need_lse: bool,
               attn_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The biased joint call (output ``[B, S_q, H, D]`` and, when `need_lse`, the row LSE ``[B, H, S_q]``)."""
    query, key, value = call.query, call.key, call.value
    n_keys = key.shape[1]
    r0, r1 = call.video_rows
    rest = _complement(spans, n_keys)
    masked = attn_mask is not None
    # a mask with a query dimension (HunyuanVideo-1.5's [B, 1, S, S]) follows the rows of each re-run
    by_rows = masked and attn_mask.dim() >= 2 and attn_mask.shape[-2] == query.shape[1] and query.shape[1] > 1

    def rows_of(a: int, z: int) -> torch.Tensor | None:
        return attn_mask.narrow(attn_mask.dim() - 2, a, z - a) if by_rows else attn_mask

    def mask_of(cols: list[tuple[int, int]]) -> dict:
        return {"attn_mask": _take(rows_of(r0, r1), cols, attn_mask.dim() - 1)} if masked else {}

    # the video rows over the keys without bias: the model's kernel, with its row log-sum-exp
    q_v = query[:, r0:r1]
    if rest:
        k_r, v_r = _take(key, rest), _take(value, rest)
        kb = None if call.key_bias is None else _take(call.key_bias, rest)
        out_r, lse_r = run_call(run, run_with_lse, q_v, k_r, v_r, True, call.scale, kb, **mask_of(rest))
        lse_r = lse_r.to(torch.float32)
    else:
        out_r = torch.zeros_like(q_v[..., : value.shape[-1]])
        lse_r = torch.full((q_v.shape[0], q_v.shape[2], q_v.shape[1]), float("-inf"), device=query.device)
    # the biased columns, explicitly, merged into the rows through the log-sum-exp
    k_c, v_c = _take(key, spans), _take(value, spans).to(torch.float32)
    kb_c = None if call.key_bias is None else _take(call.key_bias, spans)
    bk = [_take(b.k, spans).to(torch.float32) for b in biases]
    n = q_v.shape[1]
    step = max(1, BLOCK // max(1, q_v.shape[0] * q_v.shape[2] * k_c.shape[1]))
    video = torch.empty_like(out_r)
    lse_v = torch.empty_like(lse_r)
    for a in range(0, n, step):
        z = min(n, a + step)
        logits = key_logits(q_v[:, a:z], k_c, call.scale, kb_c)  # [B, H, m, C]
        for b, k in zip(biases, bk, strict=True):
            logits = logits + torch.einsum("bnhr,bthr->bhnt", b.q[:, r0 + a : r0 + z].to(torch.float32), k)
        lse = torch.logaddexp(lse_r[..., a:z], torch.logsumexp(logits, -1))  # [B, H, m]
        p = torch.exp(logits - lse[..., None])
        weight = torch.exp(lse_r[..., a:z] - lse).transpose(1, 2)[..., None]  # [B, m, H, 1]
        merged = weight * out_r[:, a:z].to(torch.float32) + torch.einsum("bhmc,bchd->bmhd", p, v_c)
        video[:, a:z] = merged.to(video.dtype)
        lse_v[..., a:z] = lse
    # the other rows (the context's queries): the model's own call over every key
    others = _complement([(r0, r1)], query.shape[1])
    out = torch.empty_like(query[..., : value.shape[-1]])
    out[:, r0:r1] = video
    lse_all = torch.empty((query.shape[0], query.shape[2], query.shape[1]), dtype=torch.float32,
                          device=query.device) if need_lse else None
    if lse_all is not None:
        lse_all[..., r0:r1] = lse_v
    for a, z in others:
        own = {"attn_mask": rows_of(a, z)} if by_rows else {}
        o, lo = run_call(run, run_with_lse, query[:, a:z], key, value, need_lse, call.scale, call.key_bias, **own)
        out[:, a:z] = o
        if lse_all is not None:
            lse_all[..., a:z] = lo
    return out, lse_all
