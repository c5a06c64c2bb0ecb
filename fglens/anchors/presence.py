"""Which of a prompt's words CLIP sees in the reference image: the default anchor words.

An anchor raises a word's attention inside the word's region of the reference image. A word that names nothing
in the image — a verb ("jumps"), an end-state attribute ("turns *blue*"), the camera ("pans") — has no region: its
mask is a threshold cut of a meaningless map. So by default only the words CLIP sees are anchored.

**The rule.** A word is *visible* when CLIP matches the whole image better to the word than to a generic noun:
``presence(w) = cos(I, T(w)) - cos(I, T("object"))`` with I the image embedding and T the text embedding
averaged over the same prompt templates as the word maps (`fglens.anchors.DEFAULT_TEMPLATES`), and ``presence(w) >
margin`` (default 0). Comparing with a generic noun under the same templates cancels what the templates and the
image share with any caption, so the score is about the word; it is a zero-shot test, no threshold is fitted.

**How well it works is a property of the CLIP model.** Measured on the toy world's tiny CLIP
(`fg.toy.clip()`, 200 test items, `tests/test_anchors.py` keeps a smaller check): it keeps 95 % of the named
objects' words but drops only 35 % of the camera words ("pans", "zooms"). That CLIP was trained on object names
only, so a word it never saw (the camera's verbs, "object" itself) has an arbitrary embedding; the toy suite
therefore names its anchor words itself. A CLIP trained on open captions knows both the word and the generic noun;
fglens has no such weights here to measure it with. Where the rule is not trusted, give ``anchor_words`` per item,
or ``"anchor_words": "all"`` in the recipe.

Example:
    >>> import torch, fglens as fg
    >>> _ = torch.manual_seed(0)
    >>> clip = fg.anchors.Clip(fg.anchors.tiny_config())
    >>> scores = fg.anchors.word_presence(clip, fg.testing.reference_image(), ["dog", "jumps"])
    >>> sorted(scores)
    ['dog', 'jumps']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .clip import DEFAULT_TEMPLATES, Clip

#: the generic noun every word is compared with
GENERIC = "object"


def word_presence(clip: Clip, image: Any, words: Sequence[str], *, generic: str = GENERIC,
                  templates: Sequence[str] | None = DEFAULT_TEMPLATES) -> dict[str, float]:
    """Per word, ``cos(image, word) - cos(image, generic)`` (see the module docstring): > 0 when CLIP matches the
    image to the word better than to a generic noun."""
    words = list(words)
    if not words:
        return {}
    image_emb = clip.image_features(image)
    text = clip.text_features([*words, generic], templates).to(image_emb.device)
    cos = text @ image_emb
    return {w: float(cos[i] - cos[-1]) for i, w in enumerate(words)}


def visible_words(clip: Clip, image: Any, words: Sequence[str], *, margin: float = 0.0,
                  generic: str = GENERIC) -> list[str]:
    """The words of `words` CLIP sees in `image` (presence above `margin`), in their order.

    Example:
        >>> import torch, fglens as fg
        >>> _ = torch.manual_seed(0)
        >>> clip = fg.anchors.Clip(fg.anchors.tiny_config())
        >>> isinstance(fg.anchors.visible_words(clip, fg.testing.reference_image(), ["dog"]), list)
        True
    """
    if not math.isfinite(margin):
        raise ValueError(f"visible_words margin must be a finite number; got {margin}")
    scores = word_presence(clip, image, words, generic=generic)
    return [w for w in words if scores[w] > margin]
