"""Train the toy pipeline: the Wan VAE for reconstruction, then the DiT with flow matching.

Everything is a function of the seed and the step: the clips of VAE step k, the items of the DiT's pool and
the noise of DiT step k are drawn from generators seeded by (seed, phase, k), so a run resumed from a
checkpoint continues exactly as if it had never stopped. Phases, each written under `out/` when done:

1. ``vae/``: the VAE (L1 + MSE with object pixels weighted up, + a small KL, whole clips), with its latent
   mean/std in its config;
2. ``pool.pt``: `pool` train items encoded once (clean latents, the pipeline's own I2V condition, CLIP
   image tokens, prompts), so the DiT step runs only the DiT;
3. ``dit.pt`` checkpoints, then ``pipeline/``: `save_pretrained` of the whole pipeline with the EMA weights
   of the DiT, plus ``toy.json`` (variant, planted layers, config, seed, time) and ``loss.csv``.

The ``weak`` variant plants Condition Isolation: in the `planted` blocks, the cross-attention sees the empty
prompt's text instead of the real one for a fraction `planted_p` of the training samples (all of them by
default). With `planted_reinit` (the default) those blocks' text keys (``attn2.to_k``, ``attn2.norm_k``) are
re-initialised first, so a weak model trained on from the base model does not keep the base's alignment of
queries with words: its planted layers have never learned where a word is, while their values, output
projection and image path keep what they learned. (Showing only the empty prompt leaves the keys of real words
almost untouched, since a constant context gives the keys next to no gradient: a planting from the base model
without re-initialisation did not change the word maps nor the following rate.) With `planted_only` only the
planted blocks train and every other weight stays the base model's, so the rest of the network cannot take over
what the planted layers stop doing (trained on together, the other blocks compensated: the weak model of v3
followed instructions as often as its base).

Example (a smoke run; real runs use `fglens toy train`):
    >>> import tempfile
    >>> cfg = TrainConfig(vae_steps=2, vae_batch=1, pool=4, dit_steps=2, dit_batch=2, checkpoint_every=1)
    >>> info = train(cfg, tempfile.mkdtemp(), progress=False)
    >>> len(info["dit_loss"]), info["variant"]
    (2, 'base')
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .model import SHIFT, Z_DIM, build_pipeline, dit_config
from .suite import sample
from .text import TextEncoding
from .wordmaps import KINDS
from .world import CATEGORIES, FRAMES, KIND_CATEGORY, SIZE

VARIANTS = ("base", "weak")
OBJECT_WEIGHT = 10.0  #: VAE loss weight of object pixels relative to background pixels
SPACE, TIME = 4, 2  #: the toy VAE's compression (pixels per latent cell, frames per latent frame after the first)


def torch_device(name: str) -> torch.device:
    """`name` as a torch device, refused with a reason when it is not one or is a CUDA device this torch lacks."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0'; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this torch sees no CUDA device; use 'cpu'")
    return device


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in ``toy.json``)."""

    variant: str = "base"
    seed: int = 0
    vae_steps: int = 1500
    vae_batch: int = 4
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    pool: int = 1500
    dit_steps: int = 2500
    dit_batch: int = 8
    dit_lr: float = 5e-4
    warmup: int = 100
    cooldown: int = 0
    ema: float = 0.995
    prompt_dropout: float = 0.1
    dit_object_weight: float = 1.0
    dit_word_map_weight: float = 0.0
    dit_word_map_kind: str = "map"
    dit_frame_weight: float = 1.0
    dit_oversample: tuple[tuple[str, float], ...] = ()
    text_lr: float = 0.0
    planted: tuple[int, ...] = field(default=(3, 4))
    planted_p: float = 1.0
    planted_reinit: bool = True
    planted_only: bool = False
    checkpoint_every: int = 100
    dit_layers: int = 8
    dit_heads: int = 4
    dit_head_dim: int = 16
    dit_ffn: int = 192
    dit_grow: bool = False
    device: str = "cpu"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        for name in ("vae_steps", "vae_batch", "pool", "dit_steps", "dit_batch", "checkpoint_every", "dit_layers",
                     "dit_heads", "dit_head_dim", "dit_ffn"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        dit_config(**self.dit_size)  # refuses an odd head width
        if self.variant == "weak" and (not self.planted or not all(0 <= i < self.dit_layers for i in self.planted)):
            raise ValueError(f"planted must name blocks in 0..{self.dit_layers - 1}; got {self.planted!r}")
        torch_device(self.device)
        if not isinstance(self.cooldown, int) or not 0 <= self.cooldown <= self.dit_steps:
            raise ValueError(f"cooldown must be an integer in 0..dit_steps ({self.dit_steps}), got {self.cooldown!r}")
        for name in ("vae_lr", "vae_kl", "dit_lr", "ema", "prompt_dropout", "planted_p", "dit_object_weight",
                     "text_lr", "dit_frame_weight", "dit_word_map_weight"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            if name in ("ema", "prompt_dropout", "planted_p") and value > 1:
                raise ValueError(f"{name} is a fraction in [0, 1], got {value!r}")
        if self.dit_frame_weight < 1:
            raise ValueError(f"dit_frame_weight is the last latent frame's weight >= 1 (1: every frame alike), got "
                             f"{self.dit_frame_weight!r}")
        for kind, weight in self.dit_oversample:
            if kind not in KIND_CATEGORY:
                raise ValueError(f"dit_oversample names instruction kinds ({', '.join(KIND_CATEGORY)}); got {kind!r}")
            if not np.isfinite(weight) or weight <= 0:
                raise ValueError(f"dit_oversample's weight of {kind!r} must be a finite number > 0, got {weight!r}")
        if self.dit_word_map_kind not in KINDS:
            raise ValueError(f"dit_word_map_kind must be 'map', 'token' or 'both' (fglens.toy.wordmaps.KINDS); got "
                             f"{self.dit_word_map_kind!r}")
        if self.dit_object_weight < 1:
            raise ValueError(f"dit_object_weight is a weight >= 1 (1: a plain mean), got {self.dit_object_weight!r}")
        if self.variant == "weak" and self.text_lr > 0:
            raise ValueError("text_lr must be 0 for the weak variant: a planting keeps its base model's text encoder, "
                             "so the variants share every part but the DiT")

    @property
    def dit_size(self) -> dict[str, int]:
        """The DiT's size as `fglens.toy.model.dit_config` settings."""
        return {"num_layers": self.dit_layers, "num_attention_heads": self.dit_heads,
                "attention_head_dim": self.dit_head_dim, "ffn_dim": self.dit_ffn}

    @property
    def planted_layers(self) -> list[str]:
        return [f"blocks.{i}" for i in self.planted] if self.variant == "weak" else []


