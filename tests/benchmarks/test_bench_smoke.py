"""Smoke tests of `fglens bench` at tiny token counts (the Wan stack and the HunyuanVideo joint proxy): the harness
runs and measures; no timing asserted."""

from __future__ import annotations

import json
import os

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


def test_report_and_verdicts(records: list[dict]) -> None:
    text = bench.format_report(records)
    assert "traced/plain" in text and "naive" in text
    lines = [line for line in text.splitlines() if "FLOP ratio" in line or "memory growth" in line]
    assert len(lines) == 2
    assert lines[0].startswith("N/A")  # no N >= 3840 at this size


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
    lines = [line for line in text.splitlines() if "FLOP ratio" in line or "memory growth" in line]
    assert len(lines) == 4
    assert [("joint proxy:" in line) for line in lines] == [False, False, True, True]
    assert all(line.startswith("N/A") for line in lines if "FLOP ratio" in line)


def test_joint_mode_context_rejects_wan_only_modes() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        bench.run_benchmark([80], model="hunyuan", modes=("traced_ref",))
    with pytest.raises(ValueError, match="unknown model"):
        bench.run_benchmark([80], model="cogvideox")


def test_cli_writes_json(tmp_path) -> None:
    from fglens import cli

    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--tokens", "80", "--repeats", "1", "--json", str(out)]) == 0  # both models
    data = json.loads(out.read_text())
    assert isinstance(data, list) and len(data) == len(bench.MODES) + len(bench.JOINT_MODES)
    assert {r["model"] for r in data} == {"wan", "hunyuan"}
    for r in data:
        assert {"n_tokens", "mode", "flops", "peak_bytes", "wall_s", "recorder_bytes"} <= set(r)
        assert np.isfinite(r["wall_s"]) and r["flops"] > 0


def test_cli_model_option(tmp_path, capsys) -> None:
    from fglens import cli

    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--model", "hunyuan", "--tokens", "80", "--repeats", "1", "--json", str(out)]) == 0
    assert {(r["model"], r["mode"]) for r in json.loads(out.read_text())} == {("hunyuan", m) for m in bench.JOINT_MODES}
    assert "joint proxy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--model", "cogvideox"])


def test_cli_rejects_bad_tokens(capsys) -> None:
    from fglens import cli

    assert cli.main(["bench", "--tokens", "161", "--repeats", "1"]) == 2
    assert "multiple" in capsys.readouterr().err


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
    verdicts = [line for line in text.splitlines() if line[:4] in ("PASS", "FAIL", "N/A ")]
    assert len(verdicts) == 3
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
