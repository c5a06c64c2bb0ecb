"""The values the tracer hands to recorders and interventions: one forward, one attention call, a logit bias."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..adapters.base import ImageGrid, Segments, Site

if TYPE_CHECKING:
    from .probs import Mix
    from .scope import Where


@dataclass
class ForwardContext:
    """Where the sampler is when the transformer runs.

    Attributes:
        step: index of the denoising step (0-based), read from the pipeline's scheduler.
        num_steps: length of the schedule, or None for a bare transformer.
        timestep: the step's timestep per batch item, a device tensor (never read on the host by hooks).
        branches: the CFG branch of each batch item, e.g. ``("cond",)`` or ``("uncond", "cond")``.
        grid: latent grid (frames, y, x) of the video tokens.
        prefix: which transformer of the pipeline runs ("" or "transformer_2.").
        text_lengths: real text length per batch item, when read from the inputs (bare transformers).
    """

    step: int
    num_steps: int | None
    timestep: torch.Tensor
    branches: tuple[str, ...]
    grid: tuple[int, int, int]
    prefix: str = ""
    text_lengths: list[int] | None = None

    @property
    def n_tokens(self) -> int:
        f, y, x = self.grid
        return f * y * x


@dataclass
class AttentionCall:
    """One call of the attention kernel at a site, as the model makes it (layout ``[B, S, H, D]``).

    `output` is set once the kernel has run; it is the per-call output before `to_out`. The tracer fills the
    other fields the recorders read.
    """

    site: Site
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    forward: ForwardContext
    output: torch.Tensor | None = None
    #: the kernel call's softmax scale (None: the kernel's default, 1/sqrt(D))
    scale: float | None = None
    #: joint sites: where video, image and text sit (`Segments`), and the call's attention mask
    segments: Segments | None = None
    attn_mask: torch.Tensor | None = None
    #: the row log-sum-exp [B, H, S_q] of the call as it ran, when it was computed (joint sites)
    lse: torch.Tensor | None = None
    #: what interventions did to the call: their summed logit biases and the cache transfers' mixes
    biases: list[Bias] = field(default_factory=list)
    mixes: list[Mix] = field(default_factory=list)


@dataclass
class Bias:
    """A low-rank logit term for one call: ``logits[b, h, n, j] += Σ_r q[b, n, h, r] · k[b, j, h, r]``.

    `q` is ``[B, N_queries, H, R]`` and `k` ``[B, N_keys, H, R]``, in logit units (the kernel's softmax scale
    is not applied to them). `q` is zero outside the call's video query rows (interventions scope their rows with
    `EditCall.rows_mask`, which covers video rows only).
    """

    q: torch.Tensor
    k: torch.Tensor
    #: the key ranges ``(start, stop)`` outside which `k` is zero, when the intervention knows them (host values):
    #: on joint attention the bias is then computed on those columns only (`fglens.trace.split`)
    cols: tuple[tuple[int, int], ...] | None = None


@dataclass
class EditCall:
    """One attention call as interventions see it (layout ``[B, S, H, D]``)."""

    site: Site
    forward: ForwardContext
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    scale: float
    #: query rows of the video tokens, and key columns of the text tokens, in this call
    video_rows: tuple[int, int]
    text_keys: tuple[int, int]
    image_keys: tuple[int, int] | None
    #: run the model's kernel on other tensors (same arguments otherwise): ``kernel(q, k, v) -> [B, S, H, D]``
    kernel: Callable[..., torch.Tensor]
    words: dict[str, list[int]] = field(default_factory=dict)
    #: the words' positions in each batch row's own text keys: its prompt's for a ``cond`` row, its negative
    #: prompt's for an ``uncond`` one (a word absent from it has none there); None: `words` for every row
    row_words: list[dict[str, list[int]]] | None = None
    #: the attention mask as an additive key bias [B, S_k] (joint attention), or None
    key_bias: torch.Tensor | None = None
    #: a separate call's attention mask as the model passed it to its kernel (LTX-Video's text padding mask,
    #: ``[B, H, 1, T]`` additive), or None; the kernel (`kernel`) applies it unless given another ``attn_mask=``
    attn_mask: torch.Tensor | None = None
    #: where the image-condition keys (`image_keys`) sit in the reference image, when the adapter knows
    image_grid: ImageGrid | None = None
    #: a separate text call (Wan): the keys from this index on are pad keys made from zero embeddings, identical
    #: keys and values by construction (see `Editor.text_real`); None when fglens cannot vouch for that
    text_real: int | None = None
    #: set once the kernel has run: the row log-sum-exp [B, H, S_q] (when asked for) and the summed biases
    lse: torch.Tensor | None = None
    biases: list = field(default_factory=list)
    #: filled by cache transfers for recorders: what each did to this call's text probabilities (`Mix`), in order
    mixes: list[Mix] = field(default_factory=list)
    _rows: dict = field(default_factory=dict, repr=False)

    def rows_mask(self, where: Where) -> torch.Tensor:
        """``[B, N_queries, H]`` float mask of the query rows, heads and batch items inside `where` (built once per
        call and scope)."""
        if where not in self._rows:
            self._rows[where] = self._build_rows_mask(where)
        return self._rows[where]

    def _build_rows_mask(self, where: Where) -> torch.Tensor:
        b, nq, h, _ = self.query.shape
        mask = self.query.new_zeros((b, nq, h), dtype=torch.float32)
        r0, r1 = self.video_rows
        frames, ny, nx = self.forward.grid
        per_frame = ny * nx
        items = [i for i, br in enumerate(self.forward.branches) if where.has_branch(br)]
        heads = list(range(h)) if where.heads is None else [x for x in where.heads if 0 <= x < h]
        chosen = range(frames) if where.frames is None else [f for f in where.frames if 0 <= f < frames]
        for i in items:
            for f in chosen:
                a = r0 + f * per_frame
                if heads == list(range(h)):
                    mask[i, a : a + per_frame] = 1.0
                else:
                    for x in heads:
                        mask[i, a : a + per_frame, x] = 1.0
        return mask
