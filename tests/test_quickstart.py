"""The Python blocks of docs/quickstart.md run as written, in order, on the tiny pipeline."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

QUICKSTART = Path(__file__).resolve().parent.parent / "docs" / "quickstart.md"


def test_quickstart_python_blocks_run(tmp_path, monkeypatch):
    matplotlib.use("Agg")
    blocks = re.findall(r"```python\n(.*?)```", QUICKSTART.read_text(), flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(QUICKSTART), "exec"), namespace)  # noqa: S102 - the documentation's own code
    assert (tmp_path / "figures" / "profile.png").stat().st_size > 0
    import fglens as fg

    assert len(fg.store.list_runs(tmp_path / "runs" / "dog.zarr")) == 2
