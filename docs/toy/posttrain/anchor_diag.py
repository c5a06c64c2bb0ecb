"""Where the anchor-trained LoRA moves blocks.3's word attention: in-region vs out-of-region word mass (word maps,
cond branch, mean over steps), base sink vs each LoRA, on 12 test items with named objects.

Usage: python anchor_diag.py none toy/posttrain-anchor/lora toy/posttrain-flow/lora   (10 steps per video)
"""

import sys

import numpy as np
import torch

import fglens as fg
from fglens.train.anchor import region_weights

items = [it for it in fg.toy.suite(split="test", n=60, seed=0) if it.masks()][:12]


def measure(lora=None):
    pipe = fg.toy.pipeline("sink")
    if lora:
        pipe.load_lora_weights(lora, adapter_name="x")
    ins, outs = [], []
    for it in items:
        call = dict(fg.toy.CALL, num_inference_steps=10)
        with fg.trace(pipe, record=fg.Record(words=list(it.masks()), maps=True, layers=["blocks.3"])) as run:
            pipe(image=it.image, prompt=it.prompt, generator=torch.Generator().manual_seed(0), **call)
        ds = run.dataset
        wm = ds.word_map.sel(branch="cond", layer="blocks.3").mean("step")  # word, frame, y, x
        vm = it.video_masks() if hasattr(it, "video_masks") else None
        for w, m in (vm or it.masks()).items():
            grid = wm.sizes["frame"], wm.sizes["y"], wm.sizes["x"]
            m = np.asarray(m)
            if m.ndim == 2:
                m = np.broadcast_to(m, (call["num_frames"], *m.shape))
            shape = (call["num_frames"], call["height"], call["width"])
            r = region_weights(m, shape, grid, temporal=int(pipe.vae_scale_factor_temporal)).numpy()
            x = wm.sel(word=w).values
            ins.append((x * r).sum() / r.sum())
            outs.append((x * (1 - r)).sum() / (1 - r).sum())
    return np.mean(ins), np.mean(outs)


for name in sys.argv[1:]:
    inside, outside = measure(None if name == "none" else name)
    print(name, f"in {inside:.3f} out {outside:.3f}", flush=True)
