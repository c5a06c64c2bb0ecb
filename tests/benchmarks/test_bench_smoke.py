"""Smoke tests of `fglens bench` at tiny token counts (the Wan stack and the HunyuanVideo joint proxy): the harness
runs and measures; no timing asserted."""

from __future__ import annotations

import json
import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fglens import bench  # noqa: E402

TOKENS = [160, 320]  # 2 and 4 latent frames of 8 x 10 tokens
KEYS = ("n_tokens", "mode", "flops", "peak_bytes", "wall_s", "recorder_bytes")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return bench.run_benchmark(TOKENS, repeats=1, frame_hw=(8, 10), num_layers=2)


def _by(records: list[dict]) -> dict[tuple[int, str], dict]:
    return {(r["n_tokens"], r["mode"]): r for r in records}


def test_records_have_keys_and_positive_values(records: list[dict]) -> None:
    assert sorted(_by(records)) == sorted((n, m) for n in TOKENS for m in bench.MODES)
    for r in records:
        for key in KEYS:
            assert key in r, key
        assert r["flops"] > 0 and r["peak_bytes"] > 0 and r["wall_s"] > 0
        assert r["grid"] == [r["n_tokens"] // 80, 8, 10]


def test_naive_recorder_costs_more_memory_than_fglens(records: list[dict]) -> None:
    by = _by(records)
    n = max(TOKENS)
    assert by[n, "plain"]["recorder_bytes"] == 0
    for mode in ("traced", "traced_ref"):
        assert by[n, "naive"]["recorder_bytes"] > by[n, mode]["recorder_bytes"]


def test_traced_flops_at_least_plain(records: list[dict]) -> None:
    by = _by(records)
    for n in TOKENS:
        assert by[n, "traced"]["flops"] >= by[n, "plain"]["flops"]
        assert by[n, "traced_ref"]["flops"] > by[n, "traced"]["flops"]  # ref_mass recomputes Q·K over all keys


def test_cpu_attention_is_counted(records: list[dict]) -> None:
    for r in records:
        assert r["flops_by_op"].get("aten._scaled_dot_product_flash_attention_for_cpu", 0) > 0


def test_naive_control_computes_the_same_statistics(records: list[dict]) -> None:
    by = _by(records)
    for n in TOKENS:
        diff = by[n, "naive"]["max_abs_diff_vs_fglens"]
        assert diff is not None and diff < 1e-4


def test_live_bytes_meter() -> None:
    with bench.LiveBytesMeter() as meter:
        x = torch.ones(1000)  # 4000 bytes
        y = x * 2  # 4000 more
        del x
        z = y.view(10, 100) + 1  # a view allocates nothing, the sum 4000
        del y, z
        w = torch.ones(10)
    assert meter.peak == 8000
    assert meter.current == w.untyped_storage().nbytes()


def _verdict_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line[:4] in ("PASS", "FAIL", "N/A ")]


def test_report_and_verdicts(records: list[dict]) -> None:
    text = bench.format_report(records)
    header = next(line for line in text.splitlines() if "traced/plain" in line)
    assert "fg/plain" in header and "naive/plain" in header and "fg per edited layer" in header  # one table
    lines = _verdict_lines(text)
    assert len(lines) == 3
    assert "FLOP ratio" in lines[0] and lines[0].startswith("N/A")  # no N >= 3840 at this size
    assert "log-log slope" in lines[1] and not lines[1].startswith("N/A")  # two N: a slope for each recorder
    for mode in ("traced", "traced_ref", "naive"):
        fit = bench.memory_fit(records, mode)
        assert f"{mode}: slope {fit['slope']:.2f}" in lines[1]
    assert "fg FLOP overhead per edited layer" in lines[2] and lines[2].startswith("N/A")


# -- the joint-attention proxy (HunyuanVideo) -------------------------------------------------------------------
SDPA = "aten._scaled_dot_product_flash_attention_for_cpu"


@pytest.fixture(scope="module")
def joint_records() -> list[dict]:
    return bench.run_benchmark(TOKENS, repeats=1, model="hunyuan", frame_hw=(8, 10), num_double=1, num_single=1)


