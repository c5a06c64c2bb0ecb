"""Generated parts of the documentation: the site tables of each architecture and the API reference.

The tables are made from the adapters themselves (a tiny model of each class is built and its `sites()`
listed), and the API reference from the public objects' signatures and docstrings, so the docs cannot drift
from the code: ``tests/test_docgen.py`` fails when a generated block in ``docs/`` is out of date, and

    python -m fglens.docgen          # rewrites the generated blocks in docs/

brings them up to date. A generated block sits between ``<!-- generated:NAME -->`` and
``<!-- end generated:NAME -->`` markers; the text around it is written by hand.

Example:
    >>> from fglens.docgen import site_table
    >>> print(site_table("wan").splitlines()[2])
    | `blocks.{i}.self` | `blocks.{i}` | `blocks.{i}.attn1` | 0 | self | video tokens (3-D self-attention) |
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .adapters import ADAPTERS

KEYS = {
    "self": "video tokens (3-D self-attention)",
    "text": "text tokens",
    "image": "image-encoder tokens",
    "joint": "video and context tokens in one softmax (order: see below)",
    "audio": "audio tokens (video queries; see below)",
}


def _tiny_transformers() -> dict[str, Callable[[], Any]]:
    """Each adapter's small transformer for its site table, by the adapter's short name (`Adapter.tiny_transformer`)."""
    from . import testing

    return {a.short: (lambda a=a: getattr(testing, a.tiny_transformer[0])(**a.tiny_transformer[1]))
            for a in ADAPTERS if a.tiny_transformer[0]}


def site_table(family: str) -> str:
    """The markdown table of the attention sites of one architecture, from its adapter.

    Rows are the site patterns (``{i}`` = block index), in the order the adapter lists them for a block.
    """
    from .adapters import adapter_for

    builders = _tiny_transformers()
    if family not in builders:
        raise ValueError(f"family must be one of {sorted(builders)}; got {family!r}")
    adapter = adapter_for(builders[family]())
    rows: dict[str, tuple[str, ...]] = {}
    for site in adapter.sites():
        def pattern(text: str) -> str:
            return re.sub(r"\.\d+(?=\.|$)", ".{i}", text)

        key = pattern(site.name)
        rows.setdefault(key, (f"`{key}`", f"`{pattern(site.layer)}`", f"`{pattern(site.module)}`", str(site.call),
                              site.kind, KEYS[site.kind]))
    head = "| site | layer | module | kernel call | kind | keys |\n|---|---|---|---|---|---|"
    return "\n".join([head, *("| " + " | ".join(r) + " |" for r in rows.values())])


#: public objects listed in docs/api.md, by section
API: dict[str, list[str]] = {
    "Tracing": ["fglens.trace", "fglens.Trace", "fglens.Record"],
    "Reading runs": ["fglens.open_run", "fglens.open_runs", "fglens.store.list_runs", "fglens.store.run_table",
                     "fglens.store.decode_attrs", "fglens.store.verify_run", "fglens.store.Verdict",
                     "fglens.store.UnreadableRun", "fglens.store.DamagedRun"],
    "Diagnosis": ["fglens.find_weak_layers", "fglens.WeakLayers"],
    "Interventions": ["fglens.Where", "fglens.AnchorMask", "fglens.CacheTransfer", "fglens.FocalGuidance",
                      "fglens.Scale", "fglens.Ablate", "fglens.compose", "fglens.Intervention",
                      "fglens.interventions.recipe.from_recipe"],
    "Anchors (CLIP)": ["fglens.anchors.Clip", "fglens.anchors.region_masks", "fglens.anchors.latent_grid",
                       "fglens.anchors.threshold", "fglens.anchors.visible_words", "fglens.anchors.word_presence"],
    "Post-training": ["fglens.train.FocalLoRA", "fglens.train.FocalLoRA.fit", "fglens.train.items",
                      "fglens.train.TrainItem", "fglens.train.lora_targets", "fglens.train.add_lora",
                      "fglens.train.save_lora", "fglens.train.TextProbe", "fglens.train.text_distribution",
                      "fglens.train.log_text_distribution", "fglens.train.anchor_term",
                      "fglens.train.region_weights", "fglens.train.write_curve"],
    "Statistics": ["fglens.stats.word_maps", "fglens.stats.text_share", "fglens.stats.morans_i",
                   "fglens.stats.normalized_entropy", "fglens.stats.cosine_similarity", "fglens.stats.frame_mean"],
    "Figures": ["fglens.plot.layer_profile", "fglens.plot.layer_step_heatmap", "fglens.plot.word_maps",
                "fglens.plot.condition_balance", "fglens.plot.compare", "fglens.plot.anchor"],
    "Viewer": ["fglens.view", "fglens.view.export.export_html", "fglens.view.server.ViewServer"],
    "Pipelines": ["fglens.pipelines.load_pipeline", "fglens.pipelines.call_kwargs", "fglens.pipelines.save_video",
                  "fglens.jobs.CallOptions", "fglens.jobs.run_item"],
    "Sweeps and evaluation": ["fglens.sweep.run_sweep", "fglens.eval", "fglens.eval.vbench2.import_vbench2"],
    "nnsight": ["fglens.nnsight.probes"],
    "toy world": ["fglens.toy.pipeline", "fglens.toy.planted_layers", "fglens.toy.suite", "fglens.toy.Item",
                  "fglens.toy.score", "fglens.toy.ToyScorer", "fglens.toy.write_eval_suite",
                  "fglens.toy.train.TrainConfig", "fglens.toy.train.train", "fglens.toy.clip"],
}


def _resolve(path: str) -> Any:
    import importlib

    parts = path.split(".")
    obj: Any = importlib.import_module(parts[0])
    for i, attr in enumerate(parts[1:], start=2):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            try:  # a submodule its package does not import
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError as exc:
                raise LookupError(f"the API reference lists {path}, which does not exist: {exc}") from exc
    return obj


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def _signature(obj: Any) -> str:
    """``(a: int, b: str = 'x') -> T`` with annotations as written (``from __future__ import annotations`` keeps
    them as strings, which `inspect` would quote)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""

    def text(annotation: Any) -> str:
        return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)

    params = []
    for p in sig.parameters.values():
        piece = p.name if p.kind is not p.VAR_POSITIONAL and p.kind is not p.VAR_KEYWORD else (
            ("*" if p.kind is p.VAR_POSITIONAL else "**") + p.name)
        if p.annotation is not p.empty:
            piece += f": {text(p.annotation)}"
        if p.default is not p.empty:
            piece += f" = {p.default!r}"
        params.append(piece)
    kinds = [p.kind for p in sig.parameters.values()]
    if inspect.Parameter.KEYWORD_ONLY in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds:
        params.insert(kinds.index(inspect.Parameter.KEYWORD_ONLY), "*")
    out = f"({', '.join(params)})"
    if sig.return_annotation is not sig.empty and sig.return_annotation not in (None, "None"):
        out += f" -> {text(sig.return_annotation)}"
    return re.sub(r"\s+", " ", out)


