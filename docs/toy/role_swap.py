"""Does the shipped base read roles from word order, or from which colour is named? (docs/toy-world.md, "Why the
held-out combinations fail".)

The two held-out combinations no model follows are "the blue ... moves to the ..." and "the white ... turns <c>".
In training, blue is never the one that moves in "A moves to B" (only B), and white never changes colour (it is
only ever the new colour). A model that reads the prompt as a bag of words, taking a role from the colour word
instead of its place in the sentence, fits its training items perfectly and reads "the blue circle moves to the
red square" as "the red square moves to the blue circle". Written before running: that reading is what the model
does if, on the held-out "moves to" items, its video follows the role-swapped instruction far more often than on
"moves to" items whose subject's colour was trained with it (the same split, held out by position or size).

Per item, with the same noise: the video of the item's prompt, and the video of the prompt with the two roles
swapped ("the red square moves to the blue circle"; for a recolour, "the <c> circle turns white", which names a
colour the scene does not have). Both videos are scored against the item's instruction and the swapped one, and
the mean absolute difference between them (0-255 per pixel) says how much the word order changed anything.

    python docs/toy/role_swap.py OUT.json      # 306 s on a 2-core CPU
"""

import json
import sys
import time
from dataclasses import replace

import numpy as np
import torch

import fglens as fg
from fglens.eval.stats import bootstrap_ci
from fglens.toy.experiment import item_seed
from fglens.toy.load import CALL
from fglens.toy.score import as_video, follows
from fglens.toy.suite import Item


def _video(pipe, item: Item, prompt: str) -> np.ndarray:
    gen = torch.Generator().manual_seed(item_seed(item, 0))
    out = pipe(image=item.image, prompt=prompt, generator=gen, **CALL)
    return as_video(np.asarray(out.frames[0]))


def _swapped(item: Item) -> tuple[Item, str]:
    """The role-swapped instruction (for scoring) and prompt."""
    ins, objs = item.instruction, item.scene.objects
    if ins.kind == "approach":
        swapped = replace(ins, target=ins.other, other=ins.target)
        return Item(item.id, item.split, item.scene, swapped), f"the {objs[ins.other].name} moves to the " \
                                                               f"{objs[ins.target].name}"
    a = objs[ins.target]
    return item, f"the {ins.colour} {a.shape} turns {a.colour}"


def _items(kind: str, n: int) -> dict[str, list[Item]]:
    groups: dict[str, list[Item]] = {"held-out combination": [], "trained combination": []}
    for it in fg.toy.suite("test", n=1500, seed=20, categories=("interaction", "dynamic_attribute")):
        if it.instruction.kind != kind:
            continue
        g = groups["held-out combination" if "combination" in it.held_out else "trained combination"]
        if len(g) < n:
            g.append(it)
    return groups


def _share(rows: list[dict], key: str) -> list[float]:
    v = np.array([r[key] for r in rows], dtype=float)
    return [round(float(x), 3) for x in bootstrap_ci(v, seed=0)]


def main(path: str, n_approach: int = 30, n_recolour: int = 20) -> dict:
    t0 = time.time()
    pipe = fg.toy.pipeline("base")
    res: dict = {"model": "base (shipped)", "seed": 0, "summary": {}, "rows": {}}
    for kind, n in (("approach", n_approach), ("recolour", n_recolour)):
        for group, items in _items(kind, n).items():
            rows = []
            for it in items:
                swapped, swapped_prompt = _swapped(it)
                v1, v2 = _video(pipe, it, it.prompt), _video(pipe, it, swapped_prompt)
                row = {"id": it.id, "prompt": it.prompt, "swapped_prompt": swapped_prompt,
                       "follows": float(follows(v1, it)[0]), "reason": follows(v1, it)[1],
                       "difference": float(np.abs(v1.astype(float) - v2.astype(float)).mean())}
                if kind == "approach":  # which object moved to which, in each video
                    row["follows_swapped_roles"] = float(follows(v1, swapped)[0])
                    row["swapped_prompt_follows_swap"] = float(follows(v2, swapped)[0])
                    row["swapped_prompt_follows_item"] = float(follows(v2, it)[0])
                rows.append(row)
            key = f"{kind}, {group}"
            res["rows"][key] = rows
            res["summary"][key] = {"items": len(rows), **{k: _share(rows, k) for k in rows[0]
                                                           if k not in ("id", "prompt", "swapped_prompt", "reason")}}
            print(key, json.dumps(res["summary"][key]), flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main(sys.argv[1])