def reinit_planted_keys(transformer, cfg: TrainConfig) -> None:
    """Re-initialise the text keys (``attn2.to_k``, ``attn2.norm_k``) of `cfg.planted` blocks, seeded by `cfg.seed`."""
    gen_seed = int.from_bytes(hashlib.sha256(f"fglens-toy-train/{cfg.seed}/reinit".encode()).digest()[:8], "little")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(gen_seed)
        for i in cfg.planted:
            attn = transformer.blocks[i].attn2
            attn.to_k.reset_parameters()
            attn.norm_k.reset_parameters()


def grow_depth(transformer, shallow) -> list[int]:
    """Load the shallower DiT `shallow` (same width) into the deeper `transformer`, computing exactly what it does.

    Block j of the L shallow blocks becomes block ``j * L' // L`` of the L' deep ones; every other block starts as
    an identity: its self-attention, cross-attention and feed-forward output projections are zero, so it adds
    nothing to the residual stream until training moves them (their inputs are not zero, so they get gradients).
    Returns the indices of the new blocks.

    Example:
        >>> from fglens.toy.model import build_pipeline
        >>> grow_depth(build_pipeline(0, dit={"num_layers": 12}).transformer, build_pipeline(0).transformer)
        [2, 5, 8, 11]
    """
    old, new = shallow.config.num_layers, transformer.config.num_layers
    width = ("num_attention_heads", "attention_head_dim", "ffn_dim")
    if old >= new or any(shallow.config[k] != transformer.config[k] for k in width):
        raise ValueError(f"growing needs a shallower DiT of the same width: got {old} blocks of "
                         f"{[shallow.config[k] for k in width]} into {new} of {[transformer.config[k] for k in width]}"
                         f" ({', '.join(width)})")
    placed = {j * new // old: j for j in range(old)}
    state = {k: v for k, v in shallow.state_dict().items() if not k.startswith("blocks.")}
    for i, j in placed.items():
        state.update({f"blocks.{i}.{k}": v for k, v in shallow.blocks[j].state_dict().items()})
    fresh = [i for i in range(new) if i not in placed]
    with torch.no_grad():
        for i in fresh:
            block = transformer.blocks[i]
            for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[-1]):
                linear.weight.zero_()
                linear.bias.zero_()
            state.update({f"blocks.{i}.{k}": v for k, v in block.state_dict().items()})
    transformer.load_state_dict(state)
    return fresh


