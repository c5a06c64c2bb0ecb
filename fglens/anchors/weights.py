"""Loading an open_clip model from local files only: weight files, configs, the user's cache, tokenizers; and
`tiny_config`, a small random tower for tests. Never a download, never an arbitrary pickle."""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

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


