"""The flow-matching loss on (image, prompt, video) data, for Wan image-to-video pipelines.

Each item is encoded once with the pipeline's own functions, exactly as sampling sees it: the video through the
VAE (its latent distribution's mode, normalised by the VAE's ``latents_mean`` / ``latents_std``), the reference
image's condition latents through ``prepare_latents`` (mask channels + the latent of [image, 0, ...]), the prompt
through ``encode_prompt`` and, where the transformer takes image tokens, the image through ``encode_image``. A step
draws σ from the schedule's shifted uniform (σ = s·u / (1 + (s − 1)·u), u ~ U(0, 1), s the scheduler's
``flow_shift`` or ``shift``), forms x_σ = (1 − σ)·x₀ + σ·ε and minimises ‖v_θ(x_σ, 1000σ) − (ε − x₀)‖² (the
rectified-flow velocity, as Wan is trained).

Example:
    >>> import fglens as fg
    >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
    >>> video = np.zeros((5, 32, 48, 3), np.uint8)
    >>> item = fg.train.TrainItem("a", fg.testing.reference_image(), "a dog jumps", video=video)
    >>> enc = encode_item(pipe, item)
    >>> sorted(enc), tuple(enc["x0"].shape)
    (['condition', 'image', 'text', 'x0'], (1, 16, 2, 4, 6))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .data import TrainItem


def check_pipeline(pipe: Any) -> None:
    """Refuse, with what is accepted, a pipeline whose training inputs this module cannot build."""
    from diffusers import WanImageToVideoPipeline

    if not isinstance(pipe, WanImageToVideoPipeline) or getattr(pipe.config, "expand_timesteps", False) \
            or getattr(pipe, "transformer_2", None) is not None:
        raise ValueError(f"the flow loss builds its inputs for Wan2.1-style image-to-video pipelines "
                         f"(WanImageToVideoPipeline with one transformer); {type(pipe).__name__} is not one")


def shift(pipe: Any) -> float:
    """The schedule's shift s (``flow_shift`` or ``shift`` of the pipeline's scheduler; 1 without one)."""
    config = pipe.scheduler.config
    return float(config.get("flow_shift") or config.get("shift") or 1.0)


@torch.no_grad()
def encode_item(pipe: Any, item: TrainItem) -> dict[str, torch.Tensor]:
    """The item's training inputs (x₀, the condition latents, the prompt's and the image's embeddings)."""
    if item.video is None:
        raise ValueError(f"item {item.id!r} has no video: the flow loss needs (image, prompt, video) data")
    device, dtype = pipe.transformer.device, pipe.transformer.dtype
    frames, height, width, _ = item.video.shape
    vae = pipe.vae
    z = vae.config["z_dim"]
    mean = torch.tensor(vae.config["latents_mean"], device=device).view(1, z, 1, 1, 1)
    std = torch.tensor(vae.config["latents_std"], device=device).view(1, z, 1, 1, 1)
    clip = torch.from_numpy(np.array(item.video, copy=True)).to(device, torch.float32)  # (a read-only array too)
    clip = (clip / 127.5 - 1.0).permute(3, 0, 1, 2)[None].to(vae.dtype)  # [1, 3, F, H, W] in [-1, 1]
    x0 = (vae.encode(clip).latent_dist.mode().float() - mean) / std
    image = pipe.video_processor.preprocess(item.image, height=height, width=width).to(device, torch.float32)
    _, condition = pipe.prepare_latents(image, 1, z, height, width, frames, torch.float32, device,
                                        torch.Generator(device="cpu").manual_seed(0))
    text, _ = pipe.encode_prompt(item.prompt, do_classifier_free_guidance=False, max_sequence_length=512,
                                 device=device)
    out = {"x0": x0, "condition": condition.float(), "text": text.to(dtype)}
    if getattr(pipe.transformer.config, "image_dim", None):
        out["image"] = pipe.encode_image(item.image, device).to(dtype)
    return out


def flow_loss(pipe: Any, enc: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """One flow-matching term on an encoded item, the noise and σ drawn from `generator` (on the CPU)."""
    transformer = pipe.transformer
    x0 = enc["x0"]
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    u = torch.rand(x0.shape[0], generator=generator).to(x0.device)
    s = shift(pipe)
    sigma = s * u / (1 + (s - 1) * u)
    sig = sigma.view(-1, 1, 1, 1, 1)
    x = torch.cat([(1 - sig) * x0 + sig * noise, enc["condition"]], dim=1).to(transformer.dtype)
    kwargs = {"encoder_hidden_states_image": enc["image"]} if "image" in enc else {}
    pred = transformer(x, timestep=sigma * 1000, encoder_hidden_states=enc["text"], return_dict=False,
                       **kwargs)[0]
    return (pred.float() - (noise - x0)).square().mean()


__all__ = ["check_pipeline", "encode_item", "flow_loss", "shift"]
