"""SkyReels-V2 (`SkyReelsV2Transformer3DModel`): a Wan2.1 DiT with its own module (see docs/sites-skyreels.md).

Sites per block `i`, as Wan's:

==========================  =================  ==========================================================
site                        module             keys
==========================  =================  ==========================================================
``blocks.{i}.self``         ``blocks.{i}.attn1``  video tokens (3-D RoPE), [B, N, H, D]
``blocks.{i}.cross.image``  ``blocks.{i}.attn2``  CLIP image tokens (257 for ViT-H/14), I2V models only
``blocks.{i}.cross.text``   ``blocks.{i}.attn2``  text tokens, always 512 (padded), [B, 512, H, D]
==========================  =================  ==========================================================

`SkyReelsV2AttnProcessor` is `WanAttnProcessor` under another name, defined in
`diffusers.models.transformers.transformer_skyreels_v2`, whose `dispatch_attention_fn` is the one intercepted.
The I2V pipeline concatenates 16 noise + 4 mask + 16 image-latent channels (the reference frame) and passes
the CLIP image tokens as in Wan2.1-I2V; CFG runs in ``cache_context("cond"/"uncond")``, one scheduler.

The diffusion-forcing pipelines are refused: each latent frame has its own timestep and its own copy of the
scheduler (the pipeline's scheduler never steps), and `causal_block_size` makes the self-attention block-causal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import Intercept, TinyPipeline
from .forward import forward_arg
from .wan import WanAdapter

_DIFFUSION_FORCING = (
    "diffusion forcing denoises each latent frame on its own schedule: the transformer gets one timestep per frame, "
    "the pipeline steps a private copy of the scheduler per frame and never its own (fglens' clock reads the step "
    "from that scheduler, so every forward would be filed under step 0), a forward's frames sit at different noise "
    "levels, and causal_block_size makes the self-attention block-causal. Trace SkyReelsV2ImageToVideoPipeline or "
    "SkyReelsV2Pipeline (the same transformer family, one timestep per step) instead"
)


class SkyReelsV2Adapter(WanAdapter):
    model_classes = ("SkyReelsV2Transformer3DModel",)
    family = "skyreels_v2"
    short = "skyreels"
    pipeline_classes = ("SkyReelsV2ImageToVideoPipeline", "SkyReelsV2Pipeline")
    tiny_pipelines = (TinyPipeline("tiny-skyreels", "tiny_skyreels_i2v_pipeline", (32, 48, 5)),)
    tiny_transformer = ("tiny_skyreels_transformer", {"num_layers": 2})
    refused_pipelines = {
        "SkyReelsV2DiffusionForcingPipeline": _DIFFUSION_FORCING,
        "SkyReelsV2DiffusionForcingImageToVideoPipeline": _DIFFUSION_FORCING,
        "SkyReelsV2DiffusionForcingVideoToVideoPipeline": _DIFFUSION_FORCING,
    }

    def refusal(self, pipe: Any | None) -> str | None:
        reason = super().refusal(pipe)
        blocks = int(self.transformer.config.get("num_frame_per_block", 1) or 1)
        if reason is None and blocks > 1:
            return (f"a SkyReelsV2Transformer3DModel with block-causal self-attention yet (num_frame_per_block="
                    f"{blocks}, set by a diffusion-forcing call with causal_block_size): a mask fglens' self-attention "
                    "statistics do not read. Load the transformer again (num_frame_per_block=1) to trace it")
        return reason

    def intercepts(self) -> list[Intercept]:
        from diffusers.models.transformers import transformer_skyreels_v2

        return [Intercept(transformer_skyreels_v2, "dispatch_attention_fn")]

    def timestep(self, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        forcing = forward_arg(args, kwargs, "enable_diffusion_forcing", 4, False)
        if forcing:  # a bare transformer called as the diffusion-forcing pipelines call it
            raise ValueError(f"fg.trace does not trace a SkyReelsV2Transformer3DModel called with "
                             f"enable_diffusion_forcing=True yet: {_DIFFUSION_FORCING}")
        return super().timestep(args, kwargs)
