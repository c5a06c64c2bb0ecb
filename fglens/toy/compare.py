"""Which toy pipeline follows more: two or more models on the same items and the same noise, paired.

A 60-item draw is too noisy to choose between models a few points apart (the shipped base follows 0.80, 0.65
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

from collections.abc import Mapping, Sequence
from typing import Any

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
    items = [item for s in seeds for item in suite(split, n=n, seed=int(s))]
    rows = {name: evaluate(pipe, items, seed=sample_seed, progress=progress, **call)
            for name, pipe in pipelines.items()}
    first = next(iter(rows))
    return {"split": split, "seeds": [int(s) for s in seeds], "n_items": len(items), "sample_seed": sample_seed,
            "reference": first,
            "follows": {name: summarize(r) for name, r in rows.items()},
            "fidelity": {name: summarize(r, "fidelity") for name, r in rows.items()},
            "paired": {name: paired(rows[first], r) for name, r in rows.items() if name != first},
            "rows": rows}


def table(res: dict) -> str:
    """`compare`'s result as a markdown table: follows per category and pipeline, then the paired differences."""
    cats = list(next(iter(res["follows"].values())))
    head = f"{res['n_items']} items of the {res['split']} split (suite seeds {res['seeds']}), sample seed " \
           f"{res['sample_seed']}; 95 % bootstrap intervals over items\n\n"
    lines = ["| pipeline | " + " | ".join(cats) + " | fidelity |", "|---" * (len(cats) + 2) + "|"]
    for name, summary in res["follows"].items():
        cells = [f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi, _ in (summary[c] for c in cats)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {res['fidelity'][name]['all'][0]:.3f} |")
    for name, diff in res["paired"].items():
        cells = [f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" for m, lo, hi, _ in (diff[c] for c in cats)]
        lines.append(f"| {name} − {res['reference']} | " + " | ".join(cells) + " | |")
    return head + "\n".join(lines) + "\n"


__all__ = ["compare", "table"]
