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

import functools
import inspect
from collections.abc import Sequence

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


def _tiny_call_defaults() -> dict[str, dict[str, int]]:
    from .adapters import ADAPTERS
    from .adapters.base import TINY_STEPS

    sizes = {a.short: a.tiny_pipelines[0].size for a in ADAPTERS if a.tiny_pipelines}  # the adapters' declarations
    sizes.update({t.name: t.size for a in ADAPTERS for t in a.tiny_pipelines})  # and each tiny pipeline's own
    sizes.setdefault("cogvideox", (32, 48, 9))  # CogVideoX has no named tiny pipeline: its builder's own size
    return {family: dict(height=h, width=w, num_frames=f, num_inference_steps=TINY_STEPS)
            for family, (h, w, f) in sizes.items()}


#: what a tiny pipeline's call uses for a size or step count it is not given (the real pipelines' defaults,
#: 480x832x81 at 50 steps, are minutes of work on random weights, and Wan's VAE cannot decode them at this size):
#: the sizes each adapter declares for its tiny pipelines (`Adapter.tiny_pipelines`; by family: its first, and by
#: tiny name) and `adapters.base.TINY_STEPS`
TINY_CALL_DEFAULTS: dict[str, dict[str, int]] = _tiny_call_defaults()
_SMALL_CLASSES: dict[type, type] = {}


def _with_small_defaults(pipe, family: str):
    """`pipe` made to fill the sizes and step count of `TINY_CALL_DEFAULTS[family]` that a call leaves out.

    The pipeline becomes an instance of a subclass with the same name whose ``__call__`` only adds the
    missing keyword arguments and calls the diffusers class's own; everything else is the diffusers code.
    The defaults are in ``pipe._fglens_call_defaults``.
    """
    base = type(pipe)
    cls = _SMALL_CLASSES.get(base)
    if cls is None:
        signature = inspect.signature(base.__call__)

        @functools.wraps(base.__call__)
        def __call__(self, *args, **kwargs):
            bound = signature.bind_partial(self, *args, **kwargs).arguments
            for key, value in self._fglens_call_defaults.items():
                if key not in bound and key in signature.parameters:  # HunyuanVideo-1.5 I2V: no height / width
                    kwargs[key] = value
            return base.__call__(self, *args, **kwargs)

        cls = type(base.__name__, (base,), {"__call__": __call__, "__module__": base.__module__,
                                            "__qualname__": base.__qualname__, "__doc__": base.__doc__})
        _SMALL_CLASSES[base] = cls
    pipe.__class__ = cls
    pipe._fglens_call_defaults = dict(TINY_CALL_DEFAULTS[family])
    return pipe

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
    cross_attention_gain: float = 3.0,
    seed: int = 0,
    **config,
):
    """A random-weight `WanTransformer3DModel` with the I2V (36 input channels, image keys) or T2V layout;
    `config`: more of its config, overriding these (Wan2.2 TI2V: ``in_channels=48, out_channels=48``).

    `cross_attention_gain` scales the cross-attention query/key norms so that attention to the text is as
    peaked as in trained models (1.0 gives the plain random init, almost uniform over the 512 text keys).
    """
    from diffusers import WanTransformer3DModel

    return _tiny_wan_like(WanTransformer3DModel, num_layers=num_layers, heads=heads, head_dim=head_dim,
                          image_conditioned=image_conditioned, cross_attention_gain=cross_attention_gain, seed=seed,
                          **config)


def _tiny_wan_like(cls, *, num_layers: int, heads: int, head_dim: int, image_conditioned: bool,
                   cross_attention_gain: float, seed: int, **config):
    """A random-weight transformer of a Wan-layout class (`WanTransformer3DModel`, `SkyReelsV2Transformer3DModel`)."""
    _seeded(seed)
    model = cls(**{
        "patch_size": (1, 2, 2),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": 36 if image_conditioned else 16,
        "out_channels": 16,
        "text_dim": WAN_TEXT_DIM,
        "freq_dim": 32,
        "ffn_dim": 32,
        "num_layers": num_layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 32,
        "image_dim": 8 if image_conditioned else None,
        "added_kv_proj_dim": heads * head_dim if image_conditioned else None,
        **config,
    }).eval()
    # With unit RMSNorm gains a random model's cross-attention is almost uniform over the 512 text keys;
    # trained models attend sharply. Raise the q/k gains so word maps have structure, as in real runs.
    with torch.no_grad():
        for block in model.blocks:
            block.attn2.norm_q.weight.fill_(cross_attention_gain)
            block.attn2.norm_k.weight.fill_(cross_attention_gain)
    return model


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


