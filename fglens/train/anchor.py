"""The ``anchor`` loss's term: raise the trained layers' attention mass of each anchored word inside its region.

For an item with words w (the keys of its masks), each with text-key columns K_w (the word's tokens, as the pipeline
tokenizes the prompt: `word_columns`) and region weights a_w[n] on the video tokens (`region_weights`), the term of
one trained layer is

    A = mean_w [ −Σ_n a_w[n] · log m_w[n] / Σ_n a_w[n] ],   m_w[n] = (1/H) Σ_h Σ_{j ∈ K_w} p_h(n, j)

where p_h(n, ·) is head h's softmax of video query n over the text keys (the model's own attention, with gradients:
`fglens.train.probe.log_text_distribution`); the loss's term is A averaged over the trained layers
(`anchor_term`). m_w[n] is the word's share of query n's text attention, the quantity fglens records as the word
map (``fg.Record(words=...)``, head mean); −log m is 0 when all of a region's attention goes to the word and grows
without bound as it leaves it, so the term pushes hardest where the word is least attended, and never rewards
mass on the word outside its region.

Region weights: a pixel mask (``[H, W]``, the same in every frame, or ``[F, H, W]``) becomes the fraction of each
video token's pixels it covers. A token covers a block of ``H / y × W / x`` pixels in the frames of its latent
frames: Wan's causal VAE encodes pixel frame 0 alone into latent frame 0 and frames ``1 + (l − 1)·s … l·s`` into
latent frame l (s its temporal factor), and a token frame takes ``p_t`` latent frames (the patch size). Weights, not
a threshold: an object smaller than half a token keeps a region, and the term is continuous in the mask.

Example:
    >>> mask = np.zeros((5, 32, 48), bool); mask[:, :16, :24] = True    # 16 x 24 px at the top left; tokens of 16
    >>> region_weights(mask, (5, 32, 48), (2, 2, 3), temporal=4, patch_t=1)[0]
    tensor([[1.0000, 0.5000, 0.0000],
            [0.0000, 0.0000, 0.0000]])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.call import AttentionCall
from .probe import log_text_distribution, real_columns


def token_grid(pipe: Any, video_shape: Sequence[int]) -> tuple[int, int, int]:
    """The video-token grid ``(frames, y, x)`` a Wan pipeline's transformer sees for a video of ``(F, H, W, ...)``:
    ``(F − 1) / s_t + 1`` latent frames, ``H / s``, ``W / s`` latent pixels (the VAE's factors), over the patch size.

    Example:
        >>> import fglens as fg
        >>> token_grid(fg.testing.tiny_wan_i2v_pipeline(), (5, 32, 48))
        (2, 2, 3)
    """
    frames, height, width = (int(v) for v in video_shape[:3])
    s_t, s = int(pipe.vae_scale_factor_temporal), int(pipe.vae_scale_factor_spatial)
    p_t, p_h, p_w = pipe.transformer.config.patch_size
    latent_frames = (frames - 1) // s_t + 1
    return latent_frames // p_t, height // s // p_h, width // s // p_w


def region_weights(mask: np.ndarray, video_shape: Sequence[int], grid: Sequence[int], *, temporal: int,
                   patch_t: int = 1) -> torch.Tensor:
    """A pixel mask (bool or in [0, 1]; ``[H, W]`` or ``[F, H, W]``) as weights ``[f, y, x]`` on the token `grid`:
    the fraction of each token's pixels it covers (see the module). `video_shape` is the video's ``(F, H, W, ...)``;
    `temporal` the VAE's temporal factor, `patch_t` the transformer's temporal patch size. A mask of the wrong
    shape, or with values outside [0, 1], is an error.

    Example:
        >>> region_weights(np.ones((32, 48)), (5, 32, 48), (2, 2, 3), temporal=4).sum().item()
        12.0
    """
    frames, height, width = (int(v) for v in video_shape[:3])
    f, y, x = (int(v) for v in grid)
    m = np.asarray(mask)
    if m.shape not in ((height, width), (frames, height, width)):
        raise ValueError(f"a mask must be [H, W] = {[height, width]} or [F, H, W] = {[frames, height, width]} (the "
                         f"video's size); got {list(m.shape)}")
    m = m.astype(np.float64)
    if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ValueError(f"a mask must be boolean or in [0, 1]; got values in [{m.min()}, {m.max()}]")
    t = torch.from_numpy(m).float()
    if t.ndim == 2:
        t = t.expand(f, height, width)
    else:  # pixel frames -> latent frames (causal VAE: frame 0 alone, then groups of `temporal`) -> token frames
        groups = [[0]] + [list(range(1 + (i - 1) * temporal, 1 + i * temporal)) for i in range(1, f * patch_t)]
        if groups[-1][-1] != frames - 1:
            raise ValueError(f"{frames} frames do not make {f * patch_t} latent frames of {temporal}")
        latent = torch.stack([t[g].mean(0) for g in groups])
        t = latent.view(f, patch_t, height, width).mean(1)
    return F.adaptive_avg_pool2d(t[:, None], (y, x))[:, 0]


def word_columns(pipe: Any, prompt: str, words: Sequence[str]) -> tuple[dict[str, list[int]], int]:
    """The text-key columns of each word (a phrase: its words' tokens) and the prompt's real length (tokens before
    the padding), from the prompt as a Wan pipeline tokenizes it (``prompt_clean``, then its tokenizer to 512). A word
    not in the prompt, or past the tokenizer's limit, is an error that lists the prompt's words.

    Example:
        >>> import fglens as fg
        >>> word_columns(fg.testing.tiny_wan_i2v_pipeline(), "a dog jumps over the red fence", ["dog", "red fence"])
        ({'dog': [1], 'red fence': [5, 6]}, 8)
    """
    from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

    from ..adapters.prompt import PromptTokens

    tokens = pipe.tokenizer(prompt_clean(prompt), padding="max_length", max_length=512, truncation=True,
                            add_special_tokens=True, return_attention_mask=True)
    ids, n_real = tokens["input_ids"], int(sum(tokens["attention_mask"]))
    located = PromptTokens(prompt, pipe.tokenizer.convert_ids_to_tokens(ids), n_real).locate(list(words))
    return located, n_real


def log_word_mass(call: AttentionCall, columns: Mapping[str, Sequence[int]], n_real: int | None = None
                  ) -> dict[str, torch.Tensor]:
    """log m_w ``[B, N]`` of each word: the log of its share of each video query's text attention, mean over heads
    (the module's m_w), from an unedited call, with gradients, in float32. `n_real`: `real_columns` (Wan's identical
    pad keys as one column, exact for the word's mass).

    Example:
        >>> import fglens as fg
        >>> from fglens.trace.tracer import Trace
        >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
        >>> probe = fg.train.TextProbe(["blocks.1"])
        >>> with Trace(pipe, observers=[probe]):
        ...     _ = pipe(**fg.testing.tiny_call_kwargs("wan", steps=1))
        >>> tuple(log_word_mass(probe.calls["blocks.1"], {"dog": [1]})["dog"].shape)
        (1, 12)
    """
    logp = log_text_distribution(call, n_real)  # [B, H, N, T]
    heads = logp.shape[1]
    return {w: torch.logsumexp(torch.logsumexp(logp[..., list(cols)], -1), 1) - math.log(heads)
            for w, cols in columns.items()}


#: the forms of the anchor term: ``mass`` (raise the word's share of the text attention inside its region) and
#: ``map`` (raise the share of the word's map that falls inside its region, whatever the word's total)
ANCHOR_FORMS = ("mass", "map")


def anchor_term(calls: Mapping[str, AttentionCall], columns: Mapping[str, Sequence[int]],
                weights: Mapping[str, torch.Tensor], n_real: int | None = None, form: str = "mass") -> torch.Tensor:
    """The anchor term (the module's A, averaged over the layers of `calls`): per word, the mean of −log m_w over
    the video queries weighted by its region `weights` (``[f, y, x]`` or ``[N]`` per word, `region_weights`), then
    the mean over batch items and words; `n_real` the prompt's real length (pad keys collapsed where alike).

    ``form="map"``: instead, per word, −log of the share of the word's map that falls inside its region,
    −log(Σ_n a_w[n] m_w[n] / Σ_n m_w[n]). It is 0 when all of the word's attention sits inside the region and does
    not depend on the word's total mass, so it localises the word without making it take the layer's attention
    (which ``mass`` does, docs/concepts.md).

    Example:
        >>> import fglens as fg
        >>> from fglens.trace.tracer import Trace
        >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
        >>> probe = fg.train.TextProbe(["blocks.1"])
        >>> with Trace(pipe, observers=[probe]):
        ...     _ = pipe(**fg.testing.tiny_call_kwargs("wan", steps=1))
        >>> float(anchor_term(probe.calls, {"dog": [1]}, {"dog": torch.ones(12)})) > 0
        True
    """
    if form not in ANCHOR_FORMS:
        raise ValueError(f"form must be one of {ANCHOR_FORMS}; got {form!r}")
    if not calls:
        raise RuntimeError("no trained layer's text attention ran in this forward")
    per_layer = []
    for layer, call in calls.items():
        keep = real_columns(call.key, [n_real]) if n_real is not None and call.site.kind == "text" else None
        logm = log_word_mass(call, columns, keep)
        terms = []
        for w, lm in logm.items():
            a = weights[w].reshape(-1).to(lm)
            if a.numel() != lm.shape[-1]:
                raise ValueError(f"{layer}: word {w!r}'s region has {a.numel()} tokens; the call has "
                                 f"{lm.shape[-1]} video queries")
            if form == "mass":
                terms.append(-(lm * a).sum(-1).mean() / a.sum())
            else:  # −log of the region's share of the word's map: log Σ m − log Σ a·m, in log space
                inside = torch.logsumexp(lm + a.clamp_min(torch.finfo(a.dtype).tiny).log(), -1)
                terms.append((torch.logsumexp(lm, -1) - inside).mean())
        per_layer.append(torch.stack(terms).mean())
    return torch.stack(per_layer).mean()


__all__ = ["ANCHOR_FORMS", "anchor_term", "log_word_mass", "region_weights", "token_grid", "word_columns"]
