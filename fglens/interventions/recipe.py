"""Interventions from plain JSON recipes: what a sweep's spec line, the CLI and the evaluation hand over.

An intervention object holds tensors (anchor masks) that depend on each item's reference image and prompt, so
files hold a *recipe* instead, and `from_recipe` builds the intervention for one item. Recipes are dicts
(``{"type": "focal_guidance", "layers": [12, 13], "alpha": 0.5}``); their ``type`` is one of `RECIPES`
(``-`` and ``_`` are interchangeable), every other key is an argument:

=================  ==============================================================================================
``focal_guidance``  ``layers`` (required), ``src`` (cache sources; default: none → anchor only), ``alpha`` (0.5),
                    ``strength`` (anchor, 2.0), ``words`` (default: the item's anchor words), ``steps``
                    ([0.0, 0.5]), ``branches`` (["cond"]), ``anchor`` (true), ``clip`` (see below; needed when
                    anchor is true), the anchor's ``frames``, ``threshold`` and ``targets``, the cache's ``mode``,
                    ``pairing``, ``heads`` and ``source_map``
``cache_transfer``  ``src``, ``dst`` (required), ``alpha`` (0.5), ``mode`` ("auto"), ``pairing`` ("auto"),
                    ``heads`` ("each"), ``source_map`` ("edited"), ``steps``, ``branches``
``anchor_mask``     ``words`` (default: the item's anchor words), ``strength`` (2.0), ``frames`` ("all"),
                    ``threshold`` ("otsu"), ``targets`` (["text"]), ``layers``, ``steps``, ``branches``, ``clip``
``scale``           ``words`` (default: the item's), ``factor`` (required), ``layers``, ``steps``, ``branches``
``ablate``          ``segment`` ("image" | "text", required), ``layers``, ``steps``, ``branches``
=================  ==============================================================================================

The operator parameters mean what `fg.AnchorMask` (``frames``: "all", "first" or a decay in (0, 1];
``targets``: a list of "text", "outside", "image", "reference" or an object target -> weight),
`fg.AnchorMask.from_clip` (``threshold``: "otsu", "quantile" or null for soft masks) and `fg.CacheTransfer`
(``mode``, ``pairing``, ``heads``, ``source_map``) say. ``clip`` is ``{"model": "ViT-H-14", "pretrained":
"/path/weights.safetensors", "dense": "clearclip"}`` (a local file, as `fg.anchors.Clip` takes; ``dense`` is
optional, a name in `fglens.anchors.DENSE_METHODS`) or ``"tiny"`` (a random-weight tiny CLIP, for tests and the
tiny pipelines only). Steps given as a two-element list of floats are fractions of the schedule, as in `fg.Where`.

Example:
    >>> import fglens as fg
    >>> from fglens.interventions.recipe import from_recipe
    >>> edit = from_recipe({"type": "cache-transfer", "src": [3], "dst": [1, 2], "alpha": 0.25})
    >>> edit.spec()["alpha"]
    0.25
    >>> from_recipe({"type": "focal_guidance"})
    Traceback (most recent call last):
    ...
    ValueError: recipe focal_guidance needs 'layers'; ...
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.protocol import Intervention
from ..core.scope import Where
from .anchor import AnchorMask
from .cache import CacheTransfer
from .focal import FocalGuidance
from .tools import Ablate, Scale

#: recipe types and the keys each accepts
_CACHE_KEYS = ("mode", "pairing", "heads", "source_map")
_ANCHOR_KEYS = ("frames", "threshold", "targets")
#: which of an item's words an anchor takes when neither the recipe's ``words`` nor the item's ``anchor_words``
#: say: ``"visible"`` (those CLIP sees in the image, `fglens.anchors.visible_words`) or ``"all"``
ANCHOR_WORD_RULES = ("visible", "all")
RECIPES: dict[str, tuple[str, ...]] = {
    "focal_guidance": ("layers", "src", "alpha", "strength", "words", "anchor_words", "steps", "branches", "anchor",
                       "clip", *_ANCHOR_KEYS, *_CACHE_KEYS),
    "cache_transfer": ("src", "dst", "alpha", *_CACHE_KEYS, "steps", "branches"),
    "anchor_mask": ("words", "anchor_words", "strength", *_ANCHOR_KEYS, "layers", "steps", "branches", "clip"),
    "scale": ("words", "factor", "layers", "steps", "branches"),
    "ablate": ("segment", "layers", "steps", "branches"),
}
_REQUIRED = {"focal_guidance": ("layers",), "cache_transfer": ("src", "dst"), "scale": ("factor",),
             "ablate": ("segment",)}


def parse_recipe(recipe: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    """Check a recipe (a dict, its JSON text, or None / "none") and return it normalised, without building it.

    Errors name the unknown type or key and list what is accepted, so a sweep can refuse a bad spec line
    before any sampling starts.
    """
    if recipe is None or (isinstance(recipe, str) and recipe.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(recipe, str):
        try:
            recipe = json.loads(recipe)
        except ValueError as exc:
            raise ValueError(f"an intervention recipe must be JSON; got {recipe!r}: {exc}") from exc
    if not isinstance(recipe, Mapping):
        raise ValueError(f"an intervention recipe is a JSON object with a 'type'; got {type(recipe).__name__}")
    kind = str(recipe.get("type", "")).replace("-", "_").lower()
    if kind not in RECIPES:
        raise ValueError(f"unknown intervention type {recipe.get('type')!r}; accepted: {', '.join(RECIPES)}")
    unknown = sorted(set(recipe) - {"type", *RECIPES[kind]})
    if unknown:
        raise ValueError(f"recipe {kind} does not take {unknown}; it accepts {', '.join(RECIPES[kind])}")
    for key in _REQUIRED.get(kind, ()):
        if recipe.get(key) is None:
            raise ValueError(f"recipe {kind} needs {key!r}; it accepts {', '.join(RECIPES[kind])}")
    rule = recipe.get("anchor_words", "visible")
    if rule not in ANCHOR_WORD_RULES:
        raise ValueError(f"recipe {kind}: 'anchor_words' is one of {list(ANCHOR_WORD_RULES)} (the words CLIP sees in "
                         f"the image, or every word of the item); got {rule!r}")
    for key, value in recipe.items():
        bad = _non_finite(value)
        if bad is not None:
            raise ValueError(f"recipe {kind}: {key!r} must hold finite numbers; got {bad} in {value!r}")
    return {**recipe, "type": kind}


def _non_finite(value: Any) -> float | None:
    """The first NaN or infinity in a recipe value (JSON text may spell them NaN / Infinity), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            bad = _non_finite(v)
            if bad is not None:
                return bad
    return None


