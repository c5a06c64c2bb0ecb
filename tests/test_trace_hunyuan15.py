"""HunyuanVideo-1.5 (`HunyuanVideo15ImageToVideoPipeline`, `HunyuanVideo15Transformer3DModel`): one joint softmax per
block over [video | SigLIP image | ByT5 glyph + Qwen text | masked pads], a kernel mask with a query dimension
(m_q & m_k, [B, 1, S, S]), CFG as two forwards per step from the guider (cond first), a non-square grid (2 x 3 per
frame, 2 latent frames). Recording exact against the float64 dense softmax of the kernel's own q, k and mask rows,
bit-identical frames, restore, refusals, interventions against dense references, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.transformers import transformer_hunyuan_video15 as hv15
from reference import morans_i
from test_interventions import KernelCalls
from test_trace_wan import model_state

import fglens as fg
from fglens.trace.record import STATS

PROMPT = 'a dog jumps over the "red" fence'  # a quoted word: ByT5 glyph tokens come first in the text segment
NEGATIVE = "a blurry dog"  # no glyph text, another real length: the branches' segments differ
GRID = (2, 2, 3)  # 32 x 48 video, x16 VAE, patch 1; 5 frames -> 2 latent frames
N_VIDEO = math.prod(GRID)
N_IMAGE = 16  # the tiny SigLIP: 16 x 16 image, 4 x 4 patches
LAYERS = 2


@pytest.fixture(scope="module")
def hv():
    return fg.testing.tiny_hunyuan15_i2v_pipeline()


def _call(pipe, steps=2, seed=0, **kw):
    kw.setdefault("output_type", "np")
    kw.setdefault("negative_prompt", NEGATIVE)
    out = pipe(image=fg.testing.reference_image(), prompt=kw.pop("prompt", PROMPT), num_frames=5,
               num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kw)
    return out.frames[0]


def _probs(c, bias=None):
    """The float64 softmax of the call's video query rows over every key, with the kernel's own mask rows."""
    q, k = c["q"].double(), c["k"].double()
    logits = torch.einsum("bnhd,bthd->bhnt", q, k) / math.sqrt(q.shape[-1])
    keep = c["mask"][:, :, :N_VIDEO]  # [B, 1, N, S] bool: the kernel's rows of the video queries
    logits = logits[:, :, :N_VIDEO].masked_fill(~keep, -math.inf)
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, -1)


def dense_reference(c, words: dict[str, list[int]]) -> dict:
    f, ny, nx = GRID
    t0 = N_VIDEO + N_IMAGE
    p = _probs(c)[0].mean(0)  # head mean [N, S]
    text = p[:, t0:]
    out = {"text_mass": text.sum(-1), "image_mass": p[:, N_VIDEO:t0].sum(-1), "video_mass": p[:, :N_VIDEO].sum(-1),
           "ref_mass": p[:, : ny * nx].sum(-1)}
    valid = int(c["mask"][0, 0, 0, t0:].sum())
    within = text / text.sum(-1, keepdim=True)
    out["entropy"] = -(torch.special.xlogy(within, within)).sum(-1) / math.log(valid)
    per_frame = {name: v.reshape(f, -1).mean(-1).numpy() for name, v in out.items()}
    q, k = c["q"][0].double(), c["k"][0].double()
    qv = q[:N_VIDEO].flatten(1)
    wm, mi, sim, sim_mi = [], [], [], []
    for positions in words.values():
        m = text[:, positions].sum(-1).reshape(f, ny, nx)
        wm.append(m.reshape(f, -1).mean(-1).numpy())
        mi.append([morans_i(m[i].numpy()) for i in range(f)])
        kbar = k[[t0 + j for j in positions]].flatten(1).mean(0)
        s = torch.nn.functional.cosine_similarity(qv, kbar[None], dim=-1).reshape(f, ny, nx)
        sim.append(s.reshape(f, -1).mean(-1).numpy())
        sim_mi.append([morans_i(s[i].numpy()) for i in range(f)])
    per_frame.update(word_mass=np.array(wm), morans_i=np.array(mi), similarity=np.array(sim),
                     similarity_morans_i=np.array(sim_mi))
    return per_frame


def test_recorded_statistics_equal_float64_dense_reference(hv):
    record = fg.Record(words=["dog", "red"], stats=list(STATS), branches=("cond", "uncond"))
    with fg.trace(hv, record=record) as run, KernelCalls(hv15) as k:
        _call(hv, output_type="latent")
    ds, attrs = run.dataset, fg.store.decode_attrs(run.dataset.attrs)
    assert tuple(attrs["grid"]) == GRID and list(ds.layer.values) == ["blocks.0", "blocks.1"]
    # 13 glyph bytes ('Text "red". ' and </s>) first, then the cropped Qwen prompt: "red" is found in both
    assert attrs["word_positions"] == {"dog": [14], "red": [6, 7, 8, 20]}
    assert attrs["word_positions_uncond"] == {"dog": [2], "red": []}  # the negative prompt has no "red"
    recorded = [v for v in STATS if v in ds]
    # no separate text calls, no audio keys
    assert set(recorded) == set(STATS) - {"text_share", "response", "response_morans_i", "audio_entropy",
                                          "audio_position"}
    assert len(k.calls) == 2 * 2 * LAYERS  # 2 steps x (cond, uncond), the guider's order
    checked = 0
    for index, c in enumerate(k.calls):
        forward, layer = divmod(index, LAYERS)
        step, branch = forward // 2, ("cond", "uncond")[forward % 2]
        assert c["mask"].shape == (1, 1, c["k"].shape[1], c["k"].shape[1])  # the query-varying mask
        words = attrs["word_positions"] if branch == "cond" else {"dog": attrs["word_positions_uncond"]["dog"]}
        ref = dense_reference(c, words)
        got = ds.sel(step=step, branch=branch, layer=f"blocks.{layer}")
        for var in recorded:
            expected = ref[var]
            if branch == "uncond" and var in ("word_mass", "morans_i", "similarity", "similarity_morans_i"):
                got_var = got[var].sel(word="dog").values[None]
            else:
                got_var = got[var].values
            np.testing.assert_allclose(got_var, expected, rtol=1e-5, atol=1e-5, err_msg=f"{var} {index}")
            checked += 1
        np.testing.assert_allclose(got.text_mass.values + got.image_mass.values + ref["video_mass"], 1.0, atol=1e-5)
    assert checked == len(k.calls) * len(recorded)
    np.testing.assert_array_equal(ds.timestep.values, hv.scheduler.timesteps.numpy())
    assert list(ds.step.values) == [0, 1] and ds.attrs["complete"] is True


def test_segments_follow_the_transformers_context_order(hv):
    """Image tokens right after the video, then the glyph bytes, then the Qwen prompt; the branch without glyph text
    starts its prompt at the text segment's first key. Checked on the embeddings the transformer concatenates."""
    tokens = fg.adapters.adapter_for(hv.transformer).prompt_tokens(hv, PROMPT)
    assert tokens.extra == {"n_image_tokens": N_IMAGE, "n_glyph_tokens": 13}
    assert tokens.tokens[:4] == ["T", "e", "x", "t"] and tokens.tokens[13:15] == ["a", "Ġdog"]
    negative = fg.adapters.adapter_for(hv.transformer).prompt_tokens(hv, NEGATIVE)
    assert negative.tokens[:3] == ["a", "Ġblurry", "Ġdog"] and negative.extra["n_glyph_tokens"] == 0
    seg = fg.adapters.adapter_for(hv.transformer).segments(40, 40, N_VIDEO, tokens)
    assert (seg.video, seg.image, seg.text) == ((0, N_VIDEO), (N_VIDEO, N_VIDEO + N_IMAGE), (N_VIDEO + N_IMAGE, 40))
    # the kernel mask's video rows are the key mask: valid video, image, glyph and prompt keys, then masked pads
    with KernelCalls(hv15) as k:
        _call(hv, steps=1, output_type="latent")
    mask = k.calls[0]["mask"][0, 0]
    assert (mask[:N_VIDEO] == mask[0]).all()
    open_keys = N_VIDEO + N_IMAGE + tokens.n_real
    assert int(mask[0].sum()) == open_keys and mask[0, :open_keys].all()


