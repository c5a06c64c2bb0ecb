"""The `fglens` command: each command on the tiny pipelines, what it writes, and its one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

import fglens as fg
from fglens import cli
from fglens.pipelines import call_kwargs, load_pipeline

PROMPT = "a dog jumps over the red fence"


def call(argv: list[str]) -> tuple[int, str, str]:
    """Run `fglens ARGV` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def diagnose_argv(pipeline: str, store, *extra) -> list[str]:
    return ["diagnose", "--pipeline", pipeline, "--prompt", PROMPT, "--words", "dog,jumps", "--store", store,
            "--steps", "2", *extra]


def is_png(path) -> bool:
    data = path.read_bytes()
    if not (data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2000):
        return False
    with Image.open(path) as im:
        return im.width > 100 and im.height > 100


def only_run(store):
    runs = fg.store.list_runs(store)
    assert len(runs) == 1, runs
    return fg.open_run(store, runs[0])


def weak_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("semantic-weak layers"))


# -- diagnose ---------------------------------------------------------------------------------------------------

def run_diagnose(pipeline: str, tmp_path_factory):
    """`fglens diagnose --maps` on a tiny pipeline: (pipeline, store, exit status, stdout, stderr)."""
    store = tmp_path_factory.mktemp(pipeline) / "runs.zarr"
    code, out, err = call(diagnose_argv(pipeline, store, "--maps", "--json", store.parent / "weak.json"))
    return pipeline, store, code, out, err


@pytest.fixture(scope="module")
def wan_diagnosed(tmp_path_factory):
    return run_diagnose("tiny-wan", tmp_path_factory)


@pytest.fixture(scope="module")
def hunyuan_diagnosed(tmp_path_factory):
    return run_diagnose("tiny-hunyuan", tmp_path_factory)


@pytest.fixture(params=["wan", "hunyuan"])
def diagnosed(request):
    return request.getfixturevalue(f"{request.param}_diagnosed")


def test_diagnose_records_a_run_and_names_the_weak_layers(diagnosed):
    pipeline, store, code, out, err = diagnosed
    assert code == 0, err
    ds = only_run(store)
    assert ds.attrs["complete"] is True and ds.sizes["step"] == 2
    attrs = fg.store.decode_attrs(ds.attrs)
    assert attrs["prompt"] == PROMPT and attrs["words"] == ["dog", "jumps"] and attrs["intervention"] is None
    assert "word_map" in ds.data_vars  # --maps
    # the per-layer table: one row per layer, each cell the cond-branch mean of a statistic
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("layer "))
    header = lines[start].split()
    table = [line.split() for line in lines[start + 1:start + 1 + ds.sizes["layer"]]]
    assert [row[0] for row in table] == [str(x) for x in ds.layer.values]
    assert header[1:] == [v for v in ("word_mass", "morans_i", "similarity", "text_share", "text_mass",
                                      "image_mass", "entropy") if v in ds.data_vars]
    for layer, *cells in table:
        for name, cell in zip(header[1:], cells, strict=True):
            expected = np.nanmean(ds[name].sel(branch="cond", layer=layer).values.astype(np.float64))
            assert float(cell) == pytest.approx(expected, abs=6e-5), (layer, name)
    # the layers it names are those of the default rule on the stored run, also written as JSON
    weak = fg.find_weak_layers(ds)
    assert weak_line(out).endswith(", ".join(weak.weak) or "none")
    assert f"responsive layers (best first): {', '.join(weak.responsive)}" in out
    saved = json.loads((store.parent / "weak.json").read_text())
    assert saved["weak"] == weak.weak and saved["run"] == ds.attrs["run"]
    assert ds.attrs["run"] in out and str(store) in out


# -- plot -------------------------------------------------------------------------------------------------------

