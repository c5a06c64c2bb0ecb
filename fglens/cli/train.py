"""``fglens train``: Focal Guidance learned into a LoRA on the weak layers (`fg.train.FocalLoRA`).

The teacher is a recipe (`fglens.interventions.recipe`), built per item from its image, prompt and words; a
recipe without ``layers`` takes the trained layers. ``--layers auto`` takes the semantic-weak layers of the runs in
``--diagnosis`` (`fg.find_weak_layers`).
"""

from __future__ import annotations

import argparse
import json

from .common import UsageError, fail, finite_float

EPILOG = """\
examples:
  fglens train suite/suite.jsonl --pipeline tiny-wan --layers 1 --out lora/ --steps 30 \\
      --teacher '{"type": "scale", "factor": 4, "layers": [1]}'
  fglens train suite/suite.jsonl --pipeline /models/Wan2.1-I2V-14B-480P-Diffusers --dtype bfloat16 \\
      --layers auto --diagnosis diag.zarr --out lora/ --steps 500 \\
      --teacher teacher.json     # {"type": "focal_guidance", "src": [30], "clip": {"model": "ViT-H-14", ...}}

  fglens train toysuite/toy.jsonl --pipeline toy-sink --layers 3 --loss anchor --anchor-weight 1 \
      --out lora/ --steps 200      # flow matching + the anchor term, on the toy world's videos and masks

  torchrun --nproc_per_node 4 -m fglens.cli train suite.jsonl --pipeline P --layers auto --diagnosis diag.zarr \
      --teacher teacher.json --batch 8 --out lora/     # 4 processes, 2 examples each per step

Writes OUT/pytorch_lora_weights.safetensors (pipe.load_lora_weights(OUT) loads it, no fglens needed),
OUT/manifest.json, OUT/curve.zarr, OUT/curve.png and OUT/checkpoint.pt; run it again to resume.
"""


def register(sub) -> None:
    parser = sub.add_parser(
        "train", help="learn Focal Guidance into a LoRA on the weak layers (light post-training)",
        description="Train a LoRA on the chosen layers' attention projections so that the model, without any "
        "edit, attends as the Focal Guidance teacher does along the teacher's own sampling trajectories "
        "(loss: distill), or with flow matching on videos (flow), plus a term raising each masked word's "
        "attention inside its region (anchor).", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
    )
    parser.add_argument("suite", metavar="SUITE",
                        help="an evaluation suite (suite.jsonl: images and prompts) or a toy world items file "
                        "(toy.jsonl: also videos and masks)")
    parser.add_argument("--pipeline", required=True,
                        help="a local diffusers pipeline folder or a built-in one (tiny-wan, toy-sink, ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the adapter, manifest, curve and checkpoint")
    parser.add_argument("--layers", required=True, metavar="auto|1,2",
                        help="layers to adapt: block indices or canonical names, or auto (the weak layers of "
                        "--diagnosis)")
    parser.add_argument("--diagnosis", default=None, metavar="STORE",
                        help="a store of recorded runs; --layers auto takes their semantic-weak layers")
    parser.add_argument("--loss", default="distill", choices=("distill", "flow", "anchor"),
                        help="distill (default: images and prompts), flow (needs a video per item) or anchor "
                        "(flow + the anchor term: needs a video and masks per item)")
    parser.add_argument("--anchor-weight", type=finite_float, default=None, metavar="W",
                        help="--loss anchor: the anchor term's weight, >= 0 (default 1)")
    parser.add_argument("--anchor-form", choices=("mass", "map"), default=None,
                        help="--loss anchor: mass (default: raise the word's share inside its region) or map (raise "
                        "the share of the word's map inside its region, whatever its total; docs/concepts.md)")
    parser.add_argument("--teacher", default=None, metavar="JSON",
                        help="the Focal Guidance recipe the student learns (a JSON object or a file holding one)")
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps (default: 500)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default: 8)")
    parser.add_argument("--alpha", type=finite_float, default=None, help="LoRA alpha (default: the rank)")
    parser.add_argument("--lr", type=finite_float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    parser.add_argument("--batch", type=int, default=1,
                        help="examples per optimiser step, shared among torchrun / accelerate launch processes "
                        "(default: 1)")
    parser.add_argument("--projections", default=None, metavar="to_q,to_k",
                        help="projections to adapt (default: the text/joint attention's q and k, and add_k)")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-steps", type=int, default=None,
                        help="the teacher's denoising steps (default: the pipeline's)")
    parser.add_argument("--guidance-scale", type=finite_float, default=None)
    parser.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                        help="the dtype the pipeline is loaded in (the adapter trains in float32)")
    parser.add_argument("--autocast", default=None, choices=("bfloat16", "float32"),
                        help="mixed precision: the training forwards under torch.autocast to bfloat16")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute each transformer block in the backward pass (less memory)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--no-resume", action="store_true", help="start again even if OUT/checkpoint.pt exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _layers(args: argparse.Namespace) -> list[str | int]:
    if args.layers == "auto":
        if args.diagnosis is None:
            raise UsageError("--layers auto needs --diagnosis STORE (recorded runs to find the weak layers in)")
        import fglens as fg

        weak = fg.find_weak_layers(fg.open_runs(args.diagnosis))
        if not weak.weak:
            raise UsageError(f"the runs in {args.diagnosis} show no semantic-weak layer; give --layers")
        return list(weak.weak)
    return [int(x) if x.strip().lstrip("-").isdigit() else x.strip() for x in args.layers.split(",") if x.strip()]


