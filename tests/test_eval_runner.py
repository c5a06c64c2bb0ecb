"""fglens.eval end to end on the tiny Wan I2V pipeline: paired seeds, one store of runs, cached videos, a readable
results store, the report, and the `fglens eval` command."""

import json
import shutil

import numpy as np
import pytest

import fglens as fg
from fglens.eval import (
    MotionMagnitude,
    builtin_suite,
    default_scorers,
    generate,
    load_video,
    open_results,
    open_summary,
    run_eval,
    write_report,
)
from fglens.pipelines import load_pipeline

ITEMS = ["red-ball-turns-blue", "man-waves"]
# a random-weight CLIP sees nothing in an image: anchor every word rather than the (arbitrary) visible ones
RECIPE = {"type": "focal_guidance", "layers": [1, 2], "src": [3], "clip": "tiny", "anchor_words": "all"}


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny-wan")


@pytest.fixture(scope="module")
def clip():
    import torch

    from fglens.anchors import Clip, tiny_config

    torch.manual_seed(0)
    return Clip(tiny_config())


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return builtin_suite(tmp_path_factory.mktemp("suite"), width=48, height=32).select(ids=ITEMS)


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, pipe, clip, suite):
    out = tmp_path_factory.mktemp("eval")
    return run_eval(suite, pipe, out, edit=RECIPE, seeds=[0, 1], steps=2, scorers=default_scorers(clip),
                    n_resamples=500)


def test_results_store_is_readable_and_totals_are_the_mean_of_existing_scores(evaluation):
    ds = open_results(evaluation.out / "results.zarr")
    assert ds["score"].dims == ("item", "seed", "condition", "scorer")
    assert ds["score"].shape == (2, 2, 2, 6)
    assert list(ds["condition"].values) == ["baseline", "intervention"] and list(ds["seed"].values) == [0, 1]
    assert list(ds["category"].values) == ["dynamic_attribute", "human_motion"]
    judge = ds.sel(scorer="vlm_judge")
    assert judge["missing"].all() and all(str(r).startswith("missing:") for r in judge["reason"].values.flat)
    assert json.loads(ds.attrs["missing_scorers"]) == ["vlm_judge"]
    scored = ds["score"].drop_sel(scorer="vlm_judge")
    # alignment_change needs a target: the dynamic-attribute item has one, the human-motion item not
    assert np.isnan(scored.sel(item="man-waves", scorer="alignment_change")).all()
    assert not np.isnan(scored.sel(item="red-ball-turns-blue")).any()
    assert ((scored >= 0) & (scored <= 1) | np.isnan(scored)).all()
    values = ds["score"].values
    expected = np.array([[[np.mean(v[~np.isnan(v)]) for v in s] for s in i] for i in values])
    np.testing.assert_allclose(ds["total"].values, expected)
    summary = open_summary(evaluation.out / "results.zarr")
    assert list(summary["category"].values) == ["dynamic_attribute", "human_motion", "all"]
    assert {"mean", "low", "high", "diff", "diff_low", "diff_high", "gain"} <= set(summary.data_vars)
    assert json.loads(ds.attrs["intervention"]) == RECIPE


def test_results_store_opens_with_plain_xarray_without_a_warning(evaluation):
    """results.zarr carries consolidated metadata: `xr.open_zarr(path)` warned that it fell back (issue 12, 15)."""
    import warnings

    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(evaluation.out / "results.zarr")
        summary = xr.open_zarr(evaluation.out / "results.zarr", group="summary")
    assert ds.sizes == evaluation.results.sizes and "gain" in summary


def test_both_conditions_use_the_same_seeds_and_are_recorded_in_one_store(evaluation, suite):
    ds = evaluation.results
    store = evaluation.out / "runs.zarr"
    assert len(fg.store.list_runs(store)) == 8
    for item in suite:
        for seed in (0, 1):
            attrs = {}
            for cond in ("baseline", "intervention"):
                run = str(ds["run"].sel(item=item.id, seed=seed, condition=cond).item())
                attrs[cond] = fg.store.decode_attrs(fg.open_run(store, run=run, load=False).attrs)
                assert attrs[cond]["seed"] == seed and attrs[cond]["prompt"] == item.prompt
                assert attrs[cond]["words"] == list(item.words) and attrs[cond]["complete"]
            assert attrs["baseline"]["intervention"] is None
            assert attrs["intervention"]["intervention"]["type"] == "FocalGuidance"
            video = {c: load_video(evaluation.out / str(ds["video"].sel(item=item.id, seed=seed, condition=c).item()))
                     for c in ("baseline", "intervention")}
            assert video["baseline"].shape == (5, 32, 48, 3)
            assert not np.array_equal(video["baseline"], video["intervention"])  # the edit changed the video


