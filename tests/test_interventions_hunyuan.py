"""Interventions on HunyuanVideo's joint attention: exact against a dense float64 joint softmax."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.transformers import transformer_hunyuan_video as hv

import fglens as fg

PROMPT = "a dog jumps over the red fence"
GRID = (3, 3, 5)
N_VIDEO = math.prod(GRID)
N_IMAGE = 144  # token_replace: the pipeline's interleave of 4 over 576 image positions


@pytest.fixture(scope="module")
def hunyuan():
    return fg.testing.tiny_hunyuan_i2v_pipeline()


def _call(pipe, steps=1, **kw):
    return pipe(
        image=fg.testing.reference_image(), prompt=PROMPT, height=48, width=80, num_frames=9,
        num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np", **kw,
    ).frames[0]


class KernelCalls:
    def __init__(self):
        self.calls: list[dict] = []

    def __enter__(self):
        self.inner = hv.dispatch_attention_fn

        def recording(query, key, value, attn_mask=None, *args, **kwargs):
            out = self.inner(query, key, value, attn_mask, *args, **kwargs)
            self.calls.append({"q": query.clone(), "k": key.clone(), "v": value.clone(), "mask": attn_mask,
                               "out": out.clone()})
            return out

        hv.dispatch_attention_fn = recording
        return self

    def __exit__(self, *exc):
        hv.dispatch_attention_fn = self.inner


def _dense(call, bias=None):
    q, k, v = call["q"].double(), call["k"].double(), call["v"].double()
    logits = torch.einsum("bnhd,bthd->bhnt", q, k) / math.sqrt(q.shape[-1])
    keep = call["mask"].reshape(q.shape[0], -1)
    logits = logits.masked_fill(~keep[:, None, None, :], -math.inf)
    if bias is not None:
        logits = logits + bias
    p = torch.softmax(logits, -1)
    return torch.einsum("bhnt,bthd->bnhd", p, v), p


def _check_mixed(call, p_dst, src_text, alpha, recorded):
    """The destination's output and recorded masses against the dense mix: the video rows' text block becomes
    (1 - alpha)·P_dst + alpha·`src_text`, the rest of each row rescaled so that it still sums to 1."""
    text = slice(N_VIDEO + N_IMAGE, call["k"].shape[1])
    p = p_dst.clone()
    m_dst = p_dst[:, :, :N_VIDEO, text].sum(-1, keepdim=True)
    m_new = (1 - alpha) * m_dst + alpha * src_text.sum(-1, keepdim=True)
    p[:, :, :N_VIDEO] *= (1 - m_new) / (1 - m_dst)  # rows keep summing to 1
    p[:, :, :N_VIDEO, text] = (1 - alpha) * p_dst[:, :, :N_VIDEO, text] + alpha * src_text
    torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
    torch.testing.assert_close(call["out"].double(), torch.einsum("bhnt,bthd->bnhd", p, call["v"].double()),
                               rtol=1e-5, atol=1e-5)
    # the recorder saw the mixed map
    np.testing.assert_allclose(recorded.text_mass.values,
                               p[0, :, :N_VIDEO, text].sum(-1).mean(0).reshape(GRID[0], -1).mean(-1).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recorded.image_mass.values,
                               p[0, :, :N_VIDEO, N_VIDEO:N_VIDEO + N_IMAGE].sum(-1).mean(0)
                               .reshape(GRID[0], -1).mean(-1).numpy(), rtol=1e-5, atol=1e-6)


def test_anchor_on_joint_attention_matches_dense_reference(hunyuan):
    mask = torch.zeros(3, 5)
    mask[1:, 2:] = 1.0
    anchor = fg.AnchorMask.from_mask(mask, "dog", strength=2.5, where=fg.Where(layers=["single.0"]))
    record = fg.Record(words=["dog"], stats=["word_mass", "text_mass"])
    with fg.trace(hunyuan, edit=anchor, record=record) as run, KernelCalls() as k:
        _call(hunyuan)
    calls = k.calls  # one forward: double.0, double.1, single.0, single.1
    assert len(calls) == 4
    for index, call in enumerate(calls):
        bias = None
        if index == 2:
            s = call["k"].shape[1]
            bias = torch.zeros(s, s, dtype=torch.float64)
            dog = N_VIDEO + N_IMAGE + 1  # "dog" is the prompt's token 1 in the text segment
            bias[:N_VIDEO, dog] = 2.5 * mask.double().repeat(GRID[0], 1, 1).reshape(-1)
        expected, p = _dense(call, bias)
        torch.testing.assert_close(call["out"].double(), expected, rtol=1e-5, atol=1e-5)
        if index == 2:  # the recorder saw the biased probabilities
            dog_map = p[0, :, :N_VIDEO, N_VIDEO + N_IMAGE + 1].mean(0).reshape(GRID[0], -1).mean(-1)
            got = run.dataset.word_mass.sel(branch="cond", layer="single.0", word="dog").isel(step=0).values
            np.testing.assert_allclose(got, dog_map.numpy(), rtol=1e-5, atol=1e-6)


def test_ablate_image_on_joint_attention(hunyuan):
    record = fg.Record(words=["dog"], stats=["text_mass", "image_mass"])
    with fg.trace(hunyuan, edit=fg.Ablate("image", where=fg.Where(layers=["double.1"])), record=record) as run, \
            KernelCalls() as k:
        _call(hunyuan)
    ds = run.dataset.sel(branch="cond").isel(step=0)
    np.testing.assert_array_equal(ds.image_mass.sel(layer="double.1").values, 0.0)
    assert (ds.image_mass.sel(layer="double.0") > 0).all()
    call = k.calls[1]
    s = call["k"].shape[1]
    bias = torch.zeros(s, s, dtype=torch.float64)
    bias[:N_VIDEO, N_VIDEO : N_VIDEO + N_IMAGE] = -math.inf  # video rows lose the image keys
    expected, _ = _dense(call, bias)
    torch.testing.assert_close(call["out"].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["same_step", "prev_step"])
def test_cache_transfer_on_joint_attention_matches_dense_reference(hunyuan, mode):
    alpha = 0.6
    src, dst = (0, 2) if mode == "same_step" else (3, 1)  # layer indices: double.0, double.1, single.0, single.1
    names = ["double.0", "double.1", "single.0", "single.1"]
    edit = fg.CacheTransfer(src=[names[src]], dst=[names[dst]], alpha=alpha, mode=mode)
    record = fg.Record(words=["dog"], stats=["word_mass", "text_mass", "image_mass"], layers=[names[dst]])
    with fg.trace(hunyuan, edit=edit, record=record) as run, KernelCalls() as k:
        _call(hunyuan, steps=2)
    forwards = [k.calls[i : i + 4] for i in range(0, len(k.calls), 4)]
    assert len(forwards) == 2
    for step, forward in enumerate(forwards):
        call = forward[dst]
        own, p_dst = _dense(call)
        if mode == "prev_step" and step == 0:
            torch.testing.assert_close(call["out"].double(), own, rtol=1e-5, atol=1e-5)  # no source map yet
            continue
        source = forward[src] if mode == "same_step" else forwards[step - 1][src]
        _, p_src = _dense(source)
        text = slice(N_VIDEO + N_IMAGE, call["k"].shape[1])
        _check_mixed(call, p_dst, p_src[:, :, :N_VIDEO, text], alpha,
                     run.dataset.sel(branch="cond", layer=names[dst]).isel(step=step))


@pytest.mark.parametrize("heads,source_map", [("mean", "edited"), ("each", "clean"), ("mean", "clean")])
def test_cache_transfer_head_mean_and_clean_source_on_joint_attention(hunyuan, heads, source_map):
    """The source (single.0) carries an anchor; the destination (single.1) mixes in its map averaged over heads
    and/or without that anchor. Output and recorded masses against the dense float64 joint softmax."""
    alpha, src, dst = 0.6, 2, 3
    names = ["double.0", "double.1", "single.0", "single.1"]
    mask = torch.zeros(3, 5)
    mask[1:, 2:] = 1.0
    anchor = fg.AnchorMask.from_mask(mask, "dog", strength=2.5, where=fg.Where(layers=[names[src]]))
    edit = anchor + fg.CacheTransfer(src=[names[src]], dst=[names[dst]], alpha=alpha, mode="same_step", heads=heads,
                                     source_map=source_map)
    record = fg.Record(words=["dog"], stats=["text_mass", "image_mass"], layers=[names[dst]])
    with fg.trace(hunyuan, edit=edit, record=record) as run, KernelCalls() as k:
        _call(hunyuan)
    call, source = k.calls[dst], k.calls[src]
    _, p_dst = _dense(call)
    s = source["k"].shape[1]
    bias = torch.zeros(s, s, dtype=torch.float64)
    if source_map == "edited":
        bias[:N_VIDEO, N_VIDEO + N_IMAGE + 1] = 2.5 * mask.double().repeat(GRID[0], 1, 1).reshape(-1)
    _, p_src = _dense(source, bias)
    text = slice(N_VIDEO + N_IMAGE, call["k"].shape[1])
    src_text = p_src[:, :, :N_VIDEO, text]
    if heads == "mean":
        src_text = src_text.mean(1, keepdim=True).expand_as(src_text)
    _check_mixed(call, p_dst, src_text, alpha, run.dataset.sel(branch="cond", layer=names[dst]).isel(step=0))


def test_frame_scoped_anchor_on_joint_attention_leaves_every_other_row_bit_identical(hunyuan):
    """Issue 12, item 5 on joint attention: an anchor on latent frame 1 only. Every other row of the call (the other
    frames' video rows and the text rows) is the model's own kernel output on the same inputs, bit for bit; the
    frame-1 rows match the dense biased reference, and the recorder (which needs the row LSE) sees them."""
    mask = torch.zeros(3, 5)
    mask[1:, 2:] = 1.0
    anchor = fg.AnchorMask.from_mask(mask, "dog", strength=2.5, where=fg.Where(layers=["single.0"], frames=[1]))
    record = fg.Record(words=["dog"], stats=["word_mass", "text_mass"])
    with fg.trace(hunyuan, edit=anchor, record=record) as run, KernelCalls() as k:
        _call(hunyuan)
    call = k.calls[2]
    own = hv.dispatch_attention_fn(call["q"], call["k"], call["v"], call["mask"])
    per_frame = GRID[1] * GRID[2]
    inside = torch.zeros(call["q"].shape[1], dtype=torch.bool)
    inside[per_frame : 2 * per_frame] = True
    assert torch.equal(own[:, ~inside], call["out"][:, ~inside])
    assert not torch.equal(own[:, inside], call["out"][:, inside])
    s = call["k"].shape[1]
    bias = torch.zeros(s, s, dtype=torch.float64)
    dog = N_VIDEO + N_IMAGE + 1
    bias[per_frame : 2 * per_frame, dog] = 2.5 * mask.double().reshape(-1)
    expected, p = _dense(call, bias)
    torch.testing.assert_close(call["out"].double(), expected, rtol=1e-5, atol=1e-5)
    dog_map = p[0, :, :N_VIDEO, dog].mean(0).reshape(GRID[0], -1).mean(-1)
    got = run.dataset.word_mass.sel(branch="cond", layer="single.0", word="dog").isel(step=0).values
    np.testing.assert_allclose(got, dog_map.numpy(), rtol=1e-5, atol=1e-6)
