"""Every Python block of README.md and docs/*.md runs as written, in order, on the tiny pipelines (issue 13).

Each file's blocks share one namespace and run in a fresh working folder. A block that needs real weights or
objects the page only sketches is marked, on the line right above its fence, with

    <!-- doc-test: compile-only (why) -->

It is then compiled, its imports run, and every call of the fglens API in it (``fg.x.y(...)``, or a name
imported from fglens) is checked against the API: the name must exist and the call's positional and keyword
arguments must bind to its signature. `PRELUDES` holds what a page assumes without showing it (a pipeline
named ``pipe``, an evaluation's results folder); `AFTER` checks what a page promises.
"""

from __future__ import annotations

import ast
import inspect
import re
import types
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:^<!-- doc-test: (?P<mark>[^>]*?) -->\n)?^```python\n(?P<code>.*?)^```", re.S | re.M)

#: what a page takes as given, run before its first block
PRELUDES = {
    "docs/run-format.md": (
        "import fglens as fg\n"
        "pipe = fg.testing.tiny_wan_i2v_pipeline()\n"
        "image = fg.testing.reference_image()\n"
    ),
    "docs/eval.md": (  # the folder the quick start's tiny `fglens eval` command writes, made small
        "from fglens.eval import builtin_suite, run_eval\n"
        "run_eval(builtin_suite('suite', width=48, height=32).select(ids=['red-ball-turns-blue']), 'tiny-wan',\n"
        "         'eval', seeds=[0], steps=1, n_resamples=200,\n"
        "         edit={'type': 'focal_guidance', 'layers': [1, 2], 'src': [3], 'clip': 'tiny'})\n"
    ),
}


def _blocks(file: str) -> list[tuple[str | None, str, int]]:
    text = (ROOT / file).read_text()
    return [(m["mark"], m["code"], text.count("\n", 0, m.start("code")) + 1) for m in BLOCK.finditer(text)]


def _compile(code: str, file: str, line: int) -> types.CodeType:
    return compile("\n" * (line - 1) + code, str(ROOT / file), "exec")


def _api_object(node: ast.expr, namespace: dict):
    """The fglens object a dotted call target names, None when it does not start at fglens; AttributeError
    when it names something fglens does not have."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in namespace:
        return None
    obj = namespace[node.id]
    module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", "") or ""
    if not module.startswith("fglens"):
        return None
    for name in reversed(parts):
        if isinstance(obj, types.ModuleType) and not hasattr(obj, name):
            raise AttributeError(f"{obj.__name__} has no {name!r}")
        obj = getattr(obj, name)
    return obj


def check_against_api(code: str, file: str, line: int, namespace: dict) -> int:
    """Run the imports of a compile-only block and bind each of its fglens calls; the number of calls checked."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module([node], []), file, "exec"), namespace)  # noqa: S102 - the page's own imports
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        where = f"{file}:{line + node.lineno - 1}: {ast.unparse(node.func)}"
        try:
            target = _api_object(node.func, namespace)
        except AttributeError as error:
            raise AssertionError(f"{where} is not in the fglens API: {error}") from None
        if target is None or not callable(target):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            continue
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        try:
            signature.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords})
        except TypeError as error:
            raise AssertionError(f"{where}{signature}: the call does not fit: {error}") from None
        checked += 1
    return checked


def _readme(tmp_path, namespace):
    import fglens as fg

    assert fg.store.list_runs(tmp_path / "runs" / "dog.zarr") and fg.store.list_runs(tmp_path / "runs" / "fg.zarr")
    assert (tmp_path / "dog.png").stat().st_size > 0 and (tmp_path / "profile.png").stat().st_size > 0
    assert namespace["frames"] is not None


def _quickstart(tmp_path, namespace):
    import fglens as fg

    assert (tmp_path / "figures" / "profile.png").stat().st_size > 0
    assert len(fg.store.list_runs(tmp_path / "runs" / "dog.zarr")) == 2


#: what a page promises, checked after its blocks ran
AFTER = {"README.md": _readme, "docs/quickstart.md": _quickstart}


def test_every_doc_with_python_is_covered():
    with_code = {f for f in FILES if _blocks(f)}
    assert {"README.md", "docs/quickstart.md", "docs/user-guide.md", "docs/eval.md", "docs/interventions.md",
            "docs/nnsight.md"} <= with_code
    for file in with_code:
        for mark, _, line in _blocks(file):
            assert mark is None or mark.startswith("compile-only ("), f"{file}:{line}: unknown mark {mark!r}"


@pytest.mark.parametrize("file", [f for f in FILES if _blocks(f)])
def test_python_blocks_run(file, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc_test__"}
    if file in PRELUDES:
        exec(compile(PRELUDES[file], f"<prelude of {file}>", "exec"), namespace)  # noqa: S102
    ran = 0
    for mark, code, line in _blocks(file):
        compiled = _compile(code, file, line)
        if mark is None:
            exec(compiled, namespace)  # noqa: S102 - the documentation's own code
            ran += 1
        else:
            assert check_against_api(code, file, line, namespace), f"{file}:{line}: no fglens call to check"
    if file in AFTER:
        AFTER[file](tmp_path, namespace)
    import matplotlib.pyplot as plt

    plt.close("all")
    assert ran or all(mark for mark, _, _ in _blocks(file)), file


def test_the_api_check_catches_wrong_names_and_keywords():
    import fglens as fg

    namespace = {"fg": fg}
    assert check_against_api("fg.plot.word_maps(ds, 'dog', steps=(0.0, 0.5), path='x.png')", "x.md", 1,
                             namespace) == 1
    with pytest.raises(AssertionError, match="does not fit"):
        check_against_api("fg.plot.layer_profile(ds, stepz=(0.0, 0.5))", "x.md", 1, namespace)
    with pytest.raises(AssertionError, match="not in the fglens API"):
        check_against_api("fg.plot.no_such_figure(ds)", "x.md", 1, namespace)
    with pytest.raises(AssertionError, match="does not fit"):
        check_against_api("from fglens.eval import run_eval\nrun_eval('s', 'p', 'o', seed=[0])", "x.md", 1, {})
