# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Model zoo: Condition Isolation compared across architectures
#
# The same prompts × seeds through every supported model, recorded into one store, then two side-by-side
# figures over layer depth normalised to 0–1 (first block 0, last block 1, so that a 30-layer and a 60-layer
# model compare):
#
# - the condition balance: how much each layer listens to the text and to the image-derived condition. Wan-style
#   models (separate text and image cross-attention) record ``text_share`` (the text's share of the two
#   attention outputs' norms; image = 1 − text), joint-attention models (HunyuanVideo, CogVideoX) record
#   ``text_mass`` / ``image_mass`` (attention mass on the text and image-derived tokens). Models that take the
#   reference frame in the latent (Wan2.2, Wan2.2-TI2V, LTX) or no image at all record neither and are named
#   in the figure instead of drawn;
# - the weak-layer profiles: `fg.find_weak_layers` on each model's runs (the robust z-score of the per-layer
#   similarity and Moran's I, docs/concepts.md), the weak layers marked.
#
# Wan2.2's two experts are two stacks of their own depth: each is drawn as its own line.
#
# Runs on every built-in tiny random-weight pipeline and on the toy world's trained base model by default (the
# tiny ones' numbers mean nothing, the plumbing is real); real weights with
# `--pipeline wan21=/path/to/Wan2.1-I2V-14B-480P-Diffusers --pipeline hunyuan=/path/to/HunyuanVideo-I2V
# --image ref.png` (repeatable; a bare name such as `tiny-ltx` or `toy-base` is a built-in pipeline).

# %%
import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import fglens as fg  # noqa: E402
from fglens.pipelines import TINY, call_kwargs, default_image, load_pipeline  # noqa: E402

parser = argparse.ArgumentParser(description="Record the same prompts and seeds through every model; compare "
                                 "their condition balance and weak layers.")
parser.add_argument("--pipeline", action="append", default=None, metavar="NAME=PATH",
                    help="a model to run: NAME=PATH for a local diffusers pipeline folder, or a built-in name "
                    f"({', '.join(TINY)}, toy-base); repeatable (default: every tiny pipeline and toy-base)")
parser.add_argument("--image", default=None, help="reference image of the image-to-video models (default: the "
                    "built-in one, tiny and toy only)")
parser.add_argument("--prompts", default="a dog jumps over the red fence|a man walks toward the river",
                    help="prompts separated by |")
parser.add_argument("--words", default="dog,jumps,fence|man,walks,river", help="words of each prompt, |-separated")
parser.add_argument("--seeds", default="0,1")
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--out", default="analyses_out/model_zoo")
args = parser.parse_args(sys.argv[1:] if __name__ == "__main__" and "ipykernel" not in sys.modules else [])

# %%
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.makedirs(args.out, exist_ok=True)
models = {}
for item in args.pipeline or [*TINY, "toy-base"]:
    name, _, path = item.partition("=")
    models[name] = path or name
prompts, words = args.prompts.split("|"), [w.split(",") for w in args.words.split("|")]
seeds = list(map(int, args.seeds.split(",")))
store = os.path.join(args.out, "runs.zarr")

# %% [markdown]
# One run per model, prompt and seed, all into one store (run ids ``<model>-p<prompt>-s<seed>``).

# %%
runs: dict[str, list] = {}
for name, source in models.items():
    pipe = load_pipeline(source)
    image = args.image or default_image(pipe)
    runs[name] = []
    for i, (prompt, prompt_words) in enumerate(zip(prompts, words, strict=True)):
        for seed in seeds:
            with fg.trace(pipe, record=fg.Record(words=prompt_words), store=store,
                          run_id=f"{name}-p{i}-s{seed}") as run:
                pipe(**call_kwargs(pipe, image=image, prompt=prompt, seed=seed, steps=args.steps))
            runs[name].append(run.dataset)
    print(f"{name}: {type(pipe).__name__}, {runs[name][0].sizes['layer']} layers, {len(runs[name])} runs")
    del pipe
print(f"recorded {sum(map(len, runs.values()))} runs into {store}")

# %% [markdown]
# The weak layers of each model over its runs (each run weighs the same; the first half of the steps, so
# Wan2.2's low-noise expert, which runs later, goes unscored); edges are excluded on real weights. A stack
# too shallow to z-score (tiny-ltx has 2 blocks) is named and left out of the profiles.

# %%
weak, unscored = {}, {}
for name, model_runs in runs.items():
    tiny = models[name].startswith(("tiny-", "toy-"))
    try:
        weak[name] = fg.find_weak_layers(model_runs, score="both", exclude_edges=0.0 if tiny else 0.1)
    except ValueError as error:
        unscored[name] = str(error)
        print(f"{name}: not scored: {error}")
        continue
    print(f"{name}: weak {weak[name].weak}, responsive {weak[name].responsive}")


