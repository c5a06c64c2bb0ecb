"""Interventions: composable, scoped edits of attention applied while sampling (`fg.trace(pipe, edit=...)`)."""

from .anchor import AnchorMask
from .base import Bias, Compose, EditCall, Intervention, compose
from .cache import CacheTransfer
from .focal import FocalGuidance
from .scope import Where
from .tools import Ablate, Scale

__all__ = [
    "Ablate", "AnchorMask", "Bias", "CacheTransfer", "Compose", "EditCall", "FocalGuidance", "Intervention",
    "Scale", "Where", "compose",
]
