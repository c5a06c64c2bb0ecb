"""`fg.AnchorMask`: Fine-grained Semantic Guidance — raise a word's attention inside its image region.

Adds ``λ · M_w[n] · 1[j ∈ K_w]`` to the text logits of the scoped sites, with M_w a mask on the latent token
grid (one (y, x) map per word, applied to all frames, the first frame only, or decaying over frames). The
bias has rank W (one column per word): it rides through the model's fused kernel as W extra head
dimensions, so no N×T mask is ever built.

Its `targets` choose which keys the region's queries are pulled to (each a logit bias of rank W, composable):

==============  ======================================================================================  ===========
target          bias on the logits of video query n (in frame f, cell (y, x)) and key j                 sites
==============  ======================================================================================  ===========
``text``        ``+λ·M_w[n]·1[j ∈ K_w]``: the word's text columns, inside the region (the default)       text, joint
``outside``     ``−λ·γ_f·(1 − m_w(y, x))·1[j ∈ K_w]``: the word's columns, outside the region           text, joint
``image``       ``+λ·M_w[n]·I_w[j]``: the image-condition tokens of the same region (I_w: the mask       image, joint
                averaged over each token's cell of the image encoder's view, `fglens.adapters.ImageGrid`)
``reference``   ``+λ·M_w[n]·m_w(y_j, x_j)·1[j in latent frame 0]``: the reference frame's latent         self, joint
                tokens of the region (self-attention)
==============  ======================================================================================  ===========

with ``M_w[n] = γ_f · m_w(y, x)`` (γ the frame weights of `frames`). Each target's λ is `strength` times its
weight (``targets={"text": 1.0, "outside": 0.5}``).
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
        targets: which keys the region is pulled to (see the module docstring): a sequence of `TARGETS`, or a
            mapping target -> weight (its λ is `strength` times the weight). Default ``("text",)``.

    Example:
        >>> import torch, fglens as fg
        >>> mask = torch.zeros(4, 6); mask[1:3, 1:3] = 1
        >>> anchor = fg.AnchorMask.from_mask(mask, "dog", strength=2.0)
        >>> anchor.words, tuple(anchor.masks.shape)
        (['dog'], (1, 4, 6))
    """

    def __init__(
        self,
        masks: torch.Tensor | Mapping[str, torch.Tensor],
        words: Sequence[str] | None = None,
        strength: float = 1.0,
        frames: str | float = "all",
        where: Where | None = None,
        regions: Any = None,
        targets: Sequence[str] | Mapping[str, float] = ("text",),
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
        self.targets = _targets(targets)
        #: the sites this anchor acts at: those of its targets
        self.kinds = frozenset(kind for t in self.targets for kind in _TARGET_KINDS[t])
        self.masks = masks
        self.words = list(words)
        self.strength = finite(strength, "AnchorMask strength")
        self.frames = frames
        self.where = where or Where()
        self.regions = regions  # the CLIP maps behind the masks, for plotting (from_clip)
        self._blank = not bool(masks.any())  # all-zero masks: no bias, the model's own kernel (read once, here)
        self._encoded = encode_masks(masks)  # for spec(), which runs inside the first forward: no device read there
        self._tokens: dict[tuple, torch.Tensor] = {}  # token_masks per (grid, device): built once, not per call
        self._keys: dict[tuple, torch.Tensor] = {}  # image / reference key masks per layout and device

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
                "frames": self.frames, "targets": dict(self.targets), "mask_shape": list(self.masks.shape),
                "where": _where_spec(self.where), "masks": self._encoded}

    def bind(self, layers, per_model, site_kinds) -> None:
        super().bind(layers, per_model, site_kinds)
        for target in self.targets:
            if not _TARGET_KINDS[target] & set(site_kinds):
                raise ValueError(f"AnchorMask target {target!r} acts at {' or '.join(sorted(_TARGET_KINDS[target]))} "
                                 f"attention sites; this model has {sorted(site_kinds)}")

    def _frame_weights(self, frames: int) -> torch.Tensor:
        if self.frames == "all":
            return torch.ones(frames)
        if self.frames == "first":
            return torch.eye(frames)[0]
        return torch.tensor([self.frames**f for f in range(frames)])

    def token_masks(self, grid: tuple[int, int, int], device: torch.device, outside: bool = False) -> torch.Tensor:
        """M_w[n] over the video tokens: ``[W, F*Y*X]`` (frame-major); ``γ_f·(1 − m_w)`` with `outside`; made once
        per grid and device."""
        key = (tuple(grid), torch.device(device), outside)
        if key not in self._tokens:
            self._tokens[key] = self._token_masks(grid, outside).to(device)
        return self._tokens[key]

    def _grid_masks(self, ny: int, nx: int) -> torch.Tensor:
        m = self.masks
        if m.shape[-2:] != (ny, nx):
            m = F.interpolate(m[None], size=(ny, nx), mode="area" if m.shape[-1] >= nx else "bilinear")[0]
        return m

    def _token_masks(self, grid: tuple[int, int, int], outside: bool = False) -> torch.Tensor:
        f, ny, nx = grid
        m = self._grid_masks(ny, nx)
        weights = self._frame_weights(f)
        return (weights[None, :, None, None] * ((1 - m) if outside else m)[:, None]).reshape(len(self.words), -1)

    def biases(self, call: EditCall) -> list[Bias]:
        if self.strength == 0.0:
            return []
        out = []
        for target, weight in self.targets.items():
            if weight == 0.0 or (self._blank and target != "outside") or call.site.kind not in _TARGET_KINDS[target]:
                continue
            keys = self._key_masks(call, target)  # [B, S, W], or None: no key of this target in the call
            if keys is None:
                continue
            b, nq, h, _ = call.query.shape
            r0, r1 = call.video_rows
            rows = self.token_masks(call.forward.grid, call.query.device, outside=target == "outside")  # [W, N]
            sign = -1.0 if target == "outside" else 1.0
            q = call.query.new_zeros((b, nq, h, len(self.words)), dtype=torch.float32)
            q[:, r0:r1] = sign * self.strength * weight * rows.T[None, :, None, :]
            q = q * call.rows_mask(self.where)[..., None]
            out.append(Bias(q, keys[:, :, None, :].expand(-1, -1, h, -1), cols=(self._key_span(call, target),)))
        return out

    @staticmethod
    def _key_span(call: EditCall, target: str) -> tuple[int, int]:
        """The key range of `target`'s columns in this call (host values)."""
        if target in ("text", "outside"):
            return call.text_keys
        if target == "image":
            return call.image_keys
        per_frame = call.forward.grid[1] * call.forward.grid[2]
        return call.video_rows[0], call.video_rows[0] + per_frame

    def _key_masks(self, call: EditCall, target: str) -> torch.Tensor | None:
        """``[B, S_keys, W]``: the keys `target` pulls each word's region to in this call (None: none here)."""
        n_keys = call.key.shape[1]
        if target in ("text", "outside"):
            if not any(column_sets(call, self.words)):
                return None
            return torch.stack([word_columns(call, [w], n_keys) for w in self.words], -1)
        if target == "image":
            if call.image_keys is None or call.image_keys[1] <= call.image_keys[0]:
                return None
            if call.image_grid is None:
                raise ValueError(f"AnchorMask target 'image' at {call.site.name}: fglens does not know where this "
                                 "call's image-condition tokens sit in the reference image (a bare transformer, or a "
                                 "pipeline without an image processor); use the text or reference targets here")
            span, layout = call.image_keys, call.image_grid
        else:  # reference: the first latent frame's tokens (video keys start where the video queries do)
            per_frame = call.forward.grid[1] * call.forward.grid[2]
            span, layout = (call.video_rows[0], call.video_rows[0] + per_frame), None
        cache = (target, n_keys, span, layout, tuple(call.forward.grid), call.key.device)
        if cache not in self._keys:
            k = torch.zeros(n_keys, len(self.words))
            if layout is not None:
                k[span[0] : span[1]] = layout.token_masks(self._grid_masks(*call.forward.grid[1:]), span[1] - span[0]).T
            else:
                k[span[0] : span[1]] = self._grid_masks(*call.forward.grid[1:]).reshape(len(self.words), -1).T
            self._keys[cache] = k.to(call.key.device)
        return self._keys[cache][None].expand(call.key.shape[0], -1, -1)


#: the targets an anchor can pull a word's region to, and the attention sites each acts at
TARGETS = ("text", "outside", "image", "reference")
_TARGET_KINDS = {"text": frozenset({"text", "joint"}), "outside": frozenset({"text", "joint"}),
                 "image": frozenset({"image", "joint"}), "reference": frozenset({"self", "joint"})}


def _targets(targets: Sequence[str] | Mapping[str, float]) -> dict[str, float]:
    """Target -> weight, checked (known targets, finite weights, at least one)."""
    if isinstance(targets, str):
        targets = (targets,)
    pairs = dict(targets) if isinstance(targets, Mapping) else {t: 1.0 for t in targets}
    unknown = [t for t in pairs if t not in TARGETS]
    if unknown or not pairs:
        raise ValueError(f"AnchorMask targets are some of {list(TARGETS)}; got {list(pairs) or 'none'}")
    return {t: finite(float(w), f"AnchorMask weight of target {t!r}") for t, w in pairs.items()}