def test_plot_writes_every_figure_of_a_run(diagnosed, tmp_path):
    pipeline, store, *_ = diagnosed
    out_dir = tmp_path / "figures"
    code, out, err = call(["plot", store, "--out", out_dir])
    assert code == 0, err
    ds = only_run(store)
    stats = [v for v in ds.data_vars if v not in ("word_map", "reference_image")]
    expected = {"layer_profile.png", "condition_balance.png", "word_maps_dog.png", "word_maps_jumps.png",
                *(f"heatmap_{v}.png" for v in stats)}
    assert {p.name for p in out_dir.iterdir()} == expected
    assert ("heatmap_text_mass.png" in expected) == (pipeline == "tiny-hunyuan")
    for path in out_dir.iterdir():
        assert is_png(path), path
        assert str(path) in out  # the files written are printed
    assert "figures" in err  # the tqdm bar


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_plot_draws_the_word_maps_over_the_runs_reference_image(wan_diagnosed, tmp_path):
    _, store, *_ = wan_diagnosed
    ds = only_run(store)
    assert ds.reference_image.dims == ("image_y", "image_x", "channel")  # `fglens diagnose` kept the image
    code, _, err = call(["plot", store, "--var", "similarity", "--word", "dog", "--dpi", "50", "--out", tmp_path])
    assert code == 0, err
    drawn = _pixels(tmp_path / "word_maps_dog.png")
    over = fg.plot.word_maps(ds, "dog", dpi=50, shared_scale=True, path=tmp_path / "over.png")  # as fglens plot
    assert all(len(ax.images) == 2 for ax in over.axes if ax.images)  # the stored image, then the map
    bare = fg.plot.word_maps(ds, "dog", dpi=50, image=False, path=tmp_path / "bare.png")
    assert all(len(ax.images) == 1 for ax in bare.axes if ax.images)
    np.testing.assert_array_equal(drawn, _pixels(tmp_path / "over.png"))
    assert drawn.shape == _pixels(tmp_path / "bare.png").shape
    assert not np.array_equal(drawn, _pixels(tmp_path / "bare.png"))


def test_plot_of_a_store_written_before_runs_kept_their_image(wan_diagnosed, tmp_path):
    _, store, *_ = wan_diagnosed
    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    (run,) = fg.store.list_runs(old)
    shutil.rmtree(old / run / "reference_image")  # the run as an older fglens wrote it
    meta = json.loads((old / run / "zarr.json").read_text())
    del meta["consolidated_metadata"]["metadata"]["reference_image"]
    (old / run / "zarr.json").write_text(json.dumps(meta))
    assert "reference_image" not in only_run(old)
    out_dir = tmp_path / "figures"
    code, _, err = call(["plot", old, "--var", "similarity", "--dpi", "50", "--out", out_dir])
    assert code == 0, err
    assert {"word_maps_dog.png", "word_maps_jumps.png", "layer_profile.png"} <= {p.name for p in out_dir.iterdir()}
    fg.plot.word_maps(only_run(old), "dog", dpi=50, shared_scale=True, path=tmp_path / "bare.png")  # the maps alone
    np.testing.assert_array_equal(_pixels(out_dir / "word_maps_dog.png"), _pixels(tmp_path / "bare.png"))


# -- generate, then plot and inspect its store ------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """`fglens generate` with --layers auto (a diagnosis pass, then Focal Guidance with a tiny CLIP)."""
    out_dir = tmp_path_factory.mktemp("generate")
    code, out, err = call(["generate", "--pipeline", "tiny-wan", "--prompt", PROMPT, "--words", "dog,jumps",
                           "--out", out_dir, "--steps", "2", "--clip", "tiny", "--anchor-words", "all"])
    return out_dir, code, out, err


def test_generate_writes_the_video_and_both_runs(generated):
    out_dir, code, out, err = generated
    assert code == 0, err
    video = iio.imread(out_dir / "video.mp4")
    assert video.shape == (5, 32, 48, 3)  # the tiny Wan call: 5 frames of 48 x 32
    store = out_dir / "run.zarr"
    diag_id, edit_id = fg.store.list_runs(store)  # the diagnosis pass first
    diag, edited = fg.open_run(store, diag_id), fg.open_run(store, edit_id)
    assert fg.store.decode_attrs(diag.attrs)["intervention"] is None
    weak = fg.find_weak_layers(diag)
    assert weak.weak, "the tiny Wan run has a weak layer under the default rule"
    spec = fg.store.decode_attrs(edited.attrs)["intervention"]
    parts = {p["type"]: p for p in spec["parts"]}
    assert spec["type"] == "FocalGuidance" and set(parts) == {"AnchorMask", "CacheTransfer"}
    assert parts["CacheTransfer"]["dst"] == weak.weak
    assert parts["CacheTransfer"]["src"] == [r for r in weak.responsive if r not in weak.weak]
    assert f"Focal Guidance on layers {', '.join(weak.weak)}" in out
    assert "note: tiny-wan has random weights" in out and "note: --clip tiny has random weights" in out
    # the pairs the nearest-source rule actually uses, not every source offered (issue 13)
    depth = [str(x) for x in diag.layer.values].index
    offered = parts["CacheTransfer"]["src"]
    pairs = [(d, min(offered, key=lambda s: (abs(depth(s) - depth(d)), depth(s)))) for d in weak.weak]
    assert "cache " + ", ".join(f"{d} <- {s}" for d, s in pairs) in out
    if len(offered) > len(weak.weak):
        assert f"(nearest of {', '.join(offered)}, responsive)" in out
    # same seed: before the first repaired layer, the first step is untouched; the edit changes what follows
    first = [str(x) for x in diag.layer.values].index(weak.weak[0])
    before = dict(branch="cond", step=0, layer=diag.layer.values[:first])
    np.testing.assert_array_equal(edited.similarity.sel(**before).values, diag.similarity.sel(**before).values)
    assert not np.allclose(edited.similarity.values, diag.similarity.values)


