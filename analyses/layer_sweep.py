# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Cache-transfer sweep: which source layer repairs which destination?
#
# For every (source, destination) pair of layers, carry the source's text attention into the destination
# (`fg.CacheTransfer(src, dst, alpha)`, same step when the source comes first, else the previous step) and
# measure, against the same seed without the edit, how much the destination's word attention and the final
# frames move. The paper carries responsive layers into weak ones; this map shows which pairs matter.
#
# Tiny random-weight pipeline by default; `--pipeline PATH --image IMG --layers 10,12,14,30` on real weights
# (a full 40 × 40 sweep is 1,560 samples: pick layers).

# %%
import argparse
import os
import sys

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

import fglens as fg
from fglens.pipelines import call_kwargs, frames_of, load_pipeline

parser = argparse.ArgumentParser(description="Sweep CacheTransfer over source and destination layers.")
parser.add_argument("--pipeline", default="tiny-wan", help="a local diffusers pipeline folder, or tiny-wan / "
                    "tiny-hunyuan (default: tiny-wan)")
parser.add_argument("--image", default=None, help="reference image (default: the built-in one, tiny only)")
parser.add_argument("--prompt", default="a dog jumps over the red fence")
parser.add_argument("--words", default="dog,jumps")
parser.add_argument("--layers", default=None, help="comma-separated block indices to sweep (default: all)")
parser.add_argument("--alpha", type=float, default=0.5)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--out", default="analyses_out/layer_sweep")
args = parser.parse_args(sys.argv[1:] if __name__ == "__main__" and "ipykernel" not in sys.modules else [])

# %%
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.makedirs(args.out, exist_ok=True)
pipe = load_pipeline(args.pipeline)
image = args.image or fg.testing.reference_image(*(80, 48) if "hunyuan" in args.pipeline else (48, 32))
words = args.words.split(",")


def sample(edit=None):
    """Frames and the cond branch's word mass per layer for the same seed (a fresh generator each time)."""
    kwargs = call_kwargs(pipe, image=image, prompt=args.prompt, seed=args.seed, steps=args.steps)
    with fg.trace(pipe, record=fg.Record(words=words, stats=("word_mass",)), edit=edit) as run:
        frames = frames_of(pipe(**kwargs))
    return frames, run.dataset.word_mass.sel(branch="cond").mean(("step", "word", "frame"))


base_frames, base_mass = sample()
names = [str(name) for name in base_mass.layer.values]
chosen = names if args.layers is None else [names[int(i)] for i in args.layers.split(",")]

# %% [markdown]
# The sweep: one sample per ordered pair.

# %%
rows = []
for src in chosen:
    for dst in chosen:
        if src == dst:
            continue
        frames, mass = sample(fg.CacheTransfer(src=src, dst=dst, alpha=args.alpha))
        rows.append({"source": src, "destination": dst,
                     "word mass change": float(mass.sel(layer=dst) - base_mass.sel(layer=dst)),
                     "frame change": float(np.abs(frames - base_frames).mean())})
table = pd.DataFrame(rows)
table.to_csv(os.path.join(args.out, "sweep.csv"), index=False)
print(table.round(5).to_string(index=False))

# %%
fig = Figure(figsize=(9, 3.8), layout="constrained")
for ax, value in zip(fig.subplots(1, 2), ("word mass change", "frame change"), strict=True):
    grid = table.pivot(index="destination", columns="source", values=value).reindex(index=chosen, columns=chosen)
    mass = "mass" in value
    sns.heatmap(grid, ax=ax, annot=len(chosen) <= 8, fmt=".3f" if mass else ".1e", cmap="vlag" if mass else "rocket_r",
                center=0.0 if mass else None, cbar_kws={"label": value})
    ax.set_title(f"{value} (α = {args.alpha})")
    ax.set_xlabel("source layer")
    ax.set_ylabel("destination layer")
fig.suptitle(f"CacheTransfer sweep against the same seed without it: {args.prompt!r}")
path = os.path.join(args.out, "layer_sweep.png")
fig.savefig(path, dpi=200)
print(f"wrote {path}")