def _teacher(args: argparse.Namespace, layers: list) -> dict | None:
    if args.loss != "distill":
        if args.teacher is not None:
            raise UsageError(f"--loss {args.loss} takes no --teacher (only distill learns from one)")
        return None
    if args.teacher is None:
        raise UsageError("--loss distill needs --teacher: the Focal Guidance recipe to learn, e.g. "
                         "'{\"type\": \"focal_guidance\", \"src\": [30], \"clip\": \"tiny\"}'")
    from pathlib import Path

    inline = args.teacher.lstrip().startswith(("{", "[", '"'))
    if not inline and not Path(args.teacher).is_file():
        raise UsageError(f"--teacher {args.teacher!r} is neither a JSON object nor a file holding one")
    text = args.teacher if inline else Path(args.teacher).read_text()
    try:
        recipe = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--teacher is not a JSON object: {exc}") from None
    if not isinstance(recipe, dict):
        raise UsageError("--teacher must be a JSON object (a recipe)")
    recipe.setdefault("layers", layers)
    return recipe


def run(args: argparse.Namespace) -> int:
    try:
        layers = _layers(args)
        teacher = _teacher(args, layers)
        for flag, value in (("--anchor-weight", args.anchor_weight), ("--anchor-form", args.anchor_form)):
            if value is not None and args.loss != "anchor":
                raise UsageError(f"{flag} is for --loss anchor; --loss {args.loss} has no anchor term")
        import fglens as fg
        from fglens.pipelines import load_pipeline

        call = {k: v for k, v in (("steps", args.sample_steps), ("guidance_scale", args.guidance_scale))
                if v is not None}
        job = fg.train.FocalLoRA(
            layers=layers, rank=args.rank, loss=args.loss, teacher=teacher, alpha=args.alpha, lr=args.lr,
            projections=None if args.projections is None else [p.strip() for p in args.projections.split(",")],
            call=call, checkpoint_every=args.checkpoint_every, seed=args.seed, batch=args.batch,
            anchor_weight=1.0 if args.anchor_weight is None else args.anchor_weight, autocast=args.autocast,
            gradient_checkpointing=args.gradient_checkpointing, anchor_form=args.anchor_form or "mass")
        data = fg.train.items(args.suite)
        device = args.device
        if device is None:  # under torchrun: this process's GPU
            import torch

            from fglens.sweep import rank_info

            device = f"cuda:{rank_info()[2]}" if torch.cuda.is_available() else None
        pipe = load_pipeline(args.pipeline, dtype=args.dtype, device=device)
        out = job.fit(pipe, data, steps=args.steps, out=args.out, resume=not args.no_resume,
                      progress=not args.quiet)
    except (UsageError, ValueError, KeyError, FileNotFoundError, TypeError) as exc:
        return fail("train", exc)
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"fglens train: {args.steps} steps on {manifest['data']['items']} items, layers {manifest['layers']}; "
          f"adapter in {out} (pipe.load_lora_weights({str(out)!r}, adapter_name='focal'))")
    return 0
