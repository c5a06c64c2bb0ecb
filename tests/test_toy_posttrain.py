"""`fglens toy posttrain` (issue 16 item 4): none / Focal Guidance / post-trained LoRA / both on the same toy items."""

from __future__ import annotations

import json

import pytest

from fglens.cli import main


@pytest.mark.parametrize("loss", ["distill", "flow", "anchor"])
def test_posttrain_scores_four_conditions_on_the_same_items(tmp_path, capsys, loss):
    code = main(["toy", "posttrain", "--out", str(tmp_path), "--loss", loss, "--n", "5", "--n-train", "2",
                 "--steps", "2", "--sample-steps", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "four_way.json").read_text())
    assert list(res["conditions"]) == ["none", "fg", "lora", "lora+fg"]
    ids = {k: [r["id"] for r in rows] for k, rows in res["rows"].items()}
    assert all(v == ids["none"] and len(v) == 5 for v in ids.values())  # the same items in every condition
    assert res["loss"] == loss and (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    table = capsys.readouterr().out
    assert "| all |" in table and "lora+fg − none" in table


def test_posttrain_acts_on_the_layers_and_edit_it_is_given(tmp_path, capsys):
    code = main(["toy", "posttrain", "--out", str(tmp_path), "--loss", "flow", "--n", "2", "--n-train", "2",
                 "--steps", "2", "--sample-steps", "2", "--layers", "3,4", "--sources", "0", "--strength", "32",
                 "--alpha", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "four_way.json").read_text())
    assert (res["layers"], res["sources"], res["strength"], res["alpha"]) == (["blocks.3", "blocks.4"], ["blocks.0"],
                                                                              32.0, 0.0)
    assert "anchor strength 32.0, cache alpha 0.0 from ['blocks.0']" in capsys.readouterr().out
    lora = (tmp_path / "lora" / "pytorch_lora_weights.safetensors").read_bytes()
    assert b"blocks.3." in lora and b"blocks.4." in lora and b"blocks.0." not in lora


@pytest.mark.parametrize("argv, message", [
    (["--layers", "8"], r"layers must be one or more of the DiT's blocks blocks.0..blocks.7; got \['blocks.8'\]"),
    (["--layers", "3", "--sources", "3"], r"sources must differ from layers; both name \['blocks.3'\]"),
    (["--strength", "nan"], r"strength must be finite and >= 0 and alpha in \[0, 1\]; got nan, 0.5"),
    (["--alpha", "1.5"], r"strength must be finite and >= 0 and alpha in \[0, 1\]; got 2.0, 1.5"),
])
def test_posttrain_refuses_bad_sites_before_training(tmp_path, capsys, argv, message):
    import re

    out = tmp_path / "pt"
    assert main(["toy", "posttrain", "--out", str(out), "--quiet", *argv]) != 0
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()