def test_text_to_video_masks_the_zero_image_tokens_behind_the_text():
    pipe = fg.testing.tiny_hunyuan15_i2v_pipeline(text_to_video=True)
    record = fg.Record(words=["dog"], stats=["word_mass", "text_mass", "image_mass", "entropy"])
    with fg.trace(pipe, record=record) as run, KernelCalls(hv15) as k:
        pipe(prompt="a dog jumps", height=32, width=48, num_frames=5, num_inference_steps=1, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    ds, attrs = run.dataset, fg.store.decode_attrs(run.dataset.attrs)
    assert attrs["word_positions"] == {"dog": [1]} and tuple(attrs["grid"]) == GRID
    np.testing.assert_array_equal(ds.image_mass.values, 0.0)  # the image segment is empty
    c = k.calls[0]
    p = _probs(c)[0].mean(0)
    np.testing.assert_allclose(ds.text_mass.sel(branch="cond", layer="blocks.0").isel(step=0).values,
                               p[:, N_VIDEO:].sum(-1).reshape(GRID[0], -1).mean(-1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.word_mass.sel(branch="cond", layer="blocks.0", word="dog").isel(step=0).values,
                               p[:, N_VIDEO + 1].reshape(GRID[0], -1).mean(-1).numpy(), rtol=1e-5, atol=1e-6)


def test_traced_call_is_bit_identical(hv):
    plain = _call(hv)
    with fg.trace(hv, record=fg.Record(words=["dog"], stats=list(STATS), maps=True, branches=("cond", "uncond"))):
        traced = _call(hv)
    assert np.array_equal(plain, traced)


def test_model_restored_after_an_exception(hv):
    before_out, before = _call(hv, output_type="latent"), model_state(hv, hv15)

    def boom(pipe, i, t, kwargs):
        raise RuntimeError("stop")

    original = hv.scheduler.step

    def step(*args, **kwargs):  # the pipeline has no step callback: fail inside the denoising loop
        if hv.scheduler.step_index == 1:
            boom(None, 1, None, None)
        return original(*args, **kwargs)

    hv.scheduler.step = step
    try:
        with pytest.raises(RuntimeError, match="stop"):
            with fg.trace(hv, record=fg.Record(words=["dog"])):
                _call(hv, steps=3, output_type="latent")
    finally:
        del hv.scheduler.step
    after = model_state(hv, hv15)
    assert all(a is b for a, b in zip(before[0].values(), after[0].values(), strict=True)) and before[1:] == after[1:]
    assert torch.equal(before_out, _call(hv, output_type="latent"))


def test_guiders_with_other_predictions_are_refused_at_entry(hv):
    from diffusers.guiders import SkipLayerGuidance

    guider = hv.guider
    before = model_state(hv, hv15)
    hv.guider = SkipLayerGuidance(skip_layer_guidance_layers=[0])
    try:
        with pytest.raises(ValueError, match="with a SkipLayerGuidance guider yet: its transformer calls per step"):
            fg.trace(hv, record=fg.Record(words=["dog"]))
    finally:
        hv.guider = guider
    after = model_state(hv, hv15)
    assert all(a is b for a, b in zip(before[0].values(), after[0].values(), strict=True)) and before[1:] == after[1:]


# -- interventions against dense references ----------------------------------------------------------------------
def _anchor_bias(c, mask2d, column, strength, frames):
    return fg.testing.dense_anchor_bias(GRID, c["k"].shape[1], mask2d, column, strength, frames)


def _video_out(c, p):
    return torch.einsum("bhnt,bthd->bnhd", p, c["v"].double())


def test_anchor_mask_matches_dense_reference_and_leaves_other_rows_bit_identical(hv):
    mask = torch.zeros(GRID[1:])
    mask[1, 1:] = 1.0
    strength = 3.0
    anchor = fg.AnchorMask.from_mask(mask, "dog", strength=strength, frames="all",
                                     where=fg.Where(layers=[1], branches=("cond",), steps=[1]))
    record = fg.Record(words=["dog"], stats=["word_mass", "text_mass"])
    with KernelCalls(hv15) as plain:
        _call(hv, output_type="latent")
    with fg.trace(hv, edit=anchor, record=record) as run, KernelCalls(hv15) as edited:
        _call(hv, output_type="latent")
    dog = N_VIDEO + N_IMAGE + fg.store.decode_attrs(run.dataset.attrs)["word_positions"]["dog"][0]
    for index, (a, b) in enumerate(zip(plain.calls, edited.calls, strict=True)):
        if index != 2 * LAYERS + 1:  # step 1, cond, layer 1: the only call in scope
            assert torch.equal(a["out"], b["out"]), index
    c = edited.calls[2 * LAYERS + 1]
    p = _probs(c, _anchor_bias(c, mask, dog, strength, range(GRID[0])))
    torch.testing.assert_close(c["out"][:, :N_VIDEO].double(), _video_out(c, p), rtol=1e-5, atol=1e-5)
    # the context's rows (their own mask rows, the pads' all masked) are the model's own kernel output, bit for bit
    own = hv15.dispatch_attention_fn(c["q"], c["k"], c["v"], attn_mask=c["mask"])
    assert torch.equal(own[:, N_VIDEO:], c["out"][:, N_VIDEO:])
    got = run.dataset.word_mass.sel(branch="cond", step=1, layer="blocks.1", word="dog").values
    np.testing.assert_allclose(got, p[0, :, :, dog].mean(0).reshape(GRID[0], -1).mean(-1).numpy(), rtol=1e-5,
                               atol=1e-6)


def _mixed(c, p_dst, src_text, alpha):
    """The video rows' text block becomes (1 - alpha)·P_dst + alpha·`src_text`, the rest of each row rescaled."""
    text = slice(N_VIDEO + N_IMAGE, c["k"].shape[1])
    p = p_dst.clone()
    m_dst = p_dst[..., text].sum(-1, keepdim=True)
    m_new = (1 - alpha) * m_dst + alpha * src_text.sum(-1, keepdim=True)
    p *= (1 - m_new) / (1 - m_dst)
    p[..., text] = (1 - alpha) * p_dst[..., text] + alpha * src_text
    torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
    return p


@pytest.mark.parametrize("heads", ["each", "mean"])
def test_cache_transfer_and_its_recording_match_the_dense_reference(hv, heads):
    alpha = 0.4
    edit = fg.CacheTransfer(src=[0], dst=[1], alpha=alpha, mode="same_step", heads=heads)
    record = fg.Record(words=["dog", "fence"], stats=["word_mass", "text_mass", "image_mass"], layers=[1])
    with fg.trace(hv, record=record, edit=edit) as run, KernelCalls(hv15) as k:
        _call(hv, steps=1, output_type="latent")
    src, dst = k.calls[0], k.calls[1]  # the cond forward
    text = slice(N_VIDEO + N_IMAGE, dst["k"].shape[1])
    src_text = _probs(src)[..., text]
    if heads == "mean":
        src_text = src_text.mean(1, keepdim=True).expand_as(src_text)
    p = _mixed(dst, _probs(dst), src_text, alpha)
    torch.testing.assert_close(dst["out"][:, :N_VIDEO].double(), _video_out(dst, p), rtol=1e-5, atol=1e-5)
    got = run.dataset.sel(branch="cond", step=0, layer="blocks.1")
    positions = fg.store.decode_attrs(run.dataset.attrs)["word_positions"]
    pbar = p[0].mean(0)
    np.testing.assert_allclose(got.text_mass.values, pbar[:, text].sum(-1).reshape(GRID[0], -1).mean(-1).numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.image_mass.values, pbar[:, N_VIDEO:N_VIDEO + N_IMAGE].sum(-1)
                               .reshape(GRID[0], -1).mean(-1).numpy(), rtol=1e-5, atol=1e-6)
    for word, pos in positions.items():
        cols = [N_VIDEO + N_IMAGE + j for j in pos]
        np.testing.assert_allclose(got.word_mass.sel(word=word).values,
                                   pbar[:, cols].sum(-1).reshape(GRID[0], -1).mean(-1).numpy(), rtol=1e-5, atol=1e-6)


def test_focal_guidance_and_its_recording_match_the_dense_reference(hv):
    mask = torch.zeros(GRID[1:])
    mask[:, :2] = 1.0
    strength, alpha = 2.0, 0.5
    edit = fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(mask, "dog", strength=strength, frames="all"),
                            cache=fg.CacheTransfer(src=[0], dst=[1], alpha=alpha, mode="same_step"),
                            layers=[1], steps=None)
    with fg.trace(hv, record=fg.Record(words=["dog", "fence"], stats=["word_mass"]), edit=edit) as run, \
            KernelCalls(hv15) as k:
        _call(hv, steps=1, output_type="latent")
    (src, dst), (_, uncond) = k.calls[:2], k.calls[2:]
    positions = fg.store.decode_attrs(run.dataset.attrs)["word_positions"]
    dog = N_VIDEO + N_IMAGE + positions["dog"][0]
    text = slice(N_VIDEO + N_IMAGE, dst["k"].shape[1])
    p_dst = _probs(dst, _anchor_bias(dst, mask, dog, strength, range(GRID[0])))
    p = _mixed(dst, p_dst, _probs(src)[..., text], alpha)
    torch.testing.assert_close(dst["out"][:, :N_VIDEO].double(), _video_out(dst, p), rtol=1e-5, atol=1e-5)
    # the uncond branch is outside FocalGuidance's scope
    torch.testing.assert_close(uncond["out"][:, :N_VIDEO].double(), _video_out(uncond, _probs(uncond)), rtol=1e-5,
                               atol=1e-5)
    for word in ("dog", "fence"):
        cols = [N_VIDEO + N_IMAGE + j for j in positions[word]]
        mass = p[0].mean(0)[:, cols].sum(-1).reshape(GRID[0], -1).mean(-1)
        got = run.dataset.word_mass.sel(branch="cond", step=0, layer="blocks.1", word=word).values
        np.testing.assert_allclose(got, mass.numpy(), rtol=1e-5, atol=1e-7)


# -- the CLI with tiny-hunyuan15 ---------------------------------------------------------------------------------
def test_generate_with_tiny_hunyuan15(tmp_path):
    import imageio.v3 as iio
    from test_cli import call

    code, out, err = call(["generate", "--pipeline", "tiny-hunyuan15", "--prompt", "a dog jumps over the red fence",
                           "--words", "dog,jumps", "--out", tmp_path, "--steps", "2", "--layers", "1", "--src", "0"])
    assert code == 0, err
    assert iio.imread(tmp_path / "video.mp4").shape == (5, 32, 48, 3)
    ds = fg.open_run(tmp_path / "run.zarr")
    attrs = fg.store.decode_attrs(ds.attrs)
    assert attrs["pipeline_class"] == "HunyuanVideo15ImageToVideoPipeline" and tuple(attrs["grid"]) == GRID
    assert attrs["intervention"]["type"] == "FocalGuidance"
    code, _, err = call(["generate", "--pipeline", "tiny-hunyuan15", "--prompt", "a dog", "--words", "dog",
                         "--out", tmp_path / "b", "--height", "64", "--width", "64", "--steps", "1"])
    assert code != 0 and "takes no height" in err
