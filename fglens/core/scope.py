"""`fg.Where`: where an intervention applies — layers, steps, CFG branches, latent frames, heads; the CFG branches
and the resolution of layer requests that recorders and interventions share."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: the CFG branches of a forward, as `ForwardContext.branches` names them
BRANCHES = ("cond", "uncond")

Steps = Sequence[int] | tuple[float, float] | range | None


@dataclass(frozen=True)
class Where:
    """The scope of an intervention; None means everywhere.

    Args:
        layers: block indices (``12``, negative from the end) or canonical layer names (``"blocks.12"``).
        steps: step indices (``[0, 1, 2]``, ``range(10)``) or a half-open fraction of the schedule
            (``(0.0, 0.5)``: the first half of the steps; floats mark fractions).
        branches: CFG branches, from ``("cond", "uncond")``.
        frames: latent frame indices of the video queries that are edited.
        heads: attention heads that are edited.

    Example:
        >>> import fglens as fg
        >>> w = fg.Where(layers=[12, 13], steps=(0.0, 0.5), branches=("cond",))
        >>> [s for s in range(10) if w.has_step(s, 10)]
        [0, 1, 2, 3, 4]
    """

    layers: Sequence[int | str] | None = None
    steps: Steps = None
    branches: Sequence[str] | None = None
    frames: Sequence[int] | None = None
    heads: Sequence[int] | None = None

    def __post_init__(self) -> None:
        for name in ("layers", "branches", "frames", "heads"):
            value = getattr(self, name)
            if isinstance(value, (int, str)):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.branches is not None and any(b not in BRANCHES for b in self.branches):
            raise ValueError(f"unknown branch in {self.branches}; accepted: {BRANCHES}")
        for name in ("frames", "heads"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, indices(value, f"Where {name}", "latent frame" if name == "frames"
                                                       else "attention head"))
        if isinstance(self.steps, int):
            object.__setattr__(self, "steps", (self.steps,))
        if isinstance(self.steps, tuple) and len(self.steps) == 2 and any(isinstance(s, float) for s in self.steps):
            lo, hi = self.steps
            if not 0.0 <= lo <= hi <= 1.0:  # NaN fails every comparison: refused here too
                raise ValueError(f"a step fraction range must satisfy 0 <= start <= stop <= 1; got {self.steps}")
        elif self.steps is not None:
            object.__setattr__(self, "steps", indices(self.steps, "Where steps", "step"))

    def check(self, *, num_steps: int | None = None, frames: int | None = None, heads: int | None = None,
              owner: str = "Where") -> None:
        """Refuse a scope naming a step, latent frame or head the run does not have (an edit there would silently
        do nothing). Each bound is checked only when given: the schedule length and the grid are known at the
        first forward of a run, the heads when the trace is built."""
        if num_steps is not None and self.steps is not None and not self.fractional:
            _in_range(self.steps, num_steps, f"{owner}: step", f"this run's schedule has {num_steps} steps")
        elif num_steps is not None and self.fractional and not any(self.has_step(s, num_steps) for s in
                                                                     range(num_steps)):
            raise ValueError(f"{owner}: the step fractions {self.steps} select no step of this run's {num_steps}-step "
                             "schedule; widen the range")
        if frames is not None and self.frames is not None:
            _in_range(self.frames, frames, f"{owner}: latent frame", f"this run's latent grid has {frames} frames")
        if heads is not None and self.heads is not None:
            _in_range(self.heads, heads, f"{owner}: head", f"the model's attention has {heads} heads")

    @property
    def fractional(self) -> bool:
        return isinstance(self.steps, tuple) and len(self.steps) == 2 and any(isinstance(s, float) for s in self.steps)

    def has_step(self, step: int, num_steps: int | None) -> bool:
        if self.steps is None:
            return True
        if self.fractional:
            if num_steps is None:
                raise ValueError(
                    "steps given as fractions of the schedule need a pipeline with a scheduler; a bare transformer "
                    "has no schedule length: give step indices instead"
                )
            lo, hi = self.steps
            return lo * num_steps <= step < hi * num_steps or (hi == 1.0 and step == num_steps - 1)
        return step in self.steps

    def has_branch(self, branch: str) -> bool:
        return self.branches is None or branch in self.branches

    def restrict(self, **kwargs: Any) -> Where:
        """A copy with some fields replaced."""
        fields = {f: getattr(self, f) for f in ("layers", "steps", "branches", "frames", "heads")}
        fields.update(kwargs)
        return Where(**fields)


def indices(values: Any, what: str, noun: str) -> tuple[int, ...]:
    """`values` as a tuple of non-negative ints, or a one-sentence ValueError naming what was given."""
    out = []
    for v in [values] if isinstance(values, (int, str, float)) else values:
        try:
            if isinstance(v, bool):
                raise TypeError
            i = operator.index(v)
        except TypeError:
            raise ValueError(f"{what} takes {noun} indices (ints >= 0); got {v!r}") from None
        if i < 0:
            raise ValueError(f"{what} takes {noun} indices counted from 0; got {i} (negative indices are not "
                             "accepted)")
        out.append(i)
    return tuple(out)


def _in_range(values: Sequence[int], n: int, what: str, why: str) -> None:
    bad = [v for v in values if v >= n]
    if bad:
        raise ValueError(f"{what}{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} out of range: {why} "
                         f"(indices 0..{n - 1})")


def finite(value: Any, what: str) -> float:
    """`value` as a finite float, or a one-sentence ValueError naming it (NaN and infinities are refused: they turn
    every edited output into NaN)."""
    try:
        if isinstance(value, str):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number; got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{what} must be a finite number; got {value!r}")
    return out

def resolve_layers(requested: Sequence[int | str] | None, per_model: Sequence[Sequence[str]]) -> list[str]:
    """Canonical layer names for a request of indices / names, checked against the models' layers."""
    every = [name for layers in per_model for name in layers]
    if requested is None:
        return every
    out: list[str] = []
    for item in requested:
        if isinstance(item, (int,)) and not isinstance(item, bool):
            for layers in per_model:
                if not -len(layers) <= item < len(layers):
                    raise ValueError(
                        f"layer index {item} is out of range: the model has {len(layers)} blocks "
                        f"(indices 0..{len(layers) - 1})"
                    )
                out.append(layers[item])
        elif isinstance(item, str) and item in every:
            out.append(item)
        else:
            raise ValueError(f"unknown layer {item!r}; layers are indices or names such as {every[:3]}")
    return list(dict.fromkeys(out))
