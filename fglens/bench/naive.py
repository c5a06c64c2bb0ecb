"""The positive controls: fglens' statistics computed the obvious way, by materialising every probability matrix
whole (`NaiveRecorder` for Wan, `NaiveJointRecorder` for HunyuanVideo's joint attention). Their memory grows as
N²; the benchmark runs them to show that its meter sees quadratic growth where there is some, and compares their
statistics with fglens' to show both compute the same quantities."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .workload import TEXT_ROWS


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

