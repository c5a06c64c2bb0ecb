"""Pipelines by name or path, and one call per item: what the CLI, sweeps and the evaluation share.

- `load_pipeline("tiny-wan")` builds a built-in tiny random-weight pipeline (offline, for demos and tests);
  `load_pipeline("/models/Wan2.1-I2V-14B-480P-Diffusers")` loads a local diffusers folder, after checking from
  its ``model_index.json`` that fglens can trace its class (nothing is downloaded: ``local_files_only``).
- `call_kwargs(pipe, image=..., prompt=..., seed=...)` checks an item before any work starts (image readable,
  size a multiple of the model's token patch, aspect ratio the video's) and returns the pipeline's keyword
  arguments, with a seeded CPU generator so a seed means the same noise everywhere.
- `frames_of(output)` and `save_video(frames, path)` turn a pipeline's output into an mp4.

Example:
    >>> from fglens.pipelines import call_kwargs, frames_of, load_pipeline
    >>> from fglens.testing import reference_image
    >>> pipe = load_pipeline("tiny-wan")
    >>> kwargs = call_kwargs(pipe, image=reference_image(), prompt="a dog jumps over the red fence", seed=0, steps=2)
    >>> frames_of(pipe(**kwargs)).shape
    (5, 32, 48, 3)
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .adapters import ADAPTERS
from .adapters.base import TINY_STEPS

#: pipeline classes fglens traces, and their model family (each adapter declares its own: `Adapter.pipeline_classes`)
PIPELINES: dict[str, str] = {cls: a.short for a in ADAPTERS for cls in a.pipeline_classes}
_TINY = {t.name: t for a in ADAPTERS for t in a.tiny_pipelines}
#: pipeline classes holding a supported transformer that fg.trace refuses, with why (`Adapter.refused_pipelines`)
REFUSED: dict[str, str] = {cls: why for a in ADAPTERS for cls, why in a.refused_pipelines.items()}


def _tiny_builders() -> dict[str, Callable[[], Any]]:
    from . import testing

    return {name: getattr(testing, t.builder) for name, t in _TINY.items()}


#: names of the built-in tiny pipelines accepted by `load_pipeline` (`Adapter.tiny_pipelines`)
TINY = tuple(_TINY)

#: names of the trained toy-world pipelines shipped with fglens (`fg.toy.pipeline`)
TOY = ("toy-base", "toy-weak", "toy-sink")

#: the small call sizes of the tiny pipelines, by name
TINY_SIZES: dict[str, dict[str, int]] = {
    name: dict(zip(("height", "width", "num_frames"), t.size, strict=True)) for name, t in _TINY.items()}


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pipeline_class(path: str | os.PathLike) -> str:
    """The diffusers pipeline class named by a local folder's ``model_index.json``, or a clear error."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(
            f"no pipeline at {folder}: pass a local diffusers pipeline folder (with model_index.json) or one of "
            f"the built-in pipelines {', '.join(TINY + TOY)}"
        )
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{folder} is not a diffusers pipeline folder: it has no model_index.json")
    try:
        name = json.loads(index.read_text())["_class_name"]
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{index} does not name a pipeline class (_class_name): {exc}") from exc
    return str(name)


