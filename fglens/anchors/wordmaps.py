"""`WordMaps`: the cosine similarity of each word with each CLIP patch, and the word-list check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .grid import minmax, to_grid

# ----------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WordMaps:
    """Cosine similarity between each word and each CLIP patch of the reference image.

    Attributes:
        words: the words, in order.
        maps: ``[W, Hp, Wp]`` float32 cosine similarities (CPU) on the patch grid, which covers the whole
            image, row-major top to bottom.
        image_size: ``(height, width)`` of the image given.
        clip_size: ``(height, width)`` in pixels of the image as CLIP saw it (without padding).
        method: the dense method (a name in `DENSE_METHODS` or a `DenseSpec` repr).
        fit: ``"grid"`` or ``"pad"`` (see the module docstring).
    """

    words: tuple[str, ...]
    maps: torch.Tensor
    image_size: tuple[int, int]
    clip_size: tuple[int, int]
    method: str
    fit: str

    def index(self, word: str) -> int:
        """Position of `word`; a clear KeyError when it is not one of the words."""
        try:
            return self.words.index(word)
        except ValueError:
            raise KeyError(f"{word!r} is not one of the mapped words {list(self.words)}") from None

    def __getitem__(self, word: str) -> torch.Tensor:
        return self.maps[self.index(word)]

    @property
    def grid_hw(self) -> tuple[int, int]:
        """The patch grid ``(Hp, Wp)``."""
        return (int(self.maps.shape[-2]), int(self.maps.shape[-1]))

    def normalized(self) -> torch.Tensor:
        """Each map min-max scaled to [0, 1] (a constant map gives zeros)."""
        return minmax(self.maps)

    def relative(self, temperature: float = 0.01) -> torch.Tensor:
        """Softmax over the words at each patch (which word wins where), ``[W, Hp, Wp]``."""
        return torch.softmax(self.maps / temperature, dim=0)

    def to_grid(self, grid_hw: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
        """The maps resized to a latent grid ``(H', W')``: ``[W, H', W']``."""
        return to_grid(self.maps, grid_hw, mode=mode)




def _check_word_list(words: Sequence[str]) -> tuple[str, ...]:
    if isinstance(words, str):
        words = [words]
    words = tuple(words)
    if not words:
        raise ValueError("no words given")
    for w in words:
        if not isinstance(w, str) or not w.strip():
            raise ValueError(f"words must be non-empty strings; got {w!r}")
    dupes = sorted({w for w in words if words.count(w) > 1})
    if dupes:
        raise ValueError(f"duplicate words {dupes}")
    return words