def _tiny_clip_vision(model_class, seed: int):
    """A seeded tiny CLIP vision encoder of `model_class` (16 px, patch 1: 257 image tokens, as Wan2.1-I2V gets from
    ViT-H/14) and its image processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    _seeded(seed)
    encoder = model_class(
        CLIPVisionConfig(
            hidden_size=8, projection_dim=8, num_hidden_layers=2, num_attention_heads=2, image_size=16,
            intermediate_size=16, patch_size=1,
        )
    ).eval()
    return encoder, CLIPImageProcessor(crop_size=16, size={"shortest_edge": 16})


def tiny_wan_i2v_pipeline(*, num_layers: int = 4, seed: int = 0):
    """A complete `WanImageToVideoPipeline` with seeded random weights (UMT5, CLIP vision, Wan VAE, DiT).

    The CLIP vision tower sees 16×16 patches of a 16-pixel image, so it yields 257 image tokens, as
    ViT-H/14 does for Wan2.1-I2V. Deterministic for a given `seed`.
    """
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPVisionModel

    vae, tokenizer, text_encoder, scheduler = _tiny_wan_parts(seed)
    image_encoder, image_processor = _tiny_clip_vision(CLIPVisionModel, seed + 1)
    transformer = tiny_wan_transformer(num_layers=num_layers, image_conditioned=True, seed=seed + 2)
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, image_encoder=image_encoder,
        image_processor=image_processor, transformer=transformer, vae=vae, scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return _with_small_defaults(pipe, "wan")


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
    return _with_small_defaults(pipe, "wan")


#: latent channels of Wan2.2's TI2V VAE (`AutoencoderKLWan` with is_residual, patch 2, x16 spatially)
WAN22_TI2V_Z = 48


def tiny_wan22_ti2v_pipeline(*, num_layers: int = 3, seed: int = 0, text_to_video: bool = False):
    """A Wan2.2-TI2V-5B-style pipeline with seeded random weights: `WanImageToVideoPipeline` with
    ``expand_timesteps=True`` (or `WanPipeline` with `text_to_video`), no image encoder, the Wan2.2 VAE layout
    (`AutoencoderKLWan` with ``is_residual=True``, ``patch_size=2``: x16 spatially, x4 in time, 48 latent channels)
    and a `WanTransformer3DModel` with 48 input channels.

    The reference frame enters only through the latent: its clean latent replaces latent frame 0, whose tokens get
    timestep 0 (the transformer receives a per-token timestep ``[B, N]``); there are no image keys.

    Example:
        >>> pipe = tiny_wan22_ti2v_pipeline()
        >>> out = pipe(image=reference_image(96, 64), prompt="a dog jumps", num_inference_steps=2, output_type="np")
        >>> out.frames[0].shape          # its default size: 64 x 96 (a 2 x 3 token grid: 32 px per token), 5 frames
        (5, 64, 96, 3)
    """
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline

    _, tokenizer, text_encoder, scheduler = _tiny_wan_parts(seed)
    _seeded(seed + 5)
    vae = AutoencoderKLWan(
        base_dim=8, decoder_base_dim=8, z_dim=WAN22_TI2V_Z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
        scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.0] * WAN22_TI2V_Z,
        latents_std=[1.0] * WAN22_TI2V_Z,
    ).eval()
    transformer = tiny_wan_transformer(num_layers=num_layers, image_conditioned=False, seed=seed + 2,
                                       in_channels=WAN22_TI2V_Z, out_channels=WAN22_TI2V_Z)
    if text_to_video:
        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                           scheduler=scheduler, expand_timesteps=True)
    else:
        pipe = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, image_encoder=None,
                                       image_processor=None, transformer=transformer, vae=vae, scheduler=scheduler,
                                       expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    return _with_small_defaults(pipe, "tiny-wan22-ti2v")


def tiny_wan_t2v_pipeline(*, num_layers: int = 4, seed: int = 0):
    """A complete `WanPipeline` (text-to-video) with seeded random weights; its DiT has no image keys."""
    from diffusers import WanPipeline

    vae, tokenizer, text_encoder, scheduler = _tiny_wan_parts(seed)
    transformer = tiny_wan_transformer(num_layers=num_layers, image_conditioned=False, seed=seed + 2)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return _with_small_defaults(pipe, "wan")


# --------------------------------------------------------------------------------------------------------------
# SkyReels-V2 (a Wan2.1 DiT in its own diffusers module)
# --------------------------------------------------------------------------------------------------------------

def tiny_skyreels_transformer(*, num_layers: int = 4, heads: int = 2, head_dim: int = 8, image_conditioned: bool = True,
                              cross_attention_gain: float = 3.0, seed: int = 0, **config):
    """A random-weight `SkyReelsV2Transformer3DModel` with the sizes of `tiny_wan_transformer` (I2V: 36 input
    channels and image keys; else the T2V / diffusion-forcing layout); `config`: more of its config
    (``num_frame_per_block``, ``inject_sample_info``)."""
    from diffusers import SkyReelsV2Transformer3DModel

    return _tiny_wan_like(SkyReelsV2Transformer3DModel, num_layers=num_layers, heads=heads, head_dim=head_dim,
                          image_conditioned=image_conditioned, cross_attention_gain=cross_attention_gain, seed=seed,
                          **config)


def _skyreels_scheduler():
    from diffusers import UniPCMultistepScheduler

    # SkyReels-V2's own: UniPC with flow sigmas (it keeps `step_index`)
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)


def tiny_skyreels_i2v_pipeline(*, num_layers: int = 4, seed: int = 0):
    """A complete `SkyReelsV2ImageToVideoPipeline` with seeded random weights: the parts of `tiny_wan_i2v_pipeline`
    (UMT5, Wan VAE, a CLIP vision tower giving 257 image tokens, here `CLIPVisionModelWithProjection` as the
    pipeline declares), `tiny_skyreels_transformer(...)` and SkyReels-V2's UniPC flow scheduler.

    Example:
        >>> pipe = tiny_skyreels_i2v_pipeline()
        >>> out = pipe(image=reference_image(), prompt="a dog jumps", height=32, width=48, num_frames=5,
        ...            num_inference_steps=2, output_type="np")
        >>> out.frames[0].shape
        (5, 32, 48, 3)
    """
    from diffusers import SkyReelsV2ImageToVideoPipeline
    from transformers import CLIPVisionModelWithProjection

    vae, tokenizer, text_encoder, _ = _tiny_wan_parts(seed)
    image_encoder, image_processor = _tiny_clip_vision(CLIPVisionModelWithProjection, seed + 1)
    transformer = tiny_skyreels_transformer(num_layers=num_layers, image_conditioned=True, seed=seed + 2)
    pipe = SkyReelsV2ImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, image_encoder=image_encoder,
        image_processor=image_processor, transformer=transformer, vae=vae, scheduler=_skyreels_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return _with_small_defaults(pipe, "skyreels")


def tiny_skyreels_df_i2v_pipeline(*, num_layers: int = 2, seed: int = 0):
    """A `SkyReelsV2DiffusionForcingImageToVideoPipeline` (no image encoder: the reference frame is the first
    latent frame; per-frame timesteps) with seeded random weights; `fg.trace` refuses it (see
    `fglens.adapters.skyreels`)."""
    from diffusers import SkyReelsV2DiffusionForcingImageToVideoPipeline

    vae, tokenizer, text_encoder, _ = _tiny_wan_parts(seed)
    transformer = tiny_skyreels_transformer(num_layers=num_layers, image_conditioned=False, seed=seed + 2,
                                            inject_sample_info=True)
    pipe = SkyReelsV2DiffusionForcingImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
        scheduler=_skyreels_scheduler(),
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


# --------------------------------------------------------------------------------------------------------------
# HunyuanVideo I2V
# --------------------------------------------------------------------------------------------------------------

# The special tokens of the Llama-3 chat template that `HunyuanVideoImageToVideoPipeline` formats prompts with.
HUNYUAN_LLAMA_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>",
    "<image>",
)
HUNYUAN_TEXT_DIM = 16  # hidden size of the tiny Llama (= the transformer's text_embed_dim)
HUNYUAN_POOLED_DIM = 8  # hidden size of the tiny CLIP text model (= the transformer's pooled_projection_dim)
# Llama-3 pre-tokenization regex (as in its tokenizer.json).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)


def _bpe_vocab_and_merges(
    words, alphabet, specials=(), suffix: str = ""
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-pair vocabulary and merge list in which every word of `words` is a single token.

    Merges are added word by word, each at the lowest priority, joining the pieces the merges so far give the
    word; earlier words are already single tokens, so later merges never change them. Anything else falls back
    to smaller pieces, down to single (byte-level) characters, as in a trained BPE.
    """
    vocab: dict[str, int] = {}
    for tok in [*specials, *alphabet, *(c + suffix for c in alphabet if suffix)]:
        vocab.setdefault(tok, len(vocab))
    ranks: dict[tuple[str, str], int] = {}
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(words):
        syms = list(word)
        if not syms or any(c not in vocab for c in syms):
            continue
        syms[-1] += suffix
        while len(syms) > 1:  # apply the merges so far: lowest rank first, leftmost on ties (as `tokenizers` does)
            cands = [(ranks[p], i) for i, p in enumerate(zip(syms[:-1], syms[1:], strict=True)) if p in ranks]
            if not cands:
                break
            _, i = min(cands)
            syms[i : i + 2] = [syms[i] + syms[i + 1]]
        while len(syms) > 1:  # then join what is left, left to right, with new lowest-priority merges
            pair = (syms[0], syms[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            syms[:2] = ["".join(pair)]
            vocab.setdefault(syms[0], len(vocab))
    return vocab, merges


def tiny_llama3_tokenizer():
    """A Llama-3-style byte-level BPE `PreTrainedTokenizerFast` built in memory, with the chat special tokens
    and `<image>` that the HunyuanVideo I2V prompt template uses.

    The pre-tokenizer is Llama 3's, and every piece of the HunyuanVideo I2V system prompt and of a small English
    vocabulary is one token, so the template tokenizes to the same counts as with the real tokenizer: the
    `<image>` token at position 5 and the user prompt starting at position 103 (the template's `crop_start`).
    Other text falls back to smaller pieces, down to bytes. Ids: `<|begin_of_text|>` 0, `<|end_of_text|>` 1,
    `<|start_header_id|>` 2, `<|end_header_id|>` 3, `<|eot_id|>` 4, `<pad>` 5, `<image>` 6.

    Example:
        >>> tok = tiny_llama3_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("a dog jumps").input_ids)
        ['<|begin_of_text|>', 'a', 'Ġdog', 'Ġjumps']
    """
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    template = DEFAULT_PROMPT_TEMPLATE["template"]
    for special in HUNYUAN_LLAMA_SPECIALS:
        template = template.replace(special, "\n")
    corpus = [template.replace("{}", " "), " ".join(_WORDS), "\n".join(_WORDS), "assistant user system"]
    words = [piece for text in corpus for piece, _ in pre.pre_tokenize_str(text)]
    vocab, merges = _bpe_vocab_and_merges(
        words, sorted(pre_tokenizers.ByteLevel.alphabet()), specials=HUNYUAN_LLAMA_SPECIALS
    )
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(HUNYUAN_LLAMA_SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", 0)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<pad>",
        padding_side="right", model_input_names=["input_ids", "attention_mask"],
    )


def tiny_clip_tokenizer():
    """A `CLIPTokenizer` (byte-level BPE with `</w>` word ends) built in memory; words of the small vocabulary are
    single tokens, other text falls back to characters. Ids: `<|startoftext|>` 0, `<|endoftext|>` 1 (also pad).

    Example:
        >>> tok = tiny_clip_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("a dog jumps").input_ids)
        ['<|startoftext|>', 'a</w>', 'dog</w>', 'jumps</w>', '<|endoftext|>']
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    words = [w for word in _WORDS for w in word.split("-")]
    vocab, merges = _bpe_vocab_and_merges(
        words, sorted(pre_tokenizers.ByteLevel.alphabet()), specials=("<|startoftext|>", "<|endoftext|>"),
        suffix="</w>",
    )
    return CLIPTokenizer(vocab=vocab, merges=merges)


def tiny_hunyuan_transformer(
    *,
    num_double: int = 2,
    num_single: int = 2,
    image_condition_type: str | None = "token_replace",
    heads: int = 2,
    head_dim: int = 12,
    latent_channels: int = 4,
    guidance_embeds: bool | None = None,
    seed: int = 0,
):
    """A random-weight `HunyuanVideoTransformer3DModel` (MMDiT: `num_double` dual-stream blocks, then `num_single`
    single-stream blocks), patch 1×2×2 as in the real model.

    `image_condition_type`: "token_replace" (in_channels = `latent_channels`; first latent frame modulated with
    timestep 0; guidance-embedded by default, like hunyuanvideo-community/HunyuanVideo-I2V), "latent_concat"
    (in_channels = 2·`latent_channels` + 1: noise | image latent | mask; no guidance embedding by default, like
    HunyuanVideo-I2V-33ch) or None (text-to-video).
    """
    from diffusers import HunyuanVideoTransformer3DModel

    if guidance_embeds is None:
        guidance_embeds = image_condition_type != "latent_concat"
    rope = (head_dim // 3 // 2 * 2,) * 2
    _seeded(seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=2 * latent_channels + 1 if image_condition_type == "latent_concat" else latent_channels,
        out_channels=latent_channels,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        num_layers=num_double,
        num_single_layers=num_single,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=guidance_embeds,
        text_embed_dim=HUNYUAN_TEXT_DIM,
        pooled_projection_dim=HUNYUAN_POOLED_DIM,
        rope_axes_dim=(head_dim - sum(rope), *rope),
        image_condition_type=image_condition_type,
    ).eval()


def tiny_hunyuan_i2v_pipeline(
    *,
    num_double: int = 2,
    num_single: int = 2,
    image_condition_type: str = "token_replace",
    seed: int = 0,
):
    """A complete `HunyuanVideoImageToVideoPipeline` with seeded random weights, built offline.

    - `text_encoder`: `LlavaForConditionalGeneration` (tiny Llama, 3 layers, hidden 16; tiny CLIP vision tower
      on 24×24 images with 1×1 patches, so 576 image features as ViT-L/14-336 gives, which the pipeline's
      template hard-codes); `tokenizer`: `tiny_llama3_tokenizer()`; `image_processor`: `CLIPImageProcessor`
      at 24 px.
    - `text_encoder_2`: `CLIPTextModel` (hidden 8) and `tokenizer_2`: `tiny_clip_tokenizer()`.
    - `vae`: `AutoencoderKLHunyuanVideo` (×8 spatial, ×4 temporal, 4 latent channels).
    - `transformer`: `tiny_hunyuan_transformer(...)` for the given `image_condition_type`.

    With the default template and `max_sequence_length=256`, the context has 576 / interleave image-derived
    tokens (interleave 4 for token_replace → 144, 2 for latent_concat → 288) followed by 252 text tokens.
    Deterministic for a given `seed`.
    """
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoImageToVideoPipeline
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tokenizer = tiny_llama3_tokenizer()
    tokenizer_2 = tiny_clip_tokenizer()
    pad_id, image_id = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<image>")
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HUNYUAN_TEXT_DIM, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=0,
        eos_token_id=4, pad_token_id=pad_id,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=24,
        patch_size=1, projection_dim=8,
    )
    llava_config = LlavaConfig(
        vision_config=vision_config.to_dict(), text_config=text_config.to_dict(), image_token_index=image_id,
        image_seq_length=576, pad_token_id=pad_id, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    _seeded(seed)
    text_encoder = LlavaForConditionalGeneration(llava_config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    _seeded(seed + 1)
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2), hidden_size=HUNYUAN_POOLED_DIM, intermediate_size=16,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77, projection_dim=8,
            bos_token_id=tokenizer_2.bos_token_id, eos_token_id=tokenizer_2.eos_token_id,
            pad_token_id=tokenizer_2.pad_token_id,
        )
    ).eval()
    _seeded(seed + 2)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4,
    ).eval()
    transformer = tiny_hunyuan_transformer(
        num_double=num_double, num_single=num_single, image_condition_type=image_condition_type, seed=seed + 3
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe = HunyuanVideoImageToVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae, scheduler=scheduler,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, image_processor=image_processor,
    )
    pipe.set_progress_bar_config(disable=True)
    return _with_small_defaults(pipe, "hunyuan")


# --------------------------------------------------------------------------------------------------------------
# CogVideoX
# --------------------------------------------------------------------------------------------------------------

COGVIDEOX_TEXT_DIM = 32


def tiny_cogvideox_transformer(
    *, num_layers: int = 2, heads: int = 2, head_dim: int = 16, rotary: bool = True, seed: int = 0
):
    """A random-weight `CogVideoXTransformer3DModel` (CogVideoX 1.0 layout: patch 2×2 per latent frame, text of
    226 tokens first in the joint sequence); `rotary=True` is the 5B variant (3-D RoPE on the video tokens),
    `rotary=False` the 2B one (sin-cos position embedding added in the patch embedding)."""
    from diffusers import CogVideoXTransformer3DModel

    _seeded(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=COGVIDEOX_TEXT_DIM,
        num_layers=num_layers,
        sample_width=6,
        sample_height=4,
        sample_frames=5,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=226,
        use_rotary_positional_embeddings=rotary,
    ).eval()


def tiny_cogvideox_pipeline(*, num_layers: int = 2, rotary: bool = True, seed: int = 0):
    """A complete `CogVideoXPipeline` (text-to-video) with seeded random weights, built offline: tiny T5 encoder
    with `tiny_t5_tokenizer()` (prompts padded to 226 tokens, as in CogVideoX), `AutoencoderKLCogVideoX`
    (×8 spatial, ×4 temporal, 4 latent channels), `tiny_cogvideox_transformer(...)` and a
    `CogVideoXDDIMScheduler` (v-prediction, zero-SNR, trailing spacing). CFG is on by default
    (`guidance_scale=6`): one transformer call per step on the batch [uncond | cond].

    As with the real model, ask for `num_frames` ≡ 1 (mod 8) (9, 17, ..., 49): the CogVideoX VAE decodes an
    odd number of latent frames F' to 4·(F'−1)+1 frames, but an even number to 4·F' (5 frames → 2 latent
    frames → 8 decoded frames).

    Example:
        >>> pipe = tiny_cogvideox_pipeline()
        >>> out = pipe(prompt="a dog jumps over a fence", height=32, width=48, num_frames=9,
        ...            num_inference_steps=2, output_type="np")
        >>> out.frames[0].shape
        (9, 32, 48, 3)
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    _seeded(seed)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=COGVIDEOX_TEXT_DIM, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0,
        )
    ).eval()
    _seeded(seed + 1)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
        norm_num_groups=2, temporal_compression_ratio=4,
    ).eval()
    transformer = tiny_cogvideox_transformer(num_layers=num_layers, rotary=rotary, seed=seed + 2)
    scheduler = CogVideoXDDIMScheduler(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
        clip_sample=False, set_alpha_to_one=True,
    )
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return _with_small_defaults(pipe, "cogvideox")


