"""Post-trained vs training-free Focal Guidance on the toy world (issue 16, item 4): ``fglens toy posttrain``.

On a toy variant (default the ``sink`` planting), with the Focal Guidance the toy report applies (ground-truth
anchors and the cache transfer, on the layers the default diagnosis names, from its responsive layers), one LoRA
is trained on those layers with `fg.train.FocalLoRA` (``distill``: that Focal Guidance is the teacher; ``flow``: the
toy world's ground-truth videos; or ``anchor``: those videos and the named objects' masks in every frame) on
train-split items, and four conditions are scored on the same
test items with the same seeds: none, Focal Guidance at sampling time, the LoRA, both. Every number is the toy
world's pixel score ``follows`` with bootstrap intervals per category, and the paired difference from none.

Example (seconds, numbers meaningless at this size):
    >>> import tempfile
    >>> res = four_way(tempfile.mkdtemp(), n=2, n_train=2, steps=2, sample_steps=2, progress=False)
    >>> sorted(res["conditions"])
    ['fg', 'lora', 'lora+fg', 'none']
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the sink report's diagnosis (docs/toy-world.md, "The sink planting"): the default rule's weak layer and its
#: responsive layers, the layers the report's Focal Guidance used
SINK_LAYERS, SINK_SOURCES = ("blocks.3",), ("blocks.0", "blocks.2", "blocks.1")


def four_way(out: str | os.PathLike, *, variant: str = "sink", loss: str = "distill", n: int = 60,
             n_train: int = 64, steps: int = 500, lr: float = 2e-3, rank: int = 8, seed: int = 0,
             layers: tuple[str, ...] = SINK_LAYERS, sources: tuple[str, ...] = SINK_SOURCES,
             sample_steps: int | None = None, train_seed: int | None = None, anchor_weight: float = 1.0,
             anchor_form: str = "mass", strength: float = 2.0, alpha: float = 0.5,
             progress: bool = True) -> dict[str, Any]:
    """Train the LoRA, score the four conditions, write ``four_way.json`` and ``four_way.md`` into `out`.

    `seed` picks the items and the sampling noise; `train_seed` (default `seed`) the LoRA job's draws alone, so that
    runs differing only in it measure how much the result depends on training's randomness. `anchor_weight`,
    `anchor_form`: the anchor term's weight and form for loss ``anchor``. `layers` (where the LoRA and Focal
    Guidance act) and `sources` (the cache's), block names of the variant's DiT; `strength`, `alpha`: the Focal
    Guidance edit's anchor strength and cache weight."""
    import fglens as fg

    from .experiment import evaluate, focal_guidance, paired, summarize
    from .load import CALL

    pipe = fg.toy.pipeline(variant)
    _check_sites(pipe, layers, sources, strength, alpha)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    call = dict(CALL, **({"num_inference_steps": sample_steps} if sample_steps else {}))
    edit = focal_guidance(list(layers), list(sources), anchor="truth", strength=strength, alpha=alpha)
    train = fg.toy.suite("train", n=n_train, seed=seed)
    by_id = {it.id: it for it in train}
    options = {"steps": call["num_inference_steps"], "height": call["height"], "width": call["width"],
               "num_frames": call["num_frames"], "guidance_scale": call["guidance_scale"]}
    job_seed = seed if train_seed is None else train_seed
    if loss == "distill":
        job = fg.train.FocalLoRA(layers=list(layers), rank=rank, teacher=lambda item: edit(by_id[item.id]), lr=lr,
                                 call=options, checkpoint_every=100, seed=job_seed)
    else:
        job = fg.train.FocalLoRA(layers=list(layers), rank=rank, loss=loss, lr=lr, checkpoint_every=100,
                                 seed=job_seed, **({"anchor_weight": anchor_weight, "anchor_form": anchor_form}
                                                    if loss == "anchor" else {}))
    start = time.time()
    job.fit(pipe, train, steps=steps, out=out / "lora", progress=progress)
    train_s = time.time() - start
    items = fg.toy.suite("test", n=n, seed=seed)
    extra = {"num_inference_steps": call["num_inference_steps"]}
    dit, rows = pipe.transformer, {}
    start = time.time()
    dit.disable_adapters()
    rows["none"] = evaluate(pipe, items, seed=seed, progress=progress, **extra)
    rows["fg"] = evaluate(pipe, items, seed=seed, edit=edit, progress=progress, **extra)
    dit.enable_adapters()
    rows["lora"] = evaluate(pipe, items, seed=seed, progress=progress, **extra)
    rows["lora+fg"] = evaluate(pipe, items, seed=seed, edit=edit, progress=progress, **extra)
    eval_s = time.time() - start
    dit.delete_adapters("focal")
    cost = sampling_cost(pipe, out / "lora", items[:3], **extra)
    res = {"variant": variant, "loss": loss, "layers": list(layers), "sources": list(sources),
           "strength": strength, "alpha": alpha, "n": n,
           "n_train": n_train, "steps": steps, "lr": lr, "rank": rank, "seed": seed, "train_seed": job_seed,
           **({"anchor_weight": anchor_weight, "anchor_form": anchor_form} if loss == "anchor" else {}),
           "train_s": train_s,
           "eval_s": eval_s, "sample_steps": call["num_inference_steps"],
           "conditions": {k: summarize(r) for k, r in rows.items()},
           "vs_none": {k: paired(rows["none"], rows[k]) for k in ("fg", "lora", "lora+fg")}, "sampling_cost": cost}
    (out / "four_way.json").write_text(json.dumps({**res, "rows": rows}, indent=1, default=str) + "\n")
    (out / "four_way.md").write_text(table(res) + "\n")
    return res


def _check_sites(pipe: Any, layers: Sequence[str], sources: Sequence[str], strength: float, alpha: float) -> None:
    """Refuse, before any training, layers the DiT does not have, an empty or overlapping choice, a bad edit."""
    blocks = [f"blocks.{i}" for i in range(len(pipe.transformer.blocks))]
    for option, names in (("layers", layers), ("sources", sources)):
        unknown = [x for x in names if x not in blocks]
        if not names or unknown:
            raise ValueError(f"{option} must be one or more of the DiT's blocks {blocks[0]}..{blocks[-1]}; "
                             f"got {list(names)}")
    if set(layers) & set(sources):
        raise ValueError(f"sources must differ from layers; both name {sorted(set(layers) & set(sources))}")
    if not (math.isfinite(strength) and strength >= 0) or not (math.isfinite(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"strength must be finite and >= 0 and alpha in [0, 1]; got {strength}, {alpha}")


def sampling_cost(pipe: Any, lora: str | os.PathLike, items: list, repeats: int = 3, **call: Any) -> dict[str, Any]:
    """Seconds per video, median over `repeats` interleaved rounds of `items`, of plain sampling, sampling with the
    adapter loaded (unfused) and with it fused into the weights (``fuse_lora``), and the ratios to plain; the
    pipeline is left without the adapter."""
    import statistics

    from .experiment import sample

    pipe.load_lora_weights(str(lora), adapter_name="cost")
    times: dict[str, list[float]] = {"plain": [], "unfused": [], "fused": []}
    try:
        for _ in range(repeats):
            for mode in times:
                if mode == "plain":
                    pipe.disable_lora()
                else:
                    pipe.enable_lora()
                    if mode == "fused":
                        pipe.fuse_lora(adapter_names=["cost"])
                start = time.perf_counter()
                for item in items:
                    sample(pipe, item, **call)
                times[mode].append((time.perf_counter() - start) / len(items))
                if mode == "fused":
                    pipe.unfuse_lora()
    finally:
        pipe.delete_adapters("cost")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds_per_video": med, "unfused/plain": med["unfused"] / med["plain"],
            "fused/plain": med["fused"] / med["plain"], "repeats": repeats, "videos": len(items)}


def table(res: dict[str, Any]) -> str:
    """The four conditions per category (follows, 95 % interval) and each one's paired difference from none."""
    cats = list(res["conditions"]["none"])
    anchor = (f" (weight {res['anchor_weight']}, form {res.get('anchor_form', 'mass')})"
              if res["loss"] == "anchor" else "")
    lines = [f"{res['variant']}, LoRA loss {res['loss']}{anchor} on {res['layers']} ({res['steps']} steps, "
             f"{res['n_train']} train items, {res['train_s']:.0f} s), {res['n']} test items; fg: anchor strength "
             f"{res.get('strength', 2.0)}, cache alpha {res.get('alpha', 0.5)} from {res['sources']}:", "",
             "| category | none | fg | lora | lora+fg | fg − none | lora − none | lora+fg − none |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cats:
        cells = [f"{res['conditions'][k][c][0]:.2f}" for k in ("none", "fg", "lora", "lora+fg")]
        for k in ("fg", "lora", "lora+fg"):
            d, lo, hi, _ = res["vs_none"][k][c]
            cells.append(f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    cost = res.get("sampling_cost")
    if cost:
        lines += ["", f"sampling cost (median of {cost['repeats']} interleaved rounds of {cost['videos']} videos): "
                  f"plain {cost['seconds_per_video']['plain']:.3f} s/video, adapter unfused "
                  f"{cost['unfused/plain']:.3f}× plain, fused {cost['fused/plain']:.3f}× plain"]
    return "\n".join(lines)


__all__ = ["SINK_LAYERS", "SINK_SOURCES", "four_way", "table"]
