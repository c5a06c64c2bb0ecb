"""`fglens bench`: what recording costs, measured on tiny Wan-like and HunyuanVideo-like stacks on the CPU.

One run compares, at several token counts N, four ways of running one Wan transformer forward (one "step"):

* ``plain``: no tracing;
* ``traced``: ``fg.trace`` with the default statistics (word_mass, morans_i, similarity, text_share, entropy);
* ``traced_ref``: the same plus ``ref_mass`` (self-attention mass on the first latent frame, computed
  exactly in chunks: it recomputes Q·K over all keys, so its FLOPs are higher by design);
* ``naive``: a positive control, `NaiveRecorder`, which computes the same statistics by materialising the
  full probability matrices ([B, H, N, N] for self-attention, [B, H, N, 512] for the text), so its memory
  grows quadratically with N.

For each (N, mode) it measures

* ``flops``: matmul / convolution / attention FLOPs with `torch.utils.flop_counter.FlopCounterMode`, with a
  formula registered for the CPU attention kernel (``aten._scaled_dot_product_flash_attention_for_cpu``),
  which the counter otherwise reports as 0; element-wise work (softmax, exp, logsumexp) is not counted;
* ``peak_bytes``: the peak of live tensor bytes allocated during the forward (`LiveBytesMeter`, the same
  meter for every mode; parameters, buffers and inputs excluded), and ``recorder_bytes`` =
  ``peak_bytes(mode) - peak_bytes(plain)`` at the same N;
* ``wall_s``: the median of ``repeats`` timings of the forward alone, the modes interleaved inside each
  repeat, after one warm-up forward per mode.

The model is a bare random-weight `WanTransformer3DModel` (`fglens.testing.tiny_wan_transformer`, 4 blocks,
4 heads x 32 dims, so that attention dominates as it does at full scale), driven as the Wan I2V pipeline
drives it: video latents ``[1, 36, F, 2Y, 2X]`` (a 2x2 patch gives F x Y x X tokens), the text zero-padded
to 512 rows and 257 CLIP image tokens.

The joint-attention proxy (``model="hunyuan"``) is a bare random-weight `HunyuanVideoTransformer3DModel`
(`fglens.testing.tiny_hunyuan_transformer`, 2 double-stream + 2 single-stream blocks, 4 heads x 32 dims,
token-replace I2V with guidance embedding), driven as the HunyuanVideo I2V pipeline drives it: latents
``[1, 4, F, 2Y, 2X]``, a context of 144 image-derived tokens then 252 text rows (12 real, the rest padding)
with ``encoder_attention_mask`` 1 for the image and real text tokens and 0 for the padding, pooled
projections and the guidance embedding. Every block runs one joint softmax over ``[video | context]``; its
modes are ``plain``, ``traced`` (default statistics: word_mass, morans_i, similarity, entropy, text_mass,
image_mass) and ``naive`` (`NaiveJointRecorder`: the full joint softmax ``[B, H, S, S]``, S = N + 396, per
block). A bare transformer has no pipeline to say where the image tokens end, so fglens counts the whole
context as text (``image_mass`` is 0, ``text_mass`` includes the image tokens) and the word positions are
given relative to the context, offset by the 144 image tokens.

The edit benchmark (``edit=True``, ``fglens bench --edit``; Wan only) prices `fg.FocalGuidance` on the same
Wan stack: ``plain`` against ``fg{k}`` = ``FocalGuidance(anchor=AnchorMask(w0, strength 2), cache=CacheTransfer(
src=[last block], alpha=0.5), layers=blocks 0..k-1, steps=None)`` for k = 1 .. (blocks - 1), the anchor alone
(``anchor1``) and the cache alone (``cache1``) on one layer, and ``fg{k}_rec`` (the largest k plus a minimal
``Record(stats=("word_mass",))``). The source comes after its destinations, so the cache carries the source's
Q and K from the previous step: each edited forward is timed in the steady state, after an untimed forward at
another timestep (step 0) that fills the cache. A bare transformer has no prompt, so the anchor's word
positions come from ``fg.Record(words={"w0": [1]}, stats=())``, which records nothing (`Recorder.wants` is
never true). Each edit record also carries ``cache_bytes`` (the source's Q and K held between steps, which the
live-bytes meter cannot see: they exist before the forward starts) and ``max_abs_diff_vs_plain`` (the edit
took effect).

Example:
    >>> from fglens.bench import run_benchmark
    >>> records = run_benchmark([160, 320], repeats=1, frame_hw=(8, 10), log=None)  # doctest: +SKIP
    >>> sorted({r["mode"] for r in records})  # doctest: +SKIP
    ['naive', 'plain', 'traced', 'traced_ref']
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import re
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MODELS = ("wan", "hunyuan")
MODES = ("plain", "traced", "traced_ref", "naive")
#: the modes of the joint-attention proxy (HunyuanVideo)
JOINT_MODES = ("plain", "traced", "naive")
MODEL_MODES: dict[str, tuple[str, ...]] = {"wan": MODES, "hunyuan": JOINT_MODES}
#: the words the traced and naive modes follow: token positions in the 512 text rows
WORDS: dict[str, list[int]] = {"w0": [1], "w1": [2, 3]}
#: latent frame sizes (Y, X) to choose from, largest first: the first that divides every N is used
FRAME_SIZES: tuple[tuple[int, int], ...] = ((16, 20), (8, 10), (4, 5))
TEXT_ROWS = 512  # Wan pads every prompt to 512 rows
IMAGE_TOKENS = 257  # CLIP ViT-H/14 tokens of the reference frame in Wan2.1 I2V
JOINT_IMAGE_TOKENS = 144  # image-derived context tokens of the joint proxy (HunyuanVideo I2V has 576 / interleave)
JOINT_TEXT_ROWS = 252  # text rows of the joint proxy's context after the image tokens (real + masked padding)
JOINT_TEXT_REAL = 12  # real (unmasked) text tokens among them
#: the joint proxy's words: `WORDS` shifted past the image tokens (a bare transformer's context is all "text")
JOINT_WORDS: dict[str, list[int]] = {w: [JOINT_IMAGE_TOKENS + p for p in pos] for w, pos in WORDS.items()}
#: the edit benchmark: the anchor's word and strength, the cache's alpha (the source is the last block)
EDIT_WORD = "w0"
EDIT_STRENGTH = 2.0
EDIT_ALPHA = 0.5
EDIT_TARGET = 0.03  # DESIGN.md §5, on a GPU: editing adds <= 3 % to the step per edited layer
FLOP_TARGET = 1.03  # traced / plain FLOPs, for N >= FLOP_TARGET_MIN_N
FLOP_TARGET_MIN_N = 3840
GROWTH_TARGET = 2.2  # recorder bytes per doubling of N, fglens
NAIVE_GROWTH_MIN = 3.0  # the positive control must show (close to) quadratic growth

Log = Callable[[str], None] | None


# -- FLOPs -----------------------------------------------------------------------------------------------
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
def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
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
            if (key := _storage_key(t)) is not None
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        key = _storage_key(t)
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


# -- the positive control -----------------------------------------------------------------------------------
def _rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """diffusers' `WanAttnProcessor` rotary embedding, verbatim in effect."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _frame_mean(x: torch.Tensor, frames: int) -> torch.Tensor:
    return x.unflatten(-1, (frames, -1)).mean(-1)


def _morans_i(maps: torch.Tensor) -> torch.Tensor:
    """Moran's I with rook weights of maps ``[..., Y, X]`` (float64), written out pair by pair."""
    ny, nx = maps.shape[-2:]
    z = maps.to(torch.float64)
    z = z - z.mean(dim=(-1, -2), keepdim=True)
    pairs = (z[..., 1:, :] * z[..., :-1, :]).sum(dim=(-1, -2)) + (z[..., :, 1:] * z[..., :, :-1]).sum(dim=(-1, -2))
    s0 = 2 * (ny * (nx - 1) + nx * (ny - 1))
    return (ny * nx / s0) * 2 * pairs / (z * z).sum(dim=(-1, -2))


