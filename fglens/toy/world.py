"""The toy world: scenes of simple objects, instructions from a small grammar, exact ground-truth videos.

A scene is one to three objects (shape × colour × size × position) on a plain or textured background.
An instruction names what happens over the clip; `render` draws the reference frame and the true video
exactly (analytic shapes, 2× supersampled), so every pixel of the ground truth is known.

Example:
    >>> import numpy as np
    >>> scene = Scene(background=Background("plain", (40, 40, 60)),
    ...               objects=(Obj("circle", "red", 6.0, (20.0, 32.0)),))
    >>> video = render(scene, Instruction("move", target=0, direction="right"))
    >>> video.shape
    (9, 64, 64, 3)
    >>> int(np.argmax((video[-1] == COLOURS["red"]).all(-1).any(0)))  # the circle's left edge moved right
    30
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIZE = 64  #: frame height and width in pixels
FRAMES = 9  #: frames per clip (1 + 4k, as the Wan VAE encodes in chunks of four after the first)
TRAVEL = 16.0  #: pixels an object (or the camera) travels over a clip
SUPERSAMPLE = 2

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 40),
    "green": (45, 185, 70),
    "blue": (55, 95, 235),
    "yellow": (240, 215, 45),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
GROW, SHRINK = 1.6, 0.55  #: final size factors of "grows" / "shrinks"
ZOOM_IN, ZOOM_OUT = 1.5, 0.7  #: final camera scale of "zooms in" / "zooms out"

#: instruction kinds by category, mirroring the paper's benchmark categories
CATEGORIES: dict[str, tuple[str, ...]] = {
    "object_motion": ("move",),
    "dynamic_attribute": ("recolour", "grow", "shrink"),
    "camera_motion": ("pan", "zoom"),
    "interaction": ("approach", "swap"),
    "static": ("still",),
}
KIND_CATEGORY = {kind: cat for cat, kinds in CATEGORIES.items() for kind in kinds}


@dataclass(frozen=True)
class Background:
    """A background: `pattern` is "plain", "stripes", "checker" or "waves", drawn in world coordinates."""

    pattern: str
    colour: tuple[int, int, int]
    amplitude: float = 0.0
    period: float = 10.0
    angle: float = 0.0


@dataclass(frozen=True)
class Obj:
    """One object: `size` is the half-extent in pixels (radius of a circle), `pos` its centre (x, y)."""

    shape: str
    colour: str
    size: float
    pos: tuple[float, float]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    background: Background
    objects: tuple[Obj, ...]


@dataclass(frozen=True)
class Instruction:
    """What happens: `kind` one of the kinds in `CATEGORIES`; `target`/`other` index the scene's objects."""

    kind: str
    target: int | None = None
    other: int | None = None
    direction: str | None = None  # move, pan: left/right/up/down; zoom: in/out
    colour: str | None = None  # recolour: the new colour

    @property
    def category(self) -> str:
        return KIND_CATEGORY[self.kind]


def prompt(scene: Scene, ins: Instruction) -> str:
    """The instruction in words, e.g. "the red circle moves left"."""
    a = scene.objects[ins.target].name if ins.target is not None else None
    b = scene.objects[ins.other].name if ins.other is not None else None
    return {
        "move": lambda: f"the {a} moves {ins.direction}",
        "recolour": lambda: f"the {a} turns {ins.colour}",
        "grow": lambda: f"the {a} grows",
        "shrink": lambda: f"the {a} shrinks",
        "pan": lambda: f"the camera pans {ins.direction}",
        "zoom": lambda: f"the camera zooms {ins.direction}",
        "approach": lambda: f"the {a} moves to the {b}",
        "swap": lambda: f"the {a} and the {b} swap",
        "still": lambda: f"the {a} stays still",
    }[ins.kind]()


def words(scene: Scene, ins: Instruction) -> list[str]:
    """The key words of an instruction: the objects it names, else the camera's verb."""
    named = [scene.objects[i].name for i in (ins.target, ins.other) if i is not None]
    return named or [{"pan": "pans", "zoom": "zooms"}[ins.kind]]


# ----------------------------------------------------------------------------------------------------------
# dynamics: the state of every object and of the camera at time u in [0, 1]
# ----------------------------------------------------------------------------------------------------------


@dataclass
class State:
    """Per-object centre, size and colour (RGB floats), and the camera (shift, scale), at one instant."""

    pos: list[tuple[float, float]]
    size: list[float]
    rgb: list[np.ndarray]
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    order: list[int] = field(default_factory=list)  # drawing order, last on top


def approach_end(scene: Scene, ins: Instruction) -> tuple[float, float]:
    """Where the moving object ends in "A moves to B": touching B on the side it came from."""
    a, b = scene.objects[ins.target], scene.objects[ins.other]
    d = np.subtract(a.pos, b.pos)
    d = d / max(np.linalg.norm(d), 1e-6)
    gap = a.size + b.size + 1.0
    return (b.pos[0] + gap * d[0], b.pos[1] + gap * d[1])