def recipe_layers(recipe: Mapping[str, Any] | str | None) -> list[int | str]:
    """Every layer a recipe names (to check against a model before sampling)."""
    parsed = parse_recipe(recipe) or {}
    out: list[int | str] = []
    for key in ("layers", "src", "dst"):
        value = parsed.get(key)
        if value is not None:
            out += [value] if isinstance(value, (int, str)) else list(value)
    return out


def _where(recipe: Mapping[str, Any], layers_key: str | None = "layers") -> Where:
    steps = recipe.get("steps")
    if isinstance(steps, Sequence) and len(steps) == 2 and any(isinstance(s, float) for s in steps):
        steps = (float(steps[0]), float(steps[1]))
    return Where(layers=recipe.get(layers_key) if layers_key else None, steps=steps,
                 branches=recipe.get("branches"))


def load_clip(spec: Any, clip: Any = None) -> Any:
    """The CLIP model a recipe's ``clip`` entry names (`clip`, when given, wins): ``"tiny"`` or
    ``{"model": ..., "pretrained": ...}``; load it once and pass it to `from_recipe` for many items."""
    if clip is not None:
        return clip
    from .. import anchors

    if spec == "tiny":
        import torch

        torch.manual_seed(0)
        return anchors.Clip(anchors.tiny_config())
    if isinstance(spec, Mapping) and "model" in spec:
        unknown = sorted(set(spec) - {"model", "pretrained", "dense"})
        if unknown:
            raise ValueError(f"a recipe's clip takes 'model', 'pretrained' and 'dense'; got {unknown}")
        return anchors.Clip(spec["model"], pretrained=spec.get("pretrained"), dense=spec.get("dense", "clearclip"))
    raise ValueError(
        "an anchor needs a CLIP model: give the recipe a 'clip' ({\"model\": \"ViT-H-14\", \"pretrained\": "
        "\"/path/to/weights.safetensors\"}, or \"tiny\" for the tiny test pipelines), or set \"anchor\": false"
    )


