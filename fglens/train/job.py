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
from .probe import TextProbe, distill_kl, real_columns, text_distribution
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


# -- the objectives ----------------------------------------------------------------------------------------
class _Distill:
    """One step of ``distill``: one forward of the item's teacher trajectory, drawn by `rng`."""

    terms = ("kl", "loss")

    def __init__(self, pipe: Any, job: FocalLoRA, layers: list[str], amp: Callable = nullcontext):
        self.pipe, self.layers, self.teacher, self.amp = pipe, layers, _Teacher(pipe, job, layers), amp

    def __call__(self, step: int, rng: np.random.Generator, index: int, item: TrainItem) -> dict[str, torch.Tensor]:
        forwards = self.teacher.forwards(index, item)
        kl = _student_kl(self.pipe, self.layers, forwards[int(rng.integers(len(forwards)))], self.amp)
        return {"loss": kl, "kl": kl}


class _Flow:
    """One step of ``flow``: the item's flow-matching term (`fglens.train.flow`), its noise and σ seeded by the step."""

    terms = ("flow", "loss")

    def __init__(self, pipe: Any, data: Sequence[TrainItem], amp: Callable = nullcontext):
        from .flow import check_pipeline

        check_pipeline(pipe)
        lacking = [it.id for it in data if it.video is None]
        if lacking:
            raise ValueError(f"loss 'flow' needs a video for every item; {len(lacking)} of {len(data)} have none "
                             f"(e.g. {lacking[:3]}); use loss 'distill' (images and prompts only)")
        self.pipe, self.amp, self.cache = pipe, amp, {}

    def encoded(self, index: int, item: TrainItem) -> dict[str, torch.Tensor]:
        from .flow import encode_item

        if index not in self.cache:
            self.cache[index] = encode_item(self.pipe, item)
        return self.cache[index]

    def __call__(self, step: int, rng: np.random.Generator, index: int, item: TrainItem) -> dict[str, torch.Tensor]:
        from .flow import flow_loss

        enc = self.encoded(index, item)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with self.amp():
            loss = flow_loss(self.pipe, enc, generator)
        return {"loss": loss, "flow": loss}


class _Anchor(_Flow):
    """One step of ``anchor``: the item's flow-matching term (the same draws as ``flow``'s), plus the anchor term
    (`fglens.train.anchor`) of the same forward, read by a probe at the trained layers. Every item's masks, words and
    regions are checked when the job starts, before any step."""

    terms = ("flow", "anchor", "loss")

    def __init__(self, pipe: Any, data: Sequence[TrainItem], job: FocalLoRA, layers: list[str],
                 amp: Callable = nullcontext):
        from .flow import check_pipeline

        check_pipeline(pipe)
        no_video = [it.id for it in data if it.video is None]
        no_masks = [it.id for it in data if it.masks is None]
        if no_video or no_masks:
            lacking = [f"{len(ids)} of {len(data)} have no {what} (e.g. {ids[:3]})"
                       for what, ids in (("video", no_video), ("masks", no_masks)) if ids]
            raise ValueError(
                f"loss 'anchor' needs a video and masks for every item; {'; '.join(lacking)}. Accepted: "
                "TrainItem(..., video=uint8 [F, H, W, 3], masks={word: [H, W] or [F, H, W] pixel mask, bool or in "
                "[0, 1], at the video's size}), items with video() and masks() / video_masks() (the toy world's: "
                "fg.toy.suite(...) or a toy.jsonl of fg.toy.save_items); an eval suite.jsonl has neither: use loss "
                "'distill' (images and prompts only)")
        super().__init__(pipe, data, amp)
        self.layers, self.weight = layers, float(job.anchor_weight)
        self.targets = [_anchor_target(pipe, it) for it in data]
        if not any(t is not None for t in self.targets):
            raise ValueError(f"loss 'anchor': none of the {len(data)} items has a masked word to anchor (every "
                             "item's masks are {}); give masks of the words to anchor")

    def __call__(self, step: int, rng: np.random.Generator, index: int, item: TrainItem) -> dict[str, torch.Tensor]:
        from ..trace.tracer import Trace
        from .anchor import anchor_term
        from .flow import flow_loss

        enc = self.encoded(index, item)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        target = self.targets[index]
        if target is None:  # nothing named in this item (a camera move): its flow term only
            with self.amp():
                flow = flow_loss(self.pipe, enc, generator)
            return {"loss": flow, "flow": flow, "anchor": torch.zeros((), device=flow.device)}
        probe = TextProbe(self.layers)
        with self.amp(), Trace(self.pipe, observers=[probe]):
            flow = flow_loss(self.pipe, enc, generator)
        columns, weights, n_real = target
        anchor = anchor_term(probe.calls, columns, weights, n_real)  # float32, outside autocast
        return {"loss": flow + self.weight * anchor, "flow": flow, "anchor": anchor}


def _anchor_target(pipe: Any, item: TrainItem) -> tuple[dict[str, list[int]], dict[str, torch.Tensor], int] | None:
    """An item's (word columns, region weights on its token grid, the prompt's real length), or None without masks;
    a mask that does not fit the video, a word not in the prompt, or an empty region: an error naming the item."""
    from .anchor import region_weights, token_grid, word_columns

    if not item.masks:
        return None
    try:
        columns, n_real = word_columns(pipe, item.prompt, list(item.masks))
    except ValueError as exc:
        raise ValueError(f"item {item.id!r}: a masked word is not in its prompt: {exc}") from None
    grid = token_grid(pipe, item.video.shape)
    weights = {}
    for word, mask in item.masks.items():
        try:
            weights[word] = region_weights(mask, item.video.shape, grid, temporal=int(pipe.vae_scale_factor_temporal),
                                           patch_t=int(pipe.transformer.config.patch_size[0]))
        except ValueError as exc:
            raise ValueError(f"item {item.id!r}, mask of {word!r}: {exc}") from None
        if float(weights[word].sum()) <= 0:
            raise ValueError(f"item {item.id!r}: the mask of {word!r} covers no video token (an empty region); "
                             "leave the word out of the item's masks")
    return columns, weights, n_real


