"""An open instruction-following evaluation for image-to-video: does an intervention make the video do what the
prompt says?

- `fglens.eval.suite`: the JSONL suite format (reference image, prompt, category, the instruction's words, yes/no
  questions), `load_suite`, and a built-in suite of synthetic drawings (`builtin_suite`), two items for each of
  the categories dynamic attribute, human motion, human interaction, object motion and camera motion.
- `fglens.eval.scorers`: text-video alignment over time and its change toward the target (open_clip), subject
  and background consistency with the reference frame, motion magnitude, and a VLM judge (a local
  vision-language model; absent, reported as missing, never faked). Each returns a score in [0, 1].
- `fglens.eval.runner`: `run_eval` generates each item with and without an intervention over the same seeds,
  records the runs into one store, caches the videos, scores them and writes the results Dataset.
- `fglens.eval.stats`: the total score (mean of the dimension scores), bootstrap intervals per category over
  items (seeds nested), paired differences; `fglens.eval.report`: a table and a figure per category.

The command line: ``fglens eval SUITE --pipeline PATH [--edit focal-guidance ...]`` (see docs/eval.md).

Example:
    >>> import tempfile
    >>> import fglens as fg
    >>> from fglens.eval import builtin_suite, run_eval
    >>> folder = tempfile.mkdtemp()
    >>> suite = builtin_suite(folder, width=48, height=32).select(ids=["car-drives-left"])
    >>> ev = run_eval(suite, "tiny-wan", folder + "/out", edit={"type": "scale", "factor": 2.0},
    ...               seeds=[0], steps=2)                            # no CLIP and no VLM: those are missing
    >>> ev.summary["diff"].sel(category="all", metric="motion").item() != 0.0
    True
    >>> import json
    >>> json.loads(ev.results.attrs["missing_scorers"])[:2]
    ['alignment', 'alignment_change']
"""

from .report import category_figure, write_report
from .runner import (
    CONDITIONS,
    Evaluation,
    Video,
    generate,
    load_video,
    open_results,
    open_summary,
    run_eval,
    score_videos,
    write_results,
)
from .scorers import (
    SCORERS,
    AlignmentChange,
    BackgroundConsistency,
    ClipFeatures,
    Missing,
    MotionMagnitude,
    SubjectConsistency,
    TextAlignment,
    VLMJudge,
    default_scorers,
)
from .stats import bootstrap_ci, category_table, paired_difference, summarize
from .suite import CATEGORIES, Item, Suite, builtin_suite, load_suite, save_suite, write_builtin_suite

__all__ = [
    "CATEGORIES", "CONDITIONS", "SCORERS", "AlignmentChange", "BackgroundConsistency", "ClipFeatures", "Evaluation",
    "Item", "Missing", "MotionMagnitude", "SubjectConsistency", "Suite", "TextAlignment", "VLMJudge", "Video",
    "bootstrap_ci", "builtin_suite", "category_figure", "category_table", "default_scorers", "generate",
    "load_suite", "load_video", "open_results", "open_summary", "paired_difference", "run_eval", "save_suite",
    "score_videos", "summarize", "write_builtin_suite", "write_report", "write_results",
]
