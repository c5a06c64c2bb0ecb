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

import sys
import types
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Everything is loaded on first use, so `import fglens` and `fglens --help` start without torch, diffusers or
# xarray (seconds): `fg.trace` imports the tracer the first time it is read, `fg.plot` matplotlib, and so on.

#: submodules, loaded on first use
_LAZY_MODULES = ("adapters", "stats", "store", "interventions", "testing", "cli", "bench", "anchors",
                 "nnsight", "plot", "diagnose", "sweep", "eval", "pipelines", "toy", "train")
#: public names and the submodule each lives in
_LAZY_NAMES = {
    **dict.fromkeys(("Ablate", "AnchorMask", "CacheTransfer", "FocalGuidance", "Intervention", "Scale", "Where",
                     "compose", "intervention_from_spec"), "interventions"),
    "open_run": "store", "open_runs": "store",
    "Record": "trace", "Trace": "trace", "trace": "trace",
    "find_weak_layers": "diagnose", "WeakLayers": "diagnose",
    "view": "view",  # fg.view is the function fglens.view.view (as fg.trace is fglens.trace.trace)
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:  # before the modules: `trace` is both a submodule and the function fg.trace
        value = getattr(import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
    elif name in _LAZY_MODULES:
        value = import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'fglens' has no attribute {name!r}")
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_MODULES, *_LAZY_NAMES})


class _Package(types.ModuleType):
    """fglens itself. Importing the subpackage ``fglens.trace`` makes Python set ``fglens.trace`` to it;
    ``fg.trace`` stays the function (as when the package imported it eagerly); so does ``fg.view``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("trace", "view") and isinstance(value, types.ModuleType) and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "Ablate", "AnchorMask", "CacheTransfer", "FocalGuidance", "Intervention", "Record", "Scale", "Trace", "Where",
    "__version__", "adapters", "compose", "open_run", "open_runs", "stats", "store", "trace",
    "WeakLayers", "find_weak_layers", "intervention_from_spec", "view",
]
