"""Scorers: each a small class with one method, ``score(video, item) -> float`` in [0, 1].

``video`` is a float ``[F, H, W, 3]`` array in [0, 1] (what `fglens.pipelines.frames_of` returns); ``item`` a
`fglens.eval.suite.Item`. A scorer that cannot score returns `Missing` — a NaN float carrying a ``reason`` —
never a made-up number. Each scorer has a ``name`` (its label in the results) and a ``spec`` (its settings,
stored with the results).

=========================  =========================================================================================
``alignment``              CLIPScore over time: per frame, ``clip(w · cos(image, word), 0, 1)`` averaged over the
                           item's words (``w`` = 2.5 as in CLIPScore, Hessel et al. 2021), then over frames
``alignment_change``       the change of that alignment from the first to the last frame, for the item's
                           ``target`` texts: ``Δ = mean_t cos(last, t) − cos(first, t)``, mapped to
                           ``1 − exp(−max(Δ, 0) / scale)`` (``scale`` = 0.02); an item without ``target`` is
                           `Missing`
``subject_consistency``    dense CLIP features pooled over the subject (its word located by CLIP in each frame,
                           Otsu mask) against the same in the reference frame: ``max(cos, 0)``, mean over frames
                           after the first
``background_consistency`` the same over the patches that are subject neither in the frame nor in the reference
``motion``                 mean absolute difference of consecutive frames ``m`` (pixel values in [0, 1]), mapped to
                           ``1 − exp(−m / scale)`` (``scale`` = 0.02): a frozen video scores exactly 0
``vlm_judge``              a local vision-language model answers each question from sampled frames;
                           ``P(yes) / (P(yes) + P(no))`` from its next-token probabilities, mean over questions;
                           without a model folder: `Missing`
=========================  =========================================================================================

CLIP scorers take a *feature extractor* (`ClipFeatures` wraps `fglens.anchors.Clip`; anything with the same
three methods works, e.g. a stub in tests) and are `Missing` without one: random CLIP weights are allowed
(`Clip(tiny_config())`, for tests) but are not a measurement.

Example:
    >>> import numpy as np
    >>> from fglens.eval.scorers import MotionMagnitude, TextAlignment
    >>> frozen = np.full((5, 8, 8, 3), 0.5, dtype=np.float32)
    >>> MotionMagnitude().score(frozen, None)
    0.0
    >>> s = TextAlignment(None).score(frozen, None)   # no CLIP given: missing, with the reason
    >>> s != s, s.reason
    (True, 'missing: no CLIP model given')
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .missing import Missing, check_video
from .suite import Item

__all__ = [
    "SCORERS", "AlignmentChange", "BackgroundConsistency", "ClipFeatures", "Features", "Missing",
    "MotionMagnitude", "Scorer", "SubjectConsistency", "TextAlignment", "VLMJudge", "default_scorers",
]


class Scorer(Protocol):
    """What the runner needs of a scorer."""

    name: str
    spec: dict[str, Any]

    def score(self, video: np.ndarray, item: Item) -> float: ...


class Features(Protocol):
    """Image and text features in one embedding space, unit-norm (`ClipFeatures` is the real one)."""

    def text(self, texts: Sequence[str]) -> torch.Tensor:
        """``[T, C]`` text embeddings."""
        ...

    def image(self, frames: np.ndarray) -> torch.Tensor:
        """``[F, C]`` global embeddings of ``[F, H, W, 3]`` frames."""
        ...

    def patches(self, frames: np.ndarray) -> torch.Tensor:
        """``[F, Hp, Wp, C]`` dense embeddings of ``[F, H, W, 3]`` frames."""
        ...


class ClipFeatures:
    """`Features` from an `fglens.anchors.Clip`: its ``text_features`` (prompt templates averaged), the model's
    global image embedding (short side resized to the tower's input, centre crop, its normalisation) and its
    dense ClearCLIP ``patch_features``. Frames are embedded in batches of ``batch``.

    Example:
        >>> import numpy as np, torch
        >>> from fglens.anchors import Clip, tiny_config
        >>> _ = torch.manual_seed(0)
        >>> feats = ClipFeatures(Clip(tiny_config()))
        >>> tuple(feats.image(np.zeros((3, 32, 48, 3), np.float32)).shape), tuple(feats.text(["dog"]).shape)
        ((3, 32), (1, 32))
    """

    def __init__(self, clip: Any, *, batch: int = 16) -> None:
        self.clip = clip
        self.batch = int(batch)
        self._text: dict[tuple[str, ...], torch.Tensor] = {}
        self._memo: dict[tuple, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"ClipFeatures({self.clip!r})"

    def text(self, texts: Sequence[str]) -> torch.Tensor:
        key = tuple(dict.fromkeys(texts))  # the same words come back for every seed and condition
        if key not in self._text:
            self._text[key] = self.clip.text_features(list(key)).float().cpu()
        return self._text[key]

    def _remember(self, kind: str, frames: np.ndarray, compute) -> torch.Tensor:
        """Results for the last few inputs, keyed by content: scorers ask for the same video (and reference)
        in a row, and a hash is cheap next to a CLIP forward."""
        frames = np.ascontiguousarray(check_video(frames))
        key = (kind, frames.shape, hashlib.blake2b(memoryview(frames).cast("B"), digest_size=16).hexdigest())
        if key not in self._memo:
            while len(self._memo) >= 6:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = compute(frames)
        return self._memo[key]

    def image(self, frames: np.ndarray) -> torch.Tensor:
        return self._remember("image", frames, self._image)

    def patches(self, frames: np.ndarray) -> torch.Tensor:
        return self._remember("patches", frames, self._patches)

    @torch.no_grad()
    def _image(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)
        size = self.clip.image_size
        scale = max(size[0] / x.shape[-2], size[1] / x.shape[-1])
        resized = (max(size[0], round(x.shape[-2] * scale)), max(size[1], round(x.shape[-1] * scale)))
        model, device = self.clip.model, self.clip.device
        dtype = next(model.parameters()).dtype
        out = []
        for chunk in x.split(self.batch):
            y = F.interpolate(chunk, size=resized, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            top, left = (resized[0] - size[0]) // 2, (resized[1] - size[1]) // 2
            y = y[..., top : top + size[0], left : left + size[1]]
            y = (y - self.clip.mean) / self.clip.std
            out.append(model.encode_image(y.to(device, dtype)).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)

    def _patches(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)
        return torch.stack([self.clip.patch_features(frame).float().cpu() for frame in x])


def _no_features(features: Any) -> Missing | None:
    return Missing("missing: no CLIP model given") if features is None else None


class TextAlignment:
    """CLIPScore of each frame with the item's words, averaged over words and frames.

    Per frame f and word w: ``clip(weight · cos(image_f, text_w), 0, 1)``; ``weight`` 2.5 stretches CLIP's
    typical cosines (0.2 to 0.4) over [0, 1] as CLIPScore does.

    Example:
        >>> import numpy as np, torch
        >>> class Colour:  # a stub feature space: an image is its mean colour, "red" is (1, 0, 0)
        ...     def text(self, texts): return torch.eye(3)[[("red", "green", "blue").index(t) for t in texts]]
        ...     def image(self, frames): return torch.nn.functional.normalize(torch.tensor(frames.mean((1, 2))), dim=-1)
        >>> red = np.zeros((2, 4, 4, 3), np.float32); red[..., 0] = 1
        >>> item = type("Item", (), {"words": ("red",)})()
        >>> TextAlignment(Colour(), weight=1.0).score(red, item)
        1.0
    """

    name = "alignment"

    def __init__(self, features: Features | None, *, weight: float = 2.5) -> None:
        self.features = features
        self.weight = float(weight)
        self.spec = {"weight": self.weight, "features": repr(features)}

    def score(self, video: np.ndarray, item: Item) -> float:
        missing = _no_features(self.features)
        if missing is not None:
            return missing
        video = check_video(video)
        cos = self.features.image(video) @ self.features.text(item.words).T  # [F, W]
        return float((self.weight * cos.double()).clamp(0, 1).mean())


class AlignmentChange:
    """How much the video moves toward the item's ``target`` texts from its first to its last frame.

    ``Δ = mean_t [cos(image_last, t) − cos(image_first, t)]``; score ``1 − exp(−max(Δ, 0) / scale)``: 0 when
    the alignment does not rise (a frozen video, or a change away from the target), 0.63 at Δ = ``scale``.
    """

    name = "alignment_change"

    def __init__(self, features: Features | None, *, scale: float = 0.02) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be positive; got {scale}")
        self.features = features
        self.scale = float(scale)
        self.spec = {"scale": self.scale, "features": repr(features)}

    def score(self, video: np.ndarray, item: Item) -> float:
        missing = _no_features(self.features)
        if missing is not None:
            return missing
        if not item.target:
            return Missing("the item has no 'target' (end-state text) to measure the change toward")
        video = check_video(video)
        if video.shape[0] < 2:
            return Missing("a video of one frame has no change")
        # all frames (not only the two used): the alignment scorer has usually embedded them already
        cos = self.features.image(video)[[0, -1]].double() @ self.features.text(item.target).double().T  # [2, T]
        delta = float((cos[1] - cos[0]).mean())
        return float(1.0 - math.exp(-max(delta, 0.0) / self.scale))


def _subject_masks(patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Boolean ``[F, Hp, Wp]``: patches above Otsu's threshold of their cosine with the subject's text."""
    from ..anchors import threshold

    sim = torch.einsum("fhwc,c->fhw", patches.double(), text.double())
    return threshold(sim, "otsu") > 0


def _pool(patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean feature over the masked patches of each frame (over all patches where the mask is empty)."""
    weights = mask.double()
    empty = weights.flatten(1).sum(1) == 0
    weights[empty] = 1.0
    pooled = torch.einsum("fhwc,fhw->fc", patches.double(), weights) / weights.flatten(1).sum(1, keepdim=True)
    return F.normalize(pooled, dim=-1)


class _Consistency:
    region = ""

    def __init__(self, features: Features | None) -> None:
        self.features = features
        self.spec = {"features": repr(features)}

    def score(self, video: np.ndarray, item: Item) -> float:
        missing = _no_features(self.features)
        if missing is not None:
            return missing
        video = check_video(video)
        if video.shape[0] < 2:
            return Missing("a video of one frame has no frames after the first to compare")
        from PIL import Image

        ref = item.load_image().resize((video.shape[2], video.shape[1]), Image.Resampling.BICUBIC)
        ref_frame = np.asarray(ref, dtype=np.float32)[None] / 255.0
        frames = self.features.patches(video)[1:]
        ref_patches = self.features.patches(ref_frame)
        text = self.features.text([item.subject_word])[0]
        in_frame, in_ref = _subject_masks(frames, text), _subject_masks(ref_patches, text)
        if self.region == "subject":
            cos = (_pool(frames, in_frame) * _pool(ref_patches, in_ref)).sum(-1)
        else:
            background = ~(in_frame | in_ref)  # [F-1, Hp, Wp]: subject in neither
            cos = (_pool(frames, background) * _pool(ref_patches.expand_as(frames), background)).sum(-1)
        return float(cos.clamp(0, 1).mean())


class SubjectConsistency(_Consistency):
    """Does the subject keep its look? Per frame after the first: CLIP locates the subject word (Otsu mask of
    the patch-text cosine, so a moving subject is followed), its dense features are averaged, and compared
    (``max(cos, 0)``) with the same in the reference image; mean over frames."""

    name = "subject_consistency"
    region = "subject"


class BackgroundConsistency(_Consistency):
    """Does the background keep its look? As `SubjectConsistency`, over the patches that are subject neither in
    the frame nor in the reference image, with the same patches taken in both."""

    name = "background_consistency"
    region = "background"


class MotionMagnitude:
    """How much the video moves: ``m`` = mean over consecutive frame pairs of the mean absolute pixel difference
    (values in [0, 1]); score ``1 − exp(−m / scale)``: 0 for a frozen video, 0.63 at ``m = scale``, → 1.

    Frame differences, not optical flow (flow networks need weights that cannot be downloaded here); they also
    count flicker and colour changes as motion.

    Example:
        >>> import numpy as np
        >>> video = np.zeros((2, 4, 4, 3), np.float32); video[1] = 0.02   # m = 0.02 = scale
        >>> round(MotionMagnitude(scale=0.02).score(video, None), 4)
        0.6321
    """

    name = "motion"

    def __init__(self, *, scale: float = 0.02) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be positive; got {scale}")
        self.scale = float(scale)
        self.spec = {"scale": self.scale}

    def score(self, video: np.ndarray, item: Item | None) -> float:
        video = check_video(video).astype(np.float64)
        if video.shape[0] < 2:
            return Missing("a video of one frame has no motion to measure")
        m = float(np.abs(np.diff(video, axis=0)).mean())
        return float(1.0 - math.exp(-m / self.scale))


class VLMJudge:
    """A local vision-language model answers the item's yes/no questions from sampled frames.

    ``frames`` frames are sampled evenly (first and last included) and tiled in reading order into one
    storyboard image, so any single-image model works. For each question the model gets the image and
    ``"The picture shows N frames of a video in order, left to right and top to bottom. {question} Answer
    yes or no."`` in its chat template; the answer's probability is read from the next-token distribution:
    ``P(yes) = Σ p(t)`` over the first tokens of "yes", "Yes", " yes", " Yes" (those shared with the no
    variants dropped), ``P(no)`` likewise, and the question scores ``P(yes) / (P(yes) + P(no))``. The item's
    score is the mean over its questions.

    Args:
        path: a local folder with a transformers image-text-to-text model and its processor (LLaVA, Qwen2-VL,
            ...); loaded with ``local_files_only`` on first use. None: every score is `Missing`.
        frames: how many frames to sample.
        device, dtype: where and how to run it (default: CUDA when available; the stored dtype).
        template: a prompt with ``{question}`` for processors without a chat template, e.g.
            ``"USER: <image>\\n{question} ASSISTANT:"``.
    """

    name = "vlm_judge"
    QUESTION = ("The picture shows {n} frames of a video in order, left to right and top to bottom. {question} "
                "Answer yes or no.")

    def __init__(self, path: str | os.PathLike | None = None, *, frames: int = 4, device: str | None = None,
                 dtype: torch.dtype | None = None, template: str | None = None) -> None:
        if frames < 1:
            raise ValueError(f"frames must be at least 1; got {frames}")
        if path is not None and not Path(path).is_dir():
            raise FileNotFoundError(
                f"no vision-language model folder at {path}: give a local folder with a transformers "
                "image-text-to-text model and its processor (nothing is downloaded), or no path to mark the "
                "judge as missing"
            )
        self.path = None if path is None else str(path)
        self.frames = int(frames)
        self.device = device
        self.dtype = dtype
        self.template = template
        self.spec = {"path": self.path, "frames": self.frames, "question": self.QUESTION,
                     "score": "P(yes) / (P(yes) + P(no)) of the next token, mean over questions"}
        self._loaded: tuple[Any, Any, list[int], list[int]] | None = None

    def score(self, video: np.ndarray, item: Item) -> float:
        if self.path is None:
            return Missing("missing: no VLM judge (pass a local vision-language model folder)")
        video = check_video(video)
        model, processor, yes, no = self._load()
        board = storyboard(video, self.frames)
        n = min(self.frames, video.shape[0])
        values = []
        for question in item.questions:
            inputs = self.inputs(board, self.QUESTION.format(n=n, question=question))
            with torch.no_grad():
                logits = model(**inputs).logits[0, -1]
            p = logits.double().softmax(-1)
            p_yes, p_no = float(p[yes].sum()), float(p[no].sum())
            values.append(p_yes / (p_yes + p_no) if p_yes + p_no > 0 else float("nan"))
        return float(np.mean(values))

    def inputs(self, image: Any, text: str) -> dict[str, torch.Tensor]:
        """The model inputs for one image and one question (chat template, or `template`)."""
        model, processor, _, _ = self._load()
        if self.template is not None:
            prompt = self.template.format(question=text)
        elif getattr(processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        else:
            raise ValueError(
                f"the processor at {self.path} has no chat template: pass template= with an image token and "
                "{question}, e.g. 'USER: <image>\\n{question} ASSISTANT:'"
            )
        batch = processor(images=image, text=prompt, return_tensors="pt")
        return {k: (v.to(model.device, model.dtype) if v.is_floating_point() else v.to(model.device))
                for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def _load(self) -> tuple[Any, Any, list[int], list[int]]:
        if self._loaded is None:
            import transformers
            from transformers import AutoModelForImageTextToText, AutoProcessor

            processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
            kwargs: dict[str, Any] = {"local_files_only": True}
            if self.dtype is not None:
                kwargs["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"] = self.dtype
            model = AutoModelForImageTextToText.from_pretrained(self.path, **kwargs).eval()
            model.to(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            tokenizer = getattr(processor, "tokenizer", processor)
            yes, no = answer_tokens(tokenizer)
            self._loaded = (model, processor, yes, no)
        return self._loaded


def answer_tokens(tokenizer: Any, yes: Sequence[str] = ("yes", "Yes", " yes", " Yes"),
                  no: Sequence[str] = ("no", "No", " no", " No")) -> tuple[list[int], list[int]]:
    """The token ids that start a "yes" and a "no" answer (first token of each variant; ids shared by both
    dropped). A clear error when the tokenizer cannot tell them apart."""

    def first(words: Sequence[str]) -> set[int]:
        ids = (tokenizer(w, add_special_tokens=False)["input_ids"] for w in words)
        return {int(i[0]) for i in ids if len(i)}

    y, n = first(yes), first(no)
    shared = y & n
    y, n = sorted(y - shared), sorted(n - shared)
    if not y or not n:
        raise ValueError(f"the judge's tokenizer does not start 'yes' and 'no' with different tokens ({yes}, {no})")
    return y, n


def storyboard(video: np.ndarray, frames: int) -> Any:
    """``frames`` frames sampled evenly (first and last included) tiled in reading order into one PIL image,
    ``ceil(sqrt(n))`` columns.

    Example:
        >>> import numpy as np
        >>> storyboard(np.zeros((9, 10, 20, 3), np.float32), 4).size   # 2 x 2 tiles of 20 x 10
        (40, 20)
    """
    from PIL import Image

    video = check_video(video)
    n = min(int(frames), video.shape[0])
    index = np.unique(np.linspace(0, video.shape[0] - 1, n).round().astype(int))
    cols = math.ceil(math.sqrt(len(index)))
    rows = math.ceil(len(index) / cols)
    _, h, w, _ = video.shape
    board = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for k, i in enumerate(index):
        r, c = divmod(k, cols)
        board[r * h : (r + 1) * h, c * w : (c + 1) * w] = (np.clip(video[i], 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(board)


#: the default scorers, by name, in the order the results list them
SCORERS = ("alignment", "alignment_change", "subject_consistency", "background_consistency", "motion", "vlm_judge")


def default_scorers(clip: Any = None, vlm: str | os.PathLike | None = None, *, motion_scale: float = 0.02,
                    change_scale: float = 0.02, vlm_frames: int = 4, vlm_dtype: torch.dtype | None = None,
                    vlm_device: str | None = None, dino: Any = None, raft: Any = None) -> list[Scorer]:
    """All six scorers of `SCORERS`: CLIP ones on `clip` (an `fglens.anchors.Clip`, `ClipFeatures` or other
    `Features`; None: they are `Missing`), the judge on the model folder `vlm` (None: `Missing`); then, when given,
    VBench's DINOv2 subject consistency on `dino` and RAFT dynamic degree on `raft` (models or local paths,
    `fglens.eval.vbench`)."""
    features = ClipFeatures(clip) if clip is not None and not hasattr(clip, "patches") else clip
    scorers: list[Scorer] = [
        TextAlignment(features), AlignmentChange(features, scale=change_scale), SubjectConsistency(features),
        BackgroundConsistency(features), MotionMagnitude(scale=motion_scale),
        VLMJudge(vlm, frames=vlm_frames, dtype=vlm_dtype, device=vlm_device),
    ]
    if dino is not None or raft is not None:
        from .vbench import DinoSubjectConsistency, RaftDynamicDegree

        if dino is not None:
            scorers.append(DinoSubjectConsistency(dino))
        if raft is not None:
            scorers.append(RaftDynamicDegree(raft))
    return scorers
