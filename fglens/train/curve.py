"""A training job's curve: the loss terms per step as an xarray Dataset in zarr, and its figure.

Example:
    >>> import tempfile, xarray as xr
    >>> folder = write_curve([{"step": 0, "loss": 0.5, "kl": 0.5}, {"step": 1, "loss": 0.25, "kl": 0.25}],
    ...                      tempfile.mkdtemp(), loss="distill")
    >>> xr.open_zarr(folder / "curve.zarr", consolidated=False).loss.values.tolist()
    [0.5, 0.25]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: each term's attributes (xarray's long_name / description convention)
TERMS: dict[str, tuple[str, str]] = {
    "loss": ("training loss", "the objective minimised at this step"),
    "kl": ("KL(teacher ‖ student)", "the distill loss: KL divergence from the teacher's post-edit attention over "
           "the text keys to the student's, per video query and head, averaged over queries, heads and layers"),
    "flow": ("flow-matching loss", "mean squared error of the predicted velocity against ε − x₀ at a drawn σ"),
}


def write_curve(curve: Sequence[dict[str, float]], out: str | os.PathLike, *, loss: str) -> Path:
    """Write ``out/curve.zarr`` and ``out/curve.png`` from per-step dicts of loss terms; returns `out`."""
    import xarray as xr

    out = Path(out)
    steps = np.array([int(c["step"]) for c in curve], dtype=np.int64)
    names = [k for k in (curve[0] if curve else {}) if k != "step"]
    ds = xr.Dataset({k: ("step", np.array([c[k] for c in curve], dtype=np.float64),
                         {"long_name": TERMS.get(k, (k, ""))[0], "description": TERMS.get(k, ("", k))[1]})
                     for k in names}, coords={"step": steps}, attrs={"loss": loss})
    ds.to_zarr(out / "curve.zarr", mode="w", consolidated=False)
    _figure(ds, out / "curve.png")
    return out


def _figure(ds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for name in ds.data_vars:
        if name != "loss" or len(ds.data_vars) == 1:
            ax.plot(ds.step, ds[name], label=ds[name].attrs.get("long_name", name), lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ds.attrs.get("loss", "loss"))
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["TERMS", "write_curve"]
