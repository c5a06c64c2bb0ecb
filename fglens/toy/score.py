"""Score a toy-world video from its pixels: did it follow the instruction, and is it faithful to the image?

Objects are found by colour (every object of a scene has its own colour; a new colour is never one the
scene already has) and measured by their area and centroid in the first and the last frame. The rules for
each kind of instruction take half of the true change as the threshold, so a blurred but correct video
passes and a frozen or wrong one fails.

Example:
    >>> from fglens.toy.suite import suite
    >>> item = suite("test", n=1, seed=0)[0]
    >>> score(item.video(), item)["follows"]
    1.0
    >>> frozen = item.video()[:1].repeat(len(item.video()), 0)
    >>> score(frozen, item)["follows"]
    0.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import COLOURS, DIRECTIONS, FRAMES, GROW, SHRINK, SIZE, TRAVEL, ZOOM_IN, ZOOM_OUT

COLOUR_TOLERANCE = 80.0  #: RGB distance within which a pixel counts as a palette colour
MIN_AREA = 0.3  #: an object is "found" when at least this fraction of its true area shows its colour


@dataclass(frozen=True)
class Blob:
    area: float
    centre: tuple[float, float]

    def found(self, true_area: float) -> bool:
        return self.area >= MIN_AREA * true_area


def as_video(video) -> np.ndarray:
    """Frames as uint8 [F, H, W, 3] from a uint8 array, floats in [0, 1], or a list of PIL images."""
    if isinstance(video, list | tuple):
        video = np.stack([np.asarray(f) for f in video])
    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"a video must be [frames, height, width, 3]; got shape {v.shape}")
    if v.dtype != np.uint8:
        if not np.isfinite(v).all():
            raise ValueError("the video holds non-finite values")
        v = np.clip(np.rint(v * 255.0 if v.max() <= 1.0 else v), 0, 255).astype(np.uint8)
    if v.shape[1:3] != (SIZE, SIZE):
        raise ValueError(f"toy videos are {SIZE}x{SIZE}; got {v.shape[1]}x{v.shape[2]}")
    return v


def blob(frame: np.ndarray, colour: str) -> Blob:
    """Area (pixels) and centroid of the pixels within `COLOUR_TOLERANCE` of a palette colour."""
    d = np.linalg.norm(frame.astype(np.float64) - np.array(COLOURS[colour], np.float64), axis=-1)
    m = d < COLOUR_TOLERANCE
    area = float(m.sum())
    if area == 0:
        return Blob(0.0, (float("nan"), float("nan")))
    ys, xs = np.nonzero(m)
    return Blob(area, (float(xs.mean()), float(ys.mean())))


def _moved(a: Blob, b: Blob) -> np.ndarray:
    return np.subtract(b.centre, a.centre)


def follows(video: np.ndarray, item) -> tuple[bool, str]:
    """Whether the video does what the item's instruction says, and why (a short reason)."""
    scene, ins = item.scene, item.instruction
    true_area = item.coverage().sum((2, 3))  # [frames, objects]
    first, last = video[0], video[-1]
    objs = scene.objects
    start = [blob(first, o.colour) for o in objs]
    for i, b in enumerate(start):
        if not b.found(true_area[0, i]):
            return False, f"the {objs[i].name} is not in the first frame"
    named = {i for i in (ins.target, ins.other) if i is not None}
    colour_end = [ins.colour if (ins.kind == "recolour" and i == ins.target) else o.colour for i, o in enumerate(objs)]
    end = [blob(last, c) for c in colour_end]
    for i, b in enumerate(end):
        if not b.found(true_area[-1, i]):
            return False, f"the {colour_end[i]} {objs[i].shape} is gone in the last frame"
    shift = [_moved(a, b) for a, b in zip(start, end, strict=False)]
    ratio = [e.area / s.area for s, e in zip(start, end, strict=False)]
    if ins.kind not in ("pan", "zoom"):  # bystanders stay where they are
        for i in set(range(len(objs))) - named:
            if np.hypot(*shift[i]) > 4 or not 0.6 <= ratio[i] <= 1.6:
                return False, f"the {objs[i].name} changed though the instruction is not about it"
    t, k = ins.target, ins.kind
    if k == "move":
        d = np.array(DIRECTIONS[ins.direction])
        along, across = float(shift[t] @ d), abs(float(shift[t][0] * d[1] - shift[t][1] * d[0]))
        ok = along >= 0.5 * TRAVEL and across <= 0.35 * TRAVEL
        return ok, f"moved {along:+.1f} px along {ins.direction}, {across:.1f} px across"
    if k == "recolour":
        old = blob(last, objs[t].colour)
        near = np.hypot(*np.subtract(end[t].centre, objs[t].pos)) <= 0.5 * TRAVEL
        ok = old.area <= MIN_AREA * start[t].area and near
        return ok, f"{objs[t].colour} area {start[t].area:.0f} -> {old.area:.0f}, {ins.colour} area {end[t].area:.0f}"
    if k in ("grow", "shrink"):
        ok = ratio[t] >= (1 + GROW ** 2) / 2 if k == "grow" else ratio[t] <= (1 + SHRINK ** 2) / 2
        return ok, f"area ratio {ratio[t]:.2f}"
    if k == "pan":
        d = -np.array(DIRECTIONS[ins.direction])  # the scene slides against the camera
        along = [float(s @ d) for s in shift]
        return min(along) >= 0.5 * TRAVEL, "scene shifted " + ", ".join(f"{a:+.1f}" for a in along) + " px"
    if k == "zoom":
        target = ZOOM_IN ** 2 if ins.direction == "in" else ZOOM_OUT ** 2
        half = (1 + target) / 2
        ok = all(r >= half for r in ratio) if ins.direction == "in" else all(r <= half for r in ratio)
        return ok, "area ratios " + ", ".join(f"{r:.2f}" for r in ratio)
    if k == "approach":  # covers at least half of the way to touching the other object
        o = ins.other
        true_before = np.hypot(*np.subtract(objs[t].pos, objs[o].pos))
        true_after = objs[t].size + objs[o].size + 1.0
        after = np.hypot(*np.subtract(end[t].centre, end[o].centre))
        ok = after <= true_after + 0.5 * (true_before - true_after) and np.hypot(*shift[o]) <= 4
        return ok, f"distance {true_before:.1f} -> {after:.1f} px (touching: {true_after:.1f}), " \
                   f"the {objs[o].name} moved {np.hypot(*shift[o]):.1f} px"
    if k == "swap":
        o = ins.other
        ea = np.hypot(*np.subtract(end[t].centre, start[o].centre))
        eb = np.hypot(*np.subtract(end[o].centre, start[t].centre))
        dist = np.hypot(*np.subtract(start[t].centre, start[o].centre))
        ok = max(ea, eb) <= 0.35 * dist
        return ok, f"ends {ea:.1f} and {eb:.1f} px from each other's start ({dist:.1f} apart)"
    if k == "still":
        worst = max(np.hypot(*s) for s in shift)
        ok = worst <= 3 and all(0.75 <= r <= 1.33 for r in ratio)
        return ok, f"largest shift {worst:.1f} px, area ratios " + ", ".join(f"{r:.2f}" for r in ratio)
    raise ValueError(f"unknown instruction kind {k!r}")


def fidelity(video: np.ndarray, item) -> float:
    """1 − mean absolute error against the true video over the pixels that are background there, in [0, 1]:
    how well the video keeps the reference image's world (it does not judge the instruction's object)."""
    truth = item.video().astype(np.float64)
    background = item.coverage().sum(1) < 1e-3  # [frames, H, W]
    err = np.abs(video.astype(np.float64) - truth).mean(-1)
    return float(1.0 - err[background].mean() / 255.0)


def score(video, item) -> dict[str, float | str]:
    """Pixel-only scores of a video for a toy item: ``follows`` (1 or 0), ``fidelity`` in [0, 1],
    ``first_frame`` (1 − MAE of frame 0 against the reference image) and the ``reason`` for ``follows``."""
    v = as_video(video)
    if len(v) != FRAMES:
        raise ValueError(f"toy videos have {FRAMES} frames; got {len(v)}")
    ok, reason = follows(v, item)
    first = 1.0 - float(np.abs(v[0].astype(np.float64) - item.video()[0]).mean()) / 255.0
    return {"follows": float(ok), "fidelity": fidelity(v, item), "first_frame": first, "reason": reason}
