"""A tiny open_clip model trained on the toy world: CLIP anchors whose quality can be measured exactly.

`fg.anchors.Clip` finds where a word sits in a reference image from dense CLIP features. On real videos it
needs a large pretrained CLIP; on the toy world, a random-weights CLIP knows nothing about "red circle". This
module trains a tiny open_clip model on toy scenes, ships it with the package (`fglens/toy/weights/clip/`,
checked against the manifest's SHA-256 at load) and measures how well its word maps localise against the
world's exact object masks.

Model (`config`): an open_clip ``CLIP`` for 64×64 images. Vision: 8 px patches (an 8×8 grid, the toy DiT's
own token grid), width 64, 2 blocks, class-token pooling; text: open_clip's default BPE tokenizer (vocabulary
49408, so the token embedding is most of the weights), context 16, width 32, 2 blocks; joint space 32; a
learnable logit scale and bias (SigLIP's). Weights are stored in float16 (3.5 MB); `fg.anchors.Clip` loads
them into float32.

Training (`train_clip`): a SigLIP-style **sigmoid loss** over the 15 object names of the world ("red circle"
… "white triangle"): for each image in the batch and each name, a binary label, 1 when an object of that
name is in the image. Images hold 1–3 objects of distinct colours, so a softmax-CLIP loss with one caption
per image would have to pick one object per image and would treat in-batch images that contain the same
object as negatives; the sigmoid loss has no such false negatives and asks "is it there?" for every name.
Each step each name is written in one template drawn from ``{"{}"} ∪ fg.anchors.DEFAULT_TEMPLATES``, so the
text tower knows the prompt ensemble that `fg.anchors.Clip.word_maps` averages. No captions of single
attributes ("red", "circle"): the anchors are always whole object names, and all 15 names occur in training,
so the names' labels already carry every attribute.

Two logits per (image, name) meet the same label, and their losses are added: the pooled image embedding's
(plain SigLIP), and the **largest of the patch tokens'** (multiple-instance learning: "some patch shows
it"). The second is what makes the word maps local, and it was measured, not assumed: trained 450 steps with
the pooled loss alone, neither class-token pooling nor average pooling (``pool_type="avg"``, where the image
embedding *is* the mean of the patch tokens) gave maps that tell the named object from the others (``own``
0.28–0.33 with ``"raw"`` and 0.51–0.54 with ``"clearclip"``, chance 0.46: at the random control's level). An
image-level label never penalises evidence that is spread over the whole image, and average pooling even
rewards it (an object covers a few percent of the patches, so spreading its evidence raises the mean); a
max over patches is satisfied by the patches that show the object. With it, the patch tokens of the
unmodified last block (``dense="raw"``, the path the loss trains) find every named object.

The images are the reference frames of train-split items (`fglens.toy.train._items`), rendered once into a
pool of 1,500, flipped left-right at random (triangles point up, so no vertical flips). The held-out
properties of the test split concern the *named* object of an instruction; the other objects of train
scenes may sit in held-out cells or sizes, so for this CLIP the test split is new scenes, not strictly
unseen positions. Everything is a function of the seed and the step (``_rng(seed, phase, step)`` as
`fglens.toy.train`), and a run resumed from its checkpoint ends bit-identical to a straight one
(`tests/test_toy_clip.py`).

Measured (the shipped weights: ``OMP_NUM_THREADS=1 fglens toy train-clip --out toyrun/clip``, seed 0, 450
steps of batch 48, final loss 0.39 (both terms), 47 CPU-seconds, 12.8 min on a 2-core machine busy with
another job; 100 test-split items, 100 named words, 61 in scenes of two or more objects; the token grid is
8×8; the control is the same model at its initial random weights; `measure`):

=========================  ========  ======  ==========  =====  ======
weights, dense method      pointing  chance  own object  chance  IoU
=========================  ========  ======  ==========  =====  ======
trained, ``raw`` (default)   1.00      0.09     1.00       0.46   0.52
trained, ``clearclip``       0.69      0.09     0.61       0.46   0.55
random, ``raw``              0.31      0.09     0.44       0.46   0.01
random, ``clearclip``        0.65      0.09     0.49       0.46   0.44
=========================  ========  ======  ==========  =====  ======

``pointing``: the map's maximum in a cell the object touches; ``own object``: the map higher on the named
object than on every other object of the scene (`localisation`). A random ViT's ClearCLIP maps already
point at *an* object two times in three (objects are the salient content of a toy frame), but not at the
named one; the trained ``raw`` maps find the named one every time. Caveat: each colour occurs once in a
scene, so colour alone finds the object, and this model's shape knowledge is partial: for each object, its
own name beats the other two names of its colour for 57 % of objects from the patch logits (chance 33 %),
45 % from the pooled embedding; "which names are present" at logit > 0 is right for 90.5 % of (image,
name) pairs, barely above answering "absent" everywhere (89.2 %) (`classification`). A longer run would
teach shapes; on this machine's CPU share it did not fit in the time given.

Example:
    >>> import fglens as fg
    >>> clip = fg.toy.clip()                                   # shipped, offline, checksums verified
    >>> item = fg.toy.suite("test", n=1, seed=0)[0]
    >>> maps = clip.word_maps(item.image, item.words)
    >>> item.words, tuple(maps.maps.shape)                     # one map per word on the 8×8 token grid
    (['blue square'], (1, 8, 8))
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..anchors.clip import DEFAULT_TEMPLATES, Clip
from ..anchors.dense import DENSE_METHODS, DenseSpec
from ..anchors.weights import _OPENAI_MEAN, _OPENAI_STD
from .load import CLIP_DIR, CLIP_FILES, WEIGHTS, verify
from .world import COLOURS, SHAPES, SIZE

#: the 15 object names of the world, the classes of the sigmoid loss
NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
#: caption templates drawn in training (the bare name and the prompt ensemble of `fg.anchors.Clip`)
TEMPLATES: tuple[str, ...] = ("{}",) + DEFAULT_TEMPLATES
#: the toy DiT's token grid of a 64×64 frame: the VAE compresses 4×, the DiT's patches are 2×2
TOKEN_GRID: tuple[int, int] = (SIZE // 8, SIZE // 8)
#: where the shipped weights live
CLIP_WEIGHTS = WEIGHTS / CLIP_DIR
#: the dense method `clip()` uses by default: the path the loss trains, and the best one measured
DEFAULT_DENSE = "raw"

CONFIG_FILE, WEIGHTS_FILE, INFO_FILE = CLIP_FILES
SHIPPED_FILES = CLIP_FILES


def config(pool_type: str = "tok") -> dict[str, Any]:
    """The tiny CLIP's open_clip config, in ``open_clip_config.json``'s ``{"model_cfg", "preprocess_cfg"}`` form.

    Args:
        pool_type: ``"tok"`` (the class token, open_clip's default; shipped) or ``"avg"`` (the mean of the patch
            tokens; measured in the module docstring).

    Example:
        >>> cfg = config()
        >>> cfg["model_cfg"]["vision_cfg"]["patch_size"], cfg["model_cfg"]["vision_cfg"]["pool_type"]
        (8, 'tok')
        >>> model = Clip(cfg)                                      # random weights: the control
        >>> tuple(model.patch_features(np.zeros((64, 64, 3), np.uint8)).shape)
        (8, 8, 32)
    """
    if pool_type not in ("avg", "tok"):
        raise ValueError(f"pool_type must be 'avg' or 'tok', got {pool_type!r}")
    return {
        "model_cfg": {
            "embed_dim": 32,
            "init_logit_scale": math.log(10.0),
            "init_logit_bias": -2.0,
            "vision_cfg": {"image_size": SIZE, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32,
                           "mlp_ratio": 4.0, "pool_type": pool_type},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        },
        "preprocess_cfg": {"size": SIZE, "mean": list(_OPENAI_MEAN), "std": list(_OPENAI_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipTrainConfig:
    """Everything that determines a tiny-CLIP training run (recorded in ``clip.json``)."""

    seed: int = 0
    steps: int = 450
    batch: int = 48
    pool: int = 1500
    lr: float = 2e-3
    warmup: int = 50
    cooldown: int | None = None  #: None: the last third of the steps
    weight_decay: float = 0.01
    pool_type: str = "tok"
    global_weight: float = 1.0
    patch_weight: float = 1.0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        for name in ("steps", "batch", "pool", "warmup", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.cooldown is None:
            object.__setattr__(self, "cooldown", self.steps // 3)
        if not isinstance(self.cooldown, int) or not 0 <= self.cooldown <= self.steps:
            raise ValueError(f"cooldown must be an integer in 0..steps ({self.steps}), got {self.cooldown!r}")
        for name in ("lr", "weight_decay", "global_weight", "patch_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0")
        if self.global_weight == 0 and self.patch_weight == 0:
            raise ValueError("global_weight and patch_weight are both 0: there is nothing to train")
        if self.pool_type not in ("avg", "tok"):
            raise ValueError(f"pool_type must be 'avg' or 'tok', got {self.pool_type!r}")

    def rate(self, step: int) -> float:
        """Warm-up, constant, then a linear cool-down to 0 over the last `cooldown` steps (as `dit_lr`)."""
        rate = self.lr * min(1.0, (step + 1) / self.warmup)
        return rate * min(1.0, (self.steps - step) / self.cooldown) if self.cooldown else rate

    def same_run(self, other: ClipTrainConfig) -> bool:
        """Whether a checkpoint of `other` can be resumed under this config (only the length may differ)."""
        keep = ("steps", "cooldown", "checkpoint_every")
        return {k: v for k, v in asdict(self).items() if k not in keep} == {
            k: v for k, v in asdict(other).items() if k not in keep}


def _labels(objects: Sequence[Any]) -> np.ndarray:
    y = np.zeros(len(NAMES), np.float32)
    for o in objects:
        y[NAMES.index(o.name)] = 1.0
    return y


def render_pool(seed: int, n: int, progress: bool = False) -> dict[str, torch.Tensor]:
    """`n` reference frames of train-split items (uint8 ``[n, 64, 64, 3]``) and their name labels ``[n, 15]``.

    Example:
        >>> pool = render_pool(0, 2)
        >>> tuple(pool["images"].shape), pool["labels"].sum(1).tolist()
        ((2, 64, 64, 3), [2.0, 3.0])
    """
    from .train import _bar, _items, _rng
    from .world import render_state, state

    pairs = _items(_rng(seed, "clip-pool", 0), n)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    labels = np.empty((n, len(NAMES)), np.float32)
    bar = _bar(n, 0, "clip pool", progress)
    for i, (scene, ins) in enumerate(pairs):
        images[i] = render_state(scene, state(scene, ins, 0.0))[0]
        labels[i] = _labels(scene.objects)
        bar.update(1)
    bar.close()
    return {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels),
            "seed": torch.tensor(seed), "n": torch.tensor(n)}


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> the model's float input ``[B, 3, H, W]``."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(_OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _build(cfg: ClipTrainConfig) -> torch.nn.Module:
    from ..anchors.weights import _build_model

    full = config(cfg.pool_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _build_model(full["model_cfg"], full["preprocess_cfg"])


def _captions() -> torch.Tensor:
    """Tokens of every (template, name) caption: ``[len(TEMPLATES), len(NAMES), context]``."""
    import open_clip

    ctx = config()["model_cfg"]["text_cfg"]["context_length"]
    tok = open_clip.SimpleTokenizer(context_length=ctx)
    return torch.stack([tok([t.format(n) for n in NAMES]) for t in TEMPLATES])


def image_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled image embedding ``[B, C]`` and the projected patch tokens ``[B, P, C]``, both L2-normalised.

    The patch tokens are what `fg.anchors.Clip` computes with ``dense="raw"`` (last block as it is,
    ``ln_post``, ``proj``).
    """
    visual = model.visual
    before = visual.output_tokens
    visual.output_tokens = True
    try:
        pooled, tokens = visual(x)
    finally:
        visual.output_tokens = before
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return F.normalize(pooled, dim=-1), F.normalize(tokens, dim=-1)


