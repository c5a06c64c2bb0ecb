"""The prompt as the model saw it: token ids captured from the pipeline's own text encoder call.

`PromptCapture` wraps `pipe.encode_prompt` (an instance attribute, removed on close) and puts a forward
pre-hook on `pipe.text_encoder`. Each pipeline call thus yields the exact token ids and attention mask
of the prompt and of the negative prompt, read on the host once per pipeline call, before sampling.
Words are then located among the tokens the encoder really received, whatever cleaning or truncation
the pipeline applied.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

_WORD_START = ("▁", "Ġ")  # sentencepiece / byte-level BPE word-start markers
_WORD_END = "</w>"  # CLIP BPE word-end marker
_PUNCT = set(string.punctuation) | {"“", "”", "’", "‘"}


@dataclass
class PromptTokens:
    """Tokens of one prompt as the text encoder received them (batch item 0)."""

    text: str | None
    tokens: list[str]
    n_real: int  # tokens before the padding (the attention-mask length)

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
            piece = tok.lstrip("".join(_WORD_START)).removesuffix(_WORD_END)
            if not piece:
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

    def locate(self, words: Sequence[str] | None) -> dict[str, list[int]]:
        """Token positions of each word (a phrase matches consecutive words); every word when None."""
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
                raise ValueError(
                    f"word {query!r} is not in the prompt {self.text!r}; the prompt's words are: "
                    f"{', '.join(dict.fromkeys(vocab))}"
                )
            located[query] = positions
        return located


@dataclass
class PipelineCall:
    """What fglens learns about one pipeline call before sampling starts."""

    prompt: PromptTokens | None = None
    negative: PromptTokens | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def n_real(self) -> dict[str, int | None]:
        return {
            "cond": self.prompt.n_real if self.prompt else None,
            "uncond": self.negative.n_real if self.negative else None,
        }


def words_for(call: PipelineCall | None, words: Sequence[str] | Mapping[str, Sequence[int]] | None):
    """Resolve a Record's `words` against a pipeline call into ``{label: positions}``."""
    if isinstance(words, Mapping):
        return {str(k): [int(p) for p in v] for k, v in words.items()}
    if call is None or call.prompt is None:
        if words is None:
            return {}
        raise ValueError(
            "cannot locate words without the prompt's tokens: trace the pipeline (not the bare transformer) and "
            "let it encode the prompt, or pass Record(words={'dog': [token positions]})"
        )
    return call.prompt.locate(words)


class PromptCapture:
    """Captures the prompt tokens and the seed of each pipeline call.

    `take()` hands over the call seen since the last `take()` (None if the pipeline has not encoded a
    new prompt), so the tracer starts a new run at the first transformer forward of each pipeline call.
    """

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.pending: PipelineCall | None = None
        self._captured: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._removers: list[Callable[[], None]] = []

    def take(self) -> PipelineCall | None:
        call, self.pending = self.pending, None
        return call

    def install(self) -> None:
        encoder = getattr(self.pipe, "text_encoder", None)
        if isinstance(encoder, torch.nn.Module):
            handle = encoder.register_forward_pre_hook(self._on_encoder, with_kwargs=True)
            self._removers.append(handle.remove)
        self._wrap("encode_prompt", self._around_encode)
        self._wrap("prepare_latents", self._around_prepare_latents)

    def remove(self) -> None:
        while self._removers:
            self._removers.pop()()

    def _wrap(self, name: str, around: Callable) -> None:
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

    def _on_encoder(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if isinstance(ids, torch.Tensor):
            self._captured.append((ids, mask if isinstance(mask, torch.Tensor) else None))

    def _tokens(self, text: Any, ids: torch.Tensor, mask: torch.Tensor | None) -> PromptTokens:
        tokenizer = getattr(self.pipe, "tokenizer", None)
        row = ids[0].tolist()  # host read: once per pipeline call, before sampling
        n_real = int(mask[0].sum()) if mask is not None else len(row)
        tokens = tokenizer.convert_ids_to_tokens(row) if tokenizer is not None else [str(i) for i in row]
        return PromptTokens(text if isinstance(text, str) else None, tokens, n_real)

    def _around_encode(self, original, *args, **kwargs):
        self._captured = []
        out = original(*args, **kwargs)
        prompt = kwargs.get("prompt", args[0] if args else None)
        negative = kwargs.get("negative_prompt", args[1] if len(args) > 1 else None)
        captured = list(self._captured)
        call = PipelineCall()
        if kwargs.get("prompt_embeds") is None and captured:
            call.prompt = self._tokens(prompt if not isinstance(prompt, list) else prompt[0], *captured.pop(0))
        if kwargs.get("negative_prompt_embeds") is None and captured:
            neg = negative[0] if isinstance(negative, list) else negative
            call.negative = self._tokens(neg or "", *captured.pop(0))
        self.pending = call
        return out

    def _around_prepare_latents(self, original, *args, **kwargs):
        generator = kwargs.get("generator")
        if generator is None:
            generator = next((a for a in args if isinstance(a, torch.Generator)), None)
        if isinstance(generator, list) and generator:
            generator = generator[0]
        if self.pending is not None and isinstance(generator, torch.Generator):
            self.pending.seed = generator.initial_seed()
        return original(*args, **kwargs)
