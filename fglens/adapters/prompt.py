"""The prompt as the model saw it: tokens captured from the pipeline's own text encoding.

`PromptCapture` wraps a few pipeline methods (instance attributes, removed on close):

* `check_inputs`, which every diffusers pipeline calls once at the start of `__call__`: a new pipeline call
  (one run) begins, with the prompt texts and, for image-to-video pipelines, the reference `image`;
* `encode_prompt`: the reference `image` where `check_inputs` does not see it (HunyuanVideo I2V encodes the
  prompt together with the image; the first image of a call is the user's, a later black one the negative's);
* `prepare_latents`: the seed of the generator;
* the adapter's prompt hooks (`Adapter.install_prompt_hooks`), which report each prompt encoding in the
  order the pipeline makes them: the prompt first, then the negative prompt.

Token ids are read on the host once per encoding, before sampling; so is the reference image, kept as a small
uint8 array (`fglens.store.image.reference_thumbnail`) when the capture is asked to keep it. Words are located
among the tokens the encoder really received, whatever cleaning, templating or truncation the pipeline applied.
"""

from __future__ import annotations

import inspect
import string
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

_WORD_START = ("▁", "Ġ")  # sentencepiece / byte-level BPE word-start markers
_WORD_END = "</w>"  # CLIP BPE word-end marker
_PUNCT = set(string.punctuation) | {"“", "”", "’", "‘"}


@dataclass
class PromptTokens:
    """Tokens of one prompt as they sit in the model's text keys (batch item 0).

    Attributes:
        text: the prompt string, when known.
        tokens: token strings, position 0 = the first text key of the attention site.
        n_real: tokens before the padding.
        extra: adapter-specific facts, e.g. the number of image-derived context tokens.
    """

    text: str | None
    tokens: list[str]
    n_real: int
    extra: dict[str, Any] = field(default_factory=dict)

    def words(self) -> list[tuple[str, list[int]]]:
        """The prompt's words in order, each with the positions of its tokens."""
        out: list[tuple[str, list[int]]] = []
        current: tuple[str, list[int]] | None = None
        ended = True
        for i, tok in enumerate(self.tokens[: self.n_real]):
            if tok.startswith("<") and tok.endswith(">") and tok != _WORD_END:
                current, ended = None, True  # special token
                continue
            starts = tok.startswith(_WORD_START) or ended
            ended = tok.endswith(_WORD_END)
            piece = tok.lstrip("".join(_WORD_START)).removesuffix(_WORD_END).replace("Ċ", "").replace("ĉ", "")
            if not piece.strip():
                current, ended = None, True  # whitespace / newline tokens
                continue
            if all(c in _PUNCT for c in piece):
                current, ended = None, True
                continue
            if starts or current is None:
                current = (piece.lower(), [i])
                out.append(current)
            else:
                current[1].append(i)
                out[-1] = current = (current[0] + piece.lower(), current[1])
        return out

    def locate(self, words: Sequence[str] | None, missing_ok: bool = False) -> dict[str, list[int]]:
        """Token positions of each word (a phrase matches consecutive words); every word when None. A word not
        among the tokens is an error, or left out with `missing_ok` (a negative prompt need not hold the words)."""
        found = self.words()
        if words is None:
            out: dict[str, list[int]] = {}
            for w, pos in found:
                out.setdefault(w, []).extend(pos)
            return out
        vocab = [w for w, _ in found]
        located: dict[str, list[int]] = {}
        for query in words:
            parts = [p.strip("".join(_PUNCT)) for p in query.lower().split()]
            positions: list[int] = []
            for start in range(len(found) - len(parts) + 1):
                if [w for w, _ in found[start : start + len(parts)]] == parts:
                    for _, pos in found[start : start + len(parts)]:
                        positions.extend(pos)
            if not positions:
                if missing_ok:
                    continue
                raise ValueError(self._missing(query, parts, vocab))
            located[query] = positions
        return located

    def _missing(self, query: str, parts: list[str], vocab: list[str]) -> str:
        """One sentence on a word not among the tokens: cut off by the encoder's token limit, or not in the prompt."""
        known = list(dict.fromkeys(vocab))
        listed = ", ".join(known[:_LISTED]) + (f", ... ({len(known) - _LISTED} more)" if len(known) > _LISTED else "")
        text = self.text or ""
        words = [w.strip("".join(_PUNCT)) for w in text.lower().split()]
        in_text = any(words[i : i + len(parts)] == parts for i in range(len(words) - len(parts) + 1))
        if in_text and known:
            return (f"word {query!r} is in the prompt but past the text encoder's limit of {self.n_real} tokens: the "
                    f"pipeline truncated the prompt after {' '.join(vocab[-3:])!r}, so the model never sees it; "
                    f"shorten the prompt or follow a word before the cut")
        shown = text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
        return f"word {query!r} is not in the prompt {shown!r}; the prompt's words are: {listed}"


