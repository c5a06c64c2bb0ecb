# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Recording Condition Isolation on Wan I2V
#
# Record one run, then look at how much each layer listens to the text: the text share of the
# cross-attention output and the spatial structure (Moran's I) of each word's attention map.
# Runs on the tiny random-weight pipeline unless `--pipeline PATH` points at real weights.

# %%
import argparse
import os
import sys

import torch

import fglens as fg

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--pipeline", default=None, help="a local WanImageToVideoPipeline folder")
parser.add_argument("--image", default=None, help="reference image (default: the built-in one)")
parser.add_argument("--prompt", default="a dog jumps over a fence")
parser.add_argument("--words", default="dog,jumps")
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--out", default="analyses_out/record_wan")
args = parser.parse_args(sys.argv[1:] if __name__ == "__main__" and "ipykernel" not in sys.modules else [])

# %%
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if args.pipeline:
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    pipe = WanImageToVideoPipeline.from_pretrained(args.pipeline, torch_dtype=torch.bfloat16)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    image = Image.open(args.image).convert("RGB")
    size = dict(height=480, width=832, num_frames=81)
else:
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    image = fg.testing.reference_image()
    size = dict(height=64, width=96, num_frames=9)

# %%
os.makedirs(args.out, exist_ok=True)
store = os.path.join(args.out, "run.zarr")
words = args.words.split(",")
with fg.trace(pipe, record=fg.Record(words=words), store=store) as run:
    pipe(image=image, prompt=args.prompt, num_inference_steps=args.steps,
         generator=torch.Generator().manual_seed(0), **size)
ds = run.dataset

# %% [markdown]
# Per layer, over the first half of the steps and all frames of the cond branch:

# %%
early = ds.sel(branch="cond").isel(step=slice(0, max(1, ds.sizes["step"] // 2)))
profile = early[["text_share", "morans_i", "similarity"]].mean(["step", "word", "frame"]).drop_vars("branch")
print(profile.to_dataframe().round(3))
print(f"\nrun written to {store}")
