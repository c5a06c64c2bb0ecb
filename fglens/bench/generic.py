"""Proxy rows for every other architecture, built the same way for each: the transformer class and config of the
model's tiny pipeline (`fglens.testing`, the builder its adapter declares) at the benchmark's size (blocks, heads,
head dim), fed the inputs that pipeline itself builds at N video tokens (captured at the transformer's first call,
before any denoising step runs). Nothing here is written per model; a new adapter with a tiny pipeline gets a row.

A pipeline is asked for its size by height and width, or, when its call takes none (HunyuanVideo-1.5 I2V: it
sizes the video from the reference image's aspect among the resolution buckets of its ``target_size``), by a
reference image of the frame's aspect and the ``target_size`` whose bucket of that aspect is exactly the frame
(`bucket_target_size`); either way the pipeline builds every input itself. Every guidance scale the call takes is
1 (``guidance_scale`` and, where the call has them, the scales of further modalities such as LTX-2's
``audio_guidance_scale``, whose CFG would otherwise batch [uncond | cond]), and the captured forward must be batch
1. A pipeline that also generates another modality (LTX-2's audio, sized by the video's duration) builds those
tokens too; `extra_tokens` counts them per N for the table.

These rows run ``plain`` and ``traced`` (no naive control: it is written per attention layout, for the Wan stack
and the joint proxy; the memory meter's positive control is theirs)."""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any

import torch

#: the modes of a generic proxy row
GENERIC_MODES = ("plain", "traced")
#: models whose rows are hand-built (`fglens.bench.workload`), not generic
_HAND_BUILT = ("wan", "hunyuan")
#: models without a generic row, and why (none at present: every adapter with a tiny pipeline has one)
_NO_ROW: dict[str, str] = {}
#: tiny pipelines of an adapter whose transformer input differs from the adapter's first one (Wan2.2-TI2V-5B: the
#: reference frame in the latent, 48 channels, a per-token timestep): a row of their own
_EXTRA_PIPELINES = {"wan22-ti2v": "tiny_wan22_ti2v_pipeline"}


def generic_pipelines() -> dict[str, str]:
    """``{model: fglens.testing builder of its tiny pipeline}``: every adapter but the hand-built ones (its first
    `Adapter.tiny_pipelines`, or the ``tiny_<name>_pipeline`` next to its `Adapter.tiny_transformer`), and the
    extra layouts of `_EXTRA_PIPELINES`."""
    from .. import testing
    from ..adapters import ADAPTERS

    out: dict[str, str] = {}
    for adapter in ADAPTERS:
        if adapter.short in _HAND_BUILT or adapter.short in _NO_ROW or not adapter.tiny_transformer[0]:
            continue
        builder = (adapter.tiny_pipelines[0].builder if adapter.tiny_pipelines
                   else adapter.tiny_transformer[0].replace("_transformer", "_pipeline"))
        if hasattr(testing, builder):
            out[adapter.short] = builder
    return out | _EXTRA_PIPELINES


#: the generic models, in adapter order
GENERIC: tuple[str, ...] = tuple(generic_pipelines())


class _Captured(Exception):
    pass


