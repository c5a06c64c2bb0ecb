"""Every variable a run can hold, declared once: what it is computed from, its dims, the sites that provide it,
its definition (docs/concepts.md, stored with each run and in each variable's ``description``) and its labels.

The recorder computes per-token quantities at each site (`Statistic.source`: the word maps, the similarity map,
the entropy, the attention masses) and reduces them per latent frame (`Statistic.reduce`); the schema, the run
attributes and the figures read the same entry. A new statistic over an existing per-token quantity is one entry.

Example:
    >>> from fglens.stats.table import STATISTICS, recordable
    >>> STATISTICS["morans_i"].dims, STATISTICS["morans_i"].source, STATISTICS["morans_i"].reduce
    (('word', 'frame'), 'word_map', 'morans_i')
    >>> "word_map" in recordable()     # a map is asked for with Record(maps=True), not as a statistic
    False
"""

from __future__ import annotations

from dataclasses import dataclass

#: per-token quantities the recorder can compute at a site (what a statistic reduces)
SOURCES = ("word_map", "similarity", "response", "entropy", "text_mass", "image_mass", "ref_mass", "text_share",
           "audio_entropy", "audio_position")
#: reductions of a per-token quantity over the tokens of each latent frame
REDUCTIONS = ("frame_mean", "morans_i", "map")


@dataclass(frozen=True)
class Statistic:
    """One variable of a run.

    Args:
        name: the variable's name in the run (``ds[name]``) and in ``Record(stats=...)``.
        dims: its dims after the leading ``branch, step, layer``.
        kinds: the kinds of site that provide it (``text``: Wan's text cross-attention, ``joint``: one softmax over
            video, image and text keys, ``image``: Wan's image cross-attention, ``self``: Wan's self-attention,
            ``audio``: a cross-attention of the video queries to another modality's keys, LTX-2's audio tokens).
        source: the per-token quantity it is computed from (`SOURCES`).
        reduce: how that quantity is reduced per latent frame (`REDUCTIONS`).
        definition: its formula, as docs/concepts.md gives it.
        long_name: what the number means (axis labels, the variable's ``long_name`` attribute).
        short: a short name for titles.
        signed: its sign means something (figures colour it with a diverging map centred on zero).
        default: recorded by ``fg.Record()`` unless asked otherwise.
        recordable: asked for by name in ``Record(stats=...)`` (False for the maps: ``Record(maps=...)``).
    """

    name: str
    dims: tuple[str, ...]
    kinds: frozenset[str]
    source: str
    reduce: str
    definition: str
    long_name: str
    short: str
    signed: bool = False
    default: bool = True
    recordable: bool = True

    def __post_init__(self) -> None:
        if self.source not in SOURCES or self.reduce not in REDUCTIONS:
            raise ValueError(f"statistic {self.name!r}: source must be one of {SOURCES} and reduce one of "
                             f"{REDUCTIONS}; got {self.source!r}, {self.reduce!r}")

    @property
    def per_word(self) -> bool:
        """One value per word of the Record (needs the words' token positions)."""
        return "word" in self.dims


_WORD_SITES = frozenset({"text", "joint"})