# --------------------------------------------------------------------------------------------------------------
# Recorded runs
# -- LTX-Video ---------------------------------------------------------------------------------------------------

LTX_TEXT_DIM = 32


def tiny_ltx_transformer(*, num_layers: int = 2, heads: int = 2, head_dim: int = 8, seed: int = 0):
    """A random-weight `LTXVideoTransformer3DModel` (LTX-Video 0.9 layout: patch 1, 3-D RoPE on the video tokens,
    a separate text cross-attention with the T5 padding mask) taking 8 latent channels and `LTX_TEXT_DIM`-wide T5
    embeddings."""
    from diffusers import LTXVideoTransformer3DModel

    _seeded(seed)
    return LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=heads,
        attention_head_dim=head_dim, cross_attention_dim=heads * head_dim, num_layers=num_layers,
        caption_channels=LTX_TEXT_DIM,
    ).eval()


def tiny_ltx_pipeline(*, num_layers: int = 2, seed: int = 0, text_to_video: bool = False):
    """A complete `LTXImageToVideoPipeline` (or `LTXPipeline` with `text_to_video`) with seeded random weights, built
    offline: a tiny T5 encoder with `tiny_t5_tokenizer()` (prompts padded to the pipeline's 128 tokens and masked),
    `AutoencoderKLLTXVideo` (×8 spatial, ×8 temporal, 8 latent channels), `tiny_ltx_transformer(...)` and a
    `FlowMatchEulerDiscreteScheduler`. CFG is on by default (`guidance_scale=3`): one transformer call per step on
    the batch [uncond | cond], each half with its own text mask.

    Ask for `num_frames` ≡ 1 (mod 8) and sizes divisible by 32 (the pipeline's check): 32 × 64 × 9 is a 2 × 4 × 8
    latent grid.

    Example:
        >>> pipe = tiny_ltx_pipeline()
        >>> out = pipe(image=reference_image(width=64), prompt="a dog jumps over a fence", height=32, width=64,
        ...            num_frames=9, num_inference_steps=2, output_type="np")
        >>> out.frames[0].shape
        (9, 32, 64, 3)
    """
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXPipeline,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    _seeded(seed)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=LTX_TEXT_DIM, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0,
        )
    ).eval()
    _seeded(seed + 1)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False,
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    transformer = tiny_ltx_transformer(num_layers=num_layers, seed=seed + 2)
    cls = LTXPipeline if text_to_video else LTXImageToVideoPipeline
    pipe = cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
               transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return _with_small_defaults(pipe, "ltx")


