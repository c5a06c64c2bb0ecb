"""``fglens plot``: every figure of the runs of a store (fglens.plot), written to a folder.

Per run: ``layer_profile`` (with the weak and responsive layers of fg.find_weak_layers), one
``layer_step_heatmap`` per recorded statistic, ``condition_balance``, and ``word_maps`` per word when the run
holds word maps (one colour scale for all words), drawn over the run's reference image in grey when it kept
one (image-to-video runs do); heatmaps of an edited run outline the cells its edit acts on. Across runs:
``compare`` for each run with an intervention against the run of the same prompt and seed without one, and
pooled figures over all runs (a sweep's prompts and seeds: `pooled_jobs`).
`write_figures` is what ``fglens demo`` calls too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import UsageError, fail, finite_float

EPILOG = """\
examples:
  fglens plot runs.zarr --out figures/                       # a store holding one run
  fglens plot runs.zarr --all --out figures/ --format pdf    # every run, one folder each, and comparisons
  fglens plot runs.zarr --run RUN_ID --var similarity --word dog --out figures/

Writes, per run: layer_profile, heatmap_<statistic> (one per statistic), condition_balance,
word_maps_<word> (when the run holds word maps: `fglens diagnose --maps`; over the run's reference image when
it kept one); and compare_<statistic>_<a>_vs_<b>
for each run with an intervention against the run without one of the same prompt and seed. With several
runs, also pooled_layer_profile (all runs without an intervention, with the weak layers found over them) and
pooled_compare_<statistic>_<intervention> (each intervention's runs against their baselines, paired).
"""

#: the statistics of the profile and comparison figures, when recorded (`--var` overrides)
PROFILE_VARS = ("similarity", "morans_i")
FORMATS = ("png", "pdf", "svg")


def register(sub) -> None:
    parser = sub.add_parser(
        "plot", help="write every figure of a store's runs to a folder",
        description="Write the figures of fglens.plot for runs of a store: per-layer profiles with the weak "
        "layers, layer x step heatmaps, the condition balance, word maps, and before/after comparisons.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
    )
    parser.add_argument("store", metavar="STORE", help="an fglens store (.zarr)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", action="append", default=None, metavar="ID",
                       help="a run to plot (repeatable; default: the store's only run)")
    which.add_argument("--all", action="store_true", help="plot every run of the store")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the figures to")
    parser.add_argument("--var", action="append", default=None, metavar="STAT",
                        help="a statistic to draw (repeatable; default: every recorded one for the heatmaps, "
                        "similarity and morans_i for the profile and comparisons)")
    parser.add_argument("--word", action="append", default=None, metavar="W",
                        help="a word whose maps to draw (repeatable; default: every word)")
    parser.add_argument("--format", choices=FORMATS, default="png", help="file format (default: png)")
    parser.add_argument("--dpi", type=finite_float, default=None, help="resolution of raster formats (default: 200)")
    parser.set_defaults(func=run)


# -- what to draw -----------------------------------------------------------------------------------------------

def statistics(ds) -> list[str]:
    """The per-layer statistics a run recorded (every variable over ``layer`` except the word maps and the flag of
    layers a step cache skipped)."""
    from ..store import VARIABLE_DIMS
    from ..store.schema import FLAG_ATTRS

    order = list(VARIABLE_DIMS)
    found = [str(v) for v in ds.data_vars if "layer" in ds[v].dims and v != "word_map" and v not in FLAG_ATTRS]
    return sorted(found, key=lambda v: (order.index(v) if v in order else len(order), v))


def _words(ds) -> list[str]:
    return [str(w) for w in ds.word.values] if "word" in ds.dims else []


def check_choices(runs: Mapping[str, Any], variables: Sequence[str] | None, words: Sequence[str] | None) -> None:
    """`variables` and `words` must exist in every run drawn; a `UsageError` names what each run has."""
    for name, ds in runs.items():
        unknown = [v for v in variables or () if v not in statistics(ds)]
        if unknown:
            raise UsageError(f"unknown statistic {', '.join(map(repr, unknown))} for run {name}; its statistics: "
                             f"{', '.join(statistics(ds))}")
        missing = [w for w in words or () if w not in _words(ds)]
        if missing:
            raise UsageError(f"word {', '.join(map(repr, missing))} was not recorded in run {name}; its words: "
                             f"{', '.join(_words(ds)) or 'none'}")


def comparisons(runs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(baseline, edited) run pairs: each run with an intervention against the latest run without one that has
    the same prompt, seed, model and layers."""
    from ..store import decode_attrs

    def key(ds) -> tuple:
        a = decode_attrs(dict(ds.attrs))
        return (a.get("prompt"), a.get("seed"), a.get("model_class"), tuple(str(x) for x in ds.layer.values))

    def edited(ds) -> bool:
        return decode_attrs(dict(ds.attrs)).get("intervention") not in (None, "null", "none")

    pairs = []
    for name, ds in runs.items():
        if not edited(ds):
            continue
        bases = [b for b, other in runs.items() if not edited(other) and key(other) == key(ds)]
        if bases:
            pairs.append((bases[-1], name))
    return pairs


def _intervention_label(ds) -> str:
    from ..store import decode_attrs

    spec = decode_attrs(dict(ds.attrs)).get("intervention")
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    return f"with {kind}" if kind else "with intervention"


def figure_jobs(
    runs: Mapping[str, Any],
    out: str | os.PathLike,
    fmt: str = "png",
    variables: Sequence[str] | None = None,
    words: Sequence[str] | None = None,
    dpi: float | None = None,
    notes: list[str] | None = None,
) -> list[tuple[Path, Callable[[Path], Any]]]:
    """Every figure to draw for `runs` (name -> run Dataset): (path, draw(path)) pairs, nothing drawn yet.

    One run: its figures go straight into `out`; several: into ``out/<run>/``, comparisons into `out`.
    Things that cannot be drawn (no words recorded, too few layers for the weak-layer rule) are appended to
    `notes` and skipped.
    """

    from .. import plot

    notes = notes if notes is not None else []
    extra = {} if dpi is None else {"dpi": dpi}
    out = Path(out)
    jobs: list[tuple[Path, Callable[[Path], Any]]] = []
    weak_of: dict[str, Any] = {}
    for name, ds in runs.items():
        folder = out if len(runs) == 1 else out / name
        stats = statistics(ds)
        profile = list(variables) if variables else [v for v in PROFILE_VARS if v in stats]
        weak = weak_or_note(ds, name, notes)
        weak_of[name] = weak
        if profile:
            jobs.append((folder / f"layer_profile.{fmt}",
                         lambda p, ds=ds, weak=weak, v=tuple(profile): plot.layer_profile(ds, weak=weak, vars=v,
                                                                                          path=p, **extra)))
        else:
            notes.append(f"{name}: no similarity or Moran's I recorded (no words): no layer profile")
        for var in variables or stats:
            jobs.append((folder / f"heatmap_{var}.{fmt}",
                         lambda p, ds=ds, var=var: plot.layer_step_heatmap(ds, var=var, path=p, **extra)))
        if any(v in stats for v in ("text_share", "text_mass")):
            jobs.append((folder / f"condition_balance.{fmt}",
                         lambda p, ds=ds: plot.condition_balance(ds, path=p, **extra)))
        if "word_map" in ds.data_vars:
            # over the run's own reference image when it kept one (word_maps' default, image=None), in grey; one
            # colour scale for all words, so that the figures of the words compare colour for colour
            for word in words or _words(ds):
                jobs.append((folder / f"word_maps_{_safe(word)}.{fmt}",
                             lambda p, ds=ds, word=word: plot.word_maps(ds, word=word, path=p, shared_scale=True,
                                                                        **extra)))
        elif words:
            notes.append(f"{name}: no word maps recorded (record them with --maps / fg.Record(maps=True))")
    jobs += pooled_jobs(runs, out, fmt, variables, extra, notes)
    for base, edited in comparisons(runs):
        a, b = runs[base], runs[edited]
        shared = [v for v in statistics(a) if v in statistics(b)]
        for var in (list(variables) if variables else [v for v in PROFILE_VARS if v in shared]):
            if var not in shared:
                continue
            jobs.append((out / f"compare_{var}_{base}_vs_{edited}.{fmt}",
                         lambda p, a=a, b=b, var=var, weak=weak_of[base]: plot.compare(
                             a, b, var=var, labels=("without", _intervention_label(b)), weak=weak, path=p,
                             **extra)))
    return jobs


def weak_or_note(runs: Any, name: str, notes: list[str]) -> Any:
    """`find_weak_layers(runs)`, its warnings appended to `notes` as ``name: ...``; None (and a note) where the
    rule cannot run (too few layers, no statistic)."""
    import warnings

    from ..diagnose import find_weak_layers

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            weak = find_weak_layers(runs)
    except ValueError as exc:
        notes.append(f"{name}: no weak layers marked ({exc})")
        return None
    notes.extend(f"{name}: {w.message}" for w in caught)
    return weak


def pooled_jobs(
    runs: Mapping[str, Any],
    out: Path,
    fmt: str,
    variables: Sequence[str] | None,
    extra: Mapping[str, Any],
    notes: list[str],
) -> list[tuple[Path, Callable[[Path], Any]]]:
    """Figures over several runs at once (a sweep's prompts and seeds), when more than one run is drawn.

    ``pooled_layer_profile``: every run without an intervention in one profile (their samples pooled, the
    band a bootstrap over all of them), with the weak layers `find_weak_layers` finds over those runs; and per
    intervention (runs with the same recipe) ``pooled_compare_<statistic>_<kind>``: its runs against their
    baselines (same prompt, seed, model and layers), paired sample by sample.
    """
    import json

    from .. import plot
    from ..store import decode_attrs

    if len(runs) < 2:
        return []
    jobs: list[tuple[Path, Callable[[Path], Any]]] = []
    pairs = comparisons(runs)
    edited = {b for _, b in pairs} | {n for n, ds in runs.items()
                                      if decode_attrs(dict(ds.attrs)).get("intervention") not in (None, "null", "none")}
    plain = [runs[n] for n in runs if n not in edited]
    shared = set.intersection(*(set(statistics(ds)) for ds in runs.values()))
    profile = list(variables) if variables else [v for v in PROFILE_VARS if v in shared]
    if len({tuple(map(str, ds.layer.values)) for ds in plain}) > 1:
        notes.append("pooled figures: the runs without an intervention have different layers (several models?): "
                     "no pooled profile")
    elif len(plain) >= 2 and profile:
        weak = weak_or_note(plain, "pooled", notes)
        jobs.append((out / f"pooled_layer_profile.{fmt}",
                     lambda p, r=plain, w=weak, v=tuple(profile): plot.layer_profile(
                         r, weak=w, vars=v, path=p, **extra)))
    groups: dict[str, list[tuple[str, str]]] = {}
    for base, edit in pairs:
        spec = decode_attrs(dict(runs[edit].attrs)).get("intervention")
        groups.setdefault(json.dumps(spec, sort_keys=True, default=str), []).append((base, edit))
    for i, members in enumerate(groups.values()):
        if len(members) < 2:
            continue
        a = [runs[base] for base, _ in members]
        b = [runs[edit] for _, edit in members]
        label = _intervention_label(b[0])
        kind = _safe(label.removeprefix("with ").replace(" ", "_"))
        suffix = f"{kind}_{i}" if len(groups) > 1 else kind
        for var in profile:
            jobs.append((out / f"pooled_compare_{var}_{suffix}.{fmt}",
                         lambda p, a=a, b=b, var=var, label=label: plot.compare(
                             a, b, var=var, labels=("without", label), path=p, **extra)))
    return jobs


def _safe(word: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in word)


def write_figures(
    runs: Mapping[str, Any],
    out: str | os.PathLike,
    fmt: str = "png",
    variables: Sequence[str] | None = None,
    words: Sequence[str] | None = None,
    dpi: float | None = None,
    progress: bool = True,
) -> list[Path]:
    """Draw and save every figure of `runs` (name -> run Dataset) into `out`, with a tqdm bar; the paths written.

    Notes on what could not be drawn are printed.

    Example:
        >>> import tempfile, fglens as fg
        >>> ds = fg.testing.tiny_run("wan", words=("dog",), maps=False)
        >>> paths = write_figures({"demo": ds}, tempfile.mkdtemp(), variables=["similarity"], progress=False)
        >>> sorted(p.name for p in paths)
        ['condition_balance.png', 'heatmap_similarity.png', 'layer_profile.png']
    """
    from tqdm.auto import tqdm

    check_choices(runs, variables, words)
    notes: list[str] = []
    jobs = figure_jobs(runs, out, fmt, variables, words, dpi, notes)
    for note in notes:
        print(f"note: {note}")
    written = []
    for path, draw in tqdm(jobs, desc="figures", unit="fig", disable=not progress, file=sys.stderr):
        draw(path)
        written.append(path)
    return written


def select_runs(store: str, run_ids: Sequence[str] | None, every: bool) -> dict[str, Any]:
    """The runs to draw (name -> Dataset): `run_ids`, every run, or the store's only run."""
    from ..store import UnreadableRun, list_runs, open_run

    try:
        names = list_runs(store)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if not names:
        raise UsageError(f"{store} holds no runs yet")
    if run_ids:
        unknown = [r for r in run_ids if r not in names]
        if unknown:
            raise UsageError(f"no run {', '.join(map(repr, unknown))} in {store}; its runs: {', '.join(names)}")
        chosen = list(dict.fromkeys(run_ids))
    elif every or len(names) == 1:
        chosen = names
    else:
        raise UsageError(f"{store} holds {len(names)} runs: choose with --run ID (repeatable) or --all; runs: "
                         f"{', '.join(names)}")
    runs = {}
    for name in chosen:
        try:
            ds = open_run(store, name)
        except UnreadableRun as exc:
            if run_ids:
                raise UsageError(str(exc)) from exc
            print(f"note: skipped: {exc}")
            continue
        if ds.sizes.get("step", 0) == 0:
            print(f"note: run {name} has no steps written yet: skipped")
            continue
        runs[name] = ds
    if not runs:
        raise UsageError(f"none of the chosen runs of {store} has a step written")
    return runs


def run(args: argparse.Namespace) -> int:
    try:
        runs = select_runs(args.store, args.run, args.all)
        check_choices(runs, args.var, args.word)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
    except UsageError as exc:
        return fail("plot", exc)
    written = write_figures(runs, out, args.format, args.var, args.word, args.dpi)
    print(f"wrote {len(written)} figures of {len(runs)} run{'s' if len(runs) != 1 else ''} of {args.store}:")
    for path in written:
        print(f"  {path}")
    return 0
