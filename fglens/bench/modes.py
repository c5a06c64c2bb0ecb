"""The contexts one benchmarked forward runs in, one per mode: nothing (``plain``), `fg.trace` with a Record
(``traced``, ``traced_ref``), a positive control (``naive``), or `fg.trace` with `fg.FocalGuidance` (``fg`` on
the middle half of the blocks, and the edit benchmark's ``fg{k}``, ``anchor{k}``, ``cache{k}``, ``fg{k}_rec``)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .meters import storage_key
from .naive import NaiveJointRecorder, NaiveRecorder
from .workload import EDIT_ALPHA, EDIT_STRENGTH, EDIT_WORD, JOINT_WORDS, MODEL_MODES, WORDS


# -- which blocks are edited -----------------------------------------------------------------------------------
def fg_layers(num_layers: int) -> tuple[list[int], int]:
    """The ``fg`` mode's FocalGuidance: (edited blocks, the cache's source block) for a stack of `num_layers`.

    Random weights have no semantic-weak layers, so the middle half of the blocks stands in for them (as in the
    real models, where the weak layers sit between the first and the last ones); the source is the last block.

    Example:
        >>> fg_layers(4), fg_layers(2), fg_layers(40)[0][:3]
        (([1, 2], 3), ([0], 1), [10, 11, 12])
    """
    if num_layers < 2:
        raise ValueError("FocalGuidance needs at least 2 blocks: the cache's source and one edited layer")
    start = num_layers // 4
    return list(range(start, min(start + max(1, num_layers // 2), num_layers - 1))), num_layers - 1


def edit_modes(num_layers: int) -> tuple[str, ...]:
    """The edit benchmark's modes for a Wan stack of `num_layers` blocks (the last block is the cache's source).

    Example:
        >>> edit_modes(4)
        ('plain', 'fg1', 'fg2', 'fg3', 'anchor1', 'cache1', 'fg3_rec')
    """
    top = num_layers - 1
    if top < 1:
        raise ValueError("the edit benchmark needs at least 2 blocks: the cache's source and one edited layer")
    return ("plain", *(f"fg{k}" for k in range(1, top + 1)), "anchor1", "cache1", f"fg{top}_rec")


def parse_edit_mode(mode: str) -> tuple[str, int, bool] | None:
    """``"fg2_rec"`` -> ``("fg", 2, True)``: (what is applied, how many layers, with a minimal Record); None for
    a mode that is no edit-benchmark mode (``"fg"``, FocalGuidance on `fg_layers`, is a recording-table mode)."""
    m = re.fullmatch(r"(fg|anchor|cache)(\d+)(_rec)?", mode)
    return None if m is None else (m[1], int(m[2]), bool(m[3]))


def is_edit(mode: str) -> bool:
    """Whether `mode` is one of the edit benchmark's modes (``fg{k}``, ``anchor{k}``, ``cache{k}``, ``fg{k}_rec``)."""
    return parse_edit_mode(mode) is not None


def edits(mode: str) -> bool:
    """Whether `mode` applies FocalGuidance (an edit-benchmark mode or ``fg``)."""
    return mode == "fg" or is_edit(mode)


def edited_blocks(mode: str, num_layers: int) -> list[int]:
    """The blocks `mode` edits: `fg_layers` for ``fg``, ``0 .. k-1`` for the edit benchmark's modes."""
    if mode == "fg":
        return fg_layers(num_layers)[0]
    parsed = parse_edit_mode(mode)
    if parsed is None:
        raise ValueError(f"{mode!r} is no edit mode")
    k = parsed[1]
    if not 1 <= k < num_layers:
        raise ValueError(f"{mode!r}: the edited layers must leave the last block as the source (1 <= k < {num_layers})")
    return list(range(k))


