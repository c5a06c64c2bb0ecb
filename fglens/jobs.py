"""One pipeline call as fglens' commands make it (``fglens diagnose`` / ``generate``, sweeps, the evaluation): its
call options, checked, and running it traced.

Example:
    >>> from fglens.jobs import CallOptions
    >>> options = CallOptions.from_mapping({"steps": 2, "height": 32})
    >>> options.to_dict()
    {'steps': 2, 'height': 32}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

#: the call options an item (a sweep line, a suite's run, a command) may set; the rest is the pipeline's default
CALL_OPTIONS = ("steps", "height", "width", "num_frames", "negative_prompt", "guidance_scale")


@dataclass(frozen=True)
class CallOptions:
    """Denoising steps, video size and guidance of a pipeline call; None leaves the pipeline's own (the tiny
    pipelines' small sizes and `fglens.adapters.base.TINY_STEPS`)."""

    steps: int | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> CallOptions:
        """From a dict of `CALL_OPTIONS` (an unknown key is an error that lists them)."""
        unknown = sorted(set(options) - set(CALL_OPTIONS))
        if unknown:
            raise ValueError(f"unknown call option(s) {unknown}; accepted: {', '.join(CALL_OPTIONS)}")
        return cls(**{k: v for k, v in options.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """The options that are set, in `CALL_OPTIONS` order."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def kwargs(self, pipe: Any, *, prompt: str, image: Any = None, seed: int = 0,
               output_type: str = "np") -> dict[str, Any]:
        """The keyword arguments of ``pipe(**kwargs)``, checked (`fglens.pipelines.call_kwargs`)."""
        from .pipelines import call_kwargs

        return call_kwargs(pipe, prompt=prompt, image=image, seed=seed, output_type=output_type,
                           **{f.name: getattr(self, f.name) for f in fields(self)})


def run_item(pipe: Any, kwargs: Mapping[str, Any], *, words: Sequence[str] | Mapping[str, Any] = (),
             record: Mapping[str, Any] | None = None, edit: Any = None, store: Any = None) -> tuple[Any, Any]:
    """``pipe(**kwargs)``, traced when it records or edits: with ``fg.Record(words=words, **record)`` when `record`
    is not None (its runs go to `store`), and `edit`. Returns (the pipeline's output, the trace or None)."""
    if record is None and edit is None:
        return pipe(**kwargs), None
    import fglens as fg

    rec = None if record is None else fg.Record(words=words if isinstance(words, Mapping) else list(words), **record)
    with fg.trace(pipe, record=rec, edit=edit, store=store if rec is not None else None) as run:
        output = pipe(**kwargs)
    return output, run