def test_joint_records(joint_records: list[dict]) -> None:
    assert sorted(_by(joint_records)) == sorted((n, m) for n in TOKENS for m in bench.JOINT_MODES)
    for r in joint_records:
        for key in KEYS:
            assert key in r, key
        assert r["model"] == "hunyuan" and r["num_layers"] == 2
        assert r["flops"] > 0 and r["peak_bytes"] > 0 and r["wall_s"] > 0
        assert r["grid"] == [r["n_tokens"] // 80, 8, 10]
        assert r["flops_by_op"].get(SDPA, 0) > 0  # the joint attention runs the CPU flash kernel, counted


def test_joint_naive_control_computes_the_same_statistics(joint_records: list[dict]) -> None:
    by = _by(joint_records)
    for n in TOKENS:
        r = by[n, "naive"]
        assert r["max_abs_diff_vs_fglens"] is not None and r["max_abs_diff_vs_fglens"] < 1e-4
        assert set(r["statistics_compared"]) == {
            "word_mass", "morans_i", "similarity", "entropy", "text_mass", "image_mass"
        }
        assert by[n, "naive"]["recorder_bytes"] > by[n, "traced"]["recorder_bytes"]


def test_joint_traced_reuses_the_kernel_and_recomputes_only_context_logits(joint_records: list[dict]) -> None:
    by = _by(joint_records)
    for n in TOKENS:
        plain, traced = by[n, "plain"]["flops_by_op"], by[n, "traced"]["flops_by_op"]
        assert traced[SDPA] == plain[SDPA]  # the row LSE comes from the model's own kernel call: no second pass
        extra_bmm = traced.get("aten.bmm", 0) - plain.get("aten.bmm", 0)
        parts = bench.joint_recompute_flops(by[n, "traced"])
        qk = parts["image"] + parts["real text"]
        # video queries x the unmasked context keys (masked padding is skipped); the rest (word-mean keys,
        # similarity) is small
        assert qk <= extra_bmm <= 1.1 * qk


def test_joint_report(joint_records: list[dict], records: list[dict]) -> None:
    text = bench.format_report(joint_records + records)
    assert "joint proxy: HunyuanVideoTransformer3DModel" in text and "WanTransformer3DModel" in text
    assert text.index("WanTransformer3DModel") < text.index("HunyuanVideoTransformer3DModel")
    lines = _verdict_lines(text)
    assert len(lines) == 6
    assert [("joint proxy:" in line) for line in lines] == [False] * 3 + [True] * 3
    assert all(line.startswith("N/A") for line in lines if "FLOP ratio" in line)
    assert "on double.0 (the middle half" in text  # the joint proxy's fg edits its first block, source single.0


def test_joint_mode_context_rejects_wan_only_modes() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        bench.run_benchmark([80], model="hunyuan", modes=("traced_ref",))
    with pytest.raises(ValueError, match="unknown model"):
        bench.run_benchmark([80], model="sdxl")


def test_cli_writes_json(tmp_path) -> None:
    from fglens import cli

    out = tmp_path / "bench.json"
    # every model (LTX's pipeline wants 32-pixel multiples: one latent frame of 16 x 20 tokens)
    assert cli.main(["bench", "--tokens", "320", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert isinstance(data, list) and len(data) == sum(len(bench.MODEL_MODES[m]) for m in bench.MODELS)
    assert {r["model"] for r in data} == set(bench.MODELS)
    for r in data:
        assert {"n_tokens", "mode", "flops", "peak_bytes", "wall_s", "recorder_bytes"} <= set(r)
        assert np.isfinite(r["wall_s"]) and r["flops"] > 0


def test_cli_model_option(tmp_path, capsys) -> None:
    from fglens import cli

    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--model", "hunyuan", "--tokens", "80", "--repeats", "1", "--json", str(out)]) == 0
    assert {(r["model"], r["mode"]) for r in json.loads(out.read_text())} == {("hunyuan", m) for m in bench.JOINT_MODES}
    out = capsys.readouterr().out
    assert "joint proxy" in out
    assert re.search(r"^INFO start-up .*fglens --help \d+\.\d\d s, import fglens \d+\.\d\d s", out, re.M), out
    assert cli.main(["bench", "--model", "sdxl"]) == 2
    assert "--model must be one of wan, hunyuan, cogvideox" in capsys.readouterr().err


def test_cli_rejects_bad_tokens(capsys) -> None:
    from fglens import cli

    assert cli.main(["bench", "--tokens", "161", "--repeats", "1"]) == 2
    assert "multiple" in capsys.readouterr().err


# -- the generic rows (every other architecture: its tiny pipeline's transformer and inputs) ---------------------
def test_every_other_adapter_has_a_generic_row() -> None:
    from fglens.adapters import ADAPTERS
    from fglens.bench.generic import _NO_ROW, GENERIC

    assert not _NO_ROW and "ltx2" in GENERIC  # every adapter has a row (the last without one, LTX-2, now has)
    assert set(GENERIC) == {a.short for a in ADAPTERS if a.short not in ("wan", "hunyuan", *_NO_ROW)} | {"wan22-ti2v"}
    assert bench.MODELS == ("wan", "hunyuan", *GENERIC)


@pytest.fixture(scope="module")
def ltx_records() -> list[dict]:
    return bench.run_benchmark([320, 640], repeats=1, model="ltx", num_layers=2)  # frames of 16 x 20 tokens


def test_generic_row_runs_and_reports(ltx_records: list[dict]) -> None:
    by = _by(ltx_records)
    assert sorted(by) == sorted((n, m) for n in (320, 640) for m in ("plain", "traced"))
    for r in ltx_records:
        for key in KEYS:
            assert key in r, key
        assert r["model"] == "ltx" and r["model_class"] == "LTXVideoTransformer3DModel" and r["num_layers"] == 2
        assert r["grid"] == [r["n_tokens"] // 320, 16, 20]
    for n in (320, 640):
        assert by[n, "traced"]["flops"] > by[n, "plain"]["flops"] and by[n, "traced"]["recorder_bytes"] > 0
    text = bench.format_report(ltx_records)
    assert "ltx proxy: LTXVideoTransformer3DModel, 2 blocks x 4 heads x 32 dims" in text
    lines = _verdict_lines(text)
    assert len(lines) == 2 and all(line[5:].startswith("ltx proxy:") for line in lines)
    assert lines[0].startswith("N/A") and not lines[1].startswith("N/A")  # two N: a slope, no naive control
    assert "no naive control for this architecture" in lines[1]
    with pytest.raises(ValueError, match="unknown mode"):
        bench.run_benchmark([320], model="ltx", modes=("plain", "naive"))


def test_generic_inputs_have_the_requested_tokens() -> None:
    from fglens.bench import generic

    pipe, transformer = generic.build("cogvideox", num_layers=2, heads=2, head_dim=16)
    inputs = generic.pipeline_inputs(pipe, 160, (8, 10))
    assert inputs["hidden_states"].shape[1] == 2  # CogVideoX: [B, F, C, H, W]
    assert generic.video_tokens(transformer, inputs) == 160 and transformer.config.attention_head_dim == 16
    with pytest.raises(ValueError, match="whole number"):
        generic.pipeline_inputs(pipe, 170, (8, 10))


def test_generic_row_of_a_pipeline_sized_by_its_image() -> None:
    """HunyuanVideo-1.5 I2V takes no height or width: the row gives it an image of the frame's aspect and the
    target_size whose bucket is that frame; the inputs are the pipeline's own (reference frame in the latent)."""
    from fglens.bench import generic

    pipe, transformer = generic.build("hunyuan15", num_layers=2, heads=4, head_dim=32)
    assert generic.sized_by_image(pipe) and transformer.config.rope_axes_dim == (16, 8, 8)  # scaled from (4, 2, 2)
    guider, target = pipe.guider, pipe.target_size
    assert pipe.video_processor.calculate_default_height_width(
        height=128, width=160, target_size=generic.bucket_target_size(pipe, 128, 160)) == (128, 160)
    inputs = generic.pipeline_inputs(pipe, 160, (8, 10))
    assert pipe.guider is guider and pipe.target_size == target  # put back
    x = inputs["hidden_states"]
    assert x.shape == (1, 9, 2, 8, 10) and generic.video_tokens(transformer, inputs) == 160
    assert bool((x[:, 8, 0] == 1).all() and (x[:, 8, 1:] == 0).all())  # the pipeline's mask: the reference frame
    assert bool(x[:, 4:8, 0].abs().sum() > 0 and (x[:, 4:8, 1:] == 0).all())  # its latent, at frame 0 only
    assert inputs["image_embeds"].shape == (1, 16, 8) and inputs["encoder_hidden_states"].shape[0] == 1  # no CFG


@pytest.fixture(scope="module")
def hunyuan15_records() -> list[dict]:
    return bench.run_benchmark([160, 320], repeats=1, model="hunyuan15", frame_hw=(8, 10), num_layers=2)


def test_generic_row_hunyuan15(hunyuan15_records: list[dict]) -> None:
    by = _by(hunyuan15_records)
    assert sorted(by) == sorted((n, m) for n in (160, 320) for m in ("plain", "traced"))
    for r in hunyuan15_records:
        assert r["model_class"] == "HunyuanVideo15Transformer3DModel"
        assert r["pipeline_class"] == "HunyuanVideo15ImageToVideoPipeline"
        assert r["grid"] == [r["n_tokens"] // 80, 8, 10] and r["flops_by_op"].get(SDPA, 0) > 0
    for n in (160, 320):
        assert by[n, "traced"]["flops"] > by[n, "plain"]["flops"] and by[n, "traced"]["recorder_bytes"] > 0
    lines = _verdict_lines(bench.format_report(hunyuan15_records))
    assert len(lines) == 2 and all(line[5:].startswith("hunyuan15 proxy:") for line in lines)


def test_generic_row_of_ltx2_inputs(monkeypatch) -> None:
    """LTX-2: video and audio CFG both off (guidance_scale and audio_guidance_scale 1, STG and modality isolation
    off as the tiny call's defaults), so the first forward is batch 1; the pipeline sizes the audio tokens from the
    video's duration (round(frames / 24 fps * 25)); the audio stream's heads scale with the video's."""
    from fglens import pipelines
    from fglens.bench import generic

    pipe, transformer = generic.build("ltx2", num_layers=1, heads=4, head_dim=32)
    config = transformer.config
    assert (config.audio_num_attention_heads, config.audio_attention_head_dim, config.audio_cross_attention_dim) == (
        4, 16, 64)  # 2 x 4 in the tiny pipeline: x2 heads, x4 head dim as the video stream's 2 x 8 -> 4 x 32
    for n, audio in ((128, 9), (256, 26)):  # 2 and 4 latent frames of 8 x 8: 9 and 25 frames at 24 fps
        inputs = generic.pipeline_inputs(pipe, n, (8, 8))
        assert inputs["hidden_states"].shape == (1, n, 4) and generic.video_tokens(transformer, inputs) == n
        assert inputs["audio_hidden_states"].shape == (1, audio, 4) and inputs["audio_num_frames"] == audio
        assert generic.extra_tokens(inputs) == {"audio_tokens": audio}
        assert inputs["encoder_hidden_states"].shape[0] == inputs["audio_encoder_hidden_states"].shape[0] == 1
        assert inputs["spatio_temporal_guidance_blocks"] is None and inputs["isolate_modalities"] is False
    assert generic.extra_tokens({"hidden_states": inputs["hidden_states"]}) == {}
    own = pipelines.call_kwargs  # a call left with the audio CFG on is caught: its forward is batch 2
    monkeypatch.setattr(pipelines, "call_kwargs", lambda *a, **k: {**own(*a, **k), "audio_guidance_scale": 7.0})
    with pytest.raises(ValueError, match="batch of 2"):
        generic.pipeline_inputs(pipe, 128, (8, 8))


@pytest.fixture(scope="module")
def ltx2_records() -> list[dict]:
    return bench.run_benchmark([128, 256], repeats=1, model="ltx2", frame_hw=(8, 8), num_layers=1)


def test_generic_row_ltx2(ltx2_records: list[dict]) -> None:
    by = _by(ltx2_records)
    assert sorted(by) == sorted((n, m) for n in (128, 256) for m in ("plain", "traced"))
    for r in ltx2_records:
        assert r["model_class"] == "LTX2VideoTransformer3DModel" and r["pipeline_class"] == "LTX2ImageToVideoPipeline"
        assert r["grid"] == [r["n_tokens"] // 64, 8, 8] and r["flops_by_op"].get(SDPA, 0) > 0
        assert r["audio_tokens"] == {128: 9, 256: 26}[r["n_tokens"]]
    for n in (128, 256):
        assert by[n, "traced"]["flops"] > by[n, "plain"]["flops"] and by[n, "traced"]["recorder_bytes"] > 0
    text = bench.format_report(ltx2_records)
    assert "(no CFG)" in text and "N=128: 9, N=256: 26" in text
    lines = _verdict_lines(text)
    assert len(lines) == 2 and all(line[5:].startswith("ltx2 proxy:") for line in lines)


# -- the edit benchmark (FocalGuidance on the Wan stack) --------------------------------------------------------
EDIT_LAYERS = 3  # blocks 0, 1 edited at most; block 2 is the cache's source


@pytest.fixture(scope="module")
def edit_records() -> list[dict]:
    return bench.run_benchmark(TOKENS, repeats=1, frame_hw=(8, 10), num_layers=EDIT_LAYERS, edit=True)


def test_edit_modes() -> None:
    assert bench.edit_modes(3) == ("plain", "fg1", "fg2", "anchor1", "cache1", "fg2_rec")
    assert bench.parse_edit_mode("fg2_rec") == ("fg", 2, True)
    assert bench.parse_edit_mode("traced") is None
    with pytest.raises(ValueError, match="at least 2 blocks"):
        bench.edit_modes(1)
    with pytest.raises(ValueError, match="k must be"):
        bench.run_benchmark([80], modes=("plain", "fg3"), num_layers=3)
    with pytest.raises(ValueError, match="Wan stack only"):
        bench.run_benchmark([80], model="hunyuan", edit=True)


def test_edit_records(edit_records: list[dict]) -> None:
    by = _by(edit_records)
    assert sorted(by) == sorted((n, m) for n in TOKENS for m in bench.edit_modes(EDIT_LAYERS))
    for n in TOKENS:
        plain = by[n, "plain"]
        for m in ("fg1", "fg2", "anchor1", "cache1", "fg2_rec"):
            r = by[n, m]
            for key in (*KEYS, "edit", "edited_layers", "cache_bytes", "max_abs_diff_vs_plain"):
                assert key in r, key
            assert r["flops"] > plain["flops"] and r["wall_s"] > 0
            assert r["max_abs_diff_vs_plain"] > 0  # the edit took effect (the cache too: fg1 differs from anchor1)
        assert by[n, "fg1"]["max_abs_diff_vs_plain"] != by[n, "anchor1"]["max_abs_diff_vs_plain"]
        # a minimal Record changes nothing in the output
        assert by[n, "fg2_rec"]["max_abs_diff_vs_plain"] == by[n, "fg2"]["max_abs_diff_vs_plain"]


def test_edit_flops_match_the_kernel_formula(edit_records: list[dict]) -> None:
    by = _by(edit_records)
    for n in TOKENS:
        plain = by[n, "plain"]["flops"]
        per = bench.edit_flops_per_layer(by[n, "plain"])
        assert by[n, "anchor1"]["flops"] - plain == per["anchor"]
        assert by[n, "cache1"]["flops"] - plain == per["cache"]  # one more text-attention call, nothing else
        for k in (1, 2):
            assert by[n, f"fg{k}"]["flops"] - plain == k * (per["anchor"] + per["cache"])


def test_edit_cache_holds_only_the_source_qk(edit_records: list[dict]) -> None:
    by = _by(edit_records)
    for n in TOKENS:
        assert by[n, "anchor1"]["cache_bytes"] == 0
        for m in ("fg1", "fg2", "cache1"):
            assert by[n, m]["cache_bytes"] == bench.cache_qk_bytes(by[n, m]) > 0


def test_edit_overhead_per_layer_is_computed(edit_records: list[dict]) -> None:
    over = bench.edit_overheads(edit_records)
    assert sorted(over) == TOKENS
    for n in TOKENS:
        flops = over[n]["flops"]
        assert sorted(flops["per_k"]) == [1, 2]
        assert flops["fit"] > 0 and all(v > 0 for v in flops["per_k"].values())
        assert flops["per_k"][1] == pytest.approx(flops["per_k"][2])  # every edited layer costs the same FLOPs
        assert flops["anchor"] > 0 and flops["cache"] > 0
        for key in ("wall_s", "peak_bytes"):
            assert over[n][key]["fit"] is not None and np.isfinite(over[n][key]["fit"])


def test_edit_report(edit_records: list[dict], records: list[dict]) -> None:
    text = bench.format_report(edit_records)
    assert "fglens bench --edit" in text and "overhead per edited layer" in text
    assert "traced/plain" not in text  # no recording section without recording modes
    verdicts = [line for line in text.splitlines() if line[:4] in ("PASS", "FAIL", "N/A ", "INFO")]
    assert len(verdicts) == 3
    assert verdicts[1].startswith(("INFO", "N/A ")) and "CPU time" in verdicts[1]  # wall time: never gating
    assert verdicts[2].startswith("PASS") and "Q and K only" in verdicts[2]
    both = bench.format_report(records + edit_records)
    assert "traced/plain" in both and "fglens bench --edit" in both


def test_cli_edit(tmp_path, capsys) -> None:
    from fglens import cli

    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--edit", "--tokens", "80", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["mode"] for r in data] == list(bench.edit_modes(4))
    assert {r["model"] for r in data} == {"wan"}
    assert "overhead per edited layer" in capsys.readouterr().out
    assert cli.main(["bench", "--edit", "--model", "hunyuan", "--tokens", "80"]) == 2


# -- fg next to the recorders ----------------------------------------------------------------------------------
def test_fg_mode_edits_the_middle_blocks(records: list[dict], joint_records: list[dict]) -> None:
    assert bench.fg_layers(4) == ([1, 2], 3) and bench.fg_layers(2) == ([0], 1)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        bench.fg_layers(1)
    for group in (records, joint_records):
        by = _by(group)
        for n in TOKENS:
            r, plain = by[n, "fg"], by[n, "plain"]
            assert r["edited_blocks"] == [0] and r["source_layer"] == 1 and r["edited_layers"] == 1
            assert r["max_abs_diff_vs_plain"] > 0  # the edit took effect
            assert r["cache_bytes"] > 0 and r["flops"] > plain["flops"]
            # per edited layer: (fg / plain - 1) / k, computed here from the raw numbers
            over = bench.fg_overheads(group)[n]
            assert over["flops"] == pytest.approx((r["flops"] / plain["flops"] - 1) / r["edited_layers"], rel=1e-12)


def test_fg_mode_flops_match_the_kernel_formula(records: list[dict]) -> None:
    by = _by(records)
    for n in TOKENS:
        per = bench.edit_flops_per_layer(by[n, "plain"])  # 4·H·N·512·(D + e): the cache's and the anchor's kernel
        assert by[n, "fg"]["flops"] - by[n, "plain"]["flops"] == per["cache"] + per["anchor"]
        assert by[n, "fg"]["cache_bytes"] == bench.cache_qk_bytes(by[n, "fg"])


# -- recorder memory against N: the log-log fit ------------------------------------------------------------------
def _synthetic(modes: dict[str, object], ns=(960, 1920, 3840, 7680)) -> list[dict]:
    recs = []
    for n in ns:
        recs.append({"n_tokens": n, "mode": "plain", "flops": 1, "wall_s": 1.0, "peak_bytes": 1, "recorder_bytes": 0})
        for mode, f in modes.items():
            recs.append({"n_tokens": n, "mode": mode, "flops": 1, "wall_s": 1.0, "peak_bytes": 1,
                         "recorder_bytes": f(n)})
    return recs


def _reference_fit(ns, bytes_) -> tuple[float, float]:
    """Ordinary least squares written out in float64: slope = cov(x, y) / var(x), R² = corr(x, y)²."""
    x, y = np.log(np.asarray(ns, np.float64)), np.log(np.asarray(bytes_, np.float64))
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / (dx * dx).sum()), float((dx * dy).sum() ** 2 / ((dx * dx).sum() * (dy * dy).sum()))


def test_memory_fit_recovers_known_slopes() -> None:
    recs = _synthetic({"lin": lambda n: 80 * n, "quad": lambda n: 3 * n * n, "p15": lambda n: 7 * n**1.5,
                       "affine": lambda n: 3500 * n - 600_000})
    assert bench.memory_fit(recs, "lin")["slope"] == pytest.approx(1.0, abs=1e-12)
    assert bench.memory_fit(recs, "quad")["slope"] == pytest.approx(2.0, abs=1e-12)
    assert bench.memory_fit(recs, "p15")["slope"] == pytest.approx(1.5, abs=1e-12)
    assert bench.memory_fit(recs, "lin")["r2"] == pytest.approx(1.0, abs=1e-12)
    affine = bench.memory_fit(recs, "affine")  # a·N - b: log-log slope a bit above 1, straight-line fit exact
    ns = [960, 1920, 3840, 7680]
    slope, r2 = _reference_fit(ns, [3500 * n - 600_000 for n in ns])
    assert affine["slope"] == pytest.approx(slope, rel=1e-10) and affine["r2"] == pytest.approx(r2, rel=1e-10)
    assert 1.0 < affine["slope"] < 1.2
    assert affine["bytes_per_token"] == pytest.approx(3500) and affine["offset_bytes"] == pytest.approx(-600_000)


def test_memory_fit_noisy_matches_reference_and_skips_nonpositive() -> None:
    rng = np.random.default_rng(0)
    ns = [500, 1000, 2000, 4000, 8000]
    noisy = {n: 50 * n**1.1 * float(np.exp(rng.normal(0, 0.1))) for n in ns}
    recs = _synthetic({"noisy": noisy.__getitem__, "holes": lambda n: 0 if n == 500 else 10 * n}, ns=ns)
    fit = bench.memory_fit(recs, "noisy")
    slope, r2 = _reference_fit(ns, [noisy[n] for n in ns])
    assert fit["slope"] == pytest.approx(slope, rel=1e-10) and fit["r2"] == pytest.approx(r2, rel=1e-10)
    holes = bench.memory_fit(recs, "holes")
    assert holes["skipped"] == [500] and holes["n"] == ns[1:] and holes["slope"] == pytest.approx(1.0)
    assert bench.memory_fit(_synthetic({"x": lambda n: n}, ns=[960]), "x") is None  # one N: no slope
    two = bench.memory_fit(_synthetic({"x": lambda n: n * n}, ns=[960, 1920]), "x")
    assert two["slope"] == pytest.approx(2.0) and two["r2"] is None  # two points: R² says nothing


@pytest.mark.parametrize(
    ("fglens", "naive", "verdict"),
    [(lambda n: 80 * n, lambda n: n * n, "PASS"),  # linear vs quadratic
     (lambda n: 80 * n + 2e5, lambda n: (n + 396) ** 2, "PASS"),  # a fixed part; quadratic in S = N + context
     (lambda n: n**1.5, lambda n: n * n, "FAIL"),  # fglens grows faster than linear
     (lambda n: 80 * n, lambda n: 900 * n, "FAIL")],  # the control shows no quadratic growth: the meter is blind
)
def test_slope_verdict(fglens, naive, verdict: str) -> None:
    recs = _synthetic({"traced": fglens, "naive": naive})
    target, ok, numbers = next(v for v in bench.verdicts(recs) if "log-log slope" in v[0])
    assert ok is (verdict == "PASS"), numbers
    assert f"naive: slope {bench.memory_fit(recs, 'naive')['slope']:.2f}, R² " in numbers


# -- the plot ---------------------------------------------------------------------------------------------------
def test_plot_renders(records: list[dict], joint_records: list[dict], tmp_path) -> None:
    path = tmp_path / "bench.png"
    fig = bench.plot_benchmark(records + joint_records, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Wan stack: recorder memory", "Wan stack: time / plain", "Wan stack: FLOPs / plain",
                      "joint proxy (HunyuanVideo): recorder memory", "joint proxy (HunyuanVideo): time / plain",
                      "joint proxy (HunyuanVideo): FLOPs / plain"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    slope = bench.memory_fit(records, "naive")["slope"]
    assert f"naive (control): slope {slope:.2f}" in legend
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match="no recording-benchmark records"):
        bench.plot_benchmark([r for r in records if r["mode"] == "plain"][:0])


def test_cli_plot(tmp_path, capsys) -> None:
    from fglens import cli

    out = tmp_path / "bench.svg"
    code = cli.main(["bench", "--model", "wan", "--tokens", "80,160", "--repeats", "1", "--plot", str(out)])
    printed = capsys.readouterr().out
    # at N = 80, 160 the naive control has not reached its quadratic regime: its slope verdict may FAIL, and then
    # the command says so with exit status 1 (the plot is written either way)
    assert code == (1 if re.search(r"^FAIL ", printed, re.M) else 0), printed
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()
    assert f"wrote the plot to {out}" in printed
    assert cli.main(["bench", "--plot", str(tmp_path / "missing" / "x.png"), "--tokens", "80"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["bench", "--edit", "--plot", str(out), "--tokens", "80"]) == 2


# -- --gpu: realistic shapes (run here on the CPU with a tiny configuration) -----------------------------------
from fglens.bench import gpu  # noqa: E402

GPU_SHAPE = {"layers": 3, "frames": 5, "height": 64, "width": 80}  # 2 latent frames of 4 x 5 tokens


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def gpu_records(request) -> list[dict]:
    return gpu.run_gpu_benchmark(["tiny"], configs={"tiny": gpu.SMOKE_CONFIG}, repeats=1, warmup=1, device="cpu",
                                 dtype=request.param, **GPU_SHAPE)


def test_gpu_path_runs_on_cpu(gpu_records: list[dict]) -> None:
    by = {r["mode"]: r for r in gpu_records}
    assert list(by) == list(gpu.GPU_MODES)
    for r in gpu_records:
        assert r["n_tokens"] == 40 and r["grid"] == [2, 4, 5] and r["layers"] == 3 and r["device"] == "cpu"
        assert 0 < r["blocks_s"] <= r["step_s"] and 0 < r["block_flops"] < r["flops"]
        assert r["peak_bytes"] > 0
    assert by["traced"]["flops"] >= by["plain"]["flops"] and by["fg"]["flops"] > by["plain"]["flops"]
    assert by["plain"]["extra_bytes"] == 0 and by["fg"]["cache_bytes"] > 0
    assert by["fg"]["edited_blocks"] == [0] and by["fg"]["source_layer"] == 2
    # everything FocalGuidance adds happens inside the blocks
    assert by["fg"]["flops"] - by["plain"]["flops"] == by["fg"]["block_flops"] - by["plain"]["block_flops"]
    text = gpu.format_gpu_report(gpu_records)
    verdicts = _verdict_lines(text)
    assert len(verdicts) == 3 and all("not the 480p x 81-frame shape" in v for v in verdicts)
    assert "no GPU numbers" in text


def test_gpu_summary_extrapolates_as_documented() -> None:
    # K = 4 of L = 40 blocks; plain: 100 ms step, 90 ms in the blocks; traced: +2 ms in the blocks, +1 ms outside
    recs = [{"config": "c", "mode": m, "layers": 4, "full_layers": 40, "step_s": s, "blocks_s": b, "flops": f,
             "block_flops": bf, "extra_bytes": e, "edited_blocks": [1, 2] if m == "fg" else None}
            for m, s, b, f, bf, e in (("plain", 0.100, 0.090, 1000, 900, 0), ("traced", 0.103, 0.092, 1004, 904, 7),
                                      ("fg", 0.106, 0.096, 1010, 910, 9))]
    s = gpu.gpu_summary(recs)["c"]
    full = 0.010 + 40 / 4 * 0.090  # outside the blocks once, the blocks scaled to 40
    assert s["full_step"] == pytest.approx(full)
    assert s["record_k_ratio"] == pytest.approx(0.103 / 0.100 - 1)  # measured on 4 blocks
    assert s["record_layer_cost"] == pytest.approx(0.002 / 4)
    assert s["record_full"] == pytest.approx((0.001 + 40 * 0.0005) / full)
    assert s["edit_per_layer"] == pytest.approx(0.006 / 2 / full)
    assert s["edit_per_layer_of_block"] == pytest.approx(0.006 / 2 / (0.090 / 4))
    assert s["record_full_flops"] == pytest.approx((0 + 40 * 1) / (100 + 10 * 900))
    assert s["record_extra_bytes"] == 7 and s["edit_extra_bytes"] == 9


def test_gpu_builds_only_the_requested_blocks() -> None:
    # the 14B shape on the meta device: nothing is allocated, the block count and dtypes are what would be
    model = gpu.build_transformer(gpu.GPU_CONFIGS["14b"], 2, torch.device("meta"), torch.bfloat16)
    assert len(model.blocks) == 2 and model.config.num_layers == 2
    block = sum(p.numel() for p in model.blocks[0].parameters())
    c = 5120  # self-attention 4·C², cross-attention 4·C² + image K, V 2·C², FFN 2·C·13824 (plus biases and norms)
    assert 10 * c * c + 2 * c * 13824 < block < 1.01 * (10 * c * c + 2 * c * 13824)
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.blocks[0].scale_shift_table.dtype == torch.float32 and model.rope.freqs_cos.dtype == torch.float32
    assert gpu.latent_grid(81, 480, 832) == (21, 30, 52)
    with pytest.raises(ValueError, match="1 plus a multiple of 4"):
        gpu.latent_grid(80, 480, 832)


def test_gpu_without_cuda_is_a_clear_error(monkeypatch, capsys) -> None:
    from fglens import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        gpu.run_gpu_benchmark(["14b"], layers=2)
    assert cli.main(["bench", "--gpu"]) == 2
    err = capsys.readouterr().err
    assert "--gpu needs a CUDA GPU" in err and "without --gpu" in err
    # bad arguments are named before CUDA is looked for
    assert cli.main(["bench", "--gpu", "--layers", "1"]) == 2
    assert "--layers must be at least 2" in capsys.readouterr().err
    assert cli.main(["bench", "--gpu", "--frames", "80"]) == 2
    assert "1 plus a multiple of 4" in capsys.readouterr().err
    assert cli.main(["bench", "--gpu", "--gpu-model", "7b"]) == 2
    assert "--gpu-model must be" in capsys.readouterr().err
    assert cli.main(["bench", "--gpu", "--tokens", "80"]) == 2
    assert "for the CPU benchmark only" in capsys.readouterr().err
    assert cli.main(["bench", "--layers", "3"]) == 2
    assert "add --gpu" in capsys.readouterr().err


# -- start-up time and exit status (issue 13) ---------------------------------------------------------------------
def test_startup_is_measured_in_fresh_processes() -> None:
    result = bench.measure_startup(repeats=1)
    assert set(result["median_s"]) == {"fglens --help", "import fglens"}
    assert all(0 < t < 60 for t in result["median_s"].values())
    line = bench.format_startup(result)
    assert line.startswith("INFO start-up") and "target < 1 s" in line
    with pytest.raises(ValueError):
        bench.measure_startup(repeats=0)


def test_a_failed_target_fails_the_command_and_informative_lines_do_not(monkeypatch, capsys) -> None:
    from fglens import cli
    from fglens.bench import command

    informative = (bench.INFORMATIVE + "CPU time <= 3 %", False, "N=80: +9%")
    assert bench.failed([informative, ("FLOPs <= 3 %", None, "")]) == []
    assert bench.verdict_tag(*informative[:2]) == "INFO" and bench.verdict_tag("x", False) == "FAIL"
    monkeypatch.setattr(command, "measure_startup", lambda: {"median_s": {"fglens --help": 0.1, "import fglens": 0.1},
                                                             "target_s": 1.0, "repeats": 1})
    args = ["bench", "--model", "wan", "--tokens", "80", "--repeats", "1"]
    assert cli.main(args) == 0
    monkeypatch.setattr(command, "verdicts", lambda records: [("a target", False, "over")])
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "wan N=80: " in err and "1 target(s) FAIL" in err   # progress on stderr, and why it exits 1


def test_train_benchmark_runs_side_by_side_and_refuses_other_modes(capsys, tmp_path) -> None:
    import json

    from fglens.cli import main

    out = tmp_path / "train.json"
    assert main(["bench", "--train", "--tokens", "80", "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "INFO N=80: a distill step costs" in text
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["plain", "distill"] and all(r["seconds"] > 0 for r in rows)
    assert rows[1]["peak_bytes"] > 0
    assert main(["bench", "--train", "--gpu"]) == 2
    assert "--train takes" in capsys.readouterr().err
