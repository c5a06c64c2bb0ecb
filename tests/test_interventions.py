"""Interventions on Wan: exact against float64 dense references, scoping, composition order, no-op identity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.transformers import transformer_wan as tw

import fglens as fg

PROMPT = "a dog jumps over the red fence"
HEIGHT, WIDTH, FRAMES = 48, 80, 9  # latent grid (3, 3, 5)
GRID = (3, 3, 5)


def _call(pipe, image, steps=2, **kw):
    return pipe(
        image=image, prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0), output_type="np", **kw,
    ).frames[0]


class KernelCalls:
    """In front of whatever `dispatch_attention_fn` is (inside a trace: fglens' interceptor): records each
    call's original q, k, v and the output the model finally gets."""

    def __init__(self, module=tw):
        self.module = module
        self.calls: list[dict] = []

    def __enter__(self):
        self.inner = self.module.dispatch_attention_fn

        def recording(query, key, value, *args, **kwargs):
            out = self.inner(query, key, value, *args, **kwargs)
            self.calls.append({"q": query.clone(), "k": key.clone(), "v": value.clone(), "out": out.clone(),
                               "mask": kwargs.get("attn_mask", args[0] if args else None)})
            return out

        self.module.dispatch_attention_fn = recording
        return self

    def __exit__(self, *exc):
        self.module.dispatch_attention_fn = self.inner

    def text_calls(self):
        return [c for c in self.calls if c["k"].shape[1] == 512]


def _dense(q, k, v, bias=None):
    logits = torch.einsum("bnhd,bthd->bhnt", q.double(), k.double()) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    return torch.einsum("bhnt,bthd->bnhd", torch.softmax(logits, -1), v.double())


def _layer_calls(calls, n_layers):
    """Text calls grouped per forward: forwards[f][layer]."""
    return [calls[i : i + n_layers] for i in range(0, len(calls), n_layers)]


def test_noop_interventions_are_bit_identical(wan_i2v, ref_image):
    plain = _call(wan_i2v, ref_image)
    anchor = fg.AnchorMask.from_mask(torch.ones(3, 5), "dog", strength=0.0)
    edit = anchor + fg.CacheTransfer(src=[0], dst=[2, 3], alpha=0.0) + fg.Scale("dog", 1.0)
    with fg.trace(wan_i2v, edit=edit):
        edited = _call(wan_i2v, ref_image)
    assert np.array_equal(plain, edited)


def test_anchor_mask_matches_dense_reference_and_respects_scope(wan_i2v, ref_image):
    mask = torch.zeros(3, 5)
    mask[0:2, 1:3] = 1.0
    strength = 3.0
    anchor = fg.AnchorMask.from_mask(mask, "dog", strength=strength, frames="first",
                                     where=fg.Where(layers=[2, 3], branches=("cond",), steps=[1]))
    plain = KernelCalls()
    with plain:
        _call(wan_i2v, ref_image)
    with fg.trace(wan_i2v, edit=anchor), KernelCalls() as edited:
        _call(wan_i2v, ref_image)
    n_layers = 4
    before = _layer_calls(plain.text_calls(), n_layers)
    after = _layer_calls(edited.text_calls(), n_layers)
    # step 0 (both branches) and step 1's uncond are outside the scope: bit-identical
    for forward in (0, 1, 3):
        for layer in range(n_layers):
            assert torch.equal(before[forward][layer]["out"], after[forward][layer]["out"]), (forward, layer)
    # step 1 cond: layers 0, 1 untouched; layers 2, 3 biased exactly as the formula says
    for layer in range(n_layers):
        call = after[2][layer]
        bias = None
        if layer in (2, 3):
            m = torch.zeros(GRID[0], 3, 5, dtype=torch.float64)
            m[0] = mask  # frames="first"
            column = torch.zeros(512, dtype=torch.float64)
            column[1] = 1.0  # "dog" is token 1
            bias = strength * m.reshape(-1)[:, None] * column[None, :]  # [N, T]
        expected = _dense(call["q"], call["k"], call["v"], bias)
        torch.testing.assert_close(call["out"].double(), expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(before[2][2]["out"], after[2][2]["out"])


def test_cache_transfer_same_and_previous_step(wan_i2v, ref_image):
    alpha = 0.4
    n_layers = 4
    for mode, src, dst in (("same_step", 0, 2), ("prev_step", 3, 1)):
        edit = fg.CacheTransfer(src=[src], dst=[dst], alpha=alpha, mode=mode)
        with fg.trace(wan_i2v, edit=edit), KernelCalls() as k:
            _call(wan_i2v, ref_image, steps=3)
        forwards = _layer_calls(k.text_calls(), n_layers)
        for index, forward in enumerate(forwards):
            step, branch = divmod(index, 2)
            call = forward[dst]
            own = _dense(call["q"], call["k"], call["v"])
            if mode == "same_step":
                source = forward[src]
            elif step == 0:
                torch.testing.assert_close(call["out"].double(), own, rtol=1e-5, atol=1e-5)  # no map yet
                continue
            else:
                source = forwards[index - 2][src]  # the previous step, same branch
            expected = (1 - alpha) * own + alpha * _dense(source["q"], source["k"], call["v"])
            torch.testing.assert_close(call["out"].double(), expected, rtol=1e-5, atol=1e-5)


def test_composition_order_is_the_order_given(wan_i2v, ref_image):
    cache = fg.CacheTransfer(src=[0], dst=[2], alpha=0.5, mode="same_step")
    ablate = fg.Ablate("text", where=fg.Where(layers=[2]))
    outs = {}
    for name, edit in (("ablate_then_cache", ablate + cache), ("cache_then_ablate", fg.compose(cache, ablate))):
        with fg.trace(wan_i2v, edit=edit), KernelCalls() as k:
            _call(wan_i2v, ref_image, steps=1)
        outs[name] = _layer_calls(k.text_calls(), 4)[0]
    # ablate first: the destination's own map is removed, then half the source map is mixed in
    first = outs["ablate_then_cache"][2]
    expected = 0.5 * _dense(outs["ablate_then_cache"][0]["q"], outs["ablate_then_cache"][0]["k"], first["v"])
    torch.testing.assert_close(first["out"].double(), expected, rtol=1e-5, atol=1e-5)
    # cache first, then the ablation removes everything
    assert torch.count_nonzero(outs["cache_then_ablate"][2]["out"]) == 0


def test_recorders_see_the_post_edit_attention(wan_i2v, ref_image):
    anchor = fg.AnchorMask.from_mask(torch.ones(3, 5), "dog", strength=4.0, where=fg.Where(layers=[1]))
    record = fg.Record(words=["dog", "fence"], stats=["word_mass"])
    with fg.trace(wan_i2v, record=record) as plain:
        _call(wan_i2v, ref_image, steps=1)
    scale = fg.Scale("fence", 0.0, where=fg.Where(layers=[2]))
    with fg.trace(wan_i2v, record=record, edit=anchor + scale) as edited, KernelCalls() as k:
        _call(wan_i2v, ref_image, steps=1)
    a = plain.dataset.word_mass.sel(branch="cond", step=0)
    b = edited.dataset.word_mass.sel(branch="cond", step=0)
    np.testing.assert_array_equal(a.sel(layer="blocks.0").values, b.sel(layer="blocks.0").values)
    # the recorded map of the anchored layer is the biased softmax's, exactly
    call = _layer_calls(k.text_calls(), 4)[0][1]
    logits = torch.einsum("bnhd,bthd->bhnt", call["q"].double(), call["k"].double()) / math.sqrt(call["q"].shape[-1])
    logits[..., 1] += 4.0  # the anchor covers every token; "dog" is token 1
    dog = torch.softmax(logits, -1)[0, :, :, 1].mean(0).reshape(GRID[0], -1).mean(-1)
    np.testing.assert_allclose(b.sel(layer="blocks.1", word="dog").values, dog.numpy(), rtol=1e-5, atol=1e-6)
    assert (b.sel(layer="blocks.1", word="dog") > a.sel(layer="blocks.1", word="dog")).all()
    np.testing.assert_array_equal(b.sel(layer="blocks.2", word="fence").values, 0.0)  # scaled to zero
    assert (b.sel(layer="blocks.3", word="fence") > 0).all()
    attrs = fg.store.decode_attrs(edited.dataset.attrs)
    assert [p["type"] for p in attrs["intervention"]["parts"]] == ["AnchorMask", "Scale"]


def test_ablate_image_zeroes_the_image_call(wan_i2v, ref_image):
    with fg.trace(wan_i2v, edit=fg.Ablate("image", where=fg.Where(layers=[0]))), KernelCalls() as k:
        _call(wan_i2v, ref_image, steps=1)
    image_calls = [c for c in k.calls if c["k"].shape[1] == 257]
    assert torch.count_nonzero(image_calls[0]["out"]) == 0
    assert torch.count_nonzero(image_calls[1]["out"]) > 0


def test_focal_guidance_preset_scopes_its_parts(wan_i2v, ref_image):
    anchor = fg.AnchorMask.from_mask(torch.ones(3, 5), "dog", strength=2.0)
    edit = fg.FocalGuidance(anchor=anchor, cache=fg.CacheTransfer(src=[0], dst=[3]), layers=[2, 3],
                            steps=(0.0, 0.5))
    anchor_part, cache_part = edit.parts()
    assert anchor_part.where.layers == (2, 3) and anchor_part.where.steps == (0.0, 0.5)
    assert anchor_part.where.branches == ("cond",)
    assert cache_part.dst == [2, 3]
    plain = _call(wan_i2v, ref_image, steps=4)
    with fg.trace(wan_i2v, edit=edit):
        edited = _call(wan_i2v, ref_image, steps=4)
    assert not np.array_equal(plain, edited)


def test_cache_transfer_pairs_each_destination_with_its_nearest_source(wan_i2v, ref_image):
    """A pool of sources (e.g. `weak.responsive`) with another number of destinations: each destination takes the
    source nearest in depth, so the result is the explicit one-source transfer, and not the other source's."""
    def run(edit):
        with fg.trace(wan_i2v, edit=edit):
            return _call(wan_i2v, ref_image, steps=2)

    pooled = run(fg.CacheTransfer(src=[3, 0], dst=[1], alpha=0.8))
    assert np.array_equal(pooled, run(fg.CacheTransfer(src=[0], dst=[1], alpha=0.8)))
    assert not np.array_equal(pooled, run(fg.CacheTransfer(src=[3], dst=[1], alpha=0.8)))
    pooled = run(fg.CacheTransfer(src=[0, 3, 1], dst=[2], alpha=0.8))  # tie between 1 and 3: the earlier
    assert np.array_equal(pooled, run(fg.CacheTransfer(src=[1], dst=[2], alpha=0.8)))


def test_clear_errors_before_sampling(wan_i2v, ref_image):
    with pytest.raises(ValueError, match="out of range"):
        fg.trace(wan_i2v, edit=fg.Scale("dog", 2.0, where=fg.Where(layers=[12])))
    with pytest.raises(ValueError, match="'cat' is not in the prompt"):
        with fg.trace(wan_i2v, edit=fg.Scale("cat", 2.0)):
            _call(wan_i2v, ref_image, steps=1)
    assert "check_inputs" not in vars(wan_i2v)
    with pytest.raises(ValueError, match="one source, or one per destination"):
        fg.CacheTransfer(src=[0, 1], dst=[2, 3, 4], pairing="zip")
    with pytest.raises(ValueError, match="pairing must be"):
        fg.CacheTransfer(src=[0, 1], dst=[2], pairing="closest")
    with pytest.raises(ValueError, match="same_step needs the source before"):
        fg.trace(wan_i2v, edit=fg.CacheTransfer(src=[3], dst=[1], mode="same_step"))
    with pytest.raises(TypeError, match="fg intervention"):
        fg.trace(wan_i2v, edit="anchor")
    with pytest.raises(ValueError, match="fractions of the schedule"):
        t = fg.testing.tiny_wan_transformer()
        edit = fg.Scale("w", 2.0, where=fg.Where(steps=(0.0, 0.5)))
        with fg.trace(t, edit=edit, record=fg.Record(words={"w": [1]})):
            text = torch.randn(1, 512, 32)
            t(hidden_states=torch.randn(1, 36, 2, 4, 6), timestep=torch.tensor([900]), encoder_hidden_states=text,
              encoder_hidden_states_image=torch.randn(1, 257, 8))


def test_anchor_from_clip_drives_a_pipeline(wan_i2v):
    clip = fg.anchors.Clip(fg.anchors.tiny_config())
    image = fg.testing.reference_image(WIDTH, HEIGHT)
    anchor = fg.AnchorMask.from_clip(image, PROMPT, ["dog"], clip, strength=2.0)
    assert tuple(anchor.masks.shape) == (1, 3, 5)  # the latent grid of a 48 x 80 call
    assert anchor.regions.similarity.maps.shape[0] == 1  # the CLIP similarity map, kept for plotting
    with pytest.raises(ValueError, match="cat"):
        fg.AnchorMask.from_clip(image, PROMPT, ["cat"], clip)
    with fg.trace(wan_i2v, edit=anchor):
        wan_i2v(image=image, prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=1,
                output_type="latent")
