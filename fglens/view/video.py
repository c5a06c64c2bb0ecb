"""The video of a run, when one was kept: `fg.trace` records attention statistics, not frames, so a store holds
no video; ``fglens eval run`` keeps each generated video next to its store, as
``OUT/videos/<item>/<name>.npz`` (uint8 frames and a JSON ``meta`` naming the run in ``OUT/runs.zarr``:
`fglens.eval.runner`). `find_videos` indexes those files by run (reading only each file's ``meta``), and
`video_frames` turns one into PNG frames no larger than the reference image the store keeps.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> find_videos(Path(tempfile.mkdtemp()) / "runs.zarr")
    {}
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

#: what the page says when a run has no video
NO_VIDEO = ("no video was recorded with this run: fg.trace records attention statistics, not frames. Runs made "
            "by `fglens eval run` keep their videos next to the store (OUT/videos/, with OUT/runs.zarr), and the "
            "viewer shows them; `fglens generate` writes OUT/video.mp4 (docs/viewer.md)")


def _meta(path: Path) -> dict[str, Any] | None:
    """The JSON ``meta`` entry of a cached video, or None for a file that is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return meta if isinstance(meta, dict) else None


def find_videos(store: Path) -> dict[str, Path]:
    """Run id -> its cached video (``<store's folder>/videos/*/*.npz`` whose ``meta`` names the run); empty when
    there is no such folder. Reads each file's ``meta`` entry only, not its frames."""
    folder = Path(store).parent / "videos"
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*/*.npz")):
        meta = _meta(path)
        run = meta.get("run") if meta else None
        if isinstance(run, str) and run:
            found[run] = path
    return found


def video_frames(path: Path, root: Path | None = None) -> dict[str, Any]:
    """One cached video as PNG data URIs (`fglens.store.image.reference_thumbnail`: long side at most 256 px),
    with its shape and what its ``meta`` says (item, seed, condition)."""
    from PIL import Image

    from ..store.image import reference_thumbnail

    with np.load(path, allow_pickle=False) as data:
        frames = np.asarray(data["frames"])
        meta = json.loads(str(data["meta"]))
    thumbs = [reference_thumbnail(frame) for frame in frames]
    uris = []
    for thumb in thumbs:
        buffer = io.BytesIO()
        Image.fromarray(thumb, "RGB").save(buffer, format="PNG")
        uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    height, width = thumbs[0].shape[:2] if thumbs else (0, 0)
    item = meta.get("item")
    return {"frames": uris, "shape": [int(len(frames)), int(height), int(width)],
            "source": str(path.relative_to(root)) if root is not None else path.name,
            "item": str(item.get("id", "")) if isinstance(item, dict) else str(item or ""),
            "seed": meta.get("seed"), "condition": str(meta.get("condition") or ""), "note": ""}
