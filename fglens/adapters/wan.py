"""Wan2.1 / Wan2.2 (`WanTransformer3DModel`).

Sites per block `i` (see docs/sites-wan.md):

==========================  =================  ==========================================================
site                        module             keys
==========================  =================  ==========================================================
``blocks.{i}.self``         ``blocks.{i}.attn1``  video tokens (3-D RoPE), [B, N, H, D]
``blocks.{i}.cross.image``  ``blocks.{i}.attn2``  CLIP image tokens (257 for ViT-H/14), I2V models only
``blocks.{i}.cross.text``   ``blocks.{i}.attn2``  text tokens, always 512 (padded), [B, 512, H, D]
==========================  =================  ==========================================================

`WanAttnProcessor` runs the image call before the text call, with the same query, two separate
softmaxes, and sums the outputs before `to_out`. Video tokens are frame-major, F' x H' x W'.

Wan2.2-TI2V-5B (pipelines with ``expand_timesteps=True``) has no image keys: its reference frame replaces latent
frame 0 and the transformer gets a per-token timestep ``[B, N]`` (0 on that frame); `timestep` reads its maximum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .base import Adapter, ImageGrid, Intercept, Site, TinyPipeline
from .forward import forward_arg, latent_grid, step_timestep
from .prompt import PromptTokens


class WanAdapter(Adapter):
    model_classes = ("WanTransformer3DModel",)
    family = "wan"
    short = "wan"
    pipeline_classes = ("WanImageToVideoPipeline", "WanPipeline")
    tiny_pipelines = (TinyPipeline("tiny-wan", "tiny_wan_i2v_pipeline", (32, 48, 5)),
                      TinyPipeline("tiny-wan-t2v", "tiny_wan_t2v_pipeline", (32, 48, 5)),
                      TinyPipeline("tiny-wan22", "tiny_wan22_i2v_pipeline", (32, 48, 5)),
                      TinyPipeline("tiny-wan22-ti2v", "tiny_wan22_ti2v_pipeline", (64, 96, 5)))
    tiny_transformer = ("tiny_wan_transformer", {"num_layers": 2})

    def sites(self) -> list[Site]:
        out: list[Site] = []
        for i, block in enumerate(self.transformer.blocks):
            layer = f"{self.prefix}blocks.{i}"
            out.append(Site(f"{layer}.self", layer, i, "self", f"blocks.{i}.attn1", 0))
            call = 0
            if getattr(block.attn2, "add_k_proj", None) is not None:
                out.append(Site(f"{layer}.cross.image", layer, i, "image", f"blocks.{i}.attn2", 0))
                call = 1
            out.append(Site(f"{layer}.cross.text", layer, i, "text", f"blocks.{i}.attn2", call))
        return out

    def intercepts(self) -> list[Intercept]:
        from diffusers.models.transformers import transformer_wan

        return [Intercept(transformer_wan, "dispatch_attention_fn")]

    def image_grid(self, n_image: int, tokens: PromptTokens | None, crop: bool) -> ImageGrid | None:
        """CLIP's class token, then its g x g patch tokens (257 = 1 + 16 x 16 for ViT-H/14 at 224 px)."""
        g = math.isqrt(max(0, n_image - 1))
        return ImageGrid(g, g, first=1, crop=crop) if g > 0 and g * g == n_image - 1 else None

    def grid(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        return latent_grid(forward_arg(args, kwargs, "hidden_states", 0), *self.transformer.config.patch_size)

    def timestep(self, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        # Wan2.2 TI2V passes a per-token timestep [B, N]; the step's timestep is its maximum.
        return step_timestep(forward_arg(args, kwargs, "timestep", 1))

    def text_lengths(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[int] | None:
        # Wan pipelines zero-pad the prompt embeddings to 512; the real length ends at the last non-zero row.
        text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        nonzero = (text != 0).any(-1)  # [B, T]
        positions = torch.arange(1, text.shape[1] + 1, device=text.device)
        return (nonzero * positions).amax(-1).tolist()  # host read, bare transformers only
