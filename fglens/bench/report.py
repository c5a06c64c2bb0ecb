"""The printed report of the CPU benchmark: per model, the table of ratios over plain (traced, traced_ref, naive
and fg side by side), absolute values, recorder memory against N with its log-log fit, the edit benchmark's tables,
and one verdict line per target (PASS, FAIL, or N/A where not measurable)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .analysis import (
    Record,
    by_model,
    cache_qk_bytes,
    edit_overheads,
    fg_overheads,
    growth_per_doubling,
    index,
    memory_fit,
    model_of,
    ratio,
)
from .modes import anchor_region, fg_layers, is_edit, parse_edit_mode
from .targets import EDIT_TARGET, FLOP_TARGET, FLOP_TARGET_MIN_N, NAIVE_SLOPE_MIN, SLOPE_MAX
from .workload import EDIT_ALPHA, EDIT_STRENGTH, EDIT_WORD, GENERIC, MODEL_MODES, MODES, WORDS

Verdict = tuple[str, bool | None, str]
_LABEL = {"wan": "", "hunyuan": "joint proxy: ", **{m: f"{m} proxy: " for m in GENERIC}}
#: the modes whose recorder memory must grow linearly (fglens), and the positive control's
FGLENS_RECORDERS = ("traced", "traced_ref")


def fmt(x: float | None, spec: str = ".3f", suffix: str = "") -> str:
    """``x`` formatted, or ``"n/a"``."""
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def split_benchmarks(records: Sequence[Record]) -> tuple[list[Record], list[Record]]:
    """(the recording benchmark's records, the edit benchmark's records) of one model, each with the plain ones;
    a part is empty when none of its modes other than plain was run."""
    plain = [r for r in records if r["mode"] == "plain"]
    recording = [r for r in records if r["mode"] != "plain" and not is_edit(r["mode"])]
    edits = [r for r in records if is_edit(r["mode"])]
    if not recording and not edits:
        recording = plain  # plain alone: the recording tables, as before
    return ([*plain, *recording] if recording else []), ([*plain, *edits] if edits else [])


def block_names(record: Record, blocks: Sequence[int]) -> str:
    """The canonical layer names of block indices: ``"blocks.1, blocks.2"`` (Wan) or ``"double.1, single.0"``
    (HunyuanVideo: the double-stream blocks come first)."""
    if model_of(record) == "hunyuan":
        d = record["num_double"]
        return ", ".join(f"double.{i}" if i < d else f"single.{i - d}" for i in blocks)
    return ", ".join(f"blocks.{i}" for i in blocks)


# -- verdicts -----------------------------------------------------------------------------------------------------
#: a verdict whose target starts with this is reported (tag INFO) but never fails the command: CPU wall times
#: move with the machine's load and only stand in for the GPU targets
INFORMATIVE = "informative: "


def verdict_tag(target: str, ok: bool | None) -> str:
    """``PASS``, ``FAIL``, ``N/A `` (not measurable) or ``INFO`` (an informative target, met or not)."""
    if ok is None:
        return "N/A "
    if target.startswith(INFORMATIVE):
        return "INFO"
    return "PASS" if ok else "FAIL"


def failed(found: Sequence[Verdict]) -> list[Verdict]:
    """The verdicts that fail the command (``fglens bench`` exits 1): FAIL on a target that is not informative."""
    return [v for v in found if v[1] is False and not v[0].startswith(INFORMATIVE)]


def verdicts(records: Sequence[Record]) -> list[Verdict]:
    """``(target, passed or None when not measurable, measured numbers)`` for each performance target and model
    (the joint proxy's targets are prefixed ``joint proxy:``)."""
    out: list[Verdict] = []
    for model, group in by_model(records).items():
        recording, edits = split_benchmarks(group)
        if recording:
            out += _model_verdicts(recording, _LABEL[model])
        if edits:
            out += _edit_verdicts(edits)
    return out


def _model_verdicts(records: Sequence[Record], label: str) -> list[Verdict]:
    idx = index(records)
    ns = sorted({n for n, _ in idx})
    modes = {m for _, m in idx}
    out: list[Verdict] = []

    big = [n for n in ns if n >= FLOP_TARGET_MIN_N and (n, "traced") in idx and (n, "plain") in idx]
    ratios = {n: ratio(idx, n, "traced", "flops") for n in big}
    flop_ok = bool(big) and all(r is not None and r <= FLOP_TARGET for r in ratios.values())
    out.append((
        f"{label}traced/plain FLOP ratio <= {FLOP_TARGET} for N >= {FLOP_TARGET_MIN_N}",
        flop_ok if big else None,
        ", ".join(f"N={n}: {fmt(r, '.4f')}" for n, r in ratios.items()) or f"no N >= {FLOP_TARGET_MIN_N} measured",
    ))
    control = "naive" in MODEL_MODES.get(model_of(records[0]), ("naive",))
    out.append(_slope_verdict(records, label, [m for m in FGLENS_RECORDERS if m in modes], "naive" in modes,
                              control=control))
    if "fg" in modes:
        out.append(_fg_verdict(records, label))
    return out


def _slope_verdict(records: Sequence[Record], label: str, fglens: list[str], naive: bool, *, control: bool = True
                   ) -> Verdict:
    """Recorder memory against N: the log-log slope of every fglens recorder <= SLOPE_MAX and the naive control's
    >= NAIVE_SLOPE_MIN (without the control, a meter blind to growth would pass). A model with no naive control
    written (`control` False: the generic rows) is held to the fglens slope alone, and the target says so: the
    meter's positive control is the Wan stack's and the joint proxy's."""
    if not control:
        target = (f"{label}recorder memory linear in N: log-log slope <= {SLOPE_MAX} (fglens; no naive control for "
                  f"this architecture: the same meter's positive control is the Wan and joint rows')")
        fits = {m: memory_fit(records, m) for m in fglens}
        ns = sorted({r["n_tokens"] for r in records})
        numbers = "; ".join(f"{m}: no fit" if f is None else f"{m}: slope {f['slope']:.2f}"
                            + (f", R² {f['r2']:.4f}" if f["r2"] is not None else "") for m, f in fits.items())
        numbers += f" (over N = {', '.join(map(str, ns))})" if ns else ""
        if len(ns) < 2 or not fglens:
            return target, None, numbers + f"; needs {'two N' if len(ns) < 2 else 'an fglens recorder'}"
        return target, all(f is not None and f["slope"] <= SLOPE_MAX for f in fits.values()), numbers
    target = (f"{label}recorder memory linear in N: log-log slope <= {SLOPE_MAX} (fglens) and >= {NAIVE_SLOPE_MIN} "
              f"(naive, the positive control: the meter sees quadratic growth)")
    fits = {m: memory_fit(records, m) for m in [*fglens, *(["naive"] if naive else [])]}
    ns = sorted({r["n_tokens"] for r in records})

    def say(m: str) -> str:
        f = fits[m]
        if f is None:
            return f"{m}: no fit (recorder bytes positive at fewer than 2 N)"
        extra = f", R² {f['r2']:.4f}" if f["r2"] is not None else ""
        skipped = f", N={f['skipped']} left out (bytes <= 0)" if f["skipped"] else ""
        return f"{m}: slope {f['slope']:.2f}{extra}{skipped}"

    numbers = "; ".join(say(m) for m in fits) + (f" (over N = {', '.join(map(str, ns))})" if ns else "")
    if len(ns) < 2 or not fglens or not naive:
        missing = "two N" if len(ns) < 2 else "the naive control" if not naive else "an fglens recorder"
        return target, None, numbers + f"; needs {missing}"
    if any(f is None for f in fits.values()):
        return target, False, numbers
    ok = all(fits[m]["slope"] <= SLOPE_MAX for m in fglens) and fits["naive"]["slope"] >= NAIVE_SLOPE_MIN
    return target, ok, numbers


def _fg_verdict(records: Sequence[Record], label: str) -> Verdict:
    over = fg_overheads(records)
    sample = next(r for r in records if r["mode"] == "fg")
    big = {n: o["flops"] for n, o in over.items() if n >= FLOP_TARGET_MIN_N and o["flops"] is not None}
    return (
        f"{label}fg FLOP overhead per edited layer <= {EDIT_TARGET:.0%} of the step for N >= {FLOP_TARGET_MIN_N} "
        f"({block_names(sample, sample['edited_blocks'])} edited of {sample['num_layers']}; the target is set "
        f"for a GPU Wan-14B step of 40 blocks)",
        all(v <= EDIT_TARGET for v in big.values()) if big else None,
        ", ".join(f"N={n}: {v:+.2%}" for n, v in big.items()) or f"no N >= {FLOP_TARGET_MIN_N} measured",
    )


def _edit_verdicts(records: Sequence[Record]) -> list[tuple[str, bool | None, str]]:
    over = edit_overheads(records)
    big = [n for n in over if n >= FLOP_TARGET_MIN_N and over[n]["flops"]["fit"] is not None]
    out: list[tuple[str, bool | None, str]] = []
    for key, what in (("flops", "FLOP"), ("wall_s", "CPU time")):
        fits = {n: over[n][key]["fit"] for n in big}
        note = "" if key == "flops" else " (the target is set for a GPU; CPU times are only a proxy)"
        out.append((
            f"{'' if key == 'flops' else INFORMATIVE}editing {what} overhead per edited layer <= {EDIT_TARGET:.0%} "
            f"of the step for N >= {FLOP_TARGET_MIN_N}"
            f" (fg{{k}} over k, least-squares slope){note}",
            all(f <= EDIT_TARGET for f in fits.values()) if fits else None,
            ", ".join(f"N={n}: {f:+.2%}" for n, f in fits.items()) or f"no N >= {FLOP_TARGET_MIN_N} measured",
        ))
    cached = [r for r in records if r.get("cache_bytes")]
    exact = all(r["cache_bytes"] == cache_qk_bytes(r) for r in cached)
    out.append((
        "the cache holds the source's Q and K only (4·(N + 512)·H·D bytes, no map)",
        exact if cached else None,
        ", ".join(f"N={n}: {r['cache_bytes'] / 2**20:.3f} MiB" for n, r in
                  sorted({r["n_tokens"]: r for r in cached}.items())) or "no cache measured",
    ))
    return out



# -- tables -------------------------------------------------------------------------------------------------------
def _title(sample: Record) -> str:
    threads = f"CPU, {torch.get_num_threads()} threads"
    if model_of(sample) in GENERIC:
        return (
            f"fglens bench, {model_of(sample)} proxy: {sample['model_class']}, {sample['num_layers']} blocks x "
            f"{sample['heads']} heads x {sample['head_dim']} dims (random weights; the rest of the config of its "
            f"tiny pipeline), inputs as its {sample['pipeline_class']} builds them (no CFG), {threads}"
        )
    if model_of(sample) == "hunyuan":
        rows, image, real = sample["context_rows"], sample["context_image"], sample["context_real"]
        text = rows - image
        return (
            f"fglens bench, joint proxy: HunyuanVideoTransformer3DModel, {sample['num_double']} double + "
            f"{sample['num_single']} single blocks x {sample['heads']} heads x {sample['head_dim']} dims (random "
            f"weights), one joint softmax over [video | context]; context {rows} rows = {image} image + {text} text "
            f"({real - image} real, {rows - real} masked padding), {threads}"
        )
    return (
        f"fglens bench: WanTransformer3DModel, {sample['num_layers']} blocks x {sample['heads']} heads x "
        f"{sample['head_dim']} dims (random weights), text 512 rows (12 real), 257 image tokens, {threads}"
    )


def format_report(records: Sequence[Record]) -> str:
    """The printed tables and verdict lines: one section per model, then every verdict."""
    sections = []
    for group in by_model(records).values():
        recording, edits = split_benchmarks(group)
        if recording:
            sections.append(_format_model(recording))
        if edits:
            sections.append(_format_edit(edits))
    lines = ["\n\n".join(sections), ""]
    for target, ok, numbers in verdicts(records):
        tag = verdict_tag(target, ok)
        met = f" ({'within' if ok else 'over'} the target)" if tag == "INFO" else ""
        lines.append(f"{tag} {target}: {numbers}{met}")
    return "\n".join(lines)




def _format_model(records: Sequence[Record]) -> str:
    idx = index(records)
    ns = sorted({n for n, _ in idx})
    modes = [m for m in MODES if any(k[1] == m for k in idx)]
    lines: list[str] = [_title(records[0]), ""]

    ratio_modes = [m for m in ("traced", "traced_ref", "naive", "fg") if m in modes]
    head1 = f"{'':>6}{'':>12}" + "".join(f" | {m + '/plain':^23}" for m in ratio_modes)
    head2 = f"{'N':>6}{'grid':>12}" + "".join(f" | {'FLOPs':>7}{'time':>7}{'mem':>7}  " for _ in ratio_modes)
    fg_over = fg_overheads(records)
    if fg_over:
        head1 += f" | {'fg per edited layer':^20}"
        head2 += f" | {'FLOPs':>10}{'time':>10}"
    lines += [head1, head2, "-" * len(head2)]
    for n in ns:
        grid = next(r["grid"] for (k, _), r in idx.items() if k == n)
        row = f"{n:>6}{'x'.join(map(str, grid)):>12}"
        for m in ratio_modes:
            row += " | " + "".join(
                f"{fmt(ratio(idx, n, m, key), '.3f'):>7}" for key in ("flops", "wall_s", "peak_bytes")
            ) + "  "
        if fg_over:
            o = fg_over.get(n, {})
            row += " | " + "".join(f"{fmt(None if o.get(k) is None else 100 * o[k], '+.2f', '%'):>10}"
                                   for k in ("flops", "wall_s"))
        lines.append(row)

    lines += ["", "absolute values (GFLOP, median seconds, peak MiB; recorder MiB = peak - plain peak):"]
    head = f"{'N':>6}" + "".join(f" | {m:^24}" for m in modes)
    sub = f"{'':>6}" + "".join(f" | {'GFLOP':>7}{'s':>8}{'MiB':>9}" for _ in modes)
    lines += [head, sub]
    for n in ns:
        row = f"{n:>6}"
        for m in modes:
            r = idx.get((n, m))
            row += " | " + ("n/a".rjust(24) if r is None else
                            f"{r['flops'] / 1e9:>7.2f}{r['wall_s']:>8.3f}{r['peak_bytes'] / 2**20:>9.2f}")
        lines.append(row)
    rec_modes = [m for m in modes if m != "plain"]
    lines.append(f"{'N':>6}" + "".join(f" | {m + (' extra' if m == 'fg' else ' recorder') + ' MiB':>24}"
                                       for m in rec_modes))
    for n in ns:
        row = f"{n:>6}"
        for m in rec_modes:
            r = idx.get((n, m))
            rb = None if r is None or r.get("recorder_bytes") is None else r["recorder_bytes"] / 2**20
            row += f" | {fmt(rb, '.3f'):>24}"
        lines.append(row)
    audio = {n: r["audio_tokens"] for (n, _), r in idx.items() if r.get("audio_tokens") is not None}
    if audio:  # LTX-2: the audio stream the pipeline sized from the video's duration; the audio site's keys
        lines.append("audio tokens (the pipeline's, one per 40 ms of the video's duration; the keys of the video "
                     "queries' audio cross-attention): " + ", ".join(f"N={n}: {a}" for n, a in sorted(audio.items())))
    if rec_modes:
        lines += ["", *_format_memory_fit(records, rec_modes)]
    if "fg" in modes:
        lines += ["", *_format_fg(records)]

    diffs = {n: idx[n, "naive"].get("max_abs_diff_vs_fglens") for n in ns if (n, "naive") in idx}
    if any(d is not None for d in diffs.values()):
        compared = next((idx[n, "naive"].get("statistics_compared") for n in ns if (n, "naive") in idx), None)
        lines.append("naive vs fglens statistics, max |difference|: "
                     + ", ".join(f"N={n}: {fmt(d, '.1e')}" for n, d in diffs.items())
                     + (f" (over {', '.join(compared)})" if compared else ""))
    lines += _load_line(records)
    return "\n".join(lines)


def _format_memory_fit(records: Sequence[Record], modes: Sequence[str]) -> list[str]:
    ns = sorted({r["n_tokens"] for r in records})
    lines = [
        "recorder memory against N (bytes = peak - plain peak): growth per doubling of N, least-squares fit of "
        "log(bytes) on log(N) (slope 1 = linear, 2 = quadratic), and the straight-line fit bytes = a·N + b",
    ]
    growth_head = "growth per doubling" + (f" (to N = {', '.join(map(str, ns[1:]))})" if len(ns) > 1 else "")
    head = f"{'mode':<12}{growth_head:<40}{'slope':>7}{'R²':>8}{'a (bytes/token)':>17}{'b (MiB)':>10}"
    lines += [head, "-" * len(head)]
    for m in modes:
        growth = growth_per_doubling(records, m)
        fit = memory_fit(records, m)
        g = " ".join(fmt(v, ".2f", "x") for v in growth.values()) or "n/a"
        name = m + (" (edit)" if m == "fg" else "")
        if fit is None:
            lines.append(f"{name:<12}{g:<40}{'n/a':>7}{'n/a':>8}{'n/a':>17}{'n/a':>10}")
            continue
        lines.append(f"{name:<12}{g:<40}{fit['slope']:>7.3f}{fmt(fit['r2'], '.4f'):>8}"
                     f"{fit['bytes_per_token']:>17.1f}{fit['offset_bytes'] / 2**20:>10.3f}")
    return lines


def _format_fg(records: Sequence[Record]) -> list[str]:
    idx = index(records)
    sample = next(r for r in records if r["mode"] == "fg")
    fy, fx = sample["grid"][1:]
    region = int(anchor_region((fy, fx)).sum())
    _, source = fg_layers(sample["num_layers"])
    line = (f"fg: fg.FocalGuidance(AnchorMask({EDIT_WORD!r}, {region} of the {fy}x{fx} latent tokens per frame, "
            f"strength {EDIT_STRENGTH}) + CacheTransfer(src {block_names(sample, [source])}, alpha {EDIT_ALPHA}, from "
            f"the previous step)) on {block_names(sample, sample['edited_blocks'])} (the middle half of the blocks, "
            f"standing in for the weak layers: random weights have none), every step, timed in the steady state")
    caches = ", ".join(f"N={n}: {fmt(None if r.get('cache_bytes') is None else r['cache_bytes'] / 2**20, '.3f')}"
                       for (n, m), r in sorted(idx.items()) if m == "fg")
    diffs = ", ".join(f"N={n}: {fmt(r.get('max_abs_diff_vs_plain'), '.3g')}"
                      for (n, m), r in sorted(idx.items()) if m == "fg")
    return [line, f"  cache MiB (the source's Q and K, held between steps; not in the peak): {caches}",
            f"  max |out - plain| (the edit took effect): {diffs}"]


def _load_line(records: Sequence[Record]) -> list[str]:
    loads = [r.get("load_avg_1min") for r in records if r.get("load_avg_1min") is not None]
    if not loads:
        return []
    return [f"1-minute load average during the run: {min(loads):.2f} to {max(loads):.2f} "
            f"on {os.cpu_count()} CPUs (timings are only comparable on an otherwise idle machine)"]


def _format_edit(records: Sequence[Record]) -> str:
    idx = index(records)
    ns = sorted({n for n, _ in idx})
    modes = [m for m in dict.fromkeys(r["mode"] for r in records) if is_edit(m)]
    sample = next(r for r in records if is_edit(r["mode"]))
    layers, src = sample["num_layers"], sample["source_layer"]
    fy, fx = sample["grid"][1:]
    region = anchor_region((fy, fx))
    rec = [m for m in modes if parse_edit_mode(m)[2]]
    lines = [
        _title(sample).replace("fglens bench:", "fglens bench --edit: fg.FocalGuidance on", 1),
        f"edit: AnchorMask({EDIT_WORD!r} = text token {WORDS[EDIT_WORD][0]}, {int(region.sum())} of the {fy}x{fx} "
        f"latent tokens per frame, strength {EDIT_STRENGTH}) then CacheTransfer(src blocks.{src}, alpha {EDIT_ALPHA}, "
        f"from the previous step) on blocks 0..k-1, every step;",
        "each edited forward is timed in the steady state (an untimed forward at another timestep fills the cache); "
        f"Record(words={{{EDIT_WORD!r}: {WORDS[EDIT_WORD]}}}, stats=()) records nothing"
        + (f"; {', '.join(rec)} also record{'s' if len(rec) == 1 else ''} Record(stats=('word_mass',)) on every block"
           if rec else ""),
        "",
        "ratio over plain (FLOPs, time, peak memory):",
    ]
    head = f"{'N':>6}{'grid':>12}" + "".join(f" | {m:^20}" for m in modes)
    lines += [head, "-" * len(head)]
    for n in ns:
        grid = next(r["grid"] for (k, _), r in idx.items() if k == n)
        row = f"{n:>6}{'x'.join(map(str, grid)):>12}"
        for m in modes:
            flops, wall, peak = (ratio(idx, n, m, key) for key in ("flops", "wall_s", "peak_bytes"))
            row += f" | {fmt(flops, '.3f'):>7}{fmt(wall, '.3f'):>7}{fmt(peak, '.2f'):>6}"
        lines.append(row)

    over = edit_overheads(records)
    ks = sorted({k for n in over for k in over[n]["flops"]["per_k"]})
    pct = lambda x: fmt(None if x is None else 100 * x, "+.2f")  # noqa: E731
    lines += ["", f"overhead per edited layer, % of the plain step: (fg{{k}}/plain - 1)/k; fit = least-squares slope "
              f"over k; block = fit x {layers} blocks (% of one block); anchor1, cache1: ratio - 1 with one layer"]
    cols = [f"k={k}" for k in ks] + ["fit", "block"]
    block = "".join(f"{c:>7}" for c in cols)
    head1 = f"{'':>6} | {'FLOPs':^{len(block)}} | {'time':^{len(block)}} | {'anchor1':^14} | {'cache1':^14}"
    head2 = f"{'N':>6} | {block} | {block} | {'FLOPs':>7}{'time':>7} | {'FLOPs':>7}{'time':>7}"
    lines += [head1, head2, "-" * len(head2)]
    for n in ns:
        row = f"{n:>6}"
        for key in ("flops", "wall_s"):
            o = over[n][key]
            vals = [o["per_k"].get(k) for k in ks] + [o["fit"], None if o["fit"] is None else o["fit"] * layers]
            row += " | " + "".join(f"{pct(v):>7}" for v in vals)
        for name in ("anchor", "cache"):
            row += " | " + "".join(f"{pct(over[n][key][name]):>7}" for key in ("flops", "wall_s"))
        lines.append(row)

    lines += ["", "absolute values (GFLOP, median s, peak MiB; extra = peak - plain peak; cache = the source's Q and K "
              "held between steps, invisible to the peak; max |out - plain| = the edit took effect):"]
    head = (f"{'N':>6} {'mode':<9}{'GFLOP':>9}{'s':>9}{'MiB':>9}{'extra MiB':>11}{'cache MiB':>11}"
            f"{'max |out - plain|':>19}")
    lines += [head, "-" * len(head)]
    for n in ns:
        for m in ("plain", *modes):
            r = idx.get((n, m))
            if r is None:
                continue
            extra = None if r.get("recorder_bytes") is None else r["recorder_bytes"] / 2**20
            cache = None if r.get("cache_bytes") is None else r["cache_bytes"] / 2**20
            lines.append(f"{n:>6} {m:<9}{r['flops'] / 1e9:>9.2f}{r['wall_s']:>9.3f}{r['peak_bytes'] / 2**20:>9.2f}"
                         f"{fmt(extra, '.2f'):>11}{fmt(cache, '.3f'):>11}"
                         f"{fmt(r.get('max_abs_diff_vs_plain'), '.3g'):>19}")
    lines += _load_line(records)
    return "\n".join(lines)