STATISTICS: dict[str, Statistic] = {s.name: s for s in (
    Statistic("word_mass", ("word", "frame"), _WORD_SITES, "word_map", "frame_mean",
              "mean of m_w over the tokens of each latent frame",
              "word attention mass", "word mass"),
    Statistic("morans_i", ("word", "frame"), _WORD_SITES, "word_map", "morans_i",
              "per frame and word on the y-x grid of m_w, binary rook weights: "
              "I = (N/S0) sum_ij w_ij z_i z_j / sum_i z_i^2, z = m - mean(m); NaN for a constant map",
              "Moran's I of the word map", "Moran's I", signed=True),
    Statistic("similarity", ("word", "frame"), _WORD_SITES, "similarity", "frame_mean",
              "S_w[n] = cos(q[n], mean_{j in K_w} k[j]), heads concatenated; mean over each frame",
              "text–visual similarity S", "similarity", signed=True),
    Statistic("text_share", ("frame",), frozenset({"image"}), "text_share", "frame_mean",
              "|O_text[n]| / (|O_text[n]| + |O_image[n]|), per-call attention outputs before to_out; "
              "mean over each frame",
              "text share ‖O_text‖ / (‖O_text‖ + ‖O_image‖)", "text share"),
    Statistic("text_mass", ("frame",), frozenset({"joint"}), "text_mass", "frame_mean",
              "joint attention: (1/H) sum_h sum_{j in text} P[n,h,j]; mean over each frame",
              "attention mass on text tokens", "text mass"),
    Statistic("image_mass", ("frame",), frozenset({"joint"}), "image_mass", "frame_mean",
              "joint attention: (1/H) sum_h sum_{j in image-derived context} P[n,h,j]; mean over each frame",
              "attention mass on image-derived tokens", "image mass"),
    Statistic("entropy", ("frame",), _WORD_SITES, "entropy", "frame_mean",
              "entropy of the head-mean attention within the text keys (renormalised to sum to 1 for joint "
              "attention) divided by log|T| (T: Wan's 512 text keys; joint: the unmasked text keys); mean over "
              "each frame",
              "text-attention entropy / log|T|", "entropy"),
    Statistic("ref_mass", ("frame",), frozenset({"self", "joint"}), "ref_mass", "frame_mean",
              "(1/H) sum_h sum_{j in video frame 0} P[n,h,j], normalised over all keys of the site "
              "(Wan self-attention, or the joint softmax); mean over each frame",
              "attention mass on the reference frame", "reference-frame mass", default=False),
    Statistic("audio_entropy", ("frame",), frozenset({"audio"}), "audio_entropy", "frame_mean",
              "cross-attention of the video queries to audio keys (LTX-2): entropy of the head-mean attention over "
              "the audio keys divided by log|A| (A: the open audio keys); mean over each frame",
              "audio-attention entropy / log|A|", "audio entropy", default=False),
    Statistic("audio_position", ("frame",), frozenset({"audio"}), "audio_position", "frame_mean",
              "cross-attention of the video queries to audio keys (LTX-2): (1/H) sum_h sum_j P[n,h,j] j / (A-1), "
              "where in the audio (0: its first token, 1: its last) the attention of video token n sits on average; "
              "mean over each frame",
              "mean attended audio position (0 first, 1 last audio token)", "audio position", default=False),
    Statistic("similarity_morans_i", ("word", "frame"), _WORD_SITES, "similarity", "morans_i",
              "per frame and word on the y-x grid of S_w (the similarity map), binary rook weights, as morans_i; "
              "NaN for a constant map",
              "Moran's I of the similarity map", "Moran's I of S", signed=True, default=False),
    Statistic("response", ("word", "frame"), frozenset({"text"}), "response", "frame_mean",
              "R_w[n] = cos(o[n], mean_{j in K_w} v[j]): o[n] the text attention's output at video token n (sum_j "
              "P[n,h,j] v[j,h], heads concatenated, before to_out), v the text values; mean over each frame",
              "representation response R", "response", signed=True, default=False),
    Statistic("response_morans_i", ("word", "frame"), frozenset({"text"}), "response", "morans_i",
              "per frame and word on the y-x grid of R_w (the response map), binary rook weights, as morans_i; "
              "NaN for a constant map",
              "Moran's I of the response map", "Moran's I of R", signed=True, default=False),
    Statistic("word_map", ("word", "frame", "y", "x"), _WORD_SITES, "word_map", "map",
              "m_w[n] = (1/H) sum_h sum_{j in K_w} P[n,h,j], on the (frame, y, x) latent grid",
              "word attention map", "word map", default=False, recordable=False),
    Statistic("similarity_map", ("word", "frame", "y", "x"), _WORD_SITES, "similarity", "map",
              "S_w[n] = cos(q[n], mean_{j in K_w} k[j]), heads concatenated, on the (frame, y, x) latent grid",
              "text–visual similarity map S", "similarity map", signed=True, default=False, recordable=False),
    Statistic("response_map", ("word", "frame", "y", "x"), frozenset({"text"}), "response", "map",
              "R_w[n] = cos(o[n], mean_{j in K_w} v[j]) on the (frame, y, x) latent grid",
              "representation response map R", "response map", signed=True, default=False, recordable=False),
)}


def recordable() -> dict[str, Statistic]:
    """The statistics ``Record(stats=...)`` accepts, by name."""
    return {n: s for n, s in STATISTICS.items() if s.recordable}


def maps() -> dict[str, Statistic]:
    """The per-token maps ``Record(maps=...)`` accepts, by name (``word_map``, ``similarity_map``)."""
    return {n: s for n, s in STATISTICS.items() if s.reduce == "map"}


def variable_attrs(name: str) -> dict[str, str]:
    """The attributes a run gives its variable `name` (as xarray users expect): ``long_name`` and ``description``."""
    s = STATISTICS[name]
    return {"long_name": s.long_name, "description": s.definition}