def sigmoid_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    *,
    global_weight: float = 1.0,
    patch_weight: float = 1.0,
) -> torch.Tensor:
    """The SigLIP-style loss: binary cross-entropy of name logits ``scale · cos + bias`` against presence.

    Two image-level logits per (image, name), each against the same label: the pooled embedding's
    (``global_weight``), and the largest of the patch tokens' (``patch_weight``: multiple-instance learning,
    "some patch shows it"; see the module docstring).
    """
    pooled, patches = image_features(model, x)
    txt = model.encode_text(tokens, normalize=True)
    scale, bias = model.logit_scale.exp(), model.logit_bias
    loss = x.new_zeros(())
    if global_weight:
        loss = loss + global_weight * F.binary_cross_entropy_with_logits(scale * pooled @ txt.T + bias, labels)
    if patch_weight:
        logits = (scale * patches @ txt.T + bias).amax(dim=1)  # [B, K]: the most convinced patch
        loss = loss + patch_weight * F.binary_cross_entropy_with_logits(logits, labels)
    return loss


def train_clip(
    out: str | os.PathLike[str],
    *,
    steps: int = 450,
    batch: int = 48,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Train (or resume) the tiny CLIP into `out`; returns what ``out/clip.json`` records.

    Writes ``out/pool.pt`` (the rendered train frames), ``out/clip.pt`` (checkpoints: resumed when present),
    ``out/loss.csv``, and the model as open_clip expects it: ``out/open_clip_config.json`` and
    ``out/open_clip_model.safetensors`` (float16), loadable with ``fg.anchors.Clip("local-dir:" + out)``.

    Args:
        out: the run folder.
        steps, batch, seed: the run's length, batch size and seed.
        progress: show a progress bar.
        **options: further `ClipTrainConfig` fields (``pool``, ``lr``, ``warmup``, ``cooldown``,
            ``weight_decay``, ``pool_type``, ``checkpoint_every``).

    Raises:
        ValueError: a bad setting, or `out` holding a run made with other settings.

    Example:
        >>> import tempfile
        >>> info = train_clip(tempfile.mkdtemp(), steps=2, batch=4, pool=4, warmup=1, cooldown=0, progress=False)
        >>> len(info["loss"]), sorted(info["files"])
        (2, ['open_clip_config.json', 'open_clip_model.safetensors'])
    """
    from safetensors.torch import save_file

    from .train import _bar, _rng, save_atomic

    unknown = sorted(set(options) - {f for f in ClipTrainConfig.__dataclass_fields__} - {"steps", "batch", "seed"})
    if unknown:
        raise ValueError(f"unknown training options {unknown}; known: {sorted(ClipTrainConfig.__dataclass_fields__)}")
    cfg = ClipTrainConfig(seed=seed, steps=steps, batch=batch, **options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.time(), time.process_time()

    pool_file = out / "pool.pt"
    if pool_file.exists():
        pool = torch.load(pool_file, weights_only=True)
        if (int(pool["seed"]), int(pool["n"])) != (cfg.seed, cfg.pool):
            raise ValueError(f"{pool_file} holds a pool of seed {int(pool['seed'])}, n {int(pool['n'])}; this run "
                             f"asks for seed {cfg.seed}, n {cfg.pool}: use another --out")
    else:
        pool = render_pool(cfg.seed, cfg.pool, progress)
        save_atomic(pool, pool_file)
    images, labels = pool["images"], pool["labels"]

    model = _build(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    ckpt = out / "clip.pt"
    losses: list[float] = []
    spent = (0.0, 0.0)
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        before = ClipTrainConfig(**json.loads(state["config"]))
        if not cfg.same_run(before):
            raise ValueError(f"{ckpt} is a run with other settings ({before}); resume it with the same settings "
                             "(only steps and cooldown may change) or use another --out")
        if len(state["losses"]) > cfg.steps:
            raise ValueError(f"{ckpt} has already run {len(state['losses'])} steps, more than steps={cfg.steps}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        losses = [float(v) for v in state["losses"]]
        spent = (float(state["seconds"]), float(state["cpu_seconds"]))
    captions = _captions()
    max_scale = math.log(100.0)

    def elapsed() -> tuple[float, float]:
        return spent[0] + time.time() - t0, spent[1] + time.process_time() - c0

    model.train()
    bar = _bar(cfg.steps, len(losses), "clip", progress)
    for step in range(len(losses), cfg.steps):
        rng = _rng(cfg.seed, "clip", step)
        idx = torch.from_numpy(rng.integers(len(images), size=cfg.batch))
        flip = torch.from_numpy(rng.random(cfg.batch) < 0.5)
        which = torch.from_numpy(rng.integers(len(TEMPLATES), size=len(NAMES)))
        batch_images = images[idx]
        batch_images = torch.where(flip.view(-1, 1, 1, 1), batch_images.flip(2), batch_images)
        tokens = captions[which, torch.arange(len(NAMES))]
        for g in opt.param_groups:
            g["lr"] = cfg.rate(step)
        loss = sigmoid_loss(model, _normalise(batch_images), tokens, labels[idx], global_weight=cfg.global_weight,
                            patch_weight=cfg.patch_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(max=max_scale)
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            wall, cpu = elapsed()
            save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "losses": torch.tensor(losses,
                          dtype=torch.float64), "config": json.dumps(asdict(cfg)), "seconds": wall,
                          "cpu_seconds": cpu}, ckpt)
    bar.close()
    model.eval()

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config(cfg.pool_type), indent=1) + "\n")
    with open(out / "loss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss"])
        w.writerows(enumerate(losses))
    wall, cpu = elapsed()
    info = {"config": asdict(cfg), "names": list(NAMES), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
            "files": [CONFIG_FILE, WEIGHTS_FILE]}
    (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return {**info, "loss": losses}


# ----------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------


def clip(
    *,
    dense: str | DenseSpec = DEFAULT_DENSE,
    path: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    check: bool = True,
) -> Clip:
    """The tiny toy-world CLIP as a ready `fg.anchors.Clip`, offline, in float32.

    Args:
        dense: the dense method (a name in `fg.anchors.DENSE_METHODS` or a `DenseSpec`); the default is the
            one that localises best on this model (see the module docstring).
        path: a `fglens toy train-clip` output folder instead of the shipped weights.
        device: where it runs (default CPU).
        check: verify the shipped files against their recorded SHA-256 first.

    Example:
        >>> c = clip()
        >>> c.method, c.patch_size, tuple(c.text_features(["red circle"]).shape)
        ('raw', (8, 8), (1, 32))
    """
    if path is None:
        if check:
            verify(WEIGHTS, only="clip")
        folder = CLIP_WEIGHTS
    else:
        folder = Path(path)
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}: pass a `fglens toy train-clip` output folder")
    return Clip(f"local-dir:{folder}", dense=dense, device=device)


def info(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """How the shipped tiny CLIP (or a train output) was trained and measured (``clip.json``)."""
    folder = CLIP_WEIGHTS if path is None else Path(path)
    return json.loads((folder / INFO_FILE).read_text())


def random_clip(seed: int = 0, *, dense: str | DenseSpec = DEFAULT_DENSE, pool_type: str = "tok") -> Clip:
    """The same model with random weights (seeded): the control every measurement is compared with.

    Example:
        >>> random_clip(0).weights is None
        True
    """
    import open_clip

    model = _build(ClipTrainConfig(seed=seed, pool_type=pool_type))
    ctx = config()["model_cfg"]["text_cfg"]["context_length"]
    return Clip.from_model(model, open_clip.SimpleTokenizer(context_length=ctx), dense=dense, name="toy-clip-random")


def with_dense(model: Clip, dense: str | DenseSpec) -> Clip:
    """The same model and weights with another dense method (no copy of the weights)."""
    out = Clip.from_model(model.model, model.tokenizer, dense=dense, name=model.name)
    out.weights = model.weights
    return out


# ----------------------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------------------


def cell_coverage(mask: np.ndarray, grid: tuple[int, int] = TOKEN_GRID) -> np.ndarray:
    """The fraction of each grid cell a boolean ``[H, W]`` mask covers: float ``[gh, gw]``.

    Example:
        >>> m = np.zeros((64, 64), bool); m[:8, :4] = True
        >>> float(cell_coverage(m)[0, 0]), float(cell_coverage(m).sum())
        (0.5, 0.5)
    """
    h, w = mask.shape
    gh, gw = grid
    if h % gh or w % gw:
        raise ValueError(f"a {h}x{w} mask does not tile into a {gh}x{gw} grid")
    return mask.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3))


def localisation(
    model: Clip,
    items: Sequence[Any],
    *,
    grid: tuple[int, int] = TOKEN_GRID,
    threshold: str | None = "otsu",
) -> dict[str, float]:
    """How well `model`'s word maps find each named object of `items`, on the token grid.

    For each named word of each item (camera items name none): the similarity map on `grid`
    (`fg.anchors.region_masks`), and each object's cell coverage (`cell_coverage` of its pixels in the
    reference frame).

    - ``pointing``: the share of words whose map's maximum lies in a cell the object touches.
    - ``chance``: the same for a uniformly random cell (the mean share of cells the object touches).
    - ``iou``: mean IoU of the thresholded region mask with the object's cells (cells at least half covered;
      the most covered cell when none is).
    - ``own``: in scenes of two or more objects, the share of words whose map is higher on average over
      their own object's cells than over any other object's: the word, not just "an object", is found.
      ``own_chance`` = the mean of 1 / objects (a map that picks an object at random); ``multi`` counts them.

    Example:
        >>> import fglens as fg
        >>> r = localisation(fg.toy.clip(), fg.toy.suite("test", n=5, seed=0))
        >>> r["words"], r["pointing"] > r["chance"]
        (5.0, True)
    """
    from ..anchors import region_masks
    from .world import coverage

    hits, chance, ious, own, own_chance = [], [], [], [], []
    for item in items:
        truth = item.masks()
        if not truth:
            continue
        words = list(truth)
        objects = [o.name for o in item.scene.objects]
        covers = [cell_coverage(c >= 0.5, grid) for c in coverage(item.scene, item.instruction, frames=1)[0]]
        regions = region_masks(model, item.image, words, grid, threshold=threshold)
        for k, word in enumerate(words):
            cover = cell_coverage(truth[word], grid)
            sim = regions.grid[k].numpy()
            hits.append(float(cover.flat[int(np.argmax(sim))] > 0))
            chance.append(float((cover > 0).mean()))
            target = cover >= 0.5
            if not target.any():
                target = cover == cover.max()
            pred = regions.mask[k].numpy() >= 0.5
            ious.append(float((pred & target).sum() / max(1, (pred | target).sum())))
            if len(objects) > 1:
                mean_on = [float((sim * c).sum() / max(c.sum(), 1e-9)) for c in covers]
                mine = mean_on.pop(objects.index(word))
                own.append(float(mine > max(mean_on)))
                own_chance.append(1.0 / len(objects))
    if not hits:
        raise ValueError("no item names an object: nothing to localise")
    return {"pointing": float(np.mean(hits)), "chance": float(np.mean(chance)), "iou": float(np.mean(ious)),
            "own": float(np.mean(own)) if own else float("nan"),
            "own_chance": float(np.mean(own_chance)) if own else float("nan"),
            "words": float(len(hits)), "multi": float(len(own))}


@torch.no_grad()
def classification(model: Clip, items: Sequence[Any]) -> dict[str, float]:
    """Which names are in each item's reference frame: a name is "there" when its logit ``scale · cos + bias``
    is positive (bare names, no templates), from the pooled embedding and from the most convinced patch.

    ``accuracy`` / ``accuracy_patches``: over every (image, name) pair; ``exact`` / ``exact_patches``: the
    share of images whose whole set of names is right; ``base_rate``: the accuracy of answering "absent" to
    everything; ``shape`` / ``shape_patches``: for each object, whether its own name has the highest logit of
    the three names of its colour (``shape_chance`` = 1/3). Each colour occurs once in a scene, so colour
    alone finds an object; ``shape`` says whether the model also knows its shape.

    Example:
        >>> import fglens as fg
        >>> r = classification(fg.toy.clip(), fg.toy.suite("test", n=5, seed=0))
        >>> r["images"], r["accuracy"] > r["base_rate"]
        (5.0, True)
    """
    from ..anchors.dense import _image_tensor

    net = model.model
    text = model.text_features(list(NAMES), templates=("{}",)).to(model.device)
    x = torch.cat([_image_tensor(it.image) for it in items])
    x = ((x - model.mean) / model.std).to(model.device, next(net.parameters()).dtype)
    pooled, patches = image_features(net, x)
    scale = net.logit_scale.exp().float()
    bias = net.logit_bias.float() if getattr(net, "logit_bias", None) is not None else 0.0
    truth = np.stack([_labels(it.scene.objects) for it in items]) > 0
    objects = [(i, o) for i, it in enumerate(items) for o in it.scene.objects]
    out = {}
    for suffix, logits in (("", scale * pooled.float() @ text.T + bias),
                           ("_patches", (scale * patches.float() @ text.T + bias).amax(dim=1))):
        logits = logits.cpu().numpy()
        pred = logits > 0
        out["accuracy" + suffix] = float((pred == truth).mean())
        out["exact" + suffix] = float((pred == truth).all(1).mean())
        shape_hits = []
        for i, o in objects:  # its colour's three names: is its own shape the most likely?
            same = [NAMES.index(f"{o.colour} {s}") for s in SHAPES]
            shape_hits.append(same[int(np.argmax(logits[i, same]))] == NAMES.index(o.name))
        out["shape" + suffix] = float(np.mean(shape_hits))
    return {**out, "base_rate": float((~truth).mean()), "shape_chance": 1.0 / len(SHAPES),
            "images": float(len(items))}


def measure(
    model: Clip | None = None, *, n: int = 100, seed: int = 0, methods: Sequence[str] = tuple(DENSE_METHODS)
) -> dict[str, Any]:
    """Localisation of the trained model and of the random-weights control under each dense method, and their
    classification accuracy, on `n` test-split items (`fg.toy.suite("test", n, seed)`).

    Returns ``{"trained": {method: localisation}, "random": {...}, "classification": {"trained": ...,
    "random": ...}, "n": n, "seed": seed}``.
    """
    from .suite import suite

    model = model if model is not None else clip()
    items = suite("test", n=n, seed=seed)
    pool_type = model.model.visual.pool_type
    control = random_clip(seed, pool_type=pool_type)
    out: dict[str, Any] = {"trained": {}, "random": {}, "n": n, "seed": seed}
    for method in methods:
        out["trained"][method] = localisation(with_dense(model, method), items)
        out["random"][method] = localisation(with_dense(control, method), items)
    out["classification"] = {"trained": classification(model, items), "random": classification(control, items)}
    return out


__all__ = ["CLIP_WEIGHTS", "DEFAULT_DENSE", "DENSE_METHODS", "NAMES", "TEMPLATES", "TOKEN_GRID", "ClipTrainConfig",
           "cell_coverage", "classification", "clip", "config", "info", "localisation", "measure", "random_clip",
           "render_pool", "image_features", "sigmoid_loss", "train_clip", "with_dense"]
