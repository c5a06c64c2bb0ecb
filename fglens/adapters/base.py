"""What an adapter tells the tracer about one architecture, and nothing about statistics.

An adapter answers these questions for a transformer class:

1. which attention modules carry sites, and under which canonical names (`blocks.3.cross.text`);
2. in which order the module's processor calls the attention kernel, and what each call attends to
   (a *segment* of the keys: `self`, `text`, `image`, or `joint` with named column ranges);
3. where the processors call their kernel (`intercepts`: a module global such as `dispatch_attention_fn`);
4. the latent grid (frames, y, x) of the video tokens for the shape of a forward call;
5. for joint attention, where the video queries and the image / text keys sit in each call (`segments`);
6. how the pipeline encodes prompts (`install_prompt_hooks`), so words map to text-key positions;
7. whether a forward's batch holds both CFG branches (`batched_cfg`), where the pipeline does not name them.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

import torch

from .prompt import PromptTokens, text_encoder_hook


@dataclass(frozen=True)
class Site:
    """One attention call inside one attention module.

    Attributes:
        name: canonical name, e.g. ``blocks.3.cross.text`` (stable across diffusers versions).
        layer: the block the site belongs to, e.g. ``blocks.3``; the ``layer`` coordinate of a run.
        layer_index: position of the block in network order, 0-based.
        kind: what the keys are: ``self`` (video tokens), ``text``, ``image``, or ``joint`` (one softmax over
            video, image and text keys).
        module: dotted path of the attention module inside the transformer, e.g. ``blocks.3.attn2``.
        call: index of this call among the kernel calls the module's processor makes per forward.
    """

    name: str
    layer: str
    layer_index: int
    kind: str
    module: str
    call: int


@dataclass(frozen=True)
class Intercept:
    """A kernel entry point the processors look up in their module's globals.

    `attr` is ``"dispatch_attention_fn"`` (diffusers' dispatcher, layout ``[B, S, H, D]``) or ``"F"`` (the
    processor calls ``F.scaled_dot_product_attention`` directly, layout ``[B, H, S, D]``).
    """

    module: ModuleType
    attr: str


@dataclass(frozen=True)
class ImageGrid:
    """Where the image-condition tokens of a call sit in the reference image.

    Token ``first + i`` of the image segment is cell ``i * stride`` (row-major) of a `rows` x `cols` raster of
    the image as the image encoder saw it: its centre square when `crop` (CLIP's shortest-edge resize and centre
    crop, as the pipelines' ``CLIPImageProcessor`` does), else the whole image. Tokens before `first` (a class
    token) have no cell.

    Example:
        >>> grid = ImageGrid(rows=2, cols=2, first=1)
        >>> mask = torch.zeros(1, 2, 2); mask[0, 0, 0] = 1.0   # the top-left quarter, on a square latent grid
        >>> grid.token_masks(mask, 5)
        tensor([[0., 1., 0., 0., 0.]])
    """

    rows: int
    cols: int
    first: int = 0
    stride: int = 1
    crop: bool = True

    def token_masks(self, masks: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """``[W, n_tokens]``: per image token, the mean over its cell of each of `masks` (``[W, Y, X]`` on the
        video's latent grid, whose aspect is the reference image's), exact in area (a cell's fractional overlaps
        with the latent cells weigh them); 0 for tokens without a cell."""
        m = masks.to(torch.float64)
        y, x = m.shape[-2:]
        side = min(y, x) if self.crop else None
        rows = _overlaps(y, (y - side) / 2 if side else 0.0, side or y, self.rows)
        cols = _overlaps(x, (x - side) / 2 if side else 0.0, side or x, self.cols)
        cells = torch.einsum("ry,wyx,cx->wrc", rows, m, cols).reshape(len(m), -1).to(torch.float32)
        out = torch.zeros(len(m), n_tokens, dtype=torch.float32)
        count = min(n_tokens - self.first, (cells.shape[1] + self.stride - 1) // self.stride)
        if count > 0:
            out[:, self.first : self.first + count] = cells[:, : count * self.stride : self.stride]
        return out


def _overlaps(n_in: int, start: float, length: float, n_out: int) -> torch.Tensor:
    """``[n_out, n_in]``: how much of output cell o (of `n_out` equal cells over ``[start, start + length)``) each
    unit input cell ``[i, i + 1)`` covers, rows normalised to 1."""
    edges = [start + o * length / n_out for o in range(n_out + 1)]
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        for i in range(n_in):
            w[o, i] = max(0.0, min(edges[o + 1], i + 1) - max(edges[o], i))
    return w / w.sum(1, keepdim=True)


@dataclass(frozen=True)
class Segments:
    """Where things sit in one joint attention call: ``(start, stop)`` ranges.

    `video_queries` are the query rows of the video tokens; `video`, `image`, `text` the key columns;
    `image_grid` where the image tokens sit in the reference image, when the adapter knows (`Adapter.image_grid`).
    """

    video_queries: tuple[int, int]
    video: tuple[int, int]
    image: tuple[int, int]
    text: tuple[int, int]
    image_grid: ImageGrid | None = None


#: denoising steps of a tiny pipeline's call when none are asked for (the pipelines' default of 50 buys nothing on
#: random weights)
TINY_STEPS = 4


@dataclass(frozen=True)
class TinyPipeline:
    """A built-in tiny random-weight pipeline of an architecture: ``fglens.pipelines.load_pipeline(name)`` builds it
    with ``fglens.testing.<builder>()`` and calls it at `size` (height, width, num_frames) by default."""

    name: str
    builder: str
    size: tuple[int, int, int]


class Adapter:
    """Base class: subclass once per architecture and list it in `fglens.adapters.ADAPTERS`.

    Everything else fglens knows of the architecture is declared here too, as data: the pipeline classes that
    `fglens.pipelines.load_pipeline` accepts, its built-in tiny pipelines (`TinyPipeline`), and the tiny
    transformer the docs' site tables are generated from.
    """

    #: class names of the transformers this adapter understands
    model_classes: tuple[str, ...] = ()
    #: canonical name of this family, stored in each run's attributes
    family: str = ""
    #: a short name: `fglens.pipelines.family`, `fglens.docgen.site_table` and the docs page ``sites-<short>.md``
    short: str = ""
    #: diffusers pipeline classes whose transformer this adapter traces
    pipeline_classes: tuple[str, ...] = ()
    #: its built-in tiny pipelines (``--pipeline tiny-...`` in every command)
    tiny_pipelines: tuple[TinyPipeline, ...] = ()
    #: the `fglens.testing` builder of a small transformer and its arguments (the generated site tables)
    tiny_transformer: tuple[str, dict[str, Any]] = ("", {})
    #: pipeline classes that hold this adapter's transformer but that `fg.trace` refuses at entry, each with its
    #: reason (one sentence: what would be wrong); `fglens.pipelines` and the docs' models table list them
    refused_pipelines: ClassVar[dict[str, str]] = {}

    def __init__(self, transformer: torch.nn.Module, prefix: str = ""):
        self.transformer = transformer
        self.prefix = prefix  # "" for `pipe.transformer`, "transformer_2." for Wan2.2's second expert

    # -- description -------------------------------------------------------------------------------------
    def refusal(self, pipe: Any | None) -> str | None:
        """Why `fg.trace` cannot trace this transformer exactly — inside `pipe`, or bare when `pipe` is None — or
        None: a phrase that completes "fg.trace does not trace ...". Asked at entry, before any hook. Default: the
        pipeline's class (or a base class) is one of `refused_pipelines`."""
        if pipe is None:
            return None
        for cls in type(pipe).__mro__:
            if cls.__name__ in self.refused_pipelines:
                return f"a {cls.__name__} yet: {self.refused_pipelines[cls.__name__]}"
        return None

    def sites(self) -> list[Site]:
        raise NotImplementedError

    def layers(self) -> list[str]:
        """Canonical layer names in network order (with this adapter's prefix)."""
        seen: dict[str, None] = {}
        for site in self.sites():
            seen.setdefault(site.layer, None)
        return list(seen)

    def intercepts(self) -> list[Intercept]:
        """The kernel entry points the processors of this architecture call."""
        raise NotImplementedError

    def segments(self, n_queries: int, n_keys: int, n_video: int, tokens: PromptTokens | None) -> Segments:
        """For a joint site: the segments of one call, given the prompt encoding of its branch (or None)."""
        raise NotImplementedError(f"{type(self).__name__} has no joint attention sites")

    def joint_key_mask(self, attn_mask: torch.Tensor, segments: Segments) -> torch.Tensor:
        """For a joint site: the key mask that the kernel's `attn_mask` applies to every video query row of the call
        (``[B, S]`` or ``[B, 1, 1, S]``; recorders and edits add it to the video rows' logits). Default: the mask as
        the kernel got it, which must then vary along the keys only (HunyuanVideo). An adapter whose processor
        builds a mask with a query dimension overrides this where the video rows provably share one key mask
        (HunyuanVideo-1.5: ``m_q & m_k`` with every video query valid, so each video row is ``m_k``); the kernel
        is still re-run with its own mask, its rows sliced with the queries."""
        return attn_mask

    def image_grid(self, n_image: int, tokens: PromptTokens | None, crop: bool) -> ImageGrid | None:
        """Where a call's `n_image` image-condition tokens sit in the reference image (`ImageGrid`), or None where
        the architecture does not say. `crop`: the pipeline's image processor centre-crops."""
        return None

    def install_prompt_hooks(self, pipe: Any, capture: Any) -> list[Callable[[], None]]:
        """Report each prompt encoding to `capture.add_encoding`; return removers. Default: T5-style encoder."""
        return text_encoder_hook(capture)

    def prompt_tokens(self, pipe: Any, prompt: str) -> PromptTokens:
        """`prompt` as `pipe`'s own tokenizer splits it into the transformer's text keys, without running the
        pipeline (a sweep checks its words before sampling). Default, T5-style (Wan, CogVideoX): the pipeline
        module's `prompt_clean` when it has one, and its call's default ``max_sequence_length``."""
        module = sys.modules.get(type(pipe).__module__)
        params = inspect.signature(type(pipe).__call__).parameters
        max_len = params["max_sequence_length"].default if "max_sequence_length" in params else None
        tokenizer = pipe.tokenizer
        clean = getattr(module, "prompt_clean", None)
        enc = tokenizer(clean(prompt) if callable(clean) else prompt, padding="max_length",
                        max_length=max_len or tokenizer.model_max_length, truncation=True, add_special_tokens=True,
                        return_attention_mask=True)
        return PromptTokens(prompt, tokenizer.convert_ids_to_tokens(enc.input_ids), int(sum(enc.attention_mask)))

    def batched_cfg(self, pipe: Any) -> bool:
        """Does an even batch outside a ``"cond"``/``"uncond"`` cache context hold ``[uncond | cond]`` halves
        (classifier-free guidance in one batched call)? Default: the pipeline's `do_classifier_free_guidance`."""
        return bool(getattr(pipe, "do_classifier_free_guidance", False))

    def grid(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[int, int, int]:
        """Latent grid (frames, y, x) of the video tokens for a forward call with these arguments."""
        raise NotImplementedError

    def timestep(self, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        """The timestep tensor of a forward call (on the device; never read on the host here)."""
        raise NotImplementedError

    def text_lengths(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[int] | None:
        """Real (unpadded) text length per batch item, read from the forward's inputs on the host.

        Only used for a bare transformer, where no pipeline told fglens the prompt's token count; None
        when the architecture cannot tell.
        """
        return None

    # -- helpers ----------------------------------------------------------------------------------------
    def module(self, path: str) -> torch.nn.Module:
        return self.transformer.get_submodule(path)

    def config_dict(self) -> dict[str, Any]:
        config = getattr(self.transformer, "config", {})
        return {k: v for k, v in dict(config).items() if not k.startswith("_")}
