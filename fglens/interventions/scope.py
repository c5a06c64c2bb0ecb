"""`fg.Where`: where an intervention applies — layers, steps, CFG branches, latent frames, heads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..trace.context import BRANCHES

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
        if isinstance(self.steps, tuple) and len(self.steps) == 2 and any(isinstance(s, float) for s in self.steps):
            lo, hi = self.steps
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"a step fraction range must satisfy 0 <= start <= stop <= 1; got {self.steps}")
        elif self.steps is not None:
            object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))

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