def load_pipeline(source: str | os.PathLike, *, dtype: str | torch.dtype | None = None, device: str | None = None):
    """A pipeline fglens can trace: a built-in tiny one by name (`TINY`) or a local diffusers folder.

    Args:
        source: a tiny name (`TINY`: ``"tiny-wan"``, ``"tiny-hunyuan"``, ``"tiny-ltx"``, ...), the trained toy
            pipelines ``"toy-base"`` / ``"toy-weak"`` / ``"toy-sink"`` (`fg.toy.pipeline`), or a folder path.
        dtype: ``"bfloat16"``, ``"float16"``, ``"float32"`` or a torch dtype for a loaded folder (default: as
            stored); the tiny pipelines stay float32.
        device: where to move the pipeline (default: CUDA when available for a loaded folder, else CPU).

    The class is checked from ``model_index.json`` before any weight is read; nothing is downloaded.

    Example:
        >>> from fglens.pipelines import load_pipeline
        >>> type(load_pipeline("tiny-wan")).__name__
        'WanImageToVideoPipeline'
        >>> load_pipeline("tiny-sdxl")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no pipeline at tiny-sdxl: pass a local diffusers pipeline folder ...
    """
    name = str(source)
    if name in TOY:
        from .toy import pipeline as toy_pipeline

        pipe = toy_pipeline(name.removeprefix("toy-"))
        return pipe.to(device) if device else pipe
    if name in TINY:
        pipe = _tiny_builders()[name]()
        pipe.set_progress_bar_config(disable=True)
        pipe._fglens_tiny = name  # call_kwargs picks small sizes for it
        return pipe.to(device) if device else pipe
    cls = pipeline_class(name)
    if cls in REFUSED:
        raise ValueError(f"{name} holds a {cls}, which fglens does not trace yet: {REFUSED[cls]}")
    if cls not in PIPELINES:
        raise ValueError(
            f"{name} holds a {cls}, which fglens cannot trace. Supported pipeline classes: "
            f"{', '.join(PIPELINES)}"
        )
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}")
        dtype = _DTYPES[dtype]
    import diffusers

    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    pipe = getattr(diffusers, cls).from_pretrained(name, **kwargs)
    return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def family(pipe: Any) -> str:
    """The model family of a pipeline: ``"wan"``, ``"hunyuan"`` or ``"cogvideox"``."""
    name = type(pipe).__name__
    if name not in PIPELINES:
        raise ValueError(f"fglens cannot trace a {name}; supported pipeline classes: {', '.join(PIPELINES)}")
    return PIPELINES[name]


def takes_image(pipe: Any) -> bool:
    """Whether the pipeline's call takes a reference image (image-to-video)."""
    return "image" in inspect.signature(type(pipe).__call__).parameters


def spatial_multiple(pipe: Any) -> int:
    """Pixels per latent token side: the VAE's spatial factor times the transformer's patch size."""
    vae = int(getattr(pipe, "vae_scale_factor_spatial", 8))
    patch = pipe.transformer.config.get("patch_size", 2)
    patch = patch[1] if isinstance(patch, (tuple, list)) else patch
    return vae * int(patch)


def load_image(image: Any) -> Image.Image:
    """A reference image as RGB PIL from a path, a PIL image, or an ``[H, W, 3]`` array (uint8 or [0, 1] floats)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"reference image not found: {path}")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except OSError as exc:
            raise ValueError(f"{path} is not an image PIL can read: {exc}") from exc
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 3:
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
        return Image.fromarray(array)
    raise TypeError(f"a reference image is a path, a PIL image or an [H, W, 3] array; got {type(image).__name__}")


def default_size(pipe: Any) -> dict[str, Any]:
    """The pipeline's default height, width and num_frames (the tiny pipelines: a few tokens)."""
    tiny = getattr(pipe, "_fglens_tiny", None)
    if tiny is not None:
        return dict(TINY_SIZES[tiny])
    small = getattr(pipe, "_fglens_call_defaults", None)  # a fglens.testing pipeline built directly
    if small is not None:
        return {k: small[k] for k in ("height", "width", "num_frames")}
    params = inspect.signature(type(pipe).__call__).parameters
    return {k: params[k].default for k in ("height", "width", "num_frames") if k in params}


def is_tiny(pipe: Any) -> bool:
    """Whether `pipe` is one of fglens' tiny random-weight pipelines (by name or built by `fglens.testing`)."""
    return getattr(pipe, "_fglens_tiny", None) is not None or hasattr(pipe, "_fglens_call_defaults")


def default_image(pipe: Any, height: int | None = None, width: int | None = None):
    """The reference image an item without one gets: `fglens.testing.reference_image` at the call's size for a
    tiny image-to-video pipeline (as `fglens diagnose`, `generate` and `sweep` all do), else None (real
    image-to-video pipelines need the item's own image)."""
    if not (is_tiny(pipe) and takes_image(pipe)):
        return None
    from .testing import reference_image

    size = default_size(pipe)
    return reference_image(width=width or size["width"], height=height or size["height"])


