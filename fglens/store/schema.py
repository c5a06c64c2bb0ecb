"""The run format: variable names and dims, the definitions stored with every run, and the schema version."""

from __future__ import annotations

#: version of the on-disk layout; stored in the root group and in every run group (`fglens_schema`)
SCHEMA_VERSION = 1


def chunk_codecs() -> tuple:
    """The bytes-to-bytes codecs of every array of a run: zstd, then a crc32c checksum of each chunk, so a
    reader detects flipped bytes (`fglens.store.verify_run`). A function, so zarr is imported when used."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(level=0), Crc32cCodec())


#: dims of every variable a run can hold (after the leading `branch, step`)
VARIABLE_DIMS: dict[str, tuple[str, ...]] = {
    "word_mass": ("word", "frame"),
    "morans_i": ("word", "frame"),
    "similarity": ("word", "frame"),
    "text_share": ("frame",),
    "text_mass": ("frame",),
    "image_mass": ("frame",),
    "entropy": ("frame",),
    "ref_mass": ("frame",),
    "word_map": ("word", "frame", "y", "x"),
}
LEADING_DIMS = ("branch", "step", "layer")

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
    "word_map": "m_w[n] = (1/H) sum_h sum_{j in K_w} P[n,h,j], on the (frame, y, x) latent grid",
    "word_mass": "mean of m_w over the tokens of each latent frame",
    "morans_i": "per frame and word on the y-x grid of m_w, binary rook weights: "
    "I = (N/S0) sum_ij w_ij z_i z_j / sum_i z_i^2, z = m - mean(m); NaN for a constant map",
    "similarity": "S_w[n] = cos(q[n], mean_{j in K_w} k[j]), heads concatenated; mean over each frame",
    "text_share": "|O_text[n]| / (|O_text[n]| + |O_image[n]|), per-call attention outputs before to_out; "
    "mean over each frame",
    "entropy": "entropy of the head-mean attention within the text keys (renormalised to sum to 1 for joint "
    "attention) divided by log|T| (T: Wan's 512 text keys; joint: the unmasked text keys); mean over each frame",
    "text_mass": "joint attention: (1/H) sum_h sum_{j in text} P[n,h,j]; mean over each frame",
    "image_mass": "joint attention: (1/H) sum_h sum_{j in image-derived context} P[n,h,j]; mean over each frame",
    "ref_mass": "(1/H) sum_h sum_{j in video frame 0} P[n,h,j], normalised over all keys of the site "
    "(Wan self-attention, or the joint softmax); mean over each frame",
    "reference_image": "the pipeline call's reference image (its `image` argument) as RGB uint8 (image_y, "
    "image_x, channel), resized with PIL LANCZOS, aspect kept, so its long side is at most 256 px",
    "batch": "batch items of the same CFG branch are averaged",
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
