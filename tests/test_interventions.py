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
                               "mask": kwargs.get("attn_mask", args[0] if args else None), "args": args,
                               "kwargs": kwargs})
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


def assert_focal_guidance_dense(run, cond, uncond, src: int, dst: int, mask, strength: float, alpha: float, grid):
    """FocalGuidance (an anchor on "dog", token 1, plus a same-step cache transfer src -> dst, cond branch only) against
    a float64 dense reference from the kernel calls' own q, k, v (`KernelCalls`, `_layer_calls`), and the recorded
    word mass of the destination against that reference's probabilities. Shared by the models' trace tests."""
    own, source = cond[dst], cond[src]
    bias = torch.zeros(math.prod(grid), own["k"].shape[1], dtype=torch.float64)
    bias[:, 1] = strength * mask.double().expand(grid[0], -1, -1).reshape(-1)  # "dog" is token 1, every frame

    def logits(c):
        return torch.einsum("bnhd,bthd->bhnt", c["q"].double(), c["k"].double()) / math.sqrt(c["q"].shape[-1])

    p = (1 - alpha) * torch.softmax(logits(own) + bias, -1) + alpha * torch.softmax(logits(source), -1)
    torch.testing.assert_close(own["out"].double(), torch.einsum("bhnt,bthd->bnhd", p, own["v"].double()),
                               rtol=1e-5, atol=1e-5)
    # the uncond branch is outside FocalGuidance's scope
    torch.testing.assert_close(uncond[dst]["out"].double(), _dense(uncond[dst]["q"], uncond[dst]["k"],
                                                                   uncond[dst]["v"]), rtol=1e-5, atol=1e-5)
    positions = fg.store.decode_attrs(run.dataset.attrs)["word_positions"]
    for word in ("dog", "fence"):
        mass = p[0][..., positions[word]].sum(-1).mean(0).reshape(grid[0], -1).mean(-1)
        got = run.dataset.word_mass.sel(branch="cond", step=0, layer=f"blocks.{dst}", word=word).values
        np.testing.assert_allclose(got, mass.numpy(), rtol=1e-5, atol=1e-7)


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
    edit = fg.FocalGuidance(anchor=anchor, cache=fg.CacheTransfer(src=[0], dst=[2, 3]), layers=[2, 3],
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


# -- the cache transfer over the real text keys and one pad key ------------------------------------------------------
LONG_PROMPT = "a dog jumps over the red fence while a small cat watches from the old wooden gate"


def _real_length(pipe, prompt: str) -> int:
    """Tokens before the padding, counted by the pipeline's own tokenizer as the Wan pipeline calls it."""
    mask = pipe.tokenizer(prompt, padding="max_length", max_length=512, truncation=True, add_special_tokens=True,
                          return_attention_mask=True, return_tensors="pt").attention_mask
    return int(mask.sum())


def _blocks(calls, n_video):
    """Kernel calls seen in front of the original kernel (KernelCalls entered before fg.trace), grouped per block:
    each block starts with its self-attention call; its model calls are the first 257-key (image) and 512-key
    (text) calls, anything else is an intervention's own kernel call ("extra")."""
    blocks = []
    for c in calls:
        if c["k"].shape[1] == n_video and c["q"].shape[1] == n_video and (not blocks or blocks[-1]["text"]):
            blocks.append({"self": c, "image": None, "text": None, "extra": []})
            continue
        block = blocks[-1]
        if c["k"].shape[1] == 257 and block["image"] is None:
            block["image"] = c
        elif c["k"].shape[1] == 512 and block["text"] is None:
            block["text"] = c
        else:
            block["extra"].append(c)
    return blocks


def _pad_bias(extra, width):
    """The logit bias the extra dimensions of a kernel call add to each key, for the first query and head."""
    q, k = extra["q"][0, 0, 0, width:].double(), extra["k"][0, :, 0, width:].double()
    return (k @ q) / math.sqrt(width)


def test_cache_transfer_runs_over_the_real_text_keys_and_one_pad_key(wan_i2v, ref_image):
    """The pipeline pads each prompt to 512 rows with zero embeddings: the transfer's extra kernel call sees the L
    real keys and one pad key carrying log(512 - L), and equals the dense float64 reference over all 512 keys."""
    real = {"cond": _real_length(wan_i2v, PROMPT), "uncond": _real_length(wan_i2v, "")}
    assert real == {"cond": 8, "uncond": 1}  # the tiny tokenizer's counts; far fewer than 512
    alpha, src, dst = 0.4, 0, 2
    edit = fg.CacheTransfer(src=[src], dst=[dst], alpha=alpha, mode="same_step")
    with KernelCalls() as inner, fg.trace(wan_i2v, edit=edit), KernelCalls() as outer:
        _call(wan_i2v, ref_image, steps=2)
    blocks = _blocks(inner.calls, math.prod(GRID))
    forwards = [blocks[i : i + 4] for i in range(0, len(blocks), 4)]
    edited = _layer_calls(outer.text_calls(), 4)
    assert len(forwards) == len(edited) == 4  # 2 steps x (cond, uncond)
    for index, forward in enumerate(forwards):
        n = real[("cond", "uncond")[index % 2]]
        assert [len(b["extra"]) for b in forward] == [0, 0, 1, 0]  # one extra call, in the destination only
        (extra,) = forward[dst]["extra"]
        own, source = forward[dst]["text"], forward[src]["text"]
        width = own["k"].shape[-1]
        assert extra["k"].shape[1] == n + 1  # not 512
        assert torch.equal(extra["k"][..., :width], source["k"][:, : n + 1])
        assert torch.equal(extra["v"][..., :width], own["v"][:, : n + 1])
        expected_bias = torch.zeros(n + 1, dtype=torch.float64)
        expected_bias[n] = math.log(512 - n)
        torch.testing.assert_close(_pad_bias(extra, width), expected_bias, rtol=0, atol=1e-5)
        # the extra call alone is Attn(Q_src, K_src, V_dst) over all 512 keys, the 512 - n pads counted one by one
        dense = _dense(source["q"], source["k"], own["v"])
        torch.testing.assert_close(extra["out"][..., :width].double(), dense, rtol=1e-5, atol=1e-6)
        expected = (1 - alpha) * _dense(own["q"], own["k"], own["v"]) + alpha * dense
        torch.testing.assert_close(edited[index][dst]["out"].double(), expected, rtol=1e-5, atol=1e-5)


def test_focal_guidance_and_recording_over_collapsed_pads_match_the_dense_reference(wan_i2v, ref_image):
    """Anchor then cache on one layer, recorded: the anchor's bias columns are 0 on the pad keys, so neither the
    collapsed extra call nor the recorder's collapsed columns change what the dense float64 formula gives."""
    mask = torch.zeros(3, 5)
    mask[1:, 2:] = 1.0
    strength, alpha, src, dst = 3.0, 0.5, 0, 2
    edit = fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(mask, "dog", strength=strength, frames="all"),
                            cache=fg.CacheTransfer(src=[src], dst=[dst], alpha=alpha, mode="same_step"),
                            layers=[dst], steps=None)
    record = fg.Record(words=["dog", "fence"], stats=["word_mass"])
    with KernelCalls() as inner, fg.trace(wan_i2v, record=record, edit=edit) as run, KernelCalls() as outer:
        _call(wan_i2v, ref_image, steps=1)
    blocks = _blocks(inner.calls, math.prod(GRID))
    cond, uncond = blocks[:4], blocks[4:]
    n = _real_length(wan_i2v, PROMPT)
    assert [len(b["extra"]) for b in cond] == [0, 0, 1, 0] and cond[dst]["extra"][0]["k"].shape[1] == n + 1
    assert [len(b["extra"]) for b in uncond] == [0, 0, 0, 0]  # FocalGuidance edits the cond branch only
    own, source = _layer_calls(outer.text_calls(), 4)[0][dst], _layer_calls(outer.text_calls(), 4)[0][src]
    bias = torch.zeros(math.prod(GRID), 512, dtype=torch.float64)
    bias[:, 1] = strength * mask.double().expand(GRID[0], -1, -1).reshape(-1)  # "dog" is token 1, every frame
    logits_own = torch.einsum("bnhd,bthd->bhnt", own["q"].double(), own["k"].double()) / math.sqrt(own["q"].shape[-1])
    logits_src = torch.einsum("bnhd,bthd->bhnt", source["q"].double(), source["k"].double()) / math.sqrt(
        own["q"].shape[-1])
    p = (1 - alpha) * torch.softmax(logits_own + bias, -1) + alpha * torch.softmax(logits_src, -1)  # [1, H, N, 512]
    torch.testing.assert_close(own["out"].double(), torch.einsum("bhnt,bthd->bnhd", p, own["v"].double()),
                               rtol=1e-5, atol=1e-5)
    ds = run.dataset
    positions = fg.store.decode_attrs(ds.attrs)["word_positions"]
    for word in ("dog", "fence"):
        mass = p[0][..., positions[word]].sum(-1).mean(0).reshape(GRID[0], -1).mean(-1)
        got = ds.word_mass.sel(branch="cond", step=0, layer=f"blocks.{dst}", word=word).values
        np.testing.assert_allclose(got, mass.numpy(), rtol=1e-5, atol=1e-7)


