"""HunyuanVideo-1.5 (`HunyuanVideo15Transformer3DModel`), image-to-video and text-to-video (see
docs/sites-hunyuan15.md).

An MMDiT of dual-stream blocks only: every block runs one joint softmax over ``[video | context]`` keys, video first.

=====================  ===============================  =====================================================
site                   module                           queries / keys
=====================  ===============================  =====================================================
``blocks.{i}.joint``   ``transformer_blocks.{i}.attn``  [video (3-D RoPE) | context], separate projections
=====================  ===============================  =====================================================

`HunyuanVideo15AttnProcessor2_0` (defined in `transformer_hunyuan_video15`, whose `dispatch_attention_fn` is
intercepted) makes one kernel call per block. The transformer builds each batch item's context as
``[valid image | valid ByT5 | valid Qwen | masked image | masked ByT5 | masked Qwen]``:

- **image**: the SigLIP tokens of the reference image (729 = 27 x 27 patches of a 384 x 384 resize, no crop, for
  the real model), valid in the I2V pipeline. The T2V pipeline passes zeros, which the transformer masks and moves
  behind the valid text.
- **text**: the glyph tokens first (ByT5 bytes of ``Text "..."`` made from the prompt's quoted spans, 256 padded;
  none when the prompt quotes nothing), then the Qwen2.5-VL tokens of the chat template cropped after the system
  message (1000 padded): one text segment. Its `PromptTokens` lists the real glyph bytes, then the real Qwen tokens,
  then pads, so words are found in both (a quoted word twice).

The kernel's mask is ``m_q & m_k`` (``[B, 1, S, S]``, the video part always valid): every video query row sees the
key mask ``m_k``, which recorders and edits use (`joint_key_mask`); re-runs of the kernel take its own mask.
The reference frame also enters as latent channels (its clean latent in frame 0 of 32 of the 65 input channels,
plus a mask channel): no tokens. The timestep is one per batch item.

CFG: the pipelines' guider calls the transformer once per branch, ``pred_cond`` first then ``pred_uncond``
(cache contexts the clock does not name: the first forward of a step is cond, a second uncond). Guiders with other
predictions (perturbed-attention, skip-layer, smoothed-energy, LTX-2, auto guidance) are refused at entry.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import Adapter, ImageGrid, Intercept, Segments, Site, TinyPipeline
from .forward import forward_arg, latent_grid
from .prompt import PromptTokens, _bind

#: the guiders whose batches are exactly (pred_cond, pred_uncond), the uncond one on the negative prompt's tokens
_TWO_BRANCHES = ["pred_cond", "pred_uncond"]


class HunyuanVideo15Adapter(Adapter):
    model_classes = ("HunyuanVideo15Transformer3DModel",)
    family = "hunyuan_video15"
    short = "hunyuan15"
    pipeline_classes = ("HunyuanVideo15ImageToVideoPipeline", "HunyuanVideo15Pipeline")
    tiny_pipelines = (TinyPipeline("tiny-hunyuan15", "tiny_hunyuan15_i2v_pipeline", (32, 48, 5)),)
    tiny_transformer = ("tiny_hunyuan15_transformer", {"num_layers": 2})

    def refusal(self, pipe: Any | None) -> str | None:
        reason = super().refusal(pipe)
        guider = getattr(pipe, "guider", None) if pipe is not None else None
        if reason is None and guider is not None:
            predictions = list(getattr(guider, "_input_predictions", None) or [])
            name = type(guider).__name__
            if predictions != _TWO_BRANCHES or name == "AutoGuidance":
                return (f"a HunyuanVideo-1.5 pipeline with a {name} guider yet: its transformer calls per step "
                        f"({', '.join(predictions) or 'unnamed'}) are not one cond and one uncond forward on the "
                        "prompt and the negative prompt (or they change the model between them), so fglens could not "
                        "tell which branch a forward is. Use ClassifierFreeGuidance (or another two-prediction "
                        "guider: APG, CFG-Zero*, TCFG, FDG, MAG)")
        return reason

    def sites(self) -> list[Site]:
        out: list[Site] = []
        for i, _ in enumerate(self.transformer.transformer_blocks):
            layer = f"{self.prefix}blocks.{i}"
            out.append(Site(f"{layer}.joint", layer, i, "joint", f"transformer_blocks.{i}.attn", 0))
        return out

    def intercepts(self) -> list[Intercept]:
        from diffusers.models.transformers import transformer_hunyuan_video15

        return [Intercept(transformer_hunyuan_video15, "dispatch_attention_fn")]

    def grid(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        p, p_t = self.transformer.config.patch_size, self.transformer.config.patch_size_t
        return latent_grid(forward_arg(args, kwargs, "hidden_states", 0), p_t, p, p)

    def timestep(self, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        return forward_arg(args, kwargs, "timestep", 1)

    def text_lengths(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[int] | None:
        """Valid context tokens per item (image, glyph and prompt tokens together: a bare transformer's context is
        all text); host read, bare transformers only."""
        names = ("encoder_attention_mask", "encoder_attention_mask_2", "image_embeds")
        mask, mask_2, image = (kwargs[n] if n in kwargs else (args[i] if len(args) > i else None)
                               for n, i in zip(names, (3, 6, 7), strict=True))
        if mask is None:
            return None
        n = mask.to(torch.float32).sum(-1)
        if mask_2 is not None:
            n = n + mask_2.to(torch.float32).sum(-1)
        if image is not None and not bool(torch.all(image == 0)):  # as the transformer tells T2V from I2V
            n = n + image.shape[1]
        return n.to(torch.int64).tolist()

    def joint_key_mask(self, attn_mask: torch.Tensor, segments: Segments) -> torch.Tensor:
        """The processor's ``[B, 1, S, S]`` mask is ``m_q & m_k`` with the video part of ``m`` padded True: every
        video query row is the key mask ``m_k``; the first video row is taken."""
        if attn_mask.ndim == 4 and attn_mask.shape[-2] == attn_mask.shape[-1] and attn_mask.shape[1] == 1:
            return attn_mask[:, 0, segments.video_queries[0]]
        return attn_mask

    def segments(self, n_queries: int, n_keys: int, n_video: int, tokens: PromptTokens | None) -> Segments:
        # Without the pipeline's encoding (a bare transformer) the whole context counts as text.
        if n_keys < n_video or n_queries != n_keys:
            raise ValueError(f"HunyuanVideo-1.5: a joint call with {n_queries} queries and {n_keys} keys cannot hold "
                             f"the grid's {n_video} video tokens first")
        n_image = min(int(tokens.extra.get("n_image_tokens", 0)) if tokens else 0, n_keys - n_video)
        return Segments(
            video_queries=(0, n_video),
            video=(0, n_video),
            image=(n_video, n_video + n_image),
            text=(n_video + n_image, n_keys),
        )

    def image_grid(self, n_image: int, tokens: PromptTokens | None, crop: bool) -> ImageGrid | None:
        """SigLIP's patches: a square raster of the whole image (its processor resizes without cropping)."""
        g = math.isqrt(n_image)
        if n_image <= 0 or g * g != n_image:
            return None
        return ImageGrid(g, g, first=0, stride=1, crop=False)

    def install_prompt_hooks(self, pipe: Any, capture: Any) -> list[Callable[[], None]]:
        if not hasattr(pipe, "_get_mllm_prompt_embeds"):
            return []
        capture.wrap("encode_prompt", lambda original, *a, **kw: _around_encode(pipe, capture, original, a, kw))
        return []  # `wrap` registered its own remover on the capture

    def prompt_tokens(self, pipe: Any, prompt: str) -> PromptTokens:
        """The glyph bytes and the cropped chat template of `encode_prompt`, as `install_prompt_hooks` reads them."""
        if not hasattr(pipe, "_get_mllm_prompt_embeds"):
            return super().prompt_tokens(pipe, prompt)
        return _tokens(pipe, prompt)