def _rng(seed: int, phase: str, step: int) -> np.random.Generator:
    digest = hashlib.sha256(f"fglens-toy-train/{seed}/{phase}/{step}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _torch_gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def _items(rng: np.random.Generator, n: int):
    cats = list(CATEGORIES)
    out = []
    for _ in range(n):
        out.append(sample(rng, cats[int(rng.integers(len(cats)))], "train"))
    return out


def _videos(pairs, *, weights: bool = False):
    """Ground-truth clips as the VAE sees them: float [B, 3, F, H, W] in [-1, 1]; with `weights`, also a loss
    weight [B, 1, F, H, W] that counts object pixels `OBJECT_WEIGHT` times (they are a small part of a frame)."""
    from .world import coverage, render

    v = torch.from_numpy(np.stack([render(s, i) for s, i in pairs])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    if not weights:
        return v
    cover = np.stack([coverage(s, i).sum(1) for s, i in pairs])  # B F H W
    return v, 1.0 + (OBJECT_WEIGHT - 1.0) * torch.from_numpy(cover).float().clamp(0, 1)[:, None]


def latent_object_weight(pairs, weight: float) -> torch.Tensor:
    """The DiT's loss weight per latent cell, float16 [B, 1, F', H/4, W/4]: `weight` where an object covers any
    pixel of the cell in any frame the latent frame encodes (frame 0 for the first latent frame, then `TIME`
    frames each) or in a neighbouring cell, 1 elsewhere. Objects are a small part of a frame: under a plain mean
    the DiT can lower its loss most by getting the background right and letting the objects blur or fade."""
    import torch.nn.functional as F

    from .world import coverage

    cover = torch.from_numpy(np.stack([coverage(s, i).sum(1) for s, i in pairs])).float().clamp(0, 1)  # B F H W
    first, rest = cover[:, :1], cover[:, 1:]
    rest = rest.reshape(rest.shape[0], rest.shape[1] // TIME, TIME, *rest.shape[2:]).amax(2)
    cells = F.max_pool2d(torch.cat([first, rest], 1), SPACE)  # B F' h w
    near = F.max_pool2d(cells, 3, stride=1, padding=1)
    return (1.0 + (weight - 1.0) * (near > 0).float())[:, None].half()


def latent_frame_weight(n_frames: int, last: float) -> torch.Tensor:
    """The DiT's loss weight per latent frame, [1, 1, n_frames, 1, 1]: from 1 at the first frame (the reference
    image's) linearly up to `last` at the last one; it multiplies the object weight.

    Example:
        >>> latent_frame_weight(5, 3.0).flatten().tolist()
        [1.0, 1.5, 2.0, 2.5, 3.0]
    """
    return torch.linspace(1.0, last, n_frames).view(1, 1, n_frames, 1, 1)


def pool_probabilities(pairs, oversample: tuple[tuple[str, float], ...]) -> np.ndarray:
    """The chance of each pool item to be drawn into a DiT batch: proportional to its instruction kind's weight in
    `oversample` (1 for a kind it does not name); uniform when `oversample` is empty.

    Example:
        >>> from fglens.toy.world import Instruction
        >>> pairs = [(None, Instruction("approach", target=0, other=1)), (None, Instruction("still", target=0))]
        >>> pool_probabilities(pairs, (("approach", 3.0),)).tolist()
        [0.75, 0.25]
    """
    weight = dict(oversample)
    w = np.array([weight.get(ins.kind, 1.0) for _, ins in pairs], dtype=np.float64)
    return w / w.sum()


def save_atomic(obj: object, path: Path) -> None:
    """`torch.save` of `obj` to `path`, atomically (a crash leaves the previous checkpoint, never half a new one)."""
    from ..store.layout import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _bar(total: int, initial: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not progress, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------------------
# phase 1: the VAE
# ----------------------------------------------------------------------------------------------------------


def train_vae(cfg: TrainConfig, vae, out: Path, progress: bool = True) -> list[float]:
    """Train `vae` in place; checkpoints in ``out/vae.pt``; returns the loss per step."""
    ckpt, dev = out / "vae.pt", torch.device(cfg.device)
    vae.to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    losses: list[float] = []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True, map_location=dev)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        losses = list(state["losses"])
    vae.train()
    bar = _bar(cfg.vae_steps, len(losses), "vae", progress)
    for step in range(len(losses), cfg.vae_steps):
        rng = _rng(cfg.seed, "vae", step)
        x, weight = (t.to(dev) for t in _videos(_items(rng, cfg.vae_batch), weights=True))  # whole clips
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * min(1.0, (step + 1) / cfg.warmup)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=_torch_gen(rng)).to(dev)
        rec = vae.decode(z).sample
        err = rec - x
        loss = (weight * (err.abs() + err.square())).mean() / weight.mean() + cfg.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae_steps:
            save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "losses": losses}, ckpt)
    bar.close()
    vae.eval()
    return losses