def test_same_seed_without_an_effective_edit_reproduces_the_baseline(evaluation, pipe, suite):
    """Pairing: a scale-by-1 'intervention' on the same seeds gives the baseline's videos; other seeds do not."""
    one = suite.select(ids=["man-waves"])
    videos = generate(one, pipe, evaluation.out, edit={"type": "scale", "factor": 1.0}, seeds=[0, 1], steps=2,
                      record=False)
    by = {(v.seed, v.condition): v for v in videos}
    assert by[(0, "baseline")].cached and by[(1, "baseline")].cached  # made by the evaluation above
    assert not by[(0, "intervention")].cached
    for seed in (0, 1):
        base, same = load_video(by[(seed, "baseline")].path), load_video(by[(seed, "intervention")].path)
        assert np.abs(base - same).max() <= 1 / 255  # uint8 frames: at most one level apart
    assert np.abs(load_video(by[(0, "baseline")].path) - load_video(by[(1, "baseline")].path)).max() > 0.1


def test_rerun_reuses_the_cached_videos_and_gives_the_same_scores(evaluation, pipe, suite):
    store = evaluation.out / "runs.zarr"
    runs = fg.store.list_runs(store)
    again = run_eval(suite, pipe, evaluation.out, edit=RECIPE, seeds=[0, 1], steps=2, scorers=[MotionMagnitude()],
                     n_resamples=500)
    assert fg.store.list_runs(store) == runs  # nothing generated, nothing recorded
    np.testing.assert_array_equal(again.results["score"].sel(scorer="motion").values,
                                  evaluation.results["score"].sel(scorer="motion").values)
    np.testing.assert_array_equal(again.results["run"].values, evaluation.results["run"].values)
    # another recipe: new intervention videos, the baseline reused
    videos = generate(suite.select(ids=["man-waves"]), pipe, evaluation.out, edit={**RECIPE, "alpha": 0.25},
                      seeds=[0], steps=2)
    assert [(v.condition, v.cached) for v in videos] == [("baseline", True), ("intervention", False)]
    assert len(fg.store.list_runs(store)) == len(runs) + 1


def test_report_has_a_table_and_a_figure_per_category(evaluation, tmp_path):
    path = write_report(evaluation.results, evaluation.summary, tmp_path)
    text = path.read_text()
    for category in ("dynamic_attribute", "human_motion", "all"):
        assert f"## {category}" in text and (tmp_path / "figures" / f"{category}.png").stat().st_size > 1000
    assert "**vlm_judge is missing**" in text
    # everything with random weights is named, so plumbing is not read as a measurement (issue 13)
    assert "**the pipeline tiny-wan has random weights**" in text
    assert "**the anchor CLIP (tiny) has random weights**" in text
    assert "**the CLIP scorers use random weights**" in text
    assert "| total |" in text
    table = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(table) == 1 + 3 * 7 and table[0].startswith("category,metric,baseline")


def test_an_existing_foreign_results_path_is_refused_before_any_work(tmp_path, pipe, suite):
    (tmp_path / "results.zarr").mkdir()
    (tmp_path / "results.zarr" / "precious.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an fglens results store"):
        run_eval(suite, pipe, tmp_path, seeds=[0], steps=2)
    assert (tmp_path / "results.zarr" / "precious.txt").read_text() == "mine"
    assert not (tmp_path / "videos").exists()


def test_bad_recipes_and_layers_fail_before_sampling(tmp_path, pipe, suite):
    with pytest.raises(ValueError, match="unknown intervention type"):
        generate(suite, pipe, tmp_path, edit={"type": "boost"}, seeds=[0], steps=2)
    with pytest.raises(ValueError, match="layer"):
        generate(suite, pipe, tmp_path, edit={"type": "cache_transfer", "src": [9], "dst": [1]}, seeds=[0], steps=2)
    with pytest.raises(ValueError, match="seeds"):
        generate(suite, pipe, tmp_path, seeds=[0, 0], steps=2)
    assert not (tmp_path / "videos").exists()


