"""The objectives of `FocalLoRA`, one class per loss: each is called per example of a step and returns its loss
terms (tensors with gradients; ``loss`` is the one minimised). ``distill`` reads the teacher's trajectories
(`_Teacher`: the same model, LoRA off, sampling under the Focal Guidance edit, its forwards captured by a probe);
``flow`` and ``anchor`` read the items' videos (`fglens.train.flow`) and, for ``anchor``, their masks
(`fglens.train.anchor`). The formulas are in docs/concepts.md ("Post-training losses"). `job` is the
`FocalLoRA` whose settings they read (typed loosely: this module sits below `job.py`, which imports it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

from .data import TrainItem
from .lora import _models
from .probe import TextProbe, distill_kl, real_columns, text_distribution


class _Distill:
    """One step of ``distill``: one forward of the item's teacher trajectory, drawn by `rng`."""

    terms = ("kl", "loss")

    def __init__(self, pipe: Any, job: Any, layers: list[str], amp: Callable = nullcontext):
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

    def __init__(self, pipe: Any, data: Sequence[TrainItem], job: Any, layers: list[str],
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
        self.layers, self.weight, self.form = layers, float(job.anchor_weight), job.anchor_form
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
        anchor = anchor_term(probe.calls, columns, weights, n_real, self.form)  # float32, outside autocast
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

    def __init__(self, pipe: Any, job: Any, layers: list[str]):
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


