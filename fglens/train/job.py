"""`FocalLoRA`: Focal Guidance learned into a LoRA on the weak layers, so that sampling needs no fglens.

The ``distill`` loss (docs/concepts.md, "Post-training losses") needs images and prompts only. For each item the
teacher — the same model, its LoRA switched off, sampling under a Focal Guidance edit (`fg.trace(pipe,
edit=teacher)`) — is run once; every transformer forward of that sampling is kept: its inputs, and the teacher's
post-edit attention of each video query over the text keys at the trained layers (`text_distribution`). A
training step picks an item and one of its forwards (seeded by the step, so a resumed job draws the same), runs the
student (LoRA on, no edit) on the same inputs, and minimises the KL divergence from the teacher's attention to the
student's, per query and head, averaged over queries, heads and layers. The student is thus trained along the
teacher's own sampling trajectories. ``flow`` is the plain flow-matching loss on (image, prompt, video) data
(`fglens.train.flow`), the control. ``anchor`` is the flow-matching loss plus `anchor_weight` times a term that
raises the trained layers' attention mass of each masked word inside its region (`fglens.train.anchor`), on
(image, prompt, video, masks) data.

Mixed precision: ``autocast="bfloat16"`` runs the training forwards under `torch.autocast` (CPU or CUDA); the
losses' attention terms are computed after it, in float32, and the adapter's weights, their gradients and the
optimiser's state are float32 (also on a model loaded in bfloat16 or float16: the adapter is kept in float32, so the
saved adapter is float32). ``gradient_checkpointing=True`` recomputes each transformer block in the backward pass
(diffusers' ``enable_gradient_checkpointing``; switched off again after `fit` if it was off): the same loss and
gradients for less memory; a transformer without it is refused before any step.

Outputs, in ``out``: the adapter in diffusers' LoRA format (``pytorch_lora_weights.safetensors``:
``pipe.load_lora_weights(out)`` loads it without fglens), ``manifest.json`` (layers, loss, data digest, steps,
versions), ``curve.zarr`` (the loss terms per step, an xarray Dataset), ``curve.png``, and ``checkpoint.pt`` (the
adapter, the optimiser and the curve, written atomically every `checkpoint_every` steps; ``fit`` resumes from it).

Example:
    >>> import tempfile, fglens as fg
    >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
    >>> teacher = fg.Scale(["dog"], 4.0, where=fg.Where(layers=["blocks.1"]))
    >>> data = [fg.train.TrainItem("a", fg.testing.reference_image(), "a dog jumps over the red fence")]
    >>> job = fg.train.FocalLoRA(layers=["blocks.1"], rank=2, teacher=teacher, lr=1e-2)
    >>> out = job.fit(pipe, data, steps=2, out=tempfile.mkdtemp(), progress=False)
    >>> sorted(p.name for p in out.iterdir())[:3]
    ['checkpoint.pt', 'curve.png', 'curve.zarr']
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import TrainItem, digest, items
from .lora import _models, add_lora, save_lora
from .objectives import _Anchor, _Distill, _Flow
from .ranks import Ranks

#: the losses `FocalLoRA` knows, and what each needs of the data
LOSSES: dict[str, str] = {"distill": "images and prompts (the teacher samples its own trajectories)",
                          "flow": "images, prompts and videos (Wan2.1-style image-to-video pipelines)",
                          "anchor": "images, prompts, videos and masks of the anchored words (Wan2.1-style "
                                    "image-to-video pipelines)"}

#: the values of `FocalLoRA.autocast`: None or "float32" (the model's own dtype, no autocast), or "bfloat16"
AUTOCAST = (None, "float32", "bfloat16")


@dataclass(frozen=True)
class FocalLoRA:
    """A light post-training job: a LoRA on `layers`' attention projections, trained with `loss`.

    Args:
        layers: the layers to adapt (names or indices, e.g. ``fg.find_weak_layers(...).weak``).
        rank, alpha, dropout, projections: the LoRA (`fg.train.add_lora`).
        loss: a name in `LOSSES`.
        teacher: for ``distill``, the Focal Guidance edit the student learns: an intervention (the same for every
            item), a recipe (a dict or JSON text, built per item from its image, prompt and words as the
            evaluation does), or a function ``item -> intervention``.
        lr: AdamW's learning rate (no weight decay).
        batch: examples per optimiser step (the global batch; their mean loss), shared among the processes of a
            ``torchrun`` / ``accelerate launch`` job (`fglens.train.ranks`).
        call: the teacher's sampling call options (`fglens.jobs.CALL_OPTIONS`: steps, size, guidance).
        checkpoint_every: steps between checkpoints.
        seed: seeds the items' sampling noise and the order of training examples.
        anchor_weight: for ``anchor``, the weight λ of the anchor term (loss = flow + λ · anchor), finite and ≥ 0.
        anchor_form: for ``anchor``, the term's form (`fglens.train.anchor.ANCHOR_FORMS`): ``"mass"`` raises the word's
            share of the attention inside its region; ``"map"`` raises the share of its map inside the region.
        autocast: ``"bfloat16"`` for mixed precision (the module's docstring), or None / ``"float32"``.
        gradient_checkpointing: recompute each transformer block in the backward pass (less memory).
    """

    layers: Sequence[str | int]
    rank: int = 8
    loss: str = "distill"
    teacher: Any = None
    alpha: float | None = None
    dropout: float = 0.0
    projections: Sequence[str] | None = None
    lr: float = 1e-3
    batch: int = 1
    call: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 50
    seed: int = 0
    anchor_weight: float = 1.0
    autocast: str | None = None
    gradient_checkpointing: bool = False
    anchor_form: str = "mass"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.loss != "distill" and self.teacher is not None:
            raise ValueError(f"loss {self.loss!r} takes no teacher (only 'distill' learns from one)")
        if self.loss == "distill" and self.teacher is None:
            raise ValueError("loss 'distill' needs a teacher: the Focal Guidance edit to learn (an intervention, "
                             "a recipe or a function item -> intervention)")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive integer; got {self.rank!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number; got {self.lr!r}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch must be a positive integer; got {self.batch!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive integer; got {self.checkpoint_every!r}")
        w = self.anchor_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"anchor_weight must be a finite number >= 0; got {w!r}")
        if self.loss != "anchor" and w != 1.0:
            raise ValueError(f"anchor_weight weighs the anchor term of loss 'anchor'; loss {self.loss!r} has none")
        from .anchor import ANCHOR_FORMS

        if self.anchor_form not in ANCHOR_FORMS:
            raise ValueError(f"anchor_form must be one of {ANCHOR_FORMS}; got {self.anchor_form!r}")
        if self.loss != "anchor" and self.anchor_form != "mass":
            raise ValueError(f"anchor_form shapes the anchor term of loss 'anchor'; loss {self.loss!r} has none")
        if self.autocast not in AUTOCAST:
            hint = " (float16 needs loss scaling, which FocalLoRA does not do)" if self.autocast == "float16" else ""
            raise ValueError(f"autocast must be one of {AUTOCAST}; got {self.autocast!r}{hint}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(f"gradient_checkpointing must be True or False; got {self.gradient_checkpointing!r}")
        from ..jobs import CallOptions

        CallOptions.from_mapping(self.call)  # unknown options: an error now

    def spec(self) -> dict[str, Any]:
        """The job's settings as JSON-able data (the manifest's, and what a resumed job must match)."""
        teacher = self.teacher
        if hasattr(teacher, "spec"):
            teacher = teacher.spec()
        elif callable(teacher):
            teacher = getattr(teacher, "__qualname__", "function")
        return {"layers": [str(x) for x in self.layers], "rank": self.rank, "alpha": self.alpha,
                "dropout": self.dropout, "projections": None if self.projections is None else list(self.projections),
                "loss": self.loss, "teacher": teacher, "lr": self.lr, "batch": self.batch, "call": dict(self.call),
                "seed": self.seed,
                # only where set: a checkpoint of a job that predates them resumes
                **({"anchor_weight": self.anchor_weight} if self.loss == "anchor" else {}),
                **({"anchor_form": self.anchor_form} if self.anchor_form != "mass" else {}),
                **({"autocast": self.autocast} if self.autocast not in (None, "float32") else {})}

    def fit(self, pipe: Any, data: str | os.PathLike | Sequence[Any], steps: int, out: str | os.PathLike, *,
            resume: bool = True, progress: bool = True) -> Path:
        """Train the adapter for `steps` optimiser steps on `data` (`fg.train.items`), writing to `out` (see the
        module's docstring); resumes from ``out/checkpoint.pt`` when `resume` and it is there. The pipeline keeps
        the trained adapter (named ``focal``) attached and enabled. Returns `out` as a Path."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer; got {steps!r}")
        data = items(data) if not (isinstance(data, Sequence) and data and isinstance(data[0], TrainItem)) \
            else list(data)
        out = Path(out)
        layers = _layer_names(pipe, self.layers)
        if self.gradient_checkpointing:
            _check_checkpointing(pipe)
        amp = _autocast(pipe, self.autocast)
        if self.loss == "distill":
            objective: Any = _Distill(pipe, self, layers, amp)
        elif self.loss == "flow":
            objective = _Flow(pipe, data, amp)
        else:
            objective = _Anchor(pipe, data, self, layers, amp)
        params = _attach(pipe, self)  # bad layers, projections: errors here, before any step
        optimiser = torch.optim.AdamW([p for _, p in params], lr=self.lr, weight_decay=0.0)
        curve: list[dict[str, float]] = []
        start = 0
        data_digest = digest(data)
        checkpoint = out / "checkpoint.pt"
        if resume and checkpoint.exists():
            start, curve = _load_checkpoint(checkpoint, params, optimiser, self.spec(), data_digest)
        out.mkdir(parents=True, exist_ok=True)
        ranks = Ranks(params[0][1].device)
        bar = _bar(steps, start, progress and ranks.is_main)
        with _checkpointing(pipe, self.gradient_checkpointing):
            for step in range(start, steps):
                terms = self._step(step, ranks, objective, data, params, optimiser)
                curve.append({"step": step, **terms})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{terms['loss']:.4g}")
                if ranks.is_main and ((step + 1) % self.checkpoint_every == 0 or step + 1 == steps):
                    _save_checkpoint(checkpoint, step + 1, params, optimiser, curve, self.spec(), data_digest)
        if bar is not None:
            bar.close()
        if ranks.is_main:
            save_lora(pipe, out)
            _write_outputs(out, self, layers, curve, data_digest, len(data), steps)
        ranks.barrier()  # every rank returns once the outputs are there
        return out

    def _step(self, step: int, ranks: Ranks, objective: Any, data: Sequence[TrainItem],
              params: list[tuple[str, torch.nn.Parameter]], optimiser: torch.optim.Optimizer) -> dict[str, float]:
        """One optimiser step on the step's global batch (this rank's share of it); the batch's mean loss terms."""
        optimiser.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for j in ranks.share(self.batch):
            rng = np.random.default_rng([self.seed, step, j])  # the same draws on any number of processes
            i = int(rng.integers(len(data)))
            torch.manual_seed(self.seed * 1_000_003 + step * 1_009 + j)  # LoRA dropout, if any
            terms = objective(step, rng, i, data[i])
            (terms["loss"] / self.batch).backward()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float()
        grads = []
        for _, p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        names = objective.terms  # the same on every rank, also one without an example this step
        sums = torch.stack([totals.get(k, torch.zeros(())).to(grads[0].device) for k in names])
        ranks.sum_([*grads, sums])
        optimiser.step()
        return {k: float(v) / self.batch for k, v in zip(names, sums.tolist(), strict=True)}