def from_recipe(
    recipe: Mapping[str, Any] | str | None,
    *,
    image: Any = None,
    prompt: str | None = None,
    words: Sequence[str] | None = None,
    clip: Any = None,
    size: tuple[int, int] | None = None,
    token_px: int = 16,
    anchor_words: Sequence[str] | None = None,
) -> Intervention | None:
    """Build the intervention a recipe describes for one item (None for no intervention).

    An anchor's words are the recipe's ``words`` when it gives them, else the item's `anchor_words` when it has
    them, else the item's `words` that CLIP sees in the image (``"anchor_words": "visible"``, the default;
    `fglens.anchors.visible_words`) or all of them (``"all"``). An item left with no anchor word gets no anchor:
    a focal_guidance recipe keeps its cache transfer (None when it has none), an anchor_mask recipe gives None.

    Args:
        recipe: a dict, its JSON text, or None / ``"none"``.
        image, prompt, words: the item (anchors need the reference image, the prompt and the words).
        anchor_words: the item's own choice of words to anchor (a suite's or sweep line's ``anchor_words``).
        clip: an `fg.anchors.Clip` to use instead of the recipe's ``clip`` entry (load it once for many items).
        size: the video's (height, width), so the anchor lands on the right latent grid (default: the image's).
        token_px: pixels per latent token side (`fglens.pipelines.spatial_multiple(pipe)`; 16 for Wan).
    """
    parsed = parse_recipe(recipe)
    if parsed is None:
        return None
    kind = parsed["type"]
    item_words = list(parsed.get("words") or words or [])
    if kind == "cache_transfer":
        return CacheTransfer(parsed["src"], parsed["dst"], float(parsed.get("alpha", 0.5)),
                             where=_where(parsed, None), **_given(parsed, _CACHE_KEYS))
    if kind == "ablate":
        return Ablate(parsed["segment"], where=_where(parsed))
    if kind == "scale":
        _need_words(kind, item_words)
        return Scale(item_words, float(parsed["factor"]), where=_where(parsed))
    anchor = None
    if kind == "anchor_mask" or parsed.get("anchor", True):
        _need_words(kind, item_words)
        if image is None or prompt is None:
            raise ValueError(f"recipe {kind} builds a CLIP anchor: it needs the item's image and prompt")
        clip = load_clip(parsed.get("clip"), clip)
        anchored = _anchor_words(parsed, item_words, anchor_words, image, clip)
        if anchored:
            height, width = size if size is not None else (None, None)
            where = _where(parsed) if kind == "anchor_mask" else None
            anchor = AnchorMask.from_clip(image, prompt, words=anchored, clip=clip,
                                          strength=float(parsed.get("strength", 2.0)), height=height, width=width,
                                          token_px=token_px, **_given(parsed, _ANCHOR_KEYS),
                                          **({"where": where} if where is not None else {}))
    if kind == "anchor_mask":
        return anchor  # None when the item has no word to anchor
    if anchor is None and parsed.get("src") is None:
        return None  # no word to anchor and no cache transfer: nothing to apply to this item
    cache = None
    if parsed.get("src") is not None:
        cache = CacheTransfer(parsed["src"], parsed["layers"], float(parsed.get("alpha", 0.5)),
                              **_given(parsed, _CACHE_KEYS))
    steps = _where(parsed).steps
    return FocalGuidance(anchor=anchor, cache=cache, layers=parsed["layers"],
                         steps=(0.0, 0.5) if steps is None else steps,
                         branches=tuple(parsed.get("branches") or ("cond",)))


def _anchor_words(recipe: Mapping[str, Any], words: list[str], item_choice: Sequence[str] | None, image: Any,
                  clip: Any) -> list[str]:
    """The words an anchor takes for one item (see `from_recipe`)."""
    if recipe.get("words"):
        return list(recipe["words"])
    if item_choice is not None:
        return list(item_choice)
    if recipe.get("anchor_words", "visible") == "all":
        return list(words)
    from ..anchors import visible_words

    return visible_words(clip, image, words)


def _given(recipe: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The recipe's values of `keys` that it gives (the operator's own defaults otherwise)."""
    return {key: recipe[key] for key in keys if key in recipe}


def _need_words(kind: str, words: Sequence[str]) -> None:
    if not words:
        raise ValueError(f"recipe {kind} needs words: give 'words' in the recipe or the item's words")
