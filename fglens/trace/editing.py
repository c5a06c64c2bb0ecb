"""Applying interventions to one attention call, inside the model's own fused kernel.

All logit biases of the active interventions are concatenated into extra head dimensions of the queries and
keys (zero columns in the values): ``[q | b_q] · [k | b_k / s] · s = s·q·k + b_q·b_k``, with the softmax scale
`s` passed explicitly. One fused call then computes the biased attention; no N×T bias is ever built. Output
edits follow in composition order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..adapters.base import Segments, Site
from ..adapters.prompt import PipelineCall, words_for
from .context import Bias, EditCall, ForwardContext
from .probs import key_bias, row_logsumexp


class Editor:
    """Binds an intervention to the traced models and applies it call by call."""

    def __init__(self, edit: Any, per_model: Sequence[Sequence[str]], site_kinds: set[str], heads: int | None = None):
        from ..interventions.base import Intervention

        if not isinstance(edit, Intervention):
            raise TypeError(f"edit must be an fg intervention (fg.AnchorMask, fg.CacheTransfer, ...), got "
                            f"{type(edit).__name__}")
        self.edit = edit
        self.parts = edit.parts()
        layers = [name for model in per_model for name in model]
        for part in self.parts:
            part.bind(layers, per_model, site_kinds)  # unknown layers, impossible pairings: errors here
            self._check_scope(part, heads=heads)  # heads the model does not have: an error here too
        self.words: dict[str, list[int]] = {}
        self.prompt_real: dict[str, int | None] = {}

    @staticmethod
    def _check_scope(part: Any, **bounds: Any) -> None:
        from ..interventions.scope import Where

        where = getattr(part, "where", None)
        if isinstance(where, Where):
            where.check(owner=type(part).__name__, **bounds)

    def start_run(self, call: PipelineCall | None, known: Mapping[str, Sequence[int]] | None = None,
                  forward: ForwardContext | None = None) -> None:
        """Resolve the words every part needs in this run's prompt (a missing word is an error now), and check the
        parts' steps and frames against the run's schedule and latent grid (`forward`, the run's first forward).

        `known` maps labels to token positions given by the user (a bare transformer has no prompt to read).
        """
        if forward is not None:
            for part in self.parts:
                self._check_scope(part, num_steps=forward.num_steps, frames=forward.grid[0])
        needed = self.edit.requires().get("words", [])
        known = dict(known or {})
        missing = [w for w in needed if w not in known]
        self.words = {w: list(known[w]) for w in needed if w in known}
        self.prompt_real = call.n_real() if call is not None else {}
        if missing:
            self.words.update(words_for(call, missing))
        for part in self.parts:
            part.start_run(self.words)

    def active(self, site: Site, forward: ForwardContext) -> list[Any]:
        return [p for p in self.parts if p.applies(site, forward)]

    def text_real(self, site: Site, forward: ForwardContext, n_keys: int) -> int | None:
        """For a separate text call (Wan): the index from which its keys are pads made from zero embeddings, or None.

        Those pads are identical keys and values by construction: the text embedder, ``to_k`` (with its RMS norm)
        and ``to_v`` act row by row on identical (zero) rows, with no position term. fglens vouches for the zero
        rows only where it knows where they start: for a bare transformer from its inputs
        (`ForwardContext.text_lengths`: the rows after each item's last non-zero one), for a pipeline from the
        prompt's token count, because Wan pipelines (``_get_t5_prompt_embeds``) cut the encoder output there and
        pad it with zeros. The pipeline's count is batch item 0's, so it is used only when each branch of the
        call has one item (a list of prompts may hold a longer one), and never for a branch whose embeddings the
        user passed in (`PipelineCall.n_real` is None there). Host values only: nothing is read from the device.
        """
        if site.kind != "text":
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
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        """Run the call with the parts' edits; return (output, row LSE or None, what recorders need to know)."""
        query, key, value = qkv
        scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
        call = EditCall(
            site=site, forward=forward, query=query, key=key, value=value, scale=scale,
            video_rows=segments.video_queries if segments else (0, query.shape[1]),
            text_keys=segments.text if segments else ((0, key.shape[1]) if site.kind == "text" else (0, 0)),
            image_keys=segments.image if segments else ((0, key.shape[1]) if site.kind == "image" else None),
            kernel=lambda q, k, v, **overrides: run(q, k, v, **overrides), words=self.words,
            key_bias=key_bias(attn_mask, key.shape[1]) if site.kind == "joint" else None,
            text_real=self.text_real(site, forward, key.shape[1]),
        )
        for part in parts:
            part.observe(call)
        biases = [b for part in parts for b in part.biases(call)]
        need_lse = need_lse or any(getattr(part, "needs_lse", lambda c: False)(call) for part in parts)
        q2, k2, v2 = augment(query, key, value, biases, scale) if biases else (query, key, value)
        overrides = {"scale": scale} if biases else {}
        fast = run_with_lse(q2, k2, v2, **overrides) if need_lse else None
        if fast is not None:
            out, lse = fast
        else:
            out = run(q2, k2, v2, **overrides)
            lse = row_logsumexp(q2, k2, 4096, scale, call.key_bias) if need_lse else None
        out = out[..., : value.shape[-1]] if biases else out
        call.lse, call.biases = lse, biases
        for part in parts:
            out = part.edit_output(call, out)
        return out, lse, {"biases": biases, "mixes": call.mixes, "joint_mixes": call.joint_mixes}


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


def bias_logits(
    biases: Sequence[Bias], rows: slice, cols: slice, items: list[int] | None = None
) -> torch.Tensor | None:
    """The summed bias ``[B, H, n, T]`` of `biases` on query rows `rows` and key columns `cols` (for recorders)."""
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
