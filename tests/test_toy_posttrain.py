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
