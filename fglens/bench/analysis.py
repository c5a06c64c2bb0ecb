"""What the benchmark's records say, computed: ratios over plain, recorder-memory growth with N (per doubling and
as a least-squares log-log fit), FocalGuidance's cost per edited layer, and analytic FLOP counts to hold the measured
ones against. Pure functions of the records (plain dicts, as written to JSON)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .modes import parse_edit_mode
from .workload import MODELS, TEXT_REAL, TEXT_ROWS

Record = Mapping[str, Any]


# -- grouping ---------------------------------------------------------------------------------------------------
def model_of(record: Record) -> str:
    """The record's model (records without one are Wan's)."""
    return record.get("model", "wan")


def by_model(records: Sequence[Record]) -> dict[str, list[Record]]:
    """Records grouped by model, in `MODELS` order (records without a model are Wan's)."""
    out: dict[str, list[Record]] = {}
    for m in MODELS:
        group = [r for r in records if model_of(r) == m]
        if group:
            out[m] = group
    return out


def index(records: Sequence[Record]) -> dict[tuple[int, str], Record]:
    """``{(N, mode): record}`` of one model's records."""
    return {(r["n_tokens"], r["mode"]): r for r in records}


def ratio(idx: Mapping[tuple[int, str], Record], n: int, mode: str, key: str) -> float | None:
    """``key`` of `mode` over plain's at N, or None where either is missing (or plain's is 0)."""
    a, b = idx.get((n, mode)), idx.get((n, "plain"))
    if a is None or b is None or not b[key]:
        return None
    return a[key] / b[key]


# -- recorder memory against N ----------------------------------------------------------------------------------
def growth_per_doubling(records: Sequence[Record], mode: str) -> dict[int, float | None]:
    """For each N after the first: recorder-bytes growth from the previous N, per doubling of N (one model).

    ``(rb(N) / rb(N_prev)) ** (1 / log2(N / N_prev))``; None where either value is not positive.
    """
    idx = index(records)
    ns = sorted({n for n, m in idx if m == mode})
    out: dict[int, float | None] = {}
    for lo, hi in zip(ns, ns[1:], strict=False):
        a, b = idx[lo, mode].get("recorder_bytes"), idx[hi, mode].get("recorder_bytes")
        out[hi] = (b / a) ** (1 / math.log2(hi / lo)) if a and b and a > 0 and b > 0 else None
    return out


def memory_fit(records: Sequence[Record], mode: str) -> dict[str, Any] | None:
    """Least-squares fit of log(recorder bytes) on log(N) for one model's `mode` (numpy ``polyfit``, degree 1).

    Recorder bytes ∝ N^slope: slope 1 is linear growth, 2 quadratic. Returns ``slope``, ``intercept`` (natural
    log), ``r2`` (the fit's coefficient of determination; None with only two points, where it is 1 by
    construction), ``n`` (the token counts used), ``skipped`` (token counts whose recorder bytes are not positive,
    which a log cannot take), and the straight-line fit bytes = ``bytes_per_token``·N + ``offset_bytes`` (which
    shows a fixed part). None with fewer than two usable token counts.

    Example:
        >>> recs = [{"n_tokens": n, "mode": m, "recorder_bytes": b}
        ...         for n in (960, 1920, 3840) for m, b in (("lin", 80 * n), ("quad", 3 * n * n))]
        >>> {m: round(memory_fit(recs, m)["slope"], 6) for m in ("lin", "quad")}
        {'lin': 1.0, 'quad': 2.0}
    """
    points = sorted((r["n_tokens"], r.get("recorder_bytes")) for r in records if r["mode"] == mode)
    usable = [(n, b) for n, b in points if b is not None and b > 0]
    if len(usable) < 2:
        return None
    n = np.array([p[0] for p in usable], dtype=np.float64)
    b = np.array([p[1] for p in usable], dtype=np.float64)
    x, y = np.log(n), np.log(b)
    slope, intercept = np.polyfit(x, y, 1)
    r2 = None
    if len(usable) > 2:
        residual = y - (slope * x + intercept)
        total = float(((y - y.mean()) ** 2).sum())
        r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else None
    per_token, offset = np.polyfit(n, b, 1)
    return {
        "slope": float(slope), "intercept": float(intercept), "r2": r2, "n": [int(v) for v in n],
        "skipped": [int(k) for k, v in points if v is None or v <= 0],
        "bytes_per_token": float(per_token), "offset_bytes": float(offset),
    }


# -- FocalGuidance per edited layer -----------------------------------------------------------------------------
def fg_overheads(records: Sequence[Record]) -> dict[int, dict[str, float | None]]:
    """Per N: the ``fg`` mode's overhead over plain per edited layer, (fg/plain - 1) / k for ``flops`` and
    ``wall_s``, and its peak memory ratio - 1 (``peak_bytes``, not divided: edits do not stack up in memory).

    Example:
        >>> recs = [{"n_tokens": 960, "mode": "plain", "flops": 100, "wall_s": 1.0, "peak_bytes": 10},
        ...         {"n_tokens": 960, "mode": "fg", "flops": 106, "wall_s": 1.1, "peak_bytes": 12,
        ...          "edited_layers": 2}]
        >>> {k: round(v, 4) for k, v in fg_overheads(recs)[960].items()}
        {'flops': 0.03, 'wall_s': 0.05, 'peak_bytes': 0.2}
    """
    idx = index(records)
    out: dict[int, dict[str, float | None]] = {}
    for (n, mode), r in sorted(idx.items()):
        if mode != "fg":
            continue
        k = r["edited_layers"]
        per = {key: None if (q := ratio(idx, n, "fg", key)) is None else (q - 1) / k for key in ("flops", "wall_s")}
        peak = ratio(idx, n, "fg", "peak_bytes")
        out[n] = {**per, "peak_bytes": None if peak is None else peak - 1}
    return out


def edit_overheads(records: Sequence[Record]) -> dict[int, dict[str, dict[str, Any]]]:
    """Per N and per quantity (``flops``, ``wall_s``, ``peak_bytes``): the overhead of FocalGuidance per edited
    layer, as a fraction of the plain step.

    ``per_k[k]`` = (fg{k}/plain - 1) / k for each measured k; ``fit`` = the least-squares slope of fg{k}/plain - 1
    over k through 0 (sum k·(r_k - 1) / sum k²), the marginal cost of one more edited layer; ``anchor`` and
    ``cache`` = anchor1/plain - 1 and cache1/plain - 1 (one layer each). None where not measured.

    Example:
        >>> recs = [{"n_tokens": 960, "mode": "plain", "flops": 100, "wall_s": 1.0, "peak_bytes": 10},
        ...         {"n_tokens": 960, "mode": "fg1", "flops": 102, "wall_s": 1.0, "peak_bytes": 10},
        ...         {"n_tokens": 960, "mode": "fg2", "flops": 104, "wall_s": 1.0, "peak_bytes": 10}]
        >>> o = edit_overheads(recs)[960]["flops"]
        >>> round(o["fit"], 4), {k: round(v, 4) for k, v in o["per_k"].items()}
        (0.02, {1: 0.02, 2: 0.02})
    """
    idx = index(records)
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for n in sorted({n for n, _ in idx}):
        ks = sorted(p[1] for (m_n, m) in idx if m_n == n and (p := parse_edit_mode(m)) and p[0] == "fg" and not p[2])
        out[n] = {}
        for key in ("flops", "wall_s", "peak_bytes"):
            excess = {k: r - 1 for k in ks if (r := ratio(idx, n, f"fg{k}", key)) is not None}
            single = {name: None if (r := ratio(idx, n, f"{name}1", key)) is None else r - 1
                      for name in ("anchor", "cache")}
            out[n][key] = {
                "per_k": {k: e / k for k, e in excess.items()},
                "fit": sum(k * e for k, e in excess.items()) / sum(k * k for k in excess) if excess else None,
                **single,
            }
    return out


def edit_flops_per_layer(record: Record) -> dict[str, int]:
    """The FLOPs one edited layer adds, by the kernel formula (2·H·N·T per head dimension, for Q·K and P·V):

    * ``cache``: one more text-attention call with the source's Q and K over the real text rows and one pad row
      (the identical zero-embedding pads collapsed, their count a logit bias in ``e = 3 + (-(D + 3) mod 8)``
      extra head dimensions), ``4·H·N·(L + 1)·(D + e)``;
    * ``anchor``: its one bias dimension, padded with the head dimension to a multiple of 8, in the text call's
      Q·K and (zero) V columns, ``4·H·N·512·e`` with ``e = 1 + (-(D + 1) mod 8)``.
    """
    h, n, d = record["heads"], record["n_tokens"], record["head_dim"]
    extra = 1 + (-(d + 1)) % 8
    return {"cache": 4 * h * n * (TEXT_REAL + 1) * (d + _cache_dims(d)), "anchor": 4 * h * n * TEXT_ROWS * extra}


def _cache_dims(d: int) -> int:
    """The cache transfer's extra head dimensions: 3 for the pad key's log-count bias, padded to a multiple of 8."""
    return 3 + (-(d + 3)) % 8


def cache_qk_bytes(record: Record) -> int:
    """What the cache should hold for one source layer (batch 1, float32): the source's text-attention queries
    ``[N, H, D + e]`` (widened by the pad bias dimensions) and its distinct keys ``[L + 1, H, D]`` and nothing else
    (no map)."""
    h, n, d = record["heads"], record["n_tokens"], record["head_dim"]
    return 4 * h * (n * (d + _cache_dims(d)) + (TEXT_REAL + 1) * d)


# -- analytic FLOPs ---------------------------------------------------------------------------------------------
def joint_recompute_flops(record: Record) -> dict[str, int]:
    """The Q·K FLOPs that fglens' joint recorder spends per forward recomputing video-query x context-key
    logits (2·H·N·D per key and block), split by context segment: image tokens, real text, masked padding.

    fglens recomputes logits against the unmasked context keys only (masked padding has probability exactly
    0, and the row log-sum-exp comes free from the model's own kernel); the "masked padding" entry is the work
    that skipping them saves. This is the analytic size of that work, to set against the measured ``aten.bmm``
    overhead.
    """
    per_key = 2 * record["heads"] * record["n_tokens"] * record["head_dim"] * record["num_layers"]
    image, real, rows = record["context_image"], record["context_real"], record["context_rows"]
    return {"image": per_key * image, "real text": per_key * (real - image), "masked padding": per_key * (rows - real)}


def top_flop_ops(record: Record, plain: Record, k: int = 6) -> Iterator[tuple[str, int]]:
    """The ops whose FLOPs grew most from `plain` to `record` (for explaining an overhead)."""
    ops = set(record["flops_by_op"]) | set(plain["flops_by_op"])
    diff = {op: record["flops_by_op"].get(op, 0) - plain["flops_by_op"].get(op, 0) for op in ops}
    yield from sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:k]

