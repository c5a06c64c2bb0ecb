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


def measure(runs: dict, before: dict, layers: list[str], src: list[str]) -> dict:
    """Each run ``name: (pipe, focal_guidance keywords, reference)`` on the 120 items (suite seeds 0 and 1) with
    alpha 0.5, paired to the reference's rows in `before` (the same items and noise)."""
    res: dict = {"paired": {}, "by_seed": {}, "means": {}, "fidelity": {}}
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
    return res


def run(rows_path: str, path: str, make_runs, layers: list[str], src: list[str], **extra) -> dict:
    """`measure` the runs `make_runs(sink, base)` gives against the rows in `rows_path`; results (with `extra`)
    to `path`."""
    t0 = time.time()
    before = json.load(open(rows_path))
    sink, base = fg.toy.pipeline("sink"), fg.toy.pipeline("base")
    res = {**extra, **measure(make_runs(sink, base), before, layers, src)}
    res["seconds"] = round(time.time() - t0, 1)
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=float)
    return res


def main(rows_path: str, path: str) -> dict:
    return run(rows_path, path, lambda sink, base: {
        "sink+clip32": (sink, dict(anchor="clip", strength=32.0), "sink"),
        "base+truth32": (base, dict(anchor="truth", strength=32.0), "base")}, ["blocks.3", "blocks.4"], ["blocks.0"])


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), indent=1, default=float))