def test_the_eval_command(evaluation, suite, tmp_path, capsys):
    from fglens.cli import main

    out = tmp_path / "cli"
    shutil.copytree(evaluation.out / "videos", out / "videos")  # the cache is keyed by content, not by folder
    code = main(["eval", str(suite.path), "--pipeline", "tiny-wan", "--out", str(out), "--edit", "focal-guidance",
                 "--layers", "1,2", "--src", "3", "--clip", "tiny", "--anchor-words", "all", "--seeds", "0,1",
                 "--steps", "2", "--items", "man-waves", "--resamples", "300", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "total score" in printed and "human_motion" in printed
    assert "missing scorers (NaN, left out of the totals): alignment_change, vlm_judge" in printed
    for note in ("the pipeline tiny-wan has random weights", "the anchor CLIP (tiny) has random weights",
                 "the CLIP scorers use random weights"):
        assert f"note: {note}" in printed
    assert not (out / "runs.zarr").exists()  # every video came from the cache
    ds = open_results(out / "results.zarr")
    np.testing.assert_allclose(ds["score"].values, evaluation.results["score"].sel(item=["man-waves"]).values)
    assert (out / "report.md").is_file() and (out / "figures" / "all.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--edit", "scale"], "needs 'factor'"),
    (["--recipe", '{"type": "boost"}'], "unknown intervention type"),
    (["--edit", "focal-guidance", "--layers", "1"], "nothing to apply"),
    (["--items", "nope"], "no items"),
    (["--seeds", "a,b"], "--seeds takes comma-separated integers"),
    (["--clip", "ViT-B-16"], "needs --clip-weights"),
])
def test_the_eval_command_refuses_bad_input(suite, tmp_path, capsys, args, message):
    from fglens.cli import main

    code = main(["eval", str(suite.path), "--pipeline", "tiny-wan", "--out", str(tmp_path / "o"), "--steps", "2",
                 "--no-progress", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "videos").exists()


def test_the_cache_key_of_a_loaded_pipeline_does_not_depend_on_the_string_hash_seed(tmp_path):
    """A transformer loaded from a config lacking some keys carries diffusers' ``_use_default_values``, a list made
    from a set, whose order follows PYTHONHASHSEED; the key hashed it, so about every other new process regenerated
    cached baselines and recorded a run twice (issue 12, item 12)."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "transformer"
    fg.testing.tiny_wan_transformer().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("rope_max_seq_len", "qk_norm", "eps", "cross_attn_norm", "added_kv_proj_dim", "pos_embed_seq_len"):
        config.pop(key, None)  # left to their defaults: diffusers lists them in _use_default_values
    (folder / "config.json").write_text(json.dumps(config))
    script = (
        "import json, sys, types\n"
        "from diffusers import WanTransformer3DModel\n"
        "from fglens.eval.runner import pipeline_id\n"
        "t = WanTransformer3DModel.from_pretrained(sys.argv[1])\n"
        "pipe = types.SimpleNamespace(transformer=t)\n"
        "print(json.dumps([pipeline_id(pipe)['transformer'], list(t.config['_use_default_values'])]))\n"
    )
    seen = {}
    for seed in ("0", "1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"}
        out = subprocess.run([sys.executable, "-c", script, str(folder)], env=env, capture_output=True, text=True,
                             check=True).stdout
        key, defaults = json.loads(out.strip().splitlines()[-1])
        seen[seed] = (key, tuple(defaults))
    assert len({d for _, d in seen.values()}) > 1, seen  # the scenario: the list's order did change
    assert len({k for k, _ in seen.values()}) == 1, seen  # the key did not


def test_a_post_trained_lora_adds_two_paired_conditions_and_leaves_the_rest_alone(tmp_path, pipe):
    # issue 16 item 4: none / edit / post-trained / both on the same seeds, each compared with the baseline
    suite = builtin_suite(tmp_path / "suite", width=48, height=32).select(ids=["man-waves"])
    lora = fg.train.FocalLoRA(layers=[1], rank=2, teacher={"type": "scale", "factor": 4.0, "layers": [1]},
                              lr=1e-2, call={"steps": 2}).fit(fg.testing.tiny_wan_i2v_pipeline(), suite,
                                                              steps=4, out=tmp_path / "lora", progress=False)
    edit = {"type": "scale", "factor": 2.0, "layers": [1]}
    plain = run_eval(suite, pipe, tmp_path / "plain", edit=edit, seeds=[0, 1], steps=2, scorers=[MotionMagnitude()])
    ev = run_eval(suite, pipe, tmp_path / "four", edit=edit, seeds=[0, 1], steps=2, scorers=[MotionMagnitude()],
                  lora=lora)
    assert list(ev.results.condition.values) == ["baseline", "intervention", "lora", "lora+intervention"]
    assert list(ev.summary.contrast.values) == ["intervention", "lora", "lora+intervention"]
    assert ev.summary["contrast_diff"].dims == ("category", "contrast", "metric")
    root = tmp_path / "four"
    frames = {c: load_video(root / str(ev.results.video.sel(item="man-waves", seed=0, condition=c).values))
              for c in ev.results.condition.values}
    before = load_video(tmp_path / "plain" / str(plain.results.video.sel(item="man-waves", seed=0,
                                                                          condition="baseline").values))
    assert np.array_equal(frames["baseline"], before)  # the loaded adapter is off for the baseline
    assert not np.array_equal(frames["lora"], frames["baseline"])
    assert not np.array_equal(frames["lora+intervention"], frames["lora"])
    assert pipe.get_list_adapters() == {}  # removed again
    assert json.loads(ev.results.attrs["lora"])["path"] == str(lora)
    report = write_report(ev.results, ev.summary, root).read_text()
    assert "lora+intervention − baseline" in report
    with pytest.raises(FileNotFoundError, match="no pytorch_lora_weights.safetensors"):
        run_eval(suite, pipe, tmp_path / "bad", seeds=[0], steps=2, scorers=[MotionMagnitude()], lora=tmp_path)
