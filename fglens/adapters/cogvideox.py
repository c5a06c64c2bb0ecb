"""CogVideoX 1.0 and 1.5 (`CogVideoXTransformer3DModel`): T2V, I2V and V2V pipelines (see docs/sites-cogvideox.md).

An MMDiT with one joint softmax per block over ``[text | video]`` keys, **text first**:

====================  ================================  ===============================================
site                  module                            queries / keys
====================  ================================  ===============================================
``blocks.{i}.joint``  ``transformer_blocks.{i}.attn1``  [text (226 T5 tokens, padded, not masked) |
                                                        video F'·H'·W' (3-D RoPE on the 5B models)]
====================  ================================  ===============================================

`CogVideoXAttnProcessor2_0` (and its fused twin) concatenates ``[text | video]``, applies RoPE to the video
part only and calls ``F.scaled_dot_product_attention`` directly (``[B, H, S, D]``, no mask), so the intercept
is the module global ``F`` of `diffusers.models.attention_processor`. The reference image of the I2V models
enters by channel concatenation: there are no image keys. Pipelines run classifier-free guidance in one
batched call ``[uncond | cond]`` inside ``transformer.cache_context("cond_uncond")``.

Latents are ``[B, F', C, H, W]`` (frames before channels). CogVideoX 1.0 patches 2×2 per latent frame, so
the video tokens are frame-major F' × H/2 × W/2. CogVideoX 1.5 (``patch_size_t`` set) also patches in time:
each token covers ``patch_size_t`` latent frames, and the grid's frame axis counts those temporal patches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import Adapter, Intercept, Segments, Site
from .forward import forward_arg
from .prompt import PromptTokens, _bind, text_encoder_hook


class CogVideoXAdapter(Adapter):
    model_classes = ("CogVideoXTransformer3DModel",)
    family = "cogvideox"
    short = "cogvideox"
    pipeline_classes = ("CogVideoXPipeline", "CogVideoXImageToVideoPipeline")
    tiny_transformer = ("tiny_cogvideox_transformer", {"num_layers": 2})

    def __init__(self, transformer: torch.nn.Module, prefix: str = ""):
        super().__init__(transformer, prefix)
        self._cfg: bool | None = None  # the pipeline call's `do_classifier_free_guidance`, seen in encode_prompt

    def sites(self) -> list[Site]:
        out: list[Site] = []
        for i in range(len(self.transformer.transformer_blocks)):
            layer = f"{self.prefix}blocks.{i}"
            out.append(Site(f"{layer}.joint", layer, i, "joint", f"transformer_blocks.{i}.attn1", 0))
        return out

    def intercepts(self) -> list[Intercept]:
        from diffusers.models import attention_processor

        return [Intercept(attention_processor, "F")]

    def grid(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        hidden = forward_arg(args, kwargs, "hidden_states", 0)
        p, p_t = self.transformer.config.patch_size, self.transformer.config.patch_size_t
        _, f, _, h, w = hidden.shape  # [B, F', C, H, W]: frames before channels
        # 1.5: `CogVideoXPatchEmbed` groups `patch_size_t` frames per token (and drops a remainder, which the
        # pipelines avoid by padding the latents to a multiple of it)
        return (f if p_t is None else f // p_t), h // p, w // p

    def timestep(self, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        # forward(hidden_states, encoder_hidden_states, timestep, ...): the timestep is the third argument
        return forward_arg(args, kwargs, "timestep", 2)

    def segments(self, n_queries: int, n_keys: int, n_video: int, tokens: PromptTokens | None) -> Segments:
        # [text | video]: every key before the video tokens is text (the pipeline's padded T5 prompt)
        n_text = n_keys - n_video
        if n_queries != n_keys or n_text < 0 or (tokens is not None and len(tokens.tokens) != n_text):
            prompt = f" and the prompt's {len(tokens.tokens)} tokens" if tokens is not None else ""
            raise RuntimeError(
                f"CogVideoX joint attention with {n_queries} queries and {n_keys} keys does not hold the "
                f"{n_video} video tokens of the latent grid{prompt}; this processor differs from the one "
                "fglens' CogVideoXAdapter describes"
            )
        return Segments(
            video_queries=(n_text, n_keys),
            video=(n_text, n_keys),
            image=(n_text, n_text),
            text=(0, n_text),
        )

    def install_prompt_hooks(self, pipe: Any, capture: Any) -> list[Callable[[], None]]:
        # Words: the default T5 hook (the pipeline calls `text_encoder(ids)` without a mask; the padding is
        # `<pad>` tokens, which `PromptTokens.words` skips). CFG: the pipelines have no
        # `do_classifier_free_guidance` attribute but hand that flag to `encode_prompt`.
        if callable(getattr(pipe, "encode_prompt", None)):
            capture.wrap("encode_prompt", self._around_encode_prompt)  # its remover is the capture's own
        return text_encoder_hook(capture)

    def _around_encode_prompt(self, original: Callable, *args, **kwargs):
        flag = _bind(original, args, kwargs).get("do_classifier_free_guidance", True)  # diffusers' default
        self._cfg = bool(flag)
        return original(*args, **kwargs)

    def batched_cfg(self, pipe: Any) -> bool:
        if self._cfg is not None:
            return self._cfg
        # encode_prompt not seen: CogVideoX pipelines guide, in one batched call, iff guidance_scale > 1
        scale = getattr(pipe, "guidance_scale", None)
        return bool(getattr(pipe, "do_classifier_free_guidance", scale is not None and scale > 1))
