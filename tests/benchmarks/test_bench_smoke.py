"""Smoke tests of `fglens bench` at tiny token counts: the harness runs and measures; no timing asserted."""

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


def test_cli_writes_json(tmp_path) -> None:
    from fglens import cli

    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--tokens", "80,160", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert isinstance(data, list) and len(data) == 2 * len(bench.MODES)
    for r in data:
        assert {"n_tokens", "mode", "flops", "peak_bytes", "wall_s", "recorder_bytes"} <= set(r)
        assert np.isfinite(r["wall_s"]) and r["flops"] > 0


def test_cli_rejects_bad_tokens(capsys) -> None:
    from fglens import cli

    assert cli.main(["bench", "--tokens", "161", "--repeats", "1"]) == 2
    assert "multiple" in capsys.readouterr().err
