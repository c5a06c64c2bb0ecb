"""`fg.Record`: what to record; and the recorder that reduces each attention call on the device.

Per text call the recorder recomputes the exact text probabilities from the call's own queries and keys
(identical Wan pad keys collapsed into one column), in chunks of whole frames with a float32 softmax,
reduces inside the chunk (head mean, per-word maps, entropy, similarity) and keeps only O(N·W) per
layer. Nothing is read on the host: results stay device tensors until the forward ends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import stats
from ..adapters.base import Site
from ..core.call import AttentionCall, ForwardContext
from ..core.probs import (
    bias_logits,
    collapse_padding,
    default_scale,
    frame_chunks,
    frames_per_chunk,
    key_bias,
    key_logits,
    logsumexp_over_keys,
    mask_bias,
    open_keys,
    padding_is_uniform,
    probs_from_dots,
    qk_dots,
    rest_scale,
    row_logsumexp,
)
from ..core.scope import BRANCHES
from ..stats.table import STATISTICS, recordable
from ..stats.table import maps as map_variables
from ..store.schema import SKIPPED

#: every statistic a Record can ask for, and the kinds of site that provide it (declared in `fglens.stats.table`)
STATS: dict[str, frozenset[str]] = {name: s.kinds for name, s in recordable().items()}
DEFAULT_STATS = tuple(name for name, s in recordable().items() if s.default)
#: the variables that need the words' token positions (per-word statistics and the maps)
WORD_STATS = tuple(name for name, s in STATISTICS.items() if s.per_word)


@dataclass
class Record:
    """What a trace records.

    Args:
        words: words of the prompt to follow (located through the pipeline's own tokenizer), a mapping
            ``{label: [token positions]}`` for a bare transformer, or None for every word of the prompt. Words
            are located in each prompt: a call given a list of prompts (or several videos per prompt) records one
            run per batch item, each with its own prompt's word positions (a word missing from one of the prompts
            is an error before sampling).
        stats: statistics to record, from ``fglens.trace.record.STATS``; `ref_mass` is opt-in. Statistics that
            an architecture has no site for are left out of its runs (`text_share` needs Wan's separate image
            attention, `text_mass` / `image_mass` a joint softmax, the opt-in `audio_entropy` / `audio_position`
            an `audio` site: LTX-2's video-to-audio cross-attention).
        maps: also store per-token maps ``(branch, step, layer, word, frame, y, x)``: True for the word attention
            maps ``word_map``, or the names of the maps to keep, from ``("word_map", "similarity_map")`` (the
            similarity map S_w of each video token).
        layers: block indices (``3``) or canonical names (``"blocks.3"``); None for all.
        steps: step indices to record; None for all.
        branches: CFG branches to record, from ``("cond", "uncond")``.
        chunk_bytes: memory budget of one chunk of recomputed probabilities.
        image: keep the pipeline call's reference image with the run (``reference_image (image_y, image_x,
            channel)``, RGB uint8, long side at most 256 px, written once) when the call has one (image-to-video
            pipelines), so figures of the stored run can overlay it; False keeps none.

    Example:
        >>> import fglens as fg
        >>> fg.Record(words=["dog"], layers=[0, 1]).stats
        ('word_mass', 'morans_i', 'similarity', 'text_share', 'text_mass', 'image_mass', 'entropy')
    """

    words: Sequence[str] | Mapping[str, Sequence[int]] | None = None
    stats: Sequence[str] = DEFAULT_STATS
    maps: bool | Sequence[str] = False
    layers: Sequence[int | str] | None = None
    steps: Sequence[int] | None = None
    branches: Sequence[str] = ("cond",)
    chunk_bytes: int = 256 << 20
    image: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stats, str):
            self.stats = (self.stats,)
        self.stats = tuple(self.stats)
        unknown = [s for s in self.stats if s not in STATS]
        if unknown:
            raise ValueError(f"unknown statistic(s) {unknown}; known: {sorted(STATS)}")
        if isinstance(self.branches, str):
            self.branches = (self.branches,)
        self.branches = tuple(self.branches)
        bad = [b for b in self.branches if b not in BRANCHES]
        if bad or not self.branches:
            raise ValueError(f"unknown branch(es) {bad or self.branches}; accepted: {BRANCHES}")
        if isinstance(self.words, str):
            self.words = [self.words]
        self._check_words()
        self._check_maps()
        if isinstance(self.steps, int):
            self.steps = (self.steps,)
        if self.steps is not None:
            from ..core.scope import indices

            self.steps = indices(self.steps, "Record steps", "step")
        if self.chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        if not isinstance(self.image, bool):
            raise TypeError(f"image must be True (keep the reference image with the run) or False; got {self.image!r}")

    def _check_words(self) -> None:
        words = self.words
        if words is None:
            return
        if isinstance(words, Mapping):
            for label, positions in words.items():
                ok = isinstance(label, str) and not isinstance(positions, (str, bytes))
                try:
                    ok = ok and all(int(p) == p and p >= 0 for p in positions)
                except (TypeError, ValueError):
                    ok = False
                if not ok:
                    raise ValueError(f"Record words as a mapping takes {{label: [token positions]}} with str labels "
                                     f"and ints >= 0; got {label!r}: {positions!r}")
            return
        bad = [w for w in words if not isinstance(w, str) or not w.strip()]
        if bad:
            raise ValueError(f"Record words takes words of the prompt as non-empty strings (or a mapping label -> "
                             f"token positions); got {bad[0]!r}")

    def _check_maps(self) -> None:
        if isinstance(self.maps, str):
            self.maps = (self.maps,)
        if isinstance(self.maps, bool):
            return
        try:
            self.maps = tuple(self.maps)
        except TypeError:
            raise TypeError(f"maps takes True/False or names of maps from {tuple(map_variables())}; "
                            f"got {self.maps!r}") from None
        bad = [m for m in self.maps if m not in map_variables()]
        if bad:
            raise ValueError(f"unknown map(s) {bad}; Record(maps=...) takes True/False or names from "
                             f"{tuple(map_variables())}")

    @property
    def map_names(self) -> tuple[str, ...]:
        """The maps this Record keeps (``maps=True`` is the word attention maps)."""
        if isinstance(self.maps, bool):
            return ("word_map",) if self.maps else ()
        return tuple(dict.fromkeys(self.maps))

    def check_steps(self, num_steps: int | None) -> None:
        """Refuse, before the first step of a run, steps its schedule does not have (a run of 0 steps would follow)."""
        if num_steps is None or self.steps is None:
            return
        bad = [s for s in self.steps if s >= num_steps]
        if bad:
            raise ValueError(f"Record steps {', '.join(map(str, bad))} out of range: this run's schedule has "
                             f"{num_steps} steps (indices 0..{num_steps - 1})")

    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable description, stored with each run."""
        words = dict(self.words) if isinstance(self.words, Mapping) else self.words
        return {
            "words": words, "stats": list(self.stats),
            "maps": self.maps if isinstance(self.maps, bool) else list(self.maps),
            "layers": None if self.layers is None else list(self.layers),
            "steps": None if self.steps is None else list(self.steps),
            "branches": list(self.branches), "chunk_bytes": self.chunk_bytes, "image": self.image,
        }



