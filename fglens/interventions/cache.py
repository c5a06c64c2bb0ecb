"""`fg.CacheTransfer`: carry the text attention of responsive layers into weak layers.

Destination text probabilities become ``(1-α)·P_d + α·P_r``. For Wan's separate text softmax this is
exactly ``(1-α)·Attn(Q_d, K_d, V_d) + α·Attn(Q_r, K_r, V_d)``: the source's queries and keys are kept (never a
map) and the mix is one more fused kernel call. The source is taken from the same step when it comes before
the destination in the network, else from the previous step (`mode="auto"`), with one cache per CFG branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..trace.editing import bias_logits
from ..trace.probs import key_logits
from ..trace.record import resolve_layers
from .base import EditCall
from .scope import Where
from .tools import _Scoped, _where_spec


class CacheTransfer(_Scoped):
    """Mix a source layer's text attention map into destination layers.

    Args:
        src: source layer(s): one for all destinations, one per destination, or a pool of responsive layers
            from which each destination takes its nearest (see `pairing`).
        dst: destination layer(s).
        alpha: weight of the source map (0 leaves the model untouched, 1 replaces the map).
        mode: ``"auto"`` (same step if the source comes first, else previous step), ``"same_step"``,
            ``"prev_step"``.
        where: further scope (steps, branches, frames, heads); its layers default to `dst`.
        pairing: ``"auto"`` (one source: every destination; as many sources as destinations: in order;
            otherwise ``"nearest"``), ``"zip"`` (in order), ``"nearest"`` (each destination takes the source
            closest to it in depth, the earlier on a tie), so ``CacheTransfer(src=weak.responsive,
            dst=weak.weak)`` works for any number of each.

    Example:
        >>> import fglens as fg
        >>> fg.CacheTransfer(src=[3], dst=[1, 2], alpha=0.5).spec()["alpha"]
        0.5
    """

    kinds = frozenset({"text", "joint"})

    def __init__(
        self,
        src: Sequence[int | str] | int | str,
        dst: Sequence[int | str] | int | str,
        alpha: float = 0.5,
        mode: str = "auto",
        where: Where | None = None,
        pairing: str = "auto",
    ):
        self.src = [src] if isinstance(src, (int, str)) else list(src)
        self.dst = [dst] if isinstance(dst, (int, str)) else list(dst)
        if not self.src or not self.dst:
            raise ValueError(f"CacheTransfer needs a source and a destination; got {self.src} -> {self.dst}")
        if pairing not in ("auto", "zip", "nearest"):
            raise ValueError(f"pairing must be 'auto', 'zip' or 'nearest'; got {pairing!r}")
        if pairing == "zip" and len(self.src) not in (1, len(self.dst)):
            raise ValueError(f"pairing='zip' needs one source, or one per destination; got {self.src} -> {self.dst}")
        self.pairing = pairing
        if mode not in ("auto", "same_step", "prev_step"):
            raise ValueError(f"mode must be 'auto', 'same_step' or 'prev_step'; got {mode!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
        self.alpha = float(alpha)
        self.mode = mode
        self.where = (where or Where()).restrict(layers=self.dst)
        self._cache: dict[tuple[tuple[str, ...], str], tuple[int, torch.Tensor, torch.Tensor]] = {}

    def requires(self) -> dict[str, Any]:
        return {"sources": [str(s) for s in self.src], "state": "steps"}

    def spec(self) -> dict[str, Any]:
        return {"type": "CacheTransfer", "src": self.src, "dst": self.dst, "alpha": self.alpha, "mode": self.mode,
                "pairing": self.pairing, "where": _where_spec(self.where)}

    def bind(self, layers, per_model, site_kinds) -> None:
        super().bind(layers, per_model, site_kinds)
        src = resolve_layers(self.src, per_model)
        dst = resolve_layers(self.dst, per_model)
        order = {name: i for model in per_model for i, name in enumerate(model)}
        model_of = {name: m for m, model in enumerate(per_model) for name in model}
        pairs = _pairs(src, dst, order, model_of, self.pairing)
        self._source_of: dict[str, tuple[str, bool]] = {}
        for s, d in pairs:
            same = order[s] < order[d] if self.mode == "auto" else self.mode == "same_step"
            if same and order[s] >= order[d]:
                raise ValueError(f"same_step needs the source before the destination; {s} comes after {d}")
            self._source_of[d] = (s, same)
        self._sources = {s for s, _ in self._source_of.values()}
        self._cache.clear()

    def start_run(self, words) -> None:
        self._cache.clear()

    def applies(self, site, forward) -> bool:
        if site.kind not in self.kinds:
            return False
        if site.layer in self._sources:
            return True  # observed (cached) whatever the scope
        return super().applies(site, forward)

    def observe(self, call: EditCall) -> None:
        if call.site.kind == "text" and call.site.layer in self._sources:
            key = (call.forward.branches, call.site.layer)
            self._cache[key] = (call.forward.step, call.query, call.key)

    def needs_lse(self, call: EditCall) -> bool:
        """Joint attention: the source's and the destination's text probabilities need their row LSE."""
        return call.site.kind == "joint" and (call.site.layer in self._sources or call.site.layer in self._source_of)

    def _cache_joint_source(self, call: EditCall) -> None:
        (r0, r1), (t0, t1) = call.video_rows, call.text_keys
        # copies of the small slices, so the cache does not keep the whole joint K (video keys included) alive
        # until the destination's call; the query's video rows are most of Q, so a view of them costs little
        bias = None if call.key_bias is None else call.key_bias[:, t0:t1].clone()
        text_bias = bias_logits(call.biases, slice(r0, r1), slice(t0, t1))
        self._cache[(call.forward.branches, call.site.layer)] = (
            call.forward.step, call.query[:, r0:r1], call.key[:, t0:t1].clone(), bias, text_bias,
            call.lse[..., r0:r1].clone(),
        )

    def _source(self, call: EditCall) -> tuple | None:
        """The cached source (queries and keys; for joint attention also its text mask, edit bias and row LSE)
        for this destination call, or None where nothing is mixed in
        (out of scope, alpha 0, or no source map yet: the first step of a previous-step transfer)."""
        if self.alpha == 0.0 or call.site.layer not in self._source_of or call.site.kind not in self.kinds:
            return None
        if not super().applies(call.site, call.forward):
            return None
        src, same_step = self._source_of[call.site.layer]
        cached = self._cache.get((call.forward.branches, src))
        want = call.forward.step if same_step else call.forward.step - 1
        if cached is None or cached[0] != want:
            return None
        return cached[1:]

    def edit_output(self, call: EditCall, out: torch.Tensor) -> torch.Tensor:
        if call.site.kind == "joint":
            return self._edit_joint(call, out)
        source = self._source(call)
        if source is None:
            return out
        mixed = call.kernel(*source, call.value)
        weight = self.alpha * call.rows_mask(self.where)
        call.mixes.append((weight, *source))  # what recorders need to see the mixed map
        return out + weight[..., None].to(out.dtype) * (mixed - out)

    # -- joint attention: the text block is replaced, the rest of each row rescaled to keep its sum at 1 -------
    def _joint_terms(self, call: EditCall):
        """Destination and source text probabilities [B, H, N, T] of the video rows, and the mix weight [B, N, H]."""
        source = self._source(call)
        if source is None:
            return None
        q_src, k_src, bias_src, edit_src, lse_src = source
        (r0, r1), (t0, t1) = call.video_rows, call.text_keys
        if k_src.shape[1] != t1 - t0:
            raise ValueError(
                f"CacheTransfer {self._source_of[call.site.layer][0]} -> {call.site.layer}: the source has "
                f"{k_src.shape[1]} text keys, the destination {t1 - t0}; they must see the same prompt"
            )
        bias = None if call.key_bias is None else call.key_bias[:, t0:t1]
        p_dst = _probs(call.query[:, r0:r1], call.key[:, t0:t1], call.scale, bias,
                       bias_logits(call.biases, slice(r0, r1), slice(t0, t1)), call.lse[..., r0:r1])
        p_src = _probs(q_src, k_src, call.scale, bias_src, edit_src, lse_src)
        weight = self.alpha * call.rows_mask(self.where)[:, r0:r1]
        return p_dst, p_src, weight

    def _edit_joint(self, call: EditCall, out: torch.Tensor) -> torch.Tensor:
        if call.site.layer in self._sources:
            self._cache_joint_source(call)
        if call.site.layer not in self._source_of:
            return out
        terms = self._joint_terms(call)
        if terms is None:
            return out
        p_dst, p_src, weight = terms
        (r0, r1), (t0, t1) = call.video_rows, call.text_keys
        v_text = call.value[:, t0:t1].to(torch.float32)
        o_dst = torch.einsum("bhnt,bthd->bnhd", p_dst, v_text)
        o_src = torch.einsum("bhnt,bthd->bnhd", p_src, v_text)
        m_dst = p_dst.sum(-1).transpose(1, 2)  # [B, N, H]
        m_src = p_src.sum(-1).transpose(1, 2)
        m_new = m_dst + weight * (m_src - m_dst)
        ratio = (1 - m_new) / (1 - m_dst).clamp_min(1e-12)
        rows = out[:, r0:r1].to(torch.float32)
        mixed = ratio[..., None] * (rows - o_dst) + o_dst + weight[..., None] * (o_src - o_dst)
        edited = out.clone()
        edited[:, r0:r1] = torch.where(weight[..., None] > 0, mixed, rows).to(out.dtype)
        call.joint_mixes.append((weight, p_src))  # what recorders need to see the mixed map
        return edited


def _probs(q, k, scale, key_bias, edit_bias, lse) -> torch.Tensor:
    """exp(logits - lse): probabilities [B, H, N, T] of queries [B, N, H, D] on keys [B, T, H, D]."""
    logits = key_logits(q, k, scale, key_bias)
    return torch.exp((logits if edit_bias is None else logits + edit_bias) - lse[..., None])


def _pairs(
    src: list[str], dst: list[str], order: dict[str, int], model_of: dict[str, int], pairing: str
) -> list[tuple[str, str]]:
    """(source, destination) pairs: see `CacheTransfer`'s `pairing`; "nearest" prefers a source of the same
    transformer (Wan2.2's two experts)."""
    if len(src) == 1:
        return [(src[0], d) for d in dst]
    if pairing == "zip" or (pairing == "auto" and len(src) == len(dst)):
        return list(zip(src, dst, strict=True))
    def distance(s: str, d: str) -> tuple[bool, int, int]:
        return model_of[s] != model_of[d], abs(order[s] - order[d]), order[s]

    return [(min(src, key=lambda s: distance(s, d)), d) for d in dst]
