"""Reading JSONL files (sweep specs, evaluation suites, toy item lists): one value per line, blank lines skipped,
every error naming the file and the line.

Example:
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "items.jsonl"
    >>> _ = p.write_text('{"a": 1}\\n\\nnot json\\n')
    >>> [(n, v if not isinstance(v, ValueError) else "error") for n, _, v in jsonl_lines(p)]
    [(1, {'a': 1}), (3, 'error')]
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, Any]]:
    """``(line number, "<path> line <n>", value)`` for each non-blank line of `path`. A line that is not valid JSON
    gives a `ValueError` saying so as its value (returned, not raised: a caller that reports every bad line at once
    collects them; one that stops at the first raises it)."""
    file = Path(path)
    for lineno, text in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{file} line {lineno}"
        try:
            value = json.loads(text)
        except ValueError as exc:
            value = ValueError(f"{where}: not valid JSON ({exc})")
        yield lineno, where, value


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Every value of a JSONL file; the first line that is not valid JSON is a `ValueError` naming it."""
    out = []
    for _, _, value in jsonl_lines(path):
        if isinstance(value, ValueError):
            raise value
        out.append(value)
    return out