# -- LTX-2 ----------------------------------------------------------------------------------------------------------

LTX2_TEXT_DIM = 16  # hidden size of the tiny Gemma 3 text model (= the connectors' and transformer's caption_channels)
#: what the tiny LTX-2 pipelines' calls leave off unless asked: spatio-temporal (STG) and modality-isolation guidance
#: add transformer forwards that fglens refuses (`fglens.adapters.ltx2`; the real defaults are 1.0 and 3.0), and the
#: I2V reference image's H.264 re-compression (`image_crf`, which needs PyAV)
LTX2_TINY_CALL = {"stg_scale": 0.0, "audio_stg_scale": 0.0, "modality_scale": 1.0, "audio_modality_scale": 1.0,
                  "image_crf": 0}


def tiny_gemma_tokenizer():
    """A Gemma-style `GemmaTokenizerFast` (sentencepiece-style unigram pieces, ``<bos>`` first) built in memory; whole
    words of the small vocabulary are single pieces, other text falls back to characters. Ids: ``<pad>`` 0,
    ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3.

    Example:
        >>> tok = tiny_gemma_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("a dog jumps").input_ids)
        ['<bos>', '▁a', '▁dog', '▁jumps']
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GemmaTokenizerFast

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("<eos>", 0.0), ("<bos>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -2.0) for w in _WORDS]
    vocab += [("▁", -8.0)] + [(c, -10.0) for c in _CHARS] + [("▁" + c, -9.0) for c in _CHARS]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(["<pad>", "<eos>", "<bos>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", 2)])
    return GemmaTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                              unk_token="<unk>", padding_side="left")


def tiny_ltx2_transformer(*, num_layers: int = 2, heads: int = 2, head_dim: int = 8, audio_heads: int = 2,
                          audio_head_dim: int = 4, seed: int = 0):
    """A random-weight `LTX2VideoTransformer3DModel` (LTX-2.0 layout: patch 1; per block a video and an audio
    stream, each with self-attention and a text cross-attention, and the two audio-video cross-attentions) taking 4
    video latent channels, 4 audio channels per audio token (2 latent channels × 2 latent mel bins) and
    `LTX2_TEXT_DIM`-wide connector embeddings."""
    from diffusers import LTX2VideoTransformer3DModel

    _seeded(seed)
    return LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=heads,
        attention_head_dim=head_dim, cross_attention_dim=heads * head_dim, audio_in_channels=4, audio_out_channels=4,
        audio_num_attention_heads=audio_heads, audio_attention_head_dim=audio_head_dim,
        audio_cross_attention_dim=audio_heads * audio_head_dim, num_layers=num_layers,
        caption_channels=LTX2_TEXT_DIM, rope_type="split", rope_double_precision=False,
    ).eval()


def tiny_ltx2_pipeline(*, num_layers: int = 2, seed: int = 0, text_to_video: bool = False, registers: int = 128):
    """A complete `LTX2ImageToVideoPipeline` (or `LTX2Pipeline` with `text_to_video`) with seeded random weights,
    built offline:

    - `text_encoder`: `Gemma3ForConditionalGeneration` (2 text layers, hidden 16; a 1-layer SigLIP tower the
      pipeline never calls) with `tiny_gemma_tokenizer()`; prompts left-padded to the call's
      `max_sequence_length` (1024, as the real pipeline).
    - `connectors`: `LTX2TextConnectors` (1 layer per stream, `registers` learnable registers as the real 128: the
      real tokens are moved to the front and the padding replaced by registers, so every text key is open).
    - `vae`: `AutoencoderKLLTX2Video` (×8 spatial, ×8 temporal, 4 latent channels); `audio_vae`:
      `AutoencoderKLLTX2Audio` (8 mel bins, ×4 in time and mel, 2 latent channels); `vocoder`: `LTX2Vocoder`;
      `transformer`: `tiny_ltx2_transformer(...)`; `FlowMatchEulerDiscreteScheduler`.

    CFG is on by default (`guidance_scale=3`): one transformer call per step on [uncond | cond]. The call leaves
    STG and modality-isolation guidance off unless asked (fglens refuses those extra forwards), and the H.264
    re-compression of the reference image (`LTX2_TINY_CALL`).
    Ask for `num_frames` ≡ 1 (mod 8) and sizes divisible by 32: 32 × 64 × 9 is a 2 × 4 × 8 latent grid, and at 24 fps
    9 frames carry 9 audio tokens (25 per second).

    Example:
        >>> pipe = tiny_ltx2_pipeline()
        >>> out = pipe(image=reference_image(width=64), prompt="a dog jumps over a fence", height=32, width=64,
        ...            num_frames=9, num_inference_steps=2, output_type="np")
        >>> out.frames[0].shape, out.audio.shape[:2]
        ((9, 32, 64, 3), torch.Size([1, 2]))
    """
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2ImageToVideoPipeline,
        LTX2Pipeline,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    tokenizer = tiny_gemma_tokenizer()
    _seeded(seed)
    text_encoder = Gemma3ForConditionalGeneration(Gemma3Config(
        text_config=Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=LTX2_TEXT_DIM, intermediate_size=32,
                                     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                     max_position_embeddings=2048, sliding_window=64, pad_token_id=0, eos_token_id=1,
                                     bos_token_id=2),
        vision_config=SiglipVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=16, patch_size=4),
        mm_tokens_per_image=4,
    )).eval()
    _seeded(seed + 1)
    connectors = LTX2TextConnectors(
        caption_channels=LTX2_TEXT_DIM, text_proj_in_factor=3, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=registers, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=registers, connector_rope_base_seq_len=32,
        rope_double_precision=False, rope_type="split",
    ).eval()
    _seeded(seed + 2)
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8),
        down_block_types=("LTX2VideoDownBlock3D",) * 3, decoder_block_out_channels=(8, 8, 8),
        layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True), decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(False,) * 4, downsample_type=("spatiotemporal",) * 3,
        upsample_type=("spatiotemporal",) * 3, upsample_residual=(False,) * 3, upsample_factor=(1,) * 3,
        timestep_conditioning=False, patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    _seeded(seed + 3)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    ).eval()
    _seeded(seed + 4)
    vocoder = LTX2Vocoder(
        in_channels=2 * 8, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
        resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1,
        output_sampling_rate=16000,
    ).eval()
    transformer = tiny_ltx2_transformer(num_layers=num_layers, seed=seed + 5)
    cls = LTX2Pipeline if text_to_video else LTX2ImageToVideoPipeline
    pipe = cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=text_encoder,
               tokenizer=tokenizer, connectors=connectors, transformer=transformer, vocoder=vocoder)
    pipe.set_progress_bar_config(disable=True)
    pipe = _with_small_defaults(pipe, "ltx2")
    pipe._fglens_call_defaults.update(LTX2_TINY_CALL)
    return pipe


# --------------------------------------------------------------------------------------------------------------
# HunyuanVideo-1.5
# --------------------------------------------------------------------------------------------------------------

HUNYUAN15_TEXT_DIM = 16  # hidden size of the tiny Qwen2.5-VL text model (= the transformer's text_embed_dim)
HUNYUAN15_GLYPH_DIM = 8  # d_model of the tiny ByT5 encoder (= text_embed_2_dim)
HUNYUAN15_IMAGE_DIM = 8  # hidden size of the tiny SigLIP vision model (= image_embed_dim)
# Qwen2 pre-tokenization regex (Llama 3's with single digits), and its chat specials
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_QWEN2_CHAT = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
               "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
               "{% endif %}")


def tiny_qwen2_tokenizer():
    """A Qwen2-style byte-level BPE `PreTrainedTokenizerFast` built in memory, with the ChatML template and specials.

    Every piece of the HunyuanVideo-1.5 system prompt and of a small English vocabulary is one token, so the chat
    template puts the user prompt at position 108, the pipelines' `prompt_template_encode_start_idx`, as the real
    Qwen2.5-VL tokenizer does. Ids: `<|endoftext|>` 0 (also pad), `<|im_start|>` 1, `<|im_end|>` 2.

    Example:
        >>> tok = tiny_qwen2_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("a dog jumps").input_ids)
        ['a', 'Ġdog', 'Ġjumps']
    """
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import HunyuanVideo15Pipeline
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    system = inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters["system_message"].default
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    corpus = ["system\n" + system + "\n", "user\nassistant\n", " ".join(_WORDS), "\n".join(_WORDS)]
    words = [piece for text in corpus for piece, _ in pre.pre_tokenize_str(text)]
    vocab, merges = _bpe_vocab_and_merges(words, sorted(pre_tokenizers.ByteLevel.alphabet()), specials=QWEN2_SPECIALS)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(QWEN2_SPECIALS))
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )
    out.chat_template = _QWEN2_CHAT
    return out


def tiny_hunyuan15_transformer(*, num_layers: int = 2, heads: int = 2, head_dim: int = 8, target_size: int = 48,
                               seed: int = 0):
    """A random-weight `HunyuanVideo15Transformer3DModel` (dual-stream blocks only, patch 1, 3-D RoPE on the video
    tokens) taking 4 latent channels (in: 4 noise + 4 image latent + 1 mask) and the tiny encoders' widths.
    `target_size` (pixels) sets the I2V pipeline's resolution buckets: 48 with the ×16 VAE gives 32 × 48 for a
    3:2 reference image."""
    from diffusers import HunyuanVideo15Transformer3DModel

    _seeded(seed)
    return HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=heads, attention_head_dim=head_dim, num_layers=num_layers,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=HUNYUAN15_TEXT_DIM,
        text_embed_2_dim=HUNYUAN15_GLYPH_DIM, image_embed_dim=HUNYUAN15_IMAGE_DIM,
        rope_axes_dim=(head_dim - 2 * (head_dim // 4), head_dim // 4, head_dim // 4), target_size=target_size,
    ).eval()


def tiny_hunyuan15_i2v_pipeline(*, num_layers: int = 2, seed: int = 0, text_to_video: bool = False,
                                max_sequence_length: int = 24, glyph_length: int = 16):
    """A complete `HunyuanVideo15ImageToVideoPipeline` (or `HunyuanVideo15Pipeline` with `text_to_video`) with seeded
    random weights, built offline:

    - `text_encoder`: `Qwen2_5_VLTextModel` (3 layers, hidden 16) with `tiny_qwen2_tokenizer()`; prompts padded to
      `max_sequence_length` tokens after the 108-token system prompt (the pipeline's `tokenizer_max_length`, 1000
      for the real model, an instance attribute).
    - `text_encoder_2`: a ByT5 `T5EncoderModel` (d_model 8) with transformers' `ByT5Tokenizer` (bytes, no vocabulary
      file); glyph text padded to `glyph_length` bytes (`tokenizer_2_max_length`, 256 for the real model).
    - `image_encoder`: `SiglipVisionModel` on 16 × 16 images with 4 × 4 patches: 16 image tokens (729 for the real
      model); `feature_extractor`: `SiglipImageProcessor` at 16 px (a resize, no crop).
    - `vae`: `AutoencoderKLHunyuanVideo15` (×16 spatial, ×4 temporal, 4 latent channels); `transformer`:
      `tiny_hunyuan15_transformer(...)`; `guider`: `ClassifierFreeGuidance` (scale 6, so two forwards per step).

    The I2V pipeline takes no height or width: it picks the size from the image's aspect among buckets of the
    transformer's `target_size` (48): a 48 × 32 reference image gives a 32 × 48 video, a 2 × 3 latent grid per frame;
    `num_frames` 5 gives 2 latent frames. Deterministic for a given `seed`.

    Example:
        >>> pipe = tiny_hunyuan15_i2v_pipeline()
        >>> out = pipe(image=reference_image(), prompt="a dog jumps over a fence", num_frames=5,
        ...            num_inference_steps=2, output_type="np")
        >>> out.frames[0].shape
        (5, 32, 48, 3)
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Pipeline,
    )
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import (
        ByT5Tokenizer,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
        T5Config,
        T5EncoderModel,
    )

    tokenizer = tiny_qwen2_tokenizer()
    tokenizer_2 = ByT5Tokenizer()
    _seeded(seed)
    text_encoder = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer), hidden_size=HUNYUAN15_TEXT_DIM, intermediate_size=32, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    _seeded(seed + 1)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2), d_model=HUNYUAN15_GLYPH_DIM, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()
    _seeded(seed + 2)
    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1, spatial_compression_ratio=16,
        temporal_compression_ratio=4,
    ).eval()
    transformer = tiny_hunyuan15_transformer(num_layers=num_layers, seed=seed + 3)
    parts = dict(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                 scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                 guider=ClassifierFreeGuidance(guidance_scale=6.0))
    if text_to_video:
        pipe = HunyuanVideo15Pipeline(**parts)
        pipe.vision_num_semantic_tokens = 16  # the zero image tokens the T2V pipeline passes (729 for the real model)
    else:
        _seeded(seed + 4)
        image_encoder = SiglipVisionModel(
            SiglipVisionConfig(hidden_size=HUNYUAN15_IMAGE_DIM, intermediate_size=16, num_hidden_layers=1,
                               num_attention_heads=2, image_size=16, patch_size=4)
        ).eval()
        pipe = HunyuanVideo15ImageToVideoPipeline(
            **parts, image_encoder=image_encoder, feature_extractor=SiglipImageProcessor(size={"height": 16,
                                                                                                "width": 16}))
    pipe.tokenizer_max_length = max_sequence_length
    pipe.tokenizer_2_max_length = glyph_length
    pipe.set_progress_bar_config(disable=True)
    return _with_small_defaults(pipe, "hunyuan15")