#: how much of a prompt an error message quotes: the first words, the first characters
_LISTED, _SHOWN = 40, 200


@dataclass
class PipelineCall:
    """What fglens learns about one pipeline call before sampling starts."""

    prompt_text: str | None = None
    negative_text: str | None = None
    prompt_embeds_given: bool = False
    seed: int | None = None
    encodings: list[PromptTokens] = field(default_factory=list)
    image: Any = None  # the reference image as a run keeps it: (image_y, image_x, 3) uint8, or None
    image_seen: bool = False  # the call's `image` argument was seen (even if it could not be kept)
    #: every prompt of a call given a list of prompts (one per batch item), and of the negative prompt
    prompt_texts: list[str] = field(default_factory=list)
    negative_texts: list[str] = field(default_factory=list)
    #: per encoding, the tokens of each of its rows (one per prompt of the list; `encodings` holds row 0)
    rows: list[list[PromptTokens]] = field(default_factory=list)
    #: the seed of each generator when the call was given a list of generators (one per video)
    seeds: list[int] = field(default_factory=list)

    def prompts(self) -> int:
        """How many prompts the call encoded (1 for a single prompt)."""
        return max([len(self.prompt_texts), *(len(r) for r in self.rows), 1])

    def item(self, k: int, items: int) -> PipelineCall:
        """The call as batch item `k` of `items` (per CFG branch) saw it: its own prompt and negative prompt, tokens
        and seed. Pipelines repeat each prompt for its videos (``num_videos_per_prompt``) next to each other, so
        item `k` is the video ``k % per_prompt`` of prompt ``k // per_prompt``."""
        n = self.prompts()
        if items % n:
            raise ValueError(f"this pipeline call encoded {n} prompts but its batch holds {items} items per CFG "
                             "branch, not a multiple of it: fglens cannot tell which prompt each item follows")
        p = k // (items // n)
        pick = lambda values, default: values[p] if len(values) == n else default  # noqa: E731
        return PipelineCall(
            prompt_text=pick(self.prompt_texts, self.prompt_text),
            negative_text=pick(self.negative_texts, self.negative_text),
            prompt_embeds_given=self.prompt_embeds_given,
            seed=self.seeds[k] if len(self.seeds) == items else self.seed,
            encodings=[rows[p] if len(rows) == n else enc
                       for enc, rows in zip(self.encodings, self._rows(), strict=True)],
            image=self.image, image_seen=self.image_seen,
        )

    def _rows(self) -> list[list[PromptTokens]]:
        return self.rows if len(self.rows) == len(self.encodings) else [[e] for e in self.encodings]

    def widest(self, tokens: PromptTokens | None) -> PromptTokens | None:
        """`tokens` (an encoding's row 0) with the largest real length among that encoding's rows: the text keys of
        a batch reach that far (a longer prompt's real keys lie after row 0's)."""
        for enc, rows in zip(self.encodings, self._rows(), strict=True):
            if enc is tokens and rows:
                return replace(tokens, n_real=max(r.n_real for r in rows))
        return tokens

    @property
    def prompt(self) -> PromptTokens | None:
        if self.prompt_embeds_given:
            return None
        return self.encodings[0] if self.encodings else None

    @property
    def negative(self) -> PromptTokens | None:
        rest = self.encodings if self.prompt_embeds_given else self.encodings[1:]
        return rest[0] if rest else None

    def by_branch(self) -> dict[str, PromptTokens | None]:
        return {"cond": self.prompt, "uncond": self.negative}

    def n_real(self) -> dict[str, int | None]:
        return {b: (t.n_real if t else None) for b, t in self.by_branch().items()}