# -- set-up, checkpoints and outputs ------------------------------------------------------------------------
def _layer_names(pipe: Any, layers: Sequence[str | int]) -> list[str]:
    from ..core.scope import resolve_layers

    return list(resolve_layers(list(layers), [a.layers() for _, _, a in _models(pipe)]))


def _attach(pipe: Any, job: FocalLoRA) -> list[tuple[str, torch.nn.Parameter]]:
    """Add the adapter (or reuse the one a previous `fit` of this pipeline added) and return its parameters, in
    float32 on a half-precision model too (peft casts the LoRA branch's input to its weights' dtype and the sum back):
    AdamW's small updates are not lost to bfloat16 rounding, and the saved adapter is float32."""
    present = [t for _, t, _ in _models(pipe) if "focal" in (getattr(t, "peft_config", None) or {})]
    if not present:
        add_lora(pipe, job.layers, rank=job.rank, alpha=job.alpha, dropout=job.dropout, projections=job.projections)
    params = [(f"{prefix}{n}", p) for prefix, t, _ in _models(pipe) for n, p in t.named_parameters()
              if p.requires_grad]
    for _, p in params:
        if p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
    return params


def _autocast(pipe: Any, autocast: str | None) -> Callable:
    """A context factory: `torch.autocast` to bfloat16 on the transformer's device type, or nothing."""
    if autocast in (None, "float32"):
        return nullcontext
    device = _models(pipe)[0][1].device.type
    return lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)


