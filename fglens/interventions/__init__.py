"""Interventions: composable, scoped edits of attention applied while sampling (`fg.trace(pipe, edit=...)`)."""

from ..core.protocol import Bias, Compose, EditCall, Intervention, compose
from ..core.scope import Where
from .anchor import AnchorMask
from .cache import CacheTransfer
from .focal import FocalGuidance
from .spec import intervention_from_spec
from .tools import Ablate, Scale

__all__ = [
    "Ablate", "AnchorMask", "Bias", "CacheTransfer", "Compose", "EditCall", "FocalGuidance", "Intervention",
    "Scale", "Where", "compose", "intervention_from_spec",
]
