"""`fglens toy report`'s bookkeeping: which layers its Focal Guidance acts on, and what its markdown says about them.

The measurements themselves are `fglens toy report`'s (docs/toy-world.md); a recorded report's results file is
the fixture here, so these tests sample nothing."""

import json
from pathlib import Path

from fglens.toy.report import _markdown, focal_layers

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "toy" / "results-n60-v11-sink.json"


def test_focal_guidance_acts_on_the_diagnosed_layers_or_says_it_fell_back_to_the_planted_ones():
    assert focal_layers(["blocks.5"], ["blocks.3", "blocks.4"]) == (["blocks.5"], "diagnosis")
    assert focal_layers([], ["blocks.3", "blocks.4"]) == (["blocks.3", "blocks.4"],
                                                          "planted (the diagnosis named none)")
    assert focal_layers([], []) == ([], "none")


def test_the_markdown_says_where_the_layers_came_from_and_gives_the_bounded_share():
    res = json.loads(RESULTS.read_text())
    for key, v in res.items():
        if "+fg_" in key:
            v["layers_from"] = focal_layers(res["diagnosis"]["weak"]["weak"], res["planted"]["weak"])[1]
    for name in ("word_map_focus", "word_map_focus_control", "word_map_focus_weak"):
        res[name]["share_per_layer"], res[name]["area_share"] = [0.5] * 8, 0.036
    text = _markdown(res)
    fg_rows = [line for line in text.splitlines() if line.startswith("| weak+fg_")]
    assert len(fg_rows) == 4 and all("| planted (the diagnosis named none) |" in line for line in fg_rows)
    assert "a uniform map: 0.04" in text and text.count("| 0.50 " * 8 + "|") == 3
    del res["weak+fg_both"]["layers_from"]  # a results file written before the column existed
    assert "| weak+fg_both | ['blocks.3', 'blocks.4'] | — |" in _markdown(res)