@dataclass
class ForwardResult:
    """What one forward produced: per branch, per variable, a device tensor with a leading layer axis."""

    step: int
    num_steps: int | None
    timestep: dict[str, torch.Tensor]
    values: dict[str, dict[str, torch.Tensor]]
    checks: dict[str, torch.Tensor] = field(default_factory=dict)


class _ForwardState:
    def __init__(self, ctx: ForwardContext, items: dict[str, list[int]]):
        self.ctx = ctx
        self.items = items  # branch -> batch indices
        self.index = sorted(i for idx in items.values() for i in idx)
        self.values: dict[str, dict[int, torch.Tensor]] = {}
        self.image_out: dict[str, torch.Tensor] = {}
        self.pad_ok: torch.Tensor | None = None


class Recorder:
    """Reduces attention calls to statistics for one Record over the layers it names."""

    def __init__(self, record: Record, layers: Sequence[str], item: int | None = None):
        """`item`: record only the `item`-th batch item of each CFG branch (one run per item of a call given several
        prompts or videos); None: every item, averaged."""
        self.record = record
        self.item = item
        self.layers = list(layers)
        self._layer_pos = {name: i for i, name in enumerate(self.layers)}
        # the variables this recorder produces, and the per-token quantities they are reduced from
        self.wanted = [STATISTICS[s] for s in (*record.stats, *record.map_names)]
        self.kinds = set().union(*(s.kinds for s in self.wanted))
        self.sources = {s.source for s in self.wanted}
        self.words: dict[str, list[int]] = {}
        self.branch_words: dict[str, dict[str, list[int]]] = {}
        self.n_real: dict[str, int | None] = {}
        self._index_cache: dict[tuple[int, str, str], torch.Tensor] = {}
        self._index_of: dict[str, str] = {}
        self._absent: dict[str, list[int]] = {}
        self._fwd: _ForwardState | None = None

    # -- run and forward boundaries -----------------------------------------------------------------------
    def begin_run(self, words: Mapping[str, Sequence[int]], n_real: Mapping[str, int | None],
                  uncond_words: Mapping[str, Sequence[int]] | None = None) -> None:
        """Start a run: `words` are the labels and their token positions in the prompt; `uncond_words` their
        positions in the negative prompt, which the uncond branch attends to (a word it lacks has no columns there,
        and its statistics are NaN in that branch), or None where the positions hold for both branches (given by
        the user for a bare transformer)."""
        self.words = {w: list(p) for w, p in words.items()}
        uncond = self.words if uncond_words is None else {w: list(uncond_words.get(w, ())) for w in self.words}
        self.branch_words = {"cond": self.words, "uncond": uncond}
        # per run, on the host: which branch's word index each branch uses (one shared tensor when they agree), and
        # the words each branch's prompt lacks (NaN statistics there)
        self._index_of = {"cond": "cond", "uncond": "cond" if uncond == self.words else "uncond"}
        self._absent = {b: [i for i, p in enumerate(ws.values()) if not p] for b, ws in self.branch_words.items()}
        self.n_real = dict(n_real)
        self._index_cache: dict[tuple[int, str, str], torch.Tensor] = {}

    def begin_forward(self, ctx: ForwardContext) -> None:
        self._fwd = None
        if self.record.steps is not None and ctx.step not in self.record.steps:
            return
        items: dict[str, list[int]] = {}
        for i, branch in enumerate(ctx.branches):
            if branch in self.record.branches:
                items.setdefault(branch, []).append(i)
        if self.item is not None:
            items = {b: [idx[self.item]] for b, idx in items.items() if self.item < len(idx)}
        if items:
            self._fwd = _ForwardState(ctx, items)

    def wants(self, site: Site) -> bool:
        return self._fwd is not None and site.layer in self._layer_pos and site.kind in self.kinds

    def end_forward(self, missing: Sequence[Site] = ()) -> ForwardResult | None:
        """The forward's statistics; `missing`: the sites of the running transformer that did not run (a step cache
        skipped them). A layer with a missing site this recorder reads is NaN in every variable that site provides
        and flagged in ``skipped`` (per branch, one bool per layer); a forward whose layers all were skipped still
        gives its step (all NaN), so a run never loses a step to a cache."""
        fwd, self._fwd = self._fwd, None
        if fwd is None:
            return None
        skipped = sorted({self._layer_pos[s.layer] for s in missing
                          if s.layer in self._layer_pos and s.kind in self.kinds})
        if not fwd.values and not skipped:
            return None
        # python-int indexing only: an index tensor would be a host-to-device copy, which syncs
        pos = {b: [fwd.index.index(i) for i in idx] for b, idx in fwd.items.items()}
        values: dict[str, dict[str, torch.Tensor]] = {b: {} for b in fwd.items}
        for var, per_layer in fwd.values.items():
            sample = next(iter(per_layer.values()))
            full = sample.new_full((sample.shape[0], len(self.layers), *sample.shape[1:]), float("nan"))
            for layer, value in per_layer.items():
                full[:, layer] = value
            for branch, p in pos.items():
                values[branch][var] = torch.stack([full[i] for i in p]).mean(0)  # mean over the branch's items
        flags = torch.zeros(len(self.layers), dtype=torch.bool)  # on the host: known there, nothing to copy
        flags[skipped] = True
        for branch in values:
            values[branch][SKIPPED] = flags
        timestep = {b: fwd.ctx.timestep[idx[0]] for b, idx in fwd.items.items()}
        checks = {"pad_uniform": fwd.pad_ok} if fwd.pad_ok is not None else {}
        return ForwardResult(fwd.ctx.step, fwd.ctx.num_steps, timestep, values, checks)

    # -- attention calls ----------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, call: AttentionCall) -> None:
        fwd = self._fwd
        if fwd is None:
            return
        layer = self._layer_pos[call.site.layer]
        kind = call.site.kind
        if kind == "image":
            fwd.image_out[call.site.layer] = self._select(call.output, fwd)
        elif kind == "text":
            self._text(call, fwd, layer)
        elif kind == "joint":
            self._joint(call, fwd, layer)
        elif kind == "self" and "ref_mass" in self.record.stats:
            self._ref_mass(call, fwd, layer)
        elif kind == "audio":
            self._audio(call, fwd, layer)

    def _select(self, x: torch.Tensor, fwd: _ForwardState) -> torch.Tensor:
        return x if len(fwd.index) == x.shape[0] else x[fwd.index]

    @staticmethod
    def _subset(fwd: _ForwardState, batch: int) -> list[int] | None:
        """The batch items this recorder reads of a call of `batch` items: None when all of them."""
        return None if len(fwd.index) == batch else list(fwd.index)

    def _put(self, fwd: _ForwardState, var: str, layer: int, value: torch.Tensor) -> None:
        fwd.values.setdefault(var, {})[layer] = value

    def _text(self, call: AttentionCall, fwd: _ForwardState, layer: int) -> None:
        """A separate text call: a softmax over the text keys alone. Unmasked (Wan): identical pad keys collapsed
        exactly. With a key mask (LTX-Video's padding mask): the mask added to the logits as the kernel adds it, so the
        masked keys get probability exactly 0, and the entropy is normalised by the number of open keys."""
        q = self._select(call.query, fwd)
        k = self._select(call.key, fwd)
        if self.sources & {"word_map", "similarity", "entropy"}:
            mask = mask_bias(call.attn_mask, k.shape[1])
            if mask is not None:
                mask = mask if mask.shape[0] == k.shape[0] else self._select(mask, fwd)
                k_eff, mult = k, None
            else:
                n_real = self._n_real(fwd, k.shape[1])
                k_eff, mult = collapse_padding(k, n_real)
                ok = padding_is_uniform(k, n_real)
                fwd.pad_ok = ok if fwd.pad_ok is None else fwd.pad_ok & ok

            scale, biases = call.scale, call.biases
            items = fwd.index
            cols = slice(0, k_eff.shape[1])
            mixes = call.mixes
            subset = self._subset(fwd, call.query.shape[0])

            def chunk(a: int, z: int):
                # post-edit probabilities: the interventions' logit biases, then the cache transfers' mixes; the
                # raw dot products, summed over heads, also give the similarity (no second pass over the queries)
                dots = qk_dots(q[:, a:z], k_eff)
                bias = bias_logits(biases, slice(a, z), cols, items)
                if mask is not None:
                    bias = mask if bias is None else bias + mask
                p = probs_from_dots(dots, default_scale(q, scale), mult, bias)
                for m in mixes:
                    p = m.apply(p, slice(a, z), mult, subset)
                return p.mean(1), {}, dots

            def entropy(pbar: torch.Tensor) -> torch.Tensor:
                if mask is None:
                    return stats.normalized_entropy(pbar, mult, k.shape[1])
                h = -torch.special.xlogy(pbar, pbar).sum(-1)  # masked columns hold exactly 0
                return h / torch.log(open_keys(mask).to(h.dtype)).clamp_min(1e-30)[:, None]

            self._reduce_text(fwd, layer, q, k_eff, chunk, entropy)
        if self.words and "response" in self.sources:
            self._emit(fwd, layer, {"response": self._response(call, fwd)})

        image_out = fwd.image_out.pop(call.site.layer, None)
        if "text_share" in self.record.stats and image_out is not None:
            share = stats.text_share(self._select(call.output, fwd).flatten(2), image_out.flatten(2))
            self._put(fwd, "text_share", layer, stats.reduce_frames(STATISTICS["text_share"].reduce, share,
                                                                    fwd.ctx.grid))

    def _joint(self, call: AttentionCall, fwd: _ForwardState, layer: int) -> None:
        """One softmax over [video | image | text] keys: text probabilities normalised over all keys, from the
        row log-sum-exp of the model's own kernel call (or recomputed when no kernel provided it)."""
        seg, scale = call.segments, call.scale
        q = self._select(call.query, fwd)[:, seg.video_queries[0] : seg.video_queries[1]]
        k = self._select(call.key, fwd)
        bias = key_bias(call.attn_mask, k.shape[1])
        bias = None if bias is None else (bias if bias.shape[0] == k.shape[0] else self._select(bias, fwd))
        lse = call.lse
        if lse is None:
            lse = row_logsumexp(q, k, max(1, self.record.chunk_bytes // max(1, 8 * q.shape[0] * q.shape[2] * 1024)),
                                scale, bias)
        else:
            lse = self._select(lse, fwd)[..., seg.video_queries[0] : seg.video_queries[1]]
        (t0, t1), (i0, i1), (v0, _) = seg.text, seg.image, seg.video
        k_text, k_img = k[:, t0:t1], k[:, i0:i1]
        b_text = None if bias is None else bias[:, t0:t1]
        b_img = None if bias is None else bias[:, i0:i1]
        first = fwd.ctx.grid[1] * fwd.ctx.grid[2]
        k_ref = k[:, v0 : v0 + first]
        b_ref = None if bias is None else bias[:, v0 : v0 + first]
        want = set(self.record.stats)
        valid = (k_text.shape[1] if b_text is None else torch.isfinite(b_text).sum(-1)) if k_text.shape[1] else 0

        biases = call.biases
        r0 = seg.video_queries[0]

        def edited(a: int, z: int, keys: torch.Tensor, key_bias: torch.Tensor | None, c0: int) -> torch.Tensor:
            logits = key_logits(q[:, a:z], keys, scale, key_bias)
            extra_bias = bias_logits(biases, slice(r0 + a, r0 + z), slice(c0, c0 + keys.shape[1]), fwd.index)
            return logits if extra_bias is None else logits + extra_bias

        # a cache transfer replaced the text block by (1-w)·P_d + w·P_r and rescaled the rest of each row
        mixes = call.mixes
        subset = self._subset(fwd, call.query.shape[0])

        def chunk(a: int, z: int):
            lse_c = lse[:, :, a:z, None]
            p_text = torch.exp(edited(a, z, k_text, b_text, t0) - lse_c)  # [b, H, n, T]
            rest = torch.ones_like(p_text[..., 0])  # [b, H, n]: factor of the non-text part of each row
            for m in mixes:
                mixed = m.apply(p_text, slice(a, z), None, subset)
                rest = rest * rest_scale(p_text.sum(-1), mixed.sum(-1))
                p_text = mixed
            extra = {}
            if "text_mass" in want:
                extra["text_mass"] = p_text.sum(-1).mean(1)
            if "image_mass" in want:
                p_img = torch.exp(edited(a, z, k_img, b_img, i0) - lse_c).sum(-1)
                extra["image_mass"] = (p_img * rest).mean(1)
            if "ref_mass" in want:
                lse_ref = torch.logsumexp(edited(a, z, k_ref, b_ref, v0), -1)
                extra["ref_mass"] = (torch.exp(lse_ref - lse[:, :, a:z]) * rest).mean(1)
            return p_text.mean(1), extra, None  # head mean [b, n, T]

        def entropy(pbar: torch.Tensor) -> torch.Tensor:
            # entropy of the attention within the text keys (renormalised), over log(number of real text keys)
            p = pbar / pbar.sum(-1, keepdim=True)
            h = -torch.special.xlogy(p, p).sum(-1)
            n_keys = torch.as_tensor(valid, device=h.device, dtype=h.dtype).reshape(-1, 1)
            return h / torch.log(n_keys).clamp_min(1e-30)

        self._reduce_text(fwd, layer, q, k_text, chunk, entropy, scale_rows=k.shape[1])

    def _reduce_text(self, fwd: _ForwardState, layer: int, q, k_text, chunk, entropy, scale_rows: int = 0) -> None:
        """Chunk over whole frames; per chunk `chunk(a, z)` gives head-mean text probabilities ``[b, n, T]`` and
        per-token extras; reduce inside the chunk to word maps, entropy, similarity, then per frame."""
        grid = fwd.ctx.grid
        b, n, heads, _ = q.shape
        need_maps = bool(self.words) and "word_map" in self.sources
        need_ent = "entropy" in self.sources
        # each row's branch attends to its own prompt's keys: the word columns of that prompt (one index for all rows
        # when the branches agree, the common case; otherwise one per row, python-int slices only)
        branch_of = {i: br for br, idx in fwd.items.items() for i in idx}
        rows = [self._word_index(k_text.shape[1], q.device, branch_of[i]) for i in fwd.index]
        word_index = rows[0] if all(r is rows[0] for r in rows) else None
        kbar = None
        if bool(self.words) and "similarity" in self.sources:
            k_flat = k_text.flatten(2).to(torch.float32)
            kbar = torch.cat([torch.einsum("tw,btc->bwc", idx, k_flat[i : i + 1]) / idx.sum(0).clamp_min(1)[:, None]
                              for i, idx in enumerate(rows)]) if word_index is None else (
                torch.einsum("tw,btc->bwc", word_index, k_flat) / word_index.sum(0).clamp_min(1)[:, None])
        maps = q.new_zeros((b, n, rows[0].shape[1]), dtype=torch.float32)
        ent = q.new_zeros((b, n), dtype=torch.float32)
        sim = q.new_zeros((b, n, rows[0].shape[1]), dtype=torch.float32)
        extras: dict[str, torch.Tensor] = {}
        columns = max(k_text.shape[1], scale_rows and (k_text.shape[1] + 64))
        per_chunk = frames_per_chunk(grid, b * heads * max(1, columns) * 4 * 3, self.record.chunk_bytes)
        for a, z in frame_chunks(grid, per_chunk):
            pbar, extra, dots = chunk(a, z)  # dots: the raw q·k [b, H, n, T] where the chunk computed them
            if need_maps and word_index is not None:
                maps[:, a:z] = stats.word_maps(pbar, word_index)
            elif need_maps:
                for i, idx in enumerate(rows):
                    maps[i : i + 1, a:z] = stats.word_maps(pbar[i : i + 1], idx)
            if need_ent:
                ent[:, a:z] = entropy(pbar)
            if kbar is not None:
                sim[:, a:z] = (stats.cosine_similarity(q[:, a:z].flatten(2), kbar) if dots is None else
                               self._similarity(dots.sum(1), rows, word_index, q[:, a:z].flatten(2), kbar))
            for name, value in extra.items():
                extras.setdefault(name, q.new_zeros((b, n), dtype=torch.float32))[:, a:z] = value
        for i, row in enumerate(fwd.index):  # a word the row's prompt lacks: no columns, no statistic (not 0)
            for w in self._absent.get(branch_of[row], ()):
                maps[i, :, w] = float("nan")
                sim[i, :, w] = float("nan")
        # the per-token quantities computed here ([b, W, N] per word, [b, N] otherwise), each statistic reduced from
        # its own (`fglens.stats.table`)
        per_token = {**extras, "word_map": maps.transpose(1, 2) if need_maps else None,
                     "similarity": sim.transpose(1, 2) if kbar is not None else None,
                     "entropy": ent if need_ent else None}
        self._emit(fwd, layer, per_token)

    @staticmethod
    def _similarity(dot_sums, rows, word_index, q, kbar) -> torch.Tensor:
        """S_w[n] of each row from its head-summed dot products with the text keys (`stats.cosine_from_dots`)."""
        if word_index is not None:
            return stats.cosine_from_dots(dot_sums, word_index, q, kbar)
        return torch.cat([stats.cosine_from_dots(dot_sums[i : i + 1], idx, q[i : i + 1], kbar[i : i + 1])
                          for i, idx in enumerate(rows)])

    def _emit(self, fwd: _ForwardState, layer: int, per_token: dict[str, torch.Tensor | None]) -> None:
        """Each wanted statistic whose per-token source is in `per_token` (``[b, W, N]`` per word, ``[b, N]``
        otherwise), reduced per latent frame as `fglens.stats.table` says."""
        for stat in self.wanted:
            if per_token.get(stat.source) is not None:
                value = stats.reduce_frames(stat.reduce, per_token[stat.source], fwd.ctx.grid)
                self._put(fwd, stat.name, layer, value)

    def _response(self, call: AttentionCall, fwd: _ForwardState) -> torch.Tensor:
        """R_w[n] = cos(o[n], v̄_w) ``[b, W, N]``: Wan's text-call output at each video token (heads concatenated,
        before `to_out`; the post-edit output the model used) against the mean value of each word's tokens in the
        row's own prompt; NaN for a word that prompt lacks."""
        out = self._select(call.output, fwd).flatten(2)
        v = self._select(call.value, fwd).flatten(2).to(torch.float32)
        branch_of = {i: br for br, idx in fwd.items.items() for i in idx}
        rows = [self._word_index(v.shape[1], v.device, branch_of[i]) for i in fwd.index]
        vbar = torch.cat([torch.einsum("tw,btc->bwc", idx, v[i : i + 1]) / idx.sum(0).clamp_min(1)[:, None]
                          for i, idx in enumerate(rows)])
        r = stats.cosine_similarity(out, vbar)
        for i, row in enumerate(fwd.index):
            for w in self._absent.get(branch_of[row], ()):
                r[i, :, w] = float("nan")
        return r.transpose(1, 2)

    def _ref_mass(self, call: AttentionCall, fwd: _ForwardState, layer: int) -> None:
        if call.attn_mask is not None:
            raise ValueError(f"{call.site.name}: this self-attention call has an attention mask, which fglens' "
                             "ref_mass does not read; leave ref_mass out of the Record's stats for this model")
        grid = fwd.ctx.grid
        q = self._select(call.query, fwd)
        k = self._select(call.key, fwd)
        b, n, heads, _ = q.shape
        first = grid[1] * grid[2]
        key_chunk = max(first, self.record.chunk_bytes // max(1, 4 * 2 * b * heads * n))
        lse_all = row_logsumexp(q, k, key_chunk, call.scale)  # [b, H, N], over all video keys
        per_chunk = frames_per_chunk(grid, 4 * 2 * b * heads * first, self.record.chunk_bytes)
        mass = q.new_zeros((b, n), dtype=torch.float32)
        for a, z in frame_chunks(grid, per_chunk):
            lse_ref = logsumexp_over_keys(q[:, a:z], k[:, :first], first, call.scale)
            mass[:, a:z] = torch.exp(lse_ref - lse_all[..., a:z]).mean(1)
        self._put(fwd, "ref_mass", layer, stats.reduce_frames(STATISTICS["ref_mass"].reduce, mass, grid))

    def _audio(self, call: AttentionCall, fwd: _ForwardState, layer: int) -> None:
        """A cross-attention of the video queries to another modality's keys (LTX-2: the audio tokens), one softmax
        over those keys: per video token, the entropy of the head-mean attention over them (normalised by the log of
        the open keys) and where it sits on average (key j at j / (A - 1)), in chunks of whole frames. The keys'
        mask, if any, is applied as the kernel applies it. No intervention edits such a site."""
        if call.biases or call.mixes:
            raise ValueError(f"{call.site.name}: an edit reached an audio cross-attention site, which fglens' "
                             "recorder reads unedited")
        grid = fwd.ctx.grid
        q = self._select(call.query, fwd)
        k = self._select(call.key, fwd)
        b, n, heads, _ = q.shape
        if n != grid[0] * grid[1] * grid[2]:
            raise ValueError(f"{call.site.name}: {n} queries, but the video grid {grid} has "
                             f"{grid[0] * grid[1] * grid[2]} tokens (an audio site's queries are the video tokens)")
        mask = mask_bias(call.attn_mask, k.shape[1])
        if mask is not None and mask.shape[0] != k.shape[0]:
            mask = self._select(mask, fwd)
        n_keys = k.shape[1]
        where = (torch.linspace(0.0, 1.0, n_keys, device=q.device) if n_keys > 1
                 else q.new_zeros(1, dtype=torch.float32))
        per_chunk = frames_per_chunk(grid, b * heads * n_keys * 4 * 3, self.record.chunk_bytes)
        ent = q.new_zeros((b, n), dtype=torch.float32)
        pos = q.new_zeros((b, n), dtype=torch.float32)
        scale = default_scale(q, call.scale)
        for a, z in frame_chunks(grid, per_chunk):
            pbar = probs_from_dots(qk_dots(q[:, a:z], k), scale, None, mask).mean(1)  # [b, n, A]
            ent[:, a:z] = -torch.special.xlogy(pbar, pbar).sum(-1)
            pos[:, a:z] = pbar @ where
        if n_keys > 1:
            ent = ent / (torch.log(open_keys(mask).to(torch.float32))[:, None] if mask is not None
                         else math.log(n_keys))
        self._emit(fwd, layer, {"audio_entropy": ent, "audio_position": pos})

    # -- helpers --------------------------------------------------------------------------------------
    def _n_real(self, fwd: _ForwardState, total: int) -> int:
        if fwd.ctx.text_lengths is not None:
            known = [fwd.ctx.text_lengths[i] for i in fwd.index]
        else:
            known = [self.n_real.get(b) for b in fwd.items]
        if any(v is None for v in known) or not known:
            return total
        last_word = max((max(p) for words in self.branch_words.values() for p in words.values() if p), default=-1)
        return min(total, max(*known, last_word + 1))

    def _word_index(self, columns: int, device: torch.device, branch: str = "cond") -> torch.Tensor:
        """Indicator ``[columns, W]`` of the words' token positions in `branch`'s prompt, built on the host once per
        shape and run (branches whose positions agree share one tensor)."""
        branch = self._index_of.get(branch, "cond")
        words = self.branch_words.get(branch, self.words)
        key = (columns, str(device), branch)
        if key not in self._index_cache:
            index = torch.zeros(columns, max(1, len(words)))
            for w, positions in enumerate(words.values()):
                for p in positions:
                    if p < columns:
                        index[p, w] = 1.0
            self._index_cache[key] = index.to(device)
        return self._index_cache[key]
