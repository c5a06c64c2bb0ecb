"""Focal Guidance on the sink with everything from the diagnosis (docs/toy-world.md, Results of the eleventh version).

`fglens toy report --weak-variant sink --fg-score morans_i` (docs/toy/report-n60-v11-sink-morans.md) took both of
Focal Guidance's sites from one diagnosis: Moran's I names blocks 3 and 4 (the planted ones) weak, and blocks 1,
2 and 6 responsive, the cache's sources (the default similarity score names no weak layer and block 0 responsive).
On the report's 60 items the cache from those sources gave +0.08 [-0.02, +0.18] (cache only and with the anchors
alike), where the cache from block 0 gave 0.00. Written before running: on the same 120 items and noise as
sink_strong_anchor.py (suite seeds 0 and 1), the sink with the cache from blocks 1, 2, 6 into blocks 3, 4 (alpha
0.5) alone, with tiny-CLIP anchors at the report's strength 2 and at 32; and, for harm, the cache alone on the
base. Counts: the pooled 120-item paired interval to the unedited model (sink_strong_anchor.py's rows) excludes 0.

    python docs/toy/sink_diagnosed_cache.py docs/toy/sink-strong-anchor-v11-rows.json OUT.json
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
    layers, src = ["blocks.3", "blocks.4"], ["blocks.1", "blocks.2", "blocks.6"]
    runs = {"sink+cache": (sink, dict(anchor=None), "sink"),
            "sink+cache+clip2": (sink, dict(anchor="clip", strength=2.0), "sink"),
            "sink+cache+clip32": (sink, dict(anchor="clip", strength=32.0), "sink"),
            "base+cache": (base, dict(anchor=None), "base")}
    res: dict = {"layers": layers, "sources": src, "alpha": 0.5, "paired": {}, "by_seed": {}, "means": {},
                 "fidelity": {}}
    for name, (pipe, kw, ref) in runs.items():
        rows, refs, by_seed = [], [], {}
        for s in ("0", "1"):
            items = fg.toy.suite("test", n=60, seed=int(s))
            r = evaluate(pipe, items, seed=0, edit=focal_guidance(layers, src, alpha=0.5, **kw))
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
