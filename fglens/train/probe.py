"""Where each video query looks in the text, differentiably: the training losses' view of an attention call.

A `TextProbe` is an observer of `fg.trace` (``Trace(..., observers=[probe])``): it keeps, per forward, the live
`AttentionCall` of the chosen layers' text sites (Wan's cross-attention to the prompt) and joint sites
(HunyuanVideo / CogVideoX: one softmax over video, image and text keys). `text_distribution` turns a call into the
distribution of each video query over the text keys, post-edit (the interventions' logit biases, then the cache
transfers' mixes, as the recorders see it); on a joint call the keys that are not text are one more column, so that
each row is a whole distribution. `log_text_distribution` gives the log of an unedited call's, with gradients.

Example:
    >>> import torch, fglens as fg
    >>> from fglens.trace.tracer import Trace
    >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
    >>> probe = TextProbe(["blocks.1"])
    >>> with Trace(pipe, observers=[probe]):
    ...     _ = pipe(**fg.testing.tiny_call_kwargs("wan", steps=1))
    >>> p = text_distribution(probe.calls["blocks.1"])
    >>> p.shape[-1], bool(torch.allclose(p.sum(-1), torch.ones(())))
    (512, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ..adapters.base import Site
from ..core.call import AttentionCall, ForwardContext
from ..core.probs import bias_logits, collapse_padding, key_bias, key_logits, mask_bias, padding_is_uniform

#: the site kinds whose attention to the text a probe reads
KINDS = ("text", "joint")


class TextProbe:
    """Keeps the last forward's attention calls of `layers`' text and joint sites (``calls[layer]``), live."""

    def __init__(self, layers: Iterable[str]):
        self.layers = set(layers)
        self.calls: dict[str, AttentionCall] = {}
        self.ctx: ForwardContext | None = None

    def begin_forward(self, ctx: ForwardContext) -> None:
        self.calls, self.ctx = {}, ctx

    def wants(self, site: Site) -> bool:
        return site.layer in self.layers and site.kind in KINDS

    def observe(self, call: AttentionCall) -> None:
        self.calls[call.site.layer] = call

    def end_forward(self) -> None:
        pass


def real_columns(key: torch.Tensor, lengths: Sequence[int] | None) -> int | None:
    """How many text key columns to keep before Wan's padding: the longest real prompt of the batch (`lengths`, from
    the forward's inputs: the adapter's ``text_lengths``), provided every key from there on is the same (the pads'
    keys are then exactly one column's worth); None (keep all keys) otherwise or when fewer than two pads remain.
    The prompt's length decides, never the keys alone: a model whose text keys are all alike (the toy world's sink
    planting) keeps its real columns. Reads the keys on the host: for training, never inside a sampling step.

    Example:
        >>> k = torch.randn(1, 6, 2, 4); k[:, 3:] = k[:, 5:6]
        >>> real_columns(k, [3]), real_columns(k, [5]), real_columns(k, None)
        (3, None, None)
    """
    if not lengths:
        return None
    n = max(int(x) for x in lengths)
    if key.shape[1] - n < 2 or not bool(padding_is_uniform(key, n)):
        return None
    return n


def _logits(call: AttentionCall, edited: bool, n_real: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(text logits ``[B, H, N, T]`` of the video queries, post-edit biases added when `edited`; for a joint call
    the log-sum-exp of the other keys ``[B, H, N]``, else None; the pad column's multiplicity, else None) in float32.
    With `n_real` (`real_columns`) a text call's identical pad keys are one column holding their whole mass. A text
    call the model masks (LTX-Video's padded T5 keys) gets the kernel's own mask on its logits (masked keys: exactly
    0) and is never collapsed."""
    q, k = call.query, call.key
    if call.site.kind == "text":
        mask = mask_bias(call.attn_mask, k.shape[1])
        mult = None
        if n_real is not None and mask is None:
            k, mult = collapse_padding(k, n_real)
        logits = key_logits(q, k, call.scale)
        if mult is not None:
            logits = logits + torch.log(mult.to(logits))
        if mask is not None:
            logits = logits + mask.to(logits.device)
        bias = bias_logits(call.biases, slice(0, q.shape[1]), slice(0, k.shape[1])) if edited else None
        return (logits if bias is None else logits + bias), None, mult
    seg = call.segments
    rows = slice(*seg.video_queries)
    logits = key_logits(q[:, rows], k, call.scale, key_bias(call.attn_mask, k.shape[1]))
    bias = bias_logits(call.biases, rows, slice(0, k.shape[1])) if edited else None
    logits = logits if bias is None else logits + bias
    t0, t1 = seg.text
    other = torch.cat([logits[..., :t0], logits[..., t1:]], -1)
    return logits[..., t0:t1], torch.logsumexp(other, -1), None


def text_distribution(call: AttentionCall, *, edited: bool = True, n_real: int | None = None) -> torch.Tensor:
    """The attention of each video query to the text keys, ``[B, H, N, T]`` (a joint call: ``[B, H, N, T + 1]``, the
    last column all other keys together; a text call with `n_real`: ``[B, H, N, n_real + 1]``, the last column all
    pad keys together), float32; post-edit when `edited` (biases, then mixes), as the model used it.
    """
    text, other, mult = _logits(call, edited, n_real)
    if other is None:
        p = torch.softmax(text, -1)
    else:
        lse = torch.logaddexp(torch.logsumexp(text, -1), other)
        p = torch.exp(text - lse[..., None])
    if edited:
        for m in call.mixes:
            p = m.apply(p, slice(0, p.shape[2]), mult)
    return p if other is None else torch.cat([p, (1 - p.sum(-1, keepdim=True)).clamp_min(0)], -1)


def log_text_distribution(call: AttentionCall, n_real: int | None = None) -> torch.Tensor:
    """log of `text_distribution` of an unedited call (`call` has no biases or mixes), computed stably."""
    if call.biases or call.mixes:
        raise ValueError(f"{call.site.layer}: log_text_distribution reads unedited calls; this one was edited")
    text, other, _ = _logits(call, edited=False, n_real=n_real)
    if other is None:
        return torch.log_softmax(text, -1)
    lse = torch.logaddexp(torch.logsumexp(text, -1), other)[..., None]
    return torch.cat([text - lse, other[..., None] - lse], -1)


def kl_per_query(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last axis, ``[..., T] -> [...]`` (0 · log 0 = 0)."""
    return (torch.special.xlogy(p, p) - p * log_q).sum(-1)


def distill_kl(teacher: dict[str, torch.Tensor], calls: dict[str, AttentionCall],
               n_real: dict[str, int | None] | None = None) -> torch.Tensor:
    """The distill loss: KL(teacher ‖ student) per video query and head, averaged over queries, heads and the layers
    of `teacher` (their distributions, `text_distribution`), the student's from its unedited `calls`."""
    n_real = n_real or {}
    return torch.stack([kl_per_query(p, log_text_distribution(calls[layer], n_real.get(layer))).mean()
                        for layer, p in teacher.items()]).mean()


__all__ = ["KINDS", "TextProbe", "distill_kl", "kl_per_query", "log_text_distribution", "real_columns",
           "text_distribution"]
