"""HunyuanVideo (`HunyuanVideoTransformer3DModel`), text-to-video and image-to-video (see docs/sites-hunyuan.md).

An MMDiT: every block runs one joint softmax over ``[video | context]`` keys, video first.

=====================  ===============================  =====================================================
site                   module                           queries / keys
=====================  ===============================  =====================================================
``double.{i}.joint``   ``transformer_blocks.{i}.attn``  [video (RoPE) | context], separate projections
``single.{i}.joint``   ``single_transformer_blocks.     [video (RoPE) | context], shared projections
                       {i}.attn``
=====================  ===============================  =====================================================

In the I2V pipeline the context is ``[image-derived tokens | text tokens | padding]``: the LLaVA encoder's
hidden states at the 576 image positions (subsampled by `image_embed_interleave`), then the prompt's tokens
cropped out of the chat template. Padding is masked with a boolean key mask ``[B, 1, 1, S]``. Layer names
are ``double.{i}`` then ``single.{i}``, in network order.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import Adapter, ImageGrid, Intercept, Segments, Site, TinyPipeline
from .forward import forward_arg, latent_grid
from .prompt import PromptTokens, _bind


class HunyuanVideoAdapter(Adapter):
    model_classes = ("HunyuanVideoTransformer3DModel",)
    family = "hunyuan_video"
    short = "hunyuan"
    pipeline_classes = ("HunyuanVideoImageToVideoPipeline", "HunyuanVideoPipeline")
    tiny_pipelines = (TinyPipeline("tiny-hunyuan", "tiny_hunyuan_i2v_pipeline", (48, 80, 9)),)
    tiny_transformer = ("tiny_hunyuan_transformer", {"num_double": 2, "num_single": 2})

    def sites(self) -> list[Site]:
        out: list[Site] = []
        n_double = len(self.transformer.transformer_blocks)
        for i in range(n_double):
            layer = f"{self.prefix}double.{i}"
            out.append(Site(f"{layer}.joint", layer, i, "joint", f"transformer_blocks.{i}.attn", 0))
        for j in range(len(self.transformer.single_transformer_blocks)):
            layer = f"{self.prefix}single.{j}"
            out.append(Site(f"{layer}.joint", layer, n_double + j, "joint", f"single_transformer_blocks.{j}.attn", 0))
        return out

    def intercepts(self) -> list[Intercept]:
        from diffusers.models.transformers import transformer_hunyuan_video

        return [Intercept(transformer_hunyuan_video, "dispatch_attention_fn")]

    def grid(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        p, p_t = self.transformer.config.patch_size, self.transformer.config.patch_size_t
        return latent_grid(forward_arg(args, kwargs, "hidden_states", 0), p_t, p, p)

    def timestep(self, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        return forward_arg(args, kwargs, "timestep", 1)

    def text_lengths(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[int] | None:
        # valid context tokens per item (the transformer masks the rest); host read, bare transformers only
        mask = kwargs.get("encoder_attention_mask", args[3] if len(args) > 3 else None)
        return None if mask is None else mask.sum(-1).to(torch.int64).tolist()

    def segments(self, n_queries: int, n_keys: int, n_video: int, tokens: PromptTokens | None) -> Segments:
        # Without the pipeline's encoding (a bare transformer) the whole context counts as text.
        n_image = min(int(tokens.extra.get("n_image_tokens", 0)) if tokens else 0, n_keys - n_video)
        return Segments(
            video_queries=(0, n_video),
            video=(0, n_video),
            image=(n_video, n_video + n_image),
            text=(n_video + n_image, n_keys),
        )

    def image_grid(self, n_image: int, tokens: PromptTokens | None, crop: bool) -> ImageGrid | None:
        """The LLaVA encoder's image positions (576 = 24 x 24 patches), every `image_embed_interleave`-th kept."""
        extra = tokens.extra if tokens is not None else {}
        length, stride = int(extra.get("image_len", 0)), int(extra.get("image_stride", 1))
        g = math.isqrt(length)
        if n_image <= 0 or g * g != length or len(range(0, length, stride)) != n_image:
            return None
        return ImageGrid(g, g, first=0, stride=stride, crop=crop)

    def install_prompt_hooks(self, pipe: Any, capture: Any) -> list[Callable[[], None]]:
        if not hasattr(pipe, "_get_llama_prompt_embeds"):
            return []
        before = len(capture._removers)
        capture.wrap("_get_llama_prompt_embeds", lambda original, *a, **kw: _around_llama(pipe, capture, original,
                                                                                         a, kw))
        # `wrap` registered its own remover on the capture; nothing more to return
        assert len(capture._removers) == before + 1
        return []

    def prompt_tokens(self, pipe: Any, prompt: str) -> PromptTokens:
        """The Llama chat template and crop of `_get_llama_prompt_embeds` (its call's default template and
        ``max_sequence_length``), as `install_prompt_hooks` reads them while tracing; T5-style otherwise."""
        if not hasattr(pipe, "_get_llama_prompt_embeds"):
            return super().prompt_tokens(pipe, prompt)
        params = inspect.signature(type(pipe).__call__).parameters
        max_len = params["max_sequence_length"].default if "max_sequence_length" in params else None
        template = params["prompt_template"].default if "prompt_template" in params else None
        template = template or sys.modules[type(pipe).__module__].DEFAULT_PROMPT_TEMPLATE
        ids, mask = _text_ids(pipe.tokenizer, template, prompt, max_len or 256)
        return PromptTokens(prompt, pipe.tokenizer.convert_ids_to_tokens(ids), int(sum(mask)))


