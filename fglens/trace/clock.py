"""The step/branch clock: a diffusers model hook that tells each transformer forward where the sampler is.

* **branch** comes from the pipeline's `transformer.cache_context("cond"/"uncond")`, which diffusers hands
  to stateful hooks; a pipeline doing classifier-free guidance in one batched call (CogVideoX:
  `cache_context("cond_uncond")`) has batch halves (uncond, cond), diffusers' convention, when the adapter
  says so (`Adapter.batched_cfg`); otherwise the first forward of a step is "cond" and a second one
  "uncond" (HunyuanVideo's true CFG).
* **step** comes from the pipeline's scheduler (`step_index`, which advances in `scheduler.step`; for
  schedulers without it, the count of `scheduler.step` calls), so it is right however many times each step
  calls the transformer. A bare transformer has no scheduler:
  a new step starts when the timestep changes (one small host read per forward, not per attention call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from ..adapters.base import Adapter
from ..core.call import ForwardContext

HOOK_NAME = "fglens.clock"


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class StepSource:
    """Step index and schedule length: from a scheduler when there is one, else from timestep changes.

    Schedulers without `step_index` (the DDIM family, e.g. CogVideoX's `CogVideoXDDIMScheduler`) get their
    `step` calls counted instead, reset by `set_timesteps` (`install()`; no host read either way).
    """

    def __init__(self, scheduler: Any | None = None):
        self.scheduler = scheduler
        self._last_t: float | None = None
        self._step = -1
        self._taken = 0  # scheduler.step calls since set_timesteps, for schedulers without step_index

    def install(self) -> Callable[[], None]:
        """Count `scheduler.step` calls where the scheduler keeps no `step_index`; return the remover."""
        s = self.scheduler
        if s is None or hasattr(s, "step_index") or not callable(getattr(s, "step", None)):
            return lambda: None
        own = {name: s.__dict__[name] for name in ("step", "set_timesteps") if name in s.__dict__}
        step, set_timesteps = s.step, getattr(s, "set_timesteps", None)

        def counted_step(*args, **kwargs):
            out = step(*args, **kwargs)
            self._taken += 1
            return out

        def counted_set_timesteps(*args, **kwargs):
            self._taken = 0
            return set_timesteps(*args, **kwargs)

        s.step = counted_step
        if set_timesteps is not None:
            s.set_timesteps = counted_set_timesteps

        def remove() -> None:
            for name in ("step", "set_timesteps"):
                if name in own:
                    setattr(s, name, own[name])
                else:
                    s.__dict__.pop(name, None)

        return remove

    def __call__(self, timestep: torch.Tensor) -> tuple[int, int | None]:
        s = self.scheduler
        if s is not None and getattr(s, "timesteps", None) is not None:
            if hasattr(s, "step_index"):
                index = s.step_index
                if index is None:
                    index = getattr(s, "begin_index", None) or 0
            else:
                index = self._taken
            return int(index), len(s.timesteps)
        t = float(timestep.reshape(-1)[0])  # bare transformer: the only host read, once per forward
        if t != self._last_t:
            self._last_t, self._step = t, self._step + 1
        return self._step, None


class ClockHook(ModelHook):
    """Registered on a transformer under the name ``fglens.clock``; removed when the trace closes."""

    _is_stateful = True

    def __init__(
        self,
        adapter: Adapter,
        steps: StepSource,
        on_begin: Callable[[ForwardContext], None],
        on_end: Callable[[ForwardContext], None],
        batched_cfg: Callable[[], bool],
    ):
        super().__init__()
        self.adapter = adapter
        self.steps = steps
        self.on_begin = on_begin
        self.on_end = on_end
        self.batched_cfg = batched_cfg
        self.state = StateManager(_NoState)
        self._current: ForwardContext | None = None
        self._step_seen: int | None = None
        self._forwards_at_step = 0

    def reset_state(self, module):
        return module

    def _branches(self, batch: int, step: int) -> tuple[str, ...]:
        context = self.state._context
        if context is not None and context.name in ("cond", "uncond"):
            return (context.name,) * batch
        if batch % 2 == 0 and self.batched_cfg():
            return ("uncond",) * (batch // 2) + ("cond",) * (batch // 2)
        # no named context, no batched CFG: the first forward of a step is cond, a second one uncond
        # (HunyuanVideo's true CFG calls the transformer again for the negative prompt)
        if step != self._step_seen:
            self._step_seen, self._forwards_at_step = step, 0
        self._forwards_at_step += 1
        return ("cond" if self._forwards_at_step == 1 else "uncond",) * batch

    def pre_forward(self, module, *args, **kwargs):
        timestep = self.adapter.timestep(args, kwargs)
        step, num_steps = self.steps(timestep)
        ctx = ForwardContext(
            step=step,
            num_steps=num_steps,
            timestep=timestep,
            branches=self._branches(timestep.shape[0], step),
            grid=self.adapter.grid(args, kwargs),
            prefix=self.adapter.prefix,
            text_lengths=None if self.steps.scheduler is not None else self.adapter.text_lengths(args, kwargs),
        )
        self._current = ctx
        self.on_begin(ctx)
        return args, kwargs

    def post_forward(self, module, output):
        ctx, self._current = self._current, None
        if ctx is not None:
            self.on_end(ctx)
        return output


def install_clock(transformer: torch.nn.Module, hook: ClockHook) -> Callable[[], None]:
    """Register the hook; return a function that removes it and leaves the module as it found it."""
    had_registry = hasattr(transformer, "_diffusers_hook")
    had_forward = "forward" in transformer.__dict__
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(hook, HOOK_NAME)
    registry.invalidate_child_registries_cache()

    def remove() -> None:
        registry.remove_hook(HOOK_NAME, recurse=False)
        registry.invalidate_child_registries_cache()
        if not had_forward and not registry.hooks:
            transformer.__dict__.pop("forward", None)
        if not had_registry and not registry.hooks:
            transformer.__dict__.pop("_diffusers_hook", None)

    return remove
