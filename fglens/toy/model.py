"""The toy pipeline's parts, built from configs: a real `WanImageToVideoPipeline` at tiny sizes.

The text encoder (UMT5) and the image encoder (CLIP vision) keep their seeded random weights: they are fixed
feature maps the DiT learns to read. The Wan VAE is trained for reconstruction and the DiT with flow matching
(`fglens.toy.train`). The VAE compresses 4× in space and 2× in time, so a 9-frame 64×64 clip is a
5×16×16 latent, and the DiT's 2×2 patches make 5×8×8 = 320 video tokens.

Example:
    >>> pipe = build_pipeline(seed=0)
    >>> type(pipe).__name__, pipe.transformer.config.num_layers, pipe.vae.config.z_dim
    ('WanImageToVideoPipeline', 8, 8)
"""

from __future__ import annotations

import torch

from .world import COLOURS, SHAPES

Z_DIM = 8
TEXT_DIM = 32
NUM_LAYERS = 8
#: 2×2 pixel patches in (as the Wan2.2 VAE), one 2× downsampling stage in space and time: 4× and 2× in all
VAE_CONFIG = dict(base_dim=16, z_dim=Z_DIM, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                  in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=2, scale_factor_spatial=4,
                  latents_mean=[0.0] * Z_DIM, latents_std=[1.0] * Z_DIM)
DIT_CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=2 * Z_DIM + 2,
                  out_channels=Z_DIM, text_dim=TEXT_DIM, freq_dim=64, ffn_dim=192, num_layers=NUM_LAYERS,
                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64, image_dim=16,
                  added_kv_proj_dim=64)
SHIFT = 3.0  #: the flow-matching schedule's shift, in training and in the shipped scheduler
#: the DiT's size settings a training run may change (`fglens toy train --dit-layers ...`); the rest is the world's
DIT_SIZE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "ffn_dim")


def dit_config(**size: int) -> dict:
    """`DIT_CONFIG` with some of `DIT_SIZE_KEYS` changed (the image tokens' key/value width follows the width).

    Example:
        >>> cfg = dit_config(num_layers=12, num_attention_heads=8)
        >>> cfg["num_layers"], cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["added_kv_proj_dim"]
        (12, 128, 128)
    """
    unknown = sorted(set(size) - set(DIT_SIZE_KEYS))
    if unknown:
        raise ValueError(f"unknown DiT size setting(s) {unknown}; accepted: {', '.join(DIT_SIZE_KEYS)}")
    for key, value in size.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    cfg = {**DIT_CONFIG, **size}
    if cfg["attention_head_dim"] % 2:
        raise ValueError(f"attention_head_dim must be even (rotary embeddings), got {cfg['attention_head_dim']}")
    cfg["added_kv_proj_dim"] = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return cfg

#: every word the world's prompts use, one sentencepiece each
VOCAB = tuple(
    "the a camera moves turns grows shrinks pans zooms to and swap stays still left right up down in out".split()
) + tuple(COLOURS) + tuple(SHAPES)
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789-,.'!?")


def tokenizer():
    """A `T5Tokenizer` whose whole-word pieces are the world's words (other text falls back to letters)."""
    from transformers import T5Tokenizer

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -2.0) for w in VOCAB]
    vocab += [("▁", -8.0)] + [(c, -10.0) for c in _CHARS] + [("▁" + c, -9.0) for c in _CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_pipeline(seed: int = 0, dit: dict | None = None):
    """An untrained toy pipeline (seeded): every part at its initial weights; `dit` changes the DiT's size
    (`dit_config`'s settings), the shipped size otherwise."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    tok = tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tok), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )).eval()
    torch.manual_seed(seed + 1)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=16, projection_dim=16, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=32, patch_size=8,
    )).eval()
    image_processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLWan(**VAE_CONFIG)
    torch.manual_seed(seed + 3)
    transformer = WanTransformer3DModel(**dit_config(**(dit or {})))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    pipe = WanImageToVideoPipeline(
        tokenizer=tok, text_encoder=text_encoder, image_encoder=image_encoder, image_processor=image_processor,
        transformer=transformer, vae=vae, scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