# -- the intervention -------------------------------------------------------------------------------------------
def anchor_region(frame_hw: tuple[int, int]) -> torch.Tensor:
    """The anchor's mask on the latent grid ``[Y, X]``: 1 on the central half of each side, 0 elsewhere."""
    ny, nx = frame_hw
    mask = torch.zeros(ny, nx)
    mask[ny // 4: ny - ny // 4, nx // 4: nx - nx // 4] = 1
    return mask


def focal_edit(mode: str, num_layers: int, frame_hw: tuple[int, int]) -> Any:
    """The intervention of an edit mode: `fg.FocalGuidance` on `edited_blocks` (its anchor, its cache, or both),
    the cache's source the last block, every step (a bare transformer has no schedule for fractions)."""
    import fglens as fg

    layers = edited_blocks(mode, num_layers)
    kind = "fg" if mode == "fg" else parse_edit_mode(mode)[0]
    anchor = fg.AnchorMask.from_mask(anchor_region(frame_hw), EDIT_WORD, strength=EDIT_STRENGTH)
    cache = fg.CacheTransfer(src=[num_layers - 1], dst=layers, alpha=EDIT_ALPHA)
    return fg.FocalGuidance(anchor=None if kind == "cache" else anchor, cache=None if kind == "anchor" else cache,
                            layers=layers, steps=None)


def edit_record(mode: str, words: Mapping[str, list[int]] = WORDS) -> Any:
    """The Record an edit mode runs with: it gives the anchor's word positions (a bare transformer has no prompt)
    and records nothing (``stats=()``), or only ``word_mass`` for the ``_rec`` modes."""
    import fglens as fg

    parsed = parse_edit_mode(mode)
    return fg.Record(words={EDIT_WORD: words[EDIT_WORD]}, stats=("word_mass",) if parsed and parsed[2] else ())


class EditRun:
    """What an edit mode's context yields: the trace and the intervention (for the cache's size)."""

    def __init__(self, trace: Any, edit: Any):
        self.trace = trace
        self.edit = edit

    def cache_bytes(self) -> int:
        """Bytes of the storages the cache transfer holds between steps: the source's Q and K (for joint attention
        also its text-key bias and row log-sum-exp, where present)."""
        seen: dict[int, int] = {}
        for part in self.trace.editor.parts:  # the trace's bound copies hold the cache, not `edit` itself
            for entry in getattr(part, "_cache", {}).values():  # CacheTransfer: (step, query, key, ...)
                for t in entry[1:]:
                    if isinstance(t, torch.Tensor) and (key := storage_key(t)) is not None:
                        seen[key[0]] = key[1]
        return sum(seen.values())


def attention_blocks(transformer: torch.nn.Module) -> int:
    """The transformer's attention blocks: Wan's ``num_layers``, HunyuanVideo's double- plus single-stream ones."""
    config = transformer.config
    return int(config.num_layers) + int(config.get("num_single_layers", 0) or 0)


def latent_frame_hw(transformer: torch.nn.Module, inputs: Mapping[str, Any]) -> tuple[int, int]:
    """Tokens (Y, X) per latent frame of `inputs` (Wan's patch is a tuple, HunyuanVideo's an int)."""
    patch = transformer.config.patch_size
    ph, pw = (patch[1], patch[2]) if isinstance(patch, (tuple, list)) else (patch, patch)
    h, w = inputs["hidden_states"].shape[-2:]
    return h // ph, w // pw


@contextlib.contextmanager
def edit_context(mode: str, transformer: torch.nn.Module, inputs: Mapping[str, Any], model: str = "wan"
                 ) -> Iterator[EditRun]:
    """`fg.trace` with the mode's edit, primed: one forward at timestep + 1 (step 0) fills the cache with the
    source's Q and K, so the next forward (the timestep changes: step 1) is a steady-state edited step."""
    import fglens as fg

    edit = focal_edit(mode, attention_blocks(transformer), latent_frame_hw(transformer, inputs))
    words = JOINT_WORDS if model == "hunyuan" else WORDS
    with fg.trace(transformer, edit=edit, record=edit_record(mode, words)) as run:
        transformer(**{**inputs, "timestep": inputs["timestep"] + 1})
        yield EditRun(run, edit)


def mode_context(
    mode: str, transformer: torch.nn.Module, model: str = "wan", inputs: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager:
    """The context one forward of `mode` runs in (a fresh one per forward; an edit mode's needs the `inputs`,
    for its priming forward)."""
    import fglens as fg
    from fglens.trace import DEFAULT_STATS

    if is_edit(mode) and model != "wan":
        raise ValueError(f"edit-benchmark mode {mode!r} runs on the Wan stack only")
    if mode not in MODEL_MODES.get(model, ()) and not is_edit(mode):
        raise ValueError(f"unknown mode {mode!r} for {model!r}; modes are {MODEL_MODES.get(model)}")
    if edits(mode):
        if inputs is None:
            raise ValueError(f"edit mode {mode!r} needs the forward's inputs (its context runs a priming forward)")
        return edit_context(mode, transformer, inputs, model)
    if mode == "plain":
        return contextlib.nullcontext()
    words = JOINT_WORDS if model == "hunyuan" else WORDS
    if mode == "traced":
        return fg.trace(transformer, record=fg.Record(words=words))
    if mode == "traced_ref":
        return fg.trace(transformer, record=fg.Record(words=words, stats=(*DEFAULT_STATS, "ref_mass")))
    if model == "hunyuan":
        return NaiveJointRecorder(transformer, words)
    return NaiveRecorder(transformer, words)