class NaiveRecorder:
    """Computes fglens' statistics the obvious way, materialising every probability matrix whole.

    Forward pre-hooks on ``blocks.i.attn1`` and ``blocks.i.attn2`` recompute the queries and keys from the
    module's own projections (``to_q``, ``to_k``, ``norm_q``, ``norm_k``, the rotary embedding for
    ``attn1``; ``add_k_proj``, ``norm_added_k`` for the image keys), then build the full self-attention
    softmax ``[B, H, N, N]`` (for ``ref_mass``) and the full text and image softmaxes ``[B, H, N, 512]``,
    ``[B, H, N, 257]``, keeping logits and probabilities alive until every statistic is reduced. Its memory
    grows as N²: it is the benchmark's positive control, not something to use.

    After a forward, `values` maps each statistic to ``{block index: tensor}`` for batch item 0, shaped
    like fglens' output: ``[W, F]`` for word statistics, ``[F]`` for the others.
    """

    def __init__(self, transformer: torch.nn.Module, words: Mapping[str, Sequence[int]]):
        if any(getattr(b.attn1, "fused_projections", False) for b in transformer.blocks):
            raise ValueError("NaiveRecorder expects unfused projections (to_q / to_k / to_v)")
        self.transformer = transformer
        self.words = {k: list(v) for k, v in words.items()}
        self.values: dict[str, dict[int, torch.Tensor]] = {}
        self.grid: tuple[int, int, int] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> NaiveRecorder:
        t = self.transformer
        self._handles.append(t.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        for i, block in enumerate(t.blocks):
            self._handles.append(block.attn1.register_forward_pre_hook(self._hook(self._self, i), with_kwargs=True))
            self._handles.append(block.attn2.register_forward_pre_hook(self._hook(self._cross, i), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _hook(self, fn: Callable, layer: int) -> Callable:
        names = ("hidden_states", "encoder_hidden_states", "attention_mask", "rotary_emb")

        def hook(module, args, kwargs):
            bound = dict(zip(names, args, strict=False))
            bound.update({k: v for k, v in kwargs.items() if k in names})
            with torch.no_grad():
                fn(module, layer, bound)

        return hook

    def _on_forward(self, module, args, kwargs) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        p_t, p_h, p_w = module.config.patch_size
        _, _, f, h, w = hidden.shape
        self.grid = (f // p_t, h // p_h, w // p_w)
        self.values = {}

    def _put(self, var: str, layer: int, value: torch.Tensor) -> None:
        self.values.setdefault(var, {})[layer] = value[0]

    def _self(self, attn, layer: int, a: dict[str, Any]) -> None:
        frames, ny, nx = self.grid
        x = a["hidden_states"]
        q = attn.norm_q(attn.to_q(x)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(x)).unflatten(2, (attn.heads, -1))
        if a.get("rotary_emb") is not None:
            q, k = _rotary(q, *a["rotary_emb"]), _rotary(k, *a["rotary_emb"])
        logits = torch.einsum("bnhd,bmhd->bhnm", q.float(), k.float()) / math.sqrt(q.shape[-1])  # [B, H, N, N]
        probs = torch.softmax(logits, dim=-1)  # [B, H, N, N]
        mass = probs[..., : ny * nx].sum(-1).mean(1)  # [B, N]
        self._put("ref_mass", layer, _frame_mean(mass, frames))
        del logits, probs

    def _cross(self, attn, layer: int, a: dict[str, Any]) -> None:
        frames, ny, nx = self.grid
        x, context = a["hidden_states"], a["encoder_hidden_states"]
        n_image = context.shape[1] - TEXT_ROWS
        image, text = context[:, :n_image], context[:, n_image:]
        heads = attn.heads
        q = attn.norm_q(attn.to_q(x)).unflatten(2, (heads, -1)).float()  # [B, N, H, D]
        k = attn.norm_k(attn.to_k(text)).unflatten(2, (heads, -1)).float()  # [B, 512, H, D]
        v = attn.to_v(text).unflatten(2, (heads, -1)).float()
        scale = 1 / math.sqrt(q.shape[-1])
        logits = torch.einsum("bnhd,bthd->bhnt", q, k) * scale  # [B, H, N, 512]
        probs = torch.softmax(logits, dim=-1)
        out_text = torch.einsum("bhnt,bthd->bnhd", probs, v).flatten(2)
        out_image = None
        if n_image > 0 and getattr(attn, "add_k_proj", None) is not None:
            ki = attn.norm_added_k(attn.add_k_proj(image)).unflatten(2, (heads, -1)).float()
            vi = attn.add_v_proj(image).unflatten(2, (heads, -1)).float()
            probs_image = torch.softmax(torch.einsum("bnhd,bthd->bhnt", q, ki) * scale, dim=-1)  # [B, H, N, 257]
            out_image = torch.einsum("bhnt,bthd->bnhd", probs_image, vi).flatten(2)

        pbar = probs.mean(1)  # [B, N, 512] head mean
        entropy = -torch.special.xlogy(pbar, pbar).sum(-1) / math.log(pbar.shape[-1])
        self._put("entropy", layer, _frame_mean(entropy, frames))
        if self.words:
            maps = torch.stack([pbar[..., pos].sum(-1) for pos in self.words.values()], dim=1)  # [B, W, N]
            self._put("word_mass", layer, _frame_mean(maps, frames))
            self._put("morans_i", layer, _morans_i(maps.unflatten(-1, (frames, ny, nx))).float())
            kflat = k.flatten(2)  # [B, 512, C]
            kbar = torch.stack([kflat[:, pos].mean(1) for pos in self.words.values()], dim=1)  # [B, W, C]
            qn = q.flatten(2) / q.flatten(2).norm(dim=-1, keepdim=True).clamp_min(1e-12)
            kn = kbar / kbar.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            self._put("similarity", layer, _frame_mean((qn @ kn.transpose(1, 2)).transpose(1, 2), frames))
        if out_image is not None:
            a_text, a_image = out_text.norm(dim=-1), out_image.norm(dim=-1)
            self._put("text_share", layer, _frame_mean(a_text / (a_text + a_image), frames))
        del logits, probs


def _heads(x: torch.Tensor, heads: int, norm: torch.nn.Module | None) -> torch.Tensor:
    x = x.unflatten(2, (heads, -1))
    return x if norm is None else norm(x)


def hunyuan_joint_qk(attn, x: torch.Tensor, context: torch.Tensor, rotary: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys ``[B, N + L, H, D]`` (video first) of one HunyuanVideo joint attention call, recomputed
    from the module's own projections the way `HunyuanVideoAttnProcessor2_0` computes them: shared
    projections over ``[video | context]`` in single-stream blocks, ``add_*_proj`` for the context in
    double-stream blocks; RMS norms per head; the rotary embedding on the video tokens only."""
    from diffusers.models.embeddings import apply_rotary_emb

    heads, n = attn.heads, x.shape[1]

    def rope(t: torch.Tensor) -> torch.Tensor:
        return t if rotary is None else apply_rotary_emb(t, rotary, sequence_dim=1)

    if attn.add_q_proj is None:  # single-stream block
        xc = torch.cat([x, context], dim=1)
        q = _heads(attn.to_q(xc), heads, attn.norm_q)
        k = _heads(attn.to_k(xc), heads, attn.norm_k)
        return torch.cat([rope(q[:, :n]), q[:, n:]], 1), torch.cat([rope(k[:, :n]), k[:, n:]], 1)
    q = torch.cat([rope(_heads(attn.to_q(x), heads, attn.norm_q)),
                   _heads(attn.add_q_proj(context), heads, attn.norm_added_q)], 1)
    k = torch.cat([rope(_heads(attn.to_k(x), heads, attn.norm_k)),
                   _heads(attn.add_k_proj(context), heads, attn.norm_added_k)], 1)
    return q, k


class NaiveJointRecorder:
    """The joint-attention positive control: fglens' joint statistics from the full softmax ``[B, H, S, S]``.

    Forward pre-hooks on ``transformer_blocks.i.attn`` and ``single_transformer_blocks.j.attn`` of a
    `HunyuanVideoTransformer3DModel` recompute the queries and keys of all S = N + L tokens
    (`hunyuan_joint_qk`), build the logits of every query against every key, mask the padded keys
    (``attention_mask``, boolean ``[B, 1, 1, S]``) and take the softmax, keeping logits and probabilities alive
    until every statistic is reduced: memory grows as S². The context splits into `n_image` image tokens, then
    text (0 for a bare transformer, as fglens sees it); word positions are relative to the text segment.

    After a forward, `values` maps each statistic to ``{layer index: tensor}`` for batch item 0, shaped like
    fglens' output: ``[W, F]`` for word statistics, ``[F]`` for the others; layers are the double-stream
    blocks, then the single-stream ones.
    """

    def __init__(self, transformer: torch.nn.Module, words: Mapping[str, Sequence[int]], n_image: int = 0):
        self.transformer = transformer
        self.words = {k: list(v) for k, v in words.items()}
        self.n_image = int(n_image)
        self.values: dict[str, dict[int, torch.Tensor]] = {}
        self.grid: tuple[int, int, int] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> NaiveJointRecorder:
        t = self.transformer
        self._handles.append(t.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        blocks = [*t.transformer_blocks, *t.single_transformer_blocks]
        for i, block in enumerate(blocks):
            self._handles.append(block.attn.register_forward_pre_hook(self._hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _hook(self, layer: int) -> Callable:
        names = ("hidden_states", "encoder_hidden_states", "attention_mask", "image_rotary_emb")

        def hook(module, args, kwargs):
            bound = dict(zip(names, args, strict=False))
            bound.update({k: v for k, v in kwargs.items() if k in names})
            with torch.no_grad():
                self._joint(module, layer, bound)

        return hook

    def _on_forward(self, module, args, kwargs) -> None:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        p, p_t = module.config.patch_size, module.config.patch_size_t
        _, _, f, h, w = hidden.shape
        self.grid = (f // p_t, h // p, w // p)
        self.values = {}

    def _put(self, var: str, layer: int, value: torch.Tensor) -> None:
        self.values.setdefault(var, {})[layer] = value[0]

    def _joint(self, attn, layer: int, a: dict[str, Any]) -> None:
        frames, ny, nx = self.grid
        x, context, mask = a["hidden_states"], a["encoder_hidden_states"], a.get("attention_mask")
        n = x.shape[1]
        q, k = hunyuan_joint_qk(attn, x, context, a.get("image_rotary_emb"))  # [B, S, H, D]
        logits = torch.einsum("bshd,bthd->bhst", q.float(), k.float()) / math.sqrt(q.shape[-1])  # [B, H, S, S]
        keep = None
        if mask is not None:
            keep = mask.reshape(mask.shape[0], -1).bool()  # [B, S], True = attend
            logits = logits.masked_fill(~keep[:, None, None, :], float("-inf"))
        probs = torch.softmax(logits, dim=-1)  # [B, H, S, S]
        pbar = probs[:, :, :n].mean(1)  # [B, N, S]: the video queries' rows, head mean
        t0 = n + self.n_image
        text = pbar[..., t0:]  # [B, N, T]
        self._put("text_mass", layer, _frame_mean(text.sum(-1), frames))
        self._put("image_mass", layer, _frame_mean(pbar[..., n:t0].sum(-1), frames))
        p_in = text / text.sum(-1, keepdim=True)  # renormalised within the text keys
        n_valid = keep[:, t0:].sum(-1) if keep is not None else torch.full((x.shape[0],), text.shape[-1])
        entropy = -torch.special.xlogy(p_in, p_in).sum(-1) / torch.log(n_valid.to(p_in.dtype))[:, None]
        self._put("entropy", layer, _frame_mean(entropy, frames))
        if self.words:
            maps = torch.stack([text[..., pos].sum(-1) for pos in self.words.values()], dim=1)  # [B, W, N]
            self._put("word_mass", layer, _frame_mean(maps, frames))
            self._put("morans_i", layer, _morans_i(maps.unflatten(-1, (frames, ny, nx))).float())
            k_text = k[:, t0:].flatten(2).float()  # [B, T, C]
            kbar = torch.stack([k_text[:, pos].mean(1) for pos in self.words.values()], dim=1)  # [B, W, C]
            qv = q[:, :n].flatten(2).float()
            qn = qv / qv.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            kn = kbar / kbar.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            self._put("similarity", layer, _frame_mean((qn @ kn.transpose(1, 2)).transpose(1, 2), frames))
        del logits, probs


# -- the workload ----------------------------------------------------------------------------------------------
def frame_size_for(tokens: Sequence[int]) -> tuple[int, int]:
    """The largest latent frame (Y, X) of `FRAME_SIZES` whose token count divides every N."""
    for ny, nx in FRAME_SIZES:
        if all(n > 0 and n % (ny * nx) == 0 for n in tokens):
            return ny, nx
    raise ValueError(
        f"every token count must be a positive multiple of {FRAME_SIZES[-1][0] * FRAME_SIZES[-1][1]} "
        f"(frames of {' or '.join(f'{y}x{x}' for y, x in FRAME_SIZES)} latent tokens); got {list(tokens)}"
    )


def wan_inputs(n_tokens: int, frame_hw: tuple[int, int], *, text_len: int = 12, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments of one Wan I2V transformer forward with `n_tokens` video tokens.

    ``hidden_states [1, 36, F, 2Y, 2X]`` (16 noise + 20 condition channels; the 2x2 patch gives F·Y·X
    tokens), ``timestep [500]``, ``encoder_hidden_states [1, 512, 32]`` random for the first `text_len`
    rows and exactly zero after (Wan's padding), ``encoder_hidden_states_image [1, 257, 8]``.
    """
    from .testing import WAN_TEXT_DIM

    ny, nx = frame_hw
    if n_tokens % (ny * nx):
        raise ValueError(f"{n_tokens} tokens is not a whole number of {ny}x{nx} frames")
    frames = n_tokens // (ny * nx)
    g = torch.Generator().manual_seed(seed)
    text = torch.zeros(1, TEXT_ROWS, WAN_TEXT_DIM)
    text[:, :text_len] = torch.randn(1, text_len, WAN_TEXT_DIM, generator=g)
    return {
        "hidden_states": torch.randn(1, 36, frames, 2 * ny, 2 * nx, generator=g),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": text,
        "encoder_hidden_states_image": torch.randn(1, IMAGE_TOKENS, 8, generator=g),
        "return_dict": False,
    }


def hunyuan_inputs(
    n_tokens: int,
    frame_hw: tuple[int, int],
    config: Mapping[str, Any],
    *,
    n_image: int = JOINT_IMAGE_TOKENS,
    text_rows: int = JOINT_TEXT_ROWS,
    text_len: int = JOINT_TEXT_REAL,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword arguments of one HunyuanVideo I2V transformer forward with `n_tokens` video tokens.

    ``hidden_states [1, C, F, 2Y, 2X]`` (C = the config's ``in_channels``; the 1x2x2 patch gives F·Y·X
    tokens), ``timestep [500]``, ``encoder_hidden_states [1, n_image + text_rows, text_embed_dim]`` (random
    rows: what makes the padding is the mask), ``encoder_attention_mask [1, n_image + text_rows]`` (1 for the
    image tokens and the first `text_len` text rows, 0 after), ``pooled_projections`` and, when the config
    embeds guidance, ``guidance [6000.0]`` (the pipeline passes guidance_scale x 1000).
    """
    ny, nx = frame_hw
    if n_tokens % (ny * nx):
        raise ValueError(f"{n_tokens} tokens is not a whole number of {ny}x{nx} frames")
    frames = n_tokens // (ny * nx)
    g = torch.Generator().manual_seed(seed)
    rows = n_image + text_rows
    mask = torch.zeros(1, rows, dtype=torch.int64)
    mask[:, : n_image + text_len] = 1
    inputs = {
        "hidden_states": torch.randn(1, config["in_channels"], frames, 2 * ny, 2 * nx, generator=g),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, rows, config["text_embed_dim"], generator=g),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(1, config["pooled_projection_dim"], generator=g),
        "return_dict": False,
    }
    if config.get("guidance_embeds"):
        inputs["guidance"] = torch.tensor([6000.0])
    return inputs


# -- the edit benchmark ---------------------------------------------------------------------------------------
def edit_modes(num_layers: int) -> tuple[str, ...]:
    """The edit benchmark's modes for a Wan stack of `num_layers` blocks (the last block is the cache's source).

    Example:
        >>> edit_modes(4)
        ('plain', 'fg1', 'fg2', 'fg3', 'anchor1', 'cache1', 'fg3_rec')
    """
    top = num_layers - 1
    if top < 1:
        raise ValueError("the edit benchmark needs at least 2 blocks: the cache's source and one edited layer")
    return ("plain", *(f"fg{k}" for k in range(1, top + 1)), "anchor1", "cache1", f"fg{top}_rec")


def parse_edit_mode(mode: str) -> tuple[str, int, bool] | None:
    """``"fg2_rec"`` -> ``("fg", 2, True)``: (what is applied, how many layers, with a minimal Record); None for
    a mode that is no edit mode."""
    m = re.fullmatch(r"(fg|anchor|cache)(\d+)(_rec)?", mode)
    return None if m is None else (m[1], int(m[2]), bool(m[3]))


def _is_edit(mode: str) -> bool:
    return parse_edit_mode(mode) is not None


def anchor_region(frame_hw: tuple[int, int]) -> torch.Tensor:
    """The anchor's mask on the latent grid ``[Y, X]``: 1 on the central half of each side, 0 elsewhere."""
    ny, nx = frame_hw
    mask = torch.zeros(ny, nx)
    mask[ny // 4: ny - ny // 4, nx // 4: nx - nx // 4] = 1
    return mask


def focal_edit(mode: str, num_layers: int, frame_hw: tuple[int, int]) -> Any:
    """The intervention of an edit mode: `fg.FocalGuidance` on blocks ``0 .. k-1`` (its anchor, its cache, or
    both), the cache's source the last block, every step (a bare transformer has no schedule for fractions)."""
    import fglens as fg

    parsed = parse_edit_mode(mode)
    if parsed is None:
        raise ValueError(f"{mode!r} is no edit mode")
    kind, k, _ = parsed
    if not 1 <= k < num_layers:
        raise ValueError(f"{mode!r}: the edited layers must leave the last block as the source (1 <= k < {num_layers})")
    layers = list(range(k))
    anchor = fg.AnchorMask.from_mask(anchor_region(frame_hw), EDIT_WORD, strength=EDIT_STRENGTH)
    cache = fg.CacheTransfer(src=[num_layers - 1], dst=layers, alpha=EDIT_ALPHA)
    return fg.FocalGuidance(anchor=None if kind == "cache" else anchor, cache=None if kind == "anchor" else cache,
                            layers=layers, steps=None)


def edit_record(mode: str) -> Any:
    """The Record an edit mode runs with: it gives the anchor's word positions (a bare transformer has no prompt)
    and records nothing (``stats=()``), or only ``word_mass`` for the ``_rec`` modes."""
    import fglens as fg

    parsed = parse_edit_mode(mode)
    return fg.Record(words={EDIT_WORD: WORDS[EDIT_WORD]}, stats=("word_mass",) if parsed and parsed[2] else ())


class EditRun:
    """What an edit mode's context yields: the trace and the intervention (for the cache's size)."""

    def __init__(self, trace: Any, edit: Any):
        self.trace = trace
        self.edit = edit

    def cache_bytes(self) -> int:
        """Bytes of the storages the cache transfer holds between steps (the source's Q and K)."""
        seen: dict[int, int] = {}
        for part in self.edit.parts():
            for entry in getattr(part, "_cache", {}).values():  # CacheTransfer: (step, query, key)
                for t in entry[1:]:
                    if (key := _storage_key(t)) is not None:
                        seen[key[0]] = key[1]
        return sum(seen.values())


@contextlib.contextmanager
def edit_context(mode: str, transformer: torch.nn.Module, inputs: Mapping[str, Any]) -> Iterator[EditRun]:
    """`fg.trace` with the mode's edit, primed: one forward at timestep + 1 (step 0) fills the cache with the
    source's Q and K, so the next forward (the timestep changes: step 1) is a steady-state edited step."""
    import fglens as fg

    p_t, p_h, p_w = transformer.config.patch_size
    frame_hw = (inputs["hidden_states"].shape[3] // p_h, inputs["hidden_states"].shape[4] // p_w)
    edit = focal_edit(mode, transformer.config.num_layers, frame_hw)
    with fg.trace(transformer, edit=edit, record=edit_record(mode)) as run:
        transformer(**{**inputs, "timestep": inputs["timestep"] + 1})
        yield EditRun(run, edit)


def mode_context(
    mode: str, transformer: torch.nn.Module, model: str = "wan", inputs: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager:
    """The context one forward of `mode` runs in (a fresh one per forward; an edit mode's needs the `inputs`,
    for its priming forward)."""
    import fglens as fg
    from fglens.trace import DEFAULT_STATS

    if model == "wan" and _is_edit(mode):
        if inputs is None:
            raise ValueError(f"edit mode {mode!r} needs the forward's inputs (its context runs a priming forward)")
        return edit_context(mode, transformer, inputs)
    if mode not in MODEL_MODES.get(model, ()):
        raise ValueError(f"unknown mode {mode!r} for {model!r}; modes are {MODEL_MODES.get(model)}")
    if mode == "plain":
        return contextlib.nullcontext()
    words = JOINT_WORDS if model == "hunyuan" else WORDS
    if mode == "traced":
        return fg.trace(transformer, record=fg.Record(words=words))
    if mode == "traced_ref":
        return fg.trace(transformer, record=fg.Record(words=words, stats=(*DEFAULT_STATS, "ref_mass")))
    if model == "hunyuan":
        return NaiveJointRecorder(transformer, words)
    return NaiveRecorder(transformer, words)


def _timed_forward(transformer: torch.nn.Module, inputs: dict[str, Any], mode: str, model: str = "wan") -> float:
    """Seconds of one forward of `mode` (the context's entry and exit are not timed; no GC pause inside)."""
    with mode_context(mode, transformer, model, inputs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter()
            transformer(**inputs)
            return time.perf_counter() - start
        finally:
            if enabled:
                gc.enable()


def _statistics(recorder: Any) -> dict[str, np.ndarray]:
    """``{statistic: array [layer, ...]}`` of batch item 0 from a closed `fg.trace` or a `NaiveRecorder`."""
    if isinstance(recorder, EditRun):
        return {}
    if isinstance(recorder, (NaiveRecorder, NaiveJointRecorder)):
        return {v: torch.stack([per[i] for i in sorted(per)]).numpy() for v, per in recorder.values.items()}
    ds = recorder.dataset.sel(branch="cond").isel(step=0)
    return {str(v): np.asarray(ds[v].values) for v in ds.data_vars}


def _measured_forward(transformer: torch.nn.Module, inputs: dict[str, Any], mode: str, model: str = "wan"
                      ) -> dict[str, Any]:
    """FLOPs (total and per op), peak live bytes, the output and the recorded statistics of one forward of
    `mode` (an edit mode's priming forward is neither counted nor metered; its cache's size is reported)."""
    from torch.utils.flop_counter import FlopCounterMode

    ensure_cpu_attention_flops()
    cache_bytes = None
    with mode_context(mode, transformer, model, inputs) as recorder:
        with FlopCounterMode(display=False) as counter, LiveBytesMeter() as meter:
            output = transformer(**inputs)[0]
        if isinstance(recorder, EditRun):
            cache_bytes = recorder.cache_bytes()
    by_op = {str(op): int(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}
    return {
        "flops": int(counter.get_total_flops()), "flops_by_op": by_op, "peak_bytes": int(meter.peak),
        "statistics": {} if recorder is None else _statistics(recorder), "output": output,
        "cache_bytes": cache_bytes,
    }


def max_abs_difference(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float | None:
    """Largest absolute difference over the statistics both hold (NaN where both are NaN counts as equal)."""
    shared = [v for v in a if v in b and np.shape(a[v]) == np.shape(b[v])]
    if not shared:
        return None
    return max(float(np.nanmax(np.abs(np.asarray(a[v], np.float64) - np.asarray(b[v], np.float64)), initial=0.0))
               for v in shared)


def run_benchmark(
    tokens: Sequence[int],
    repeats: int = 3,
    *,
    model: str = "wan",
    modes: Sequence[str] | None = None,
    edit: bool = False,
    frame_hw: tuple[int, int] | None = None,
    num_layers: int = 4,
    num_double: int = 2,
    num_single: int = 2,
    heads: int = 4,
    head_dim: int = 32,
    seed: int = 0,
    log: Log = None,
) -> list[dict[str, Any]]:
    """Measure every mode at every token count; one record per (N, mode).

    Args:
        tokens: token counts N; each a whole number of latent frames of `frame_hw`.
        repeats: interleaved timing repeats; ``wall_s`` is their median.
        model: ``"wan"`` (the tiny Wan stack) or ``"hunyuan"`` (the joint-attention proxy).
        modes: which of the model's modes (`MODEL_MODES`, and for Wan the edit modes of `edit_modes`) to run;
            by default all of `MODEL_MODES`, or all of `edit_modes` with `edit`; ``recorder_bytes`` needs
            ``"plain"``.
        edit: the edit benchmark (Wan only): plain against `fg.FocalGuidance` on 1 .. blocks - 1 layers.
        frame_hw: latent frame (Y, X); by default the largest of `FRAME_SIZES` that divides every N.
        num_layers: the tiny Wan transformer's blocks.
        num_double, num_single: the tiny HunyuanVideo transformer's double- and single-stream blocks.
        heads, head_dim: attention size of either.
        seed: weights and inputs.
        log: progress callback (e.g. ``print``), or None.

    Returns:
        Records with keys ``model, n_tokens, mode, grid, flops, flops_by_op, peak_bytes, recorder_bytes, wall_s,
        wall_s_all`` and the model size (``num_layers`` counts every attention block; for the joint proxy also
        ``num_double, num_single, context_rows, context_image, context_real``); edit modes add ``edit,
        edited_layers, edit_record, cache_bytes, max_abs_diff_vs_plain``.
    """
    from .testing import tiny_hunyuan_transformer, tiny_wan_transformer

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; models are {MODELS}")
    if (edit or any(_is_edit(m) for m in modes or ())) and model != "wan":
        raise ValueError("the edit benchmark runs on the Wan stack only (its joint-attention "
                         "version is not written yet)")
    if modes is None:
        modes = edit_modes(num_layers) if edit else MODEL_MODES[model]
    modes = tuple(modes)
    unknown = [m for m in modes if m not in MODEL_MODES[model] and not _is_edit(m)]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown} for {model!r}; modes are {MODEL_MODES[model]}"
                         + (" and the edit modes (fg{k}, anchor{k}, cache{k}, fg{k}_rec)" if model == "wan" else ""))
    for m in modes:
        parsed = parse_edit_mode(m)
        if parsed is not None and not 1 <= parsed[1] < num_layers:
            raise ValueError(f"edit mode {m!r}: k must be 1 .. {num_layers - 1} (the last block is the source)")
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    tokens = sorted(dict.fromkeys(int(n) for n in tokens))
    frame_hw = frame_size_for(tokens) if frame_hw is None else tuple(frame_hw)
    size: dict[str, Any] = {"heads": heads, "head_dim": head_dim}
    if model == "wan":
        transformer = tiny_wan_transformer(num_layers=num_layers, heads=heads, head_dim=head_dim, seed=seed)
        max_frames = transformer.config.rope_max_seq_len
        for n in tokens:
            if n // (frame_hw[0] * frame_hw[1]) > max_frames:
                raise ValueError(f"N={n} needs more than {max_frames} latent frames of {frame_hw[0]}x{frame_hw[1]}")
        size["num_layers"] = num_layers

        def make_inputs(n: int) -> dict[str, Any]:
            return wan_inputs(n, frame_hw, seed=seed)
    else:
        transformer = tiny_hunyuan_transformer(num_double=num_double, num_single=num_single, heads=heads,
                                               head_dim=head_dim, seed=seed)
        size |= {"num_layers": num_double + num_single, "num_double": num_double, "num_single": num_single,
                 "context_rows": JOINT_IMAGE_TOKENS + JOINT_TEXT_ROWS, "context_image": JOINT_IMAGE_TOKENS,
                 "context_real": JOINT_IMAGE_TOKENS + JOINT_TEXT_REAL}

        def make_inputs(n: int) -> dict[str, Any]:
            return hunyuan_inputs(n, frame_hw, transformer.config, seed=seed)
    say = log or (lambda _msg: None)
    records: list[dict[str, Any]] = []
    with torch.no_grad():
        for n in tokens:
            inputs = make_inputs(n)
            grid = [n // (frame_hw[0] * frame_hw[1]), *frame_hw]
            t0 = time.perf_counter()
            for mode in modes:  # warm-up
                _timed_forward(transformer, inputs, mode, model)
            measured = {mode: _measured_forward(transformer, inputs, mode, model) for mode in modes}
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(repeats):
                for mode in modes:
                    times[mode].append(_timed_forward(transformer, inputs, mode, model))
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            say(f"{model} N={n} (grid {grid[0]}x{grid[1]}x{grid[2]}): {time.perf_counter() - t0:.1f} s")
            base = measured["plain"]["peak_bytes"] if "plain" in measured else None
            reference = next((measured[m]["statistics"] for m in ("traced_ref", "traced") if m in measured), None)
            plain_out = measured["plain"]["output"] if "plain" in measured else None
            for mode in modes:
                m = measured[mode]
                record = {
                    "model": model, "n_tokens": n, "mode": mode, "grid": grid,
                    "flops": m["flops"], "peak_bytes": m["peak_bytes"],
                    "recorder_bytes": None if base is None else m["peak_bytes"] - base,
                    "wall_s": statistics.median(times[mode]), "wall_s_min": min(times[mode]),
                    "wall_s_all": times[mode], "flops_by_op": m["flops_by_op"],
                    **size, "load_avg_1min": load,
                }
                parsed = parse_edit_mode(mode)
                if parsed is not None:
                    record |= {"edit": parsed[0], "edited_layers": parsed[1], "edit_record": parsed[2],
                               "source_layer": num_layers - 1, "cache_bytes": m["cache_bytes"],
                               "max_abs_diff_vs_plain": None if plain_out is None else
                               float((m["output"] - plain_out).abs().max())}
                if mode == "naive" and reference is not None:
                    # the positive control computes the same statistics as fglens: by how much they differ
                    record["max_abs_diff_vs_fglens"] = max_abs_difference(m["statistics"], reference)
                    record["statistics_compared"] = sorted(set(m["statistics"]) & set(reference))
                records.append(record)
    return records


# -- report ------------------------------------------------------------------------------------------------
def _model(record: Mapping[str, Any]) -> str:
    return record.get("model", "wan")


def _by_model(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Records grouped by model, in `MODELS` order (records without a model are Wan's)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for m in MODELS:
        group = [r for r in records if _model(r) == m]
        if group:
            out[m] = group
    return out


def _index(records: Sequence[Mapping[str, Any]]) -> dict[tuple[int, str], Mapping[str, Any]]:
    """``{(N, mode): record}`` of one model's records."""
    return {(r["n_tokens"], r["mode"]): r for r in records}


def growth_per_doubling(records: Sequence[Mapping[str, Any]], mode: str) -> dict[int, float | None]:
    """For each N after the first: recorder-bytes growth from the previous N, per doubling of N (one model).

    ``(rb(N) / rb(N_prev)) ** (1 / log2(N / N_prev))``; None where either value is not positive.
    """
    idx = _index(records)
    ns = sorted({n for n, m in idx if m == mode})
    out: dict[int, float | None] = {}
    for lo, hi in zip(ns, ns[1:], strict=False):
        a, b = idx[lo, mode].get("recorder_bytes"), idx[hi, mode].get("recorder_bytes")
        out[hi] = (b / a) ** (1 / math.log2(hi / lo)) if a and b and a > 0 and b > 0 else None
    return out


def _ratio(idx, n: int, mode: str, key: str) -> float | None:
    a, b = idx.get((n, mode)), idx.get((n, "plain"))
    if a is None or b is None or not b[key]:
        return None
    return a[key] / b[key]


def _fmt(x: float | None, spec: str = ".3f", suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


_LABEL = {"wan": "", "hunyuan": "joint proxy: "}


def verdicts(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """``(target, passed or None when not measurable, measured numbers)`` for each performance target and model
    (the joint proxy's targets are prefixed ``joint proxy:``)."""
    out: list[tuple[str, bool | None, str]] = []
    for model, group in _by_model(records).items():
        recording, edits = _split(group)
        if recording:
            out += _model_verdicts(recording, _LABEL[model])
        if edits:
            out += _edit_verdicts(edits)
    return out


def _split(records: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(the recording benchmark's records, the edit benchmark's records) of one model, each with the plain ones;
    a part is empty when none of its modes other than plain was run."""
    plain = [r for r in records if r["mode"] == "plain"]
    recording = [r for r in records if r["mode"] != "plain" and not _is_edit(r["mode"])]
    edits = [r for r in records if _is_edit(r["mode"])]
    if not recording and not edits:
        recording = plain  # plain alone: the recording tables, as before
    return ([*plain, *recording] if recording else []), ([*plain, *edits] if edits else [])


def edit_overheads(records: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    """Per N and per quantity (``flops``, ``wall_s``, ``peak_bytes``): the overhead of FocalGuidance per edited
    layer, as a fraction of the plain step.

    ``per_k[k]`` = (fg{k}/plain - 1) / k for each measured k; ``fit`` = the least-squares slope of fg{k}/plain - 1
    over k through 0 (sum k·(r_k - 1) / sum k²), the marginal cost of one more edited layer; ``anchor`` and
    ``cache`` = anchor1/plain - 1 and cache1/plain - 1 (one layer each). None where not measured.

    Example:
        >>> recs = [{"n_tokens": 960, "mode": "plain", "flops": 100, "wall_s": 1.0, "peak_bytes": 10},
        ...         {"n_tokens": 960, "mode": "fg1", "flops": 102, "wall_s": 1.0, "peak_bytes": 10},
        ...         {"n_tokens": 960, "mode": "fg2", "flops": 104, "wall_s": 1.0, "peak_bytes": 10}]
        >>> o = edit_overheads(recs)[960]["flops"]
        >>> round(o["fit"], 4), {k: round(v, 4) for k, v in o["per_k"].items()}
        (0.02, {1: 0.02, 2: 0.02})
    """
    idx = _index(records)
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for n in sorted({n for n, _ in idx}):
        ks = sorted(p[1] for (m_n, m) in idx if m_n == n and (p := parse_edit_mode(m)) and p[0] == "fg" and not p[2])
        out[n] = {}
        for key in ("flops", "wall_s", "peak_bytes"):
            excess = {k: r - 1 for k in ks if (r := _ratio(idx, n, f"fg{k}", key)) is not None}
            single = {name: None if (r := _ratio(idx, n, f"{name}1", key)) is None else r - 1
                      for name in ("anchor", "cache")}
            out[n][key] = {
                "per_k": {k: e / k for k, e in excess.items()},
                "fit": sum(k * e for k, e in excess.items()) / sum(k * k for k in excess) if excess else None,
                **single,
            }
    return out


def edit_flops_per_layer(record: Mapping[str, Any]) -> dict[str, int]:
    """The FLOPs one edited layer adds, by the kernel formula (2·H·N·T per head dimension, for Q·K and P·V):

    * ``cache``: one more text-attention call with the source's Q and K over all 512 padded text rows,
      ``4·H·N·512·D``;
    * ``anchor``: its one bias dimension, padded with the head dimension to a multiple of 8, in the text call's
      Q·K and (zero) V columns, ``4·H·N·512·e`` with ``e = 1 + (-(D + 1) mod 8)``.
    """
    h, n, d = record["heads"], record["n_tokens"], record["head_dim"]
    extra = 1 + (-(d + 1)) % 8
    return {"cache": 4 * h * n * TEXT_ROWS * d, "anchor": 4 * h * n * TEXT_ROWS * extra}


def cache_qk_bytes(record: Mapping[str, Any]) -> int:
    """What the cache should hold for one source layer (batch 1, float32): the source's text-attention queries
    ``[N, H, D]`` and keys ``[512, H, D]`` and nothing else (no map)."""
    return 4 * (record["n_tokens"] + TEXT_ROWS) * record["heads"] * record["head_dim"]


def _edit_verdicts(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool | None, str]]:
    over = edit_overheads(records)
    big = [n for n in over if n >= FLOP_TARGET_MIN_N and over[n]["flops"]["fit"] is not None]
    out: list[tuple[str, bool | None, str]] = []
    for key, what in (("flops", "FLOP"), ("wall_s", "CPU time")):
        fits = {n: over[n][key]["fit"] for n in big}
        note = "" if key == "flops" else " (DESIGN.md §5 sets this for a GPU; CPU times are only a proxy)"
        out.append((
            f"editing {what} overhead per edited layer <= {EDIT_TARGET:.0%} of the step for N >= {FLOP_TARGET_MIN_N}"
            f" (fg{{k}} over k, least-squares slope){note}",
            all(f <= EDIT_TARGET for f in fits.values()) if fits else None,
            ", ".join(f"N={n}: {f:+.2%}" for n, f in fits.items()) or f"no N >= {FLOP_TARGET_MIN_N} measured",
        ))
    cached = [r for r in records if r.get("cache_bytes")]
    exact = all(r["cache_bytes"] == cache_qk_bytes(r) for r in cached)
    out.append((
        "the cache holds the source's Q and K only (4·(N + 512)·H·D bytes, no map)",
        exact if cached else None,
        ", ".join(f"N={n}: {r['cache_bytes'] / 2**20:.3f} MiB" for n, r in
                  sorted({r["n_tokens"]: r for r in cached}.items())) or "no cache measured",
    ))
    return out


def _model_verdicts(records: Sequence[Mapping[str, Any]], label: str) -> list[tuple[str, bool | None, str]]:
    idx = _index(records)
    ns = sorted({n for n, _ in idx})
    out: list[tuple[str, bool | None, str]] = []

    big = [n for n in ns if n >= FLOP_TARGET_MIN_N and (n, "traced") in idx and (n, "plain") in idx]
    ratios = {n: _ratio(idx, n, "traced", "flops") for n in big}
    flop_ok = bool(big) and all(r is not None and r <= FLOP_TARGET for r in ratios.values())
    out.append((
        f"{label}traced/plain FLOP ratio <= {FLOP_TARGET} for N >= {FLOP_TARGET_MIN_N}",
        flop_ok if big else None,
        ", ".join(f"N={n}: {_fmt(r, '.4f')}" for n, r in ratios.items()) or f"no N >= {FLOP_TARGET_MIN_N} measured",
    ))

    fglens = {m: growth_per_doubling(records, m) for m in ("traced", "traced_ref") if any(k[1] == m for k in idx)}
    naive = growth_per_doubling(records, "naive") if any(k[1] == "naive" for k in idx) else {}
    measured = [g for per in fglens.values() for g in per.values()]
    naive_defined = [g for g in naive.values() if g is not None]
    if not measured or any(g is None for g in measured) or not naive_defined:
        mem_ok: bool | None = None if len(ns) < 2 else False
    else:
        mem_ok = max(measured) <= GROWTH_TARGET and max(naive_defined) >= NAIVE_GROWTH_MIN
    parts = [
        f"{m}: " + ", ".join(_fmt(g, ".2f", "x") for g in per.values()) for m, per in {**fglens, "naive": naive}.items()
    ]
    out.append((
        f"{label}recorder memory growth <= {GROWTH_TARGET}x per doubling (fglens) vs ~4x (naive, >= "
        f"{NAIVE_GROWTH_MIN}x needed to show the meter sees quadratic growth)",
        mem_ok,
        "; ".join(parts) + (f" (between N = {', '.join(map(str, ns))})" if len(ns) > 1 else " (needs two N)"),
    ))
    return out


def _title(sample: Mapping[str, Any]) -> str:
    threads = f"CPU, {torch.get_num_threads()} threads"
    if _model(sample) == "hunyuan":
        rows, image, real = sample["context_rows"], sample["context_image"], sample["context_real"]
        text = rows - image
        return (
            f"fglens bench, joint proxy: HunyuanVideoTransformer3DModel, {sample['num_double']} double + "
            f"{sample['num_single']} single blocks x {sample['heads']} heads x {sample['head_dim']} dims (random "
            f"weights), one joint softmax over [video | context]; context {rows} rows = {image} image + {text} text "
            f"({real - image} real, {rows - real} masked padding), {threads}"
        )
    return (
        f"fglens bench: WanTransformer3DModel, {sample['num_layers']} blocks x {sample['heads']} heads x "
        f"{sample['head_dim']} dims (random weights), text 512 rows (12 real), 257 image tokens, {threads}"
    )


def format_report(records: Sequence[Mapping[str, Any]]) -> str:
    """The printed tables and verdict lines: one section per model, then every verdict."""
    sections = []
    for group in _by_model(records).values():
        recording, edits = _split(group)
        if recording:
            sections.append(_format_model(recording))
        if edits:
            sections.append(_format_edit(edits))
    lines = ["\n\n".join(sections), ""]
    for target, ok, numbers in verdicts(records):
        tag = "N/A " if ok is None else ("PASS" if ok else "FAIL")
        lines.append(f"{tag} {target}: {numbers}")
    return "\n".join(lines)


def _format_model(records: Sequence[Mapping[str, Any]]) -> str:
    idx = _index(records)
    ns = sorted({n for n, _ in idx})
    modes = [m for m in MODES if any(k[1] == m for k in idx)]
    growth = {m: growth_per_doubling(records, m) for m in modes if m != "plain"}
    lines: list[str] = [_title(records[0]), ""]

    ratio_modes = [m for m in ("traced", "traced_ref", "naive") if m in modes]
    head1 = f"{'':>6}{'':>12}" + "".join(f" | {m + '/plain':^23}" for m in ratio_modes)
    head1 += f" | {'recorder bytes growth/doubling':^32}"
    head2 = f"{'N':>6}{'grid':>12}" + "".join(f" | {'FLOPs':>7}{'time':>7}{'mem':>7}  " for _ in ratio_modes)
    head2 += " | " + "".join(f"{m:>10} " for m in ratio_modes)
    lines += [head1, head2, "-" * len(head2)]
    for n in ns:
        grid = next(r["grid"] for (k, _), r in idx.items() if k == n)
        row = f"{n:>6}{'x'.join(map(str, grid)):>12}"
        for m in ratio_modes:
            row += " | " + "".join(
                f"{_fmt(_ratio(idx, n, m, key), '.3f'):>7}" for key in ("flops", "wall_s", "peak_bytes")
            ) + "  "
        row += " | " + "".join(f"{_fmt(growth[m].get(n), '.2f', 'x'):>10} " for m in ratio_modes)
        lines.append(row)

    lines += ["", "absolute values (GFLOP, median seconds, peak MiB; recorder MiB = peak - plain peak):"]
    head = f"{'N':>6}" + "".join(f" | {m:^24}" for m in modes)
    sub = f"{'':>6}" + "".join(f" | {'GFLOP':>7}{'s':>8}{'MiB':>9}" for _ in modes)
    lines += [head, sub]
    for n in ns:
        row = f"{n:>6}"
        for m in modes:
            r = idx.get((n, m))
            row += " | " + ("n/a".rjust(24) if r is None else
                            f"{r['flops'] / 1e9:>7.2f}{r['wall_s']:>8.3f}{r['peak_bytes'] / 2**20:>9.2f}")
        lines.append(row)
    rec_modes = [m for m in modes if m != "plain"]
    lines.append(f"{'N':>6}" + "".join(f" | {m + ' recorder MiB':>24}" for m in rec_modes))
    for n in ns:
        row = f"{n:>6}"
        for m in rec_modes:
            r = idx.get((n, m))
            rb = None if r is None or r.get("recorder_bytes") is None else r["recorder_bytes"] / 2**20
            row += f" | {_fmt(rb, '.3f'):>24}"
        lines.append(row)

    diffs = {n: idx[n, "naive"].get("max_abs_diff_vs_fglens") for n in ns if (n, "naive") in idx}
    if any(d is not None for d in diffs.values()):
        compared = next((idx[n, "naive"].get("statistics_compared") for n in ns if (n, "naive") in idx), None)
        lines.append("naive vs fglens statistics, max |difference|: "
                     + ", ".join(f"N={n}: {_fmt(d, '.1e')}" for n, d in diffs.items())
                     + (f" (over {', '.join(compared)})" if compared else ""))
    loads = [r.get("load_avg_1min") for r in records if r.get("load_avg_1min") is not None]
    if loads:
        lines.append(f"1-minute load average during the run: {min(loads):.2f} to {max(loads):.2f} "
                     f"on {os.cpu_count()} CPUs (timings are only comparable on an otherwise idle machine)")
    return "\n".join(lines)


def _format_edit(records: Sequence[Mapping[str, Any]]) -> str:
    idx = _index(records)
    ns = sorted({n for n, _ in idx})
    modes = [m for m in dict.fromkeys(r["mode"] for r in records) if _is_edit(m)]
    sample = next(r for r in records if _is_edit(r["mode"]))
    layers, src = sample["num_layers"], sample["source_layer"]
    fy, fx = sample["grid"][1:]
    region = anchor_region((fy, fx))
    rec = [m for m in modes if parse_edit_mode(m)[2]]
    lines = [
        _title(sample).replace("fglens bench:", "fglens bench --edit: fg.FocalGuidance on", 1),
        f"edit: AnchorMask({EDIT_WORD!r} = text token {WORDS[EDIT_WORD][0]}, {int(region.sum())} of the {fy}x{fx} "
        f"latent tokens per frame, strength {EDIT_STRENGTH}) then CacheTransfer(src blocks.{src}, alpha {EDIT_ALPHA}, "
        f"from the previous step) on blocks 0..k-1, every step;",
        "each edited forward is timed in the steady state (an untimed forward at another timestep fills the cache); "
        f"Record(words={{{EDIT_WORD!r}: {WORDS[EDIT_WORD]}}}, stats=()) records nothing"
        + (f"; {', '.join(rec)} also record{'s' if len(rec) == 1 else ''} Record(stats=('word_mass',)) on every block"
           if rec else ""),
        "",
        "ratio over plain (FLOPs, time, peak memory):",
    ]
    head = f"{'N':>6}{'grid':>12}" + "".join(f" | {m:^20}" for m in modes)
    lines += [head, "-" * len(head)]
    for n in ns:
        grid = next(r["grid"] for (k, _), r in idx.items() if k == n)
        row = f"{n:>6}{'x'.join(map(str, grid)):>12}"
        for m in modes:
            flops, wall, peak = (_ratio(idx, n, m, key) for key in ("flops", "wall_s", "peak_bytes"))
            row += f" | {_fmt(flops, '.3f'):>7}{_fmt(wall, '.3f'):>7}{_fmt(peak, '.2f'):>6}"
        lines.append(row)

    over = edit_overheads(records)
    ks = sorted({k for n in over for k in over[n]["flops"]["per_k"]})
    pct = lambda x: _fmt(None if x is None else 100 * x, "+.2f")  # noqa: E731
    lines += ["", f"overhead per edited layer, % of the plain step: (fg{{k}}/plain - 1)/k; fit = least-squares slope "
              f"over k; block = fit x {layers} blocks (% of one block); anchor1, cache1: ratio - 1 with one layer"]
    cols = [f"k={k}" for k in ks] + ["fit", "block"]
    block = "".join(f"{c:>7}" for c in cols)
    head1 = f"{'':>6} | {'FLOPs':^{len(block)}} | {'time':^{len(block)}} | {'anchor1':^14} | {'cache1':^14}"
    head2 = f"{'N':>6} | {block} | {block} | {'FLOPs':>7}{'time':>7} | {'FLOPs':>7}{'time':>7}"
    lines += [head1, head2, "-" * len(head2)]
    for n in ns:
        row = f"{n:>6}"
        for key in ("flops", "wall_s"):
            o = over[n][key]
            vals = [o["per_k"].get(k) for k in ks] + [o["fit"], None if o["fit"] is None else o["fit"] * layers]
            row += " | " + "".join(f"{pct(v):>7}" for v in vals)
        for name in ("anchor", "cache"):
            row += " | " + "".join(f"{pct(over[n][key][name]):>7}" for key in ("flops", "wall_s"))
        lines.append(row)

    lines += ["", "absolute values (GFLOP, median s, peak MiB; extra = peak - plain peak; cache = the source's Q and K "
              "held between steps, invisible to the peak; max |out - plain| = the edit took effect):"]
    head = (f"{'N':>6} {'mode':<9}{'GFLOP':>9}{'s':>9}{'MiB':>9}{'extra MiB':>11}{'cache MiB':>11}"
            f"{'max |out - plain|':>19}")
    lines += [head, "-" * len(head)]
    for n in ns:
        for m in ("plain", *modes):
            r = idx.get((n, m))
            if r is None:
                continue
            extra = None if r.get("recorder_bytes") is None else r["recorder_bytes"] / 2**20
            cache = None if r.get("cache_bytes") is None else r["cache_bytes"] / 2**20
            lines.append(f"{n:>6} {m:<9}{r['flops'] / 1e9:>9.2f}{r['wall_s']:>9.3f}{r['peak_bytes'] / 2**20:>9.2f}"
                         f"{_fmt(extra, '.2f'):>11}{_fmt(cache, '.3f'):>11}"
                         f"{_fmt(r.get('max_abs_diff_vs_plain'), '.3g'):>19}")
    loads = [r.get("load_avg_1min") for r in records if r.get("load_avg_1min") is not None]
    if loads:
        lines.append(f"1-minute load average during the run: {min(loads):.2f} to {max(loads):.2f} "
                     f"on {os.cpu_count()} CPUs (timings are only comparable on an otherwise idle machine)")
    return "\n".join(lines)


def joint_recompute_flops(record: Mapping[str, Any]) -> dict[str, int]:
    """The Q·K FLOPs that fglens' joint recorder spends per forward recomputing video-query x context-key
    logits (2·H·N·D per key and block), split by context segment: image tokens, real text, masked padding.

    fglens recomputes logits against the unmasked context keys only (masked padding has probability exactly
    0, and the row log-sum-exp comes free from the model's own kernel); the "masked padding" entry is the work
    that skipping them saves. This is the analytic size of that work, to set against the measured ``aten.bmm``
    overhead.
    """
    per_key = 2 * record["heads"] * record["n_tokens"] * record["head_dim"] * record["num_layers"]
    image, real, rows = record["context_image"], record["context_real"], record["context_rows"]
    return {"image": per_key * image, "real text": per_key * (real - image), "masked padding": per_key * (rows - real)}


def top_flop_ops(record: Mapping[str, Any], plain: Mapping[str, Any], k: int = 6) -> Iterator[tuple[str, int]]:
    """The ops whose FLOPs grew most from `plain` to `record` (for explaining an overhead)."""
    ops = set(record["flops_by_op"]) | set(plain["flops_by_op"])
    diff = {op: record["flops_by_op"].get(op, 0) - plain["flops_by_op"].get(op, 0) for op in ops}
    yield from sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:k]


def parse_tokens(text: str) -> list[int]:
    """``"960,1920"`` -> ``[960, 1920]``."""
    try:
        tokens = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError as exc:
        raise ValueError(f"--tokens must be comma-separated integers, got {text!r}") from exc
    if not tokens:
        raise ValueError("--tokens names no token count")
    return tokens


def main(args: argparse.Namespace) -> int:
    """The ``fglens bench`` command: run, print the tables and verdicts, optionally write JSON.

    ``args.model`` picks ``wan``, ``hunyuan`` (the joint-attention proxy) or ``all`` (the default).
    Returns 0 once the benchmark has run (the verdicts are reported, not turned into an exit status),
    2 for unusable arguments.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    choice = getattr(args, "model", None) or "all"
    try:
        tokens = parse_tokens(args.tokens)
        frame_size_for(tokens)
        if args.repeats < 1:
            raise ValueError("--repeats must be at least 1")
        if choice != "all" and choice not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)} or all, got {choice!r}")
    except ValueError as exc:
        print(f"fglens bench: {exc}", file=sys.stderr)
        return 2
    edit = bool(getattr(args, "edit", False))
    if edit and choice == "hunyuan":
        print("fglens bench: --edit runs on the Wan stack only (no joint-attention edit benchmark yet)",
              file=sys.stderr)
        return 2
    models = ("wan",) if edit else MODELS if choice == "all" else (choice,)
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    try:
        for model in models:
            records += run_benchmark(tokens, args.repeats, model=model, edit=edit,
                                     log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"fglens bench: {exc}", file=sys.stderr)
        return 2
    print(format_report(records))
    for model, group in _by_model(records).items():
        idx = _index(group)
        for (n, mode), r in sorted(idx.items()):
            ratio = _ratio(idx, n, mode, "flops")
            if mode == "traced" and ratio is not None and ratio > FLOP_TARGET:
                ops = ", ".join(f"{op} {d / 1e6:+.1f} MFLOP" for op, d in top_flop_ops(r, idx[n, "plain"]) if d)
                print(f"  {_LABEL[model]}traced FLOP overhead at N={n} by op: {ops}")
                if model == "hunyuan":
                    split = joint_recompute_flops(r)
                    done = split["image"] + split["real text"]
                    print(f"    of which Q·K of the video queries against the unmasked context keys "
                          f"(2·H·N·D per key and block, {r['num_layers']} blocks): {done / 1e6:.1f} MFLOP = image "
                          f"{split['image'] / 1e6:.1f} + real text {split['real text'] / 1e6:.1f} "
                          f"(masked padding skipped: {split['masked padding'] / 1e6:.1f})")
    edits = [r for r in records if r.get("edit") == "fg" and not r.get("edit_record")]
    if edits:
        top = max(edits, key=lambda r: (r["n_tokens"], r["edited_layers"]))
        plain = _index(records)[top["n_tokens"], "plain"]
        ops = ", ".join(f"{op} {d / 1e6:+.1f} MFLOP" for op, d in top_flop_ops(top, plain) if d)
        per = edit_flops_per_layer(top)
        print(f"  {top['mode']} FLOP overhead at N={top['n_tokens']} by op: {ops}; by formula per edited layer: "
              f"cache {per['cache'] / 1e6:.1f} + anchor {per['anchor'] / 1e6:.1f} MFLOP")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)
        print(f"wrote {len(records)} records to {args.json}")
    return 0