def _n_image_tokens(pipe: Any) -> int:
    """How many image tokens the transformer keeps valid: the SigLIP patches of the I2V pipeline's image encoder
    (no class token); 0 for the T2V pipeline (zeros, masked)."""
    encoder = getattr(pipe, "image_encoder", None)
    config = getattr(getattr(encoder, "config", None), "vision_config", None) or getattr(encoder, "config", None)
    if config is None:
        return 0
    return (int(config.image_size) // int(config.patch_size)) ** 2


def _tokens(pipe: Any, prompt: str | None, n_glyph: int | None = None) -> PromptTokens:
    """The context's text keys for `prompt` as `HunyuanVideo15*Pipeline.encode_prompt` makes them: the real ByT5
    bytes of its glyph text, the real Qwen tokens after the crop, then the pads of both. `n_glyph`: the real glyph
    count of embeddings the user gave (their bytes unknown: ``<glyph>`` placeholders, never a word)."""
    module = sys.modules[type(pipe).__module__]
    prompt = "" if prompt is None else prompt
    crop = int(pipe.prompt_template_encode_start_idx)
    chat = module.format_text_input([prompt], pipe.system_message)  # an empty prompt becomes " " there
    enc = pipe.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True,
                                             padding="max_length", max_length=pipe.tokenizer_max_length + crop,
                                             truncation=True)
    ids, mask = list(enc["input_ids"][0])[crop:], list(enc["attention_mask"][0])[crop:]
    qwen = pipe.tokenizer.convert_ids_to_tokens(ids)
    real = [t for t, m in zip(qwen, mask, strict=True) if m]
    pads = [t for t, m in zip(qwen, mask, strict=True) if not m]
    n_2 = int(pipe.tokenizer_2_max_length)
    glyphs: list[str] = ["<glyph>"] * n_glyph if n_glyph is not None else []
    glyph = module.extract_glyph_texts(prompt)
    if n_glyph is None and glyph is not None:
        enc_2 = pipe.tokenizer_2(glyph, padding="max_length", max_length=n_2, truncation=True,
                                 add_special_tokens=True)
        glyphs = [t for t, m in zip(pipe.tokenizer_2.convert_ids_to_tokens(enc_2["input_ids"]),
                                    enc_2["attention_mask"], strict=True) if m]
    tokens = glyphs + real + ["<pad>"] * (n_2 - len(glyphs)) + pads
    return PromptTokens(prompt, tokens, len(glyphs) + len(real),
                        {"n_image_tokens": _n_image_tokens(pipe), "n_glyph_tokens": len(glyphs)})


def _around_encode(pipe: Any, capture: Any, original: Callable, args: tuple, kwargs: dict):
    """Run the pipeline's encoding, then report the tokens that became the context's text keys (one row per prompt)
    when it encoded the prompt with its Qwen encoder (no `prompt_embeds` given)."""
    out = original(*args, **kwargs)
    bound = _bind(type(pipe).encode_prompt.__get__(pipe), args, kwargs)  # `original` may be another wrapper
    if bound.get("prompt_embeds") is None:
        prompts = bound.get("prompt")
        prompts = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
        mask_2 = bound.get("prompt_embeds_mask_2")
        if bound.get("prompt_embeds_2") is not None and mask_2 is not None:  # the user's glyph embeddings
            counts = [int(n) for n in (mask_2 > 0).sum(-1).tolist()]  # host read, once per encoding
            rows = [_tokens(pipe, p, counts[i % len(counts)]) for i, p in enumerate(prompts)]
        else:
            rows = [_tokens(pipe, p) for p in prompts]
        capture.add_encoding(rows[0], rows)
    return out
