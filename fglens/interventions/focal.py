"""`fg.FocalGuidance`: the paper's preset — anchor masks and cache transfer in the weak layers, early steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.protocol import Compose
from ..core.scope import Steps, Where
from .anchor import AnchorMask
from .cache import CacheTransfer


class FocalGuidance(Compose):
    """Focal Guidance (Yin et al., 2026): FSG anchors and the attention cache, scoped to weak layers and steps.

    Args:
        anchor: an `fg.AnchorMask` (or None).
        cache: an `fg.CacheTransfer` (or None). With `layers` given, its `dst` must name the same layers (in the
            same form: indices or names), or the preset refuses: it repairs `layers` with both operators and never
            silently replaces what the cache was given. To transfer into other layers, compose the parts yourself
            (`fg.compose`).
        layers: the semantic-weak layers to repair (the anchor's layers and the cache's destinations); None: the
            cache's `dst`, and the anchor's own scope.
        steps: steps to edit, indices or a fraction range (default: the first half, ``(0.0, 0.5)``).
        branches: CFG branches to edit (default: ``("cond",)``, so guidance amplifies the repair).

    The anchor is applied first, then the cache transfer (see `fg.compose` for the order of output edits).

    Example:
        >>> import torch, fglens as fg
        >>> anchor = fg.AnchorMask.from_mask(torch.ones(2, 3), "dog", strength=2.0)
        >>> fg_edit = fg.FocalGuidance(anchor=anchor, cache=fg.CacheTransfer(src=[3], dst=[1, 2]), layers=[1, 2])
        >>> [type(p).__name__ for p in fg_edit.parts()]
        ['AnchorMask', 'CacheTransfer']
    """

    def __init__(
        self,
        anchor: AnchorMask | None = None,
        cache: CacheTransfer | None = None,
        layers: Sequence[int | str] | None = None,
        steps: Steps = (0.0, 0.5),
        branches: Sequence[str] | None = ("cond",),
    ):
        if anchor is None and cache is None:
            raise ValueError("FocalGuidance needs an anchor, a cache, or both")
        scope = Where(layers=layers, steps=steps, branches=branches)
        parts = []
        if anchor is not None:
            parts.append(AnchorMask(anchor.masks, anchor.words, anchor.strength, anchor.frames,
                                    where=_merge(anchor.where, scope), regions=anchor.regions,
                                    targets=anchor.targets))
        if cache is not None:
            if layers is not None and list(cache.dst) != list(layers):
                raise ValueError(
                    f"FocalGuidance(layers={list(layers)}) and its cache's dst={list(cache.dst)} name different "
                    f"layers: the preset repairs `layers` with both operators, so give the cache the same destinations "
                    f"(CacheTransfer(src=..., dst={list(layers)})), or compose the parts yourself (fg.compose)")
            dst = list(cache.dst)
            # the cache's scope holds its destinations as its layers: the preset's scope takes their place
            where = _merge(cache.where.restrict(layers=None), scope)
            parts.append(CacheTransfer(cache.src, dst, cache.alpha, cache.mode, where=where,
                                       pairing=cache.pairing, heads=cache.heads, source_map=cache.source_map))
        super().__init__(*parts)

    def spec(self) -> dict[str, Any]:
        return {"type": "FocalGuidance", "parts": [p.spec() for p in self.parts()]}

    @classmethod
    def from_parts(cls, parts: Sequence[AnchorMask | CacheTransfer]) -> FocalGuidance:
        """The preset with its parts as already scoped (what `spec()` lists; `fg.intervention_from_spec` uses it)."""
        if not parts or not all(isinstance(p, (AnchorMask, CacheTransfer)) for p in parts):
            raise ValueError("FocalGuidance parts are an AnchorMask and/or CacheTransfers; got "
                             f"{[type(p).__name__ for p in parts]}")
        preset = cls.__new__(cls)
        Compose.__init__(preset, *parts)
        return preset


def _merge(own: Where, scope: Where) -> Where:
    """The preset's scope, with any field the part set itself kept."""
    fields = {}
    for name in ("layers", "steps", "branches", "frames", "heads"):
        mine = getattr(own, name)
        fields[name] = mine if mine is not None else getattr(scope, name)
    return Where(**fields)
