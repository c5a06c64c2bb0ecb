"""``fglens toy``: train the toy world's pipelines, measure them, and ship their weights.

Importing this module is cheap (no torch): heavy imports happen inside `run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """\
examples:
  fglens toy train --variant base --out toyrun/base              # about 30-60 min on 2 CPU cores; resumable
  fglens toy train --variant weak --out toyrun/weak --vae-from toyrun/base/vae \\
      --dit-from toyrun/base/pipeline --dit-steps 800
  fglens toy ship --base toyrun/base --weak toyrun/weak          # copy into the package, write checksums
  fglens toy report --out toy/ --n 40                            # every number and figure of docs/toy-world.md

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
                       ("dit-batch", int), ("dit-lr", float), ("planted-p", float)):
        t.add_argument(f"--{name}", type=kind, help="default: as fglens.toy.train.TrainConfig")
    t.add_argument("--planted", help="comma-separated block indices of the weak variant (default 3,4)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    r = toy.add_parser("report", help="measure the toy pipelines and write docs/toy-world.md's numbers")
    r.add_argument("--out", required=True, help="folder for report.md, results.json, rows.csv and figures")
    r.add_argument("--base", help="a train output folder for the base variant (default: shipped weights)")
    r.add_argument("--weak", help="a train output folder for the weak variant (default: shipped weights)")
    r.add_argument("--n", type=int, default=40, help="test items (default 40)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quick", action="store_true", help="skip the strength/alpha sweep")
    s = toy.add_parser("ship", help="copy trained runs into the package and write manifest.json")
    s.add_argument("--base", required=True)
    s.add_argument("--weak", required=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .diagnose import fail

    try:
        if args.toy_command == "train":
            return _train(args)
        if args.toy_command == "ship":
            from ..toy.load import ship

            digests = ship({"base": args.base, "weak": args.weak})
            print(f"shipped {len(digests)} files into fglens/toy/weights; manifest.json written")
            return 0
        from ..toy.report import report

        report(Path(args.out), base=args.base, weak=args.weak, n=args.n, seed=args.seed, sweep=not args.quick)
        return 0
    except (ValueError, FileNotFoundError) as exc:
        return fail("toy", exc)


def _train(args: argparse.Namespace) -> int:
    from ..toy.train import TrainConfig, train

    fields = {k: getattr(args, k) for k in ("vae_steps", "vae_batch", "pool", "dit_steps", "dit_batch", "dit_lr",
                                            "planted_p") if getattr(args, k) is not None}
    if args.planted:
        fields["planted"] = tuple(int(v) for v in args.planted.split(","))
    cfg = TrainConfig(variant=args.variant, seed=args.seed, **fields)
    info = train(cfg, args.out, vae_from=args.vae_from, dit_from=args.dit_from, progress=not args.quiet)
    summary = {k: info[k] for k in ("variant", "planted_layers", "seconds")}
    summary["final_dit_loss"] = sum(info["dit_loss"][-50:]) / max(1, len(info["dit_loss"][-50:]))
    json.dump(summary, sys.stdout)
    print(f"\npipeline: {Path(args.out) / 'pipeline'}")
    return 0