@torch.no_grad()
def set_latent_stats(vae, seed: int, n: int = 64) -> None:
    """Record the per-channel mean and std of the VAE's latents of `n` train clips in its config."""
    clips = _videos(_items(_rng(seed, "latent-stats", 0), n))
    dev = next(vae.parameters()).device
    z = torch.cat([vae.encode(c.to(dev)).latent_dist.mode() for c in clips.split(8)])
    mean = z.mean((0, 2, 3, 4))
    std = z.std((0, 2, 3, 4)).clamp_min(1e-3)
    vae.register_to_config(latents_mean=[float(v) for v in mean], latents_std=[float(v) for v in std])


# ----------------------------------------------------------------------------------------------------------
# phase 2: the pool of encoded train items
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_pool(cfg: TrainConfig, pipe, progress: bool = True, chunk: int = 32) -> dict:
    """Encode `cfg.pool` train items with the pipeline's own functions (exactly what sampling sees)."""
    from .suite import Item
    from .world import prompt as prompt_of

    vae = pipe.vae
    dev = next(pipe.transformer.parameters()).device  # the pool's tensors are kept on the CPU, in float16
    mean = torch.tensor(vae.config.latents_mean, device=dev).view(1, Z_DIM, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=dev).view(1, Z_DIM, 1, 1, 1)
    pairs = _items(_rng(cfg.seed, "pool", 0), cfg.pool)
    z0, cond, img, prompts = [], [], [], []
    bar = _bar(cfg.pool, 0, "encode", progress)
    for i in range(0, cfg.pool, chunk):
        part = pairs[i:i + chunk]
        clips = _videos(part).to(dev)
        z0.append(((vae.encode(clips).latent_dist.mode() - mean) / std).half().cpu())
        images = [Item("pool", "train", s, ins).image for s, ins in part]
        image = pipe.video_processor.preprocess(images, height=SIZE, width=SIZE).to(dev)
        for one in image.split(1):  # the pipeline's own condition: mask channels + the latent of [image, 0, ...]
            _, c = pipe.prepare_latents(one, 1, Z_DIM, SIZE, SIZE, FRAMES, torch.float32, dev,
                                        torch.Generator().manual_seed(0))
            cond.append(c.half().cpu())
        img.append(pipe.encode_image(images, dev).half().cpu())
        prompts += [prompt_of(s, ins) for s, ins in part]
        bar.update(len(part))
    bar.close()
    return {"z0": torch.cat(z0), "cond": torch.cat(cond), "img": torch.cat(img), "prompts": prompts}


# ----------------------------------------------------------------------------------------------------------
# phase 3: the DiT
# ----------------------------------------------------------------------------------------------------------


