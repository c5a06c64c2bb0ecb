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

import importlib.util
import json
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("strong", Path(__file__).with_name("sink_strong_anchor_clip.py"))
strong = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strong)


def main(rows_path: str, path: str) -> dict:
    layers, src = ["blocks.3", "blocks.4"], ["blocks.1", "blocks.2", "blocks.6"]
    return strong.run(rows_path, path, lambda sink, base: {
        "sink+cache": (sink, dict(anchor=None), "sink"),
        "sink+cache+clip2": (sink, dict(anchor="clip", strength=2.0), "sink"),
        "sink+cache+clip32": (sink, dict(anchor="clip", strength=32.0), "sink"),
        "base+cache": (base, dict(anchor=None), "base")}, layers, src, layers=layers, sources=src, alpha=0.5)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), indent=1, default=float))
