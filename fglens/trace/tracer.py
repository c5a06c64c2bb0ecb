"""`fg.trace`: one context manager around an unmodified pipeline call.

Entering installs, for each traced transformer, a clock hook, a `TracedProcessor` around each attention
processor with sites, and the dispatch interceptor; for a pipeline it also captures the prompt tokens.
Leaving, in any way (return, exception, KeyboardInterrupt), removes all of it: the processors are again
the original objects and the model is exactly as before. Each pipeline call inside the block is one run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import torch

from ..adapters import Adapter, Site, adapter_for
from ..adapters.base import Segments
from ..adapters.prompt import PipelineCall, PromptCapture, words_for
from ..core.call import AttentionCall, ForwardContext
from ..core.scope import resolve_layers
from ..stats.table import STATISTICS
from ..store import DEFINITIONS, MemorySink, RunWriter, ZarrSink, new_run_id, store_path
from ..store.image import reference_thumbnail
from ..store.schema import SKIPPED
from .clock import ClockHook, StepSource, install_clock
from .editing import Editor
from .intercept import TracedProcessor, patch, unpatch
from .record import WORD_STATS, Record, Recorder
from .refuse import refuse_unsupported
from .skips import SkipWatch, step_caches

TRANSFORMER_ATTRS = ("transformer", "transformer_2")


def _transformers(target: Any) -> tuple[Any | None, list[tuple[str, torch.nn.Module]]]:
    """(pipeline or None, [(prefix, transformer), ...]) for a pipeline or a bare transformer."""
    if isinstance(target, torch.nn.Module):
        return None, [("", target)]
    found = []
    for attr in TRANSFORMER_ATTRS:
        module = getattr(target, attr, None)
        if isinstance(module, torch.nn.Module):
            found.append(("" if attr == "transformer" else f"{attr}.", module))
    if not found:
        raise TypeError(
            f"fg.trace expects a diffusers pipeline with a `transformer` or a transformer module; got "
            f"{type(target).__name__}"
        )
    for prefix, module in found:
        refuse_unsupported(prefix, module)
    return target, found


class Trace:
    """The object `fg.trace(...)` returns; inside the block it is also the handle on the recorded run(s).

    Attributes:
        dataset: the most recent run as an `xarray.Dataset` (from the store when one was given).
        datasets: every run of this block, in order.
        run_ids: the names of those runs in the store.
        observers: objects given the live attention calls (``Trace(..., observers=[...])``; `fglens.train`'s
            probes): each forward is framed by ``begin_forward(ctx)`` / ``end_forward()``, and every call of a site
            ``wants(site)`` accepts is handed to ``observe(call)`` as the `AttentionCall` itself, post-edit, its q and
            k keeping their autograd history (nothing is computed for them, and nothing is recorded unless `record`
            says so).
    """

    def __init__(self, target: Any, record: Record | None = None, edit: Any = None, store: Any = None,
                 run_id: str | None = None, observers: Sequence[Any] = ()):
        if record is not None and not isinstance(record, Record):
            raise TypeError(f"record must be an fg.Record, got {type(record).__name__}")
        self.pipe, found = _transformers(target)
        self.adapters: list[Adapter] = [adapter_for(t, prefix) for prefix, t in found]
        for adapter in self.adapters:  # what an architecture's adapter says it cannot trace exactly: before any hook
            reason = adapter.refusal(self.pipe)
            if reason is not None:
                raise ValueError(f"fg.trace does not trace {reason}")
        per_model = [a.layers() for a in self.adapters]
        kinds = {site.kind for a in self.adapters for site in a.sites()}
        # with an edit or observers and no record, nothing is recorded; with none of them, the default Record
        self.observers = list(observers)
        self.record = record if record is not None else (
            Record() if (edit is None and not self.observers) or store is not None else None)
        heads = [getattr(a.module(s.module), "heads", None) for a in self.adapters for s in a.sites()]
        heads = min((h for h in heads if isinstance(h, int)), default=None)
        self.editor = Editor(edit, per_model, kinds, heads) if edit is not None else None
        self.layers = resolve_layers(self.record.layers, per_model) if self.record else []
        if run_id is not None and store is None:
            raise ValueError(f"run_id={run_id!r} names a run in a store: give store= too")
        self.store = store_path(store, run_id=run_id) if store is not None else None
        self._runs_begun = 0  # pipeline calls that started a run in this block (fixed run ids get -1, -2, ...)
        self.recorder = Recorder(self.record, self.layers) if self.record else None
        # the runs of the current pipeline call: one per batch item of a call given several prompts or videos
        self._items: list[tuple[Recorder, RunWriter, MemorySink | ZarrSink]] = []
        #: the step caches on the traced transformers (`fglens.trace.skips`): runs then flag skipped layers
        self.step_caches = [c for a in self.adapters for c in step_caches(a.transformer)]
        self.variables = self._variables() if self.record else []
        self._adapter_of = {layer: a for a in self.adapters for layer in a.layers()}
        self._watch = SkipWatch(self.adapters)

        self._undo: list[Callable[[], None]] = []
        self._capture: PromptCapture | None = None
        self._forward: ForwardContext | None = None
        self._run_state: dict[str, Any] = {}
        self._in_run = False
        self._sinks: list[MemorySink | ZarrSink] = []
        self.run_ids: list[str] = []
        self._active = False

    # -- public handle ------------------------------------------------------------------------------------
    @property
    def dataset(self):
        if self._active:
            raise RuntimeError("run.dataset is available after the `with fg.trace(...)` block has closed")
        if not self._sinks:
            if self.recorder is None:
                raise RuntimeError("nothing was recorded: this trace has edit= but no record=")
            raise RuntimeError("nothing was recorded: no transformer forward ran inside the trace block")
        return self._sinks[-1].dataset()

    @property
    def datasets(self) -> list:
        return [s.dataset() for s in self._sinks]

    # -- context manager ----------------------------------------------------------------------------------
    def __enter__(self) -> Trace:
        if self._active:  # refused before touching anything: the open block keeps its hooks and processors
            raise RuntimeError("this fg.trace block is already open: a trace is entered once at a time (`with t:` "
                               "inside `with t:`); everything it records is recorded by the open block")
        try:
            self._install()
        except BaseException:
            self._uninstall()
            raise
        self._active = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._end_run(interrupted=exc_type is not None)
        except Exception as error:
            if exc is None or isinstance(exc, Exception):
                raise
            # a KeyboardInterrupt (or SystemExit) leaves the block as itself, so `except Exception` never swallows
            # it; the write error rides along as its cause and a note
            exc.add_note(f"while leaving the fg.trace block: {error}")
            if exc.__cause__ is None and exc.__context__ is None:
                exc.__cause__ = error
        finally:
            self._active = False
            self._uninstall()
        return False

    def _install(self) -> None:
        scheduler = getattr(self.pipe, "scheduler", None)
        for adapter in self.adapters:
            for target in adapter.intercepts():
                patch(target)
                self._undo.append(lambda t=target: unpatch(t))
            by_module: dict[str, list[Site]] = {}
            for site in adapter.sites():
                by_module.setdefault(site.module, []).append(site)
            for path, sites in by_module.items():
                attn = adapter.module(path)
                original = attn.processor
                if isinstance(original, TracedProcessor):
                    raise RuntimeError(
                        f"{type(adapter.transformer).__name__} is already being traced: fg.trace blocks on one model "
                        "do not nest; put everything to record in one fg.Record"
                    )
                attn.processor = TracedProcessor(original, sites, self._on_attention)
                self._undo.append(lambda a=attn, p=original: setattr(a, "processor", p))
            steps = StepSource(scheduler)
            self._undo.append(steps.install())
            hook = ClockHook(adapter, steps, self._on_forward_begin, self._on_forward_end,
                             lambda a=adapter: a.batched_cfg(self.pipe))
            self._undo.append(install_clock(adapter.transformer, hook))
        #: does the pipeline's image processor centre-crop the reference (`ImageGrid.crop`)? None: no processor,
        #: so where image-condition tokens sit is unknown
        processor = getattr(self.pipe, "image_processor", None)
        self._image_crop = None if processor is None else bool(getattr(processor, "do_center_crop", False))
        if self.pipe is not None:
            keep_image = reference_thumbnail if self.record is not None and self.record.image else None
            self._capture = PromptCapture(self.pipe, self.adapters[0], keep_image=keep_image)
            self._capture.install()
            self._undo.append(self._capture.remove)

    def _uninstall(self) -> None:
        errors = []
        while self._undo:
            try:
                self._undo.pop()()
            except BaseException as exc:  # noqa: BLE001 - keep restoring the rest, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- clock callbacks -----------------------------------------------------------------------------------
    def _on_forward_begin(self, ctx: ForwardContext) -> None:
        call = self._capture.take() if self._capture is not None else None
        if call is not None or not self._in_run:
            if self._in_run:
                self._end_run(interrupted=False)
            self._begin_run(call, ctx)
        self._forward = ctx
        self._watch.begin()
        for recorder in (*(r for r, _, _ in self._items), *self.observers):
            recorder.begin_forward(ctx)
        self._run_state["last_step"] = ctx.step
        self._run_state["num_steps"] = ctx.num_steps

    def _on_forward_end(self, ctx: ForwardContext) -> None:
        self._forward = None
        missing = self._watch.missing(ctx)
        if missing:
            self._note_skips(ctx, missing)
        for recorder, writer, _ in self._items:
            result = recorder.end_forward(missing)
            if result is not None:
                writer.put(result.step, result.timestep, result.values, result.checks)
        for observer in self.observers:
            observer.end_forward()

    def _on_attention(self, site: Site, query, key, value, run, run_with_lse, args, kwargs) -> torch.Tensor:
        forward = self._forward
        if forward is None:
            return run()
        self._watch.ran(site)
        edits = self.editor.active(site, forward) if self.editor is not None else []
        recorders = [r for r, _, _ in self._items if r.wants(site)]
        recorders += [o for o in self.observers if o.wants(site)]
        record = bool(recorders)
        if not edits and not record:
            return run()
        call = AttentionCall(site, query, key, value, forward)
        call.scale = _call_arg(args, kwargs, "scale", 3)
        segments = None
        if site.kind == "joint":
            tokens = self._branch_tokens(forward)
            adapter = self._adapter_of[site.layer]
            segments = adapter.segments(query.shape[1], key.shape[1], forward.n_tokens, tokens)
            kernel_mask = _call_arg(args, kwargs, "attn_mask", 0)
            attn_mask = None
            if kernel_mask is not None:
                segments = _drop_padding(segments, tokens, forward)
                attn_mask = adapter.joint_key_mask(kernel_mask, segments)  # what the video rows' logits get
            if edits and self._image_crop is not None:
                n_image = segments.image[1] - segments.image[0]
                segments = replace(segments, image_grid=adapter.image_grid(n_image, tokens, self._image_crop))
            call.segments, call.attn_mask = segments, attn_mask
        else:  # a separate call (text, image, self): its mask, if any, is a key mask (LTX-Video's text padding)
            call.attn_mask = kernel_mask = _call_arg(args, kwargs, "attn_mask", 0)
        if site.kind == "image" and edits and self._image_crop is not None:  # Wan: the image keys alone
            grid = self._adapter_of[site.layer].image_grid(key.shape[1], self._branch_tokens(forward),
                                                           self._image_crop)
            segments = Segments((0, query.shape[1]), (0, 0), (0, key.shape[1]), (0, 0), grid)
        need_lse = record and site.kind == "joint"
        if edits:
            out, lse, edited = self.editor.apply(edits, site, forward, (query, key, value), run, run_with_lse,
                                                 call.scale, segments, need_lse, call.attn_mask, kernel_mask)
            call.biases, call.mixes = edited.biases, edited.mixes
        elif need_lse:
            fast = run_with_lse()  # the same output bits, with the row log-sum-exp
            out, lse = fast if fast is not None else (run(), None)
        else:
            out, lse = run(), None
        if record:
            call.lse = lse
            call.output = out
            for recorder in recorders:
                recorder.observe(call)
        return out

    def _note_skips(self, ctx: ForwardContext, missing: list[Site]) -> None:
        """Count the layers a step cache skipped in this forward, and note those where an edit was due."""
        state = self._run_state
        state["skipped"] = state.get("skipped", 0) + len(dict.fromkeys(s.layer for s in missing))
        if self.editor is not None:
            due = list(dict.fromkeys(s.layer for s in missing if self.editor.active(s, ctx)))
            if due:
                state.setdefault("edits_skipped", []).append(
                    {"step": ctx.step, "branches": list(ctx.branches), "layers": due})

    def _skip_attrs(self) -> dict[str, Any]:
        """The run's final attributes about skipped layers (none when nothing could skip and nothing did), with a
        warning for what a user must know: edits that did not happen, or layers missing without a known cache."""
        skipped, edits = self._run_state.get("skipped", 0), self._run_state.get("edits_skipped", [])
        if edits:
            layers = sorted({layer for e in edits for layer in e["layers"]})
            warnings.warn(
                f"a step cache ({', '.join(self.step_caches) or 'unknown'}) skipped layers where the edit was due "
                f"({', '.join(layers)}, in {len(edits)} forward(s)): the edit did not act there, the cached output "
                "was reused; the run's attribute edits_skipped lists them. Turn the cache off to edit every step",
                RuntimeWarning, stacklevel=3)
        if skipped and not self.step_caches:
            warnings.warn(
                f"{skipped} layer forward(s) did not run (a hook skipped their attention, and no diffusers step "
                "cache was found on the transformer): their statistics are NaN; the run's attribute "
                "layers_skipped counts them", RuntimeWarning, stacklevel=3)
        if not (skipped or edits or self.step_caches):
            return {}
        return {"layers_skipped": skipped, "edits_skipped": edits}

    def _branch_tokens(self, forward: ForwardContext):
        return self._run_state.get("tokens", {}).get(forward.branches[0])

    # -- runs ------------------------------------------------------------------------------------------------
    def _variables(self) -> list[str]:
        kinds = {site.kind for a in self.adapters for site in a.sites()}
        found = [s for s in (*self.record.stats, *self.record.map_names) if STATISTICS[s].kinds & kinds]
        return [*found, SKIPPED] if self.step_caches else found

    def _begin_run(self, call: PipelineCall | None, ctx: ForwardContext) -> None:
        self._in_run = True
        # each branch's tokens as the joint segments read them, once per run (not per attention call)
        tokens = {b: call.widest(t) for b, t in call.by_branch().items()} if call is not None else {}
        self._run_state = {"last_step": None, "num_steps": ctx.num_steps, "call": call, "tokens": tokens,
                           "skipped": 0, "edits_skipped": []}
        if self.record is not None:
            self.record.check_steps(ctx.num_steps)  # steps the schedule lacks: an error before sampling
        # a call given several prompts (or videos per prompt): one run per batch item of a branch, each with its own
        # prompt's words; a bare transformer's batch is recorded as one run (the positions given hold for all items)
        per_branch = max((ctx.branches.count(b) for b in set(ctx.branches)), default=1)
        items = list(range(per_branch)) if call is not None and per_branch > 1 else [None]
        calls = [call if k is None else call.item(k, per_branch) for k in items]
        if self.editor is not None:
            known = self.record.words if self.record is not None and isinstance(self.record.words, Mapping) else None
            # words the edit needs, steps and frames of its scope: an error before sampling
            self.editor.start_run(calls, known, ctx)
        if self.recorder is None:
            return
        fixed = getattr(self.store, "run_id", None)  # store_path(..., run_id=...) or fg.trace(..., run_id=...)
        base = new_run_id() if fixed is None else (fixed if self._runs_begun == 0 else f"{fixed}-{self._runs_begun}")
        self._runs_begun += 1  # the first call of a block gets a fixed id itself, later ones "-1", "-2", ...
        begun = [self._item_run(c, ctx, base if k is None else f"{base}.item{k}", k, per_branch)
                 for k, c in zip(items, calls, strict=True)]  # every item's words resolve before any run is created
        for recorder, open_writer, sink in begun:  # one by one: if creating a run fails, those made are closed
            self._items.append((recorder, open_writer(), sink))
        self.recorder = self._items[0][0]

    def _item_run(self, call: PipelineCall | None, ctx: ForwardContext, run_id: str, item: int | None,
                  items: int) -> tuple[Recorder, Callable[[], RunWriter], MemorySink | ZarrSink]:
        """The recorder of one run (its words located in its prompt: an error now if one is missing) and the
        function that creates its writer."""
        recorder = Recorder(self.record, self.layers, item)
        words = words_for(call, self.record.words)
        # the uncond branch attends to the negative prompt: each word at its positions there, none where it lacks it
        # (positions given by the user hold for both branches)
        uncond = None
        if call is not None and not isinstance(self.record.words, Mapping):
            uncond = call.negative.locate(list(words), missing_ok=True) if call.negative is not None else {}
        recorder.begin_run(words, call.n_real() if call is not None else {}, uncond)
        variables = [v for v in self.variables if words or v not in WORD_STATS]
        target = self.store
        if getattr(self.store, "run_id", None) is not None:
            target = store_path(self.store.path, run_id=run_id, overwrite_incomplete=self.store.overwrite_incomplete)
        sink = ZarrSink(target, run_id) if self.store is not None else MemorySink()
        attrs = self._attrs(call, words, ctx, run_id, recorder)
        if item is not None:
            attrs.update(batch_item=item, batch_items=items, **self._batch_texts())

        def open_writer() -> RunWriter:
            return RunWriter(sink, variables=variables, branches=self.record.branches, layers=self.layers,
                             words=list(words), grid=ctx.grid, attrs=attrs,
                             image=call.image if call is not None and self.record.image else None)  # written once

        return recorder, open_writer, sink

    def _batch_texts(self) -> dict[str, Any]:
        call = self._run_state.get("call")
        return {"prompts": call.prompt_texts} if call is not None and len(call.prompt_texts) > 1 else {}

    def _end_run(self, interrupted: bool) -> None:
        if not self._in_run:
            return
        self._in_run = False
        items, self._items = self._items, []
        last, total = self._run_state.get("last_step"), self._run_state.get("num_steps")
        complete = not interrupted and (total is None or last == total - 1)
        final = {"complete": complete, "num_steps": total, **self._skip_attrs()}
        errors = []
        for _, writer, sink in items:
            try:
                writer.close(final)
            except Exception as error:  # noqa: BLE001 - close every item's run, then report the first failure
                errors.append(error)
                continue
            self._sinks.append(sink)
            self.run_ids.append(getattr(sink, "run_id", f"memory-{len(self._sinks)}"))
            if writer.checks.get("pad_uniform") is False:
                warnings.warn(
                    "the text pad keys were not identical in this run, so collapsing them was not exact; "
                    "the run's attribute check_pad_uniform is False",
                    stacklevel=2,
                )
        if errors:
            raise errors[0]

    def _attrs(self, call: PipelineCall | None, words: dict, ctx: ForwardContext, run_id: str,
               recorder: Recorder) -> dict[str, Any]:
        import diffusers

        from .. import __version__

        model = self.adapters[0].transformer
        return {
            "fglens_version": __version__,
            "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__,
            "run": run_id,
            "created": datetime.now(timezone.utc).isoformat(),
            "complete": False,
            "model_class": type(model).__name__,
            "model_family": self.adapters[0].family,
            "model_config": json.loads(json.dumps(self.adapters[0].config_dict(), default=str)),
            "pipeline_class": type(self.pipe).__name__ if self.pipe is not None else None,
            "prompt": call.prompt.text if call and call.prompt else None,
            "negative_prompt": call.negative.text if call and call.negative else None,
            "seed": call.seed if call else None,
            "words": list(words),
            "word_positions": words,
            # where the uncond branch's statistics read each word: in the negative prompt ([] where it lacks it)
            "word_positions_uncond": recorder.branch_words["uncond"],
            "grid": list(ctx.grid),
            "num_steps": ctx.num_steps,
            "record": self.record.spec(),
            "intervention": self.editor.edit.spec() if self.editor is not None else None,
            **({"step_cache": self.step_caches} if self.step_caches else {}),
            "definitions": DEFINITIONS,
        }


def trace(target: Any, record: Record | None = None, edit: Any = None, store: Any = None,
          run_id: str | None = None) -> Trace:
    """Trace a diffusers pipeline (or a bare transformer) for the duration of a ``with`` block.

    Args:
        target: a pipeline such as `WanImageToVideoPipeline` (its `transformer` and, for Wan2.2, its
            `transformer_2` are traced), or a supported transformer module.
        record: what to record (`fg.Record`); defaults to `fg.Record()` (every word, default statistics).
        edit: an intervention (`fg.AnchorMask`, `fg.CacheTransfer`, `fg.FocalGuidance`, `fg.Scale`, `fg.Ablate`,
            or a composition); applied before recorders, which see the post-edit attention.
        store: path of a zarr store to write the run(s) into; a new run is added, nothing is overwritten.
            Without it the run is kept in memory.
        run_id: the name of the run in `store` instead of a generated one (deterministic ids let a sweep find
            its runs again). A second pipeline call in the same block gets ``<run_id>-1``, a third
            ``<run_id>-2``, and so on. An existing complete run with that name is never replaced; an incomplete
            one only through ``store=fg.store.store_path(path, run_id=..., overwrite_incomplete=True)``.

    Example:
        >>> import fglens as fg
        >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
        >>> with fg.trace(pipe, record=fg.Record(words=["dog"])) as run:
        ...     _ = pipe(image=fg.testing.reference_image(), prompt="a dog jumps", height=32, width=48,
        ...              num_frames=5, num_inference_steps=2, output_type="latent")
        >>> run.dataset.word_mass.dims
        ('branch', 'step', 'layer', 'word', 'frame')
    """
    return Trace(target, record=record, edit=edit, store=store, run_id=run_id)


def _call_arg(args: tuple, kwargs: dict, name: str, position: int):
    """An argument of a kernel call after q, k, v: `dispatch_attention_fn` and `F.scaled_dot_product_attention`
    share the order (attn_mask, dropout_p, is_causal, scale)."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


def _drop_padding(segments, tokens, forward: ForwardContext):
    """The text segment without its trailing masked padding (probability exactly 0), so recorders and edits never
    recompute logits for it. The real length comes from the prompt encoding (pipeline) or from the forward's
    inputs (bare transformer); without either the segment is kept whole."""
    t0, t1 = segments.text
    if tokens is not None:
        n_real = tokens.n_real
    elif forward.text_lengths:
        n_real = max(forward.text_lengths) - (segments.image[1] - segments.image[0])
    else:
        return segments
    return replace(segments, text=(t0, min(t1, t0 + max(0, n_real))))