# --------------------------------------------------------------------------------------------------------------

TINY_PROMPT = "a dog jumps over the red fence"


def tiny_call_kwargs(family: str = "wan", *, steps: int = 2, seed: int = 0) -> dict:
    """The keyword arguments of a small pipeline call on the tiny pipeline of `family` ("wan" or "hunyuan")."""
    sizes = {f: {k: TINY_CALL_DEFAULTS[f][k] for k in ("height", "width", "num_frames")} for f in ("wan", "hunyuan")}
    if family not in sizes:
        raise ValueError(f"family must be one of {sorted(sizes)}; got {family!r}")
    size = sizes[family]
    return dict(
        image=reference_image(width=size["width"], height=size["height"]), prompt=TINY_PROMPT,
        num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="latent", **size,
    )


def tiny_run(
    family: str = "wan",
    *,
    words: tuple[str, ...] = ("dog", "jumps", "fence"),
    steps: int = 2,
    seed: int = 0,
    maps: bool = True,
    edit=None,
    store=None,
    pipe=None,
):
    """Record one run on a tiny pipeline (`family` "wan" or "hunyuan") and return its `xarray.Dataset`.

    Pass `pipe` to reuse a pipeline built once (tests), `edit` for an intervention, `store` to write it.

    Example:
        >>> import fglens as fg
        >>> ds = fg.testing.tiny_run("wan", words=("dog",), maps=False)
        >>> ds.word_mass.dims
        ('branch', 'step', 'layer', 'word', 'frame')
    """
    import fglens as fg

    if pipe is None:
        pipe = tiny_wan_i2v_pipeline() if family == "wan" else tiny_hunyuan_i2v_pipeline()
    kwargs = tiny_call_kwargs(family, steps=steps, seed=seed)
    with fg.trace(pipe, record=fg.Record(words=list(words), maps=maps), edit=edit, store=store) as run:
        pipe(**kwargs)
    return run.dataset


