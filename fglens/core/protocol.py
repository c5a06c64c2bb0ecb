"""The `Intervention` protocol, composition, and what an intervention contributes to one attention call.

An intervention sees each attention call of its scope *before* the recorders and contributes in two ways:

1. **logit biases** (`Bias`): low-rank additive terms on the logits, ``Σ_r q_r[n]·k_r[j]``. All biases of all
   composed interventions are summed and ride through the model's own fused kernel as extra head
   dimensions — no N×T map is ever built. Biases commute, so their order does not matter.
2. **output edits**: functions of the call's output (e.g. the cache transfer's mix with a source layer's map,
   or an ablation), applied after the kernel **in composition order**: ``a + b`` applies `a`'s, then `b`'s.

Interventions declare what they need (`requires`), and `bind` resolves words, layers and steps at the start
of each run, so a missing requirement is a clear error before sampling, never a crash in the middle.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from ..adapters.base import Site
from .call import Bias, EditCall, ForwardContext
from .scope import Where

__all__ = ["Bias", "Compose", "EditCall", "Intervention", "compose"]


class Intervention:
    """Base class. Subclasses override some of `bind`, `biases`, `edit_output`, `observe`.

    Attributes:
        where: the scope (`fg.Where`).
    """

    where: Where = Where()

    # -- declarations -------------------------------------------------------------------------------------
    def requires(self) -> dict[str, Any]:
        """What the intervention needs: ``{"words": [...], "sources": [layers], "state": "steps"}``."""
        return {}

    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable description, stored with the run."""
        return {"type": type(self).__name__}

    def parts(self) -> list[Intervention]:
        return [self]

    def __add__(self, other: Intervention) -> Intervention:
        return compose(self, other)

    # -- life cycle ----------------------------------------------------------------------------------------
    def bound(self, layers: Sequence[str], per_model: Sequence[Sequence[str]], site_kinds: set[str]) -> Intervention:
        """A copy of this intervention bound to one trace's models (`bind` runs on the copy): what binding resolves
        and what a run caches belong to that trace, and this object is never changed, so one intervention can be
        used by several traces at once, in threads too. Its parameters (tensors included) are shared, not copied:
        `bind` and the run must assign new state rather than mutate what ``__init__`` made."""
        twin = copy.copy(self)
        twin.bind(layers, per_model, site_kinds)
        return twin

    def bind(self, layers: Sequence[str], per_model: Sequence[Sequence[str]], site_kinds: set[str]) -> None:
        """Resolve layer names against the traced models; raise a clear error for anything missing (on the copy
        `bound` makes: the user's object is left as it is)."""

    def start_run(self, words: dict[str, list[int]]) -> None:
        """Called at the first forward of each run with the prompt's word positions."""

    def applies(self, site: Site, forward: ForwardContext) -> bool:
        return True

    def observe(self, call: EditCall) -> None:
        """See a call (before editing), e.g. to cache a source layer's queries and keys."""

    def needs_lse(self, call: EditCall) -> bool:
        """Whether this call's edit needs the row log-sum-exp of the model's own kernel call (`EditCall.lse`)."""
        return False

    def biases(self, call: EditCall) -> list[Bias]:
        return []

    def edit_output(self, call: EditCall, out: torch.Tensor) -> torch.Tensor:
        return out


class Compose(Intervention):
    """Interventions applied in order (`a + b` or `fg.compose(a, b)`)."""

    def __init__(self, *parts: Intervention):
        flat: list[Intervention] = []
        for p in parts:
            if not isinstance(p, Intervention):
                raise TypeError(f"can only compose fg interventions, got {type(p).__name__}")
            flat.extend(p.parts())
        self._parts = flat

    def parts(self) -> list[Intervention]:
        return list(self._parts)

    def spec(self) -> dict[str, Any]:
        return {"type": "Compose", "parts": [p.spec() for p in self._parts]}

    def requires(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self._parts:
            for key, value in p.requires().items():
                out.setdefault(key, [])
                out[key] = list(dict.fromkeys([*out[key], *(value if isinstance(value, list) else [value])]))
        return out


def compose(*interventions: Intervention) -> Intervention:
    """Compose interventions; they are applied in the given order (biases add; output edits chain).

    Example:
        >>> import fglens as fg
        >>> edit = fg.compose(fg.Scale(["dog"], 2.0), fg.Ablate("image"))
        >>> [type(p).__name__ for p in edit.parts()]
        ['Scale', 'Ablate']
    """
    return Compose(*interventions)