def test_generate_without_clip_applies_the_cache_transfer_only(tmp_path):
    code, out, err = call(["generate", "--pipeline", "tiny-wan", "--prompt", PROMPT, "--words", "dog",
                           "--out", tmp_path, "--steps", "2", "--layers", "1,2", "--src", "3", "--frames", "9"])
    assert code == 0, err
    assert "anchor is dropped" in out
    assert "cache blocks.1 <- blocks.3, blocks.2 <- blocks.3, alpha" in out   # one source: no "nearest of"
    assert iio.imread(tmp_path / "video.mp4").shape[0] == 9
    ds = only_run(tmp_path / "run.zarr")  # explicit layers: no diagnosis pass
    spec = fg.store.decode_attrs(ds.attrs)["intervention"]
    assert [p["type"] for p in spec["parts"]] == ["CacheTransfer"]
    assert spec["parts"][0]["src"] == [3] and spec["parts"][0]["dst"] == [1, 2]  # as given


def test_plot_compares_runs_with_and_without_the_intervention(generated, tmp_path):
    out_dir, *_ = generated
    store = out_dir / "run.zarr"
    code, _, err = call(["plot", store, "--out", tmp_path])
    assert code == 2 and "holds 2 runs" in err and "--all" in err
    code, out, err = call(["plot", store, "--all", "--var", "similarity", "--out", tmp_path])
    assert code == 0, err
    diag_id, edit_id = fg.store.list_runs(store)
    compare = tmp_path / f"compare_similarity_{diag_id}_vs_{edit_id}.png"
    assert is_png(compare)
    for run in (diag_id, edit_id):
        assert {p.name for p in (tmp_path / run).iterdir()} == {
            "layer_profile.png", "heatmap_similarity.png", "condition_balance.png"}


def test_plot_pools_a_sweeps_runs(tmp_path):
    """Several prompts and seeds with and without an intervention: one pooled profile over the plain runs and
    one pooled comparison per intervention, paired over the (prompt, seed) pairs."""
    from fglens.sweep import run_sweep

    fg.testing.reference_image().save(tmp_path / "ref.png")
    scale = {"type": "scale", "words": ["dog"], "factor": 3.0}
    lines = [{"image": "ref.png", "prompt": PROMPT, "words": ["dog"], "seed": s, "intervention": edit}
             for s in (0, 1) for edit in (None, scale)]
    spec = tmp_path / "spec.jsonl"
    spec.write_text("\n".join(json.dumps(line) for line in lines))
    store = tmp_path / "sweep.zarr"
    assert run_sweep(spec, "tiny-wan", store, steps=2, progress=False).failed == {}
    code, out, err = call(["plot", store, "--all", "--var", "word_mass", "--out", tmp_path / "fig"])
    assert code == 0, err
    assert is_png(tmp_path / "fig" / "pooled_layer_profile.png")
    pooled = tmp_path / "fig" / "pooled_compare_word_mass_Scale.png"
    assert is_png(pooled)
    assert len(list((tmp_path / "fig").glob("compare_word_mass_*.png"))) == 2   # and the per-pair ones
    from fglens.cli.plot import pooled_jobs, select_runs

    notes: list[str] = []
    jobs = dict(pooled_jobs(select_runs(str(store), None, True), tmp_path / "again", "png", ["word_mass"], {}, notes))
    fig = jobs[tmp_path / "again" / "pooled_compare_word_mass_Scale.png"](tmp_path / "again.png")
    assert "2\u00a0runs" in fig.get_suptitle() and "paired" in fig.get_suptitle(), fig.get_suptitle()


