"""Dense CLIP word -> region maps of a reference image (the CLIP side of Fine-grained Semantic Guidance).

`Clip` wraps an open_clip model, its tokenizer and its image normalisation. It never downloads anything:
weights come from a local file (``.safetensors`` through safetensors; ``.pt``/``.pth``/``.bin``/``.ckpt``
through ``torch.load(weights_only=True)``, so arbitrary pickles are refused), from a folder holding such a
file, or from the user's open_clip / Hugging Face cache when they are already there. ``pretrained=None``
gives random weights (tests, demos).

Dense features: ClearCLIP by default
------------------------------------
Raw last-layer patch tokens of CLIP localise badly: their similarity to a text embedding is noisy and
nearly uniform over the image, because the last block's global query-key attention and its residual
stream carry mostly image-level (class-token-like) information. fglens uses the training-free
**ClearCLIP** recipe (Lan et al., ECCV 2024, "ClearCLIP: Decomposing CLIP Representations for Dense
Vision-Language Inference") on the *last* vision block only:

1. self-self attention: ``softmax(q qᵀ / √d)`` instead of ``softmax(q kᵀ / √d)``, so each patch attends
   to patches that look like itself;
2. no residual connection around that attention;
3. no feed-forward network;

then the tower's own ``ln_post`` and ``proj`` map the tokens into the joint image-text space. Why this
one: it needs no training and no extra weights, changes a single block, and in its paper it beats both
MaskCLIP (value-embedding path) and SCLIP (correlative q-q + k-k attention) on open-vocabulary
segmentation, which is the task closest to "where is this word in the image". The others are available
for comparison through `DenseSpec` / `DENSE_METHODS`: ``"sclip"`` (q-q + k-k attention), ``"maskclip"``
(value path: identity attention), ``"raw"`` (the unmodified last block: the baseline).

Everything is computed from the modules of open_clip's own ``VisionTransformer`` (``conv1``,
``class_embedding``, ``positional_embedding``, ``ln_pre``, the residual blocks, ``ln_post``, ``proj``);
the model is never modified and no hook is installed.

Aspect ratio: non-square grid with interpolated positional embeddings
---------------------------------------------------------------------
The reference image of a video is rarely square (Wan: 832x480). By default (``fit="grid"``) the image is
resized, aspect kept, so that its short side is ``resolution`` pixels (the model's input size by
default) and both sides are multiples of the patch size (at most half a patch of rounding); the ViT then
runs on that non-square patch grid, its positional embeddings resized bicubically from the trained grid
(the class token's embedding kept). The map covers the whole image with no padding and more patches
along the long side. ``fit="pad"`` instead letterboxes the image into the trained square input (no
positional interpolation) and crops the map back to the image; useful for towers whose embeddings do not
interpolate well. Either way the map is undistorted; `fglens.anchors.to_grid` then resizes it to the
DiT's latent grid.

Example:
    >>> import torch
    >>> from PIL import Image
    >>> from fglens.anchors import Clip, tiny_config
    >>> _ = torch.manual_seed(0)
    >>> clip = Clip(tiny_config())          # random weights; real use: Clip("ViT-B-16", pretrained=path)
    >>> maps = clip.word_maps(Image.new("RGB", (80, 48), "red"), ["dog", "fence"])
    >>> maps.words, tuple(maps.maps.shape)  # one cosine-similarity map per word on the patch grid
    (('dog', 'fence'), (2, 8, 13))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .dense import DENSE_METHODS, DenseSpec, _dense_block, _image_tensor, _resize, _round_to
from .weights import (
    _OPENAI_MEAN,
    _OPENAI_STD,
    WEIGHT_SUFFIXES,
    _build_model,
    _cached_tag,
    _find_in_dir,
    _load_into,
    _looks_like_path,
    _needs_hf,
    _require_offline,
    _resolve_config,
    _tokenizer_for,
    load_state_dict,
    tiny_config,
)
from .wordmaps import WordMaps, _check_word_list

__all__ = [
    "DEFAULT_TEMPLATES",
    "DENSE_METHODS",
    "Clip",
    "DenseSpec",
    "WordMaps",
    "load_state_dict",
    "tiny_config",
]

#: Prompt templates averaged for each word (a subset of CLIP's ImageNet ensemble plus two scene templates
#: used by dense CLIP segmentation methods). Pass ``templates=()`` to embed the bare word.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of the {}.",
    "a cropped photo of the {}.",
    "a good photo of the {}.",
    "a bright photo of the {}.",
    "there is a {} in the scene.",
    "this is a {} in the scene.",
)



# ----------------------------------------------------------------------------------------------------------
# the wrapper
# ----------------------------------------------------------------------------------------------------------


class Clip:
    """An open_clip model used as a dense word -> region locator. Loads only local weights.

    Args:
        model_name: an open_clip model name (``"ViT-B-16"``; see ``open_clip.list_models()``), an
            open_clip config dict (``{"embed_dim", "vision_cfg", "text_cfg"}`` or the
            ``{"model_cfg", "preprocess_cfg"}`` of an ``open_clip_config.json``), ``"local-dir:/folder"``
            (config and weights from a folder) or ``"hf-hub:org/repo"`` (from the local Hugging Face cache
            only; the weights come with the name, so `pretrained` must be None).
        pretrained: None for random weights; a local weights file (``.safetensors``, or ``.pt``/``.pth``/
            ``.bin``/``.ckpt`` read with ``torch.load(weights_only=True)``); a folder holding one; or an
            open_clip pretrained tag (``"laion2b_s34b_b88k"``) whose file is already in the open_clip / HF
            cache. Nothing is ever downloaded.
        device: where the model runs (default CPU).
        dtype: optional parameter dtype (e.g. ``torch.float16`` on a GPU). Maps are returned in float32.
        dense: the dense-feature method: a name in `DENSE_METHODS` (default ``"clearclip"``) or a
            `DenseSpec`.
        tokenizer: overrides the model's tokenizer (a callable ``list[str] -> LongTensor [n, ctx]``).
        cache_dir: the open_clip / Hugging Face cache to look in for tags (default: the libraries').

    Raises:
        FileNotFoundError: a weights path (or cached tag) that does not exist, naming what is accepted.
        ValueError: an unknown model name or an unsafe / unsupported checkpoint.
        RuntimeError: weights that do not fit the model; a Hugging Face-hosted tokenizer or text tower
            requested without ``HF_HUB_OFFLINE=1``.

    Example:
        >>> import torch
        >>> from PIL import Image
        >>> _ = torch.manual_seed(0)
        >>> clip = Clip(tiny_config())
        >>> feats = clip.patch_features(Image.new("RGB", (832, 480)))
        >>> tuple(feats.shape)                 # short side 64 px -> 8 patches; long side 112 px -> 14
        (8, 14, 32)
        >>> tuple(clip.text_features(["dog"]).shape)
        (1, 32)
    """

    def __init__(
        self,
        model_name: str | Mapping[str, Any],
        pretrained: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        dense: str | DenseSpec = "clearclip",
        tokenizer: Callable[..., torch.Tensor] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        name, cfg, preprocess_cfg, bundled = _resolve_config(model_name, cache_dir)
        if bundled is not None and pretrained is not None:
            raise ValueError(f"{name} brings its own weights; leave pretrained=None")
        if _needs_hf(name, cfg):
            _require_offline(f"the tokenizer / text tower of {name}")

        weights: str | None = bundled
        if pretrained is not None:
            text = os.fspath(pretrained)
            path = Path(text).expanduser()
            if path.is_dir():
                weights = str(_find_in_dir(path))
            elif path.is_file():
                weights = str(path)
            elif isinstance(pretrained, os.PathLike) or _looks_like_path(text) or name == "<config>":
                raise FileNotFoundError(
                    f"CLIP weights file not found: {text!r}. pretrained= takes a local "
                    f"{'/'.join(WEIGHT_SUFFIXES)} file, a folder holding one, or the tag of weights already "
                    "in the open_clip / Hugging Face cache; fglens never downloads."
                )
            else:
                weights = _cached_tag(name, text, cache_dir)

        model = _build_model(cfg, preprocess_cfg)
        if weights is not None:
            _load_into(model, weights, name)
        model.eval()
        if dtype is not None:
            model.to(dtype=dtype)
        model.to(device=torch.device(device) if device is not None else torch.device("cpu"))
        self._setup(
            model,
            tokenizer if tokenizer is not None else _tokenizer_for(name, cfg),
            preprocess=None,
            dense=dense,
            name=name,
        )
        self.weights = weights

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        preprocess: Callable[..., Any] | None = None,
        *,
        dense: str | DenseSpec = "clearclip",
        name: str = "<model>",
    ) -> Clip:
        """Wrap an already-built open_clip model (e.g. from ``open_clip.create_model_and_transforms``).

        The model is put in eval mode and used as it is (device and dtype included). `preprocess` is kept as
        ``.preprocess`` for the user and its ``Normalize`` mean/std, if any, are used; dense maps use
        fglens' aspect-preserving resize, not `preprocess`'s square crop.
        """
        self = cls.__new__(cls)
        model.eval()
        self._setup(model, tokenizer, preprocess=preprocess, dense=dense, name=name)
        self.weights = None
        return self

    def _setup(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        *,
        preprocess: Callable[..., Any] | None,
        dense: str | DenseSpec,
        name: str,
    ) -> None:
        if isinstance(dense, str):
            if dense not in DENSE_METHODS:
                raise ValueError(f"unknown dense method {dense!r}; choose one of {sorted(DENSE_METHODS)}")
            self.method, self.dense = dense, DENSE_METHODS[dense]
        elif isinstance(dense, DenseSpec):
            self.method, self.dense = repr(dense), dense
        else:
            raise TypeError(f"dense must be a name in DENSE_METHODS or a DenseSpec, not {type(dense).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        mean, std = _OPENAI_MEAN, _OPENAI_STD
        pp = getattr(getattr(model, "visual", model), "preprocess_cfg", None) or {}
        mean, std = tuple(pp.get("mean", mean)), tuple(pp.get("std", std))
        for t in getattr(preprocess, "transforms", ()) or ():
            if type(t).__name__ == "Normalize":
                mean, std = tuple(t.mean), tuple(t.std)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        weights = self.weights or "random"
        return f"Clip({self.name!r}, weights={weights!r}, dense={self.method!r}, device={str(self.device)!r})"

    # -- properties -------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def visual(self) -> torch.nn.Module:
        """The open_clip ``VisionTransformer`` (a clear TypeError for towers dense maps do not support)."""
        from open_clip.transformer import VisionTransformer

        visual = getattr(self.model, "visual", None)
        if not isinstance(visual, VisionTransformer):
            raise TypeError(
                f"dense word maps need an open_clip VisionTransformer image tower; {self.name} has "
                f"{type(visual).__name__}"
            )
        if visual.attn_pool is not None:
            raise TypeError(f"dense word maps do not support attentional-pooling towers (CoCa): {self.name}")
        return visual

    @property
    def patch_size(self) -> tuple[int, int]:
        ph, pw = self.visual.patch_size
        return int(ph), int(pw)

    @property
    def image_size(self) -> tuple[int, int]:
        """The square (or not) input the tower was trained on, ``(height, width)``."""
        h, w = self.visual.image_size
        return int(h), int(w)

    # -- text ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def text_features(self, words: Sequence[str], templates: Sequence[str] | None = DEFAULT_TEMPLATES) -> torch.Tensor:
        """L2-normalised text embeddings ``[W, C]``, averaged over the prompt `templates` (``{}`` = the word)."""
        words = _check_word_list(words)
        templates = tuple(templates) if templates else ("{}",)
        texts = [t.format(w) for w in words for t in templates]
        tokens = self.tokenizer(texts).to(self.device)
        feats = self.model.encode_text(tokens).float()
        feats = F.normalize(feats, dim=-1).view(len(words), len(templates), -1).mean(1)
        return F.normalize(feats, dim=-1)

    # -- image ---------------------------------------------------------------------------------------------------

    def _prepare(
        self, image: Any, fit: str, resolution: int | tuple[int, int] | None
    ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(normalised input [1,3,h,w], image (H, W), content size in px, content size in patches)."""
        x = _image_tensor(image)
        height, width = int(x.shape[-2]), int(x.shape[-1])
        ph, pw = self.patch_size
        if fit == "grid":
            if isinstance(resolution, tuple):
                size = (_round_to(resolution[0], ph), _round_to(resolution[1], pw))
            else:
                short = resolution if resolution is not None else min(self.image_size)
                scale = short / min(height, width)
                size = (_round_to(height * scale, ph), _round_to(width * scale, pw))
            x = _resize(x, size)
            canvas = size
        elif fit == "pad":
            if resolution is not None:
                raise ValueError("fit='pad' runs at the tower's own input size; resolution applies to fit='grid'")
            canvas = self.image_size
            scale = min(canvas[0] / height, canvas[1] / width)
            size = (
                min(canvas[0], _round_to(height * scale, ph)),
                min(canvas[1], _round_to(width * scale, pw)),
            )
            x = _resize(x, size)
        else:
            raise ValueError(f"fit must be 'grid' or 'pad', not {fit!r}")
        x = (x - self.mean) / self.std
        if canvas != size:  # pad with zeros = the dataset mean colour, content top-left
            x = F.pad(x, (0, canvas[1] - size[1], 0, canvas[0] - size[0]))
        return x, (height, width), size, (size[0] // ph, size[1] // pw)

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        visual = self.visual
        pos = visual.positional_embedding
        native = tuple(int(g) for g in visual.grid_size)
        if tuple(grid) == native:
            return pos
        cls_pos, patch_pos = pos[:1], pos[1:]
        patch_pos = patch_pos.reshape(1, native[0], native[1], -1).permute(0, 3, 1, 2).float()
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
        return torch.cat([cls_pos, patch_pos], dim=0)

    @torch.no_grad()
    def image_features(self, image: Any) -> torch.Tensor:
        """The L2-normalised image embedding ``[C]`` (the model's own pooling), of the image letterboxed into the
        tower's input size."""
        x = self._prepare(image, "pad", None)[0].to(self.device, self.visual.conv1.weight.dtype)
        return F.normalize(self.model.encode_image(x).float()[0], dim=-1)

    @torch.no_grad()
    def patch_features(
        self,
        image: Any,
        *,
        fit: Literal["grid", "pad"] = "grid",
        resolution: int | tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """L2-normalised dense features ``[Hp, Wp, C]`` of the image in the joint image-text space.

        Args:
            image: PIL image (any aspect ratio), HxWx3 uint8 array, or ``[3, H, W]`` tensor in [0, 1].
            fit: ``"grid"`` (non-square patch grid, interpolated positional embeddings) or ``"pad"``
                (letterbox into the trained input, map cropped back); see the module docstring.
            resolution: for ``"grid"``: the short side in pixels (default: the tower's input size), or an
                explicit ``(height, width)``.
        """
        return self._patch_features(image, fit, resolution)[0]

    def _patch_features(
        self, image: Any, fit: str, resolution: int | tuple[int, int] | None
    ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        visual = self.visual
        x, image_hw, content, (gh, gw) = self._prepare(image, fit, resolution)
        dtype = visual.conv1.weight.dtype
        x = x.to(self.device, dtype)
        tokens = visual.conv1(x)  # [1, width, Gh, Gw]
        grid = (int(tokens.shape[-2]), int(tokens.shape[-1]))
        tokens = tokens.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(tokens.dtype).view(1, 1, -1).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self._pos_embed(grid).to(tokens.dtype)
        tokens = visual.ln_pre(tokens)

        blocks = visual.transformer.resblocks
        batch_first = getattr(visual.transformer, "batch_first", True)
        for block in blocks[:-1]:
            tokens = block(tokens) if batch_first else block(tokens.transpose(0, 1)).transpose(0, 1)
        last = blocks[-1]
        if self.dense == DENSE_METHODS["raw"]:
            tokens = last(tokens) if batch_first else last(tokens.transpose(0, 1)).transpose(0, 1)
        else:
            tokens = _dense_block(last, tokens, self.dense)

        tokens = visual.ln_post(tokens)
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        patches = tokens[0, 1:].float().reshape(grid[0], grid[1], -1)[:gh, :gw]
        return F.normalize(patches, dim=-1), image_hw, content

    @torch.no_grad()
    def word_maps(
        self,
        image: Any,
        words: Sequence[str],
        *,
        templates: Sequence[str] | None = DEFAULT_TEMPLATES,
        text_features: torch.Tensor | None = None,
        fit: Literal["grid", "pad"] = "grid",
        resolution: int | tuple[int, int] | None = None,
    ) -> WordMaps:
        """Cosine similarity of each word's text embedding with each patch: a `WordMaps` ``[W, Hp, Wp]``.

        `text_features` (``[W, C]``) replaces the text tower, e.g. to query with an image exemplar or
        precomputed embeddings.
        """
        words = _check_word_list(words)
        patches, image_hw, content = self._patch_features(image, fit, resolution)
        if text_features is None:
            text = self.text_features(words, templates)
        else:
            text = F.normalize(text_features.to(patches.device, torch.float32), dim=-1)
            if text.shape != (len(words), patches.shape[-1]):
                raise ValueError(
                    f"text_features must be [{len(words)}, {patches.shape[-1]}] (words x embed dim); "
                    f"got {tuple(text_features.shape)}"
                )
        maps = torch.einsum("hwc,kc->khw", patches, text.to(patches.device, patches.dtype))
        return WordMaps(
            words=words,
            maps=maps.float().cpu().contiguous(),
            image_size=image_hw,
            clip_size=content,
            method=self.method,
            fit=fit,
        )


