# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Focal Guidance, A/B: the same seed with and without
#
# 1. record a baseline run and find the Semantic-Weak Layers;
# 2. build Focal Guidance for them — CLIP anchors for the key words (FSG) and the attention cache from the
#    responsive layers — and sample the same seed again with it;
# 3. compare the statistics layer by layer and the frames.
#
# Tiny random-weight pipeline and tiny CLIP by default; on real weights pass `--pipeline`, `--image` and
# `--clip ViT-H-14 --clip-weights /path/open_clip_vit_h14.safetensors`.

# %%
import argparse
import os
import sys

import numpy as np

import fglens as fg
from fglens.interventions.recipe import from_recipe
from fglens.pipelines import call_kwargs, frames_of, load_pipeline, save_video

parser = argparse.ArgumentParser(description="Sample one seed with and without Focal Guidance and compare.")
parser.add_argument("--pipeline", default="tiny-wan", help="a local diffusers pipeline folder, or tiny-wan / "
                    "tiny-hunyuan (default: tiny-wan)")
parser.add_argument("--image", default=None, help="reference image (default: the built-in one, tiny only)")
parser.add_argument("--prompt", default="a dog jumps over the red fence")
parser.add_argument("--words", default="dog,jumps")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--alpha", type=float, default=0.5, help="cache transfer weight")
parser.add_argument("--strength", type=float, default=2.0, help="anchor strength")
parser.add_argument("--clip", default="tiny", help="open_clip model name, or tiny (random weights)")
parser.add_argument("--clip-weights", default=None, help="local weights of the CLIP model")
parser.add_argument("--out", default="analyses_out/focal_guidance_ab")
args = parser.parse_args(sys.argv[1:] if __name__ == "__main__" and "ipykernel" not in sys.modules else [])

# %%
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.makedirs(args.out, exist_ok=True)
pipe = load_pipeline(args.pipeline)
tiny = args.pipeline.startswith("tiny-")
image = args.image or fg.testing.reference_image(*(80, 48) if "hunyuan" in args.pipeline else (48, 32))
words = args.words.split(",")
store = os.path.join(args.out, "ab.zarr")


def sample(edit=None):
    """One pipeline call with the same seed, recorded into the store; returns the frames and the run."""
    kwargs = call_kwargs(pipe, image=image, prompt=args.prompt, seed=args.seed, steps=args.steps)
    with fg.trace(pipe, record=fg.Record(words=words, maps=True), edit=edit, store=store) as run:
        frames = frames_of(pipe(**kwargs))
    return frames, run.dataset, kwargs


# %% [markdown]
# Baseline and its weak layers (on the tiny 4-layer model no layer is an "edge" one).

# %%
base_frames, base, kwargs = sample()
weak = fg.find_weak_layers(base, exclude_edges=0.0 if tiny else 0.1)
print(weak.summary())
layers = weak.weak or [weak.layers[len(weak.layers) // 2]]  # random weights may show no dip: edit the middle one
sources = [s for s in weak.responsive if s not in layers][:1] or [weak.layers[-1]]

# %% [markdown]
# Focal Guidance from a recipe (the same path `fglens generate` and sweeps take).

# %%
clip = {"model": args.clip, "pretrained": args.clip_weights} if args.clip != "tiny" else "tiny"
recipe = {"type": "focal_guidance", "layers": layers, "src": sources, "alpha": args.alpha,
          "strength": args.strength, "clip": clip}
edit = from_recipe(recipe, image=kwargs["image"], prompt=args.prompt, words=words,
                   size=(kwargs["height"], kwargs["width"]))
print(f"Focal Guidance on {layers} (cache from {sources}), steps (0.0, 0.5), cond branch")
fg_frames, guided, _ = sample(edit)

# %% [markdown]
# What changed: per-layer statistics, the anchors, and the frames.

# %%
for var in ("similarity", "word_mass"):
    path = os.path.join(args.out, f"compare_{var}.png")
    fg.plot.compare(base, guided, var=var, labels=("baseline", "Focal Guidance"), weak=weak, path=path)
    print(f"wrote {path}")
fg.plot.anchor(kwargs["image"], edit.parts()[0], path=os.path.join(args.out, "anchor.png"))
for name, frames in (("baseline", base_frames), ("focal_guidance", fg_frames)):
    save_video(frames, os.path.join(args.out, f"{name}.mp4"), fps=8)
delta = np.abs(fg_frames - base_frames)
print(f"frames: mean |Δ| = {delta.mean():.4f}, max |Δ| = {delta.max():.4f} (same seed, same noise)")
for var in ("similarity", "word_mass"):
    a = base[var].sel(branch="cond", layer=layers).mean().item()
    b = guided[var].sel(branch="cond", layer=layers).mean().item()
    print(f"{var} in the edited layers: {a:+.4f} -> {b:+.4f}")
