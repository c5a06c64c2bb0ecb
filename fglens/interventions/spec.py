"""`fg.intervention_from_spec`: the intervention a stored run used, rebuilt from the run's ``intervention`` attribute.

Every intervention describes itself with `spec()`, and `fg.trace` stores that description with each run. The spec
is complete: an `fg.AnchorMask` stores its masks too (float32, zlib-compressed, base64; exact), so the rebuilt
intervention is the same one and a rerun with the same pipeline, prompt and seed reproduces the run bit for bit.
Recipes (`fglens.interventions.recipe`) are the other vocabulary: a *plan* for items not yet seen (the masks come
from CLIP per item), while a spec is what one run did.

Example:
    >>> import torch, fglens as fg
    >>> edit = fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(torch.ones(2, 3), "dog", strength=2.0),
    ...                         cache=fg.CacheTransfer(src=[3], dst=[1, 2]), layers=[1, 2])
    >>> again = fg.intervention_from_spec(edit.spec())
    >>> type(again).__name__, again.spec() == edit.spec()
    ('FocalGuidance', True)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..core.protocol import Compose, Intervention
from ..core.scope import Where
from .anchor import AnchorMask
from .cache import CacheTransfer
from .codec import decode_masks
from .focal import FocalGuidance
from .tools import Ablate, Scale


def _where(spec: Mapping[str, Any] | None) -> Where:
    fields = dict(spec or {})
    steps = fields.get("steps")
    if isinstance(steps, list) and len(steps) == 2 and any(isinstance(s, float) for s in steps):
        fields["steps"] = tuple(steps)  # a fraction range, as Where takes it
    return Where(**fields)


def _anchor(spec: Mapping[str, Any]) -> AnchorMask:
    if "masks" not in spec:
        raise ValueError("this AnchorMask spec holds no masks (it was stored before anchor specs kept them), so the "
                         "anchor cannot be rebuilt exactly; rebuild it from its image and prompt (from_clip)")
    return AnchorMask(decode_masks(spec["masks"]), spec["words"], spec["strength"], spec["frames"],
                      where=_where(spec.get("where")), targets=spec.get("targets", ("text",)))


_BUILD = {
    "AnchorMask": _anchor,
    "CacheTransfer": lambda s: CacheTransfer(s["src"], s["dst"], s["alpha"], s["mode"], where=_where(s.get("where")),
                                             pairing=s.get("pairing", "auto"), heads=s.get("heads", "each"),
                                             source_map=s.get("source_map", "edited")),
    "Scale": lambda s: Scale(s["words"], s["factor"], where=_where(s.get("where"))),
    "Ablate": lambda s: Ablate(s["segment"], where=_where(s.get("where"))),
}


def intervention_from_spec(spec: Mapping[str, Any] | str) -> Intervention:
    """Rebuild the intervention a `spec()` describes: a stored run's ``intervention`` attribute (JSON text or a dict).

    ``FocalGuidance`` and ``Compose`` specs come back as the same class with the same parts in the same order.
    Unknown types and malformed specs are errors naming what was wrong.
    """
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as exc:
            raise ValueError(f"an intervention spec must be JSON; could not parse it: {exc}") from exc
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ValueError(f"an intervention spec is an object with a 'type' (what spec() returns); got {spec!r:.200}")
    kind = spec["type"]
    if kind in ("Compose", "FocalGuidance"):
        parts = [intervention_from_spec(p) for p in spec.get("parts") or ()]
        if not parts:
            raise ValueError(f"a {kind} spec needs its 'parts'")
        return FocalGuidance.from_parts(parts) if kind == "FocalGuidance" else Compose(*parts)
    if kind not in _BUILD:
        raise ValueError(f"unknown intervention type {kind!r} in a spec; known: "
                         f"{', '.join([*_BUILD, 'Compose', 'FocalGuidance'])}")
    try:
        return _BUILD[kind](spec)
    except KeyError as exc:
        raise ValueError(f"the {kind} spec lacks {exc}; it is not what {kind}.spec() writes") from None
