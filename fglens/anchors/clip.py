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

import copy
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .grid import minmax, to_grid

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

#: File suffixes accepted for weights.
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_PREFERRED_IN_DIR = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "pytorch_model.bin",
    "model.pth",
)
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

Attention = Literal["qq", "kk", "qq+kk", "qk", "identity"]


@dataclass(frozen=True)
class DenseSpec:
    """How the last vision block is run to get dense patch features.

    Attributes:
        attention: ``"qq"`` softmax(q qᵀ) (ClearCLIP), ``"kk"`` softmax(k kᵀ), ``"qq+kk"``
            softmax(q qᵀ) + softmax(k kᵀ) (SCLIP's correlative self-attention), ``"qk"`` the model's own
            attention, ``"identity"`` each token keeps its own value (MaskCLIP's value path).
        residual: keep the residual connection around the attention.
        ffn: keep the block's feed-forward network (with its residual).
    """

    attention: Attention = "qq"
    residual: bool = False
    ffn: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ("qq", "kk", "qq+kk", "qk", "identity"):
            raise ValueError(f"unknown attention {self.attention!r}; use 'qq', 'kk', 'qq+kk', 'qk' or 'identity'")


#: Named dense methods. ``"raw"`` is the unmodified model (the baseline the others improve on).
DENSE_METHODS: dict[str, DenseSpec] = {
    "clearclip": DenseSpec("qq", residual=False, ffn=False),
    "sclip": DenseSpec("qq+kk", residual=False, ffn=False),
    "maskclip": DenseSpec("identity", residual=False, ffn=False),
    "raw": DenseSpec("qk", residual=True, ffn=True),
}


def tiny_config(
    *,
    embed_dim: int = 32,
    image_size: int = 64,
    patch_size: int = 8,
    vision_width: int = 64,
    vision_layers: int = 2,
    text_width: int = 32,
    text_layers: int = 2,
    context_length: int = 16,
) -> dict[str, Any]:
    """An open_clip model config small enough for tests (~1.7 M parameters, mostly the token embedding).

    The text tower uses open_clip's default BPE tokenizer (vocabulary 49408), shipped with open_clip, so
    it runs offline. Pass the dict to `Clip`.

    Example:
        >>> tiny_config()["vision_cfg"]["patch_size"]
        8
    """
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "patch_size": patch_size,
            "width": vision_width,
            "layers": vision_layers,
            "head_width": 32,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": text_width,
            "heads": max(1, text_width // 16),
            "layers": text_layers,
        },
    }


# ----------------------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------------------


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file without ever unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; ``.pt``/``.pth``/``.bin``/``.ckpt`` with
    ``torch.load(weights_only=True)``. A ``{"state_dict": ...}`` wrapper and a ``module.`` prefix
    (DistributedDataParallel) are undone.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown suffix, a pickle holding anything but tensors and plain containers, or a file
            that holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP weights file not found: {str(path)!r}. fglens never downloads weights: pass a local "
            f"{'/'.join(WEIGHT_SUFFIXES)} file, a folder holding one, or the tag of weights already in the "
            "open_clip / Hugging Face cache."
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        checkpoint: Any = load_file(str(path), device="cpu")
    elif suffix in WEIGHT_SUFFIXES:
        try:
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"refusing to load {str(path)!r}: it is not a plain tensor checkpoint "
                f"(torch.load(weights_only=True) rejected it: {first}). fglens never unpickles arbitrary "
                "objects; save the weights with safetensors or as a plain state_dict."
            ) from error
        except RuntimeError as error:
            if "TorchScript" not in str(error):
                raise
            raise ValueError(
                f"refusing to load {str(path)!r}: it is a TorchScript archive (OpenAI's original CLIP format), "
                "which fglens does not execute; use the safetensors release of the same weights (e.g. the "
                "'timm/...openai' repositories) or save the model's state_dict with safetensors."
            ) from error
    else:
        raise ValueError(f"unsupported weights file {str(path)!r}: accepted suffixes are {', '.join(WEIGHT_SUFFIXES)}")

    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(f"{str(path)!r} holds no state dict (got {type(checkpoint).__name__})")
    bad = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{str(path)!r} is not a state dict: non-tensor entries {bad[:5]}")
    state = dict(checkpoint)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _load_into(model: torch.nn.Module, path: str | os.PathLike[str], name: str) -> None:
    """Load a local checkpoint into an open_clip model, with open_clip's own format fix-ups."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = load_state_dict(path)
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state and target is not None and state[key].ndim != target.ndim:
            state[key] = state[key].reshape(target.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RuntimeError(f"the weights in {str(path)!r} do not fit the open_clip model {name}: {error}") from error


def _hf_offline() -> bool:
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:  # pragma: no cover
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _require_offline(what: str) -> None:
    if not _hf_offline():
        raise RuntimeError(
            f"{what} is loaded through Hugging Face libraries, which may reach the network; fglens never "
            "downloads: set HF_HUB_OFFLINE=1 (before importing fglens) so that only the local cache is read."
        )


def _cache_lookup(repo_id: str, filenames: Sequence[str], cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _safe_first(filename: str) -> list[str]:
    if filename == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors", filename]
    stem, suffix = os.path.splitext(filename)
    return [stem + ".safetensors", filename] if suffix in (".bin", ".pth", ".pt") else [filename]


def _cached_tag(model_name: str, tag: str, cache_dir: str | None) -> str:
    """The local file of open_clip's pretrained `tag` for `model_name`, looked up in the caches only."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(model_name)
        raise FileNotFoundError(
            f"pretrained={tag!r} is neither an existing file nor a known open_clip tag for {model_name!r} "
            f"(known tags: {known}). Pass a local {'/'.join(WEIGHT_SUFFIXES)} file; fglens never downloads."
        )
    looked: list[str] = []
    if cfg.get("file"):
        looked.append(cfg["file"])
        if os.path.isfile(cfg["file"]):
            return cfg["file"]
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" -> ("org/repo", "")
        filename = filename or "open_clip_pytorch_model.bin"
        names = _safe_first(filename)
        looked.append(f"Hugging Face cache: {repo_id} / {' or '.join(names)}")
        found = _cache_lookup(repo_id, names, cache_dir)
        if found:
            return found
    if cfg.get("url"):
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        looked.append(target)
        if os.path.isfile(target):
            return target
    raise FileNotFoundError(
        f"open_clip weights {model_name}/{tag} are not in the local cache (looked for: {'; '.join(looked)}). "
        "fglens never downloads: fetch them yourself and pass the file path as pretrained=."
    )


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.startswith("~") or value.lower().endswith(WEIGHT_SUFFIXES)


