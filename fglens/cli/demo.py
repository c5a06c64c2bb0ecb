"""``fglens demo``: record a run on the built-in tiny Wan I2V pipeline, print a per-layer table, write its figures;
then the trained toy world: word maps of a small trained model, the weak model's diagnosis against its planted
layers, and its instruction following with and without Focal Guidance."""

from __future__ import annotations

import argparse
import os
import shlex


def register(sub) -> None:
    parser = sub.add_parser(
        "demo", help="record a run on the built-in tiny Wan I2V pipeline, print a table, write its figures",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  fglens demo --out demo/    # writes demo/demo.zarr, prints a per-layer table, and writes\n"
        "                             # the run's figures to demo/figures/ (as `fglens plot` does)",
    )
    parser.add_argument("--out", default="demo", help="output folder (default: demo/)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--frames", "--num-frames", dest="frames", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-figures", action="store_true", help="skip the figures (demo/figures/)")
    parser.add_argument("--toy-items", type=int, default=10,
                        help="held-out toy-world items for the Focal Guidance comparison (default 10; 0 skips the "
                             "toy world)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import fglens as fg

    from .item import layer_table
    from .plot import write_figures

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    store = os.path.join(out, "demo.zarr")
    prompt = "a dog jumps over a fence"
    words = ["dog", "jumps", "fence"]
    pipe = fg.testing.tiny_wan_i2v_pipeline(num_layers=args.layers)
    image = fg.testing.reference_image(width=args.width, height=args.height)
    with fg.trace(pipe, record=fg.Record(words=words, maps=True), store=store) as run:
        pipe(
            image=image, prompt=prompt, height=args.height, width=args.width, num_frames=args.frames,
            num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed), output_type="np",
        )
    ds = run.dataset
    print(f"fglens demo: traced {type(pipe).__name__} (random weights) on {prompt!r}")
    grid = tuple(fg.store.decode_attrs(ds.attrs)["grid"])
    print(f"  steps {ds.sizes['step']}, layers {ds.sizes['layer']}, words {list(ds.word.values)}, "
          f"latent grid (frame, y, x) = {grid}")
    print()
    print(layer_table(ds))
    print("\n  (means over steps, words and frames of the cond branch)")
    print(f"\nwrote run {ds.attrs['run']} to {store}")
    print(f"open it with: fg.open_run({store!r}, run={ds.attrs['run']!r})")
    if not args.no_figures:
        figures = os.path.join(out, "figures")
        written = write_figures({ds.attrs["run"]: ds}, figures)
        again = f"fglens plot {shlex.quote(store)} --run {ds.attrs['run']} --out {shlex.quote(figures)}"
        print(f"\nwrote {len(written)} figures to {figures}/ (as `{again}`):")
        for path in written:
            print(f"  {path}")
    if args.toy_items > 0:
        from ..toy.demo import demo as toy_demo

        print("\n-- the trained toy world (fg.toy): a small trained I2V model, with ground truth --")
        toy_demo(os.path.join(out, "toy"), n=args.toy_items)
    return 0