def words_for(call: PipelineCall | None, words: Sequence[str] | Mapping[str, Sequence[int]] | None):
    """Resolve a Record's `words` against a pipeline call into ``{label: positions}``."""
    if isinstance(words, Mapping):
        return {str(k): [int(p) for p in v] for k, v in words.items()}
    if call is None or call.prompt is None:
        if words is None:
            return {}
        raise ValueError(
            "cannot locate words without the prompt's tokens: trace the pipeline (not the bare transformer) "
            "and let it encode the prompt, or give token positions: Record(words={'dog': [positions]}), which "
            "interventions use too"
        )
    return call.prompt.locate(words)


class PromptCapture:
    """Captures the prompt tokens and the seed of each pipeline call.

    `take()` hands over the call seen since the last `take()` (None if no new pipeline call started), so the
    tracer starts a new run at the first transformer forward of each pipeline call. With `keep_image`, a function
    of the call's `image` argument (the tracer gives `fglens.store.image.reference_thumbnail`), the reference image
    is kept too, as that function returns it (`PipelineCall.image`).
    """

    def __init__(self, pipe: Any, adapter: Any, keep_image: Callable[[Any], Any] | None = None):
        self.pipe = pipe
        self.adapter = adapter
        self.keep_image = keep_image
        self.pending: PipelineCall | None = None
        self._removers: list[Callable[[], None]] = []

    def take(self) -> PipelineCall | None:
        call, self.pending = self.pending, None
        return call

    def add_encoding(self, tokens: PromptTokens, rows: list[PromptTokens] | None = None) -> None:
        """Called by the adapter's prompt hooks for each prompt encoding, in the pipeline's order: the tokens of row 0
        and, for a batch of several prompts, those of every row."""
        if self.pending is not None:
            self.pending.encodings.append(tokens)
            self.pending.rows.append(list(rows) if rows else [tokens])

    def install(self) -> None:
        self.wrap("check_inputs", self._around_check_inputs)
        if self.keep_image:
            self.wrap("encode_prompt", self._around_encode_prompt)
        self.wrap("prepare_latents", self._around_prepare_latents)
        self._removers.extend(self.adapter.install_prompt_hooks(self.pipe, self))

    def remove(self) -> None:
        while self._removers:
            self._removers.pop()()

    def wrap(self, name: str, around: Callable) -> None:
        """Wrap `pipe.<name>` with ``around(original, *args, **kwargs)`` until `remove()`."""
        original = getattr(self.pipe, name, None)
        if original is None:
            return
        had_own = name in self.pipe.__dict__

        def wrapper(*args, **kwargs):
            return around(original, *args, **kwargs)

        setattr(self.pipe, name, wrapper)

        def restore() -> None:
            if had_own:
                setattr(self.pipe, name, original)
            else:
                self.pipe.__dict__.pop(name, None)

        self._removers.append(restore)

    def tokens(self, ids: torch.Tensor, mask: torch.Tensor | None, texts: Sequence[str | None] = (None,),
               **extra) -> list[PromptTokens]:
        """PromptTokens for each row of token ids [B, T] (host read: once per encoding, before sampling); `texts`
        names the rows (one text for all of them, or one per row)."""
        tokenizer = getattr(self.pipe, "tokenizer", None)
        out = []
        for i, row in enumerate(ids.tolist()):
            n_real = int(mask[i].sum()) if mask is not None else len(row)
            toks = tokenizer.convert_ids_to_tokens(row) if tokenizer is not None else [str(t) for t in row]
            out.append(PromptTokens(texts[i] if len(texts) == len(ids) else texts[0], toks, n_real, dict(extra)))
        return out

    def _around_check_inputs(self, original, *args, **kwargs):
        bound = _bind(original, args, kwargs)
        first = lambda v: v[0] if isinstance(v, (list, tuple)) and v else v  # noqa: E731
        every = lambda v: [str(t) for t in v] if isinstance(v, (list, tuple)) else []  # noqa: E731
        self.pending = PipelineCall(
            prompt_text=first(bound.get("prompt")),
            negative_text=first(bound.get("negative_prompt")),
            prompt_embeds_given=bound.get("prompt_embeds") is not None,
            prompt_texts=every(bound.get("prompt")),
            negative_texts=every(bound.get("negative_prompt")),
        )
        out = original(*args, **kwargs)  # the pipeline's own checks first: its error, not ours, for a bad call
        self._see_image(bound)
        return out

    def _around_encode_prompt(self, original, *args, **kwargs):
        self._see_image(_bind(original, args, kwargs))
        return original(*args, **kwargs)

    def _see_image(self, bound: Mapping[str, Any]) -> None:
        """Keep the first `image` argument of the pending call as a small uint8 array (host read, before sampling).

        An image fglens cannot convert never stops the pipeline call: the run then keeps no image, with a warning.
        """
        call = self.pending
        if not self.keep_image or call is None or call.image_seen or bound.get("image") is None:
            return
        call.image_seen = True
        try:
            call.image = self.keep_image(bound["image"])
        except (TypeError, ValueError) as exc:
            warnings.warn(f"the run keeps no reference image: {exc}", RuntimeWarning, stacklevel=4)

    def _around_prepare_latents(self, original, *args, **kwargs):
        generator = kwargs.get("generator")
        if generator is None:
            generator = next((a for a in args if isinstance(a, (torch.Generator, list))), None)
        generators = generator
        if isinstance(generator, list) and generator:
            generator = generator[0]
        if self.pending is not None and isinstance(generators, list):
            self.pending.seeds = [g.initial_seed() for g in generators if isinstance(g, torch.Generator)]
        if self.pending is not None and isinstance(generator, torch.Generator):
            self.pending.seed = generator.initial_seed()
        return original(*args, **kwargs)


