"""VBench-2.0's instruction-following prompts as an fglens image-to-video suite (``fglens eval import vbench2``).

VBench-2.0 (Zheng et al. 2025) ships its prompt suite inside its PyPI package: ``vbench2/VBench2_full_info.json``,
1,230 prompts, each with its dimensions and, for some, auxiliary information (yes/no questions, the order of two
motions, the camera move). fglens reads that file from the installed package, never from the network, and without
importing the package (its import pulls in its whole evaluation stack). Install it without its dependencies — it
pins exact versions of diffusers, accelerate, transformers and a hundred more that would replace fglens' own::

    pip install --no-deps vbench2==0.1.1

The instruction-following dimensions become fglens categories (`DIMENSIONS`); each prompt becomes one item:

- ``prompt``: VBench-2.0's ``prompt_en``; ``id``: ``<dimension>-<index>`` (the index in the JSON file);
- ``words``: the prompt's content words (letters only, not in `STOPWORDS`, first `MAX_WORDS`), recorded and
  offered to anchors (which take those CLIP sees in the image unless a recipe says otherwise);
- ``questions``: VBench-2.0's own yes/no questions where it has them (Dynamic_Attribute,
  Dynamic_Spatial_Relationship), else one built from its auxiliary information (Camera_Motion: "Does the camera
  zoom in?"; Motion_Order_Understanding: "Does the video first show X, then Y?") or from the prompt;
- ``image``: the reference frame, from a folder the user gives (``<id>.png``/``.jpg``/``.jpeg``/``.webp``) or
  generated from the prompt by a local diffusers text-to-image pipeline (``--t2i PATH``), seeded per item.

Example:
    >>> words_of("The leaves gradually change from red to green.")
    ['leaves', 'gradually', 'change', 'red']
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: VBench-2.0's instruction-following dimensions and the fglens category each becomes
DIMENSIONS: dict[str, str] = {
    "Dynamic_Attribute": "dynamic_attribute",
    "Human_Interaction": "human_interaction",
    "Motion_Order_Understanding": "motion_order",
    "Dynamic_Spatial_Relationship": "spatial_relationship",
    "Camera_Motion": "camera_motion",
    "Complex_Plot": "complex_plot",
}
#: the words an item's ``words`` never take
STOPWORDS = frozenset(
    "a an the and or but then of to in on at by for from with into onto over under as is are was were be been being "
    "it its it's they them their this that these those he she his her him one another other each some all while "
    "during after before when finally initially first second suddenly slowly quickly very also up down out off "
    "starts start begins begin gets get does do did has have had not no yes".split()
)
MAX_WORDS = 4  #: content words per item
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_CAMERA = {"zoom_in": "zoom in", "zoom_out": "zoom out", "pan_left": "pan left", "pan_right": "pan right",
           "tilt_up": "tilt up", "tilt_down": "tilt down", "orbit_left": "orbit left", "orbit_right": "orbit right",
           "static": "stay still"}


def info_path() -> Path:
    """``VBench2_full_info.json`` of the installed ``vbench2`` package (found without importing it)."""
    spec = importlib.util.find_spec("vbench2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("VBench-2.0's prompt suite comes from its package: pip install --no-deps "
                                  "vbench2==0.1.1 (--no-deps: its pinned dependencies would replace fglens' own)")
    path = Path(next(iter(spec.submodule_search_locations))) / "VBench2_full_info.json"
    if not path.is_file():
        raise FileNotFoundError(f"the installed vbench2 package has no {path.name} at {path}")
    return path


def words_of(prompt: str, limit: int = MAX_WORDS) -> list[str]:
    """The prompt's first `limit` content words (letters only, as the prompt writes them, not in `STOPWORDS` in
    any case, no repeats)."""
    out: list[str] = []
    for word in re.findall(r"[A-Za-z]+", prompt):
        if len(word) > 1 and word.lower() not in STOPWORDS and word.lower() not in {w.lower() for w in out}:
            out.append(word)
    return out[:limit]


def _questions(entry: dict, dimension: str) -> list[str]:
    aux = entry.get("auxiliary_info")
    if isinstance(aux, list) and aux and all(isinstance(q, str) and "?" in q for q in aux):
        return [re.sub(r"\s*\(yes or no\)\s*$", "", q).strip() for q in aux]  # VBench-2.0's own questions
    if dimension == "Camera_Motion" and isinstance(aux, str):
        return [f"Does the camera {_CAMERA.get(aux, aux.replace('_', ' '))}?"]
    if dimension == "Motion_Order_Understanding" and isinstance(aux, list) and len(aux) == 2:
        return [f"Does the video first show {aux[0]}, then {aux[1]}?"]
    return [f"Does the video show this: {entry['prompt_en'].strip()}"]


def entries(dimensions: Sequence[str] | None = None, path: str | os.PathLike | None = None) -> list[dict]:
    """The JSON's entries of `dimensions` (default: all of `DIMENSIONS`) as fglens suite lines without images:
    ``id, prompt, category, words, questions, dimension``. Unknown dimensions are an error naming the known ones."""
    dims = list(DIMENSIONS) if dimensions is None else list(dimensions)
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown VBench-2.0 dimension(s) {unknown}; the instruction-following ones fglens imports: "
                         f"{', '.join(DIMENSIONS)}")
    data = json.loads(Path(path or info_path()).read_text())
    out = []
    for index, entry in enumerate(data):
        for dim in entry.get("dimension", []):
            if dim not in dims:
                continue
            prompt = entry["prompt_en"].strip()
            words = words_of(prompt)
            if not words:
                continue
            out.append({"id": f"{dim.lower().replace('_', '-')}-{index:04d}", "prompt": prompt,
                        "category": DIMENSIONS[dim], "words": words, "questions": _questions(entry, dim),
                        "dimension": dim})
    return out


def _find_image(folder: Path, item_id: str) -> Path | None:
    for suffix in _IMAGE_SUFFIXES:
        candidate = folder / f"{item_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _t2i(path: str | os.PathLike, device: str | None) -> Any:
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(Path(path).expanduser()), local_files_only=True)
    return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _generate(pipe: Any, prompt: str, item_id: str, size: tuple[int, int], steps: int | None) -> Any:
    import torch

    seed = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "little")
    kwargs: dict[str, Any] = {"height": size[0], "width": size[1], "output_type": "pil",
                              "generator": torch.Generator().manual_seed(seed)}
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    return pipe(prompt=prompt, **kwargs).images[0].convert("RGB")


def import_vbench2(out: str | os.PathLike, *, dimensions: Sequence[str] | None = None,
                   images: str | os.PathLike | None = None, t2i: str | os.PathLike | None = None,
                   size: tuple[int, int] = (480, 832), steps: int | None = None, limit: int | None = None,
                   device: str | None = None, path: str | os.PathLike | None = None) -> Path:
    """Write ``out/suite.jsonl`` (and ``out/images/``) from VBench-2.0's prompts; returns the suite's path.

    Args:
        out: the suite's folder.
        dimensions: VBench-2.0 dimensions to import (default: every one of `DIMENSIONS`).
        images: a folder with one reference image per item, named ``<id>.png`` (or .jpg/.jpeg/.webp); every
            missing one is listed in the error.
        t2i: instead, a local diffusers text-to-image pipeline folder: each item's reference image is generated from
            its prompt (seeded by the item's id, `size` (height, width), `steps` denoising steps).
        limit: at most this many items per dimension (the first in the file).
        path: the JSON file to read (default: the installed package's, `info_path`).
    """
    from PIL import Image

    if (images is None) == (t2i is None):
        raise ValueError("give the reference images as a folder (images=...) or a local text-to-image pipeline "
                         "(t2i=...), one of the two")
    lines = entries(dimensions, path)
    if limit is not None:
        kept: list[dict] = []
        for e in lines:
            if sum(k["dimension"] == e["dimension"] for k in kept) < limit:
                kept.append(e)
        lines = kept
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if images is not None:
        folder = Path(images).expanduser()
        found = {e["id"]: _find_image(folder, e["id"]) for e in lines}
        missing = [i for i, p in found.items() if p is None]
        if missing:
            raise FileNotFoundError(f"{len(missing)} reference image(s) missing in {folder} (named <id>.png/.jpg/"
                                    f".jpeg/.webp), e.g. {', '.join(missing[:5])}")
        for e in lines:
            with Image.open(found[e["id"]]) as im:
                im.convert("RGB").save(out / "images" / f"{e['id']}.png")
    else:
        pipe = _t2i(t2i, device)
        for e in lines:
            _generate(pipe, e["prompt"], e["id"], size, steps).save(out / "images" / f"{e['id']}.png")
    suite = out / "suite.jsonl"
    with open(suite, "w") as f:
        for e in lines:
            line = {k: v for k, v in e.items() if k != "dimension"}
            f.write(json.dumps({**line, "image": f"images/{e['id']}.png"}) + "\n")
    return suite
