"""Applying interventions to one attention call, inside the model's own fused kernel.

All logit biases of the active interventions are concatenated into extra head dimensions of the queries and
keys (zero columns in the values): ``[q | b_q] · [k | b_k / s] · s = s·q·k + b_q·b_k``, with the softmax scale
`s` passed explicitly. One fused call then computes the biased attention; no N×T bias is ever built. On joint
attention, where the biases declare their few key columns and the scope covers the whole call, the bias is
computed on those columns only and merged through the row log-sum-exp (`fglens.trace.split`). Output edits follow
in composition order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..adapters.base import Segments, Site
from ..adapters.prompt import PipelineCall, words_for
from ..core.call import Bias, EditCall, ForwardContext
from ..core.probs import key_bias
from ..core.protocol import Intervention
from ..core.scope import Where
from .kernels import run_call
from .split import bias_spans, split_call


class Editor:
    """Binds an intervention to the traced models and applies it call by call."""

    def __init__(self, edit: Any, per_model: Sequence[Sequence[str]], site_kinds: set[str], heads: int | None = None):
        if not isinstance(edit, Intervention):
            raise TypeError(f"edit must be an fg intervention (fg.AnchorMask, fg.CacheTransfer, ...), got "
                            f"{type(edit).__name__}")
        self.edit = edit
        layers = [name for model in per_model for name in model]
        # this trace's own bound copies (unknown layers, impossible pairings: errors here); `edit` is not changed
        self.parts = [part.bound(layers, per_model, site_kinds) for part in edit.parts()]
        for part in self.parts:
            self._check_scope(part, heads=heads)  # heads the model does not have: an error here too
        self.words: dict[str, list[int]] = {}
        self.item_words: list[dict[str, dict[str, list[int]]]] = []
        self._row_words: dict[tuple[str, ...], list[dict[str, list[int]]]] = {}
        self.prompt_real: dict[str, int | None] = {}

    @staticmethod
    def _check_scope(part: Any, **bounds: Any) -> None:
        where = getattr(part, "where", None)
        if isinstance(where, Where):
            where.check(owner=type(part).__name__, **bounds)

    def start_run(self, calls: Sequence[PipelineCall | None], known: Mapping[str, Sequence[int]] | None = None,
                  forward: ForwardContext | None = None) -> None:
        """Resolve the words every part needs in the prompts of this run's batch items (`calls`: the pipeline call
        as each item of a CFG branch saw it, or one call for every item; a missing word is an error now), and check
        the parts' steps and frames against the run's schedule and latent grid (`forward`, the run's first forward).

        `known` maps labels to token positions given by the user (a bare transformer has no prompt to read): they
        hold for every item and both branches.
        """
        if forward is not None:
            for part in self.parts:
                self._check_scope(part, num_steps=forward.num_steps, frames=forward.grid[0])
        needed = self.edit.requires().get("words", [])
        known = {w: list(known[w]) for w in needed if w in (known or {})}
        missing = [w for w in needed if w not in known]
        # per item: the cond branch reads the item's prompt; the uncond branch its negative prompt, each word at its
        # own positions there and none where the negative prompt lacks it
        self.item_words = []
        for call in calls:
            cond, uncond = dict(known), dict(known)
            if missing:
                cond.update(words_for(call, missing))
                if call is not None and call.negative is not None:
                    uncond.update(call.negative.locate(missing, missing_ok=True))
            self.item_words.append({"cond": cond, "uncond": uncond})
        self.words = self.item_words[0]["cond"]
        self.prompt_real = calls[0].n_real() if len(calls) == 1 and calls[0] is not None else {}
        self._row_words: dict[tuple[str, ...], list[dict[str, list[int]]]] = {}
        for part in self.parts:
            part.start_run(self.words)

    def row_words(self, branches: tuple[str, ...]) -> list[dict[str, list[int]]]:
        """The words' positions for each batch row of a forward: row i is item r of its branch (the r-th row of that
        branch), reading that item's prompt (cond) or negative prompt (uncond)."""
        if branches not in self._row_words:
            rows, seen = [], {}
            for b in branches:
                r = seen[b] = seen.get(b, -1) + 1
                item = self.item_words[min(r, len(self.item_words) - 1)]
                rows.append(item.get(b, item["cond"]))
            self._row_words[branches] = rows
        return self._row_words[branches]

    def active(self, site: Site, forward: ForwardContext) -> list[Any]:
        return [p for p in self.parts if p.applies(site, forward)]

    def text_real(self, site: Site, forward: ForwardContext, n_keys: int, masked: bool = False) -> int | None:
        """For a separate text call (Wan): the index from which its keys are pads made from zero embeddings, or None.

        Those pads are identical keys and values by construction: the text embedder, ``to_k`` (with its RMS norm)
        and ``to_v`` act row by row on identical (zero) rows, with no position term. fglens vouches for the zero
        rows only where it knows where they start: for a bare transformer from its inputs
        (`ForwardContext.text_lengths`: the rows after each item's last non-zero one), for a pipeline from the
        prompt's token count, because Wan pipelines (``_get_t5_prompt_embeds``) cut the encoder output there and
        pad it with zeros. The pipeline's count is batch item 0's, so it is used only when each branch of the
        call has one item (a list of prompts may hold a longer one), and never for a branch whose embeddings the
        user passed in (`PipelineCall.n_real` is None there). Never for a call with an attention mask (`masked`,
        LTX-Video): its pads are masked out rather than identical, and the mask, not a pad count, says which keys
        count. Host values only: nothing is read from the device.
        """
        if site.kind != "text" or masked:
            return None
        if forward.text_lengths is not None:
            known = list(forward.text_lengths)
        elif len(set(forward.branches)) == len(forward.branches):
            known = [self.prompt_real.get(b) for b in forward.branches]
        else:
            return None
        if not known or any(n is None for n in known):
            return None
        return min(n_keys, max(known))

    def apply(
        self,
        parts: list[Any],
        site: Site,
        forward: ForwardContext,
        qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        run: Callable[..., torch.Tensor],
        run_with_lse: Callable[..., Any],
        scale: float | None,
        segments: Segments | None,
        need_lse: bool,
        attn_mask: torch.Tensor | None = None,
        kernel_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, EditCall]:
        """Run the call with the parts' edits; return (output, row LSE or None, the `EditCall`: its biases and mixes
        are what recorders need to know). `attn_mask`: the call's mask as the video rows' logits get it (a joint
        site's key mask, `Adapter.joint_key_mask`); `kernel_mask`: the mask the kernel got, when it differs (one
        with a query dimension), which re-runs of the kernel on some of the rows take, sliced with them."""
        kernel_mask = attn_mask if kernel_mask is None else kernel_mask
        query, key, value = qkv
        scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
        call = EditCall(
            site=site, forward=forward, query=query, key=key, value=value, scale=scale,
            video_rows=segments.video_queries if segments else (0, query.shape[1]),
            text_keys=segments.text if segments else ((0, key.shape[1]) if site.kind == "text" else (0, 0)),
            image_keys=segments.image if segments else ((0, key.shape[1]) if site.kind == "image" else None),
            kernel=lambda q, k, v, **overrides: run(q, k, v, **overrides), words=self.words,
            row_words=self.row_words(tuple(forward.branches)),
            key_bias=key_bias(attn_mask, key.shape[1]) if site.kind == "joint" else None,
            attn_mask=attn_mask if site.kind != "joint" else None,
            image_grid=segments.image_grid if segments else None,
            text_real=self.text_real(site, forward, key.shape[1], masked=attn_mask is not None),
        )
        for part in parts:
            part.observe(call)
        biased = [(part, part.biases(call)) for part in parts]
        biases = [b for _, bs in biased for b in bs]
        cells = _cells(call, [part for part, bs in biased if bs]) if biases else None
        if cells is not None and not cells.any():
            biases = []  # the scope selects no row, head or item of this call: the model's own kernel, untouched
        need_lse = need_lse or any(part.needs_lse(call) for part in parts)
        spans = bias_spans(biases, key.shape[1]) if biases and site.kind == "joint" and cells is None else None
        if spans is not None:  # joint attention, the whole call in scope: the bias where it acts (`split`)
            out, lse = split_call(call, biases, spans, run, run_with_lse, need_lse, kernel_mask)
        elif biases and cells is not None:  # a frame / head / branch scope: rows outside it stay the model's own
            out, lse = _scoped_call(call, [part for part, bs in biased if bs], cells,
                                    augment(query, key, value, biases, scale), run, run_with_lse, need_lse, kernel_mask)
        else:
            q2, k2, v2 = augment(query, key, value, biases, scale) if biases else (query, key, value)
            out, lse = run_call(run, run_with_lse, q2, k2, v2, need_lse, scale, call.key_bias,
                                **({"scale": scale} if biases else {}))
        out = out[..., : value.shape[-1]] if biases else out
        call.lse, call.biases = lse, biases
        for part in parts:
            out = part.edit_output(call, out)
        return out, lse, call


