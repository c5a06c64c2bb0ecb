"""Which toy pipeline follows more: two or more models on the same items and the same noise, paired.

A 60-item draw is too noisy to choose between models a few points apart (the fifth version's base followed 0.80, 0.65
and 0.60 on three such draws of the test split), so a choice between training runs should rest on several draws
(`seeds`) and on the paired difference, not on two means. `compare` is that measurement, written once: every
pipeline samples every item with the same seed, the first pipeline is the reference of the paired differences,
and the intervals are bootstrap intervals over items.

Example:
    >>> import fglens as fg
    >>> from fglens.toy.compare import compare
    >>> base = fg.toy.pipeline("base")
    >>> res = compare({"base": base, "again": base}, n=2, num_inference_steps=2)
    >>> res["n_items"], res["paired"]["again"]["all"][0]
    (2, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from . import experiment
from .experiment import evaluate, paired, summarize
from .suite import suite


def compare(pipelines: Mapping[str, Any], *, split: str = "test", n: int = 60, seeds: Sequence[int] = (0,),
            sample_seed: int = 0, progress: bool = False, **call: Any) -> dict:
    """Score every pipeline on `n` items of `split` for each suite seed in `seeds` (the same items and noise for
    all); per category and overall: follows and fidelity with intervals, and each pipeline's paired difference
    to the first. `call` overrides the toy sampling call (`fg.toy.CALL`)."""
    if len(pipelines) < 1:
        raise ValueError("compare needs at least one pipeline")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n < 1 or not seeds:
        raise ValueError(f"compare needs n >= 1 and at least one seed; got n={n}, seeds={list(seeds)}")
    g = call.get("guidance_scale", 1.0)
    if not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1 or less: no guidance); got {g!r}")
    steps = call.get("num_inference_steps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1; got {steps!r}")
    items = [item for s in seeds for item in suite(split, n=n, seed=int(s))]
    rows = {name: evaluate(pipe, items, seed=sample_seed, progress=progress, **call)
            for name, pipe in pipelines.items()}
    first = next(iter(rows))
    return {"split": split, "seeds": [int(s) for s in seeds], "n_items": len(items), "sample_seed": sample_seed,
            "call": {**experiment.CALL, **call}, "reference": first,
            "follows": {name: summarize(r) for name, r in rows.items()},
            "fidelity": {name: summarize(r, "fidelity") for name, r in rows.items()},
            "paired": {name: paired(rows[first], r) for name, r in rows.items() if name != first},
            "follows_by_kind": {name: summarize(r, by="kind") for name, r in rows.items()},
            "paired_by_kind": {name: paired(rows[first], r, by="kind") for name, r in rows.items() if name != first},
            "follows_by_held_out": {name: summarize(r, by="held_out") for name, r in rows.items()},
            "paired_by_held_out": {name: paired(rows[first], r, by="held_out")
                                   for name, r in rows.items() if name != first},
            "rows": rows}


def table(res: dict) -> str:
    """`compare`'s result as markdown: follows per category and pipeline with the paired differences to the first,
    then the same per instruction kind and per held-out property (their numbers of items in the headers)."""
    changed = {k: v for k, v in res.get("call", {}).items() if experiment.CALL.get(k) != v}  # (older: no "call")
    head = f"{res['n_items']} items of the {res['split']} split (suite seeds {res['seeds']}), sample seed " \
           f"{res['sample_seed']}" + "".join(f", {k} {v}" for k, v in changed.items()) + \
           "; 95 % bootstrap intervals over items\n\n"
    lines = _rows(res["follows"], res["paired"], res["reference"], fidelity=res["fidelity"])
    if "follows_by_kind" in res:  # (results written before the per-kind breakdown have none)
        lines += ["", "Per instruction kind (items):", ""]
        lines += _rows(res["follows_by_kind"], res["paired_by_kind"], res["reference"])
    if "follows_by_held_out" in res:  # (an item held out in two ways counts in both; "none": a train item)
        lines += ["", "Per held-out property of the named object (items; an item can have two):", ""]
        lines += _rows(res["follows_by_held_out"], res["paired_by_held_out"], res["reference"])
    return head + "\n".join(lines) + "\n"


def _rows(follows: dict, diffs: dict, reference: str, fidelity: dict | None = None) -> list[str]:
    groups = list(next(iter(follows.values())))
    sizes = next(iter(follows.values()))
    names = [f"{g} ({sizes[g][3]})" if fidelity is None else g for g in groups]
    lines = ["| pipeline | " + " | ".join(names) + (" | fidelity |" if fidelity else " |"),
             "|---" * (len(groups) + 1 + bool(fidelity)) + "|"]
    for name, summary in follows.items():
        cells = [f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi, _ in (summary[g] for g in groups)]
        tail = f" | {fidelity[name]['all'][0]:.3f} |" if fidelity else " |"
        lines.append(f"| {name} | " + " | ".join(cells) + tail)
    for name, diff in diffs.items():
        cells = [f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" for m, lo, hi, _ in (diff[g] for g in groups)]
        lines.append(f"| {name} − {reference} | " + " | ".join(cells) + (" | |" if fidelity else " |"))
    return lines


__all__ = ["compare", "table"]