# -- the teacher's trajectories -----------------------------------------------------------------------------
class _Teacher:
    """Per item, once: every transformer forward of the teacher's sampling — its inputs and the teacher's post-edit
    attention over the text at each trained layer (detached)."""

    def __init__(self, pipe: Any, job: FocalLoRA, layers: list[str]):
        self.pipe, self.job, self.layers = pipe, job, layers
        self.cache: dict[int, list[dict[str, Any]]] = {}

    def edit_for(self, item: TrainItem, kwargs: Mapping[str, Any]) -> Any:
        teacher = self.job.teacher
        if isinstance(teacher, (Mapping, str)):
            from ..interventions.recipe import from_recipe
            from ..pipelines import spatial_multiple

            # as the evaluation builds it: anchors on the video's latent grid, not the image's
            return from_recipe(teacher, image=item.image, prompt=item.prompt, words=list(item.words),
                               size=(kwargs.get("height"), kwargs.get("width")),
                               token_px=spatial_multiple(self.pipe))
        if callable(teacher) and not hasattr(teacher, "spec"):
            return teacher(item)
        return teacher

    def forwards(self, index: int, item: TrainItem) -> list[dict[str, Any]]:
        if index not in self.cache:
            self.cache[index] = self._sample(index, item)
        return self.cache[index]

    def _sample(self, index: int, item: TrainItem) -> list[dict[str, Any]]:
        from ..jobs import CallOptions
        from ..trace.tracer import Trace

        kwargs = CallOptions.from_mapping(self.job.call).kwargs(
            self.pipe, prompt=item.prompt, image=item.image, seed=self.job.seed + index, output_type="latent")
        capture = _Capture(self.layers)
        hooks = [t.register_forward_pre_hook(capture.inputs_hook(prefix, adapter), with_kwargs=True)
                 for prefix, t, adapter in _models(self.pipe)]
        try:
            with _adapters_off(self.pipe), torch.no_grad(), Trace(self.pipe, edit=self.edit_for(item, kwargs),
                                                                  observers=[capture]):
                self.pipe(**kwargs)
        finally:
            for h in hooks:
                h.remove()
        if not capture.forwards:
            raise RuntimeError(f"item {item.id!r}: the teacher's sampling ran no transformer forward")
        return capture.forwards


class _Capture(TextProbe):
    def __init__(self, layers: list[str]):
        super().__init__(layers)
        self.forwards: list[dict[str, Any]] = []
        self._inputs: tuple[str, tuple, dict] | None = None
        self._lengths: list[int] | None = None

    def inputs_hook(self, prefix: str, adapter: Any) -> Callable:
        def hook(module, args, kwargs):
            detach = lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
            self._inputs = (prefix, tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()})
            self._lengths = adapter.text_lengths(args, kwargs)  # the prompts' real lengths (Wan), else None

        return hook

    def end_forward(self) -> None:
        # Wan's identical pad keys as one column (exact for the KL, and 512 -> real + 1 columns stored and trained)
        n_real = {layer: real_columns(call.key, self._lengths) if call.site.kind == "text" else None
                  for layer, call in self.calls.items()}
        probs = {layer: text_distribution(call, n_real=n_real[layer]).detach() for layer, call in self.calls.items()}
        # a joint call's segments come from the pipeline call's prompt, which a replayed forward lacks: keep them
        segments = {layer: call.segments for layer, call in self.calls.items()}
        prefix, args, kwargs = self._inputs
        self.forwards.append({"model": prefix, "args": args, "kwargs": kwargs, "probs": probs, "segments": segments,
                              "n_real": n_real})


def _student_kl(pipe: Any, layers: list[str], forward: Mapping[str, Any], amp: Callable = nullcontext
                ) -> torch.Tensor:
    """KL(teacher ‖ student) per query and head, averaged over queries, heads and the forward's trained layers; the
    student's forward under `amp` (autocast or nothing), the KL after it in float32."""
    from ..trace.tracer import Trace

    transformer = {prefix: t for prefix, t, _ in _models(pipe)}[forward["model"]]
    probe = TextProbe(layers)
    with amp(), Trace(pipe, observers=[probe]):
        transformer(*forward["args"], **forward["kwargs"])
    if not forward["probs"]:
        raise RuntimeError(f"no trained layer ran in this forward of {forward['model'] or 'the transformer'}")
    for layer in forward["probs"]:  # the teacher's segments, from the prompt (None for Wan's text call)
        probe.calls[layer].segments = forward["segments"][layer]
    return distill_kl(forward["probs"], probe.calls, forward["n_real"])


@contextmanager
def _adapters_off(pipe: Any):
    """The pipeline's transformers with their LoRA adapters switched off (the teacher is the base model)."""
    models = [t for _, t, _ in _models(pipe) if getattr(t, "peft_config", None)]
    for t in models:
        t.disable_adapters()
    try:
        yield
    finally:
        for t in models:
            t.enable_adapters()


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
