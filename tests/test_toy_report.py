"""`fglens toy report`'s bookkeeping: which layers its Focal Guidance acts on, and what its markdown says about them.

The measurements themselves are `fglens toy report`'s (docs/toy-world.md); a recorded report's results file is
the fixture here, so these tests sample nothing."""

import json
from pathlib import Path

import pytest

from fglens.toy.report import SCORES, _markdown, diagnosis_key, focal_layers, report

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "toy" / "results-n60-v11-sink.json"


def test_focal_guidance_acts_on_the_diagnosed_layers_or_says_it_fell_back_to_the_planted_ones():
    assert focal_layers(["blocks.5"], ["blocks.3", "blocks.4"]) == (["blocks.5"], "diagnosis")
    assert focal_layers([], ["blocks.3", "blocks.4"]) == (["blocks.3", "blocks.4"],
                                                          "planted (the diagnosis named none)")
    assert focal_layers([], []) == ([], "none")
    assert focal_layers(["blocks.3"], ["blocks.3"], "morans_i") == (["blocks.3"], "diagnosis (morans_i)")


def test_the_chosen_score_gives_the_models_own_row_and_every_other_score_keeps_its_name():
    keys = [diagnosis_key("weak", s, "robust_z", "morans_i") for s in SCORES]
    assert keys.count("weak") == 1 and keys[SCORES.index("morans_i")] == "weak"
    assert "weak (similarity)" in keys
    assert diagnosis_key("weak", "morans_i", "bootstrap", "morans_i") == "weak (morans_i, bootstrap)"
    assert diagnosis_key("base", "similarity", "robust_z") == "base"  # the default


def test_an_unknown_score_is_refused_before_anything_is_loaded(tmp_path):
    with pytest.raises(ValueError, match="fg_score must be one of similarity, morans_i.*got 'moran'"):
        report(tmp_path / "r", fg_score="moran")
    assert not (tmp_path / "r").exists()


def test_the_cli_offers_exactly_the_reported_scores():
    from fglens.cli import build_parser

    args = build_parser().parse_args(["toy", "report", "--out", "x", "--fg-score", "morans_i"])
    assert args.fg_score == "morans_i"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["toy", "report", "--out", "x", "--fg-score", "moran"])
    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["toy"]._subparsers
                  ._group_actions[0].choices["report"]._actions if a.dest == "fg_score")
    assert tuple(action.choices) == SCORES


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