def test_inspect_lists_runs_and_marks_an_incomplete_one(wan_diagnosed, tmp_path, capsys):
    _, store, *_ = wan_diagnosed
    copy = tmp_path / "runs.zarr"
    shutil.copytree(store, copy)
    pipe = load_pipeline("tiny-wan")

    def stop(*args, **kwargs):
        raise RuntimeError("stopped by the test")

    kwargs = call_kwargs(pipe, prompt=PROMPT, image=fg.testing.reference_image(), steps=3)
    with pytest.raises(RuntimeError, match="stopped"), fg.trace(pipe, record=fg.Record(words=["fence"]), store=copy):
        pipe(**kwargs, callback_on_step_end=stop)
    complete_id, cut_id = fg.store.list_runs(copy)
    assert cli.main(["inspect", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "schema 1, 2 runs (1 complete, 1 incomplete)" in out
    lines = {run: next(line for line in out.splitlines() if line.strip().startswith(run))
             for run in (complete_id, cut_id)}
    assert " complete " in lines[complete_id] and " 2/2 " in lines[complete_id]
    assert "dog, jumps" in lines[complete_id] and "fence" in lines[cut_id]
    written = fg.store.run_table(copy).set_index("id").loc[cut_id, "steps_written"]
    assert " INCOMPLETE " in lines[cut_id] and f" {written}/3 " in lines[cut_id]
    assert "word_map (branch, step, layer, word, frame, y, x)" in out  # the complete run's variables


# -- demo -------------------------------------------------------------------------------------------------------

def test_demo_writes_a_run_a_table_and_figures(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--steps", "2", "--layers", "3", "--toy-items", "0"]) == 0
    out = capsys.readouterr().out
    assert "blocks.2" in out and "word_mass" in out and str(tmp_path / "demo.zarr") in out
    ds = fg.open_run(tmp_path / "demo.zarr")
    assert ds.attrs["complete"] is True
    assert list(ds.word.values) == ["dog", "jumps", "fence"]
    assert ds.sizes["step"] == 2 and ds.sizes["layer"] == 3
    figures = sorted((tmp_path / "figures").iterdir())
    assert {"layer_profile.png", "condition_balance.png", "word_maps_dog.png"} <= {p.name for p in figures}
    assert all(is_png(p) and str(p) in out for p in figures)


def test_demo_twice_then_its_printed_plot_hint_works(tmp_path, capsys):
    """A second demo adds a run to the same store; the `fglens plot` line it prints names that run."""
    import re
    import shlex

    argv = ["demo", "--out", str(tmp_path), "--steps", "1", "--layers", "2", "--toy-items", "0", "--no-figures"]
    assert cli.main(argv) == 0
    assert cli.main([*argv[:-1]]) == 0
    out = capsys.readouterr().out
    assert len(fg.store.list_runs(tmp_path / "demo.zarr")) == 2
    hint = re.search(r"\(as `fglens (plot [^`]+)`\)", out).group(1)
    assert cli.main(shlex.split(hint)) == 0, capsys.readouterr().err
    second = re.findall(r"wrote run (\S+) to", out)[-1]  # the second call's run (ids made in one second sort randomly)
    assert f"--run {second}" in hint


# -- errors: exit status 2 and one line on stderr, before any sampling ------------------------------------------

def assert_usage_error(argv, *fragments) -> str:
    code, out, err = call(argv)
    assert code == 2, (out, err)
    command = argv[0]
    assert err.startswith(f"fglens {command}: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def assert_argparse_error(argv, fragment) -> None:
    """An option argparse refuses: exit 2, the usage and one error line naming the option, nothing run."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in argv])
    assert info.value.code == 2
    assert fragment in err.getvalue().splitlines()[-1], err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_missing_store(tmp_path):
    assert_usage_error(["plot", tmp_path / "nope.zarr", "--out", tmp_path / "figs"], "no fglens store at")
    assert_usage_error(["inspect", tmp_path / "nope.zarr"], "no fglens store at")
    assert not (tmp_path / "figs").exists()


def test_not_an_fglens_store(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    assert_usage_error(["inspect", tmp_path / "data"], "is not an fglens store")
    assert_usage_error(["plot", tmp_path / "data", "--out", tmp_path / "figs"], "is not an fglens store")
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"


def test_unknown_statistic_run_and_word(wan_diagnosed, tmp_path):
    _, store, *_ = wan_diagnosed
    assert_usage_error(["plot", store, "--var", "nope", "--out", tmp_path], "unknown statistic 'nope'",
                       "similarity", "morans_i")
    assert_usage_error(["plot", store, "--word", "cat", "--out", tmp_path], "'cat' was not recorded", "dog, jumps")
    assert_usage_error(["plot", store, "--run", "run-x", "--out", tmp_path], "no run 'run-x'")
    assert not any(tmp_path.iterdir())


def test_missing_image(tmp_path):
    store = tmp_path / "runs.zarr"
    assert_usage_error(diagnose_argv("tiny-wan", store, "--image", tmp_path / "dog.png"),
                       "reference image not found", "dog.png")
    assert not store.exists()


def test_word_not_in_the_prompt(tmp_path):
    store = tmp_path / "runs.zarr"
    argv = diagnose_argv("tiny-wan", store)
    argv[argv.index("dog,jumps")] = "dog,cat"
    assert_usage_error(argv, "not in the prompt", "'cat'")
    assert not store.exists()


def test_unknown_pipeline(tmp_path):
    store = tmp_path / "runs.zarr"
    assert_usage_error(diagnose_argv("tiny-sdxl", store), "no pipeline at tiny-sdxl", "tiny-wan", "tiny-hunyuan")
    assert_usage_error(diagnose_argv(str(tmp_path), store), "not a diffusers pipeline folder")
    assert not store.exists()


def test_generate_checks_its_options_before_sampling(tmp_path):
    base = ["generate", "--pipeline", "tiny-wan", "--prompt", PROMPT, "--words", "dog", "--out", tmp_path]
    assert_usage_error([*base, "--src", "none"], "nothing to apply", "--clip")
    assert_usage_error([*base, "--clip", "ViT-H-14"], "needs --clip-weights")
    assert_usage_error([*base, "--layers", "1,,2"], "--layers takes")
    assert_usage_error([*base, "--alpha", "1.5"], "--alpha must be in [0, 1]")
    for option in ("--strength", "--alpha"):
        for bad in ("nan", "inf", "-inf"):
            assert_argparse_error([*base, f"{option}={bad}"],
                                  f"argument {option}: must be a finite number; got '{bad}'")
    assert_usage_error([*base, "--layers", "7", "--src", "3"], "cannot build Focal Guidance", "7")
    assert not any(tmp_path.iterdir())
    (tmp_path / "video.mp4").write_bytes(b"mine")
    assert_usage_error(base, "video.mp4 exists", "--overwrite")
    assert (tmp_path / "video.mp4").read_bytes() == b"mine"


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"] if command is None else [command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and (command is None or f"fglens {command}" in out.split("example", 1)[1])


def test_import_and_help_load_nothing_heavy():
    """`import fglens` and `fglens --help` load no torch, diffusers, xarray or matplotlib (they took 7 s; the
    time itself is reported by `fglens bench`, not asserted here); `fg.trace` is still the function."""
    import subprocess
    import sys

    heavy = ("torch", "diffusers", "xarray", "matplotlib", "transformers", "zarr")
    code = ("import sys, fglens, fglens.cli; fglens.cli.build_parser().format_help(); "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded
    code = "import fglens.trace.record, fglens as fg; print(callable(fg.trace), fg.Record.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "fglens.trace.record"]


@pytest.mark.parametrize("command", ["demo", "diagnose", "generate", "sweep", "eval"])
def test_frames_is_one_option_with_num_frames_as_its_alias(command):
    """Every command that takes a frame count spells it --frames; --num-frames is the same option (issue 13)."""
    rest = {"demo": [], "diagnose": ["--pipeline", "tiny-wan", "--prompt", "a dog", "--words", "dog", "--store", "s"],
            "generate": ["--pipeline", "tiny-wan", "--prompt", "a dog", "--words", "dog", "--out", "o"],
            "sweep": ["spec.jsonl", "--pipeline", "tiny-wan", "--store", "s"],
            "eval": ["builtin", "--pipeline", "tiny-wan", "--out", "o"]}[command]
    parser = cli.build_parser()
    values = set()
    for flag in ("--frames", "--num-frames"):
        args = parser.parse_args([command, *rest, flag, "9"])
        values.add(args.frames if hasattr(args, "frames") else args.num_frames)
    assert values == {9}
    assert "--frames" in parser._subparsers._group_actions[0].choices[command].format_help()


def test_diagnose_by_the_similarity_maps_morans_i_records_it(tmp_path):
    """`--score similarity_morans_i` records the statistic it rests on (not a default one) and names the layers the
    rule names on the stored run."""
    from fglens.cli.item import SCORE_CHOICES
    from fglens.diagnose import SCORE_CHOICES as RULE_SCORES

    assert SCORE_CHOICES == RULE_SCORES  # the CLI spells them out so that --help imports no torch
    store = tmp_path / "runs.zarr"
    code, out, err = call(diagnose_argv("tiny-wan", store, "--score", "similarity_morans_i", "--z", "-0.5",
                                        "--exclude-edges", "0"))
    assert code == 0, err
    ds = only_run(store)
    assert "similarity_morans_i" in ds.data_vars and "similarity_map" not in ds.data_vars
    weak = fg.find_weak_layers(ds, score="similarity_morans_i", z=-0.5, exclude_edges=0.0)
    assert weak_line(out).endswith(", ".join(weak.weak) or "none")
    assert "score='similarity_morans_i'" in out
