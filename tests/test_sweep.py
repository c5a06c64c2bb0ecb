"""`fglens sweep`: a JSONL spec traced into one store, on one process or under torchrun, resumable.

The torchrun test launches the real command twice (2 ranks on the CPU): once with one rank killed in the middle
of a run, once to finish. The in-process tests cover resume, failures, and every refusal before work starts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fglens as fg
from fglens.cli import main as cli_main
from fglens.pipelines import load_pipeline
from fglens.sweep import (
    SWEEP_FILE,
    SweepError,
    prompt_tokens,
    rank_info,
    read_sweep_record,
    run_sweep,
)
from fglens.testing import TINY_PROMPT, reference_image

FORWARDS_PER_RUN = 4  # tiny Wan, 2 steps, classifier-free guidance: cond + uncond per step


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny-wan")


def make_spec(folder: Path, lines: list, name: str = "spec.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    reference_image().save(folder / "ref.png")
    path = folder / name
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines))
    return path


def line(seed: int, **extra) -> dict:
    return {"image": "ref.png", "prompt": TINY_PROMPT, "words": ["dog"], "seed": seed, "intervention": None, **extra}


@contextmanager
def forwards(pipe, fail_at: int | None = None):
    """Count the transformer's forwards; raise inside the `fail_at`-th one (a failure in the middle of a run)."""
    count = {"n": 0}

    def hook(module, args, kwargs):
        count["n"] += 1
        if count["n"] == fail_at:
            raise RuntimeError("injected failure")

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield count
    finally:
        handle.remove()


def run_ids(result) -> list[str]:
    return [result.run_ids[i] for i in result.lines]


# -- two ranks under torchrun -----------------------------------------------------------------------------------
SUMMARY = re.compile(r"rank (\d)/2: (\d+) line\(s\): done (\d+), skipped (\d+), redone (\d+), failed (\d+)")


