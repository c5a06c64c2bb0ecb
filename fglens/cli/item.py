"""What the sampling commands share (``fglens diagnose``, ``fglens generate``): the pipeline and item options
(`add_item_options`), the checks that run before any sampling (`prepare`), the weak-layer rule's options
(`add_weak_options`), one recorded call (`tracer`, `sample`) and the per-layer table (`layer_table`).

Importing this module is cheap (no torch): heavy imports happen inside the functions.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any

from ..jobs import CallOptions
from .common import UsageError, finite_float

#: the columns of the per-layer table, in this order (those the run recorded)
TABLE_VARS = ("word_mass", "morans_i", "similarity", "text_share", "text_mass", "image_mass", "entropy", "ref_mass")


# -- options ----------------------------------------------------------------------------------------------------


def add_item_options(parser: argparse.ArgumentParser) -> None:
    """The pipeline and the item to sample: ``--pipeline --image --prompt --words`` and the call's size."""
    parser.add_argument("--pipeline", required=True, metavar="PATH|tiny-wan|tiny-hunyuan|...",
                        help="a local diffusers pipeline folder, or a built-in tiny random-weight pipeline "
                        "(tiny-wan, tiny-wan-t2v, tiny-wan22, tiny-hunyuan)")
    parser.add_argument("--image", default=None, metavar="IMG",
                        help="the reference frame (image-to-video); may be omitted for the tiny pipelines, "
                        "which then use fglens.testing.reference_image")
    parser.add_argument("--prompt", required=True, help="the text prompt")
    parser.add_argument("--words", required=True, metavar="W1,W2",
                        help="comma-separated words (or phrases) of the prompt to follow, e.g. dog,jumps")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default: 0)")
    parser.add_argument("--height", type=int, default=None, help="video height in pixels (default: the pipeline's)")
    parser.add_argument("--width", type=int, default=None, help="video width in pixels (default: the pipeline's)")
    parser.add_argument("--frames", "--num-frames", dest="frames", type=int, default=None,
                        help="number of video frames (default: the pipeline's; --num-frames is the same)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="weights dtype of a loaded pipeline (default: as stored; tiny pipelines stay float32)")
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: CUDA when available)")
    parser.add_argument("--maps", action="store_true",
                        help="also store the word attention maps (word_map: larger stores; `fglens plot` draws them)")


#: `fg.find_weak_layers`' scores (fglens.diagnose.SCORE_CHOICES, written out so that `--help` imports no torch;
#: tests/test_cli.py checks that the two agree) and the statistics each one needs recorded
SCORE_CHOICES = ("similarity", "morans_i", "similarity_morans_i", "response", "response_morans_i", "both")
SCORE_STATS = {s: (s,) for s in ("similarity_morans_i", "response", "response_morans_i")}


def add_weak_options(parser: argparse.ArgumentParser) -> None:
    """The parameters of fg.find_weak_layers."""
    group = parser.add_argument_group("semantic-weak layer rule (fg.find_weak_layers)")
    group.add_argument("--score", choices=SCORE_CHOICES, default="similarity",
                       help="per-layer score (default: similarity; a score that is not a default statistic is "
                       "then recorded too; response: Wan only)")
    group.add_argument("--z", type=finite_float, default=-1.0, help="weak when the robust z-score is below this (<= 0; "
                       "default: -1.0)")
    group.add_argument("--exclude-edges", type=finite_float, default=0.1,
                       help="fraction of first and last layers never called weak, in [0, 0.5) (default: 0.1)")
    group.add_argument("--top-k", type=int, default=3, help="how many responsive layers to name (default: 3)")


# -- checks before sampling -------------------------------------------------------------------------------------

@dataclass
class Item:
    """A loaded pipeline and one checked item: what `prepare` returns."""

    pipe: Any
    prompt: str
    words: list[str]
    image: Any  # PIL image, or None for a text-to-video pipeline
    seed: int
    options: CallOptions

    @property
    def size(self) -> tuple[int | None, int | None]:
        """(height, width) of the video."""
        return self.options.height, self.options.width

    def call_kwargs(self, output_type: str = "np") -> dict[str, Any]:
        """The pipeline's keyword arguments, with a fresh seeded generator (each pass samples the same noise)."""
        return self.options.kwargs(self.pipe, prompt=self.prompt, image=self.image, seed=self.seed,
                                   output_type=output_type)


def parse_words(text: str) -> list[str]:
    """``"dog, jumps"`` -> ``["dog", "jumps"]``; empty or repeated words are an error."""
    words = [w.strip() for w in text.split(",")]
    if not text.strip() or any(not w for w in words):
        raise UsageError(f"--words takes comma-separated words of the prompt, e.g. dog,jumps; got {text!r}")
    if len(set(words)) != len(words):
        raise UsageError(f"--words lists a word twice: {text!r}")
    return words


def check_weak_options(args: argparse.Namespace) -> None:
    """The weak-layer rule's parameters, checked before any sampling."""
    if not args.z <= 0:
        raise UsageError(f"--z must be <= 0 (a threshold below the median layer); got {args.z}")
    if not 0.0 <= args.exclude_edges < 0.5:
        raise UsageError(f"--exclude-edges must be a fraction in [0, 0.5); got {args.exclude_edges}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0; got {args.top_k}")