def _bind(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    try:
        return dict(inspect.signature(fn).bind_partial(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        return dict(kwargs)


def _encoder_mask(ids: torch.Tensor, args: tuple, kwargs: dict) -> Any:
    """The attention mask an encoder call was given (its real tokens), or None."""
    return kwargs.get("attention_mask", args[1] if len(args) > 1 else None)


def text_encoder_hook(capture: PromptCapture, encoder_attr: str = "text_encoder",
                      mask_of: Callable[[torch.Tensor, tuple, dict], Any] = _encoder_mask) -> list[Callable[[], None]]:
    """Default prompt hook: each call of `pipe.<encoder_attr>` is one encoding (T5-style encoders). `mask_of(ids,
    args, kwargs)` gives the call's real tokens (default: the mask it was given; a pipeline that encodes without
    one, e.g. LTX-Video, passes ``ids != pad``)."""
    encoder = getattr(capture.pipe, encoder_attr, None)
    if not isinstance(encoder, torch.nn.Module):
        return []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = mask_of(ids, args, kwargs) if isinstance(ids, torch.Tensor) else None
        if isinstance(ids, torch.Tensor) and capture.pending is not None:
            call = capture.pending
            index = len(call.encodings) + (1 if call.prompt_embeds_given else 0)
            texts = [call.prompt_texts or [call.prompt_text], call.negative_texts or [call.negative_text]]
            rows = texts[index] if index < 2 else [None]
            if index == 1 and rows == [None]:
                rows = [""]  # diffusers' default negative prompt
            tokens = capture.tokens(ids, mask if isinstance(mask, torch.Tensor) else None, rows)
            capture.add_encoding(tokens[0], tokens)

    handle = encoder.register_forward_pre_hook(hook, with_kwargs=True)
    return [handle.remove]
