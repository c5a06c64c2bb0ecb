"""LoRA through peft on chosen layers' attention projections, everything else frozen.

Which module a layer's attention is comes from its adapter's sites (`fglens.adapters`), so every traced
architecture is covered without code of its own: Wan's text cross-attention (``blocks.i.attn2``), HunyuanVideo's
and CogVideoX's joint attention. The default projections are the queries and keys that decide where the video
looks in the text (`DEFAULT_PROJECTIONS`): ``to_q``/``to_k`` of Wan's text call, ``to_q``/``to_k``/``add_k_proj``
of a joint call (the context's keys; single-stream blocks have no ``add_k_proj``). The adapter is peft's through
diffusers (`add_adapter`) and `save_lora` writes diffusers' LoRA format, so ``pipe.load_lora_weights(folder)``
loads it back, with no fglens at sampling time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

#: per site kind, the projections a LoRA takes by default (those a module lacks are left out)
DEFAULT_PROJECTIONS: dict[str, tuple[str, ...]] = {"text": ("to_q", "to_k"), "joint": ("to_q", "to_k", "add_k_proj")}


def _models(pipe: Any) -> list[tuple[str, Any, Any]]:
    """(layer-name prefix, transformer, adapter) for each transformer of a pipeline (or a bare transformer)."""
    import torch

    from ..adapters import adapter_for

    if isinstance(pipe, torch.nn.Module):
        return [("", pipe, adapter_for(pipe))]
    out = []
    for attr in ("transformer", "transformer_2"):
        module = getattr(pipe, attr, None)
        if isinstance(module, torch.nn.Module):
            prefix = "" if attr == "transformer" else f"{attr}."
            out.append((prefix, module, adapter_for(module, prefix)))
    return out


def lora_targets(pipe: Any, layers: Sequence[int | str],
                 projections: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Module names to adapt, per transformer attribute (``"transformer"``, ``"transformer_2"``): the attention
    projections of `layers` at their text or joint sites (`DEFAULT_PROJECTIONS`, or `projections` for all).

    Example:
        >>> import fglens as fg
        >>> lora_targets(fg.testing.tiny_wan_i2v_pipeline(), [1])
        {'transformer': ['blocks.1.attn2.to_q', 'blocks.1.attn2.to_k']}
    """
    from ..core.scope import resolve_layers

    models = _models(pipe)
    wanted = set(resolve_layers(list(layers), [a.layers() for _, _, a in models]))
    out: dict[str, list[str]] = {}
    for prefix, transformer, adapter in models:
        names = dict(transformer.named_modules())
        for site in adapter.sites():
            if site.layer not in wanted or site.kind not in DEFAULT_PROJECTIONS:
                continue
            chosen = tuple(projections) if projections is not None else DEFAULT_PROJECTIONS[site.kind]
            present = [p for p in chosen if f"{site.module}.{p}" in names]
            if projections is not None and len(present) != len(chosen):
                have = sorted(n.rsplit(".", 1)[1] for n in names if n.startswith(site.module + ".")
                              and n.count(".") == site.module.count(".") + 1)
                raise ValueError(f"{site.layer} ({site.module}) has no projection(s) "
                                 f"{sorted(set(chosen) - set(present))}; it has {have}")
            key = "transformer" if not prefix else prefix.rstrip(".")
            out.setdefault(key, []).extend(f"{site.module}.{p}" for p in present
                                           if f"{site.module}.{p}" not in out.get(key, []))
    if not out:
        raise ValueError(f"layers {list(layers)} have no text or joint attention to adapt")
    return out


def add_lora(pipe: Any, layers: Sequence[int | str], *, rank: int = 8, alpha: float | None = None,
             dropout: float = 0.0, projections: Sequence[str] | None = None, name: str = "focal") -> list[str]:
    """Freeze the pipeline's transformer(s) and add a peft LoRA adapter `name` on `layers`' attention projections
    (`lora_targets`); returns the names of the trainable parameters (the adapter's, and only those).

    `alpha` defaults to `rank` (a scale of 1). The new adapter starts as the identity (peft's B = 0), so the model's
    outputs are unchanged until it is trained.
    """
    import math

    from peft import LoraConfig

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer; got {rank!r}")
    if not (0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number; got {alpha!r}")
    targets = lora_targets(pipe, layers, projections)
    trainable: list[str] = []
    for prefix, transformer, _ in _models(pipe):
        key = "transformer" if not prefix else prefix.rstrip(".")
        transformer.requires_grad_(False)
        if key not in targets:
            continue
        config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                            target_modules=targets[key], init_lora_weights=True)
        transformer.add_adapter(config, adapter_name=name)
        trainable += [f"{prefix}{n}" for n, p in transformer.named_parameters() if p.requires_grad]
    return trainable


def save_lora(pipe: Any, out: str | os.PathLike, *, name: str = "focal") -> list[str]:
    """Write adapter `name` in diffusers' own LoRA format: for a pipeline's transformer with the pipeline's
    `save_lora_weights` (``pipe.load_lora_weights(out)`` or ``pipe.transformer.load_lora_adapter(out,
    use_safetensors=True)`` load it back, without fglens); for Wan2.2's second expert or a bare transformer with
    `save_lora_adapter` (into ``out/transformer_2``, or ``out``; ``load_lora_adapter(folder, prefix=None,
    use_safetensors=True)``). Returns the folders written."""
    from pathlib import Path

    import torch
    from peft.utils import get_peft_model_state_dict

    written = []
    for prefix, transformer, _ in _models(pipe):
        if name not in (getattr(transformer, "peft_config", None) or {}):
            continue
        folder = Path(out) / prefix.rstrip(".") if prefix else Path(out)
        if not prefix and not isinstance(pipe, torch.nn.Module) and hasattr(type(pipe), "save_lora_weights"):
            type(pipe).save_lora_weights(str(folder), transformer_lora_layers=get_peft_model_state_dict(
                transformer, adapter_name=name))
        else:
            transformer.save_lora_adapter(str(folder), adapter_name=name)
        written.append(str(folder))
    if not written:
        raise ValueError(f"no transformer of this pipeline has a LoRA adapter named {name!r}")
    return written