def tiny_t2i_pipeline(*, seed: int = 0):
    """A complete `StableDiffusionPipeline` (text-to-image) with seeded random weights and an in-memory CLIP
    tokenizer: the stand-in for a user's local text-to-image model (e.g. `fglens eval import vbench2 --t2i`).

    Example:
        >>> pipe = tiny_t2i_pipeline()
        >>> pipe(prompt="a dog", height=32, width=32, num_inference_steps=2, output_type="pil").images[0].size
        (32, 32)
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    tokenizer.model_max_length = 16
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=32)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(clip_sample=False, steps_offset=1), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dense_anchor_bias(grid: tuple[int, int, int], n_keys: int, mask2d: torch.Tensor, column: int, strength: float,
                      frames: Sequence[int]) -> torch.Tensor:
    """The float64 [N, n_keys] logit bias an anchor adds, built densely for a test's reference: `strength` times
    `mask2d` (y, x) on the chosen latent `frames` of `grid`, in the text key `column` only.

    Example:
        >>> dense_anchor_bias((2, 1, 2), 3, torch.tensor([[1.0, 0.0]]), 1, 2.0, [0]).tolist()
        [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    m = torch.zeros(*grid, dtype=torch.float64)
    for f in frames:
        m[f] = mask2d
    col = torch.zeros(n_keys, dtype=torch.float64)
    col[column] = 1.0
    return strength * m.reshape(-1)[:, None] * col[None, :]
