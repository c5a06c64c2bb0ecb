"""Semantic-Weak Layer detection from recorded runs (the default rule: docs/concepts.md, "Semantic-Weak Layers").

`find_weak_layers` scores every layer by how much its video queries align with the prompt's words, compares the
layers with a robust z-score, and names the layers that lag behind (*semantic-weak*, the ones Focal Guidance
repairs) and the ones that respond best (*responsive*, the sources of a cache transfer).

The rule, every part of which is a parameter recorded in `WeakLayers.params`:

1. **Per-layer score.** For each run, the mean of the chosen statistic (`similarity` S, and/or `morans_i` I)
   over the chosen branch (``"cond"``), all of the run's words, all frames and the chosen steps (the first half
   of the schedule); NaN entries (a constant map's Moran's I, an expert that did not run) are skipped. Then the
   mean over runs: each run weighs equally, whatever its number of words.
2. **Robust z-score** within each stack of layers: z = (x − median) / (1.4826 · MAD), MAD the median absolute
   deviation from the median. The factor 1.4826 = 1 / Φ⁻¹(3/4) makes 1.4826 · MAD a consistent estimate of the
   standard deviation for normally distributed scores, so z reads like an ordinary z-score but one outlying
   layer cannot move the centre or the scale. With ``score="both"`` the z-score is the mean of the two
   statistics' robust z-scores. A stack is the layers of one transformer: Wan2.2's two experts (``blocks.i``
   and ``transformer_2.blocks.i``) are z-scored separately; HunyuanVideo's ``double.*`` then ``single.*``
   blocks form one stack in depth order. A layer without a score (all NaN) is left out with a warning; where
   the MAD is 0 (half the layers score the same) z is set to 0, with a warning, and marks no weak layers.
3. **Weak** layers: z < `z`, except the first and the last ⌈`exclude_edges` · L⌉ layers of each stack of L
   layers (the same half-open fractions as ``fg.Where`` steps), in depth order.
4. **Responsive** layers: the `top_k` layers with the highest z over all stacks, best first (ties: higher raw
   score first), weak layers excluded, and so are layers whose z is below `z` (an edge layer can be far below
   the threshold and escape the weak list only by the edge rule: it is never called responsive, nor offered as
   a cache source).

Example:
    >>> import fglens as fg
    >>> ds = fg.testing.tiny_run("wan", maps=False)
    >>> weak = fg.find_weak_layers(ds, exclude_edges=0.0, z=-0.5)
    >>> set(weak.weak + weak.responsive) <= set(ds.layer.values)
    True
    >>> edit = fg.FocalGuidance(cache=fg.CacheTransfer(src=weak.responsive[:1], dst=weak.weak), layers=weak.weak)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .core.scope import BRANCHES
from .store.select import same_layers, select_steps, split_runs

#: the statistics a layer can be scored by, the two that ``"both"`` combines, and every accepted name
SCORES = ("similarity", "morans_i", "similarity_morans_i", "response", "response_morans_i")
BOTH = ("similarity", "morans_i")
SCORE_CHOICES = (*SCORES, "both")
#: 1 / Φ⁻¹(3/4): scales the MAD to a consistent estimate of the standard deviation under normality
MAD_SCALE = 1.4826
#: a stack needs at least this many layers with a score for a median and a MAD to mean anything
MIN_LAYERS = 3
#: the rules: the robust z alone, or the robust z confirmed in resamples of the runs (prompts x seeds)
RULES = ("robust_z", "bootstrap")


@dataclass(frozen=True, repr=False, eq=False)
class WeakLayers:
    """The result of `find_weak_layers`.

    Attributes:
        weak: the semantic-weak layers (canonical names, depth order); ready for ``fg.FocalGuidance(layers=...)``
            and ``fg.CacheTransfer(dst=...)``.
        responsive: the most responsive layers, best first; ready for ``fg.CacheTransfer(src=...)``.
        scores: the z-score the rule thresholds, over ``layer`` (NaN for a layer without a score), with the
            coordinates ``transformer`` (its stack: ``"transformer"``, or ``"transformer_2"``
            for Wan2.2's second expert) and ``edge`` (excluded from the weak layers).
        raw: the per-layer mean statistic before z-scoring (over ``layer``; with ``score="both"`` over
            ``score, layer``).
        components: the robust z-score of each statistic used, over ``score, layer``.
        params: every parameter of the rule, the runs it saw and the steps it used.

    Example:
        >>> import fglens as fg, numpy as np, xarray as xr
        >>> profile = [0.40, 0.41, 0.10, 0.39, 0.42, 0.40]   # one similarity per layer; blocks.2 lags behind
        >>> sim = xr.DataArray(np.reshape(profile, (1, 1, 6, 1, 1)), dims=("branch", "step", "layer", "word", "frame"),
        ...                    coords={"branch": ["cond"], "layer": [f"blocks.{i}" for i in range(6)]})
        >>> weak = fg.find_weak_layers(xr.Dataset({"similarity": sim}), steps=None)
        >>> weak.weak, weak.responsive
        (['blocks.2'], ['blocks.4', 'blocks.1', 'blocks.0'])
        >>> print(weak.summary())
        layer     transformer  similarity  z        role
        blocks.0  transformer  +0.400      +0.000   responsive (edge)
        blocks.1  transformer  +0.410      +0.674   responsive
        blocks.2  transformer  +0.100      -20.235  weak
        blocks.3  transformer  +0.390      -0.674
        blocks.4  transformer  +0.420      +1.349   responsive
        blocks.5  transformer  +0.400      +0.000   (edge)
        score='similarity' z<-1.0 exclude_edges=0.1 top_k=3 steps=None branch='cond' runs=1
    """

    weak: list[str]
    responsive: list[str]
    scores: xr.DataArray
    raw: xr.DataArray
    components: xr.DataArray
    params: dict[str, Any]

    @property
    def layers(self) -> list[str]:
        """Every layer scored, in depth order."""
        return [str(name) for name in self.scores.layer.values]

    def summary(self) -> str:
        """A short text table: one row per layer with its transformer, raw score(s), z and role."""
        raw = self.raw if "score" in self.raw.dims else self.raw.expand_dims(score=[self.params["score"]])
        names = [str(s) for s in raw.score.values]
        conf = self.scores.coords["confidence"].values if "confidence" in self.scores.coords else None
        header = ["layer", "transformer", *names, "z", *(["confidence"] if conf is not None else []), "role"]
        rows, transformer = [], self.scores.coords["transformer"].values
        for i, layer in enumerate(self.layers):
            role = "weak" if layer in self.weak else "responsive" if layer in self.responsive else ""
            if bool(self.scores.edge.values[i]):
                below = not role and bool(self.scores.values[i] < self.params["z"])  # NaN: False
                role = "below threshold (edge)" if below else f"{role} (edge)".lstrip()
            values = [_fmt(raw.sel(score=s).values[i]) for s in names]
            sure = [f"{conf[i]:.2f}"] if conf is not None else []
            rows.append([layer, str(transformer[i]), *values, _fmt(self.scores.values[i]), *sure, role])
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                 for row in [header, *rows]]
        p = self.params
        rule = p.get("rule", "robust_z")
        boot = (f" rule='bootstrap' confidence>={p['confidence']} n_boot={p['n_boot']} seed={p['seed']}"
                if rule == "bootstrap" else "")
        lines.append(f"score={p['score']!r} z<{p['z']} exclude_edges={p['exclude_edges']} top_k={p['top_k']} "
                     f"steps={p['steps']} branch={p['branch']!r} runs={p['n_runs']}{boot}")
        if not self.weak:
            why = (f"no layer away from the edges is below z<{p['z']} in at least {p['confidence']:.0%} of "
                   f"{p['n_boot']} resamples of the runs" if rule == "bootstrap"
                   else f"no layer away from the edges has z below {p['z']}")
            lines.append(f"no weak layer: {why}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (NaN as None) of the result and its parameters, for the CLI and stores.

        Example:
            >>> import json, fglens as fg
            >>> weak = fg.find_weak_layers("runs/dog.zarr")                      # doctest: +SKIP
            >>> json.dump(weak.to_dict(), open("weak.json", "w"))               # doctest: +SKIP
        """
        layers = self.layers
        raw = self.raw if "score" in self.raw.dims else self.raw.expand_dims(score=[self.params["score"]])
        return {
            "weak": list(self.weak),
            "responsive": list(self.responsive),
            "layers": layers,
            "scores": dict(zip(layers, map(_json_float, self.scores.values), strict=True)),
            "raw": {str(s): dict(zip(layers, map(_json_float, raw.sel(score=s).values), strict=True))
                    for s in raw.score.values},
            "components": {str(s): dict(zip(layers, map(_json_float, self.components.sel(score=s).values),
                                            strict=True))
                           for s in self.components.score.values},
            "params": json.loads(json.dumps(self.params)),
        }

    def __repr__(self) -> str:
        return (f"WeakLayers(weak={self.weak}, responsive={self.responsive}, score={self.params['score']!r}, "
                f"z<{self.params['z']}, runs={self.params['n_runs']})")


def find_weak_layers(
    ds_or_runs: xr.Dataset | Sequence[xr.Dataset] | str | os.PathLike,
    score: str = "similarity",
    steps: tuple[float, float] | Sequence[int] | None = (0.0, 0.5),
    z: float = -1.0,
    exclude_edges: float = 0.1,
    top_k: int = 3,
    branch: str = "cond",
    rule: str = "robust_z",
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> WeakLayers:
    """Find the semantic-weak and the responsive layers of recorded runs (the rule of the module docstring).

    Args:
        ds_or_runs: one run (an `xarray.Dataset` from ``run.dataset`` / ``fg.open_run``); a Dataset with a
            ``run`` dim (``fg.open_runs``; NaN-padded word slots are skipped); a list of run Datasets (prompts,
            seeds; their words may differ); or the path of a store (every run in it). All runs must have the
            same layers.
        score: ``"similarity"`` (text-visual similarity S), ``"morans_i"`` (Moran's I of the word maps),
            ``"similarity_morans_i"`` (Moran's I of the similarity maps), ``"response"`` (the representation
            response R: the text attention's output against each word's value) or ``"response_morans_i"`` (Moran's
            I of R's maps) — these three recorded on request, ``Record(stats=[..., name])``, R on Wan only — or
            ``"both"`` (the mean of the robust z-scores of similarity and Moran's I).
        steps: a half-open fraction of the schedule ``(start, stop)`` given as floats (``(0.0, 0.5)``: the
            first half, from the run's ``num_steps`` — a coordinate along ``run`` or the run's attribute —
            else from the steps recorded), step indices as ints (``[0, 1, 2]``, ``range(10)``), or None (all).
        z: the threshold (≤ 0): a layer is weak when its robust z-score is below it.
        exclude_edges: the fraction of each stack's first and last layers that are never weak, in [0, 0.5).
        top_k: how many responsive layers to name: the highest z among the layers that are not weak and not
            below `z` (fewer if fewer such layers have a score; a weak layer, or an edge layer below the threshold,
            is never a cache source).
        branch: the CFG branch to score, ``"cond"`` or ``"uncond"``.
        rule: ``"robust_z"`` (weak: z below `z`, away from the edges) or ``"bootstrap"``: also weak in at least a
            fraction `confidence` of `n_boot` resamples of the runs with replacement (prompts x seeds; the z-scores
            recomputed in each), so that a layer is weak only when its dip is larger than the run-to-run noise.
            The robust z alone always names the lowest layers of a noisy but flat profile; a resample moves
            which layers those are, a real dip stays. Each layer's fraction is ``scores.confidence``. Needs at
            least 2 runs (10 or more for a confidence that means something).
        confidence: the fraction of resamples in which a layer must be weak (``rule="bootstrap"``), in (0, 1].
        n_boot: the number of resamples (``rule="bootstrap"``).
        seed: the resamples' seed (``rule="bootstrap"``): the same runs and seed give the same layers.

    Returns:
        A `WeakLayers` with ``.weak``, ``.responsive``, ``.scores`` (z over ``layer``), ``.raw``,
        ``.components`` and ``.params``.

    Raises:
        ValueError: an unknown score or branch, a parameter out of range, a run without the statistic or the
            branch, runs with different layers, steps that select nothing, or too few layers with a score.
        TypeError: an input that is not a Dataset, a list of them or a path.

    Warns:
        UserWarning: layers without any score (named; left out of the rule), or a stack whose MAD is 0 (its z
        is 0 and it has no weak layers).

    Example:
        >>> import fglens as fg
        >>> pipe = fg.testing.tiny_wan_i2v_pipeline()
        >>> runs = [fg.testing.tiny_run("wan", maps=False, seed=s, pipe=pipe) for s in (0, 1)]     # two seeds
        >>> weak = fg.find_weak_layers(runs, score="both", exclude_edges=0.0, z=-0.5, top_k=1)
        >>> weak.scores.dims, weak.components.dims, weak.params["n_runs"]
        (('layer',), ('score', 'layer'), 2)
    """
    names = _check_params(score, steps, z, exclude_edges, top_k, branch)
    _check_rule(rule, confidence, n_boot, seed)
    runs = split_runs(ds_or_runs, what="find_weak_layers")
    if rule == "bootstrap" and len(runs) < 2:
        raise ValueError("rule='bootstrap' resamples the runs (prompts x seeds) and needs at least 2 of them, ideally "
                         f"10 or more; got {len(runs)}. Record more prompts or seeds (fglens sweep), or use "
                         "rule='robust_z'")
    layers = same_layers(runs)

    # 1. per run, per statistic: the mean over words, frames and the chosen steps of the branch; then over runs
    per_run = np.empty((len(names), len(runs), len(layers)))
    steps_used: dict[str, list[int]] = {}
    for r, (label, run) in enumerate(runs):
        selected = select_steps(run, steps, label=label)
        steps_used[label] = selected
        for s, name in enumerate(names):
            per_run[s, r] = _run_profile(run, name, branch, selected, label)
    raw = _nanmean(per_run, axis=1)  # [score, layer]

    # 2. robust z per stack and statistic
    stacks = [_stack_of(layer) for layer in layers]
    order = list(dict.fromkeys(stacks))
    _check_scored(raw, names, layers, stacks, order)
    components = _components(raw, names, stacks, order)
    combined = components.mean(axis=0)

    # 3. weak: below the threshold, away from the stack's edges; 4. responsive: the highest z, best first
    edge = np.zeros(len(layers), dtype=bool)
    for stack in order:
        idx = [i for i, s in enumerate(stacks) if s == stack]
        n_edge = math.ceil(round(exclude_edges * len(idx), 9))
        for i in idx[:n_edge] + idx[len(idx) - n_edge:]:
            edge[i] = True
    is_weak = np.isfinite(combined) & (combined < z) & ~edge
    conf = None
    if rule == "bootstrap":  # weak in at least `confidence` of the resamples of the runs as well
        conf = _resampled_weak(per_run, names, stacks, order, z, edge, n_boot, seed)
        is_weak &= conf >= confidence
    weak = [layers[i] for i in np.flatnonzero(is_weak)]
    tie = raw.mean(axis=0)
    candidates = [i for i in range(len(layers)) if np.isfinite(combined[i]) and not is_weak[i] and combined[i] >= z]
    candidates.sort(key=lambda i: (-combined[i], -tie[i] if np.isfinite(tie[i]) else math.inf, i))
    responsive = [layers[i] for i in candidates[:top_k]]

    coords = {"layer": layers, "transformer": ("layer", [_stack_name(s) for s in stacks])}
    extra = {} if conf is None else {"confidence": ("layer", conf)}
    scores = xr.DataArray(combined, dims=("layer",), coords={**coords, "edge": ("layer", edge), **extra}, name="z",
                          attrs={"score": score, "threshold": z})
    comp = xr.DataArray(components, dims=("score", "layer"), coords={"score": list(names), **coords},
                        name="z", attrs={"mad_scale": MAD_SCALE})
    raw_da = xr.DataArray(raw, dims=("score", "layer"), coords={"score": list(names), **coords}, name="raw")
    if score != "both":
        raw_da = raw_da.isel(score=0, drop=True)
    params = {
        "score": score,
        "combine": "mean of the robust z-scores" if score == "both" else None,
        "steps": _steps_spec(steps),
        "z": float(z),
        "exclude_edges": float(exclude_edges),
        "top_k": int(top_k),
        "branch": branch,
        "rule": rule,
        **({"confidence": float(confidence), "n_boot": int(n_boot), "seed": int(seed)} if rule == "bootstrap" else {}),
        "mad_scale": MAD_SCALE,
        "stacks": {_stack_name(s): [x for x, t in zip(layers, stacks, strict=True) if t == s] for s in order},
        "edges": [layers[i] for i in np.flatnonzero(edge)],
        "n_runs": len(runs),
        "runs": [label for label, _ in runs],
        "steps_used": steps_used,
    }
    return WeakLayers(weak=weak, responsive=responsive, scores=scores, raw=raw_da, components=comp, params=params)


# -- parameters -----------------------------------------------------------------------------------------------

def _check_params(score, steps, z, exclude_edges, top_k, branch) -> tuple[str, ...]:
    if score not in SCORE_CHOICES:
        raise ValueError(f"unknown score {score!r}; accepted: {', '.join(map(repr, SCORE_CHOICES))}")
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or z > 0:
        raise ValueError(f"z must be a finite number <= 0 (a threshold below the median layer); got {z!r}")
    if (isinstance(exclude_edges, bool) or not isinstance(exclude_edges, (int, float))
            or not 0.0 <= exclude_edges < 0.5):
        raise ValueError(f"exclude_edges must be a fraction in [0, 0.5); got {exclude_edges!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0; got {top_k!r}")
    if branch not in BRANCHES:
        raise ValueError(f"unknown branch {branch!r}; accepted: {', '.join(map(repr, BRANCHES))}")
    return BOTH if score == "both" else (score,)


def _check_rule(rule, confidence, n_boot, seed) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; accepted: {', '.join(map(repr, RULES))}")
    if (isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not math.isfinite(confidence)
            or not 0.0 < confidence <= 1.0):
        raise ValueError(f"confidence must be a fraction in (0, 1]; got {confidence!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1; got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer; got {seed!r}")


def _steps_spec(steps) -> list | None:
    return None if steps is None else [float(s) if isinstance(s, float) else int(s) for s in steps]


# -- inputs ---------------------------------------------------------------------------------------------------

def _run_profile(run: xr.Dataset, name: str, branch: str, steps: list[int], label: str) -> np.ndarray:
    """One run's per-layer mean of statistic `name` over words, frames and `steps` of `branch` (NaN skipped)."""
    if name not in run.data_vars:
        hint = ("record words, e.g. fg.Record(words=['dog', 'jumps']), and keep it in stats" if name in SCORES
                else "")
        raise ValueError(f"run {label} has no {name!r} variable (it has {sorted(map(str, run.data_vars))}); {hint}")
    da = run[name]
    if "branch" in da.dims:
        recorded = [str(b) for b in run["branch"].values]
        if branch not in recorded:
            raise ValueError(f"branch {branch!r} was not recorded in run {label} (recorded: {recorded}); record it "
                             f"with fg.Record(branches=('cond', 'uncond'))")
        da = da.sel(branch=branch)
        if not bool(da.notnull().any()):
            raise ValueError(f"branch {branch!r} holds no {name} values in run {label} (missing branches are NaN); "
                             f"record it with fg.Record(branches=('cond', 'uncond'))")
    da = da.sel(step=steps)
    values = np.asarray(da.transpose("layer", ...).values, dtype=np.float64).reshape(da.sizes["layer"], -1)
    return _nanmean(values, axis=1)


# -- the rule -------------------------------------------------------------------------------------------------

def _stack_of(layer: str) -> str:
    """The transformer a layer belongs to: its name less the trailing ``<stack>.<index>`` ("" or "transformer_2.")."""
    parts = layer.split(".")
    return ".".join(parts[:-2]) + "." if len(parts) > 2 else ""


def _stack_name(stack: str) -> str:
    return stack.rstrip(".") or "transformer"


def _check_scored(raw: np.ndarray, names, layers, stacks, order) -> None:
    """Warn about layers without a score; fail where a stack has too few scored layers to be z-scored."""
    for s, name in enumerate(names):
        missing = [layers[i] for i in range(len(layers)) if not np.isfinite(raw[s, i])]
        if len(missing) == len(layers):
            raise ValueError(f"no layer has a {name} score (all NaN) for the chosen branch and steps; layers: "
                             f"{_short(layers)}")
        for stack in order:
            idx = [i for i, t in enumerate(stacks) if t == stack]
            absent = [layers[i] for i in idx if not np.isfinite(raw[s, i])]
            if len(absent) == len(idx):
                warnings.warn(f"stack {_stack_name(stack)!r} has no {name} values in the chosen steps (e.g. a "
                              f"Wan2.2 expert that did not run then): its layers {_short(absent)} are left out",
                              UserWarning, stacklevel=3)
                continue
            if absent:
                warnings.warn(f"layers without a {name} score (all NaN: constant maps or nothing recorded), left "
                              f"out: {_short(absent)}", UserWarning, stacklevel=3)
            if len(idx) - len(absent) < MIN_LAYERS:
                raise ValueError(f"too few layers to z-score {name} in stack {_stack_name(stack)!r}: "
                                 f"{len(idx) - len(absent)} with a score, at least {MIN_LAYERS} needed")


def _components(raw: np.ndarray, names, stacks, order) -> np.ndarray:
    """The robust z of each statistic ``[score, layer]``, within each stack."""
    components = np.full_like(raw, np.nan)
    for stack in order:
        idx = np.array([i for i, s in enumerate(stacks) if s == stack])
        for s, name in enumerate(names):
            components[s, idx] = _robust_z(raw[s, idx], f"{name} in stack {_stack_name(stack)!r}")
    return components


def _resampled_weak(per_run: np.ndarray, names, stacks, order, z: float, edge: np.ndarray, n_boot: int,
                    seed: int) -> np.ndarray:
    """Per layer, the fraction of `n_boot` resamples of the runs (with replacement) in which the robust-z rule
    names it weak. `per_run` is ``[score, run, layer]``."""
    rng = np.random.default_rng(seed)
    n_runs = per_run.shape[1]
    hits = np.zeros(per_run.shape[2])
    with warnings.catch_warnings():  # a resample whose MAD is 0 marks nothing: counted, not reported each time
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(n_boot):
            raw = _nanmean(per_run[:, rng.integers(n_runs, size=n_runs)], axis=1)
            combined = _components(raw, names, stacks, order).mean(axis=0)
            hits += np.isfinite(combined) & (combined < z) & ~edge
    return hits / n_boot


def _robust_z(x: np.ndarray, what: str) -> np.ndarray:
    """(x − median) / (1.4826 · MAD) over the finite entries; 0 (with a warning) where the MAD is 0."""
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.full_like(x, np.nan)
    median = np.median(finite)
    mad = np.median(np.abs(finite - median))
    if not mad > 0:
        warnings.warn(f"the MAD of {what} over layers is 0 (at least half the layers score the same): its z-scores "
                      f"are set to 0, so it marks no weak layers", UserWarning, stacklevel=4)
        return np.where(np.isfinite(x), 0.0, np.nan)
    return (x - median) / (MAD_SCALE * mad)


# -- small helpers --------------------------------------------------------------------------------------------

def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """`np.nanmean` without the all-NaN warning (an all-NaN slice is NaN and is reported by the caller)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _json_float(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _fmt(v) -> str:
    v = float(v)
    return f"{v:+.3f}" if math.isfinite(v) else "nan"


def _short(items: Sequence, n: int = 8) -> str:
    items = list(items)
    return str(items) if len(items) <= n else f"[{', '.join(map(repr, items[:n]))}, ... ({len(items)} in all)]"


__all__ = ["MAD_SCALE", "RULES", "SCORES", "WeakLayers", "find_weak_layers"]
