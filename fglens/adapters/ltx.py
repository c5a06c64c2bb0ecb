"""LTX-Video (`LTXVideoTransformer3DModel`, LTX-Video 0.9.x; see docs/sites-ltx.md).

Sites per block `i`:

===========================  ================================  =====================================================
site                         module                            keys
===========================  ================================  =====================================================
``blocks.{i}.self``          ``transformer_blocks.{i}.attn1``  video tokens (3-D RoPE), [B, N, H, D]
``blocks.{i}.cross.text``    ``transformer_blocks.{i}.attn2``  T5 text tokens, padded to 128 and masked, [B, 128, H, D]
===========================  ================================  =====================================================

`LTXVideoAttnProcessor` (defined in `transformer_ltx`, whose `dispatch_attention_fn` is intercepted) makes one
kernel call per module. The text call carries the padding mask as an additive bias ``[B, H, 1, T]`` (-10000 on the
pads, 0 on the real tokens): recorders and edits apply it as the kernel does, so the pads get probability 0 (the
masked text path of `fglens.trace.record`). The pipelines batch CFG as ``[uncond | cond]`` in one call
(``cache_context("cond_uncond")``), each half with its own prompt's mask.

Latents are packed: ``hidden_states`` is ``[B, N, C]``, frame-major F' x H' x W' (patch 1 in LTX-Video 0.9); the
grid is read from the call's ``num_frames`` / ``height`` / ``width`` (latent units). The I2V pipeline puts the
reference frame's clean latent in frame 0 and gives its tokens timestep 0 (a per-token timestep ``[B, N]``): the
step's timestep is its maximum. The reference frame enters only as latent tokens (no image keys).

Refused: `LTXConditionPipeline` and `LTXI2VLongMultiPromptPipeline` (conditioning tokens appended after the video
grid with their own `video_coords`, and windows, so no frame-major grid), and bare calls given `video_coords`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import Adapter, Intercept, Site, TinyPipeline
from .forward import forward_arg, sized_grid, step_timestep

_CONDITION = (
    "its conditioning images and videos enter as extra latent tokens appended after the video grid, placed by their "
    "own video_coords (and the long multi-prompt pipeline denoises overlapping windows with other prompts), so a "
    "forward's tokens are not one frame-major grid that fglens' per-frame statistics read. Trace "
    "LTXImageToVideoPipeline or LTXPipeline (the same transformer) instead"
)


class LTXVideoAdapter(Adapter):
    model_classes = ("LTXVideoTransformer3DModel",)
    family = "ltx_video"
    short = "ltx"
    pipeline_classes = ("LTXImageToVideoPipeline", "LTXPipeline")
    tiny_pipelines = (TinyPipeline("tiny-ltx", "tiny_ltx_pipeline", (32, 64, 9)),)
    tiny_transformer = ("tiny_ltx_transformer", {"num_layers": 2})
    refused_pipelines = {
        "LTXConditionPipeline": _CONDITION,
        "LTXI2VLongMultiPromptPipeline": _CONDITION,
    }

    def sites(self) -> list[Site]:
        out: list[Site] = []
        for i, _ in enumerate(self.transformer.transformer_blocks):
            layer = f"{self.prefix}blocks.{i}"
            out.append(Site(f"{layer}.self", layer, i, "self", f"transformer_blocks.{i}.attn1", 0))
            out.append(Site(f"{layer}.cross.text", layer, i, "text", f"transformer_blocks.{i}.attn2", 0))
        return out

    def intercepts(self) -> list[Intercept]:
        from diffusers.models.transformers import transformer_ltx

        return [Intercept(transformer_ltx, "dispatch_attention_fn")]

    def grid(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        hidden = forward_arg(args, kwargs, "hidden_states", 0)
        sizes = [forward_arg(args, kwargs, n, 4 + j) for j, n in enumerate(("num_frames", "height", "width"))]
        coords = forward_arg(args, kwargs, "video_coords", 8)
        if coords is not None or any(s is None for s in sizes):
            raise ValueError(
                "fg.trace traces an LTXVideoTransformer3DModel called with num_frames, height and width (the latent "
                "grid of its packed tokens), not with video_coords: tokens placed by coordinates need not form one "
                "frame-major grid")
        p, p_t = self.transformer.config.patch_size, self.transformer.config.patch_size_t
        return sized_grid(sizes, p_t, p, hidden.shape[1], "LTX-Video")

    def timestep(self, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        # the I2V pipeline passes a per-token timestep [B, N] (0 on the reference frame); the step's is the maximum
        return step_timestep(forward_arg(args, kwargs, "timestep", 2))

    def install_prompt_hooks(self, pipe: Any, capture: Any) -> list[Callable[[], None]]:
        """The pipelines call ``text_encoder(input_ids)`` without its mask, and mask the padding in the transformer:
        the real tokens are those before the tokenizer's padding (the mask the pipeline builds)."""
        from .prompt import text_encoder_hook

        pad = pipe.tokenizer.pad_token_id
        return text_encoder_hook(capture, mask_of=lambda ids, args, kwargs: ids != pad)

    def text_lengths(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[int] | None:
        mask = kwargs["encoder_attention_mask"] if "encoder_attention_mask" in kwargs else (
            args[3] if len(args) > 3 else None)
        if mask is None or mask.ndim != 2:
            return None
        return (mask.to(torch.float32) > 0.5).sum(-1).tolist()  # host read, bare transformers only