def state(scene: Scene, ins: Instruction, u: float) -> State:
    """The exact state at time `u` (0 = the reference frame, 1 = the last frame)."""
    objs = scene.objects
    st = State(pos=[o.pos for o in objs], size=[o.size for o in objs],
               rgb=[np.array(COLOURS[o.colour], np.float64) for o in objs], order=list(range(len(objs))))
    t, k = ins.target, ins.kind
    if k == "move":
        dx, dy = DIRECTIONS[ins.direction]
        x, y = objs[t].pos
        st.pos[t] = (x + TRAVEL * u * dx, y + TRAVEL * u * dy)
    elif k == "recolour":
        w = float(np.clip((u - 0.25) / 0.5, 0.0, 1.0))
        st.rgb[t] = (1 - w) * st.rgb[t] + w * np.array(COLOURS[ins.colour], np.float64)
    elif k in ("grow", "shrink"):
        st.size[t] = objs[t].size * (1 + ((GROW if k == "grow" else SHRINK) - 1) * u)
    elif k == "pan":
        dx, dy = DIRECTIONS[ins.direction]
        st.shift = (-TRAVEL * u * dx, -TRAVEL * u * dy)  # the camera pans left: the scene slides right
    elif k == "zoom":
        st.scale = 1 + ((ZOOM_IN if ins.direction == "in" else ZOOM_OUT) - 1) * u
    elif k == "approach":
        (x0, y0), (x1, y1) = objs[t].pos, approach_end(scene, ins)
        st.pos[t] = (x0 + (x1 - x0) * u, y0 + (y1 - y0) * u)
    elif k == "swap":
        o = ins.other
        (xa, ya), (xb, yb) = objs[t].pos, objs[o].pos
        st.pos[t] = (xa + (xb - xa) * u, ya + (yb - ya) * u)
        st.pos[o] = (xb + (xa - xb) * u, yb + (ya - yb) * u)
    if t is not None:  # the named object is drawn on top
        st.order = [i for i in st.order if i != t] + [t]
    return st


# ----------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------


def _grid(size: int = SIZE, ss: int = SUPERSAMPLE) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size * ss) + 0.5) / ss
    return np.meshgrid(c, c, indexing="xy")


def _background(bg: Background, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    base = np.broadcast_to(np.array(bg.colour, np.float64), x.shape + (3,)).copy()
    if bg.pattern == "plain":
        return base
    ca, sa = np.cos(bg.angle), np.sin(bg.angle)
    r = x * ca + y * sa
    if bg.pattern == "stripes":
        p = np.sign(np.sin(2 * np.pi * r / bg.period))
    elif bg.pattern == "checker":
        s = -x * sa + y * ca
        p = np.sign(np.sin(np.pi * r / bg.period) * np.sin(np.pi * s / bg.period))
    elif bg.pattern == "waves":
        p = np.sin(2 * np.pi * r / bg.period) * np.cos(2 * np.pi * (-x * sa + y * ca) / (1.7 * bg.period))
    else:
        raise ValueError(f"unknown background pattern {bg.pattern!r}; known: plain, stripes, checker, waves")
    return base + bg.amplitude * p[..., None]


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray, pos: tuple[float, float], size: float) -> np.ndarray:
    """Which world points (x, y) lie inside a shape of half-extent `size` centred at `pos`."""
    dx, dy = x - pos[0], y - pos[1]
    if shape == "circle":
        return dx * dx + dy * dy <= size * size
    if shape == "square":
        h = size * 0.85  # same area scale as the circle, roughly
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":  # pointing up, centred on its bounding box
        top, bottom = -size, size
        inside_y = (dy >= top) & (dy <= bottom)
        half_width = size * (dy - top) / (bottom - top)
        return inside_y & (np.abs(dx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _world(st: State, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates -> world coordinates under the camera (scale about the centre, then shift)."""
    c = SIZE / 2
    return (x - c) / st.scale + c - st.shift[0], (y - c) / st.scale + c - st.shift[1]


def render_state(scene: Scene, st: State) -> tuple[np.ndarray, np.ndarray]:
    """One frame (uint8 H×W×3) and the per-object coverage in [0, 1] (objects×H×W) of a state."""
    x, y = _world(st, *_grid())
    img = _background(scene.background, x, y)
    cover = np.zeros((len(scene.objects),) + x.shape, np.float64)
    for i in st.order:
        m = shape_mask(scene.objects[i].shape, x, y, st.pos[i], st.size[i])
        img[m] = st.rgb[i]
        cover[:, m] = 0.0
        cover[i, m] = 1.0
    s = SUPERSAMPLE
    img = img.reshape(SIZE, s, SIZE, s, 3).mean((1, 3))
    cover = cover.reshape(len(scene.objects), SIZE, s, SIZE, s).mean((2, 4))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), cover


def times(frames: int = FRAMES) -> np.ndarray:
    return np.linspace(0.0, 1.0, frames)


def render(scene: Scene, ins: Instruction, frames: int = FRAMES) -> np.ndarray:
    """The exact ground-truth video, uint8 [frames, H, W, 3]; frame 0 is the reference image."""
    return np.stack([render_state(scene, state(scene, ins, u))[0] for u in times(frames)])


def coverage(scene: Scene, ins: Instruction, frames: int = FRAMES) -> np.ndarray:
    """Per-frame, per-object visible coverage in [0, 1]: [frames, objects, H, W]."""
    return np.stack([render_state(scene, state(scene, ins, u))[1] for u in times(frames)])
