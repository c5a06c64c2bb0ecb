"""Generic causal tools: `fg.Scale` (scale a word's attention) and `fg.Ablate` (remove a key segment)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..core.protocol import Bias, EditCall, Intervention
from ..core.scope import Where, finite, resolve_layers

#: a logit offset that makes a key's probability exactly 0 in float32 (exp(-1e4) underflows)
NEG = -1.0e4


class _Scoped(Intervention):
    """Shared scoping: the layers of `where` resolved against the traced models."""

    kinds: frozenset[str] = frozenset()

    def bind(self, layers, per_model, site_kinds) -> None:
        self._layers = None if self.where.layers is None else set(resolve_layers(self.where.layers, per_model))

    def applies(self, site, forward) -> bool:
        return (
            site.kind in self.kinds
            and (self._layers is None or site.layer in self._layers)
            and self.where.has_step(forward.step, forward.num_steps)
            and any(self.where.has_branch(b) for b in forward.branches)
        )


def word_columns(call: EditCall, words: Sequence[str], n_keys: int) -> torch.Tensor:
    """``[B, n_keys]`` indicator of the key columns of `words` in each batch item's text keys (do not modify it):
    the item's prompt's positions for a ``cond`` item, its negative prompt's for an ``uncond`` one
    (`EditCall.row_words`; a word absent from the negative prompt has no column there).

    Built once per layout and device and then reused: building it on the host in every edited call would be a
    host -> device copy (a stream synchronisation on CUDA) per edited layer and step.
    """
    return _columns(n_keys, column_sets(call, words), call.key.device)


def column_sets(call: EditCall, words: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Per batch item, the key columns of `words` (host values: an edit whose words have no column anywhere in the
    call adds no bias, so the call keeps the model's own kernel, bit for bit)."""
    t0, t1 = call.text_keys
    rows = call.row_words or [call.words] * len(call.forward.branches)
    return tuple(tuple(sorted({t0 + p for w in words for p in row.get(w, []) if t0 + p < t1})) for row in rows)


@functools.lru_cache(maxsize=256)
def _columns(n_keys: int, columns: tuple[tuple[int, ...], ...], device: torch.device) -> torch.Tensor:
    col = torch.zeros(len(columns), n_keys)
    for i, item in enumerate(columns):
        col[i, list(item)] = 1.0
    return col.to(device)


class Scale(_Scoped):
    """Multiply the attention to `words` by `factor` and renormalise each row (a logit offset of log factor).

    Example:
        >>> import fglens as fg
        >>> fg.Scale(["dog"], 2.0, where=fg.Where(layers=[1, 2])).spec()["factor"]
        2.0
    """

    kinds = frozenset({"text", "joint"})

    def __init__(self, words: Sequence[str] | str, factor: float, where: Where | None = None):
        self.words = [words] if isinstance(words, str) else list(words)
        factor = finite(factor, "Scale factor")
        if factor < 0:
            raise ValueError(f"Scale factor must be a finite number >= 0; got {factor}")
        self.factor = factor
        self.where = where or Where()

    def requires(self) -> dict[str, Any]:
        return {"words": list(self.words)}

    def spec(self) -> dict[str, Any]:
        return {"type": "Scale", "words": self.words, "factor": self.factor, "where": _where_spec(self.where)}

    def biases(self, call: EditCall) -> list[Bias]:
        if self.factor == 1.0 or not any(column_sets(call, self.words)):
            return []
        offset = math.log(self.factor) if self.factor > 0 else NEG
        rows = call.rows_mask(self.where)[..., None] * offset  # [B, Nq, H, 1]
        cols = word_columns(call, self.words, call.key.shape[1])  # [B, S]
        k = cols[:, :, None, None].expand(-1, -1, call.key.shape[2], 1)
        return [Bias(rows, k, cols=(call.text_keys,))]


class Ablate(_Scoped):
    """Remove a key segment's contribution to the video tokens.

    Wan (separate softmaxes): the output of the segment's attention call is zeroed. Joint attention
    (HunyuanVideo, CogVideoX): the segment's keys get probability 0 and each row is renormalised over the rest.

    Example:
        >>> import fglens as fg
        >>> fg.Ablate("image").segment
        'image'
    """

    def __init__(self, segment: str, where: Where | None = None):
        if segment not in ("image", "text"):
            raise ValueError(f"Ablate segment must be 'image' or 'text', got {segment!r}")
        self.segment = segment
        self.kinds = frozenset({segment, "joint"})
        self.where = where or Where()

    def spec(self) -> dict[str, Any]:
        return {"type": "Ablate", "segment": self.segment, "where": _where_spec(self.where)}

    def biases(self, call: EditCall) -> list[Bias]:
        if call.site.kind != "joint":
            return []
        span = call.text_keys if self.segment == "text" else call.image_keys
        if span is None or span[0] == span[1]:
            return []
        cols = torch.zeros(call.key.shape[1], device=call.key.device)
        cols[span[0] : span[1]] = 1.0
        rows = call.rows_mask(self.where)[..., None] * NEG
        return [Bias(rows, cols[None, :, None, None].expand(call.key.shape[0], -1, call.key.shape[2], 1),
                     cols=(span,))]

    def edit_output(self, call: EditCall, out: torch.Tensor) -> torch.Tensor:
        if call.site.kind == "joint":
            return out
        keep = 1.0 - call.rows_mask(self.where)[..., None]
        return out * keep.to(out.dtype)


def _where_spec(where: Where) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in vars(where).items()}