def api_reference() -> str:
    """The markdown API reference: for each public object its signature and the first paragraph of its
    docstring (the full docstring, with examples, is one `help()` away)."""
    out: list[str] = []
    for section, paths in API.items():
        out.append(f"### {section}\n")
        for path in paths:
            obj = _resolve(path)
            name = path.replace("fglens.", "fg.", 1)
            kind = "module" if inspect.ismodule(obj) else "class" if inspect.isclass(obj) else "function"
            sig = "" if kind == "module" else _signature(obj)
            out.append(f"- **`{name}{sig}`** ({kind}) — {_summary(obj)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


#: generated blocks: file in docs/ -> {block name: producer}
def statistics_table() -> str:
    """The markdown table of every variable a run can hold, from `fglens.stats.table` (what the runs store)."""
    from .stats.table import STATISTICS

    sites = {"text": "Wan text", "image": "Wan image", "self": "Wan self", "joint": "joint", "audio": "LTX-2 audio"}
    rows = ["| variable | dims after `branch, step, layer` | sites | definition | recorded |", "|---|---|---|---|---|"]
    for s in STATISTICS.values():
        how = ("by default" if s.default else "opt-in: `Record(stats=[...])`") if s.recordable else (
            f"`Record(maps=[{s.name!r}])`" + (" or `maps=True`" if s.name == "word_map" else ""))
        where = ", ".join(sites[k] for k in sorted(s.kinds))
        definition = s.definition.replace("|", "\\|")  # a bar inside a table cell
        rows.append(f"| `{s.name}` | {', '.join(s.dims)} | {where} | {definition} | {how} |")
    return "\n".join(rows)


def models_table() -> str:
    """The markdown table of the supported models, from the adapters: transformer classes, the pipelines traced,
    the built-in tiny pipelines, the site page, and the pipelines refused with their reasons."""
    rows = ["| family | transformer | pipelines traced | tiny pipelines | sites | refused (why) |",
            "|---|---|---|---|---|---|"]
    for a in ADAPTERS:
        def names(items) -> str:
            return ", ".join(f"`{x}`" for x in items) or "—"

        sites = f"[sites-{a.short}.md](sites-{a.short}.md)" if a.tiny_transformer[0] else "—"
        by_reason: dict[str, list[str]] = {}  # pipelines refused for the same reason: listed once, together
        for cls, why in a.refused_pipelines.items():
            by_reason.setdefault(why, []).append(cls)
        refused = "<br>".join(f"{names(classes)}: {why}" for why, classes in by_reason.items()) or "—"
        rows.append(f"| {a.family} | {names(a.model_classes)} | {names(a.pipeline_classes)} | "
                    f"{names(t.name for t in a.tiny_pipelines)} | {sites} | {refused.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


BLOCKS: dict[str, dict[str, Callable[[], str]]] = {
    # one page per adapter with a tiny transformer: ``sites-<short>.md``
    **{f"sites-{a.short}.md": {"sites": lambda short=a.short: site_table(short)}
       for a in ADAPTERS if a.tiny_transformer[0]},
    "api.md": {"api": api_reference},
    "user-guide.md": {"models": models_table},
    "concepts.md": {"statistics": statistics_table},
}


def render(text: str, blocks: dict[str, Callable[[], str]], *, file: str = "") -> str:
    """`text` with each generated block replaced by its current content (markers required)."""
    for name, produce in blocks.items():
        begin, end = f"<!-- generated:{name} -->", f"<!-- end generated:{name} -->"
        if begin not in text or end not in text:
            raise ValueError(f"{file or 'the text'} has no {begin} ... {end} block")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{produce().rstrip()}\n{end}{tail}"
    return text


def update(docs: str | Path = "docs", check: bool = False) -> list[str]:
    """Rewrite the generated blocks of `docs` (or, with `check`, only list the files that are out of date)."""
    stale = []
    for file, blocks in BLOCKS.items():
        path = Path(docs) / file
        text = path.read_text()
        new = render(text, blocks, file=str(path))
        if new != text:
            stale.append(str(path))
            if not check:
                path.write_text(new)
    return stale


if __name__ == "__main__":
    changed = update(sys.argv[1] if len(sys.argv) > 1 else "docs")
    print("updated: " + ", ".join(changed) if changed else "docs are up to date")