def _find_in_dir(folder: Path) -> Path:
    for name in _PREFERRED_IN_DIR:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
    candidates.sort(key=lambda p: p.suffix.lower() != ".safetensors")
    if not candidates:
        raise FileNotFoundError(
            f"no CLIP weights in folder {str(folder)!r}: expected a {'/'.join(WEIGHT_SUFFIXES)} file "
            f"(preferably one of {', '.join(_PREFERRED_IN_DIR[:3])})"
        )
    return candidates[0]


def _resolve_config(
    model_name: str | Mapping[str, Any], cache_dir: str | None
) -> tuple[str, dict[str, Any], dict[str, Any], str | None]:
    """(display name, model_cfg, preprocess_cfg overrides, weights file that comes with the name or None)."""
    import open_clip

    if isinstance(model_name, Mapping):
        cfg = copy.deepcopy(dict(model_name))
        if "model_cfg" in cfg:
            return "<config>", dict(cfg["model_cfg"]), dict(cfg.get("preprocess_cfg", {})), None
        if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ValueError("an open_clip config needs the keys 'embed_dim', 'vision_cfg' and 'text_cfg'")
        return "<config>", cfg, {}, None
    if not isinstance(model_name, str):
        raise TypeError(f"model_name must be an open_clip model name or a config dict, not {type(model_name)}")

    if model_name.startswith(("hf-hub:", "local-dir:")):
        import json

        if model_name.startswith("local-dir:"):
            folder = Path(model_name[len("local-dir:") :]).expanduser()
            config_path: str | None = str(folder / "open_clip_config.json")
            if not os.path.isfile(config_path):
                raise FileNotFoundError(f"{model_name}: no open_clip_config.json in {str(folder)!r}")
            weights: str | None = str(_find_in_dir(folder))
        else:
            repo_id = model_name[len("hf-hub:") :]
            config_path = _cache_lookup(repo_id, ["open_clip_config.json"], cache_dir)
            weights = _cache_lookup(repo_id, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"], cache_dir)
            if config_path is None or weights is None:
                raise FileNotFoundError(
                    f"{model_name} is not in the local Hugging Face cache (need open_clip_config.json and "
                    "open_clip_model.safetensors or open_clip_pytorch_model.bin). fglens never downloads."
                )
        with open(config_path, encoding="utf-8") as f:
            raw = json.load(f)
        if "model_cfg" not in raw:
            raise ValueError(f"{config_path!r} has no 'model_cfg'")
        return model_name, dict(raw["model_cfg"]), dict(raw.get("preprocess_cfg", {})), weights

    model_name = model_name.replace("/", "-")
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        models = open_clip.list_models()
        near = [m for m in models if model_name.lower().split("-")[0] in m.lower()][:8] or models[:8]
        raise ValueError(
            f"unknown open_clip model {model_name!r}; known names include {near} (see open_clip.list_models()), "
            "or pass a config dict (e.g. fglens.anchors.tiny_config())"
        )
    return model_name, dict(cfg), {}, None


def _needs_hf(name: str, cfg: Mapping[str, Any]) -> bool:
    text_cfg = cfg.get("text_cfg", {})
    return "hf_tokenizer_name" in text_cfg or "hf_model_name" in text_cfg or "siglip" in name.lower()


def _build_model(cfg: dict[str, Any], preprocess: Mapping[str, Any]) -> torch.nn.Module:
    """Instantiate an open_clip model from its config with random weights, never fetching tower weights."""
    from dataclasses import asdict

    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = copy.deepcopy(cfg)
    custom_text = bool(cfg.pop("custom_text", False))
    text_cfg, vision_cfg = cfg["text_cfg"], cfg["vision_cfg"]
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
        custom_text = True
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    if custom_text:
        model_class = open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CustomTextCLIP
    else:
        model_class = open_clip.CLIP
    try:
        model = model_class(**cfg)
    except TypeError as error:
        raise ValueError(f"invalid open_clip config: {error}") from error
    full = asdict(PreprocessCfg())
    full["size"] = getattr(model.visual, "image_size", full["size"])
    open_clip.set_model_preprocess_cfg(model, merge_preprocess_dict(full, dict(preprocess)))
    return model


def _tokenizer_for(name: str, cfg: Mapping[str, Any]) -> Callable[..., torch.Tensor]:
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    text_cfg = cfg.get("text_cfg", {})
    context_length = text_cfg.get("context_length", 77)
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if name.startswith("local-dir:") or (name != "<config>" and not name.startswith("hf-hub:")):
        return open_clip.get_tokenizer(name)
    if text_cfg.get("hf_tokenizer_name"):
        return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length, **kwargs)
    return open_clip.SimpleTokenizer(context_length=context_length, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------------------


def _image_tensor(image: Any) -> torch.Tensor:
    """PIL image / HxWx3 uint8 array / [3,H,W] or [1,3,H,W] float tensor in [0,1] -> [1,3,H,W] float32."""
    if isinstance(image, torch.Tensor):
        x = image.detach().to(torch.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"an image tensor must be [3, H, W] or [1, 3, H, W] in [0, 1]; got {tuple(image.shape)}")
        return x.cpu()
    if isinstance(image, np.ndarray):
        from PIL import Image

        image = Image.fromarray(image)
    if hasattr(image, "convert") and hasattr(image, "size"):
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    raise TypeError(f"expected a PIL image, an HxWx3 uint8 array or a [3, H, W] tensor; got {type(image).__name__}")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)


