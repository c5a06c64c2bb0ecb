"""The CPU benchmark's workload: which modes run on which model, the words followed, and the inputs of one
transformer forward (one sampling step) at N video tokens, as the Wan and HunyuanVideo I2V pipelines build them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .generic import GENERIC, GENERIC_MODES

#: the hand-built Wan stack and joint proxy, then every other architecture's generic row (`fglens.bench.generic`)
MODELS = ("wan", "hunyuan", *GENERIC)
#: the Wan stack's modes: no tracing, fglens' recorder, the recorder with ref_mass, the positive control, and
#: FocalGuidance on the middle half of the blocks (`fg_layers`)
MODES = ("plain", "traced", "traced_ref", "naive", "fg")
#: the modes of the joint-attention proxy (HunyuanVideo)
JOINT_MODES = ("plain", "traced", "naive", "fg")
MODEL_MODES: dict[str, tuple[str, ...]] = {"wan": MODES, "hunyuan": JOINT_MODES,
                                           **dict.fromkeys(GENERIC, GENERIC_MODES)}
#: the words the traced and naive modes follow: token positions in the 512 text rows
WORDS: dict[str, list[int]] = {"w0": [1], "w1": [2, 3]}
#: latent frame sizes (Y, X) to choose from, largest first: the first that divides every N is used
FRAME_SIZES: tuple[tuple[int, int], ...] = ((16, 20), (8, 10), (4, 5))
TEXT_ROWS = 512  # Wan pads every prompt to 512 rows
TEXT_REAL = 12  # real (non-zero) rows of the Wan workload's text; the rest is zero padding
IMAGE_TOKENS = 257  # CLIP ViT-H/14 tokens of the reference frame in Wan2.1 I2V
JOINT_IMAGE_TOKENS = 144  # image-derived context tokens of the joint proxy (HunyuanVideo I2V has 576 / interleave)
JOINT_TEXT_ROWS = 252  # text rows of the joint proxy's context after the image tokens (real + masked padding)
JOINT_TEXT_REAL = 12  # real (unmasked) text tokens among them
#: the joint proxy's words: `WORDS` shifted past the image tokens (a bare transformer's context is all "text")
JOINT_WORDS: dict[str, list[int]] = {w: [JOINT_IMAGE_TOKENS + p for p in pos] for w, pos in WORDS.items()}
#: FocalGuidance in the benchmark: the anchor's word and strength, the cache's alpha (the source is the last block)
EDIT_WORD = "w0"
EDIT_STRENGTH = 2.0
EDIT_ALPHA = 0.5


def frame_size_for(tokens: Sequence[int]) -> tuple[int, int]:
    """The largest latent frame (Y, X) of `FRAME_SIZES` whose token count divides every N."""
    for ny, nx in FRAME_SIZES:
        if all(n > 0 and n % (ny * nx) == 0 for n in tokens):
            return ny, nx
    raise ValueError(
        f"every token count must be a positive multiple of {FRAME_SIZES[-1][0] * FRAME_SIZES[-1][1]} "
        f"(frames of {' or '.join(f'{y}x{x}' for y, x in FRAME_SIZES)} latent tokens); got {list(tokens)}"
    )


def wan_inputs(n_tokens: int, frame_hw: tuple[int, int], *, text_len: int = TEXT_REAL, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments of one Wan I2V transformer forward with `n_tokens` video tokens.

    ``hidden_states [1, 36, F, 2Y, 2X]`` (16 noise + 20 condition channels; the 2x2 patch gives F·Y·X
    tokens), ``timestep [500]``, ``encoder_hidden_states [1, 512, 32]`` random for the first `text_len`
    rows and exactly zero after (Wan's padding), ``encoder_hidden_states_image [1, 257, 8]``.
    """
    from ..testing import WAN_TEXT_DIM

    ny, nx = frame_hw
    if n_tokens % (ny * nx):
        raise ValueError(f"{n_tokens} tokens is not a whole number of {ny}x{nx} frames")
    frames = n_tokens // (ny * nx)
    g = torch.Generator().manual_seed(seed)
    text = torch.zeros(1, TEXT_ROWS, WAN_TEXT_DIM)
    text[:, :text_len] = torch.randn(1, text_len, WAN_TEXT_DIM, generator=g)
    return {
        "hidden_states": torch.randn(1, 36, frames, 2 * ny, 2 * nx, generator=g),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": text,
        "encoder_hidden_states_image": torch.randn(1, IMAGE_TOKENS, 8, generator=g),
        "return_dict": False,
    }


def hunyuan_inputs(
    n_tokens: int,
    frame_hw: tuple[int, int],
    config: Mapping[str, Any],
    *,
    n_image: int = JOINT_IMAGE_TOKENS,
    text_rows: int = JOINT_TEXT_ROWS,
    text_len: int = JOINT_TEXT_REAL,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword arguments of one HunyuanVideo I2V transformer forward with `n_tokens` video tokens.

    ``hidden_states [1, C, F, 2Y, 2X]`` (C = the config's ``in_channels``; the 1x2x2 patch gives F·Y·X
    tokens), ``timestep [500]``, ``encoder_hidden_states [1, n_image + text_rows, text_embed_dim]`` (random
    rows: what makes the padding is the mask), ``encoder_attention_mask [1, n_image + text_rows]`` (1 for the
    image tokens and the first `text_len` text rows, 0 after), ``pooled_projections`` and, when the config
    embeds guidance, ``guidance [6000.0]`` (the pipeline passes guidance_scale x 1000).
    """
    ny, nx = frame_hw
    if n_tokens % (ny * nx):
        raise ValueError(f"{n_tokens} tokens is not a whole number of {ny}x{nx} frames")
    frames = n_tokens // (ny * nx)
    g = torch.Generator().manual_seed(seed)
    rows = n_image + text_rows
    mask = torch.zeros(1, rows, dtype=torch.int64)
    mask[:, : n_image + text_len] = 1
    inputs = {
        "hidden_states": torch.randn(1, config["in_channels"], frames, 2 * ny, 2 * nx, generator=g),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, rows, config["text_embed_dim"], generator=g),
        "encoder_attention_mask": mask,
        "pooled_projections": torch.randn(1, config["pooled_projection_dim"], generator=g),
        "return_dict": False,
    }
    if config.get("guidance_embeds"):
        inputs["guidance"] = torch.tensor([6000.0])
    return inputs

