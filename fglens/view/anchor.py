"""The anchor masks of a run's intervention: every `fg.AnchorMask` in the spec the run stored (its
``intervention`` attribute; an `fg.FocalGuidance` or `fg.compose` holds it among its parts), with the masks
themselves, which the spec keeps exactly (float32, zlib, base64: `fglens.interventions.codec`).

Example:
    >>> import torch, fglens as fg
    >>> edit = fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(torch.ones(2, 3), "dog", strength=2.0), layers=[1])
    >>> [a["words"] for a in anchor_masks({"intervention": edit.spec()})["anchors"]]
    [['dog']]
    >>> anchor_masks({"intervention": None})["note"]
    'this run had no intervention, so no anchor mask'
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..store.reader import intervention_summary
from .wire import pack


def anchor_specs(spec: Any) -> Iterator[Mapping[str, Any]]:
    """The ``AnchorMask`` specs inside an intervention spec (itself, or its parts at any depth), in order."""
    if not isinstance(spec, Mapping):
        return
    if spec.get("type") == "AnchorMask":
        yield spec
    for part in spec.get("parts") or ():
        yield from anchor_specs(part)


def anchor_masks(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"anchors": [...], "note"}`` from a run's attributes: per anchor its words, strength, frames, targets,
    scope and masks ``[word, y, x]`` (packed float32, exactly as the spec stored them); none, with a note
    saying why, when the run had no anchoring intervention."""
    from ..interventions.codec import decode_masks

    text = attrs.get("intervention")
    try:
        spec = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        spec = None
    specs = list(anchor_specs(spec))
    if not specs:
        kind = intervention_summary(text)
        note = ("this run had no intervention, so no anchor mask" if kind == "none"
                else f"this run's intervention ({kind}) has no anchor mask")
        return {"anchors": [], "note": note}
    anchors, missing = [], 0
    for s in specs:
        if "masks" not in s:  # stored before anchor specs kept their masks
            missing += 1
            continue
        masks = decode_masks(s["masks"]).numpy().astype(np.float32)
        anchors.append({"words": [str(w) for w in s.get("words", [])], "strength": s.get("strength"),
                        "frames": s.get("frames"), "targets": s.get("targets"), "where": s.get("where"),
                        **pack(masks)})
    note = (f"{missing} anchor(s) of this run were stored without their masks (an older fglens): not shown"
            if missing else "")
    return {"anchors": anchors, "note": note}
