"""Tiny offline pipelines with seeded random weights, for tests, demos and benchmarks.

Everything here is built in code from configs: no file is read and nothing is downloaded. The models are
real diffusers / transformers classes, so the pipelines run exactly the code paths of the full-size ones,
only with small dimensions.

Example:
    >>> import fglens as fg
    >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
    >>> out = pipe(image=fg.testing.reference_image(), prompt="a dog jumps over a fence",
    ...            height=32, width=48, num_frames=5, num_inference_steps=2, output_type="np")
    >>> out.frames[0].shape
    (5, 32, 48, 3)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Words the tiny tokenizer knows as whole pieces; anything else falls back to single characters.
_WORDS = (
    "a an the dog cat man woman child bird car ball fence tree house river sky road field street "
    "jumps runs walks turns waves smiles flies drives rolls falls dances swims climbs opens closes "
    "over under into onto across through behind toward away from with and of in on at to up down "
    "red blue green yellow white black big small slowly quickly camera pans zooms left right "
    "over-exposed static blurry worst quality low"
).split()
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789-,.'!?")

WAN_TEXT_DIM = 32


def tiny_t5_tokenizer():
    """A `T5Tokenizer` (unigram, sentencepiece-style pieces) built from an in-memory vocabulary.

    Whole words of a small English vocabulary are single pieces; other text falls back to characters.

    Example:
        >>> tok = tiny_t5_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("a dog jumps").input_ids)
        ['▁a', '▁dog', '▁jumps', '</s>']
    """
    from transformers import T5Tokenizer

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -2.0) for w in _WORDS]
    vocab += [("▁", -8.0)] + [(c, -10.0) for c in _CHARS] + [("▁" + c, -9.0) for c in _CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _seeded(seed: int):
    torch.manual_seed(seed)


def tiny_wan_transformer(
    *,
    num_layers: int = 4,
    heads: int = 2,
    head_dim: int = 8,
    image_conditioned: bool = True,
    seed: int = 0,
):
    """A random-weight `WanTransformer3DModel` with the I2V (36 input channels, image keys) or T2V layout."""
    from diffusers import WanTransformer3DModel

    _seeded(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=36 if image_conditioned else 16,
        out_channels=16,
        text_dim=WAN_TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=8 if image_conditioned else None,
        added_kv_proj_dim=heads * head_dim if image_conditioned else None,
    ).eval()


def _tiny_wan_parts(seed: int):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    _seeded(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    tokenizer = tiny_t5_tokenizer()
    text_config = UMT5Config(
        vocab_size=len(tokenizer), d_model=WAN_TEXT_DIM, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0,
    )
    text_encoder = UMT5EncoderModel(text_config).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    return vae, tokenizer, text_encoder, scheduler


def tiny_wan_i2v_pipeline(*, num_layers: int = 4, seed: int = 0):
    """A complete `WanImageToVideoPipeline` with seeded random weights (UMT5, CLIP vision, Wan VAE, DiT).

    The CLIP vision tower sees 16×16 patches of a 16-pixel image, so it yields 257 image tokens, as
    ViT-H/14 does for Wan2.1-I2V. Deterministic for a given `seed`.
    """
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    vae, tokenizer, text_encoder, scheduler = _tiny_wan_parts(seed)
    _seeded(seed + 1)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=8, projection_dim=8, num_hidden_layers=2, num_attention_heads=2, image_size=16,
            intermediate_size=16, patch_size=1,
        )
    ).eval()
    image_processor = CLIPImageProcessor(crop_size=16, size={"shortest_edge": 16})
    transformer = tiny_wan_transformer(num_layers=num_layers, image_conditioned=True, seed=seed + 2)
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, image_encoder=image_encoder,
        image_processor=image_processor, transformer=transformer, vae=vae, scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan22_i2v_pipeline(*, num_layers: int = 3, boundary_ratio: float = 0.9, seed: int = 0):
    """A Wan2.2-style two-expert `WanImageToVideoPipeline`: `transformer` for high noise, `transformer_2` below
    `boundary_ratio`; no image encoder (the reference frame enters only through the latent channels)."""
    from diffusers import WanImageToVideoPipeline

    vae, tokenizer, text_encoder, scheduler = _tiny_wan_parts(seed)
    high = tiny_wan_transformer(num_layers=num_layers, image_conditioned=False, seed=seed + 2)
    low = tiny_wan_transformer(num_layers=num_layers, image_conditioned=False, seed=seed + 3)
    # I2V latents: 16 noise + 4 mask + 16 image channels
    high.register_to_config(in_channels=36)
    low.register_to_config(in_channels=36)
    for model in (high, low):
        _seeded(seed + 4)
        old = model.patch_embedding
        model.patch_embedding = torch.nn.Conv3d(36, old.out_channels, kernel_size=old.kernel_size, stride=old.stride)
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, image_encoder=None, image_processor=None,
        transformer=high, transformer_2=low, vae=vae, scheduler=scheduler, boundary_ratio=boundary_ratio,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan_t2v_pipeline(*, num_layers: int = 4, seed: int = 0):
    """A complete `WanPipeline` (text-to-video) with seeded random weights; its DiT has no image keys."""
    from diffusers import WanPipeline

    vae, tokenizer, text_encoder, scheduler = _tiny_wan_parts(seed)
    transformer = tiny_wan_transformer(num_layers=num_layers, image_conditioned=False, seed=seed + 2)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_image(width: int = 48, height: int = 32) -> Image.Image:
    """A small deterministic reference frame: a bright disc (the 'dog') left of centre on a gradient."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width, yy / height, 0.5 * np.ones_like(xx)], axis=-1) * 120
    disc = (xx - 0.35 * width) ** 2 + (yy - 0.55 * height) ** 2 < (0.22 * min(width, height)) ** 2
    img[disc] = (230, 200, 60)
    return Image.fromarray(img.astype(np.uint8))
