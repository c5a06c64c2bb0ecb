# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Condition Isolation: which layers stop listening to the text?
#
# Record several prompts and seeds into one store, then look at every layer's response to the prompt:
# the text–visual similarity S and the spatial structure (Moran's I) of each word's attention map, the
# balance between the text and the visual conditions, and the Semantic-Weak Layers that
# `fg.find_weak_layers` picks (docs/concepts.md: robust z-score of the per-layer mean over the cond branch and
# the first half of the steps).
#
# Runs on the tiny random-weight pipeline by default (the numbers then mean nothing, the plumbing is
# real); with `--pipeline /path/to/Wan2.1-I2V-14B-480P-Diffusers --image ref.png` on real weights.

# %%
import argparse
import os
import sys

import fglens as fg
from fglens.pipelines import call_kwargs, load_pipeline

parser = argparse.ArgumentParser(description="Record runs, profile the layers, find the weak ones.")
parser.add_argument("--pipeline", default="tiny-wan", help="a local diffusers pipeline folder, or tiny-wan / "
                    "tiny-hunyuan (default: tiny-wan)")
parser.add_argument("--image", default=None, help="reference image (default: the built-in one, tiny only)")
parser.add_argument("--prompts", default="a dog jumps over the red fence|a man walks toward the river",
                    help="prompts separated by |")
parser.add_argument("--words", default="dog,jumps,fence|man,walks,river", help="words of each prompt, |-separated")
parser.add_argument("--seeds", default="0,1")
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--out", default="analyses_out/condition_isolation")
args = parser.parse_args(sys.argv[1:] if __name__ == "__main__" and "ipykernel" not in sys.modules else [])

# %%
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.makedirs(args.out, exist_ok=True)
pipe = load_pipeline(args.pipeline)
tiny = args.pipeline.startswith("tiny-")
image = args.image or fg.testing.reference_image(*(80, 48) if "hunyuan" in args.pipeline else (48, 32))
prompts, words = args.prompts.split("|"), [w.split(",") for w in args.words.split("|")]
store = os.path.join(args.out, "runs.zarr")

# %% [markdown]
# One run per prompt and seed; word maps are kept for the first prompt's figures.

# %%
runs = []
for prompt, prompt_words in zip(prompts, words, strict=True):
    for seed in map(int, args.seeds.split(",")):
        with fg.trace(pipe, record=fg.Record(words=prompt_words, maps=True), store=store) as run:
            pipe(**call_kwargs(pipe, image=image, prompt=prompt, seed=seed, steps=args.steps))
        runs.append(run.dataset)
print(f"recorded {len(runs)} runs into {store}")

# %% [markdown]
# The weak layers over all runs (each run weighs the same), and the profile they come from.

# %%
weak = fg.find_weak_layers(runs, score="both", exclude_edges=0.0 if tiny else 0.1)
print(weak.summary())

# %%
figures = {
    "layer_profile.png": lambda path: fg.plot.layer_profile(runs, weak=weak, path=path),
    "similarity_by_step.png": lambda path: fg.plot.layer_step_heatmap(runs, var="similarity", path=path),
    "condition_balance.png": lambda path: fg.plot.condition_balance(runs, path=path),
    "word_maps.png": lambda path: fg.plot.word_maps(runs[0], word=words[0][0], image=image, path=path),
}
for name, draw in figures.items():
    draw(os.path.join(args.out, name))
    print(f"wrote {os.path.join(args.out, name)}")
