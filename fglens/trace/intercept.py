"""Attention interception: wrap each processor, catch its kernel calls, keep its logic and its fused kernel.

A `TracedProcessor` replaces `module.processor` for the duration of a trace. It marks the module as
active (a context variable) and calls the original processor unchanged. The original processor calls its
kernel through its module's globals (`dispatch_attention_fn`, or `F.scaled_dot_product_attention`); while a
trace is open that name points to an interceptor which, only when a traced processor is active, tells the
tracer which site the call is and hands it the queries, keys and values in one layout, [B, S, H, D]. Outside
traced processors the interceptor is a plain pass-through.

The handler gets two ways to run the kernel: `run(q, k, v, **overrides)`, the original call (with, e.g., a
different `scale=` or `attn_mask=`), and `run_with_lse(...)`, the same call through the kernel that also
returns the row log-sum-exp, or None where that is not provably the kernel the original call would run
(see `kernels`).
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from ..adapters.base import Intercept, Site
from .kernels import dispatch_with_lse, sdpa_call_with_lse


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

        # diffusers' legacy `Attention.forward` drops every keyword that `inspect.signature(processor.__call__)`
        # does not name (e.g. HunyuanVideo's `image_rotary_emb`): show it the wrapped processor's signature.
        @functools.wraps(inner.__call__)
        def call(*args, **kwargs):
            return self._fg_call(*args, **kwargs)

        self.__dict__["__call__"] = call

    def __call__(self, attn, *args, **kwargs):
        return self._fg_call(attn, *args, **kwargs)

    def _fg_call(self, attn, *args, **kwargs):
        token = _ACTIVE.set(_ActiveModule(self._fg_sites, self._fg_handler))
        try:
            return self._fg_inner(attn, *args, **kwargs)
        finally:
            _ACTIVE.reset(token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_fg_inner"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._fg_inner, name, value)


# -- the kernel patches, reference-counted per (module, attribute) -----------------------------------------------
_PATCH_LOCK = threading.Lock()
_PATCHES: dict[tuple[str, str], tuple[ModuleType, Any, int]] = {}


_SDPA_ARGS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_DISPATCH_ARGS = (*_SDPA_ARGS, "attention_kwargs")


def _named(names: tuple[str, ...], args: tuple, kwargs: dict, overrides: dict) -> dict:
    """The kernel call's arguments after q, k, v as keywords, with `overrides` (e.g. scale=) applied."""
    if len(args) > len(names):
        raise TypeError(f"unexpected positional arguments to the attention kernel: {args[len(names):]}")
    return {**dict(zip(names, args, strict=False)), **kwargs, **overrides}


def _dispatch_interceptor(original: Callable) -> Callable:
    """Stands in for diffusers' `dispatch_attention_fn` (layout [B, S, H, D])."""

    def dispatch_attention_fn(query, key, value, *args, **kwargs):
        active = _ACTIVE.get()
        if active is None:
            return original(query, key, value, *args, **kwargs)

        def run(q=query, k=key, v=value, **overrides):
            return original(q, k, v, **_named(_DISPATCH_ARGS, args, kwargs, overrides))

        def run_with_lse(q=query, k=key, v=value, **overrides):
            return dispatch_with_lse(q, k, v, (), _named(_DISPATCH_ARGS, args, kwargs, overrides))

        return active.handler(active.next_site(), query, key, value, run, run_with_lse, args, kwargs)

    dispatch_attention_fn.__wrapped__ = original  # type: ignore[attr-defined]
    return dispatch_attention_fn


class _FunctionalProxy:
    """Stands in for `torch.nn.functional` in a module whose processors call `F.scaled_dot_product_attention`
    directly (layout [B, H, S, D]); every other attribute is torch.nn.functional's own."""

    def __init__(self, functional: ModuleType):
        self._functional = functional

    def __getattr__(self, name: str) -> Any:
        return getattr(self._functional, name)

    def scaled_dot_product_attention(self, query, key, value, *args, **kwargs):
        original = self._functional.scaled_dot_product_attention
        active = _ACTIVE.get()
        if active is None:
            return original(query, key, value, *args, **kwargs)
        t = lambda x: x.transpose(1, 2)  # noqa: E731 - [B, H, S, D] <-> [B, S, H, D] views

        q0, k0, v0 = t(query), t(key), t(value)

        def run(q=q0, k=k0, v=v0, **overrides):
            return t(original(t(q), t(k), t(v), **_named(_SDPA_ARGS, args, kwargs, overrides)))

        def run_with_lse(q=q0, k=k0, v=v0, **overrides):
            result = sdpa_call_with_lse(t(q), t(k), t(v), (), _named(_SDPA_ARGS, args, kwargs, overrides))
            return None if result is None else (t(result[0]), result[1])

        out = active.handler(active.next_site(), q0, k0, v0, run, run_with_lse, args, kwargs)
        return t(out)


def patch(target: Intercept) -> None:
    """Install the interceptor for one kernel entry point (nested installs are counted)."""
    key = (target.module.__name__, target.attr)
    with _PATCH_LOCK:
        if key in _PATCHES:
            mod, original, count = _PATCHES[key]
            _PATCHES[key] = (mod, original, count + 1)
            return
        original = getattr(target.module, target.attr)
        if target.attr == "F":
            replacement: Any = _FunctionalProxy(original)
        elif target.attr == "dispatch_attention_fn":
            replacement = _dispatch_interceptor(original)
        else:
            raise ValueError(f"fglens cannot intercept {target.module.__name__}.{target.attr}")
        setattr(target.module, target.attr, replacement)
        _PATCHES[key] = (target.module, original, 1)


def unpatch(target: Intercept) -> None:
    key = (target.module.__name__, target.attr)
    with _PATCH_LOCK:
        if key not in _PATCHES:
            return
        mod, original, count = _PATCHES[key]
        if count > 1:
            _PATCHES[key] = (mod, original, count - 1)
            return
        setattr(mod, target.attr, original)
        del _PATCHES[key]
