"""``fglens toy``: train the toy world's pipelines, measure them, and ship their weights.

Importing this module is cheap (no torch): heavy imports happen inside `run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .item import SCORE_CHOICES

EPILOG = """\
examples:
  fglens toy train --variant base --out toyrun/base              # about 30-60 min on 2 CPU cores; resumable
  fglens toy train --variant weak --out toyrun/weak --vae-from toyrun/base/vae \\
      --dit-from toyrun/base/pipeline --dit-steps 800
  fglens toy ship --base toyrun/base --weak toyrun/weak          # copy into the package, write checksums
  fglens toy report --out toy/ --n 40                            # every number and figure of docs/toy-world.md
  fglens toy losses base=toyrun/base weak=toyrun/weak --out toy/loss.png   # the training curves
  fglens toy train-clip --out toyrun/clip                        # the tiny CLIP of the toy world (CLIP anchors)
  fglens toy ship --clip toyrun/clip                             # ship it (the pipelines' files stay as they are)
  fglens toy posttrain --out toy/posttrain --loss distill        # none / FG / LoRA / both (docs/post-training.md)
  fglens toy compare base new=toyrun/new --n 60 --seeds 1,2,3    # paired: does a new run follow more? (≥ 180 items)

`fglens toy train` resumes from the checkpoints in --out; its pipeline/ folder works as --pipeline in every
command. `fglens toy report` uses the shipped weights unless --base/--weak name train outputs.
"""


def register(sub) -> None:
    p = sub.add_parser("toy", help="the trained toy world: train, report, ship", description=__doc__.splitlines()[0],
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    toy = p.add_subparsers(dest="toy_command", required=True)
    t = toy.add_parser("train", help="train a toy pipeline (resumable)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--variant", choices=("base", "weak"), default="base")
    t.add_argument("--out", required=True, help="run folder: checkpoints, vae/, pool.pt, pipeline/, loss.csv")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--vae-from", help="reuse a trained VAE folder (<base run>/vae) instead of training one")
    t.add_argument("--dit-from", help="start the DiT from a trained pipeline folder (<base run>/pipeline)")
    for name, kind in (("vae-steps", int), ("vae-batch", int), ("pool", int), ("dit-steps", int),
                       ("dit-batch", int), ("dit-lr", float), ("cooldown", int), ("planted-p", float),
                       ("dit-object-weight", float), ("dit-frame-weight", float), ("text-lr", float),
                       ("dit-word-map-weight", float),
                       ("dit-layers", int), ("dit-heads", int),
                       ("dit-head-dim", int), ("dit-ffn", int)):
        t.add_argument(f"--{name}", type=kind, help="default: as fglens.toy.train.TrainConfig")
    t.add_argument("--dit-word-map-kind", choices=("map", "token", "both"),
                   help="with --dit-word-map-weight: teach each word's map over the clip (map, default), each "
                        "object token's attention to its word (token), or both; fglens.toy.wordmaps")
    t.add_argument("--dit-grow", action="store_true",
                   help="--dit-from a shallower DiT of the same width: its blocks spread over --dit-layers, the new "
                        "blocks starting as identities (fglens.toy.train.grow_depth)")
    t.add_argument("--dit-oversample", type=_kind_weights, metavar="KIND=W[,KIND=W]",
                   help="draw pool items of these instruction kinds W times as often into the DiT's batches (kinds: "
                        "move, recolour, grow, shrink, pan, zoom, approach, swap, still; e.g. approach=4)")
    t.add_argument("--device", help="where to train: cpu (default) or cuda[:N]; the pipeline is saved for the CPU")
    t.add_argument("--planted", help="comma-separated block indices of the weak variant (default 3,4)")
    t.add_argument("--no-reinit", action="store_true",
                   help="weak variant: keep the planted blocks' text keys instead of re-initialising them")
    t.add_argument("--planted-only", action="store_true",
                   help="weak variant: train only the planted blocks; every other weight stays the base model's")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    r = toy.add_parser("report", help="measure the toy pipelines and write docs/toy-world.md's numbers")
    r.add_argument("--out", required=True, help="folder for report.md, results.json, rows.csv and figures")
    r.add_argument("--base", help="a train output folder for the base variant (default: shipped weights)")
    r.add_argument("--weak", help="a train output folder for the weak variant (default: shipped weights)")
    r.add_argument("--weak-variant", default="weak", choices=("weak", "sink"),
                   help="the planted variant measured as weak: weak (trained) or sink (derived; default weak)")
    r.add_argument("--n", type=int, default=40, help="test items (default 40)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quick", action="store_true", help="skip the strength/alpha sweep")
    r.add_argument("--n-sweep", type=int, help="items of the strength/alpha sweep (default: all --n)")
    r.add_argument("--strengths", type=_floats, default=(1.0, 2.0, 4.0),
                   help="anchor strengths of the sweep, comma-separated (default 1,2,4)")
    r.add_argument("--alphas", type=_floats, default=(0.25, 0.5, 0.75),
                   help="cache weights of the sweep, comma-separated, in [0, 1] (default 0.25,0.5,0.75)")
    r.add_argument("--fg-score", default="similarity", choices=SCORE_CHOICES,
                   help="the diagnosis score whose weak layers Focal Guidance acts on (default similarity; "
                        "morans_i names the sink's planted layers)")
    cm = toy.add_parser("compare", help="toy pipelines on the same items and noise: follows, paired differences")
    cm.add_argument("pipelines", nargs="+", metavar="NAME=SOURCE",
                    help="SOURCE: a shipped variant (base, weak, sink) or a `fglens toy train` folder (or its "
                         "pipeline/); a bare variant names itself; the first is the reference of the differences")
    cm.add_argument("--split", default="test", choices=("test", "train"))
    cm.add_argument("--n", type=int, default=60, help="items per suite seed (default 60)")
    cm.add_argument("--seeds", type=_ints, default=(0,), help="suite seeds, comma-separated (default 0)")
    cm.add_argument("--sample-seed", type=int, default=0, help="the noise seed of every item (default 0)")
    cm.add_argument("--guidance", type=float, metavar="G",
                    help="classifier-free guidance scale of every sample (default: fg.toy.CALL's, 4)")
    cm.add_argument("--steps", type=int, metavar="N",
                    help="denoising steps of every sample (default: fg.toy.CALL's, 20)")
    cm.add_argument("--device", default="cpu", help="where to sample: cpu (default) or cuda[:N]")
    cm.add_argument("--out", help="folder for compare.json (rows included) and compare.md")
    cm.add_argument("--quiet", action="store_true", help="no progress bars")
    c = toy.add_parser("train-clip", help="train the toy world's tiny CLIP (resumable) and measure it")
    c.add_argument("--out", required=True, help="run folder: pool.pt, clip.pt, open_clip_config.json, weights")
    c.add_argument("--steps", type=int, default=450)
    c.add_argument("--batch", type=int, default=48)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--pool", type=int, help="rendered train frames (default: as fglens.toy.clip.ClipTrainConfig)")
    c.add_argument("--lr", type=float, help="default: as fglens.toy.clip.ClipTrainConfig")
    c.add_argument("--cooldown", type=int, help="default: as fglens.toy.clip.ClipTrainConfig")
    c.add_argument("--pool-type", choices=("avg", "tok"),
                   help="image embedding: the class token (default) or the mean of the patches")
    c.add_argument("--global-weight", type=float, help="weight of the pooled embedding's loss (default 1)")
    c.add_argument("--patch-weight", type=float, help="weight of the patches' (multiple-instance) loss (default 1)")
    c.add_argument("--measure", type=int, default=100, metavar="N",
                   help="measure localisation on N test items after training, into clip.json (0: skip)")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    lo = toy.add_parser("losses", help="draw the training losses of train runs (loss.csv) into one figure")
    lo.add_argument("runs", nargs="+", metavar="NAME=RUN", help="e.g. base=toyrun/base weak=toyrun/weak")
    lo.add_argument("--out", required=True, help="the figure file (e.g. docs/toy/loss.png)")
    s = toy.add_parser("ship", help="copy trained runs into the package and write manifest.json")
    s.add_argument("--base", help="base variant run (with --weak)")
    s.add_argument("--weak", help="weak variant run (with --base)")
    s.add_argument("--clip", help="a `fglens toy train-clip` output folder: ship the tiny CLIP")
    pt = toy.add_parser("posttrain", help="none / Focal Guidance / post-trained LoRA / both on the same items")
    pt.add_argument("--out", required=True, help="folder for the LoRA, four_way.json and four_way.md")
    pt.add_argument("--variant", default="sink", choices=("base", "weak", "sink"))
    pt.add_argument("--loss", default="distill", choices=("distill", "flow", "anchor"))
    pt.add_argument("--anchor-weight", type=float, default=1.0, help="--loss anchor: the anchor term's weight")
    pt.add_argument("--anchor-form", choices=("mass", "map"), default="mass",
                    help="--loss anchor: the anchor term's form (docs/concepts.md)")
    pt.add_argument("--n", type=int, default=60, help="test items (default 60)")
    pt.add_argument("--n-train", type=int, default=64, help="train-split items the LoRA sees (default 64)")
    pt.add_argument("--steps", type=int, default=500, help="optimiser steps (default 500)")
    pt.add_argument("--lr", type=float, default=2e-3)
    pt.add_argument("--rank", type=int, default=8)
    pt.add_argument("--seed", type=int, default=0, help="items and sampling noise (default 0)")
    pt.add_argument("--train-seed", type=int, default=None, help="the LoRA job's own draws (default: --seed)")
    pt.add_argument("--sample-steps", type=int, default=None, help="denoising steps (default: the toy CALL's 20)")
    pt.add_argument("--layers", type=_ints, default=None, metavar="3",
                    help="blocks the LoRA and Focal Guidance act on, comma-separated indices (default 3: the "
                         "third version's sink diagnosis)")
    pt.add_argument("--sources", type=_ints, default=None, metavar="0,2,1",
                    help="the cache transfer's source blocks (default 0,2,1)")
    pt.add_argument("--strength", type=float, default=2.0, help="Focal Guidance's anchor strength (default 2)")
    pt.add_argument("--alpha", type=float, default=0.5, help="Focal Guidance's cache weight (default 0.5)")
    pt.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .common import fail

    try:
        if args.toy_command == "train":
            return _train(args)
        if args.toy_command == "train-clip":
            return _train_clip(args)
        if args.toy_command == "ship":
            return _ship(args)
        if args.toy_command == "losses":
            return _losses(args)
        if args.toy_command == "compare":
            return _compare(args)
        if args.toy_command == "posttrain":
            from ..toy.posttrain import SINK_LAYERS, SINK_SOURCES, four_way, table

            sites = {"layers": SINK_LAYERS if args.layers is None else tuple(f"blocks.{i}" for i in args.layers),
                     "sources": SINK_SOURCES if args.sources is None else tuple(f"blocks.{i}" for i in args.sources)}
            res = four_way(args.out, variant=args.variant, loss=args.loss, n=args.n, n_train=args.n_train,
                           steps=args.steps, lr=args.lr, rank=args.rank, seed=args.seed,
                           sample_steps=args.sample_steps, train_seed=args.train_seed,
                           anchor_weight=args.anchor_weight, anchor_form=args.anchor_form, **sites,
                           strength=args.strength, alpha=args.alpha, progress=not args.quiet)
            print(table(res))
            return 0
        from ..toy.report import report

        report(Path(args.out), base=args.base, weak=args.weak, n=args.n, seed=args.seed, sweep=not args.quick,
               n_sweep=args.n_sweep, strengths=args.strengths, alphas=args.alphas, weak_variant=args.weak_variant,
               fg_score=args.fg_score)
        return 0
    except (ValueError, FileNotFoundError) as exc:
        return fail("toy", exc)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 8,16,32; got {text!r}") from None


def _kind_weights(text: str) -> tuple[tuple[str, float], ...]:
    try:
        pairs = [part.split("=") for part in text.split(",")]
        return tuple((kind.strip(), float(weight)) for kind, weight in pairs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KIND=WEIGHT pairs, comma-separated, such as approach=4,swap=2; "
                                         f"got {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2; got {text!r}") from None


def _toy_pipeline(source: str):
    """A shipped variant by name, or a train output folder (the run folder or its pipeline/)."""
    from ..toy import pipeline
    from ..toy.load import VARIANTS, _pipeline_folder

    if source in VARIANTS:
        return pipeline(source)
    try:
        folder = _pipeline_folder(source)
    except FileNotFoundError:
        raise FileNotFoundError(f"{source!r} is neither a shipped variant ({', '.join(VARIANTS)}) nor a pipeline "
                                "folder (a `fglens toy train` output or its pipeline/)") from None
    return pipeline(path=folder)


def _compare(args: argparse.Namespace) -> int:
    from ..toy.compare import compare, table
    from ..toy.train import torch_device

    specs = [spec.split("=", 1) if "=" in spec else [spec, spec] for spec in args.pipelines]
    names = [name for name, _ in specs]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"pipeline names must be distinct and non-empty; got {names}")
    device = torch_device(args.device)
    pipes = {name: _toy_pipeline(source).to(device) for name, source in specs}
    call = {} if args.guidance is None else {"guidance_scale": args.guidance}
    if args.steps is not None:
        call["num_inference_steps"] = args.steps
    res = compare(pipes, split=args.split, n=args.n, seeds=args.seeds, sample_seed=args.sample_seed,
                  progress=not args.quiet, **call)
    text = table(res)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps({**res, "sources": dict(specs)}, indent=1, default=float) + "\n")
        (out / "compare.md").write_text(text)
        print(f"wrote {out / 'compare.json'} and {out / 'compare.md'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..toy.train import TrainConfig, train

    names = ("vae_steps", "vae_batch", "pool", "dit_steps", "dit_batch", "dit_lr", "cooldown", "planted_p",
             "dit_object_weight", "dit_frame_weight", "text_lr", "dit_word_map_weight", "dit_word_map_kind",
             "dit_layers", "dit_heads", "dit_head_dim", "dit_ffn",
             "device", "dit_oversample")
    fields = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.planted:
        fields["planted"] = tuple(int(v) for v in args.planted.split(","))
    if args.no_reinit:
        fields["planted_reinit"] = False
    if args.planted_only:
        fields["planted_only"] = True
    if args.dit_grow:
        fields["dit_grow"] = True
    cfg = TrainConfig(variant=args.variant, seed=args.seed, **fields)
    info = train(cfg, args.out, vae_from=args.vae_from, dit_from=args.dit_from, progress=not args.quiet)
    summary = {k: info[k] for k in ("variant", "planted_layers", "seconds")}
    summary["final_dit_loss"] = sum(info["dit_loss"][-50:]) / max(1, len(info["dit_loss"][-50:]))
    json.dump(summary, sys.stdout)
    print(f"\npipeline: {Path(args.out) / 'pipeline'}")
    return 0


def _ship(args: argparse.Namespace) -> int:
    from ..toy.load import ship, ship_clip

    if (args.base is None) != (args.weak is None) or (args.base is None and args.clip is None):
        raise ValueError("fglens toy ship needs --base and --weak (the pipelines), --clip (the tiny CLIP), or all")
    if args.base is not None:
        digests = ship({"base": args.base, "weak": args.weak})
        print(f"shipped {len(digests)} files into fglens/toy/weights; manifest.json written")
    if args.clip is not None:
        digests = ship_clip(args.clip)
        print(f"shipped the tiny CLIP into fglens/toy/weights/clip; manifest.json lists {len(digests)} files")
    return 0


def _train_clip(args: argparse.Namespace) -> int:
    from ..toy.clip import clip, measure, train_clip

    options = {k: getattr(args, k) for k in ("pool", "lr", "cooldown", "pool_type", "global_weight", "patch_weight")
               if getattr(args, k) is not None}
    if args.measure < 0:
        raise ValueError(f"--measure must be >= 0, got {args.measure}")
    info = train_clip(args.out, steps=args.steps, batch=args.batch, seed=args.seed, progress=not args.quiet,
                      **options)
    summary = {k: info[k] for k in ("seconds", "cpu_seconds", "final_loss")}
    if args.measure:
        result = measure(clip(path=args.out), n=args.measure, seed=0)
        info_file = Path(args.out) / "clip.json"
        meta = json.loads(info_file.read_text())
        meta["measured"] = result
        info_file.write_text(json.dumps(meta, indent=1) + "\n")
        summary["measured"] = result
    json.dump(summary, sys.stdout, indent=1)
    print(f"\nmodel: {args.out} (fg.toy.clip(path=...), or fg.anchors.Clip('local-dir:{args.out}'))")
    return 0


def _losses(args: argparse.Namespace) -> int:
    from ..toy.report import loss_figure

    runs = {}
    for spec in args.runs:
        name, sep, run = spec.partition("=")
        if not sep or not name or not run:
            raise ValueError(f"{spec!r} is not NAME=RUN (e.g. base=toyrun/base)")
        if not (Path(run) / "loss.csv").is_file():
            raise FileNotFoundError(f"{run} has no loss.csv: not a finished `fglens toy train` run")
        runs[name] = run
    print(f"wrote {loss_figure(runs, args.out)}")
    return 0
