"""The toy-world part of `fglens demo`: record the trained model, diagnose a planted one, apply Focal Guidance.

The planted model is the `sink` variant (blocks 3 and 4's text attention sent to the padding), the one planting
that costs following (docs/toy-world.md).

Example (what `make demo` prints, on fewer items):
    >>> import tempfile
    >>> result = demo(tempfile.mkdtemp(), n=2, n_diag=2, say=lambda *a: None)
    >>> sorted(result)
    ['accuracy', 'figures', 'morans_i', 'planted', 'responsive', 'weak']
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def demo(out: str | os.PathLike, *, n: int = 10, n_diag: int = 6, seed: int = 0,
         say: Callable[..., None] = print) -> dict:
    """Record one run of the base model with word maps, find the sink model's weak layers, and compare its
    instruction following with the base's and with Focal Guidance on `n` held-out items (paired seeds)."""
    import fglens as fg

    from .experiment import evaluate, focal_guidance, item_seed, record_runs, word_map_focus_items
    from .load import CALL, pipeline, planted_layers
    from .suite import suite

    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    base, weak = pipeline("base"), pipeline("sink")
    items = suite("test", n=n, seed=seed)
    item = word_map_focus_items(suite("test", n=5, seed=seed))[0]
    import torch

    with fg.trace(base, record=fg.Record(words=item.words, maps=True), store=out / "toy.zarr") as run:
        video = base(image=item.image, prompt=item.prompt,
                     generator=torch.Generator().manual_seed(item_seed(item, seed)), **CALL).frames[0]
    from .score import score

    say(f"toy world: the trained base model on {item.prompt!r}: follows={score(video, item)['follows']:.0f} "
        f"({score(video, item)['reason']})")
    paths = [figures / "toy_word_maps.png", figures / "toy_weak_layer_profile.png"]
    fg.plot.word_maps(run.dataset, word=item.words[0], path=paths[0])
    runs = record_runs(weak, items[:n_diag], seed=seed)
    found = fg.find_weak_layers(runs)
    by_moran = fg.find_weak_layers(runs, score="morans_i")
    fg.plot.layer_profile(runs, weak=found, path=paths[1])
    planted = planted_layers(weak)
    say(f"sink model (planted {planted}: their text attention sent to the padding): fg.find_weak_layers names "
        f"{list(found.weak)} by the default score, {list(by_moran.weak)} by score='morans_i'; "
        f"responsive {list(found.responsive)}")
    layers = list(found.weak) or planted
    if not found.weak:
        say(f"no weak layer found: Focal Guidance below acts on the planted layers {planted} instead")
    src = [x for x in found.responsive if x not in layers]
    rows = {"base": evaluate(base, items, seed=seed), "without": evaluate(weak, items, seed=seed),
            "with": evaluate(weak, items, seed=seed, edit=focal_guidance(layers, src))}
    acc = {k: float(np.mean([r["follows"] for r in v])) for k, v in rows.items()}
    say(f"on {n} held-out items, instruction followed: base {acc['base']:.2f}; sink {acc['without']:.2f} without "
        f"Focal Guidance, {acc['with']:.2f} with it (layers {layers}, ground-truth anchors, cache from {src}); "
        "`fglens toy report --weak-variant sink` measures this on more items with intervals")
    say(f"figures: {', '.join(str(p) for p in paths)}")
    return {"accuracy": acc, "figures": [str(p) for p in paths], "planted": planted, "responsive": src,
            "weak": list(found.weak), "morans_i": list(by_moran.weak)}
