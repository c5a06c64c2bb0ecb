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

from ..trace.record import resolve_layers
from .base import EditCall
from .scope import Where
from .tools import _Scoped, _where_spec


class CacheTransfer(_Scoped):
    """Mix a source layer's text attention map into destination layers.

    Args:
        src: source layer(s): one for all destinations, or one per destination.
        dst: destination layer(s).
        alpha: weight of the source map (0 leaves the model untouched, 1 replaces the map).
        mode: ``"auto"`` (same step if the source comes first, else previous step), ``"same_step"``,
            ``"prev_step"``.
        where: further scope (steps, branches, frames, heads); its layers default to `dst`.

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
    ):
        self.src = [src] if isinstance(src, (int, str)) else list(src)
        self.dst = [dst] if isinstance(dst, (int, str)) else list(dst)
        if len(self.src) not in (1, len(self.dst)):
            raise ValueError(f"CacheTransfer needs one source, or one per destination; got {self.src} -> {self.dst}")
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
                "where": _where_spec(self.where)}

    def bind(self, layers, per_model, site_kinds) -> None:
        super().bind(layers, per_model, site_kinds)
        if "joint" in site_kinds and "text" not in site_kinds:
            raise NotImplementedError(
                "CacheTransfer on joint attention (HunyuanVideo, CogVideoX) is not implemented yet; it works on "
                "Wan's separate text attention"
            )
        src = resolve_layers(self.src, per_model)
        dst = resolve_layers(self.dst, per_model)
        order = {name: i for model in per_model for i, name in enumerate(model)}
        pairs = list(zip(src * len(dst) if len(src) == 1 else src, dst, strict=True))
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

    def _source(self, call: EditCall) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached source queries and keys for this destination call, or None where nothing is mixed in
        (out of scope, alpha 0, or no source map yet: the first step of a previous-step transfer)."""
        if self.alpha == 0.0 or call.site.layer not in self._source_of or call.site.kind != "text":
            return None
        if not super().applies(call.site, call.forward):
            return None
        src, same_step = self._source_of[call.site.layer]
        cached = self._cache.get((call.forward.branches, src))
        want = call.forward.step if same_step else call.forward.step - 1
        if cached is None or cached[0] != want:
            return None
        return cached[1], cached[2]

    def edit_output(self, call: EditCall, out: torch.Tensor) -> torch.Tensor:
        source = self._source(call)
        if source is None:
            return out
        mixed = call.kernel(*source, call.value)
        weight = (self.alpha * call.rows_mask(self.where))[..., None].to(out.dtype)
        return out + weight * (mixed - out)

    def mix_for_recorder(self, call: EditCall) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(weight [B, N, H], source queries, source keys) of the mix at this call, for post-edit recording."""
        source = self._source(call)
        return None if source is None else (self.alpha * call.rows_mask(self.where), *source)