def call_kwargs(
    pipe: Any,
    *,
    prompt: str,
    image: Any = None,
    seed: int = 0,
    steps: int | None = None,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    output_type: str = "np",
    aspect_tolerance: float = 0.02,
) -> dict[str, Any]:
    """Check one item and return the keyword arguments of ``pipe(**kwargs)``.

    The size and the number of steps default to the pipeline's own (the tiny pipelines: a few tokens and
    `TINY_STEPS` steps). Errors, before any work:
    an image-to-video pipeline without an image or a text-to-video one with an image; a missing or unreadable
    image; a height or width that is not a multiple of the model's token patch (`spatial_multiple`); an image
    whose aspect ratio differs from the video's by more than `aspect_tolerance` (the pipeline would stretch it).

    Example:
        >>> from fglens.pipelines import call_kwargs, load_pipeline
        >>> pipe = load_pipeline("tiny-wan")
        >>> call_kwargs(pipe, prompt="a dog", image=None, height=30)
        Traceback (most recent call last):
        ...
        ValueError: height 30 is not a multiple of 16 (the pixels per latent token of this model); use e.g. 16
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt must be a non-empty string")
    size = default_size(pipe)
    for key, value in (("height", height), ("width", width), ("num_frames", num_frames)):
        if value is not None:
            size[key] = int(value)
    multiple = spatial_multiple(pipe)
    for key in ("height", "width"):
        if size.get(key) is not None and size[key] % multiple:
            raise ValueError(
                f"{key} {size[key]} is not a multiple of {multiple} (the pixels per latent token of this model); "
                f"use e.g. {max(multiple, size[key] // multiple * multiple)}"
            )
    params = inspect.signature(type(pipe).__call__).parameters
    own = default_size(pipe)
    for key, value in (("height", height), ("width", width), ("guidance_scale", guidance_scale)):
        if value is not None and key not in params and value != own.get(key):
            raise ValueError(f"{type(pipe).__name__} takes no {key}: "
                             + ("it sizes the video from the reference image's aspect ratio and its transformer's "
                                "target_size; give an image of the aspect you want" if key != "guidance_scale" else
                                "its guider (pipe.guider) sets the guidance"))
    # a size the pipeline does not take (HunyuanVideo-1.5 I2V: height and width) is its own business
    kwargs: dict[str, Any] = {"prompt": prompt, **{k: v for k, v in size.items() if v is not None and k in params}}
    if takes_image(pipe):
        if image is None:
            raise ValueError(f"{type(pipe).__name__} is image-to-video: give a reference image")
        pil = load_image(image)
        if size.get("height") and size.get("width"):
            video, ref = size["width"] / size["height"], pil.width / pil.height
            if abs(ref - video) / video > aspect_tolerance:
                raise ValueError(
                    f"the reference image is {pil.width}x{pil.height} (aspect {ref:.3f}) but the video is "
                    f"{size['width']}x{size['height']} (aspect {video:.3f}): the pipeline would stretch it. Crop the "
                    "image, or pass a height and width with its aspect ratio"
                )
        kwargs["image"] = pil
    elif image is not None:
        raise ValueError(f"{type(pipe).__name__} is text-to-video: it takes no reference image")
    if steps is None and getattr(pipe, "_fglens_tiny", None) is not None:
        steps = TINY_STEPS  # the pipelines' default of 50 buys nothing on random weights
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1; got {steps}")
        kwargs["num_inference_steps"] = int(steps)
    if negative_prompt is not None:
        kwargs["negative_prompt"] = negative_prompt
    if guidance_scale is not None:
        kwargs["guidance_scale"] = float(guidance_scale)
    kwargs["generator"] = torch.Generator().manual_seed(int(seed))
    kwargs["output_type"] = output_type
    return kwargs


def frames_of(output: Any) -> np.ndarray:
    """The first video of a pipeline output as float32 ``[F, H, W, 3]`` in [0, 1]."""
    frames = output.frames[0] if hasattr(output, "frames") else output
    if isinstance(frames, torch.Tensor):
        frames = frames.float().cpu().numpy()
    if isinstance(frames, list):
        frames = np.stack([np.asarray(f, dtype=np.float32) / (255.0 if np.asarray(f).dtype == np.uint8 else 1.0)
                           for f in frames])
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3]; got shape {frames.shape} (call with output_type='np')")
    return frames


def save_video(frames: np.ndarray, path: str | os.PathLike, fps: int = 16) -> Path:
    """Write ``[F, H, W, 3]`` frames in [0, 1] as an mp4 (imageio + ffmpeg, through diffusers)."""
    from diffusers.utils import export_to_video

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_to_video(list(frames_of(frames)), str(out), fps=fps, macro_block_size=1)
    return out