# %%
def stacks(layers):
    """``{stack: [layer, ...]}`` in depth order (Wan2.2: ``transformer`` and ``transformer_2``, whose layers are
    named ``transformer_2.blocks.<i>``)."""
    out: dict[str, list[str]] = {}
    for layer in map(str, layers):
        out.setdefault(layer.split(".")[0] if layer.startswith("transformer_") else "transformer", []).append(layer)
    return out


def depth(n):
    """Normalised depth 0..1 of `n` layers."""
    return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)


def layer_means(model_runs, var):
    """Per-layer mean of `var` over the cond branch, runs, steps, words and frames (NaN-skipping: Wan2.2's
    experts each run only some of the steps)."""
    values = [r[var].sel(branch="cond") for r in model_runs]
    dims = [d for d in values[0].dims if d != "layer"]
    return np.nanmean(np.stack([v.mean(dims, skipna=True).values for v in values]), axis=0), values[0].layer.values


def balance(model_runs):
    """``(kind, text, image)`` per layer, or None when the model records no condition-balance variable."""
    data = model_runs[0].data_vars
    if "text_share" in data:
        text, layers = layer_means(model_runs, "text_share")
        return "output-norm share", dict(zip(layers, text, strict=True)), dict(zip(layers, 1 - text, strict=True))
    if "text_mass" in data:
        text, layers = layer_means(model_runs, "text_mass")
        image = layer_means(model_runs, "image_mass")[0] if "image_mass" in data else np.full_like(text, np.nan)
        return "attention mass", dict(zip(layers, text, strict=True)), dict(zip(layers, image, strict=True))
    return None


# %% [markdown]
# Condition balance per normalised depth: solid lines are Wan-style output-norm shares, dashed lines joint
# attention masses (not the same quantity: compare the shapes across depth, not the levels across kinds).

# %%
colors = plt.get_cmap("tab10")
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
missing = []
for k, (name, model_runs) in enumerate(runs.items()):
    found = balance(model_runs)
    if found is None:
        missing.append(name)
        continue
    kind, text, image = found
    for stack, layers in stacks(model_runs[0].layer.values).items():
        label = name if stack == "transformer" else f"{name} ({stack})"
        style = "-" if kind == "output-norm share" else "--"
        for ax, values in zip(axes, (text, image), strict=True):
            ax.plot(depth(len(layers)), [values[layer] for layer in layers], style, marker="o", markersize=3,
                    color=colors(k % 10), label=label)
axes[0].set_title("text")
axes[1].set_title("image-derived")
for ax in axes:
    ax.set_xlabel("layer depth (0 = first block, 1 = last)")
    ax.set_xlim(-0.02, 1.02)
axes[0].set_ylabel("share of the condition (cond branch)")
axes[1].legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
note = f"no balance variable recorded (reference frame in the latent, or no image): {', '.join(missing)}"
fig.suptitle("Condition balance across models" + (f"\n{note}" if missing else ""), fontsize=9)
fig.tight_layout()
fig.savefig(os.path.join(args.out, "condition_balance.png"), dpi=150)
plt.close(fig)

# %% [markdown]
# Weak-layer profiles: the z-score `find_weak_layers` thresholds, per normalised depth; weak layers filled.

# %%
fig, ax = plt.subplots(figsize=(9, 4))
for k, (name, result) in enumerate(weak.items()):
    scores = dict(zip(result.layers, result.scores.values, strict=True))
    for stack, layers in stacks(result.layers).items():
        label = name if stack == "transformer" else f"{name} ({stack})"
        if np.isnan([scores[layer] for layer in layers]).all():
            continue  # a stack with no score in the chosen steps
        x, z = depth(len(layers)), np.array([scores[layer] for layer in layers])
        ax.plot(x, z, marker="o", markersize=3, color=colors(k % 10), label=label)
        is_weak = np.array([layer in result.weak for layer in layers])
        ax.scatter(x[is_weak], z[is_weak], s=60, color=colors(k % 10), edgecolor="black", zorder=3)
ax.axhline(-1.0, color="0.3", linestyle=":", linewidth=1,
           label="weak threshold")
ax.set_xlabel("layer depth (0 = first block, 1 = last)")
ax.set_ylabel("robust z (similarity + Moran's I)")
ax.set_title("Weak-layer profiles across models (filled: Semantic-Weak Layers)"
             + (f"\nnot scored (too few layers): {', '.join(unscored)}" if unscored else ""), fontsize=9)
ax.legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
fig.tight_layout()
fig.savefig(os.path.join(args.out, "weak_layers.png"), dpi=150)
plt.close(fig)

# %%
with open(os.path.join(args.out, "weak_layers.txt"), "w") as f:
    for name, result in weak.items():
        f.write(f"## {name} ({models[name]})\n{result.summary()}\n\n")
    for name, why in unscored.items():
        f.write(f"## {name} ({models[name]})\nnot scored: {why}\n\n")
for name in ("condition_balance.png", "weak_layers.png", "weak_layers.txt"):
    print(f"wrote {os.path.join(args.out, name)}")
