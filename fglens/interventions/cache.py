"""`fg.CacheTransfer`: carry the text attention of responsive layers into weak layers.

Destination text probabilities become ``(1-α)·P_d + α·P_r``. For Wan's separate text softmax this is
exactly ``(1-α)·Attn(Q_d, K_d, V_d) + α·Attn(Q_r, K_r, V_d)``: the source's queries and keys are kept (never a
map) and the mix is one more fused kernel call. The source is taken from the same step when it comes before
the destination in the network, else from the previous step (`mode="auto"`), with one cache per CFG branch.

LTX-Video masks its text padding instead ([B, H, 1, T], -10000 on the pads, another length per CFG half): the
source's mask is cached with its keys and the extra call runs over all the keys with that mask (the pads are never
collapsed there), and recorders apply it to the source map they recompute, so masked keys get exactly 0.

Wan pads every prompt to 512 text rows with zero embeddings, which make identical pad keys and values. Where
fglens knows where the pads start (`EditCall.text_real`, L real rows), the extra call runs over the L real keys
and ONE pad key whose logit carries ``+log(512 - L)``: exactly the summed weight of the identical pad keys, for
about (L + 1) / 512 of the work (1/23 for a 20-token prompt at head dimension 128, the bias dimensions included).
The bias rides through the model's own kernel as extra head dimensions (unit query dimensions; in the pad key, the
bias over the softmax scale), split over three dimensions so that even a bfloat16 key carries it to float32
precision; no attention mask is needed, so every backend keeps its fused kernel. The cache keeps the source's
queries (widened by those dimensions once, when the source runs) and its L + 1 distinct keys. Where the pads are not
known, the extra call runs over all the keys, as before.

The source's map is the one the model used there: where interventions bias the source's logits (an anchor, a
`Scale`, an `Ablate` scoped to it), the cache keeps its queries and keys widened by those biases as extra head
dimensions, ``[q | b_q] · [k | b_k / s]``, exactly as the source's own edited call computed them (on joint
attention, the source's biases and row LSE are cached for the same reason). An anchor on the destination biases
the destination's own map, which the model's call computes over all the keys. Collapsing the pads stays exact
with biases: every bias's columns are either word positions (all before the pads) or a whole segment (every pad
alike), so the pad keys stay identical, bias dimensions included.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from ..core.probs import (
    Mix,
    bias_logits,
    chunk_probs,
    key_logits,
    mask_bias,
    mix,
    pad_multiplicity,
    rest_scale,
    row_logsumexp,
)
from ..core.protocol import EditCall
from ..core.scope import Where, finite, resolve_layers
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
        where: further scope (steps, branches, frames, heads); its layers are `dst` (other layers given here
            are an error).
        pairing: ``"auto"`` (one source: every destination; as many sources as destinations: in order;
            otherwise ``"nearest"``), ``"zip"`` (in order), ``"nearest"`` (each destination takes the source
            closest to it in depth, the earlier on a tie, never itself), so ``CacheTransfer(src=weak.responsive,
            dst=weak.weak)`` works for any number of each. A destination paired with itself (``src == dst``) is
            refused: its own map mixed into it would change nothing.
        heads: ``"each"`` (destination head h takes the source's head h) or ``"mean"`` (every destination head
            takes the source's map averaged over its heads: ``(1-α)·P_d,h + α·mean_h' P_r,h'``).
        source_map: ``"edited"`` (the probabilities the model used at the source, its own edits — an anchor, a
            `Scale` scoped to it — included) or ``"clean"`` (the source's map without them: its own queries and keys).

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
        heads: str = "each",
        source_map: str = "edited",
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
        if heads not in ("each", "mean"):
            raise ValueError(f"heads must be 'each' (head h takes the source's head h) or 'mean' (every head takes the "
                             f"source's head-averaged map); got {heads!r}")
        if source_map not in ("edited", "clean"):
            raise ValueError(f"source_map must be 'edited' (the map the model used at the source, its own edits "
                             f"included) or 'clean' (the source's map without them); got {source_map!r}")
        self.heads, self.source_map = heads, source_map
        if mode not in ("auto", "same_step", "prev_step"):
            raise ValueError(f"mode must be 'auto', 'same_step' or 'prev_step'; got {mode!r}")
        alpha = finite(alpha, "CacheTransfer alpha")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
        self.alpha = alpha
        self.mode = mode
        if where is not None and where.layers is not None and tuple(where.layers) != tuple(self.dst):
            raise ValueError(f"CacheTransfer acts on its destinations: give its layers as dst= (here {self.dst}), "
                             f"not as where=Where(layers={list(where.layers)}); where scopes steps, branches, "
                             "frames and heads")
        self.where = (where or Where()).restrict(layers=self.dst)
        # (branches, source layer) -> (step, tensors...): a separate text call (step, query, key, real, total, its
        # attention mask), see `_cache_text_source`; joint
        # attention (step, query, text keys, key bias, edit bias, row LSE), see `_cache_joint_source`
        self._cache: dict[tuple[tuple[str, ...], str], tuple] = {}
        # the map before the current one, kept for previous-step destinations that come after their source
        self._previous: dict[tuple[tuple[str, ...], str], tuple] = {}

    def requires(self) -> dict[str, Any]:
        return {"sources": [str(s) for s in self.src], "state": "steps"}

    def spec(self) -> dict[str, Any]:
        return {"type": "CacheTransfer", "src": self.src, "dst": self.dst, "alpha": self.alpha, "mode": self.mode,
                "pairing": self.pairing, "heads": self.heads, "source_map": self.source_map,
                "where": _where_spec(self.where)}

    def bind(self, layers, per_model, site_kinds) -> None:
        super().bind(layers, per_model, site_kinds)
        src = resolve_layers(self.src, per_model)
        dst = resolve_layers(self.dst, per_model)
        order = {name: i for model in per_model for i, name in enumerate(model)}
        model_of = {name: m for m, model in enumerate(per_model) for name in model}
        pairs = _pairs(src, dst, order, model_of, self.pairing)
        self._source_of: dict[str, tuple[str, bool]] = {}
        for s, d in pairs:
            if s == d:
                raise ValueError(f"CacheTransfer pairs {d} with itself (src == dst): a layer's own map mixed into it "
                                 "changes nothing; give a source other than the destination")
            same = order[s] < order[d] if self.mode == "auto" else self.mode == "same_step"
            if same and order[s] >= order[d]:
                raise ValueError(f"same_step needs the source before the destination; {s} comes after {d}")
            self._source_of[d] = (s, same)
        self._sources = {s for s, _ in self._source_of.values()}
        #: per source, how many steps later its destinations use its map (0: same step, 1: the next step)
        self._lags: dict[str, set[int]] = {}
        for s, same in self._source_of.values():
            self._lags.setdefault(s, set()).add(0 if same else 1)
        #: sources whose previous map must outlive their next call: a previous-step destination comes after them
        self._keep_previous = {s for d, (s, same) in self._source_of.items() if not same and order[s] < order[d]}
        self._cache, self._previous = {}, {}  # new dicts: this trace's own (`bound` copies share what __init__ made)

    @property
    def pairs(self) -> dict[str, tuple[str, bool]]:
        """Of a bound copy (`Trace.editor.parts`): each destination's source and whether it is taken in the same step
        (else the previous one); ``{}`` before binding."""
        return dict(getattr(self, "_source_of", {}))

    def start_run(self, words) -> None:
        self._cache.clear()
        self._previous.clear()

    def applies(self, site, forward) -> bool:
        if site.kind not in self.kinds:
            return False
        if site.layer in self._sources:
            return True  # observed (cached) whatever the scope
        return super().applies(site, forward)

    def _cache_text_source(self, call: EditCall) -> None:
        """Cache a source layer's text queries and keys, after its call: ``(step, query, key, real, total, mask)``
        (`mask`: the call's attention mask, or None), both
        widened by the call's logit biases (`EditCall.biases`, see the module docstring) when it had any, so the
        cached map is the one the model used. With the pads known (`EditCall.text_real` = L), `key` is a copy of
        its first L + 1 rows (the real keys and one pad key, the others being identical to it) and ``real = L``,
        and where a destination will mix this map in, `query` is already widened by the pad count's unit
        dimensions (once, here, rather than per destination); otherwise the whole key and ``real = None``."""
        slot = self._retire(call)
        total, real = call.key.shape[1], call.text_real
        query, key = _with_biases(call.query, call.key, call.biases if self.source_map == "edited" else [],
                                  call.scale)
        if real is None or real >= total - 1:
            real = None
        else:
            key = key[:, : real + 1].clone()  # a copy: the 512-row key is not kept alive
            if self._will_mix(call.site.layer, call.forward):
                query = _with_unit_dims(query)
        self._cache[slot] = (call.forward.step, query, key, real, total, call.attn_mask)

    def _retire(self, call: EditCall) -> tuple[tuple[str, ...], str]:
        """Before a source's new map is made: drop its current one (every destination of it has run), or keep it as
        the previous map where a previous-step destination after the source still needs it. Returns the slot."""
        slot = (call.forward.branches, call.site.layer)
        current = self._cache.pop(slot, None)
        if current is not None and call.site.layer in self._keep_previous:
            self._previous[slot] = current
        return slot

    def _will_mix(self, source: str, forward) -> bool:
        """Will a destination mix in the map `source` makes in this forward (its step and branches in scope)?"""
        if self.alpha == 0.0 or not any(self.where.has_branch(b) for b in forward.branches):
            return False
        return any(self.where.has_step(forward.step + lag, forward.num_steps) for lag in self._lags[source])

    def needs_lse(self, call: EditCall) -> bool:
        """Joint attention: the source's and the destination's text probabilities need their row LSE."""
        return call.site.kind == "joint" and (call.site.layer in self._sources or call.site.layer in self._source_of)

    def _cache_joint_source(self, call: EditCall) -> None:
        (r0, r1), (t0, t1) = call.video_rows, call.text_keys
        # copies of the small slices, so the cache does not keep the whole joint K (video keys included) alive
        # until the destination's call; the query's video rows are most of Q, so a view of them costs little
        bias = None if call.key_bias is None else call.key_bias[:, t0:t1].clone()
        if self.source_map == "edited" or not call.biases:
            text_bias, lse = bias_logits(call.biases, slice(r0, r1), slice(t0, t1)), call.lse[..., r0:r1].clone()
        else:  # the clean map: no edit bias, normalised by the unedited row's log-sum-exp
            text_bias, lse = None, row_logsumexp(call.query[:, r0:r1], call.key, 4096, call.scale, call.key_bias)
        self._cache[self._retire(call)] = (
            call.forward.step, call.query[:, r0:r1], call.key[:, t0:t1].clone(), bias, text_bias, lse,
        )

    def _slot(self, call: EditCall) -> tuple[dict, Hashable] | None:
        """Where this destination call's source map is cached (the table and the slot), or None where nothing is
        mixed in (out of scope, alpha 0, or no source map yet: the first step of a previous-step transfer)."""
        if self.alpha == 0.0 or call.site.layer not in self._source_of or call.site.kind not in self.kinds:
            return None
        if not super().applies(call.site, call.forward):
            return None
        src, same_step = self._source_of[call.site.layer]
        slot = (call.forward.branches, src)
        want = call.forward.step if same_step else call.forward.step - 1
        for table in (self._cache, self._previous):
            cached = table.get(slot)
            if cached is not None and cached[0] == want:
                return table, slot
        return None

    def _source(self, call: EditCall) -> tuple | None:
        """The cached source tensors (after the step) for this destination call, or None (see `_slot`)."""
        found = self._slot(call)
        return None if found is None else found[0][found[1]][1:]

    def edit_output(self, call: EditCall, out: torch.Tensor) -> torch.Tensor:
        if call.site.kind == "joint":
            return self._edit_joint(call, out)
        if call.site.kind == "text" and call.site.layer in self._sources:
            self._cache_text_source(call)
        found = self._slot(call)
        if found is None:
            return out
        _, query, key, real, total, mask = found[0][found[1]]
        width, dims = call.value.shape[-1], key.shape[-1]  # dims: the head's, plus the source's bias dimensions
        if total != call.key.shape[1]:
            raise ValueError(
                f"CacheTransfer {self._source_of[call.site.layer][0]} -> {call.site.layer}: the source has {total} "
                f"text keys, the destination {call.key.shape[1]}; they must see the same prompt"
            )
        rows = None if real is None or call.text_real is None else max(real, call.text_real)
        # a masked source (LTX-Video's text padding): its map is softmax(Q_r K_r + mask_r), so the extra call runs with
        # the source's own mask in place of the destination's (the same one wherever both see the same prompts)
        masking = {"attn_mask": mask} if mask is not None or call.attn_mask is not None else {}
        if self.heads == "mean":
            mixed = _mean_map_output(call, query[..., :dims], key, real, total, rows, mask_bias(mask, total))
        elif rows is None or rows >= total - 1:
            keys = _leading_keys(key, real, total)
            if dims == width:
                mixed = call.kernel(query[..., :width], keys, call.value, **masking)
            else:
                q, k, v = _padded(query[..., :dims], keys, call.value)
                mixed = call.kernel(q, k, v, scale=call.scale, **masking)[..., :width]
        else:
            mixed = self._collapsed(call, *found, rows)
        weight = self.alpha * call.rows_mask(self.where)
        # what recorders need to see the mixed map: the source's queries, and its first n text keys in the
        # destination's layout on demand (a recorder asks for its own count of real keys plus one pad, which may
        # cover more words than the edit's; nothing is copied when no recorder reads this call); both with the
        # source's bias dimensions, whose dot product times the scale is the source's bias
        call.mixes.append(Mix(weight, functools.partial(_text_source_probs, query[..., :dims], key, real, call.scale,
                                                        mask_bias(mask, total)),
                              head_mean=self.heads == "mean"))
        return mix(out, mixed, weight[..., None].to(out.dtype))

    def _collapsed(self, call: EditCall, table: dict, slot: Hashable, rows: int) -> torch.Tensor:
        """Attn(Q_r, K_r, V_d) over the first `rows` keys and one pad key standing for the other ``total - rows``
        (its logit raised by their log count), in one call of the model's kernel with the bias as extra head
        dimensions. Keys and values from `rows` on must be identical (`EditCall.text_real`)."""
        step, query, key, real, total, mask = table[slot]
        width, dims = call.value.shape[-1], key.shape[-1]
        if query.shape[-1] == dims:  # not widened when cached (no use expected then): once, shared by destinations
            query = _with_unit_dims(query)
            table[slot] = (step, query, key, real, total, mask)
        keys = _leading_keys(key, real, rows + 1)
        k = keys.new_zeros((*keys.shape[:-1], query.shape[-1]))
        k[..., :dims] = keys
        for i, part in enumerate(_split(math.log(total - rows) / call.scale, k.dtype, _BIAS_DIMS)):
            k[:, rows, :, dims + i] = part
        v = call.value.new_zeros((call.value.shape[0], rows + 1, call.value.shape[2], query.shape[-1]))
        v[..., :width] = call.value[:, : rows + 1]
        return call.kernel(query, k, v, scale=call.scale)[..., :width]

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
        if self.heads == "mean":
            p_src = p_src.mean(1, keepdim=True).expand_as(p_src)
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
        ratio = rest_scale(m_dst, mix(m_dst, m_src, weight))
        rows = out[:, r0:r1].to(torch.float32)
        mixed = ratio[..., None] * (rows - o_dst) + o_dst + weight[..., None] * (o_src - o_dst)
        edited = out.clone()
        edited[:, r0:r1] = torch.where(weight[..., None] > 0, mixed, rows).to(out.dtype)
        # what recorders need to see the mixed map (p_src is already head-averaged where asked)
        call.mixes.append(Mix(weight, functools.partial(_joint_source_probs, p_src)))
        return edited


#: unit query dimensions that carry the pad key's log-count bias (in three parts: ~24 bits even in a bfloat16 key)
_BIAS_DIMS = 3


def _with_biases(query: torch.Tensor, key: torch.Tensor, biases, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``[q | b_q]`` and ``[k | b_k / scale]`` of a call's logit biases (in the call's dtype, as the edited call
    used them), or the call's own query and key when it had none."""
    if not biases:
        return query, key
    bq = torch.cat([b.q for b in biases], -1).to(query.dtype)
    bk = (torch.cat([b.k for b in biases], -1) / scale).to(key.dtype)
    return torch.cat([query, bq], -1), torch.cat([key, bk], -1)


def _padded(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """Query and key zero-padded to a multiple of 8 wide, and the value zero-padded to the same width."""
    dims = query.shape[-1]
    pad = (-dims) % 8
    if pad:
        query = torch.cat([query, query.new_zeros((*query.shape[:-1], pad))], -1)
        key = torch.cat([key, key.new_zeros((*key.shape[:-1], pad))], -1)
    v = value.new_zeros((*value.shape[:-1], dims + pad))
    v[..., : value.shape[-1]] = value
    return query, key, v


def _with_unit_dims(query: torch.Tensor) -> torch.Tensor:
    """``[B, N, H, D + e]``: `query` with `_BIAS_DIMS` unit dimensions, zero-padded to a multiple of 8 wide."""
    width = query.shape[-1]
    extra = _BIAS_DIMS + (-(width + _BIAS_DIMS)) % 8
    out = query.new_zeros((*query.shape[:-1], width + extra))
    out[..., :width] = query
    out[..., width : width + _BIAS_DIMS] = 1.0
    return out


def _split(value: float, dtype: torch.dtype, parts: int) -> list[float]:
    """`value` as a sum of `parts` numbers each exactly representable in `dtype` (the remainder of the previous
    part's rounding, rounded in turn): a kernel accumulating in float32 adds them back to ~2**-24 relative.
    Host arithmetic only (no tensor is read)."""
    info = torch.finfo(dtype)
    bits = 1 - round(math.log2(info.eps))  # significand bits: 24 float32, 8 bfloat16, 11 float16
    out = []
    for _ in range(parts):
        # the spacing of `dtype` at `value` (no finer than its smallest subnormal); round half to even, as a cast does
        quantum = max(math.ldexp(1.0, math.frexp(value)[1] - bits), info.tiny * info.eps)
        part = round(value / quantum) * quantum
        out.append(part)
        value -= part
    return out


def _leading_keys(key: torch.Tensor, real: int | None, n: int) -> torch.Tensor:
    """The first `n` rows of a source's text keys, from the cached ones: all of them (``real`` None), or the real
    rows and one pad row (``real`` = L), the pad row repeated where `n` asks for more (a copy only then)."""
    if real is None or n <= key.shape[1]:
        return key[:, :n]
    pad = key[:, real : real + 1].expand(-1, n - key.shape[1], -1, -1)
    return torch.cat([key, pad], 1)


def _text_source_probs(query: torch.Tensor, key: torch.Tensor, real: int | None, scale: float,
                       mask: torch.Tensor | None, rows: slice, n_keys: int, multiplicity: torch.Tensor | None,
                       items: list[int] | None) -> torch.Tensor:
    """A cached source map of a separate text call for recorders (`Mix.source`): probabilities ``[b, H, n, n_keys]``
    of the source's queries on rows `rows` over its first `n_keys` text keys (bias dimensions included), with the
    source's key mask (`mask_bias`, ``[B, 1 or H, 1, T]``) where it had one."""
    q, k = query[:, rows], _leading_keys(key, real, n_keys)
    bias = None if mask is None else mask[..., :n_keys]
    if items is not None:
        q, k = q[items], k[items]
        bias = None if bias is None else bias[items]
    return chunk_probs(q, k, multiplicity, scale, bias)


def _joint_source_probs(p_src: torch.Tensor, rows: slice, n_keys: int, multiplicity, items) -> torch.Tensor:
    """A joint source map for recorders (`Mix.source`): the rows of the probabilities the destination mixed in."""
    p = p_src if items is None else p_src[items]
    return p[:, :, rows]


def _mean_map_output(call: EditCall, query: torch.Tensor, key: torch.Tensor, real: int | None, total: int,
                     rows: int | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_t mean_h P_r,h[n, t] · V_d,h'[t]`` for every destination head h': the source's head-averaged map applied
    to the destination's values, ``[B, N, H, D]``. The map is built explicitly (the kernel cannot average heads),
    a block of query rows at a time (about 16 M float32 probabilities), over the real keys and one pad key with its
    multiplicity where the pads are known (`rows`), else over all the keys (with the source's key mask `mask`,
    ``[B, 1 or H, 1, T]``, where it had one: the pads are then never collapsed)."""
    if rows is None or rows >= total - 1:
        keys, values, mult = _leading_keys(key, real, total), call.value, None
    else:
        keys, values = _leading_keys(key, real, rows + 1), call.value[:, : rows + 1]
        mult = pad_multiplicity(rows, total, keys.device)
    b, n, h, _ = query.shape
    block = max(1, (1 << 24) // max(1, b * h * keys.shape[1]))
    out = torch.empty((b, n, h, values.shape[-1]), dtype=call.value.dtype, device=call.value.device)
    v = values.to(torch.float32)
    for a in range(0, n, block):
        p = chunk_probs(query[:, a : a + block], keys, mult, call.scale, mask).mean(1)  # [B, n, T]
        out[:, a : a + block] = torch.einsum("bnt,bthd->bnhd", p, v).to(out.dtype)
    return out


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

    # a destination in the pool never takes itself (its own map would change nothing): the nearest other source
    return [(min([s for s in src if s != d] or src, key=lambda s: distance(s, d)), d) for d in dst]
