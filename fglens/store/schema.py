"""The run format: variable names and dims, the definitions stored with every run, and the schema version."""

from __future__ import annotations

from ..stats.table import STATISTICS

#: version of the on-disk layout; stored in the root group and in every run group (`fglens_schema`)
SCHEMA_VERSION = 1


def chunk_codecs() -> tuple:
    """The bytes-to-bytes codecs of every array of a run: zstd, then a crc32c checksum of each chunk, so a
    reader detects flipped bytes (`fglens.store.verify_run`). A function, so zarr is imported when used."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(level=0), Crc32cCodec())


#: dims of every variable a run can hold (after the leading `branch, step, layer`; declared in `fglens.stats.table`)
VARIABLE_DIMS: dict[str, tuple[str, ...]] = {name: s.dims for name, s in STATISTICS.items()}
LEADING_DIMS = ("branch", "step", "layer")

#: a run's flag of layers that did not run at a step (a step cache, e.g. diffusers' first-block cache, reused their
#: output): bool over ``branch, step, layer``, present when the traced transformer had a step cache on; the
#: statistics there are NaN, never a stale value (`fglens.trace.skips`)
SKIPPED = "skipped"
VARIABLE_DIMS[SKIPPED] = ()
#: the attributes of the flag variables (the statistics' come from `fglens.stats.table`)
FLAG_ATTRS: dict[str, dict[str, str]] = {SKIPPED: {
    "long_name": "layer skipped by a step cache",
    "description": "True where a site this run reads at the layer did not run in that step's forward (a step "
                   "cache reused or predicted its output); the statistics from that site are NaN there",
}}

#: the reference image of an image-to-video call, kept with its run (written once, not per step)
REFERENCE_IMAGE = "reference_image"
#: its dims: rows, columns, RGB channels (uint8)
IMAGE_DIMS = ("image_y", "image_x", "channel")
#: the longest side, in pixels, a stored reference image may have (larger images are resized down)
REFERENCE_IMAGE_MAX_SIDE = 256

#: the definitions of docs/concepts.md, as stored in each run's attributes (`definitions`)
DEFINITIONS: dict[str, str] = {
    "P": "exact attention probabilities the model uses at the site (Wan text call: softmax over the 512 "
    "text keys, float32, identical pad keys collapsed exactly; joint attention: softmax over all unmasked "
    "keys, text columns normalised with the row log-sum-exp over all keys)",
    **{name: s.definition for name, s in STATISTICS.items()},
    "reference_image": "the pipeline call's reference image (its `image` argument) as RGB uint8 (image_y, "
    "image_x, channel), resized with PIL LANCZOS, aspect kept, so its long side is at most 256 px",
    "batch": "batch items of the same CFG branch are averaged",
    SKIPPED: FLAG_ATTRS[SKIPPED]["description"],
}


def check_schema(version: object, where: str) -> None:
    """Refuse data written by a newer fglens: `version` is the ``fglens_schema`` found at `where`."""
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{where} has an unreadable fglens store schema {version!r}; expected an integer")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{where} was written with fglens store schema {version}; this fglens reads up to {SCHEMA_VERSION}. "
            "Upgrade fglens."
        )
