"""Architecture adapters: where the attention sites are and how their keys split into segments.

A new architecture is one new file here plus its tiny test fixture in `fglens.testing`.
"""

from __future__ import annotations

import torch

from .base import Adapter, Site
from .cogvideox import CogVideoXAdapter
from .hunyuan import HunyuanVideoAdapter
from .hunyuan15 import HunyuanVideo15Adapter
from .ltx import LTXVideoAdapter
from .ltx2 import LTX2Adapter
from .skyreels import SkyReelsV2Adapter
from .wan import WanAdapter

ADAPTERS: tuple[type[Adapter], ...] = (WanAdapter, HunyuanVideoAdapter, CogVideoXAdapter, SkyReelsV2Adapter,
                                      LTXVideoAdapter, HunyuanVideo15Adapter, LTX2Adapter)


def supported_classes() -> list[str]:
    return [name for adapter in ADAPTERS for name in adapter.model_classes]


def adapter_for(transformer: torch.nn.Module, prefix: str = "") -> Adapter:
    """The adapter for a transformer instance, or a `TypeError` that names the supported classes."""
    name = type(transformer).__name__
    for adapter in ADAPTERS:
        if name in adapter.model_classes:
            return adapter(transformer, prefix)
    raise TypeError(
        f"fglens has no adapter for {name}. Supported transformer classes: {', '.join(supported_classes())}. "
        "Pass a diffusers pipeline that holds one of them, or the transformer itself."
    )


__all__ = [
    "ADAPTERS", "Adapter", "CogVideoXAdapter", "HunyuanVideo15Adapter", "HunyuanVideoAdapter", "LTX2Adapter",
    "LTXVideoAdapter", "Site", "SkyReelsV2Adapter", "WanAdapter",
    "adapter_for", "supported_classes",
]
