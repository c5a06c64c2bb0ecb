"""Comparing toy pipelines: the same items and noise for every pipeline, paired differences, clear refusals."""

from __future__ import annotations

import json

import pytest

import fglens as fg
from fglens.cli import main
from fglens.toy.compare import compare, table

FAST = {"num_inference_steps": 2}


@pytest.fixture(scope="module")
def base():
    return fg.toy.pipeline("base")


def test_compare_pairs_every_pipeline_with_the_first_on_the_same_items(base):
    sink = fg.toy.pipeline("sink")
    res = compare({"base": base, "again": base, "sink": sink}, n=3, seeds=(0, 1), **FAST)
    assert res["n_items"] == 6 and res["reference"] == "base"
    ids = [[r["id"] for r in rows] for rows in res["rows"].values()]
    assert ids[0] == ids[1] == ids[2] and len(set(ids[0])) == 6  # two suite seeds, distinct items
    # the same pipeline on the same items and noise: identical videos, so a difference of exactly 0
    assert [r["follows"] for r in res["rows"]["again"]] == [r["follows"] for r in res["rows"]["base"]]
    assert res["paired"]["again"]["all"][:3] == (0.0, 0.0, 0.0)
    fb = [r["follows"] for r in res["rows"]["base"]]
    fs = [r["follows"] for r in res["rows"]["sink"]]
    assert res["paired"]["sink"]["all"][0] == pytest.approx(sum(fs) / 6 - sum(fb) / 6)
    assert res["follows"]["sink"]["all"][0] == pytest.approx(sum(fs) / 6)
    text = table(res)
    assert "| sink − base |" in text and "6 items of the test split" in text
    # per instruction kind: each row's own kind, the same means taken over that kind's items only
    kinds = [r["kind"] for r in res["rows"]["base"]]
    assert kinds == [item.instruction.kind for s in (0, 1) for item in fg.toy.suite("test", n=3, seed=s)]
    for kind in set(kinds):
        mine = [i for i, k in enumerate(kinds) if k == kind]
        assert res["follows_by_kind"]["sink"][kind][3] == len(mine)
        assert res["paired_by_kind"]["sink"][kind][0] == pytest.approx(
            sum(fs[i] - fb[i] for i in mine) / len(mine))
        assert f"{kind} ({len(mine)})" in text.split("Per instruction kind")[1]
    # per held-out property: each row records its item's, and an item held out in two ways counts in both
    held = [r["held_out"] for r in res["rows"]["base"]]
    assert held == [list(item.held_out) for s in (0, 1) for item in fg.toy.suite("test", n=3, seed=s)]
    for prop in ("position", "size", "combination"):
        mine = [i for i, h in enumerate(held) if prop in h]
        if mine:
            assert res["follows_by_held_out"]["sink"][prop][3] == len(mine)
            assert res["paired_by_held_out"]["sink"][prop][0] == pytest.approx(
                sum(fs[i] - fb[i] for i in mine) / len(mine))
        else:
            assert prop not in res["follows_by_held_out"]["sink"]
    assert "Per held-out property" in text


