"""The condition balance per layer: how each layer's attention divides between the run's conditions, as
`fg.plot.condition_balance` defines it, for one branch and a range of steps.

- Wan (separate text and image attention, ``text_share``): the text's share ‖O_text‖ / (‖O_text‖ + ‖O_image‖)
  and the image's, 1 − that; stacked, they make 1.
- Joint attention (HunyuanVideo, CogVideoX: ``text_mass``, ``image_mass``): the attention mass on the text
  tokens, on the image-derived tokens, on the reference frame (``ref_mass``, when recorded: video frame 0) and
  on the rest of the video, 1 − the others; stacked, they make 1.
- ``ref_mass`` of a Wan run (its self-attention's mass on frame 0) is not a share of the same whole: it is
  given as a line of its own.

Each value is the mean over the chosen steps and the latent frames (NaN skipped), in float64, sent as float32.

Example:
    >>> import fglens as fg
    >>> ds = fg.testing.tiny_run("wan", words=("dog",), maps=False)
    >>> answer = condition_balance(ds, "cond")
    >>> answer["family"], [s["name"] for s in answer["stacked"]], answer["steps"]
    ('separate', ['text', 'image'], [0, 1])
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from .wire import BadRequest, pack
from .wire import labels as _labels
from .wire import pick as _pick

#: the variables the balance is made of
BALANCE_VARS = ("text_share", "text_mass", "image_mass", "ref_mass")


def layer_means(ds: xr.Dataset, var: str, branch: str, steps: list[int]) -> np.ndarray:
    """``var`` per layer (depth order): the float64 mean over `steps` and everything else but the layer, NaN
    skipped (all-NaN layers stay NaN). Reads `var`'s chunks of those steps only."""
    da = ds[var].sel(branch=branch, step=steps)
    values = np.asarray(da.transpose("layer", ...).values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer with no value at these steps
        return np.nanmean(values.reshape(values.shape[0], -1), axis=1)


def _steps(ds: xr.Dataset, first: Any, last: Any) -> list[int]:
    steps = [int(s) for s in ds["step"].values.tolist()] if "step" in ds.coords else []
    try:
        lo = steps[0] if first in (None, "") else int(first)
        hi = steps[-1] if last in (None, "") else int(last)
    except (TypeError, ValueError, IndexError):
        raise BadRequest(f"first and last must be step numbers of this run ({steps}); got {first!r}, "
                         f"{last!r}") from None
    if lo not in steps or hi not in steps or lo > hi:
        raise BadRequest(f"steps {lo} to {hi} are not a range of this run's steps {steps}")
    return [s for s in steps if lo <= s <= hi]


def _series(name: str, long_name: str, values: np.ndarray) -> dict[str, Any]:
    return {"name": name, "long_name": long_name, **pack(values.astype(np.float32))}


def condition_balance(ds: xr.Dataset, branch: str, first: Any = None, last: Any = None) -> dict[str, Any]:
    """The conditions' shares per layer at `branch`, steps `first` to `last` (inclusive, default all): see the
    module docstring. ``stacked`` series sum to 1 per layer; ``lines`` are drawn apart; ``note`` says what the
    run lacks when it has no balance variable (then both lists are empty)."""
    branch = _pick(ds, "branch", branch, "branch")
    steps = _steps(ds, first, last)
    present = [v for v in BALANCE_VARS if v in ds.data_vars]
    out: dict[str, Any] = {"branch": branch, "first": steps[0], "last": steps[-1], "steps": steps,
                           "layers": _labels(ds, "layer"), "family": None, "stacked": [], "lines": [], "note": ""}
    mean = {v: layer_means(ds, v, branch, steps) for v in present}
    if "text_share" in mean:
        out["family"] = "separate"
        out["stacked"] = [_series("text", "text share ‖O_text‖ / (‖O_text‖ + ‖O_image‖)", mean["text_share"]),
                          _series("image", "image share 1 − text share", 1.0 - mean["text_share"])]
        if "ref_mass" in mean:
            out["lines"] = [_series("reference frame", "self-attention mass on the reference frame (frame 0)",
                                    mean["ref_mass"])]
    elif "text_mass" in mean:
        out["family"] = "joint"
        parts = [("text", "text_mass", "attention mass on the text tokens"),
                 ("image-derived", "image_mass", "attention mass on the image-derived tokens"),
                 ("reference frame", "ref_mass", "attention mass on the reference frame (video frame 0)")]
        rest = np.ones(len(out["layers"]))
        for name, var, long_name in parts:
            if var in mean:
                out["stacked"].append(_series(name, long_name, mean[var]))
                rest = rest - mean[var]
        out["stacked"].append(_series("video", "attention mass on the other video tokens: 1 − the others", rest))
    else:
        out["note"] = ("this run recorded none of " + ", ".join(BALANCE_VARS) + ": no condition balance (record "
                       "text_share on Wan, text_mass / image_mass on joint attention)")
    return out