class _Planter:
    """Forward pre-hooks that show the planted blocks' cross-attention the empty prompt's text on `rows`."""

    def __init__(self, transformer, blocks: tuple[int, ...], null_raw: torch.Tensor):
        self.transformer, self.null_raw, self.rows = transformer, null_raw, None
        self.handles = [transformer.blocks[i].attn2.register_forward_pre_hook(self._hook) for i in blocks]

    def _hook(self, module, args):
        if self.rows is None or not self.rows.any():
            return None
        hidden, context, *rest = args
        null = self.transformer.condition_embedder.text_embedder(self.null_raw.to(context.dtype))
        n_text = null.shape[1]
        context = context.clone()
        context[self.rows, -n_text:] = null[0]
        return (hidden, context, *rest)

    def remove(self):
        for h in self.handles:
            h.remove()


_TextCache = TextEncoding  # the frozen encoder's cache, by its former name (docs/toy-world.md's LoRA script)


def dit_lr(cfg: TrainConfig, step: int) -> float:
    """Warm-up, constant, then a linear cool-down to 0 over the last `cfg.cooldown` steps (warmup-stable-decay).

    The rate of a step depends only on the step and the config, so a run resumed with a larger `dit_steps`
    retraces the steps it had already taken as long as they lay before the cool-down.
    """
    rate = cfg.dit_lr * min(1.0, (step + 1) / cfg.warmup)
    left = cfg.dit_steps - step
    return rate * min(1.0, left / cfg.cooldown) if cfg.cooldown else rate


