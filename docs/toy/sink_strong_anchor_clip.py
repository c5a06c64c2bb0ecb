"""The strong anchor with what a user has (docs/toy-world.md, Results of the eleventh version).

Written before running, after sink_strong_anchor.py: the same 120 items, noise and settings (strength 32, alpha
0.5, cache from block 0) with the tiny CLIP's anchors instead of the true masks, on the layers `morans_i` names on
the sink (blocks 3 and 4, which are the planted ones); and, as a control for harm, the true-mask strength-32
edit on the same layers of the base, which has nothing planted. Counts: the pooled 120-item paired interval to
the unedited model (sink rows and base rows from sink_strong_anchor.py's run, the same noise) excludes 0.

    python docs/toy/sink_strong_anchor_clip.py ROWS.json OUT.json
"""

import json
import sys
import time

import fglens as fg
from fglens.toy.experiment import evaluate, focal_guidance, paired


def main(rows_path: str, path: str) -> dict:
    t0 = time.time()
    before = json.load(open(rows_path))
    sink, base = fg.toy.pipeline("sink"), fg.toy.pipeline("base")
    layers, src = ["blocks.3", "blocks.4"], ["blocks.0"]
    runs = {"sink+clip32": (sink, "clip", "sink"), "base+truth32": (base, "truth", "base")}
    res: dict = {"paired": {}, "by_seed": {}, "means": {}, "fidelity": {}}
    for name, (pipe, anchor, ref) in runs.items():
        rows, refs, by_seed = [], [], {}
        for s in ("0", "1"):
            items = fg.toy.suite("test", n=60, seed=int(s))
            edit = focal_guidance(layers, src, anchor=anchor, strength=32.0, alpha=0.5)
            r = evaluate(pipe, items, seed=0, edit=edit)
            assert [x["id"] for x in r] == [x["id"] for x in before[s][ref]]
            by_seed[s] = [round(x, 3) for x in paired(before[s][ref], r)["all"][:3]]
            rows += r
            refs += before[s][ref]
        res["means"][name] = sum(x["follows"] for x in rows) / len(rows)
        res["paired"][name] = {c: [round(x, 3) for x in t[:3]] + [t[3]] for c, t in paired(refs, rows).items()}
        res["by_seed"][name] = by_seed
        res["fidelity"][name] = paired(refs, rows, "fidelity")["all"][:3]
        print(name, res["means"][name], res["paired"][name]["all"], by_seed, flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=float)
    return res


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), indent=1, default=float))