def _check_mixed(own, p, positions, ds, dst):
    """The destination call's output and its recorded word masses (cond, step 0) against the dense map `p`."""
    torch.testing.assert_close(own["out"].double(), torch.einsum("bhnt,bthd->bnhd", p, own["v"].double()),
                               rtol=1e-5, atol=1e-5)
    for word, cols in positions.items():
        mass = p[0][..., cols].sum(-1).mean(0).reshape(GRID[0], -1).mean(-1)
        got = ds.word_mass.sel(branch="cond", step=0, layer=f"blocks.{dst}", word=word).values
        np.testing.assert_allclose(got, mass.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("pads", ["collapsed", "all keys"])
def test_cache_transfer_mixes_in_the_map_the_source_used_with_its_own_edits(wan_i2v, ref_image, pads):
    """An anchor and a Scale on the source layer: the destination mixes in the source's biased map (the one the
    model used there, as on joint attention), with the pads collapsed or not; at alpha 1 the destination's
    recorded word mass is the source's."""
    mask = torch.zeros(3, 5)
    mask[:2, 1:4] = 1.0
    strength, factor, src, dst = 3.0, 0.25, 0, 2
    on_src = fg.Where(layers=[src])
    edit = (fg.AnchorMask.from_mask(mask, "dog", strength=strength, frames="all", where=on_src)
            + fg.Scale("fence", factor, where=on_src))
    tokens = wan_i2v.tokenizer.convert_ids_to_tokens(wan_i2v.tokenizer(PROMPT).input_ids)
    words = {w: [tokens.index("\u2581" + w)] for w in ("dog", "fence")}
    if pads == "collapsed":
        kwargs = {"prompt": PROMPT}
    else:  # embeddings passed in: fglens cannot vouch for the pads, nor read the words (given as positions)
        embeds = wan_i2v.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)[0]
        kwargs = {"prompt": None, "prompt_embeds": embeds}
    record = fg.Record(words=words if pads != "collapsed" else list(words), stats=["word_mass"])
    outs = {}
    for alpha in (0.6, 1.0):
        cache = fg.CacheTransfer(src=[src], dst=[dst], alpha=alpha, mode="same_step")
        with KernelCalls() as inner, fg.trace(wan_i2v, record=record, edit=edit + cache) as run, \
                KernelCalls() as outer:
            wan_i2v(image=ref_image, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=1,
                    generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
        outs[alpha] = run.dataset
        (extra,) = _blocks(inner.calls, math.prod(GRID))[dst]["extra"]  # cond
        assert extra["k"].shape[1] == (_real_length(wan_i2v, PROMPT) + 1 if pads == "collapsed" else 512)
        own, source = _layer_calls(outer.text_calls(), 4)[0][dst], _layer_calls(outer.text_calls(), 4)[0][src]
        positions = fg.store.decode_attrs(run.dataset.attrs)["word_positions"]
        assert positions == words
        bias = torch.zeros(math.prod(GRID), 512, dtype=torch.float64)
        bias[:, positions["dog"]] += strength * mask.double().expand(GRID[0], -1, -1).reshape(-1)[:, None]
        bias[:, positions["fence"]] += math.log(factor)
        logits_own = torch.einsum("bnhd,bthd->bhnt", own["q"].double(), own["k"].double())
        logits_src = torch.einsum("bnhd,bthd->bhnt", source["q"].double(), source["k"].double())
        scale = 1 / math.sqrt(own["q"].shape[-1])
        p = (1 - alpha) * torch.softmax(logits_own * scale, -1) + alpha * torch.softmax(logits_src * scale + bias, -1)
        _check_mixed(own, p, positions, run.dataset, dst)
    full = outs[1.0].word_mass.sel(branch="cond", step=0)
    np.testing.assert_allclose(full.sel(layer=f"blocks.{dst}").values, full.sel(layer=f"blocks.{src}").values,
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("heads,source_map,pads", [("mean", "edited", "collapsed"), ("mean", "edited", "all keys"),
                                                    ("each", "clean", "collapsed"), ("mean", "clean", "all keys")])
def test_cache_transfer_head_mean_and_clean_source_maps_match_the_dense_reference(wan_i2v, ref_image, heads,
                                                                                  source_map, pads):
    """Issue 15 item 5 and issue 14's explicit option: ``heads="mean"`` mixes the source's head-averaged map into
    every destination head; ``source_map="clean"`` the source's map without its own anchor. Output and recorded
    word mass against float64 dense attention over all 512 keys, pads collapsed or not."""
    mask = torch.zeros(3, 5)
    mask[:2, 1:4] = 1.0
    strength, alpha, src, dst = 3.0, 0.7, 0, 2
    edit = fg.AnchorMask.from_mask(mask, "dog", strength=strength, where=fg.Where(layers=[src]))
    tokens = wan_i2v.tokenizer.convert_ids_to_tokens(wan_i2v.tokenizer(PROMPT).input_ids)
    words = {w: [tokens.index("\u2581" + w)] for w in ("dog", "fence")}
    if pads == "collapsed":
        kwargs, record_words = {"prompt": PROMPT}, list(words)
    else:
        embeds = wan_i2v.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)[0]
        kwargs, record_words = {"prompt": None, "prompt_embeds": embeds}, words
    cache = fg.CacheTransfer(src=[src], dst=[dst], alpha=alpha, mode="same_step", heads=heads, source_map=source_map)
    record = fg.Record(words=record_words, stats=["word_mass"])
    with fg.trace(wan_i2v, record=record, edit=edit + cache) as run, KernelCalls() as outer:
        wan_i2v(image=ref_image, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=1,
                generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
    own, source = _layer_calls(outer.text_calls(), 4)[0][dst], _layer_calls(outer.text_calls(), 4)[0][src]
    scale = 1 / math.sqrt(own["q"].shape[-1])
    bias = torch.zeros(math.prod(GRID), 512, dtype=torch.float64)
    if source_map == "edited":
        bias[:, words["dog"]] += strength * mask.double().expand(GRID[0], -1, -1).reshape(-1)[:, None]
    p_src = torch.softmax(torch.einsum("bnhd,bthd->bhnt", source["q"].double(), source["k"].double()) * scale + bias,
                          -1)
    if heads == "mean":
        p_src = p_src.mean(1, keepdim=True)
    p_own = torch.softmax(torch.einsum("bnhd,bthd->bhnt", own["q"].double(), own["k"].double()) * scale, -1)
    p = (1 - alpha) * p_own + alpha * p_src
    _check_mixed(own, p, words, run.dataset, dst)
    spec = fg.intervention_from_spec(run.dataset.attrs["intervention"]).parts()[-1].spec()
    assert (spec["heads"], spec["source_map"]) == (heads, source_map)


def test_cache_transfer_refuses_unknown_heads_and_source_maps():
    with pytest.raises(ValueError, match="heads must be 'each'.*or 'mean'"):
        fg.CacheTransfer(src=[0], dst=[1], heads="max")
    with pytest.raises(ValueError, match="source_map must be 'edited'.*or 'clean'"):
        fg.CacheTransfer(src=[0], dst=[1], source_map="raw")


def test_cache_transfer_keeps_every_key_where_the_pads_are_unknown(wan_i2v, ref_image):
    """No collapse where fglens cannot vouch for the pads: embeddings passed in by the user (that branch only),
    or a batch of several prompts (the encoding's count is item 0's; a longer prompt's real keys lie after it).
    The dense extra call is then exact as before."""
    alpha, src, dst = 0.5, 0, 2
    n_video = math.prod(GRID)
    embeds, _ = wan_i2v.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)
    runs = {
        "prompt_embeds": dict(prompt=None, prompt_embeds=embeds),
        "two_prompts": dict(prompt=[PROMPT, LONG_PROMPT]),
    }
    for name, kwargs in runs.items():
        edit = fg.CacheTransfer(src=[src], dst=[dst], alpha=alpha, mode="same_step")
        with KernelCalls() as inner, fg.trace(wan_i2v, edit=edit), KernelCalls() as outer:
            wan_i2v(image=ref_image, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=1,
                    generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs)
        blocks = _blocks(inner.calls, n_video)
        keys = [blocks[f * 4 + dst]["extra"][0]["k"].shape[1] for f in (0, 1)]  # (cond, uncond)
        if name == "prompt_embeds":
            assert keys == [512, _real_length(wan_i2v, "") + 1]  # the pipeline still encodes the negative prompt
        else:
            assert keys == [512, 512]
            k = blocks[src]["text"]["k"]  # cond, item 1: real keys after item 0's length, unlike the pad key
            n0, n1 = _real_length(wan_i2v, PROMPT), _real_length(wan_i2v, LONG_PROMPT)
            assert n1 > n0 + 1 and not torch.equal(k[1, n0 + 1], k[1, -1])
        edited = _layer_calls(outer.text_calls(), 4)
        for f in (0, 1):
            own, source = edited[f][dst], edited[f][src]
            expected = (1 - alpha) * _dense(own["q"], own["k"], own["v"]) + alpha * _dense(source["q"], source["k"],
                                                                                         own["v"])
            torch.testing.assert_close(own["out"].double(), expected, rtol=1e-5, atol=1e-5)


def test_cache_transfer_on_a_bare_transformer_collapses_zero_rows_only():
    """A bare transformer: the real length comes from its inputs (rows after the last non-zero one). Zero pad
    rows are collapsed; identical non-zero pad rows are not zero embeddings, so every key is kept."""
    t = fg.testing.tiny_wan_transformer()
    g = torch.Generator().manual_seed(1)
    hidden, image = torch.randn(1, 36, 2, 4, 6, generator=g), torch.randn(1, 257, 8, generator=g)
    n_video, n = 2 * 2 * 3, 5
    text = torch.zeros(1, 512, fg.testing.WAN_TEXT_DIM)
    text[:, :n] = torch.randn(1, n, fg.testing.WAN_TEXT_DIM, generator=g)
    nonzero_pads = text.clone()
    nonzero_pads[:, n:] = torch.randn(1, 1, fg.testing.WAN_TEXT_DIM, generator=g)
    alpha, src, dst = 0.6, 1, 3
    for rows, context in ((n + 1, text), (512, nonzero_pads)):
        edit = fg.CacheTransfer(src=[src], dst=[dst], alpha=alpha, mode="same_step")
        with KernelCalls() as inner, fg.trace(t, edit=edit), KernelCalls() as outer:
            t(hidden_states=hidden, timestep=torch.tensor([900]), encoder_hidden_states=context,
              encoder_hidden_states_image=image)
        blocks = _blocks(inner.calls, n_video)
        assert [len(b["extra"]) for b in blocks] == [0, 0, 0, 1]
        assert blocks[dst]["extra"][0]["k"].shape[1] == rows
        own, source = _layer_calls(outer.text_calls(), 4)[0][dst], _layer_calls(outer.text_calls(), 4)[0][src]
        expected = (1 - alpha) * _dense(own["q"], own["k"], own["v"]) + alpha * _dense(source["q"], source["k"],
                                                                                     own["v"])
        torch.testing.assert_close(own["out"].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pad_bias_parts_are_exact_in_the_key_dtype(dtype):
    """The pad key's log-count bias is stored in three key dimensions: each part exactly representable in the key's
    dtype, their float32 sum the bias to float32 precision (one bfloat16 number would be off by up to 2**-9)."""
    from fglens.interventions.cache import _split

    for value in (math.log(511) * math.sqrt(128), math.log(2) * math.sqrt(8), math.log(504) * math.sqrt(32), 0.0):
        parts = _split(value, dtype, 3)
        stored = torch.tensor(parts, dtype=torch.float64).to(dtype)
        assert stored.double().tolist() == parts  # representable: storing them loses nothing
        total = stored.float().sum().double().item()
        assert abs(total - value) <= 2**-22 * max(abs(value), 1.0), (dtype, value, total)


def test_collapsed_transfer_in_bfloat16_is_as_exact_as_the_model_kernel():
    """bfloat16 on a bare transformer: the collapsed extra call's error against float64 (over all 512 keys, from the
    same bfloat16 inputs) is no larger than that of the model's own dense bfloat16 text call."""
    t = fg.testing.tiny_wan_transformer(head_dim=32).to(torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    text = torch.zeros(1, 512, fg.testing.WAN_TEXT_DIM)
    text[:, :7] = torch.randn(1, 7, fg.testing.WAN_TEXT_DIM, generator=g)
    edit = fg.CacheTransfer(src=[0], dst=[2], alpha=0.5, mode="same_step")
    with KernelCalls() as inner, fg.trace(t, edit=edit):
        t(hidden_states=torch.randn(1, 36, 2, 4, 6, generator=g).bfloat16(), timestep=torch.tensor([900]),
          encoder_hidden_states=text.bfloat16(), encoder_hidden_states_image=torch.randn(1, 257, 8).bfloat16())
    blocks = _blocks(inner.calls, 12)
    (extra,) = blocks[2]["extra"]
    own, source = blocks[2]["text"], blocks[0]["text"]
    width = own["k"].shape[-1]
    assert extra["k"].shape[1] == 8 and extra["k"].dtype == torch.bfloat16
    collapsed_error = (extra["out"][..., :width].double() - _dense(source["q"], source["k"], own["v"])).abs().max()
    model_error = max((b["text"]["out"].double() - _dense(b["text"]["q"], b["text"]["k"], b["text"]["v"])).abs().max()
                      for b in blocks)
    assert collapsed_error <= model_error, (collapsed_error, model_error)


def test_previous_step_transfer_from_an_earlier_layer(wan_i2v, ref_image):
    """mode="prev_step" with the source before the destination: the destination mixes in the source's map of the
    previous step (same branch), although the source has made this step's map by then."""
    alpha, src, dst = 0.7, 0, 2
    edit = fg.CacheTransfer(src=[src], dst=[dst], alpha=alpha, mode="prev_step")
    with KernelCalls() as inner, fg.trace(wan_i2v, edit=edit), KernelCalls() as outer:
        _call(wan_i2v, ref_image, steps=3)
    forwards = _layer_calls(outer.text_calls(), 4)
    extras = [len(b["extra"]) for b in _blocks(inner.calls, math.prod(GRID))]
    assert extras == [0] * 8 + [0, 0, 1, 0] * 4  # nothing at step 0 (no previous map yet), then one per forward
    for index, forward in enumerate(forwards):
        own = forward[dst]
        expected = _dense(own["q"], own["k"], own["v"])
        if index >= 2:
            source = forwards[index - 2][src]  # the previous step, same branch
            expected = (1 - alpha) * expected + alpha * _dense(source["q"], source["k"], own["v"])
        torch.testing.assert_close(own["out"].double(), expected, rtol=1e-5, atol=1e-5)


# -- refused inputs (issue 12): non-finite parameters, edits that would silently do nothing -----------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_parameters_are_refused_by_the_constructors(bad):
    mask = torch.ones(3, 5)
    with pytest.raises(ValueError, match=f"AnchorMask strength must be a finite number; got {bad}"):
        fg.AnchorMask.from_mask(mask, "dog", strength=bad)
    poisoned = mask.clone()
    poisoned[1, 2] = bad
    with pytest.raises(ValueError, match=r"AnchorMask masks must be finite .* \['dog'\]"):
        fg.AnchorMask.from_mask(poisoned, "dog", strength=2.0)
    with pytest.raises(ValueError, match=f"Scale factor must be a finite number; got {bad}"):
        fg.Scale("dog", bad)
    with pytest.raises(ValueError, match=f"CacheTransfer alpha must be a finite number; got {bad}"):
        fg.CacheTransfer(src=[0], dst=[2], alpha=bad)
    with pytest.raises(ValueError, match="Where steps takes step indices"):
        fg.Where(steps=[bad])
    with pytest.raises(ValueError, match="step fraction range"):
        fg.Where(steps=(0.0, bad))


def test_empty_mask_is_refused_with_one_sentence():
    with pytest.raises(ValueError, match="at least one row and one column.*got a 0x0 mask"):
        fg.AnchorMask.from_mask(torch.zeros(0, 0), "dog")


def test_cache_transfer_from_a_layer_to_itself_is_refused(wan_i2v):
    with pytest.raises(ValueError, match=r"pairs blocks\.2 with itself \(src == dst\)"):
        fg.trace(wan_i2v, edit=fg.CacheTransfer(src=[2], dst=[2]))
    with pytest.raises(ValueError, match=r"pairs blocks\.3 with itself"):
        fg.trace(wan_i2v, edit=fg.CacheTransfer(src=[0, "blocks.3"], dst=[1, -1], pairing="zip"))
    # in a pool, a destination that is also a source takes the nearest *other* source
    edit = fg.CacheTransfer(src=[0, 2], dst=[2, 3], pairing="nearest")
    (bound,) = fg.trace(wan_i2v, edit=edit).editor.parts
    assert bound.pairs == {"blocks.2": ("blocks.0", True), "blocks.3": ("blocks.2", True)}
    assert edit.pairs == {} and bound is not edit  # the trace binds its own copy; the user's object is unchanged


def test_cache_transfer_layers_given_in_where_are_refused_not_ignored():
    with pytest.raises(ValueError, match=r"give its layers as dst= \(here \[2\]\), not as where=Where\(layers=\[5\]\)"):
        fg.CacheTransfer(src=[0], dst=[2], where=fg.Where(layers=[5]))
    assert fg.CacheTransfer(src=[0], dst=[2], where=fg.Where(layers=[2], steps=[1])).where.steps == (1,)
    # FocalGuidance's layers and the cache's destinations must agree: never silently replaced
    with pytest.raises(ValueError, match=r"FocalGuidance\(layers=\[2, 3\]\) and its cache's dst=\[1\] name "
                                         r"different layers.*CacheTransfer\(src=\.\.\., dst=\[2, 3\]\)"):
        fg.FocalGuidance(cache=fg.CacheTransfer(src=[0], dst=[1]), layers=[2, 3])
    edit = fg.FocalGuidance(cache=fg.CacheTransfer(src=[0], dst=[2, 3]), layers=[2, 3])
    (cache,) = edit.parts()
    assert cache.dst == [2, 3] and tuple(cache.where.layers) == (2, 3)
    (cache,) = fg.FocalGuidance(cache=fg.CacheTransfer(src=[0], dst=[1])).parts()  # layers=None: the cache's own
    assert cache.dst == [1]


@pytest.mark.parametrize("where, message", [
    (fg.Where(steps=[99]), r"Scale: step 99 out of range: this run's schedule has 2 steps \(indices 0\.\.1\)"),
    (fg.Where(steps=[0, 5, 7]), r"Scale: steps 5, 7 out of range"),
    (fg.Where(steps=(0.5, 0.5)), r"step fractions \(0\.5, 0\.5\) select no step of this run's 2-step schedule"),
    (fg.Where(frames=[99]), r"Scale: latent frame 99 out of range: this run's latent grid has 3 frames"),
])
def test_steps_and_frames_out_of_range_are_refused_before_the_first_step(wan_i2v, ref_image, where, message):
    forwards = []
    hook = wan_i2v.transformer.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        with pytest.raises(ValueError, match=message):
            with fg.trace(wan_i2v, edit=fg.Scale("dog", 3.0, where=where)):
                _call(wan_i2v, ref_image, steps=2)
    finally:
        hook.remove()
    assert len(forwards) == 1  # the first forward began; nothing was sampled


def test_heads_out_of_range_and_negative_indices_are_refused_at_bind_time(wan_i2v):
    heads = wan_i2v.transformer.blocks[0].attn2.heads
    with pytest.raises(ValueError, match=f"Scale: head 99 out of range: the model's attention has {heads} heads"):
        fg.trace(wan_i2v, edit=fg.Scale("dog", 3.0, where=fg.Where(heads=[0, 99])))
    with pytest.raises(ValueError, match="Where steps takes step indices counted from 0; got -1"):
        fg.Where(steps=[-1])
    with pytest.raises(ValueError, match="Where frames takes latent frame indices counted from 0; got -2"):
        fg.Where(frames=[-2])
    with pytest.raises(ValueError, match=r"Where heads takes attention head indices \(ints >= 0\); got 'a'"):
        fg.Where(heads=["a"])


def test_in_range_scopes_still_edit(wan_i2v, ref_image):
    plain = _call(wan_i2v, ref_image)
    with fg.trace(wan_i2v, edit=fg.Scale("dog", 3.0, where=fg.Where(steps=[1], frames=[2], heads=[1]))):
        edited = _call(wan_i2v, ref_image)
    assert not np.array_equal(plain, edited)


# -- words per CFG branch (issue 12, item 2) -----------------------------------------------------------------------
def test_an_unscoped_anchor_never_lands_on_the_negative_prompts_pads(wan_i2v, ref_image):
    """The uncond branch attends to the negative prompt's keys: a word absent from it has no columns there, so an
    anchor scoped to that branch changes nothing (it raised the attention to whatever token sat at the prompt's
    position of the word, usually a pad)."""
    negative = "blurry, static"
    plain = _call(wan_i2v, ref_image, negative_prompt=negative)
    uncond_only = fg.AnchorMask.from_mask(torch.ones(3, 5), "dog", strength=4.0, where=fg.Where(branches=("uncond",)))
    with fg.trace(wan_i2v, edit=uncond_only):
        assert np.array_equal(plain, _call(wan_i2v, ref_image, negative_prompt=negative))
    scale = fg.Scale("dog", 5.0, where=fg.Where(branches=("uncond",)))
    with fg.trace(wan_i2v, edit=scale):
        assert np.array_equal(plain, _call(wan_i2v, ref_image, negative_prompt=negative))


def test_a_word_in_the_negative_prompt_is_anchored_at_its_own_positions_there(wan_i2v, ref_image):
    """Negative prompt "a red dog sleeps": "dog" is token 2 there (token 1 in the prompt); the uncond call is biased
    exactly at the negative prompt's column, the cond call at the prompt's."""
    strength = 3.0
    anchor = fg.AnchorMask.from_mask(torch.ones(3, 5), "dog", strength=strength, where=fg.Where(layers=[1], steps=[0]))
    with fg.trace(wan_i2v, edit=anchor), KernelCalls() as edited:
        _call(wan_i2v, ref_image, steps=1, negative_prompt="a red dog sleeps")
    cond, uncond = _layer_calls(edited.text_calls(), 4)
    for call, position in ((cond[1], 1), (uncond[1], 2)):
        column = torch.zeros(512, dtype=torch.float64)
        column[position] = 1.0
        bias = strength * torch.ones(math.prod(GRID), dtype=torch.float64)[:, None] * column[None, :]
        expected = _dense(call["q"], call["k"], call["v"], bias)
        torch.testing.assert_close(call["out"].double(), expected, rtol=1e-5, atol=1e-5)


# -- bit-identical outside the scope (issue 12, item 5) ------------------------------------------------------------
def _outside(call_forward: int, layer: int, where: fg.Where, n_steps: int, layers: set, shape) -> torch.Tensor:
    """``[B, N, H]`` True where a Wan text call (sequential CFG: forward 2s is cond, 2s + 1 uncond) is outside
    `where`."""
    step, branch = divmod(call_forward, 2)
    branch = ("cond", "uncond")[branch]
    b, n, h = shape
    inside = torch.zeros(b, n, h, dtype=torch.bool)
    if layer in layers and where.has_step(step, n_steps) and where.has_branch(branch):
        per_frame = GRID[1] * GRID[2]
        for f in range(GRID[0]) if where.frames is None else where.frames:
            for x in range(h) if where.heads is None else where.heads:
                inside[:, f * per_frame : (f + 1) * per_frame, x] = True
    return ~inside


def _check_outside_untouched(after, where, n_steps):
    """Each edited text call against the model's own kernel on the same inputs (an edit upstream changes the inputs
    of every later call, in and out of scope; what must hold is that the call itself leaves them alone)."""
    layers = set(range(4)) if where.layers is None else {int(x) % 4 for x in where.layers}
    touched = False
    for forward, calls in enumerate(after):
        for layer, e in enumerate(calls):
            own = tw.dispatch_attention_fn(e["q"], e["k"], e["v"], *e["args"], **e["kwargs"])
            outside = _outside(forward, layer, where, n_steps, layers, own.shape[:3])
            assert torch.equal(own[outside], e["out"][outside]), (where, forward, layer)
            touched |= not torch.equal(own, e["out"])
    return touched


@pytest.mark.parametrize("where", [
    fg.Where(frames=[1]), fg.Where(heads=[0]), fg.Where(frames=[0, 2], heads=[1], layers=[1, 3]),
    fg.Where(frames=[2], branches=("cond",), steps=[1]),
])
@pytest.mark.parametrize("make", ["anchor", "scale", "cache"])
def test_rows_outside_a_frame_or_head_scope_are_bit_identical(wan_i2v, ref_image, where, make):
    """Rows outside a frame / head scope changed by up to 2.9e-6 (the biased kernel ran on every row)."""
    edit = {"anchor": lambda: fg.AnchorMask.from_mask(torch.rand(3, 5, generator=torch.Generator().manual_seed(1)),
                                                      "dog", strength=3.0, where=where),
            "scale": lambda: fg.Scale("dog", 4.0, where=where),
            "cache": lambda: fg.CacheTransfer(src=[0], dst=[1, 2, 3], alpha=0.7,
                                              where=where.restrict(layers=None))}[make]()
    with fg.trace(wan_i2v, edit=edit), KernelCalls() as edited:
        _call(wan_i2v, ref_image)
    if make == "cache":
        where = where.restrict(layers=[1, 2, 3])  # a cache transfer's layers are its destinations
    assert _check_outside_untouched(_layer_calls(edited.text_calls(), 4), where, 2)  # and it edited inside


@pytest.mark.parametrize("edit", [
    fg.Scale("dog", 4.0, where=fg.Where(frames=[])), fg.Scale("dog", 4.0, where=fg.Where(heads=[])),
    fg.Scale("dog", 4.0, where=fg.Where(branches=())), fg.AnchorMask.from_mask(torch.zeros(3, 5), "dog", strength=3.0),
], ids=["no-frame", "no-head", "no-branch", "all-zero-mask"])
def test_an_edit_that_selects_nothing_leaves_every_output_bit_identical(wan_i2v, ref_image, edit):
    """Every row changed when the scope selected nothing or the mask was all zeros: now the kernel is not touched."""
    plain = _call(wan_i2v, ref_image)
    with fg.trace(wan_i2v, edit=edit):
        assert np.array_equal(plain, _call(wan_i2v, ref_image))


def test_random_scopes_are_refused_or_leave_every_output_outside_them_bit_identical(wan_i2v, ref_image):
    """Property: random scopes over layers x steps x branches x frames x heads (empty and out-of-range included)
    are either refused before sampling, with one sentence, or leave every out-of-scope output bit-identical."""
    rng = np.random.default_rng(12)

    def pick(universe: list, p_none: float = 0.3):
        if rng.random() < p_none:
            return None
        return [int(x) for x in rng.choice(universe, size=rng.integers(0, 3), replace=False)]

    refused = checked = 0
    for _ in range(14):
        try:
            where = fg.Where(layers=pick([0, 1, 2, 3, 5, -1]), steps=pick([0, 1, 3]),
                             branches=None if rng.random() < 0.4 else tuple(rng.choice(["cond", "uncond"],
                                                                                        size=rng.integers(0, 3),
                                                                                        replace=False)),
                             frames=pick([0, 1, 2, 4, -1]), heads=pick([0, 1, 2, -3]))
            edit = (fg.Scale("dog", 3.0, where=where) if rng.random() < 0.5 else
                    fg.AnchorMask.from_mask(torch.ones(3, 5), "dog", strength=2.0, where=where))
            with fg.trace(wan_i2v, edit=edit), KernelCalls() as edited:
                _call(wan_i2v, ref_image)
        except ValueError as exc:
            message = str(exc)
            assert "\n" not in message and ("out of range" in message or "counted from 0" in message), message
            refused += 1
            continue
        _check_outside_untouched(_layer_calls(edited.text_calls(), 4), where, 2)
        checked += 1
    assert refused and checked  # both outcomes were exercised


def test_one_intervention_serves_two_traces_in_threads_at_once(ref_image):
    """Binding makes a per-trace copy: the same CacheTransfer + anchor object used by two traces running in two
    threads gives each call the output it gives alone, and the object itself is never bound."""
    import threading

    pipes = [fg.testing.tiny_wan_i2v_pipeline(), fg.testing.tiny_wan_i2v_pipeline()]
    edit = fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(torch.ones(3, 5), "dog", strength=3.0),
                            cache=fg.CacheTransfer(src=[0], dst=[2], alpha=0.7), layers=[2])
    prompts = [PROMPT, "a dog runs under the red fence"]

    def one(pipe, prompt):
        with fg.trace(pipe, edit=edit):
            return pipe(image=ref_image, prompt=prompt, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                        num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").frames[0]

    alone = [one(pipe, prompt) for pipe, prompt in zip(pipes, prompts, strict=True)]
    together: dict[int, list] = {0: [], 1: []}

    def worker(i):
        for _ in range(3):
            together[i].append(one(pipes[i], prompts[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert len(together[i]) == 3 and all(np.array_equal(out, alone[i]) for out in together[i]), i
    assert all(not hasattr(part, "_source_of") and not hasattr(part, "_layers") for part in edit.parts())
