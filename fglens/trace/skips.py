"""Attention sites that did not run in a forward, and the step caches that skip them.

diffusers' step caches (`transformer.enable_cache(...)`: first-block cache, MagCache, SeaCache, FasterCache,
pyramid attention broadcast, TaylorSeer) make a step cheaper by not running some blocks or attention modules and
reusing (or extrapolating) their outputs from earlier steps. fglens sees only the calls that run, so a skipped
site leaves no trace by itself; `SkipWatch` compares, at the end of each transformer forward, the sites that ran
with those the running transformer has. The recorder writes the statistics of a skipped layer as NaN and, when a
step cache is on, flags them in the run's ``skipped`` variable (never a stale value); the tracer reports edits
that were due at a skipped site (`Trace` run attribute ``edits_skipped``).

Example:
    >>> import fglens as fg
    >>> from diffusers import FirstBlockCacheConfig
    >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
    >>> step_caches(pipe.transformer)
    []
    >>> pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    >>> step_caches(pipe.transformer)
    ['FirstBlockCacheConfig']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..adapters import Adapter, Site
from ..core.call import ForwardContext

#: name prefixes of the diffusers hooks that skip or replace a block's or an attention module's computation
SKIPPING_HOOKS = ("fbc_", "mag_cache", "sea_cache", "faster_cache", "pyramid_attention_broadcast", "taylorseer",
                  "layer_skip")


def step_caches(transformer: torch.nn.Module) -> list[str]:
    """What may skip attention sites of `transformer`: the class of its ``enable_cache`` config, else the names of
    skipping diffusers hooks registered on it or its modules (`SKIPPING_HOOKS`, e.g. ``apply_first_block_cache``
    called directly); ``[]`` when there is none."""
    config = getattr(transformer, "_cache_config", None)
    if config is not None:
        return [type(config).__name__]
    found: dict[str, None] = {}
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name in getattr(registry, "hooks", {}) or {}:
            if str(name).startswith(SKIPPING_HOOKS):
                found.setdefault(str(name), None)
    return list(found)


class SkipWatch:
    """The sites that ran in the current forward, against those of the transformer that runs it."""

    def __init__(self, adapters: Sequence[Adapter]):
        self._sites = {a.prefix: list(a.sites()) for a in adapters}
        self._ran: set[str] = set()

    def begin(self) -> None:
        self._ran.clear()

    def ran(self, site: Site) -> None:
        self._ran.add(site.name)

    def missing(self, forward: ForwardContext) -> list[Site]:
        """The sites of the running transformer (`ForwardContext.prefix`) that were not called in this forward."""
        return [s for s in self._sites.get(forward.prefix, ()) if s.name not in self._ran]
