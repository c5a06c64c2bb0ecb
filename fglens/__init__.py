"""fglens: look inside video diffusion transformers and steer them.

Example:
    >>> import fglens as fg
    >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
    >>> with fg.trace(pipe, record=fg.Record(words=["dog", "jumps"])) as run:
    ...     _ = pipe(image=fg.testing.reference_image(), prompt="a dog jumps over a fence", height=32,
    ...              width=48, num_frames=5, num_inference_steps=2, output_type="latent")
    >>> sorted(run.dataset.data_vars)
    ['entropy', 'morans_i', 'reference_image', 'similarity', 'text_share', 'word_mass']
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

from . import adapters, stats, store  # noqa: E402
from .interventions import (  # noqa: E402
    Ablate,
    AnchorMask,
    CacheTransfer,
    FocalGuidance,
    Intervention,
    Scale,
    Where,
    compose,
)
from .store import open_run, open_runs  # noqa: E402
from .trace import Record, Trace, trace  # noqa: E402

#: heavy or optional submodules, loaded on first use
_LAZY_MODULES = ("testing", "cli", "bench", "anchors", "nnsight", "plot", "diagnose", "sweep", "eval")
#: public names that live in a lazily loaded module
_LAZY_NAMES = {"find_weak_layers": "diagnose", "WeakLayers": "diagnose"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        return getattr(import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module 'fglens' has no attribute {name!r}")


__all__ = [
    "Ablate", "AnchorMask", "CacheTransfer", "FocalGuidance", "Intervention", "Record", "Scale", "Trace", "Where",
    "__version__", "adapters", "compose", "open_run", "open_runs", "stats", "store", "trace",
    "WeakLayers", "find_weak_layers",
]
