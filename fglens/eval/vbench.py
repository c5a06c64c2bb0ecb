"""Scorers with VBench's definitions: DINOv2 subject consistency and RAFT dynamic degree, on local weights.

VBench (Huang et al. 2024) and VBench-I2V measure *subject consistency* with DINO features and *dynamic degree*
with RAFT optical flow. These two scorers follow their formulas on the models a user has locally; fglens never
downloads weights, and without weights the scorers are `Missing`, never a made-up number.

``dino_subject_consistency``  DINOv2's image embedding (the layer-normed class token, ``pooler_output`` of
                              transformers' ``Dinov2Model``) of the reference image ``a`` and of every frame
                              ``f_t``: ``mean_{t≥1} ½·[max(0, cos(a, f_t)) + max(0, cos(f_{t−1}, f_t))]``.
                              This is VBench's subject_consistency with the reference image as the anchor it
                              calls the first frame (VBench-I2V's reading for image-to-video): 1 for a video
                              that keeps showing the reference image, lower as the look drifts or flickers.
``raft_dynamic_degree``       RAFT flow between consecutive frames; per pair the mean of the top 5 % flow
                              magnitudes (pixels); the video is dynamic (score 1, else 0) when at least
                              ``max(1, round(4·P/16))`` of its P pairs exceed ``6·min(H, W)/256`` px, VBench's
                              dynamic_degree thresholds (``thres``, ``count_num``; VBench's count is 0 for P ≤ 2,
                              which makes every such video dynamic: fglens asks for one pair at least).

Frames are resized as VBench does before each network: DINOv2 gets the shorter side resized to the model's
image size, centre-cropped to a square, ImageNet-normalised; RAFT gets the frames in [-1, 1], upsampled
(bilinear) to 128 px on the shorter side when smaller (RAFT's correlation pyramid needs it; the flow is divided by
the factor, so magnitudes stay in the video's pixels), padded to a multiple of 8 (replicate) and the flow cropped
back.

Example:
    >>> import numpy as np, torch
    >>> from transformers import Dinov2Config, Dinov2Model
    >>> _ = torch.manual_seed(0)
    >>> dino = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                                 intermediate_size=64, image_size=28, patch_size=14))
    >>> video = np.full((3, 28, 28, 3), 0.5, np.float32)
    >>> round(DinoSubjectConsistency(dino).score(video, None, reference=video[0]), 6)   # the same image throughout
    1.0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .missing import Missing, check_video

__all__ = ["DinoSubjectConsistency", "RaftDynamicDegree", "dynamic_degree", "load_dinov2", "load_raft"]

#: the smallest frame side RAFT takes (its correlation pyramid); smaller videos are upsampled, the flow scaled back
_RAFT_MIN = 128
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def load_dinov2(path: str | os.PathLike) -> Any:
    """A transformers ``Dinov2Model`` from a local folder (``config.json`` and weights), never downloaded."""
    from transformers import Dinov2Model

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no DINOv2 model folder at {folder} (a local folder with config.json and weights, "
                                "as save_pretrained writes; fglens never downloads)")
    return Dinov2Model.from_pretrained(folder, local_files_only=True).eval()


def load_raft(path: str | os.PathLike, *, large: bool = True) -> Any:
    """torchvision's RAFT (``raft_large`` or ``raft_small``) with a local state dict (``.pth``/``.pt``, read with
    ``weights_only=True``, or ``.safetensors``), never downloaded."""
    from torchvision.models.optical_flow import raft_large, raft_small

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"no RAFT weights file at {file} (torchvision's raft_large/raft_small state dict)")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
    model = (raft_large if large else raft_small)(weights=None)
    model.load_state_dict(state)
    return model.eval()


def _reference(item: Any, reference: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    if reference is not None:
        return np.asarray(reference, dtype=np.float32)
    from PIL import Image

    ref = item.load_image().resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(ref, dtype=np.float32) / 255.0


class DinoSubjectConsistency:
    """VBench's subject consistency on DINOv2 features (see the module docstring).

    Args:
        model: a transformers ``Dinov2Model`` (or a local folder to load one from), or None (the scorer is then
            `Missing`).
        device: where to run it (default: the model's).
    """

    name = "dino_subject_consistency"

    def __init__(self, model: Any = None, *, device: str | torch.device | None = None) -> None:
        if isinstance(model, (str, os.PathLike)):
            model = load_dinov2(model)
        self.model = model
        self.device = torch.device(device) if device is not None else (
            next(model.parameters()).device if model is not None else torch.device("cpu"))
        self.spec = {"model": None if model is None else getattr(model.config, "_name_or_path", "") or "in memory"}

    @torch.no_grad()
    def features(self, frames: np.ndarray) -> torch.Tensor:
        """Unit-norm DINOv2 embeddings ``[F, C]`` of ``[F, H, W, 3]`` frames in [0, 1]."""
        size = int(self.model.config.image_size)
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 3, 1, 2)
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bicubic",
                          align_corners=False, antialias=True)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top : top + size, left : left + size]
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.device, next(self.model.parameters()).dtype)
        out = self.model(pixel_values=x).pooler_output.float()
        return F.normalize(out, dim=-1)

    def score(self, video: np.ndarray, item: Any, *, reference: np.ndarray | None = None) -> float:
        if self.model is None:
            return Missing("missing: no DINOv2 model given")
        video = check_video(video)
        if video.shape[0] < 2:
            return Missing("a video of one frame has no frames after the first to compare")
        ref = _reference(item, reference, video.shape[1:3])
        feats = self.features(np.concatenate([ref[None], video]))
        anchor, frames = feats[0], feats[1:]
        to_anchor = (frames[1:] @ anchor).clamp_min(0)
        to_previous = (frames[1:] * frames[:-1]).sum(-1).clamp_min(0)
        return float(((to_anchor + to_previous) / 2).mean().clamp(0, 1))


def dynamic_degree(pair_scores: np.ndarray, height: int, width: int) -> float:
    """VBench's dynamic degree of one video from its per-pair flow scores (mean of the top 5 % magnitudes, px):
    1.0 when at least ``max(1, round(4·P/16))`` of the P pairs exceed ``6·min(H, W)/256`` px, else 0.0.

    Example:
        >>> dynamic_degree(np.array([0.0, 2.0, 0.1, 0.0]), 256, 256)   # one pair over 6 px? no
        0.0
        >>> dynamic_degree(np.array([0.0, 7.0, 0.1, 0.0]), 256, 256)
        1.0
    """
    pairs = len(pair_scores)
    needed = max(1, round(4 * pairs / 16))
    return float(int((np.asarray(pair_scores) > 6.0 * min(height, width) / 256.0).sum()) >= needed)


class RaftDynamicDegree:
    """VBench's dynamic degree on RAFT optical flow (see the module docstring).

    Args:
        model: a torchvision RAFT model (or a local weights file for ``raft_large``), or None (`Missing`).
        iterations: RAFT's refinement iterations (torchvision's default 12; VBench uses 20).
        device: where to run it (default: the model's).
    """

    name = "raft_dynamic_degree"

    def __init__(self, model: Any = None, *, iterations: int = 20, device: str | torch.device | None = None) -> None:
        if isinstance(model, (str, os.PathLike)):
            model = load_raft(model)
        if iterations < 1:
            raise ValueError(f"iterations must be a positive integer; got {iterations}")
        self.model, self.iterations = model, int(iterations)
        self.device = torch.device(device) if device is not None else (
            next(model.parameters()).device if model is not None else torch.device("cpu"))
        self.spec = {"iterations": self.iterations, "model": None if model is None else type(model).__name__}

    @torch.no_grad()
    def pair_scores(self, video: np.ndarray) -> np.ndarray:
        """Per consecutive frame pair, the mean of the top 5 % flow magnitudes in pixels."""
        x = torch.from_numpy(np.ascontiguousarray(video, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1
        up = max(1.0, _RAFT_MIN / min(x.shape[-2:]))  # RAFT's correlation pyramid needs 128 px at least
        if up > 1.0:
            x = F.interpolate(x, scale_factor=up, mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        pad = ((-w) % 8, (-h) % 8)
        x = F.pad(x, (0, pad[0], 0, pad[1]), mode="replicate").to(self.device)
        flow = self.model(x[:-1], x[1:], num_flow_updates=self.iterations)[-1][..., :h, :w] / up  # in video pixels
        magnitude = flow.float().square().sum(1).sqrt().flatten(1)  # [P, H*W]
        top = max(1, int(magnitude.shape[1] * 0.05))
        return magnitude.topk(top, dim=1).values.mean(1).cpu().numpy()

    def score(self, video: np.ndarray, item: Any) -> float:
        if self.model is None:
            return Missing("missing: no RAFT model given")
        video = check_video(video)
        if video.shape[0] < 2:
            return Missing("a video of one frame has no motion to measure")
        return dynamic_degree(self.pair_scores(video), video.shape[1], video.shape[2])
