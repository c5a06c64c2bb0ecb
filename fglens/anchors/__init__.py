"""The CLIP side of Fine-grained Semantic Guidance: where each key word of the prompt sits in the
reference image, as a mask on the DiT's latent token grid.

- `Clip` wraps an open_clip model that is loaded only from local files or the user's cache (safetensors or
  ``torch.load(weights_only=True)``; never a download, never an arbitrary pickle) and computes dense
  word -> patch similarity maps with ClearCLIP's last-block recipe (see `fglens.anchors.clip`).
- `to_grid` resizes a map to the latent grid ``(H', W')`` (`latent_grid`), `threshold` turns it into a
  mask (Otsu, quantile, or soft), and `region_masks` does all of it, returning an `AnchorRegions` with the
  similarity map, the soft map and the mask for plotting.

Mapping words to DiT token positions is the adapters' job; this package delivers per-word masks.

Example:
    >>> import torch
    >>> from PIL import Image
    >>> from fglens import anchors
    >>> _ = torch.manual_seed(0)
    >>> clip = anchors.Clip(anchors.tiny_config())   # real: anchors.Clip("ViT-B-16", pretrained="weights.safetensors")
    >>> image = Image.new("RGB", (832, 480), "white")
    >>> regions = anchors.region_masks(clip, image, ["dog"], anchors.latent_grid(480, 832), prompt="a dog runs")
    >>> tuple(regions["dog"].shape)
    (30, 52)
"""

from .clip import DEFAULT_TEMPLATES, DENSE_METHODS, Clip, DenseSpec, WordMaps, load_state_dict, tiny_config
from .masks import AnchorRegions, check_words, latent_grid, minmax, otsu, region_masks, threshold, to_grid
from .presence import visible_words, word_presence

__all__ = [
    "DEFAULT_TEMPLATES",
    "DENSE_METHODS",
    "AnchorRegions",
    "Clip",
    "DenseSpec",
    "WordMaps",
    "check_words",
    "latent_grid",
    "load_state_dict",
    "minmax",
    "otsu",
    "region_masks",
    "threshold",
    "tiny_config",
    "to_grid",
    "visible_words",
    "word_presence",
]