def test_torchrun_two_ranks_one_killed_midway_then_resumed(tmp_path):
    n = 4
    spec = make_spec(tmp_path, [line(seed) for seed in range(n)])
    store = tmp_path / "sweep.zarr"
    args = ["sweep", str(spec), "--pipeline", "tiny-wan", "--store", str(store), "--steps", "2", "--no-progress"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    # rank 1 (lines 1 and 3) dies in the middle of its 2nd run, once a step of it is in the store; torchrun then
    # stops rank 0 wherever it is (the fault is injected by tests/sweep_killer.py, around the real command)
    killer = str(Path(__file__).with_name("sweep_killer.py"))
    killed = subprocess.run([*torchrun, killer, *args], env={**env, "KILL_AFTER": "2", "KILL_RANK": "1"},
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    before = fg.store.run_table(store).set_index("id")
    sweep_id = read_sweep_record(store)["sweep_id"]
    ids = [f"{sweep_id}-{i:04d}" for i in range(n)]
    assert before.loc[ids[1], "complete"], before  # rank 1's first line finished before the kill
    assert not before.loc[ids[3], "complete"] and before.loc[ids[3], "steps_written"] == 1, before
    partial = fg.open_run(store, run=ids[3])  # the cut run is readable, with the step written before the kill
    assert partial.sizes["step"] == 1 and fg.store.decode_attrs(partial.attrs)["seed"] == 3
    complete_before = int(before["complete"].sum())

    resumed = subprocess.run([*torchrun, "-m", "fglens.cli", *args], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summaries = {int(m[0]): [int(x) for x in m[1:]] for m in SUMMARY.findall(resumed.stdout)}
    assert sorted(summaries) == [0, 1], resumed.stdout
    assert all(s[0] == n // 2 and s[4] == 0 for s in summaries.values())  # each rank: its 2 lines, none failed
    assert sum(s[2] for s in summaries.values()) == complete_before  # complete runs skipped, counted
    assert sum(s[1] + s[3] for s in summaries.values()) == n - complete_before
    assert summaries[1][3] >= 1  # the killed run was redone

    after = fg.store.run_table(store).sort_values("id")
    assert list(after["id"]) == ids  # exactly one run per line: the partial one was replaced, not duplicated
    assert after["complete"].all() and (after["steps_written"] == 2).all()
    assert [int(s) for s in after["seed"]] == list(range(n))
    for run_id in before.index[before["complete"]]:  # skipped runs were not rewritten
        assert after.set_index("id").loc[run_id, "created"] == before.loc[run_id, "created"]
    ds = fg.open_runs(store, lazy=False)
    assert ds.sizes["run"] == n and ds.sizes["step"] == 2
    assert not os.path.exists(store / ".fglens-sweep.json.partial")
    assert not [p for p in os.listdir(store) if p.startswith(".claim-")]


# -- one process: resume, failures ------------------------------------------------------------------------------
def test_failed_line_does_not_stop_others_and_resume_redoes_it(tmp_path, pipe):
    spec = make_spec(tmp_path, [line(0), line(1, words=["dog", "fence"]), line(2)])
    store = tmp_path / "sweep.zarr"
    with forwards(pipe, fail_at=FORWARDS_PER_RUN + 3) as count:  # line 1 fails in its 2nd step
        first = run_sweep(spec, pipe, store, steps=2, progress=False)
    assert count["n"] == 3 * FORWARDS_PER_RUN - 1  # line 2 still ran
    assert first.done == [0, 2] and list(first.failed) == [1] and "injected failure" in first.failed[1]
    assert not first.ok and "failed 1" in first.summary()
    cut = fg.store.run_info(store, first.run_ids[1])
    assert cut["complete"] is False and cut["steps_written"] == 1
    created = {i: fg.store.run_info(store, first.run_ids[i])["created"] for i in (0, 2)}

    with forwards(pipe) as count:
        second = run_sweep(spec, pipe, store, steps=2, progress=False)
    assert count["n"] == FORWARDS_PER_RUN  # only the incomplete line was sampled again
    assert (second.done, second.skipped, second.redone, second.failed) == ([], [0, 2], [1], {})
    assert second.ok and second.summary() == "rank 0/1: 3 line(s): done 0, skipped 2, redone 1, failed 0"
    assert fg.store.list_runs(store) == run_ids(first)  # one run per line, the cut one replaced
    for i in range(3):
        info = fg.store.run_info(store, first.run_ids[i])
        assert info["complete"] is True and info["steps_written"] == 2 and info["seed"] == i
        if i != 1:
            assert info["created"] == created[i]
    assert fg.store.run_info(store, first.run_ids[1])["words"] == ["dog", "fence"]


def test_fail_fast_stops_at_the_first_failure(tmp_path, pipe):
    spec = make_spec(tmp_path, [line(0), line(1), line(2)])
    store = tmp_path / "sweep.zarr"
    with forwards(pipe, fail_at=FORWARDS_PER_RUN + 1):
        result = run_sweep(spec, pipe, store, steps=2, progress=False, fail_fast=True)
    assert result.done == [0] and list(result.failed) == [1] and result.stopped and not result.ok
    assert "1 not attempted" in result.summary()
    assert fg.store.run_info(store, result.run_ids[2]) is None


def test_intervention_lines_record_their_recipe(tmp_path, pipe):
    recipe = {"type": "cache_transfer", "src": [3], "dst": [1, 2], "alpha": 0.25}
    spec = make_spec(tmp_path, [line(0, intervention=recipe, id="cache"), line(0)])
    result = run_sweep(spec, pipe, tmp_path / "s.zarr", steps=2, progress=False, record={"maps": True})
    assert result.run_ids[0].endswith("-cache") and result.run_ids[1].endswith("-0001")
    edited = fg.open_run(tmp_path / "s.zarr", run=result.run_ids[0])
    plain = fg.open_run(tmp_path / "s.zarr", run=result.run_ids[1])
    spec_attr = fg.store.decode_attrs(edited.attrs)["intervention"]
    assert spec_attr["type"] == "CacheTransfer" and spec_attr["alpha"] == 0.25
    assert fg.store.decode_attrs(plain.attrs)["intervention"] is None and "word_map" in plain
    # same seed, same prompt: the unedited layer 0 agrees, the edited destination layer differs
    a, b = edited.word_mass.sel(layer="blocks.0"), plain.word_mass.sel(layer="blocks.0")
    assert float(abs(a - b).max()) < 1e-6
    assert float(abs(edited.word_mass.sel(layer="blocks.1") - plain.word_mass.sel(layer="blocks.1")).max()) > 1e-6


def test_sweep_agrees_with_generate_on_the_image_and_the_anchor(tmp_path, pipe, capsys):
    """As `fglens diagnose` / `generate`: a tiny image-to-video pipeline takes a line without 'image' (the default
    reference image); a focal_guidance line without 'clip' but with 'src' drops the anchor with a note (issue 13)."""
    fgl = {"type": "focal_guidance", "layers": [1], "src": [3]}
    no_image = {k: v for k, v in line(1).items() if k != "image"}
    spec = make_spec(tmp_path, [line(0, intervention=fgl), no_image])
    result = run_sweep(spec, pipe, tmp_path / "s.zarr", steps=1, progress=False)
    assert "the FSG anchor is dropped; only the attention cache transfer is applied" in capsys.readouterr().err
    edited = fg.open_run(tmp_path / "s.zarr", run=result.run_ids[0])
    parts = fg.store.decode_attrs(edited.attrs)["intervention"]["parts"]
    assert [p["type"] for p in parts] == ["CacheTransfer"]
    plain = fg.open_run(tmp_path / "s.zarr", run=result.run_ids[1])
    np.testing.assert_array_equal(plain.reference_image.values, np.asarray(reference_image()))
    real = type("Real", (), {"__call__": pipe.__class__.__call__})()  # an image-to-video pipeline, not tiny
    assert fg.pipelines.default_image(real) is None


# -- refusals before any work -----------------------------------------------------------------------------------
def refused(pipe, tmp_path, lines, *, match, pipeline=None, rank=0, world_size=1, error=SweepError, **kwargs):
    spec = make_spec(tmp_path, lines)
    store = tmp_path / "sweep.zarr"
    with forwards(pipe) as count, pytest.raises(error, match=match):
        run_sweep(spec, pipeline if pipeline is not None else pipe, store, steps=2, progress=False, rank=rank,
                  world_size=world_size, **kwargs)
    assert count["n"] == 0 and not store.exists()  # nothing sampled, nothing written


def test_refuses_a_line_missing_a_field(tmp_path, pipe):
    bad = {k: v for k, v in line(1).items() if k != "seed"}
    refused(pipe, tmp_path, [line(0), bad], match=r"spec\.jsonl line 2: missing field\(s\) 'seed'")


def test_refuses_bad_json_and_lists_every_bad_line(tmp_path, pipe):
    lines = [line(0), '{"image": "ref.png", "prompt": "a dog",', "", line(1, colour="red"), line(-1)]
    refused(pipe, tmp_path, lines, match=r"(?s)line 2: not valid JSON.*line 4: unknown field\(s\) \['colour'\]"
            r".*line 5: 'seed' must be a non-negative integer; got -1")


def test_refuses_words_not_in_the_prompt_on_any_rank(tmp_path, pipe):
    # line index 1 belongs to rank 1, yet rank 0 refuses the whole sweep before sampling
    refused(pipe, tmp_path, [line(0), line(1, words=["dog", "cat"])], rank=0, world_size=2,
            match=r"line 2: word 'cat' is not in the prompt 'a dog jumps over the red fence'")


def test_refuses_intervention_layers_the_model_lacks(tmp_path, pipe):
    refused(pipe, tmp_path, [line(0, intervention={"type": "cache_transfer", "src": [7], "dst": [1]})],
            match=r"line 1: the intervention names a layer this model does not have: layer index 7 is out of range")
    refused(pipe, tmp_path, [line(0, intervention={"type": "ablate", "segment": "text", "layers": ["blocks.9"]})],
            match=r"line 1: .*unknown layer 'blocks.9'")


def test_refuses_bad_intervention_recipes(tmp_path, pipe):
    refused(pipe, tmp_path, [line(0, intervention={"type": "focal_guidance", "layers": [1]})],
            match=r"line 1: the focal_guidance intervention builds a CLIP anchor: give it a 'clip'")
    refused(pipe, tmp_path, [line(0, intervention={"type": "steer"})],
            match=r"line 1: bad intervention: unknown intervention type 'steer'")


def test_refuses_a_mismatched_image_size(tmp_path, pipe):
    tmp_path.mkdir(exist_ok=True)
    Image.new("RGB", (64, 32)).save(tmp_path / "wide.png")  # aspect 2.0; the tiny video is 48x32 (1.5)
    refused(pipe, tmp_path, [line(0), line(1, image="wide.png")], match=r"line 2: the reference image is 64x32")
    refused(pipe, tmp_path, [line(0, height=40)], match=r"line 1: height 40 is not a multiple of 16")
    refused(pipe, tmp_path, [line(0, image="missing.png")], match=r"line 1: image 'missing.png' not found")


def test_refuses_an_unknown_pipeline_class_before_reading_weights(tmp_path, pipe):
    folder = tmp_path / "sdxl"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    refused(pipe, tmp_path, [line(0)], pipeline=str(folder), error=ValueError,
            match="holds a StableDiffusionXLPipeline, which fglens cannot trace")


def test_refuses_a_store_used_by_a_different_sweep(tmp_path, pipe):
    store = tmp_path / "sweep.zarr"
    first = run_sweep(make_spec(tmp_path, [line(0)], "a.jsonl"), pipe, store, steps=2, progress=False)
    other = make_spec(tmp_path, [line(5)], "b.jsonl")
    with forwards(pipe) as count, pytest.raises(SweepError, match="is already used by sweep " + first.sweep_id):
        run_sweep(other, pipe, store, steps=2, progress=False)
    with pytest.raises(SweepError, match="already used"):  # same lines, other sweep-wide steps: another sweep
        run_sweep(make_spec(tmp_path, [line(0)], "a.jsonl"), pipe, store, steps=3, progress=False)
    assert count["n"] == 0 and fg.store.list_runs(store) == run_ids(first)

    forced = run_sweep(other, pipe, store, steps=2, progress=False, force_new_sweep=True)
    assert forced.done == [0] and forced.sweep_id != first.sweep_id
    assert fg.store.list_runs(store) == sorted(run_ids(first) + run_ids(forced))  # the old run is kept
    record = read_sweep_record(store)
    assert record["fingerprint"] == forced.fingerprint and record["replaced"][0]["fingerprint"] == first.fingerprint
    assert json.loads((store / SWEEP_FILE).read_text())["sweep_id"] == forced.sweep_id


def test_refuses_bad_record_options(tmp_path, pipe):
    refused(pipe, tmp_path, [line(0)], record={"layers": [9]}, match=r"bad record options .*layer index 9")
    refused(pipe, tmp_path, [line(0)], record={"branches": ["both"]}, match=r"bad record options .*'both'")
    refused(pipe, tmp_path, [line(0)], record={"words": ["dog"]}, error=ValueError,
            match=r"unknown record option\(s\) \['words'\]")


def test_cli_refusal_names_the_line_and_exits_2(tmp_path, capsys):
    spec = make_spec(tmp_path, [line(0), {"prompt": TINY_PROMPT, "seed": 1}])
    code = cli_main(["sweep", str(spec), "--pipeline", "tiny-wan", "--store", str(tmp_path / "s.zarr")])
    assert code == 2
    assert "line 2: missing field(s) 'words'" in capsys.readouterr().err
    assert not (tmp_path / "s.zarr").exists()


# -- pieces -----------------------------------------------------------------------------------------------------
def test_word_check_locates_words_where_the_tracer_finds_them(pipe):
    words = ["dog", "red fence", "jumps"]
    for family, p in (("wan", pipe), ("hunyuan", fg.testing.tiny_hunyuan_i2v_pipeline())):
        ds = fg.testing.tiny_run(family, words=tuple(words), maps=False, pipe=p)
        assert prompt_tokens(p, TINY_PROMPT).locate(words) == fg.store.decode_attrs(ds.attrs)["word_positions"]


def test_rank_info_from_the_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert rank_info() == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_info() == (3, 4, 1)
    assert rank_info(rank=0, world_size=2) == (0, 2, 1)
    with pytest.raises(ValueError, match="rank 4 of world size 4"):
        rank_info(rank=4)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        rank_info()


def test_trace_run_id_names_runs_and_suffixes_later_calls(tmp_path, pipe):
    store = tmp_path / "runs.zarr"
    kwargs = fg.pipelines.call_kwargs(pipe, prompt=TINY_PROMPT, image=reference_image(), steps=1,
                                      output_type="latent")
    with fg.trace(pipe, record=fg.Record(words=["dog"]), store=store, run_id="line-7") as run:
        pipe(**kwargs)
        pipe(**fg.pipelines.call_kwargs(pipe, prompt=TINY_PROMPT, image=reference_image(), steps=1,
                                        output_type="latent"))
    assert run.run_ids == ["line-7", "line-7-1"] == fg.store.list_runs(store)
    with pytest.raises(FileExistsError, match="complete"):  # a complete run is never replaced
        with fg.trace(pipe, record=fg.Record(words=["dog"]), store=store, run_id="line-7"):
            pipe(**fg.pipelines.call_kwargs(pipe, prompt=TINY_PROMPT, image=reference_image(), steps=1,
                                            output_type="latent"))
    with pytest.raises(ValueError, match="give store= too"):
        fg.trace(pipe, run_id="line-8")
