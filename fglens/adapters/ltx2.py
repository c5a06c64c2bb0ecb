"""LTX-2 (`LTX2VideoTransformer3DModel`, LTX-2.0 audio-video DiT; see docs/sites-ltx2.md).

Sites per block `i` (the video stream's queries only):

===========================  ==================================================  ====================================
site                         module                                              keys
===========================  ==================================================  ====================================
``blocks.{i}.self``          ``transformer_blocks.{i}.attn1``                    video tokens (3-D RoPE), [B, N, H, D]
``blocks.{i}.cross.text``    ``transformer_blocks.{i}.attn2``                    text tokens (connector), [B, L, H, D]
``blocks.{i}.cross.audio``   ``transformer_blocks.{i}.audio_to_video_attn``      audio tokens (1-D RoPE), [B, A, H, D]
===========================  ==================================================  ====================================

``cross.audio`` is the video queries' own softmax over the audio keys (kind ``audio``: `audio_entropy`,
`audio_position`; never edited). diffusers names that module ``audio_to_video_attn`` after the direction the
information flows (audio into video); its queries are the video tokens. The audio stream's queries are not sites:
``audio_attn1`` (audio self-attention), ``audio_attn2`` (audio→text) and ``video_to_audio_attn`` (audio queries, video
keys) keep their processors, and the intercepted kernel passes their calls through unchanged.

`LTX2AudioVideoAttnProcessor` (defined in `transformer_ltx2`, whose `dispatch_attention_fn` is intercepted) makes one
kernel call per module. The text call carries the transformer's text mask as an additive bias ``[B, H, 1, L]``: the
pipelines' connectors move each prompt's real Gemma tokens to the front (in order) and fill the rest with learnable
registers, then hand the transformer an all-ones mask, so the bias is 0 everywhere and every one of the L
(``max_sequence_length``, 1024) keys is open; recorders and edits apply it as the kernel does (the masked text path of
`fglens.trace.record`). Text key j < n is the prompt's j-th real token (``<bos>`` first), keys n..L-1 are registers
(``<register>``, never a word). The pipelines batch CFG as ``[uncond | cond]`` in one call
(``cache_context("cond_uncond")``).

Latents are packed: ``hidden_states`` is ``[B, N, C]``, frame-major F' x H' x W' (patch 1); the grid is read from the
call's ``num_frames`` / ``height`` / ``width`` (latent units) and checked against N. The I2V pipeline gives the
reference frame's tokens timestep 0 (a per-token timestep ``[B, N]``): the step's timestep is its maximum.

An audio token is one latent time frame of the audio VAE: the 16 kHz waveform's mel spectrogram (hop 160: 100 mel
frames per second) downsampled x4 in time by `AutoencoderKLLTX2Audio`, so 25 audio tokens per second (40 ms each),
each packing all latent channels x latent mel bins (``[B, C, L, M] -> [B, L, C * M]``: 8 x 16 = 128 features in
LTX-2.0). A video of F frames at `frame_rate` fps has ``round(F / frame_rate * 25)`` audio tokens.

Refused: pipelines that append tokens after the video grid with their own coordinates (`LTX2ConditionPipeline`,
`LTX2InContextPipeline`, `LTX2HDRPipeline`, `LTX2DFRPipeline`, `LTX2DFRTemporalRefinePipeline`); calls with
spatio-temporal guidance (STG) or modality-isolation guidance (extra forwards fglens has no branch for: refused when
the pipeline encodes the prompt, before sampling); a bare forward with ``isolate_modalities``, STG blocks, a
``perturbation_mask`` or a ``video_self_attention_mask``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import Adapter, Intercept, Site, TinyPipeline
from .forward import forward_arg, sized_grid, step_timestep
from .prompt import PromptTokens

_APPENDED = (
    "it appends conditioning, keyframe or reference tokens after the video grid with their own video_coords, so a "
    "forward's tokens are not one frame-major grid that fglens' per-frame statistics read. Trace "
    "LTX2ImageToVideoPipeline or LTX2Pipeline (the same transformer) instead"
)
_GUIDANCE = (
    "fg.trace does not trace LTX-2's spatio-temporal guidance (STG) or modality-isolation guidance: each adds a "
    "transformer forward per step (perturbed self-attention, or the audio-video attentions switched off) that is "
    "neither the cond nor the uncond branch, so its statistics and edits have no branch to go to. Call the pipeline "
    "with stg_scale=0, audio_stg_scale=0, modality_scale=1 and audio_modality_scale=1 (classifier-free guidance "
    "stays on)"
)
#: text keys past the prompt's real tokens: the connectors' learnable registers (special, so never a word)
REGISTER = "<register>"
# forward(hidden_states, audio_hidden_states, encoder_hidden_states, audio_encoder_hidden_states, timestep, ...)
_POS = {"hidden_states": 0, "timestep": 4, "encoder_attention_mask": 8, "num_frames": 10, "height": 11, "width": 12,
        "video_coords": 15, "isolate_modalities": 17, "spatio_temporal_guidance_blocks": 18, "perturbation_mask": 19,
        "video_self_attention_mask": 22}


def _arg(args: Sequence[Any], kwargs: dict[str, Any], name: str) -> Any:
    return forward_arg(args, kwargs, name, _POS[name])


class LTX2Adapter(Adapter):
    model_classes = ("LTX2VideoTransformer3DModel",)
    family = "ltx2"
    short = "ltx2"
    pipeline_classes = ("LTX2ImageToVideoPipeline", "LTX2Pipeline")
    tiny_pipelines = (TinyPipeline("tiny-ltx2", "tiny_ltx2_pipeline", (32, 64, 9)),)
    tiny_transformer = ("tiny_ltx2_transformer", {"num_layers": 2})
    refused_pipelines = {name: _APPENDED for name in (
        "LTX2ConditionPipeline", "LTX2InContextPipeline", "LTX2HDRPipeline", "LTX2DFRPipeline",
        "LTX2DFRTemporalRefinePipeline")}

    def sites(self) -> list[Site]:
        out: list[Site] = []
        for i, _ in enumerate(self.transformer.transformer_blocks):
            layer = f"{self.prefix}blocks.{i}"
            out.append(Site(f"{layer}.self", layer, i, "self", f"transformer_blocks.{i}.attn1", 0))
            out.append(Site(f"{layer}.cross.text", layer, i, "text", f"transformer_blocks.{i}.attn2", 0))
            out.append(Site(f"{layer}.cross.audio", layer, i, "audio", f"transformer_blocks.{i}.audio_to_video_attn",
                            0))
        return out

    def intercepts(self) -> list[Intercept]:
        from diffusers.models.transformers import transformer_ltx2

        return [Intercept(transformer_ltx2, "dispatch_attention_fn")]

    def grid(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        hidden = _arg(args, kwargs, "hidden_states")
        extra = [name for name in ("spatio_temporal_guidance_blocks", "perturbation_mask", "video_self_attention_mask")
                 if _arg(args, kwargs, name) not in (None, [], ())]
        if _arg(args, kwargs, "isolate_modalities"):
            extra.append("isolate_modalities")
        if extra:
            raise ValueError(f"{_GUIDANCE}; this forward was given {', '.join(extra)}")
        sizes = [_arg(args, kwargs, n) for n in ("num_frames", "height", "width")]
        if any(s is None for s in sizes):
            raise ValueError(
                "fg.trace traces an LTX2VideoTransformer3DModel called with num_frames, height and width (the latent "
                "grid of its packed video tokens); coordinates alone need not form one frame-major grid")
        p, p_t = self.transformer.config.patch_size, self.transformer.config.patch_size_t
        return sized_grid(sizes, p_t, p, hidden.shape[1], "LTX-2")

    def timestep(self, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        # the I2V pipeline passes a per-token timestep [B, N] (0 on the reference frame); the step's is the maximum
        return step_timestep(_arg(args, kwargs, "timestep"))

    def install_prompt_hooks(self, pipe: Any, capture: Any) -> list[Callable[[], None]]:
        """Each Gemma encoding, with its tokens placed as the transformer's text keys see them (`_as_keys`); and the
        STG / modality-isolation refusal, checked when the pipeline encodes the prompt (its guidance scales are set
        by then, and no forward has run)."""
        encoder = getattr(pipe, "text_encoder", None)
        removers: list[Callable[[], None]] = []
        if hasattr(pipe, "do_spatio_temporal_guidance") and hasattr(pipe, "encode_prompt"):
            capture.wrap("encode_prompt", lambda original, *a, **kw: _refuse_guidance(pipe, original, a, kw))
        if not isinstance(encoder, torch.nn.Module):
            return removers

        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            call = capture.pending
            if not isinstance(ids, torch.Tensor) or call is None:
                return
            index = len(call.encodings) + (1 if call.prompt_embeds_given else 0)
            texts = [call.prompt_texts or [call.prompt_text], call.negative_texts or [call.negative_text]]
            rows = texts[index] if index < 2 else [None]
            if index == 1 and rows == [None]:
                rows = [""]  # the pipelines' default negative prompt
            tokens = [_as_keys(pipe, t) for t in capture.tokens(ids, mask, rows)]
            capture.add_encoding(tokens[0], tokens)

        handle = encoder.register_forward_pre_hook(hook, with_kwargs=True)
        removers.append(handle.remove)
        return removers

    def prompt_tokens(self, pipe: Any, prompt: str) -> PromptTokens:
        """`prompt` as the transformer's text keys hold it: Gemma's tokens (left-padded to the call's default
        ``max_sequence_length``) as the connectors place them (`_as_keys`)."""
        params = inspect.signature(type(pipe).__call__).parameters
        max_len = params["max_sequence_length"].default if "max_sequence_length" in params else 1024
        tok = pipe.tokenizer
        tok.padding_side = "left"  # as `_get_gemma_prompt_embeds` sets it
        enc = tok(prompt.strip(), padding="max_length", max_length=max_len, truncation=True, add_special_tokens=True)
        tokens = tok.convert_ids_to_tokens(enc.input_ids)
        return _as_keys(pipe, PromptTokens(prompt, tokens, int(sum(enc.attention_mask))))

    def text_lengths(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[int] | None:
        mask = _arg(args, kwargs, "encoder_attention_mask")
        if mask is None or mask.ndim != 2:
            return None
        return (mask.to(torch.float32) > 0.5).sum(-1).tolist()  # host read, bare transformers only


def _registers(pipe: Any) -> bool:
    connector = getattr(getattr(pipe, "connectors", None), "video_connector", None)
    return getattr(connector, "learnable_registers", None) is not None


def _as_keys(pipe: Any, tokens: PromptTokens) -> PromptTokens:
    """Tokens of a left-padded Gemma encoding placed as the video stream's text keys: with learnable registers (the
    released LTX-2 connectors) the real tokens first, in order, then a register at every other key (all open);
    without registers the positions are the tokenizer's, pads first, and every key is open too (the connectors hand
    the transformer an all-ones mask either way)."""
    n, total = tokens.n_real, len(tokens.tokens)
    if _registers(pipe):
        real = tokens.tokens[total - n:] if getattr(pipe.tokenizer, "padding_side", "left") == "left" else (
            tokens.tokens[:n])
        return PromptTokens(tokens.text, [*real, *[REGISTER] * (total - n)], n, dict(tokens.extra))
    return PromptTokens(tokens.text, list(tokens.tokens), total, dict(tokens.extra))


def _refuse_guidance(pipe: Any, original: Callable, args: tuple, kwargs: dict):
    if pipe.do_spatio_temporal_guidance or pipe.do_modality_isolation_guidance:
        raise ValueError(_GUIDANCE)
    return original(*args, **kwargs)
