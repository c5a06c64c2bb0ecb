"""What `fg.trace` refuses at entry, before any hook, with a sentence that says what to turn off.

Each refusal is a setup under which fglens would give a wrong number or change the video (docs/compatibility.md):

- a transformer compiled with torch.compile (whole, regionally or wrapped): dynamo breaks the graph at fglens'
  processors, recompiles per attention site, and the frames then differ from the compiled plain run's;
- a transformer with context parallelism (`enable_parallelism(config=ContextParallelConfig(...))`) or tensor
  parallelism: each process holds a shard of the video tokens (context) or of the heads (tensor), while fglens'
  statistics are per latent frame over the whole token grid and means over all heads, and its edits bias rows by
  their place in the grid.

Example:
    >>> import fglens as fg
    >>> refuse_unsupported("", fg.testing.tiny_wan_i2v_pipeline().transformer)   # a plain transformer passes
"""

from __future__ import annotations

import torch


def refuse_unsupported(prefix: str, module: torch.nn.Module) -> None:
    """Raise `ValueError` for a transformer `fg.trace` cannot trace exactly (see the module)."""
    _refuse_compiled(prefix, module)
    _refuse_parallel(prefix, module)


def _refuse_compiled(prefix: str, module: torch.nn.Module) -> None:
    """A transformer compiled with torch.compile (whole, regionally or wrapped) is refused, before any hook: dynamo
    breaks the graph at fglens' processors, recompiles per attention site, and the frames then differ from the
    compiled plain run's (docs/compatibility.md) — recording would change the video."""
    from torch._dynamo.eval_frame import OptimizedModule

    name = prefix.rstrip(".") or "the transformer"
    if isinstance(module, OptimizedModule):
        how = "it is a torch.compile wrapper (OptimizedModule)"
    elif getattr(module, "_compiled_call_impl", None) is not None:
        how = "it was compiled with .compile()"
    else:
        compiled = [n for n, m in module.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]
        if not compiled:
            return
        how = f"{len(compiled)} of its blocks are compiled (e.g. {compiled[0]}; compile_repeated_blocks)"
    raise ValueError(
        f"fg.trace does not trace a torch.compile'd model yet: {name} — {how}. Trace the uncompiled "
        "transformer (load it again, or compile only outside the fg.trace block); see docs/compatibility.md")


def _refuse_parallel(prefix: str, module: torch.nn.Module) -> None:
    """A transformer sharded over processes by diffusers' `enable_parallelism` is refused (see the module)."""
    config = getattr(module, "_parallel_config", None)
    if config is None:
        return
    name = prefix.rstrip(".") or "the transformer"
    if getattr(config, "context_parallel_config", None) is not None:
        what = ("context parallelism (enable_parallelism with a ContextParallelConfig): each process holds only "
                "its shard of the video tokens, while fglens' statistics are per latent frame over the whole token "
                "grid and its edits place rows in that grid")
    else:
        what = ("tensor parallelism (enable_parallelism with a TensorParallelConfig): each process holds only its "
                "share of the attention heads, while fglens' statistics average over all heads")
    raise ValueError(
        f"fg.trace does not trace a transformer split over processes yet: {name} uses {what}. Trace the same call "
        "on one process (load the transformer without parallel_config / enable_parallelism); see "
        "docs/compatibility.md")