def _around_llama(pipe: Any, capture: Any, original: Callable, args: tuple, kwargs: dict):
    """Run the pipeline's LLaVA encoding, then report the tokens that became the context's text keys."""
    out = original(*args, **kwargs)
    bound = _bind(original, args, kwargs)
    prompts = bound.get("prompt")
    prompts = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
    template = bound.get("prompt_template") or {}
    interleave = bound.get("image_embed_interleave", 2)
    max_len = bound.get("max_sequence_length", 256)
    image_len = template.get("image_emb_len", 576)
    n_image = len(range(0, image_len, interleave)) if 0 < interleave < 6 else image_len
    rows = []
    for prompt in prompts:  # one row per prompt of the batch
        ids, mask = _text_ids(pipe.tokenizer, template, prompt, max_len)
        tokens = pipe.tokenizer.convert_ids_to_tokens(ids)
        stride = interleave if 0 < interleave < 6 else 1
        rows.append(PromptTokens(prompt, tokens, int(sum(mask)),
                                 {"n_image_tokens": n_image, "image_len": image_len, "image_stride": stride}))
    capture.add_encoding(rows[0], rows)
    return out


def _text_ids(tokenizer: Any, template: dict, prompt: str, max_len: int) -> tuple[list[int], list[int]]:
    """The token ids (and mask) that end up as text keys: the same tokenisation and crop as
    `HunyuanVideoImageToVideoPipeline._get_llama_prompt_embeds` (user prompt, then the assistant section)."""
    crop_start = template.get("crop_start")
    if crop_start is None:
        crop_start = len(tokenizer(template["template"], padding="max_length").input_ids) - 5
    enc = tokenizer(template["template"].format(prompt), max_length=max_len + crop_start, padding="max_length",
                    truncation=True, return_attention_mask=True)
    ids, mask = list(enc.input_ids), list(enc.attention_mask)
    end_header = tokenizer.convert_tokens_to_ids("<|end_header_id|>")
    ends = [i for i, t in enumerate(ids) if t == end_header]
    assistant = (ends[-1] if len(ends) >= 3 else len(ids) - 1) + 1
    keep = list(range(crop_start, assistant - 4)) + list(range(assistant, len(ids)))
    return [ids[i] for i in keep], [mask[i] for i in keep]