def prepare(args: argparse.Namespace) -> Item:
    """Check the item's options, cheapest first, then load the pipeline; any problem is a `UsageError`.

    Order: words against the prompt, the image file, the store path, the pipeline (name or folder with a
    traceable class), then the call (size multiples, aspect ratio) — all before any sampling.
    """
    from ..anchors.masks import check_words
    from ..pipelines import TINY, TINY_SIZES, load_image, load_pipeline, pipeline_class, takes_image
    from ..store import store_path

    words = parse_words(args.words)
    try:
        check_words(words, args.prompt)
        image = load_image(args.image) if args.image is not None else None
        if getattr(args, "store", None) is not None:
            store_path(args.store)  # a new path or an fglens store this fglens can write
        if args.image is None and args.pipeline not in TINY:
            cls = pipeline_class(args.pipeline)
            if "ImageToVideo" in cls:
                raise UsageError(f"{cls} is image-to-video: give --image IMG (only the built-in tiny pipelines "
                                 "have a default reference image)")
        if args.steps is not None and args.steps < 1:
            raise UsageError(f"--steps must be at least 1; got {args.steps}")
        pipe = load_pipeline(args.pipeline, dtype=args.dtype, device=args.device)
        tiny = args.pipeline in TINY
        size = dict(TINY_SIZES[args.pipeline]) if tiny else {}
        height = args.height if args.height is not None else size.get("height")
        width = args.width if args.width is not None else size.get("width")
        if image is None and tiny and takes_image(pipe):
            from ..testing import reference_image

            image = reference_image(width=width, height=height)
        options = CallOptions(steps=args.steps, height=height, width=width, num_frames=args.frames)
        item = Item(pipe, args.prompt, words, image, args.seed, options)
        kwargs = item.call_kwargs()  # checks the image, the size and the prompt
        # a pipeline that sizes the video itself (HunyuanVideo-1.5 I2V) takes no height / width: keep the asked ones
        item.options = replace(options, height=kwargs.get("height", height), width=kwargs.get("width", width))
        return item
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError, KeyError,
            TypeError) as exc:
        raise UsageError(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)) from exc


# -- recording and reporting ------------------------------------------------------------------------------------

def tracer(item: Item, store: Any, maps: bool, edit: Any = None, score: str | None = None):
    """The `fg.trace` of one recorded call of `item` (built, not entered: a bad edit raises here, before sampling);
    the default statistics, and the one `score` rests on when it is not among them."""
    import fglens as fg
    from fglens.trace import DEFAULT_STATS

    stats = (*DEFAULT_STATS, *SCORE_STATS.get(score or "", ()))
    return fg.trace(item.pipe, record=fg.Record(words=item.words, maps=maps, stats=stats), edit=edit, store=store)


def sample(trace: Any, item: Item, output_type: str = "latent"):
    """Run `item` once inside `trace`: (the run's Dataset, the pipeline's output)."""
    with trace as run:
        output = item.pipe(**item.call_kwargs(output_type))
    return run.dataset, output


def layer_table(ds) -> str:
    """The per-layer means (over steps, words and frames of the cond branch) of the statistics a run recorded.

    Example:
        >>> import fglens as fg
        >>> print(layer_table(fg.testing.tiny_run("wan", words=("dog",), maps=False)))  # doctest: +ELLIPSIS
          layer       word_mass  morans_i  similarity  text_share  entropy
          blocks.0 ...
    """
    names = [v for v in TABLE_VARS if v in ds.data_vars]
    width = max([8, *(len(str(layer)) for layer in ds.layer.values)]) + 2
    cond = ds.sel(branch="cond")
    lines = [f"  {'layer':<{width}}" + "".join(f"{v:>{max(len(v), 8) + 2}}" for v in names)]
    for layer in ds.layer.values:
        row = cond.sel(layer=layer)
        cells = []
        for v in names:
            value = float(row[v].mean(skipna=True)) if row[v].notnull().any() else float("nan")
            cells.append(f"{value:>{max(len(v), 8) + 2}.4f}")
        lines.append(f"  {str(layer):<{width}}" + "".join(cells))
    return "\n".join(lines)


def describe(ds, what: str) -> str:
    """A two-line header: what was recorded, and the run's dims."""
    from ..store import decode_attrs

    attrs = decode_attrs(dict(ds.attrs))
    grid = tuple(attrs.get("grid") or ())
    return (f"fglens {what}: traced {attrs.get('pipeline_class') or attrs.get('model_class')} on "
            f"{attrs.get('prompt')!r} (seed {attrs.get('seed')})\n"
            f"  steps {ds.sizes['step']}, layers {ds.sizes['layer']}, words {[str(w) for w in ds.word.values]}, "
            f"latent grid (frame, y, x) = {grid}")


def find_weak(ds, args: argparse.Namespace):
    """fg.find_weak_layers on a run with the command's options; its warnings are printed as notes."""
    import warnings

    import fglens as fg

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        weak = fg.find_weak_layers(ds, score=args.score, z=args.z, exclude_edges=args.exclude_edges,
                                   top_k=args.top_k)
    for warning in caught:
        print(f"note: {warning.message}")
    return weak


def weak_report(weak) -> str:
    """The layers found, one line each, then the rule's per-layer table."""
    p = weak.params
    names = lambda layers: ", ".join(layers) if layers else "none"  # noqa: E731
    return (f"semantic-weak layers (robust z of {p['score']} < {p['z']}, edges excluded): {names(weak.weak)}\n"
            f"responsive layers (best first): {names(weak.responsive)}\n\n{weak.summary()}")
