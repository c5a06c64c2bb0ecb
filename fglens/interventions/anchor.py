"""`fg.AnchorMask`: Fine-grained Semantic Guidance — raise a word's attention inside its image region.

Adds ``λ · M_w[n] · 1[j ∈ K_w]`` to the text logits of the scoped sites, with M_w a mask on the latent token
grid (one (y, x) map per word, applied to all frames, the first frame only, or decaying over frames). The
bias has rank W (one column per word): it rides through the model's fused kernel as W extra head
dimensions, so no N×T mask is ever built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..core.protocol import Bias, EditCall
from ..core.scope import Where, finite
from .codec import encode_masks
from .tools import _Scoped, _where_spec, column_sets, word_columns


class AnchorMask(_Scoped):
    """Anchor each word's attention to a region of the latent grid.

    Args:
        masks: ``[W, Y, X]`` (one map per word, values in [0, 1]) or a mapping ``{word: [Y, X]}``. Maps of
            another size than the call's latent grid are resized (area / bilinear).
        words: the words, in the order of `masks` (taken from the mapping's keys when omitted).
        strength: λ, the logit bonus inside the region. 0 leaves the model untouched.
        frames: ``"all"``, ``"first"``, or a float γ in (0, 1]: frame f gets weight γ**f.
        where: further scope (layers, steps, branches, frames, heads).

    Example:
        >>> import torch, fglens as fg
        >>> mask = torch.zeros(4, 6); mask[1:3, 1:3] = 1
        >>> anchor = fg.AnchorMask.from_mask(mask, "dog", strength=2.0)
        >>> anchor.words, tuple(anchor.masks.shape)
        (['dog'], (1, 4, 6))
    """

    kinds = frozenset({"text", "joint"})

    def __init__(
        self,
        masks: torch.Tensor | Mapping[str, torch.Tensor],
        words: Sequence[str] | None = None,
        strength: float = 1.0,
        frames: str | float = "all",
        where: Where | None = None,
        regions: Any = None,
    ):
        if isinstance(masks, Mapping):
            words = list(masks) if words is None else list(words)
            masks = torch.stack([torch.as_tensor(masks[w], dtype=torch.float32) for w in words])
        masks = torch.as_tensor(masks, dtype=torch.float32)
        if masks.ndim == 2:
            masks = masks[None]
        if masks.ndim != 3:
            raise ValueError(
                f"AnchorMask masks must be [W, Y, X] (or a mapping word -> [Y, X]); got {tuple(masks.shape)}"
            )
        if words is None or len(words) != masks.shape[0]:
            raise ValueError(f"AnchorMask needs one word per mask: {masks.shape[0]} masks, words={words}")
        if masks.shape[-2] == 0 or masks.shape[-1] == 0:
            raise ValueError(f"AnchorMask masks must have at least one row and one column (any size is resized to the "
                             f"latent grid); got a {masks.shape[-2]}x{masks.shape[-1]} mask")
        if not torch.isfinite(masks).all():
            raise ValueError("AnchorMask masks must be finite (values in [0, 1]); got NaN or infinite values in the "
                             f"mask of {[w for w, m in zip(words, masks, strict=True) if not torch.isfinite(m).all()]}")
        if not (frames in ("all", "first") or (isinstance(frames, float) and 0.0 < frames <= 1.0)):
            raise ValueError(f"frames must be 'all', 'first' or a decay in (0, 1]; got {frames!r}")
        self.masks = masks
        self.words = list(words)
        self.strength = finite(strength, "AnchorMask strength")
        self.frames = frames
        self.where = where or Where()
        self.regions = regions  # the CLIP maps behind the masks, for plotting (from_clip)
        self._blank = not bool(masks.any())  # all-zero masks: no bias, the model's own kernel (read once, here)
        self._encoded = encode_masks(masks)  # for spec(), which runs inside the first forward: no device read there
        self._tokens: dict[tuple, torch.Tensor] = {}  # token_masks per (grid, device): built once, not per call

    @classmethod
    def from_mask(cls, mask: torch.Tensor, word: str, strength: float = 1.0, **kwargs: Any) -> AnchorMask:
        """One word's anchor from a ``[Y, X]`` mask on the latent grid (or at any resolution)."""
        return cls(torch.as_tensor(mask, dtype=torch.float32)[None], [word], strength, **kwargs)

    @classmethod
    def from_clip(
        cls,
        image: Any,
        prompt: str,
        words: Sequence[str],
        clip: Any,
        strength: float = 1.0,
        *,
        height: int | None = None,
        width: int | None = None,
        threshold: str | None = "otsu",
        token_px: int = 16,
        **kwargs: Any,
    ) -> AnchorMask:
        """Anchors from CLIP: where each word sits in the reference image (see `fglens.anchors`).

        The masks are made on the latent token grid of the pipeline call, height/`token_px` x width/`token_px`
        (the image's size by default). `token_px` is the pixels per token side, the VAE's spatial stride times the
        patch size: 16 for Wan 2.1/2.2 A14B, HunyuanVideo and CogVideoX, 8 for the toy world;
        `fglens.pipelines.spatial_multiple(pipe)` gives a pipeline's. A word not in the prompt is an error.
        `anchor.regions` keeps the similarity map and the masks for plotting.

        Example:
            >>> import fglens as fg
            >>> clip = fg.anchors.Clip(fg.anchors.tiny_config())  # real: Clip("ViT-H-14", pretrained=path)
            >>> anchor = fg.AnchorMask.from_clip(fg.testing.reference_image(96, 64), "a dog runs", ["dog"], clip)
            >>> tuple(anchor.masks.shape)
            (1, 4, 6)
        """
        from ..anchors import latent_grid, region_masks

        w_px, h_px = image.size
        grid = latent_grid(height or h_px, width or w_px, token_px)
        regions = region_masks(clip, image, list(words), grid, prompt=prompt, threshold=threshold)
        return cls(regions.mask, list(words), strength, regions=regions, **kwargs)

    def requires(self) -> dict[str, Any]:
        return {"words": list(self.words)}

    def spec(self) -> dict[str, Any]:
        return {"type": "AnchorMask", "words": self.words, "strength": self.strength,
                "frames": self.frames, "mask_shape": list(self.masks.shape), "where": _where_spec(self.where),
                "masks": self._encoded}

    def _frame_weights(self, frames: int) -> torch.Tensor:
        if self.frames == "all":
            return torch.ones(frames)
        if self.frames == "first":
            return torch.eye(frames)[0]
        return torch.tensor([self.frames**f for f in range(frames)])

    def token_masks(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """M_w[n] over the video tokens: ``[W, F*Y*X]`` (frame-major); made once per grid and device."""
        key = (tuple(grid), torch.device(device))
        if key not in self._tokens:
            self._tokens[key] = self._token_masks(grid).to(device)
        return self._tokens[key]

    def _token_masks(self, grid: tuple[int, int, int]) -> torch.Tensor:
        f, ny, nx = grid
        m = self.masks
        if m.shape[-2:] != (ny, nx):
            m = F.interpolate(m[None], size=(ny, nx), mode="area" if m.shape[-1] >= nx else "bilinear")[0]
        weights = self._frame_weights(f)
        return (weights[None, :, None, None] * m[:, None]).reshape(len(self.words), -1)

    def biases(self, call: EditCall) -> list[Bias]:
        if self.strength == 0.0 or self._blank or not any(column_sets(call, self.words)):
            return []
        b, nq, h, _ = call.query.shape
        r0, r1 = call.video_rows
        tokens = self.token_masks(call.forward.grid, call.query.device)  # [W, N]
        q = call.query.new_zeros((b, nq, h, len(self.words)), dtype=torch.float32)
        q[:, r0:r1] = self.strength * tokens.T[None, :, None, :]
        q = q * call.rows_mask(self.where)[..., None]
        k = torch.stack([word_columns(call, [w], call.key.shape[1]) for w in self.words], -1)  # [B, S, W]
        return [Bias(q, k[:, :, None, :].expand(-1, -1, h, -1))]
