"""Attention interception: wrap each processor, catch its kernel calls, keep its logic and its fused kernel.

A `TracedProcessor` replaces `module.processor` for the duration of a trace. It marks the module as
active (a context variable) and calls the original processor unchanged. The original processor calls
`dispatch_attention_fn` through its module's globals; while a trace is open that name points to an
interceptor which, only when a traced processor is active, tells the tracer which site the call is and
hands it the queries, keys and values. Outside traced processors the interceptor is a plain pass-through.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from ..adapters.base import Site


class _ActiveModule:
    __slots__ = ("sites", "handler", "calls")

    def __init__(self, sites: Sequence[Site], handler: Callable):
        self.sites = sites
        self.handler = handler
        self.calls = 0

    def next_site(self) -> Site:
        if self.calls >= len(self.sites):
            raise RuntimeError(
                f"{self.sites[0].module} made more attention calls than fglens expects "
                f"({[s.name for s in self.sites]}); this diffusers version's processor differs from the "
                "one the adapter describes."
            )
        site = self.sites[self.calls]
        self.calls += 1
        return site


_ACTIVE: contextvars.ContextVar[_ActiveModule | None] = contextvars.ContextVar("fglens_active", default=None)


class TracedProcessor:
    """Wraps an attention processor; every attribute not its own is the wrapped processor's."""

    def __init__(self, inner: Any, sites: Sequence[Site], handler: Callable):
        self.__dict__["_fg_inner"] = inner
        self.__dict__["_fg_sites"] = tuple(sorted(sites, key=lambda s: s.call))
        self.__dict__["_fg_handler"] = handler

    def __call__(self, attn, *args, **kwargs):
        token = _ACTIVE.set(_ActiveModule(self._fg_sites, self._fg_handler))
        try:
            return self._fg_inner(attn, *args, **kwargs)
        finally:
            _ACTIVE.reset(token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_fg_inner"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._fg_inner, name, value)


# -- the dispatch patch, reference-counted per Python module ------------------------------------------------
_PATCH_LOCK = threading.Lock()
_PATCHES: dict[str, tuple[ModuleType, Callable, int]] = {}


def _make_interceptor(original: Callable) -> Callable:
    def dispatch_attention_fn(query, key, value, *args, **kwargs):
        active = _ACTIVE.get()
        if active is None:
            return original(query, key, value, *args, **kwargs)
        site = active.next_site()

        def run(q=query, k=key, v=value):
            return original(q, k, v, *args, **kwargs)

        return active.handler(site, query, key, value, run, kwargs)

    dispatch_attention_fn.__wrapped__ = original  # type: ignore[attr-defined]
    dispatch_attention_fn._fglens = True  # type: ignore[attr-defined]
    return dispatch_attention_fn


def patch_dispatch(module: ModuleType) -> None:
    with _PATCH_LOCK:
        name = module.__name__
        if name in _PATCHES:
            mod, original, count = _PATCHES[name]
            _PATCHES[name] = (mod, original, count + 1)
            return
        original = module.dispatch_attention_fn
        module.dispatch_attention_fn = _make_interceptor(original)
        _PATCHES[name] = (module, original, 1)


def unpatch_dispatch(module: ModuleType) -> None:
    with _PATCH_LOCK:
        name = module.__name__
        if name not in _PATCHES:
            return
        mod, original, count = _PATCHES[name]
        if count > 1:
            _PATCHES[name] = (mod, original, count - 1)
            return
        mod.dispatch_attention_fn = original
        del _PATCHES[name]
