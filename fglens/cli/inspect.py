"""``fglens inspect``: what a store holds — schema, runs, completeness, dims, variables and sizes on disk."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import UsageError, fail

EPILOG = """\
examples:
  fglens inspect runs.zarr
  fglens inspect runs.zarr --verify     # also read every chunk: checksums, missing chunks (exit 1 if damaged)

Prints the store's schema version and size, one line per run (id, prompt, seed, words, intervention,
complete or INCOMPLETE, steps written of the total, size on disk), then the dims and variables of the
runs, grouped when identical. docs/cli.md shows a sample.
"""


def register(sub) -> None:
    parser = sub.add_parser(
        "inspect", help="summarise a store: runs, completeness, dims, variables, sizes",
        description="Summarise an fglens store: its schema version, one line per run (prompt, seed, words, "
        "intervention, complete or not, steps written of the total, size on disk), then the dims and "
        "variables of the runs, grouped when identical.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
    )
    parser.add_argument("store", metavar="STORE", help="an fglens store (.zarr)")
    parser.add_argument("--width", type=int, default=40, help="truncate prompts to this many characters (default: 40)")
    parser.add_argument("--verify", action="store_true",
                        help="read every chunk of every run: checksums and missing chunks (exit status 1 if damaged)")
    parser.set_defaults(func=run)


def human_size(n: float) -> str:
    """Bytes as ``512 B``, ``1.5 kB``, ``2.3 MB`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    raise AssertionError("unreachable")


def _short(text: Any, width: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def run_rows(table, width: int) -> list[dict[str, str]]:
    """One row of text cells per run of a `fglens.store.run_table`."""
    rows = []
    from ..store.reader import intervention_summary

    for r in table.itertuples(index=False):
        total = r.num_steps if r.num_steps is not None and r.num_steps == r.num_steps else "?"
        words = r.words if isinstance(r.words, (list, tuple)) else ([] if r.words is None else [r.words])
        if isinstance(r.problem, str):
            rows.append({"run": str(r.id), "prompt": "", "seed": "", "words": "", "intervention": "",
                         "status": "UNREADABLE", "steps": "", "size": human_size(r.size_bytes)})
            continue
        rows.append({
            "run": str(r.id), "prompt": _short(r.prompt, width), "seed": "" if r.seed is None else str(r.seed),
            "words": ", ".join(map(str, words)), "intervention": intervention_summary(r.intervention),
            "status": "complete" if r.complete else "INCOMPLETE", "steps": f"{r.steps_written}/{total}",
            "size": human_size(r.size_bytes),
        })
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """Left-aligned columns, two spaces apart, with a header."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  " + "  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  " + "  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


#: dims in the order runs are described (others follow, by name)
DIM_ORDER = ("branch", "step", "layer", "word", "frame", "y", "x")


def _dim_order(dim: str) -> tuple[int, str]:
    return (DIM_ORDER.index(dim) if dim in DIM_ORDER else len(DIM_ORDER), dim)


def layout_groups(store: str, names: list[str]) -> list[tuple[list[str], dict[str, Any]]]:
    """Runs grouped by what they hold (model, dims other than ``step``, variables and their dims, layers)."""
    from ..store import open_run

    groups: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for name in names:
        ds = open_run(store, name, load=False)
        info = {
            "model": ds.attrs.get("model_class"),
            "dims": {str(d): int(ds.sizes[d]) for d in sorted(ds.sizes, key=_dim_order) if d != "step"},
            "variables": {str(v): list(map(str, ds[v].dims)) for v in ds.data_vars},
            "layers": [str(x) for x in ds["layer"].values] if "layer" in ds.dims else [],
        }
        key = json.dumps(info, sort_keys=True)
        groups.setdefault(key, ([], {**info, "steps": set()}))
        groups[key][0].append(name)
        groups[key][1]["steps"].add(int(ds.sizes.get("step", 0)))
    return list(groups.values())


def describe_group(names: list[str], info: dict[str, Any]) -> str:
    steps = sorted(info["steps"])
    step = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"
    dims = [f"{d}={n}" for d, n in info["dims"].items()]
    dims.insert(1 if "branch" in info["dims"] else 0, f"step={step}")
    by_dims: dict[str, list[str]] = {}
    for var, var_dims in info["variables"].items():
        by_dims.setdefault(", ".join(var_dims), []).append(var)
    label = names[0] if len(names) == 1 else f"{len(names)} runs: {', '.join(names)}"
    layers = info["layers"]
    shown = ", ".join(layers) if len(layers) <= 8 else f"{', '.join(layers[:3])}, …, {', '.join(layers[-2:])}"
    lines = [f"  {label}", f"    model      {info['model']}", f"    dims       {' '.join(dims)}",
             f"    layers     {shown} ({len(layers)})"]
    for i, (var_dims, variables) in enumerate(by_dims.items()):
        lines.append(f"    {'variables' if i == 0 else '':<10} {', '.join(variables)} ({var_dims})")
    return "\n".join(lines)


def summary(store: str, width: int = 40) -> str:
    """The text `fglens inspect` prints for `store` (a `UsageError` for a missing or non-fglens path).

    Example:
        >>> import tempfile, os, fglens as fg
        >>> path = os.path.join(tempfile.mkdtemp(), "runs.zarr")
        >>> _ = fg.testing.tiny_run("wan", words=("dog",), maps=False, store=path)
        >>> print(summary(path))  # doctest: +ELLIPSIS
        fglens store .../runs.zarr: schema 1, 1 run (1 complete), ... on disk
        <BLANKLINE>
        run  ...  status    steps  size
        run-...  complete  2/2  ...
    """
    from ..store import run_table
    from ..store.layout import disk_size, root_attrs

    try:
        table = run_table(store)
        schema = root_attrs(store).get("fglens_schema")
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    n = len(table)
    complete = int(table["complete"].sum()) if n else 0
    counts = f"{complete} complete" + (f", {n - complete} incomplete" if n - complete else "")
    head = (f"fglens store {store}: schema {schema}, {n} run{'s' if n != 1 else ''}"
            f"{f' ({counts})' if n else ''}, {human_size(disk_size(store))} on disk")
    if not n:
        return head + "\n\n  (no runs yet)"
    parts = [head, "", format_table(run_rows(table, width))]
    bad = table[table["problem"].notna()]
    if len(bad):
        parts += ["", f"unreadable ({len(bad)}; listed, not opened):"] + [f"  {p}" for p in bad["problem"]]
    good = list(table[table["problem"].isna()]["id"])
    if good:
        parts += ["", "dims and variables:"]
        parts += [describe_group(names, info) for names, info in layout_groups(store, good)]
    return "\n".join(parts)


def verification(store: str, runs: list[str]) -> tuple[str, bool]:
    """The text of ``--verify`` (one line per run) and whether every run is whole."""
    from ..store import verify_run

    lines, whole = ["verify (every chunk read, checksums checked):"], True
    for name in runs:
        verdict = verify_run(store, name)
        whole &= verdict.ok
        if verdict.ok:
            note = "" if verdict.checksummed else " (written without checksums: only missing chunks detectable)"
            lines.append(f"  {name}: ok, {verdict.chunks} chunks{note}")
        else:
            lines.append(f"  {name}: DAMAGED")
            lines += [f"    {p}" for p in verdict.problems]
    return "\n".join(lines), whole


def run(args: argparse.Namespace) -> int:
    try:
        text = summary(args.store, args.width)
    except UsageError as exc:
        return fail("inspect", exc)
    print(text)
    if not args.verify:
        return 0
    from ..store import list_runs

    report, whole = verification(args.store, list_runs(args.store))
    print("\n" + report)
    return 0 if whole else 1