def sized_transformer(template: torch.nn.Module, *, num_layers: int, heads: int, head_dim: int, seed: int = 0
                      ) -> torch.nn.Module:
    """A random-weight transformer of `template`'s class and config with `num_layers` blocks of `heads` x
    `head_dim` (config dims tied to the attention width, such as a cross-attention or added-KV width equal to it,
    follow; so do RoPE axes that split the head dim, such as HunyuanVideo-1.5's ``rope_axes_dim``, scaled to the
    new head dim in the same proportions, and another stream's heads and head dim, such as LTX-2's audio stream's,
    scaled by the same factors as the video's)."""
    config = dict(template.config)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    sized = {**config, "num_attention_heads": heads, "attention_head_dim": head_dim, "num_layers": num_layers}
    for key in ("cross_attention_dim", "added_kv_proj_dim"):
        if config.get(key) == width:
            sized[key] = heads * head_dim
    # another stream's attention (LTX-2's audio_num_attention_heads x audio_attention_head_dim) scales with the
    # video's, keeping the model's proportions, and so does a cross-attention width tied to it
    for key in config:
        prefix = key.removesuffix("num_attention_heads")
        if key == prefix or not prefix or f"{prefix}attention_head_dim" not in config:
            continue
        h, d = config[key], config[f"{prefix}attention_head_dim"]
        h2, d2 = h * heads // config["num_attention_heads"], d * head_dim // config["attention_head_dim"]
        if h2 * config["num_attention_heads"] != h * heads or d2 * config["attention_head_dim"] != d * head_dim:
            raise ValueError(f"{key} x {prefix}attention_head_dim ({h} x {d}) does not scale with {heads} x {head_dim}")
        sized |= {key: h2, f"{prefix}attention_head_dim": d2}
        if config.get(f"{prefix}cross_attention_dim") == h * d:
            sized[f"{prefix}cross_attention_dim"] = h2 * d2
    axes = config.get("rope_axes_dim")
    if isinstance(axes, (tuple, list)) and sum(axes) == config["attention_head_dim"]:
        scaled = [a * head_dim // config["attention_head_dim"] for a in axes]
        if sum(scaled) != head_dim or any(a % 2 for a in scaled):
            raise ValueError(f"rope_axes_dim {tuple(axes)} of head dim {config['attention_head_dim']} does not scale "
                             f"to head dim {head_dim} (got {tuple(scaled)})")
        sized["rope_axes_dim"] = tuple(scaled)
    torch.manual_seed(seed)
    return type(template).from_config(sized).eval()


def video_tokens(transformer: torch.nn.Module, inputs: dict[str, Any]) -> int:
    """Video tokens of one forward, whatever the hidden states' layout (``[B, C, F, H, W]`` Wan, ``[B, F, C, H, W]``
    CogVideoX, packed ``[B, N, C]`` LTX): their elements per batch item and input channel over the patch volume."""
    x = inputs["hidden_states"]
    config = transformer.config
    patch = config["patch_size"]
    volume = (int(torch.tensor(patch).prod()) if isinstance(patch, (tuple, list))
              else (config.get("patch_size_t") or 1) * patch * patch)
    if x.dim() == 3:
        volume = 1  # packed: one row per token already
    return int(x.numel() // (x.shape[0] * config["in_channels"] * volume))


def build(model: str, *, num_layers: int, heads: int, head_dim: int, seed: int = 0) -> tuple[Any, torch.nn.Module]:
    """(the model's tiny pipeline holding the sized transformer, that transformer)."""
    from .. import testing

    pipe = getattr(testing, generic_pipelines()[model])(seed=seed)
    pipe.set_progress_bar_config(disable=True)
    transformer = sized_transformer(pipe.transformer, num_layers=num_layers, heads=heads, head_dim=head_dim,
                                    seed=seed)
    pipe.transformer = transformer  # the pipeline sizes some inputs from it (CogVideoX's RoPE: the head dim)
    return pipe, transformer


def sized_by_image(pipe: Any) -> bool:
    """Whether `pipe`'s call takes no height or width and sizes the video from its reference image among the
    resolution buckets of its ``target_size`` (HunyuanVideo-1.5 I2V)."""
    params = inspect.signature(type(pipe).__call__).parameters
    return ("height" not in params and "width" not in params and hasattr(pipe, "target_size")
            and hasattr(getattr(pipe, "video_processor", None), "calculate_default_height_width"))


def bucket_target_size(pipe: Any, height: int, width: int) -> int:
    """The smallest ``target_size`` whose resolution bucket for a `height` x `width` reference image is exactly
    `height` x `width` (the buckets: every (h, w) in multiples of the VAE factor with h·w within target_size², the
    image's aspect picking one), so the pipeline generates at that size."""
    from ..pipelines import spatial_multiple

    pick = pipe.video_processor.calculate_default_height_width
    side = math.isqrt(height * width)
    for target in range(max(1, side // 2), 2 * side + 2 * spatial_multiple(pipe) + 1):
        if tuple(pick(height=height, width=width, target_size=target)) == (height, width):
            return target
    raise ValueError(f"no target_size gives {type(pipe).__name__} a {height}x{width} bucket")


@contextlib.contextmanager
def _sized_call(pipe: Any, height: int, width: int):
    """For a pipeline sized by its image (`sized_by_image`): its ``target_size`` set so that the bucket is the
    requested size, and a guider without a guidance branch (batch 1, as ``guidance_scale=1`` elsewhere); both put
    back after."""
    saved = {"target_size": pipe.target_size}
    pipe.target_size = bucket_target_size(pipe, height, width)
    guider = getattr(pipe, "guider", None)
    if guider is not None and hasattr(guider, "guidance_scale"):
        saved["guider"] = guider
        pipe.guider = guider.new(guidance_scale=1.0)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(pipe, key, value)


def pipeline_inputs(pipe: Any, n_tokens: int, frame_hw: tuple[int, int], *, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments of the transformer's first forward when `pipe` generates a video of `n_tokens` video
    tokens in latent frames of `frame_hw` tokens (no classifier-free guidance: batch 1, as the other rows). A
    pipeline sized by its reference image (`sized_by_image`) gets an image of the frame's aspect and the
    ``target_size`` of that bucket (`bucket_target_size`) instead of a height and width."""
    from ..pipelines import call_kwargs, default_image, spatial_multiple

    ny, nx = frame_hw
    if n_tokens % (ny * nx):
        raise ValueError(f"{n_tokens} tokens is not a whole number of {ny}x{nx} frames")
    frames = n_tokens // (ny * nx)
    px = spatial_multiple(pipe)
    temporal = int(getattr(pipe, "vae_scale_factor_temporal", 0) or pipe.vae_temporal_compression_ratio)
    height, width = ny * px, nx * px
    image = default_image(pipe, height=height, width=width)
    by_image = sized_by_image(pipe)
    # sized by its image: the video is the image's bucket, whatever call_kwargs takes as the pipeline's default size
    size = ({"aspect_tolerance": math.inf} if by_image else
            {"height": height, "width": width, "guidance_scale": 1.0})
    kwargs = call_kwargs(pipe, prompt="a dog jumps over the red fence near the old river bank at dusk", image=image,
                         seed=seed, steps=1, num_frames=(frames - 1) * temporal + 1, **size)
    # the guidance of further modalities off too (LTX-2: audio_guidance_scale, 7 by default, batches the CFG)
    params = inspect.signature(type(pipe).__call__).parameters
    kwargs |= {k: 1.0 for k in params if k.endswith("_guidance_scale") and k not in kwargs}
    captured: dict[str, Any] = {}

    def hook(_module, args, call):
        if args:
            raise TypeError("the pipeline called its transformer with positional arguments")
        captured.update({k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in call.items()})
        raise _Captured

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad(), (_sized_call(pipe, height, width) if by_image else contextlib.nullcontext()):
            pipe(**kwargs)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"{type(pipe).__name__} never called its transformer")
    captured["return_dict"] = False
    batch = captured["hidden_states"].shape[0]
    if batch != 1:
        raise ValueError(f"{type(pipe).__name__} called its transformer on a batch of {batch}, not 1: some guidance "
                         "is still on")
    got = video_tokens(pipe.transformer, captured)
    if got != n_tokens:
        raise ValueError(f"{type(pipe).__name__} at {height}x{width} px, {kwargs['num_frames']} frames gave {got} "
                         f"video tokens, not {n_tokens}")
    return captured


def extra_tokens(inputs: dict[str, Any]) -> dict[str, int]:
    """Tokens of other modalities in one forward's `inputs` (LTX-2: ``{"audio_tokens": L}``, the packed
    ``audio_hidden_states [B, L, C]`` the pipeline sized from the video's duration); empty for video-only models."""
    audio = inputs.get("audio_hidden_states")
    return {} if audio is None else {"audio_tokens": int(audio.shape[1])}
