"""`fglens toy report`: every number of docs/toy-world.md, measured on the toy pipelines, with figures.

Sections: chance and do-nothing levels per category; instruction following and fidelity of the base and the
weak model; where the base model's word maps put their mass; `fg.find_weak_layers` against the planted
layers; Focal Guidance on both models (ground-truth anchors, the cache from the responsive layers, and the
ablations), paired seeds, bootstrap intervals; a sweep of anchor strength and cache alpha.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..diagnose import SCORE_CHOICES as SCORES  # every score of fg.find_weak_layers: all are reported
from .experiment import (
    chance_levels,
    evaluate,
    focal_guidance,
    frozen_levels,
    paired,
    precision_recall,
    record_runs,
    summarize,
)
from .load import DERIVED, pipeline, planted_layers
from .model import build_pipeline
from .suite import suite
from .world import CATEGORIES


def _fmt(t: tuple | None) -> str:
    if t is None:
        return "— (no item)"  # a category the (small) item set does not hold
    mean, low, high, n = t
    if np.isnan(low):
        return f"{mean:.2f} (n={n})"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}] (n={n})"


def _fmt_diff(t: tuple) -> str:
    mean, low, high, n = t
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def untrained_control(pipe, seed: int = 0):
    """The control of a trained toy pipeline: the same parts (a shallow copy) with its DiT, of the same size, at
    initial weights."""
    import copy

    from .model import DIT_SIZE_KEYS

    control = copy.copy(pipe)
    size = {k: pipe.transformer.config[k] for k in DIT_SIZE_KEYS}
    control.transformer = build_pipeline(seed=seed, dit=size).transformer.eval()
    return control


def word_map_focus(pipe, items, *, seed: int = 0) -> dict:
    """How much more word-map mass lands on the named object's pixels than elsewhere, per layer.

    For each item's first word: the mean of the cond branch's word map (all steps, first latent frame) inside
    the object's ground-truth mask, divided by its mean outside, at the latent token resolution. 1 = no focus.
    The ratio is unbounded (a map taught to land on the object reads in the hundreds), so the bounded share is
    returned too: ``share_per_layer``, the part of the map's mass on the object's tokens (0 to 1), against
    ``area_share``, what a uniform map puts there (the object's share of the tokens); both means over items.
    """
    import torch
    import torch.nn.functional as F

    import fglens as fg

    from .experiment import item_seed
    from .load import CALL

    ratios, shares, areas = [], [], []
    layers = None
    for item in items:
        word = item.words[0]
        if word not in item.masks():
            continue
        with fg.trace(pipe, record=fg.Record(words=[word], maps=True)) as run:
            pipe(image=item.image, prompt=item.prompt, generator=torch.Generator().manual_seed(item_seed(item, seed)),
                 **CALL)
        m = run.dataset["word_map"].sel(branch="cond", word=word).isel(frame=0).mean("step")  # layer, y, x
        layers = [str(v) for v in m.layer.values]
        grid = m.shape[-2:]
        mask = torch.from_numpy(item.masks()[word].astype(np.float32))[None, None]
        mask = F.adaptive_avg_pool2d(mask, grid)[0, 0].numpy() >= 0.5
        if not mask.any() or mask.all():
            continue
        vals = m.values
        ratios.append(vals[:, mask].mean(-1) / np.maximum(vals[:, ~mask].mean(-1), 1e-12))
        shares.append(vals[:, mask].sum(-1) / np.maximum(vals.sum((-2, -1)), 1e-12))
        areas.append(float(mask.mean()))
    r = np.array(ratios)
    return {"layers": layers, "ratio_per_layer": r.mean(0).tolist() if len(r) else [], "n": len(r),
            "items_above_1": float((r.mean(1) > 1).mean()) if len(r) else float("nan"),
            "share_per_layer": np.mean(shares, 0).tolist() if shares else [],
            "area_share": float(np.mean(areas)) if areas else float("nan")}


def focal_layers(named: Sequence[str], planted: Sequence[str], score: str = "similarity") -> tuple[list[str], str]:
    """The layers the report's Focal Guidance acts on, and where they come from: the layers the diagnosis by
    `score` names, or, where it names none, the planted ones (the ground truth: an upper bound on what a diagnosis
    could give; ``[]`` for a model with nothing planted, which then gets no Focal Guidance).

    Example:
        >>> focal_layers([], ["blocks.3", "blocks.4"])
        (['blocks.3', 'blocks.4'], 'planted (the diagnosis named none)')
        >>> focal_layers(["blocks.3"], ["blocks.3", "blocks.4"], "morans_i")
        (['blocks.3'], 'diagnosis (morans_i)')
    """
    if named:
        return list(named), "diagnosis" if score == "similarity" else f"diagnosis ({score})"
    return list(planted), "planted (the diagnosis named none)" if planted else "none"


def diagnosis_key(model: str, score: str, rule: str, fg_score: str = "similarity") -> str:
    """The report's name of one diagnosis of `model`: the bare model name for the one that picks Focal Guidance's
    layers (`fg_score`, robust-z rule), ``"model (score[, bootstrap])"`` for the others.

    Example:
        >>> diagnosis_key("weak", "morans_i", "robust_z"), diagnosis_key("weak", "morans_i", "robust_z", "morans_i")
        ('weak (morans_i)', 'weak')
    """
    if (score, rule) == (fg_score, "robust_z"):
        return model
    return f"{model} ({score}{', bootstrap' if rule == 'bootstrap' else ''})"


def report_pipelines(base: str | None, weak: str | None, weak_variant: str = "weak") -> dict:
    """The report's two pipelines: ``base`` (a train output folder, or the shipped base) and ``weak``; a derived
    `weak_variant` (``"sink"``) with no `weak` folder is cut from *that* base, never from the shipped one."""
    if weak is None and base is not None and weak_variant in DERIVED:
        weak = base
    return {"base": pipeline("base", path=base), "weak": pipeline(weak_variant, path=weak)}


def report(out: Path, *, base: str | None = None, weak: str | None = None, n: int = 40, seed: int = 0,
           sweep: bool = True, n_diag: int = 10, n_sweep: int | None = None, ablations_on_base: bool = False,
           progress: bool = True, strengths: Sequence[float] = (1.0, 2.0, 4.0),
           alphas: Sequence[float] = (0.25, 0.5, 0.75), weak_variant: str = "weak",
           fg_score: str = "similarity") -> dict:
    """Measure everything and write ``out/report.md``, ``out/results.json``, ``out/rows.csv``, figures.

    The sweep of `strengths` × `alphas` (both operators on the weak model) runs on the first `n_sweep` items
    (default: all `n`), paired with the same items unedited. `weak_variant` is the planted variant measured as
    "weak" (``"weak"``, trained, or ``"sink"``, derived). Every score of `fg.find_weak_layers` is reported; the
    layers of `fg_score` (robust-z rule) are the ones Focal Guidance acts on (``"morans_i"``: the score that names
    the sink's planted layers where the default ``"similarity"`` names none)."""
    import fglens as fg

    strengths, alphas = _grid(strengths, "strengths", 0.0, None), _grid(alphas, "alphas", 0.0, 1.0)
    if fg_score not in SCORES:
        raise ValueError(f"fg_score must be one of {', '.join(SCORES)} (fg.find_weak_layers' scores); got {fg_score!r}")

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pipes = report_pipelines(base, weak, weak_variant)
    planted = {k: planted_layers(p) for k, p in pipes.items()}
    items = suite("test", n=n, seed=seed)
    res: dict = {"n": n, "seed": seed, "planted": planted, "categories": list(CATEGORIES),
                 "weak_variant": weak_variant, "fg_score": fg_score}
    res["chance"] = chance_levels(items, seed=seed)
    res["frozen"] = frozen_levels(items)
    rows: dict[str, list[dict]] = {}
    for name, pipe in pipes.items():
        rows[name] = evaluate(pipe, items, seed=seed, progress=progress)
        res[f"{name}_follows"] = summarize(rows[name])
        res[f"{name}_fidelity"] = summarize(rows[name], "fidelity")
    res["word_map_focus"] = word_map_focus(pipes["base"], items[:n_diag], seed=seed)
    res["word_map_focus_weak"] = word_map_focus(pipes["weak"], items[:n_diag], seed=seed)
    res["word_map_focus_control"] = word_map_focus(untrained_control(pipes["base"], seed), items[:n_diag], seed=seed)
    diag: dict = {}
    for name, pipe in pipes.items():
        runs = record_runs(pipe, items[:n_diag], seed=seed)
        rules = [*[(s, "robust_z") for s in SCORES], ("similarity", "bootstrap"), ("response", "bootstrap")]
        for score, rule in rules:
            weak_layers = fg.find_weak_layers(runs, score=score, rule=rule)
            p, r = precision_recall(weak_layers.weak, planted[name])
            entry = {"weak": list(weak_layers.weak), "responsive": list(weak_layers.responsive),
                     "z": {str(k): float(v) for k, v in zip(weak_layers.scores.layer.values,
                                                             weak_layers.scores.values, strict=False)},
                     "raw": weak_layers.to_dict()["raw"],
                     "precision": p, "recall": r, "summary": weak_layers.summary()}
            key = diagnosis_key(name, score, rule, fg_score)
            diag[key] = entry
            if key == "weak":  # the rule whose layers drive Focal Guidance below
                fig = fg.plot.layer_profile(runs, weak=weak_layers)
                fig.savefig(out / "weak_layer_profile.png", dpi=120)
    res["diagnosis"] = diag
    fg_rows: dict[str, list[dict]] = {}
    for name, pipe in pipes.items():
        layers, layers_from = focal_layers(diag[name]["weak"], planted[name], fg_score)
        if not layers:
            continue
        src = [x for x in diag[name]["responsive"] if x not in layers]
        conds = {"both": dict(anchor="truth", cache=True)}
        if name == "weak" or ablations_on_base:  # the ablations where the planting is; CLIP anchors (realistic)
            conds.update(anchor_only=dict(anchor="truth", cache=False), cache_only=dict(anchor=None, cache=True),
                         clip=dict(anchor="clip", cache=True))
        for cond, kw in conds.items():
            key = f"{name}+fg_{cond}"
            fg_rows[key] = evaluate(pipe, items, seed=seed, edit=focal_guidance(layers, src, **kw), progress=progress)
            res[key] = {"layers": layers, "layers_from": layers_from, "src": src, "follows": summarize(fg_rows[key]),
                        "delta_follows": paired(rows[name], fg_rows[key]),
                        "delta_fidelity": paired(rows[name], fg_rows[key], "fidelity")}
    if sweep and "weak+fg_both" in res:
        layers, src = res["weak+fg_both"]["layers"], res["weak+fg_both"]["src"]
        grid, k = [], min(n_sweep or n, n)
        res["n_sweep"] = k
        for strength in strengths:
            for alpha in alphas:
                r = evaluate(pipes["weak"], items[:k], seed=seed,
                             edit=focal_guidance(layers, src, strength=strength, alpha=alpha))
                d = paired(rows["weak"][:k], r)["all"]
                grid.append({"strength": strength, "alpha": alpha, "follows": float(np.mean([x["follows"] for x in r])),
                             "delta": d[:3], "fidelity": float(np.mean([x["fidelity"] for x in r]))})
        res["sweep"] = grid
    res["seconds"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    with open(out / "rows.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", "id", "category", "prompt", "follows", "fidelity", "first_frame", "reason"])
        for cond, rs in {**rows, **fg_rows}.items():
            for r in rs:
                w.writerow([cond, r["id"], r["category"], r["prompt"], r["follows"], f"{r['fidelity']:.4f}",
                            f"{r['first_frame']:.4f}", r["reason"]])
    _figure(res, out)
    (out / "report.md").write_text(_markdown(res))
    print(_markdown(res))
    return res


def _grid(values: Sequence[float], name: str, low: float, high: float | None) -> list[float]:
    """`values` as floats, each finite and in [low, high]; a ValueError that says what was wrong otherwise."""
    out = [float(v) for v in values]
    bad = [v for v in out if not np.isfinite(v) or v < low or (high is not None and v > high)]
    if not out or bad:
        span = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ValueError(f"{name} must be one or more finite numbers {span}; got {list(values)!r}")
    return out


def _figure(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    conds = [c for c in ("base_follows", "weak_follows", "weak+fg_both", "base+fg_both") if c in res]
    cats = list(CATEGORIES) + ["all"]
    fig = Figure(figsize=(9, 3.6))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(conds))
    for i, cond in enumerate(conds):
        table = res[cond] if cond.endswith("_follows") else res[cond]["follows"]
        means = [table.get(c, (np.nan,) * 4)[0] for c in cats]
        lows = [table.get(c, (np.nan,) * 4)[1] for c in cats]
        highs = [table.get(c, (np.nan,) * 4)[2] for c in cats]
        x = np.arange(len(cats)) + (i - (len(conds) - 1) / 2) * width
        err = np.array([np.subtract(means, lows), np.subtract(highs, means)])
        ax.bar(x, means, width, yerr=np.nan_to_num(err), capsize=2,
               label=cond.replace("_follows", "").replace("+fg_both", " + Focal Guidance"))
    chance = [res["chance"].get(c, np.nan) for c in cats[:-1]]
    ax.scatter(np.arange(len(cats) - 1), chance, marker="_", s=400, color="k", zorder=3, label="chance")
    ax.set_xticks(np.arange(len(cats)), [c.replace("_", "\n") for c in cats])
    ax.set_ylabel("instruction followed (fraction)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"toy world, {res['n']} test items, 95 % bootstrap intervals over items", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)


def _markdown(res: dict) -> str:
    cats = list(CATEGORIES) + ["all"]
    lines = [f"# Toy world report ({res['n']} test items, seed {res['seed']}, {res['seconds']} s)", "",
             "| category | chance | do nothing | base follows | weak follows | base fidelity | weak fidelity |",
             "|---|---|---|---|---|---|---|"]
    for c in cats:
        lines.append(f"| {c} | {res['chance'].get(c, float('nan')):.2f} | {res['frozen'].get(c, float('nan')):.2f} | "
                     f"{_fmt(res['base_follows'].get(c))} | {_fmt(res['weak_follows'].get(c))} | "
                     f"{_fmt(res['base_fidelity'].get(c))} | {_fmt(res['weak_fidelity'].get(c))} |")
    f, c = res["word_map_focus"], res.get("word_map_focus_control")
    lines += ["", "## Word maps (base)", "",
              f"Mean word-map mass inside the named object / outside, first latent frame, cond branch, {f['n']} items "
              "(control: the same pipeline with an untrained DiT):",
              "", "| layer | " + " | ".join(f["layers"] or []) + " |", "|---|" + "---|" * len(f["layers"] or []),
              "| trained | " + " | ".join(f"{v:.2f}" for v in f["ratio_per_layer"]) + " |"]
    if c:
        lines.append("| untrained (control) | " + " | ".join(f"{v:.2f}" for v in c["ratio_per_layer"]) + " |")
    if res.get("word_map_focus_weak"):
        lines.append(f"| weak (planted {', '.join(res['planted']['weak'])}) | "
                     + " | ".join(f"{v:.2f}" for v in res["word_map_focus_weak"]["ratio_per_layer"]) + " |")
    if f.get("share_per_layer"):
        lines += ["", f"Share of the map's mass on the object (bounded; a uniform map: {f['area_share']:.2f}):", "",
                  "| layer | " + " | ".join(f["layers"]) + " |", "|---|" + "---|" * len(f["layers"])]
        for name, g in (("trained", f), ("untrained (control)", c), ("weak", res.get("word_map_focus_weak"))):
            if g and g.get("share_per_layer"):
                lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in g["share_per_layer"]) + " |")
    lines += ["", f"Items whose layer-mean ratio exceeds 1: {f['items_above_1']:.2f}"
              + (f" (control {c['items_above_1']:.2f})" if c else ""), "",
              f"## Diagnosis (fg.find_weak_layers; the model's own row: score {res.get('fg_score', 'similarity')}, "
              "whose layers Focal Guidance acts on)", "",
              "| model (score) | weak | responsive | planted | precision | recall | robust z per layer |",
              "|---|---|---|---|---|---|---|"]
    for name, d in res["diagnosis"].items():
        raw = " ".join(f"{v:+.2f}" for v in d["z"].values())
        lines.append(f"| {name} | {d['weak']} | {d['responsive']} | {res['planted'][name.split(' ')[0]]} | "
                     f"{d['precision']:.2f} | {d['recall']:.2f} | {raw} |")
    lines += ["", "## Focal Guidance (paired seeds; difference to the same model without it)", "",
              "| condition | layers | layers from | sources | follows | Δ follows (all) | Δ fidelity (all) |",
              "|---|---|---|---|---|---|---|"]
    for key, v in res.items():
        if "+fg_" in key:
            lines.append(f"| {key} | {v['layers']} | {v.get('layers_from', '—')} | {v['src']} | "
                         f"{_fmt(v['follows']['all'])} | "
                         f"{_fmt_diff(v['delta_follows']['all'])} | {_fmt_diff(v['delta_fidelity']['all'])} |")
    if "sweep" in res:
        lines += ["", f"## Sweep on the weak model (both operators, first {res.get('n_sweep', res['n'])} items)", "",
                  "| strength | alpha | follows | Δ [95 % CI] | fidelity |",
                  "|---|---|---|---|---|"]
        for g in res["sweep"]:
            m, lo, hi = g["delta"]
            lines.append(f"| {g['strength']} | {g['alpha']} | {g['follows']:.2f} | {m:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                         f"{g['fidelity']:.3f} |")
    return "\n".join(lines) + "\n"


def loss_figure(runs: dict[str, str | Path], path: str | Path) -> Path:
    """Draw the training losses of `fglens toy train` runs (name -> run folder, read from its ``loss.csv``): one
    panel per loss any run has — the VAE's, the DiT's flow matching, the word-map term
    (``--dit-word-map-weight``) — as a 100-step running mean over the raw values, each run one colour in every
    panel. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    tables = {}
    for name, run in runs.items():
        with open(Path(run) / "loss.csv", newline="") as f:
            tables[name] = list(csv.DictReader(f))
    titles = {"vae": "VAE (reconstruction)", "dit": "DiT (flow matching)", "word_map": "DiT word-map term"}
    present = {r["phase"] for table in tables.values() for r in table}
    panels = [(phase, title) for phase, title in titles.items() if phase in present]
    if not panels:
        raise ValueError(f"no loss rows ({', '.join(titles)}) in the loss.csv of {', '.join(map(str, runs.values()))}")
    fig = Figure(figsize=(4.5 * len(panels), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for i, (name, table) in enumerate(tables.items()):
        color = f"C{i % 10}"
        for ax, (phase, _) in zip(axes, panels, strict=True):
            loss = np.array([float(r["loss"]) for r in table if r["phase"] == phase])
            if len(loss) == 0:
                continue
            k = min(100, len(loss))
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(len(loss)), loss, lw=0.4, alpha=0.25, color=color)
            ax.plot(np.arange(k - 1, len(loss)), smooth, lw=1.2, label=f"{name} ({len(loss)} steps)", color=color)
    for ax, (_, title) in zip(axes, panels, strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("loss (100-step running mean over the raw values)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)