def _cells(call: EditCall, parts: Sequence[Any]) -> np.ndarray | None:
    """Host-side cover of the biased parts' scopes over (batch item, latent frame, head): ``[B, F, H]`` bool, or None
    when it is the whole call. Host values only (the scopes' lists and the call's shapes)."""
    b, _, h, _ = call.query.shape
    frames = call.forward.grid[0]
    cover = np.zeros((b, frames, h), dtype=bool)
    for part in parts:
        where = getattr(part, "where", None)
        if not isinstance(where, Where):
            return None
        items = [i for i, br in enumerate(call.forward.branches) if where.has_branch(br)]
        chosen = range(frames) if where.frames is None else [f for f in where.frames if f < frames]
        heads = range(h) if where.heads is None else [x for x in where.heads if x < h]
        cover[np.ix_(items, list(chosen), list(heads))] = True
    return None if cover.all() else cover


def _scoped_call(call: EditCall, parts: Sequence[Any], cells: np.ndarray, qkv2, run, run_with_lse, need_lse: bool,
                 attn_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The biased call where the scope covers only some frames, heads or batch items: the model's own call for every
    row, the biased one over the span of rows of the covered frames, and the biased values kept only in the covered
    (item, row, head) cells, so every other output (and row LSE) is the model's own, bit for bit."""
    query, key, value = call.query, call.key, call.value
    q2, k2, v2 = qkv2  # with the biases as extra head dimensions (`augment`)
    nq = query.shape[1]
    frames = np.flatnonzero(cells.any(axis=(0, 2)))
    per_frame = call.forward.grid[1] * call.forward.grid[2]
    r0 = call.video_rows[0]
    a, b = r0 + int(frames[0]) * per_frame, r0 + (int(frames[-1]) + 1) * per_frame
    span = {"scale": call.scale}
    if attn_mask is not None and attn_mask.dim() >= 2 and attn_mask.shape[-2] == nq and nq > 1:
        span["attn_mask"] = attn_mask[..., a:b, :]  # a mask with a query dim follows the rows
    out, lse = run_call(run, run_with_lse, query, key, value, need_lse, call.scale, call.key_bias)
    sub, sub_lse = run_call(run, run_with_lse, q2[:, a:b], k2, v2, need_lse, call.scale, call.key_bias, **span)
    inside = sum(call.rows_mask(part.where) for part in parts)[:, a:b] > 0  # [B, b - a, H], on the device
    edited = out.clone()
    edited[:, a:b] = torch.where(inside[..., None], sub[..., : value.shape[-1]], out[:, a:b])
    if lse is not None and sub_lse is not None:
        lse = lse.clone()
        lse[..., a:b] = torch.where(inside.transpose(1, 2), sub_lse, lse[..., a:b])
    return edited, lse


def augment(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, biases: Sequence[Bias], scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values with the biases as extra head dimensions (padded to a multiple of 8)."""
    bq = torch.cat([b.q for b in biases], -1)
    bk = torch.cat([b.k for b in biases], -1) / scale
    extra = bq.shape[-1]
    pad = (-(query.shape[-1] + extra)) % 8
    if pad:
        bq = torch.cat([bq, bq.new_zeros((*bq.shape[:-1], pad))], -1)
        bk = torch.cat([bk, bk.new_zeros((*bk.shape[:-1], pad))], -1)
    q2 = torch.cat([query, bq.to(query.dtype)], -1)
    k2 = torch.cat([key, bk.to(key.dtype)], -1)
    v2 = torch.cat([value, value.new_zeros((*value.shape[:-1], extra + pad))], -1)
    return q2, k2, v2
