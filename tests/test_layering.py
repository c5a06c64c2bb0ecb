"""The import graph of fglens keeps the layering of docs/architecture.md: no package imports one of a higher layer
(at module level or inside a function), and module-level imports between packages form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import fglens

ROOT = Path(fglens.__file__).parent

#: the layers of docs/architecture.md, lowest first; a package may import its own layer's and lower ones
LAYERS: list[set[str]] = [
    {"stats", "adapters", "anchors", "jsonl"},  # pure statistics; the model adapters; CLIP regions; JSONL reading
    {"core"},  # one attention call, the scope types, exact probabilities, the intervention protocol
    {"interventions", "store"},  # the operators; the run format on disk
    {"trace"},  # hooks, recorders, applying interventions
    {"diagnose", "plot"},  # analysis of stored runs
    {"pipelines", "jobs", "testing", "eval", "sweep", "toy", "train", "nnsight", "bench", "cli", "docgen",
     "view"},  # tools
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _package(module: str) -> str | None:
    """``fglens.trace.record`` -> ``trace``; the package root itself (the public facade) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "fglens" else None


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported fglens module, at module level?) for every import in the file, relative ones resolved."""
    module = ".".join(("fglens", *path.relative_to(ROOT).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    tree = ast.parse(path.read_text())
    top_level = {id(n) for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                       ast.ClassDef, ast.If))
                 for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [(n, id(node) in top_level) for n in names if n.startswith("fglens")]
    return out


def _edges() -> list[tuple[str, str, bool, str]]:
    """(from package, to package, module level?, file) for every import that crosses packages."""
    edges = []
    for path in ROOT.rglob("*.py"):
        src = _package(".".join(("fglens", *path.relative_to(ROOT).with_suffix("").parts)))
        if src is None:
            continue
        for target, top in _imports(path):
            dst = _package(target)
            if dst is not None and dst != src:
                edges.append((src, dst, top, str(path.relative_to(ROOT))))
    return edges


def test_every_package_has_a_layer():
    packages = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert packages - {"__main__"} == set(LEVEL), "add the new package to LAYERS here and in docs/architecture.md"


def test_no_package_imports_a_higher_layer():
    upward = [f"{file}: {src} (layer {LEVEL[src]}) imports {dst} (layer {LEVEL[dst]})"
              for src, dst, _, file in _edges() if LEVEL[dst] > LEVEL[src]]
    assert not upward, "\n".join(upward)


def test_module_level_imports_between_packages_form_no_cycle():
    graph: dict[str, set[str]] = {}
    for src, dst, top, _ in _edges():
        if top:
            graph.setdefault(src, set()).add(dst)

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph.get(a, ()))

    cycles = sorted(p for p in graph if reaches(p, p, {p}))
    assert not cycles, f"packages on an import cycle: {cycles}"


def test_every_fglens_import_names_a_module_that_exists():
    """Relative imports inside functions are only resolved when the function runs: a module moved into a package
    must not keep a ``from .x import`` that now points inside that package."""
    modules = {".".join(("fglens", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
               for p in ROOT.rglob("*.py")}
    missing = []
    for path in ROOT.rglob("*.py"):
        for target, _ in _imports(path):
            if target not in modules:  # `from .x import name` needs the module x; `from . import x` its package
                missing.append(f"{path.relative_to(ROOT)}: {target}")
    assert not missing, "\n".join(missing)
