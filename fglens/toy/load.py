"""The trained toy pipelines shipped with fglens: loaded offline, checked against their recorded checksums.

``fglens/toy/weights/`` holds one folder of shared parts (the trained VAE, the fixed random text and image
encoders, the scheduler) and one transformer per variant, with ``manifest.json`` (the SHA-256 of every
file) and ``<variant>.json`` (how it was trained, and for ``weak`` the planted layers).

Example:
    >>> pipe = pipeline("base")
    >>> type(pipe).__name__, planted_layers(pipe)
    ('WanImageToVideoPipeline', [])
    >>> planted_layers(pipeline("weak"))
    ['blocks.3', 'blocks.4']
    >>> planted_layers(pipeline("sink"))   # the base weights with those blocks' text keys zeroed at load
    ['blocks.3', 'blocks.4']
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

WEIGHTS = Path(__file__).parent / "weights"
VARIANTS = ("base", "weak", "sink")
#: variants made from another's weights by a recorded edit at load time (no weight files of their own): the
#: source variant and the weights set to zero. ``sink``: blocks 3 and 4's text keys made constant, so their text
#: attention is uniform over the 512 keys, almost all of it on the padding (the attention sink of real models)
DERIVED: dict[str, tuple[str, tuple[str, ...]]] = {
    "sink": ("base", ("blocks.3.attn2.to_k.weight", "blocks.4.attn2.to_k.weight")),
}
CLIP_DIR = "clip"  #: the tiny CLIP's folder under the weights (`fglens.toy.clip`, shipped by `ship_clip`)
#: the files of a `fglens toy train-clip` run that ship: its open_clip config, weights and measurements
CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors", "clip.json")

#: the call every toy item is made with: the world's size and frame count, steps, guidance and output
CALL: dict[str, Any] = dict(height=64, width=64, num_frames=9, num_inference_steps=20, guidance_scale=4.0,
                            output_type="np")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(root: Path = WEIGHTS) -> dict[str, str]:
    """The recorded checksums: relative path -> SHA-256."""
    file = root / "manifest.json"
    if not file.is_file():
        raise FileNotFoundError(f"the toy weights are missing ({file} does not exist): reinstall fglens")
    return json.loads(file.read_text())


def verify(root: Path = WEIGHTS, only: str | None = None) -> None:
    """Check every shipped file (or those under `only`) against the manifest; a clear error names the file.

    `only` is a variant (its transformer and the shared parts) or ``"clip"`` (the tiny CLIP's files).
    """
    for rel, digest in manifest(root).items():
        if only is not None and not (rel.startswith(only + "/") or (only != "clip" and rel.startswith("shared/"))):
            continue
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"toy weight file {path} is missing: reinstall fglens")
        if sha256(path) != digest:
            raise ValueError(f"toy weight file {path} does not match its recorded checksum: reinstall fglens")


def info(variant: str) -> dict:
    """How a shipped variant was trained (``<variant>.json``): command, seed, time, planted layers."""
    _check(variant)
    return json.loads((WEIGHTS / f"{variant}.json").read_text())


def _check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown toy variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def pipeline(variant: str = "base", *, path: str | os.PathLike | None = None, check: bool = True):
    """A trained toy `WanImageToVideoPipeline`, offline, in float32 on the CPU.

    Args:
        variant: ``"base"`` (follows its instructions), ``"weak"`` (Condition Isolation planted in
            `planted_layers` by training) or ``"sink"`` (the base with those layers' text keys zeroed: their text
            attention falls on the padding, `DERIVED`).
        path: load a `fglens toy train` output folder (``<out>`` or ``<out>/pipeline``) instead of the shipped
            weights; with a derived `variant` (``"sink"``) its edit is applied to that folder's model.
        check: verify the shipped files against their recorded SHA-256 first.
    """
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

    from .model import tokenizer

    if path is not None:
        _check(variant)
        path = _pipeline_folder(path)
        pipe = WanImageToVideoPipeline.from_pretrained(path, local_files_only=True)
        meta_file = Path(path) / "toy.json"
        pipe._fglens_toy = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        if variant in DERIVED:  # a derived variant of the folder's model: its edit applied, its ground truth
            _zero(pipe.transformer, DERIVED[variant][1])
            pipe._fglens_toy = {**pipe._fglens_toy, **info(variant), "derived_from_path": str(path)}
    else:
        _check(variant)
        source, zeroed = DERIVED.get(variant, (variant, ()))
        if check:
            verify(WEIGHTS, only=source)
        shared = WEIGHTS / "shared"
        pipe = WanImageToVideoPipeline(
            tokenizer=tokenizer(),
            text_encoder=UMT5EncoderModel.from_pretrained(shared / "text_encoder", local_files_only=True),
            image_encoder=CLIPVisionModel.from_pretrained(shared / "image_encoder", local_files_only=True),
            image_processor=CLIPImageProcessor.from_pretrained(shared / "image_processor", local_files_only=True),
            transformer=WanTransformer3DModel.from_pretrained(WEIGHTS / source / "transformer",
                                                              local_files_only=True),
            vae=AutoencoderKLWan.from_pretrained(shared / "vae", local_files_only=True),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(shared / "scheduler", local_files_only=True),
        )
        pipe._fglens_toy = info(variant)
        _zero(pipe.transformer, zeroed)
    for part in ("text_encoder", "image_encoder", "transformer", "vae"):
        getattr(pipe, part).eval()
    pipe._fglens_call_defaults = {k: CALL[k] for k in ("height", "width", "num_frames")}
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_folder(path: str | os.PathLike) -> Path:
    """A `fglens toy train` output's pipeline: the folder itself, or its ``pipeline/``; a clear error otherwise."""
    folder = Path(path)
    if not (folder / "model_index.json").is_file() and (folder / "pipeline" / "model_index.json").is_file():
        folder = folder / "pipeline"
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a toy pipeline folder (no model_index.json in it or in its "
                                "pipeline/): give a `fglens toy train` output folder or its pipeline/")
    return folder


def _zero(transformer: Any, names: tuple[str, ...]) -> None:
    """Set the named parameters of a derived variant to zero (`DERIVED`)."""
    import torch

    params = dict(transformer.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].zero_()


def planted_layers(pipe: Any) -> list[str]:
    """The layers in which Condition Isolation was planted in training (ground truth; [] for ``base``)."""
    meta = getattr(pipe, "_fglens_toy", None)
    if meta is None:
        raise ValueError("not a toy pipeline: load it with fg.toy.pipeline(...) to know its planted layers")
    return list(meta.get("planted_layers", []))


def ship(runs: dict[str, str | os.PathLike], root: Path = WEIGHTS) -> dict[str, str]:
    """Copy trained runs' pipelines into the package (shared parts from the first) and write the manifest.

    `runs` maps each variant to its `fglens toy train` output folder. Parts other than the transformer must
    be identical across the runs (the weak variant reuses the base VAE); that is checked, not assumed. The
    tiny CLIP and the records of derived variants (``sink.json``) already shipped are kept.
    """
    import shutil

    first = Path(next(iter(runs.values()))) / "pipeline"
    shared_parts = ("text_encoder", "image_encoder", "image_processor", "vae", "scheduler")
    for variant, run in runs.items():
        _check(variant)
        src = Path(run) / "pipeline"
        for part in shared_parts:
            for f in sorted((first / part).iterdir()):
                other = src / part / f.name
                if not other.is_file() or sha256(other) != sha256(f):
                    raise ValueError(f"{other} differs from {f}: the variants must share every part but the DiT")
    derived = {f"{v}.json": (root / f"{v}.json").read_text() for v in DERIVED if (root / f"{v}.json").is_file()}
    keep = None
    if (root / CLIP_DIR).is_dir():  # the tiny CLIP is shipped on its own (`ship_clip`): keep it, checked
        import tempfile

        verify(root, only=CLIP_DIR)
        keep = Path(tempfile.mkdtemp()) / CLIP_DIR
        shutil.copytree(root / CLIP_DIR, keep)
    if root.exists():
        shutil.rmtree(root)
    (root / "shared").mkdir(parents=True)
    if keep is not None:
        shutil.copytree(keep, root / CLIP_DIR)
        shutil.rmtree(keep.parent)
    for part in shared_parts:
        shutil.copytree(first / part, root / "shared" / part)
    for variant, run in runs.items():
        src = Path(run) / "pipeline"
        shutil.copytree(src / "transformer", root / variant / "transformer")
        shutil.copy(src / "toy.json", root / f"{variant}.json")
    for name, text in derived.items():  # a derived variant (`DERIVED`) has only its record: it follows its source
        (root / name).write_text(text)
    return _write_manifest(root)


def _write_manifest(root: Path) -> dict[str, str]:
    digests = {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*"))
               if p.is_file() and p.name != "manifest.json"}
    (root / "manifest.json").write_text(json.dumps(digests, indent=1) + "\n")
    return digests


def ship_clip(run: str | os.PathLike, root: Path = WEIGHTS) -> dict[str, str]:
    """Copy a `fglens toy train-clip` output into ``<root>/clip`` and add its files to the manifest.

    The files already shipped are checked against the manifest first (a damaged file is never re-blessed), and
    their entries are kept as they were; only the ``clip/`` entries are replaced. Returns the new manifest.
    """
    import shutil

    src = Path(run)
    missing = [f for f in CLIP_FILES if not (src / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} is not a finished `fglens toy train-clip` run: {', '.join(missing)} missing")
    old = manifest(root) if (root / "manifest.json").is_file() else {}
    for rel, digest in old.items():
        if rel.startswith(CLIP_DIR + "/"):
            continue
        if not (root / rel).is_file() or sha256(root / rel) != digest:
            raise ValueError(f"{root / rel} does not match the manifest: repair the shipped weights first")
    if (root / CLIP_DIR).exists():
        shutil.rmtree(root / CLIP_DIR)
    (root / CLIP_DIR).mkdir(parents=True)
    for f in CLIP_FILES:
        shutil.copyfile(src / f, root / CLIP_DIR / f)
    digests = {rel: d for rel, d in old.items() if not rel.startswith(CLIP_DIR + "/")}
    digests.update({f"{CLIP_DIR}/{f}": sha256(root / CLIP_DIR / f) for f in CLIP_FILES})
    digests = dict(sorted(digests.items(), key=lambda kv: PurePosixPath(kv[0])))
    (root / "manifest.json").write_text(json.dumps(digests, indent=1) + "\n")
    return digests