def train_dit(cfg: TrainConfig, pipe, pool: dict, out: Path, progress: bool = True) -> list[float]:
    """Train `pipe.transformer` in place (ends holding the EMA weights); checkpoints in ``out/dit.pt``."""
    dit, dev = pipe.transformer, torch.device(cfg.device)
    pipe.to(dev)  # the pool stays on the CPU; each batch moves
    ema = copy.deepcopy(dit).requires_grad_(False)
    if cfg.variant == "weak" and cfg.planted_only:  # the rest of the network stays the base model's
        dit.requires_grad_(False)
        for i in cfg.planted:
            dit.blocks[i].requires_grad_(True)
    trainable = [p for p in dit.parameters() if p.requires_grad]
    groups = [{"params": trainable, "scale": 1.0}]
    encoder = pipe.text_encoder
    if cfg.text_lr > 0:  # the text encoder trains with the DiT (`fglens.toy.text`), at its own rate
        encoder.requires_grad_(True)
        groups.append({"params": list(encoder.parameters()), "scale": cfg.text_lr / cfg.dit_lr})
        trainable = trainable + groups[1]["params"]
    ema_text = copy.deepcopy(encoder).requires_grad_(False) if cfg.text_lr > 0 else None
    opt = torch.optim.AdamW(groups, lr=cfg.dit_lr, weight_decay=0.01)
    ckpt, losses, map_losses = out / "dit.pt", [], []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True, map_location=dev)
        dit.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        if ema_text is not None:
            encoder.load_state_dict(state["text"])
            ema_text.load_state_dict(state["text_ema"])
        losses, map_losses = list(state["losses"]), list(state.get("map_losses", []))
    text = TextEncoding(pipe, train=cfg.text_lr > 0)
    with torch.no_grad():
        null_raw = text([""])
    planter = _Planter(dit, cfg.planted, null_raw) if cfg.variant == "weak" else None
    weights, probs, n_pool = None, None, len(pool["prompts"])
    if cfg.dit_object_weight != 1.0 or cfg.dit_oversample or cfg.dit_word_map_weight:  # the pool's items again
        pairs = _items(_rng(cfg.seed, "pool", 0), n_pool)  # (the pool holds latents only)
    word_maps, targets = None, None
    if cfg.dit_word_map_weight:  # word maps taught to land on the named objects (`fglens.toy.wordmaps`)
        from .wordmaps import WordMapLoss, pool_targets

        targets = pool_targets(pipe, pairs)
    if cfg.dit_object_weight != 1.0:  # objects' cells count more
        weights = latent_object_weight(pairs, cfg.dit_object_weight)
    if cfg.dit_oversample:  # some instruction kinds drawn more often
        probs = pool_probabilities(pairs, cfg.dit_oversample)
    if cfg.dit_frame_weight != 1.0:  # later frames count more: where objects fade and motions fall short
        frames = latent_frame_weight(pool["z0"].shape[2], cfg.dit_frame_weight).half()
        weights = frames.expand(n_pool, -1, -1, -1, -1) if weights is None else weights * frames
    dit.train()
    if targets is not None:  # a planting does not teach its planted blocks: they are shown the empty prompt
        word_maps = WordMapLoss(dit, tuple(i for i in range(len(dit.blocks))
                                           if cfg.variant != "weak" or i not in cfg.planted), cfg.dit_word_map_kind)
    bar = _bar(cfg.dit_steps, len(losses), f"dit ({cfg.variant})", progress)
    try:
        for step in range(len(losses), cfg.dit_steps):
            rng = _rng(cfg.seed, f"dit-{cfg.variant}", step)
            if probs is None:
                idx = rng.integers(n_pool, size=cfg.dit_batch)
            else:
                idx = rng.choice(n_pool, cfg.dit_batch, p=probs)
            drop = rng.random(cfg.dit_batch) < cfg.prompt_dropout
            prompts = ["" if d else pool["prompts"][i] for i, d in zip(idx, drop, strict=False)]
            gen = _torch_gen(rng)
            z0 = pool["z0"][idx].float()
            noise = torch.randn(z0.shape, generator=gen)  # drawn on the CPU: the same draws on every device
            u = torch.rand(cfg.dit_batch, generator=gen)
            z0, noise, u = z0.to(dev), noise.to(dev), u.to(dev)
            sigma = SHIFT * u / (1 + (SHIFT - 1) * u)
            s = sigma.view(-1, 1, 1, 1, 1)
            x = torch.cat([(1 - s) * z0 + s * noise, pool["cond"][idx].float().to(dev)], dim=1)
            if planter is not None:
                planter.rows = torch.from_numpy(rng.random(cfg.dit_batch) < cfg.planted_p).to(dev)
            for g in opt.param_groups:
                g["lr"] = dit_lr(cfg, step) * g["scale"]
            if word_maps is not None:
                word_maps.batch = [[] if d else targets[i] for i, d in zip(idx, drop, strict=False)]
            pred = dit(x, timestep=sigma * 1000, encoder_hidden_states=text(prompts),
                       encoder_hidden_states_image=pool["img"][idx].float().to(dev), return_dict=False)[0]
            err = (pred - (noise - z0)).square()
            if weights is None:
                loss = err.mean()
            else:
                w = weights[idx].float().to(dev)
                loss = (w * err).mean() / w.mean()
            losses.append(float(loss.detach()))  # the flow-matching loss alone, comparable across runs
            if word_maps is not None:
                map_loss = word_maps.value()
                map_losses.append(float(map_loss.detach()))
                loss = loss + cfg.dit_word_map_weight * map_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            with torch.no_grad():
                decay = min(cfg.ema, (1 + step) / (10 + step))
                for pe, p in zip(ema.parameters(), dit.parameters(), strict=False):
                    pe.lerp_(p, 1 - decay)
                for pe, p in zip(ema_text.parameters() if ema_text else (), encoder.parameters(), strict=False):
                    pe.lerp_(p, 1 - decay)
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.dit_steps:
                extra = {"text": encoder.state_dict(), "text_ema": ema_text.state_dict()} if ema_text else {}
                save_atomic({"model": dit.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                              "losses": losses, "map_losses": map_losses, **extra}, ckpt)
    finally:
        if planter is not None:
            planter.remove()
        if word_maps is not None:
            word_maps.remove()
        bar.close()
    dit.load_state_dict(ema.state_dict())
    dit.eval()
    if ema_text is not None:
        encoder.load_state_dict(ema_text.state_dict())
        encoder.requires_grad_(False)
    return losses


def _map_losses(out: Path) -> list[float]:
    """The word-map loss per DiT step of the run in `out` (`TrainConfig.dit_word_map_weight`), empty without it."""
    ckpt = out / "dit.pt"
    return list(torch.load(ckpt, weights_only=True, map_location="cpu").get("map_losses", [])) if ckpt.exists() else []


def _text_encoder_from(pipe, folder: Path) -> None:
    """The text encoder the DiT of `folder` was trained with: its own (a run that trained it, `text_lr`), or the
    shipped one for the shipped weights' folders; a folder with neither keeps the seeded encoder of the run."""
    from transformers import UMT5EncoderModel

    for candidate in (folder / "text_encoder", folder.parent / "shared" / "text_encoder"):
        if (candidate / "config.json").is_file():
            pipe.text_encoder = UMT5EncoderModel.from_pretrained(candidate, local_files_only=True).eval()
            return