def _check_checkpointing(pipe: Any) -> None:
    """Refuse, before any step, a transformer without diffusers' gradient checkpointing."""
    for prefix, t, _ in _models(pipe):
        if not (getattr(t, "_supports_gradient_checkpointing", False) and hasattr(t, "enable_gradient_checkpointing")):
            raise ValueError(f"gradient_checkpointing: {prefix.rstrip('.') or 'the transformer'} "
                             f"({type(t).__name__}) does not support gradient checkpointing (diffusers' "
                             "enable_gradient_checkpointing); train without it")


@contextmanager
def _checkpointing(pipe: Any, on: bool):
    """The pipeline's transformers with gradient checkpointing on, each restored as it was afterwards."""
    models = [t for _, t, _ in _models(pipe)] if on else []
    before = [t.is_gradient_checkpointing for t in models]
    for t in models:
        t.enable_gradient_checkpointing()
    try:
        yield
    finally:
        for t, was in zip(models, before, strict=True):
            if not was:
                t.disable_gradient_checkpointing()


def _save_checkpoint(path: Path, step: int, params, optimiser, curve, spec, data_digest: str) -> None:
    from ..store.layout import atomic_path

    state = {"step": step, "adapter": {n: p.detach().clone() for n, p in params},
             "optimiser": optimiser.state_dict(), "curve": curve, "spec": spec, "digest": data_digest}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, params, optimiser, spec, data_digest: str) -> tuple[int, list]:
    state = torch.load(path, weights_only=False)
    if json.dumps(state["spec"], sort_keys=True, default=str) != json.dumps(spec, sort_keys=True, default=str):
        raise ValueError(f"{path} was written by a job with other settings ({state['spec']}); this job has {spec}: "
                         "use another out folder, or resume=False to start again")
    if state["digest"] != data_digest:
        raise ValueError(f"{path} was trained on other data (digest {state['digest'][:12]}…, now "
                         f"{data_digest[:12]}…): use another out folder, or resume=False")
    with torch.no_grad():
        for name, p in params:
            p.copy_(state["adapter"][name])
    optimiser.load_state_dict(state["optimiser"])
    return int(state["step"]), list(state["curve"])


def _bar(total: int, initial: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="fglens train", unit="step")


def _write_outputs(out: Path, job: FocalLoRA, layers: list[str], curve: list[dict[str, float]], data_digest: str,
                   n_items: int, steps: int) -> None:
    import fglens

    from .curve import write_curve

    manifest = {"fglens": fglens.__version__, "torch": torch.__version__, "layers": layers, "job": job.spec(),
                "data": {"items": n_items, "digest": data_digest}, "steps": steps,
                "autocast": job.autocast, "gradient_checkpointing": job.gradient_checkpointing,
                "load": "pipe.load_lora_weights(out, adapter_name='focal')"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    write_curve(curve, out, loss=job.loss)


__all__ = ["LOSSES", "FocalLoRA"]