def test_rows_group_by_held_out_property_with_items_in_every_group_they_have():
    from fglens.toy.experiment import paired, summarize

    rows = [{"id": "a", "held_out": ["position", "combination"], "follows": 1.0},
            {"id": "b", "held_out": ["combination"], "follows": 0.0},
            {"id": "c", "held_out": [], "follows": 1.0}]
    out = summarize(rows, by="held_out")
    assert list(out) == ["position", "combination", "none", "all"]
    assert [out[g][0] for g in out] == [1.0, 0.5, 1.0, pytest.approx(2 / 3)]
    assert [out[g][3] for g in out] == [1, 2, 1, 3]
    flipped = [{**r, "follows": 1.0 - r["follows"]} for r in rows]
    assert paired(rows, flipped, by="held_out")["combination"][0] == 0.0  # (-1 + 1) / 2
    assert paired(rows, flipped, by="held_out")["position"][0] == -1.0
    with pytest.raises(ValueError, match="do not record held_out"):
        summarize([{"id": "a", "follows": 1.0}], by="held_out")
    with pytest.raises(ValueError, match="'category', 'kind' or 'held_out'"):
        summarize(rows, by="colour")


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="val"), "split must be 'train' or 'test'"),
    (dict(n=0), "needs n >= 1"),
    (dict(seeds=()), "at least one seed"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (dict(guidance_scale=-1.0), "guidance_scale must be a finite number"),
    (dict(num_inference_steps=0), "num_inference_steps must be an integer >= 1; got 0"),
    (dict(num_inference_steps=2.5), "num_inference_steps must be an integer >= 1; got 2.5"),
])
def test_compare_refuses_bad_arguments(base, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compare({"base": base}, **kwargs)


def test_the_cli_compares_shipped_variants_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("fglens.toy.experiment.CALL", {**fg.toy.CALL, **FAST})
    assert main(["toy", "compare", "base", "s=sink", "--n", "2", "--out", str(tmp_path), "--quiet"]) == 0
    assert "| s − base |" in capsys.readouterr().out
    res = json.loads((tmp_path / "compare.json").read_text())
    assert res["sources"] == {"base": "base", "s": "sink"} and res["n_items"] == 2
    assert res["call"]["guidance_scale"] == fg.toy.CALL["guidance_scale"] and res["call"]["num_inference_steps"] == 2


def test_the_cli_samples_at_the_guidance_and_steps_it_is_given_and_records_them(tmp_path, capsys, monkeypatch):
    seen = []
    import fglens.toy.experiment as experiment

    real = experiment.sample

    def spy(pipe, item, **kwargs):
        seen.append((kwargs.get("guidance_scale"), kwargs.get("num_inference_steps")))
        return real(pipe, item, **kwargs)

    monkeypatch.setattr("fglens.toy.experiment.sample", spy)
    monkeypatch.setattr("fglens.toy.experiment.CALL", {**fg.toy.CALL, **FAST})
    assert main(["toy", "compare", "base", "--n", "1", "--guidance", "8", "--out", str(tmp_path), "--quiet"]) == 0
    assert seen == [(8.0, None)] and "guidance_scale 8.0" in capsys.readouterr().out
    assert json.loads((tmp_path / "compare.json").read_text())["call"]["guidance_scale"] == 8.0
    assert main(["toy", "compare", "base", "--n", "1", "--steps", "3", "--out", str(tmp_path), "--quiet"]) == 0
    assert seen[1] == (None, 3)
    assert json.loads((tmp_path / "compare.json").read_text())["call"]["num_inference_steps"] == 3


@pytest.mark.parametrize("argv, message", [
    (["toy", "compare", "nowhere"], "neither a shipped variant"),
    (["toy", "compare", "base", "base"], "must be distinct"),
    (["toy", "compare", "base", "--device", "gpu"], "device must be a torch device"),
])
def test_the_cli_refuses_bad_pipelines_and_options(argv, message, capsys):
    assert main(argv) != 0
    assert message in capsys.readouterr().err


def test_the_cli_refuses_seeds_that_are_not_integers(capsys):
    with pytest.raises(SystemExit):
        main(["toy", "compare", "base", "--seeds", "a"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_the_cli_takes_a_train_output_folder_as_a_source(tmp_path, capsys, monkeypatch):
    from fglens.toy.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(vae_steps=1, vae_batch=1, pool=2, dit_steps=1, dit_batch=1, warmup=1), run, progress=False)
    monkeypatch.setattr("fglens.toy.experiment.CALL", {**fg.toy.CALL, **FAST})
    for source in (run, run / "pipeline"):  # the run folder or its pipeline/
        assert main(["toy", "compare", "base", f"mine={source}", "--n", "1", "--quiet"]) == 0
        assert "| mine − base |" in capsys.readouterr().out