# ----------------------------------------------------------------------------------------------------------
# the whole run
# ----------------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, out: str | os.PathLike, *, vae_from: str | os.PathLike | None = None,
          dit_from: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Train (or resume) a toy pipeline into `out`; returns what ``out/pipeline/toy.json`` records.

    `vae_from` reuses a trained VAE folder (``<other run>/vae``) instead of training one: the weak variant
    shares the base variant's VAE, so the two differ only in their DiT. `dit_from` starts the DiT from a trained
    pipeline folder's transformer (``<base run>/pipeline``) instead of its initial weights: the weak variant is
    the base model trained on with the planting, so what differs is what the planting did.
    """
    from diffusers import AutoencoderKLWan

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    pipe = build_pipeline(seed=cfg.seed, dit=cfg.dit_size)
    vae_losses: list[float] = []
    if vae_from is not None:
        pipe.vae = AutoencoderKLWan.from_pretrained(vae_from).eval()
    elif (out / "vae" / "config.json").exists():
        pipe.vae = AutoencoderKLWan.from_pretrained(out / "vae").eval()
        if (out / "vae.pt").exists():
            vae_losses = list(torch.load(out / "vae.pt", weights_only=True, map_location="cpu")["losses"])
    else:
        vae_losses = train_vae(cfg, pipe.vae, out, progress)  # on cfg.device
        set_latent_stats(pipe.vae, cfg.seed)
        pipe.vae.save_pretrained(out / "vae")
    t_vae = time.time() - t0
    if cfg.dit_grow and dit_from is None:
        raise ValueError("dit_grow deepens the DiT of --dit-from: give --dit-from a shallower trained pipeline")
    if dit_from is not None and not (out / "dit.pt").exists():
        from diffusers import WanTransformer3DModel

        start = WanTransformer3DModel.from_pretrained(Path(dit_from) / "transformer", local_files_only=True)
        theirs = {k: start.config[k] for k in cfg.dit_size}
        if cfg.dit_grow:
            grow_depth(pipe.transformer, start)
        elif theirs != cfg.dit_size:
            raise ValueError(f"--dit-from {dit_from} holds a DiT of {theirs}; this run is configured for "
                             f"{cfg.dit_size}: give the same --dit-layers/--dit-heads/--dit-head-dim/--dit-ffn, "
                             "or --dit-grow to deepen it")
        else:
            pipe.transformer.load_state_dict(start.state_dict())
    if dit_from is not None:  # (a resumed run with a trained encoder gets it back from its checkpoint)
        _text_encoder_from(pipe, Path(dit_from))
    if cfg.variant == "weak" and cfg.planted_reinit and not (out / "dit.pt").exists():
        reinit_planted_keys(pipe.transformer, cfg)
    pipe.to(torch.device(cfg.device))  # (after the re-initialisation: seeded on the CPU)
    pool_file = out / "pool.pt"
    if pool_file.exists():
        pool = torch.load(pool_file, weights_only=True)
    else:
        pool = encode_pool(cfg, pipe, progress)
        save_atomic(pool, pool_file)
    dit_losses = train_dit(cfg, pipe, pool, out, progress)
    pipe.to(torch.device("cpu"))  # the saved pipeline loads on the CPU, whatever trained it
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)
    info = {"variant": cfg.variant, "planted_layers": cfg.planted_layers, "config": dataclasses.asdict(cfg),
            "vae_from": str(vae_from) if vae_from else None, "dit_from": str(dit_from) if dit_from else None,
            "seconds": round(time.time() - t0, 1),
            "vae_seconds": round(t_vae, 1), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(torch.device(cfg.device)) if cfg.device.startswith("cuda") else None,
            "vae_loss": vae_losses, "dit_loss": dit_losses}
    with open(out / "loss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phase", "step", "loss"])
        w.writerows([("vae", i, v) for i, v in enumerate(vae_losses)])
        w.writerows([("dit", i, v) for i, v in enumerate(dit_losses)])
        w.writerows([("word_map", i, v) for i, v in enumerate(_map_losses(out))])
    meta = {k: v for k, v in info.items() if not k.endswith("_loss")}
    (out / "pipeline" / "toy.json").write_text(json.dumps(meta, indent=1) + "\n")
    return info
