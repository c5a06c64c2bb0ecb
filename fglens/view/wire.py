"""The viewer's wire format, shared by every answer: packed float32 arrays, request keys, the error a refused
request raises, and picking a label of a run's dimension (`fglens.view.data` and the panels' modules build on it).

Example:
    >>> unpack(pack(np.array([1.0, np.nan], dtype=np.float32))).tolist()[0]
    1.0
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr


class BadRequest(ValueError):
    """A request the viewer refuses: unknown endpoint, run, variable, branch, word, layer or step."""


def pack(values: Any) -> dict[str, Any]:
    """An array as ``{"shape", "b64"}``: its float32 values, little-endian, base64 (NaN kept).

    Example:
        >>> pack(np.array([1.0, np.nan], dtype=np.float32))["shape"]
        [2]
    """
    arr = np.ascontiguousarray(np.asarray(values, dtype="<f4"))
    return {"shape": list(arr.shape), "b64": base64.b64encode(arr.tobytes()).decode("ascii")}


def unpack(packed: Mapping[str, Any]) -> np.ndarray:
    """The float32 array of a `pack` result (what the page's ``unpack`` decodes).

    Example:
        >>> unpack(pack(np.arange(6, dtype=np.float32).reshape(2, 3))).tolist()
        [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    raw = np.frombuffer(base64.b64decode(packed["b64"]), dtype="<f4")
    return raw.reshape(packed["shape"])


def request_key(endpoint: str, params: Mapping[str, Any]) -> str:
    """The one text naming a request, the same in Python and in the page (``JSON.stringify``): the key of an
    answer embedded in an exported page.

    Example:
        >>> request_key("run", {"run": "line-0007"})
        '["run",[["run","line-0007"]]]'
    """
    items = sorted((str(k), str(v)) for k, v in params.items())
    return json.dumps([endpoint, [list(i) for i in items]], separators=(",", ":"), ensure_ascii=False)


def labels(ds: xr.Dataset, dim: str) -> list[str]:
    """A run's labels along `dim` as text (none when the run lacks the dimension)."""
    return [str(v) for v in ds[dim].values.tolist()] if dim in ds.coords else []


def pick(ds: xr.Dataset, dim: str, value: str, what: str) -> Any:
    """`value` if the run has it along `dim`, else a `BadRequest` naming the labels it has."""
    labels_ = labels(ds, dim)
    if value not in labels_:
        raise BadRequest(f"unknown {what} {value!r}; this run has {labels_}")
    return value