def _round_to(value: float, step: int) -> int:
    return max(step, int(round(value / step)) * step)


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


def _attention_weights(
    q: torch.Tensor, k: torch.Tensor, kind: str, scale: float | torch.Tensor, cosine: bool
) -> torch.Tensor:
    """[B, H, L, L] attention of the requested kind; `cosine` = scaled cosine attention (q, k unit-norm)."""
    if cosine:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)

    def soft(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.softmax((a @ b.transpose(-1, -2)).float() * scale, dim=-1)

    if kind == "qq":
        return soft(q, q)
    if kind == "kk":
        return soft(k, k)
    if kind == "qq+kk":
        return soft(q, q) + soft(k, k)
    if kind == "qk":
        return soft(q, k)
    raise AssertionError(kind)  # pragma: no cover


def _dense_block(block: torch.nn.Module, x: torch.Tensor, spec: DenseSpec) -> torch.Tensor:
    """Run an open_clip residual block on batch-first tokens [B, L, C] the way `spec` says."""
    from open_clip.transformer import Attention as OpenClipAttention

    y = block.ln_1(x)
    attn = block.attn
    B, L, C = y.shape
    heads = attn.num_heads
    if isinstance(attn, torch.nn.MultiheadAttention):
        if attn._qkv_same_embed_dim:
            wq, wk, wv = attn.in_proj_weight.chunk(3, dim=0)
        else:
            wq, wk, wv = attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight
        bq, bk, bv = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
        q, k, v = F.linear(y, wq, bq), F.linear(y, wk, bk), F.linear(y, wv, bv)
        q, k, v = (t.reshape(B, L, heads, -1).transpose(1, 2) for t in (q, k, v))
        scale: float | torch.Tensor = q.shape[-1] ** -0.5
        cosine = False
        post: Callable[[torch.Tensor], torch.Tensor] = attn.out_proj
    elif isinstance(attn, OpenClipAttention):
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, L, heads, -1).transpose(1, 2) for t in (q, k, v))
        q, k = attn.ln_q(q), attn.ln_k(k)
        cosine = attn.logit_scale is not None
        if cosine:
            scale = torch.clamp(attn.logit_scale, max=attn.logit_scale_max).exp().float()
        else:
            scale = attn.scale

        def post(o: torch.Tensor) -> torch.Tensor:
            return attn.out_proj(attn.ln_inner(o))

    else:
        raise TypeError(f"unsupported attention module {type(attn).__name__} in the last vision block")

    if spec.attention == "identity":
        out = v
    else:
        weights = _attention_weights(q, k, spec.attention, scale, cosine)
        out = weights.to(v.dtype) @ v
    if getattr(attn, "head_scale", None) is not None:
        out = out * attn.head_scale
    out = post(out.transpose(1, 2).reshape(B, L, C))
    ln_attn = getattr(block, "ln_attn", None)
    if ln_attn is not None:
        out = ln_attn(out)
    out = block.ls_1(out)
    if spec.residual:
        out = x + out
    if spec.ffn:
        out = out + block.ls_2(block.mlp(block.ln_2(out)))
    return out
