"""LTX-Video (`LTXImageToVideoPipeline`, `LTXVideoTransformer3DModel`): a separate text cross-attention with the T5
padding mask (-10000 on the pads, [B, H, 1, 128]), batched CFG [uncond | cond] with a different real text length
per half, packed latents whose grid comes from the call's num_frames / height / width, a per-token timestep (0 on
the reference frame). Recording exact against the float64 dense reference of the kernel's own inputs, bit-identical
frames, restore, interventions against dense references, refusals, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.transformers import transformer_ltx as tl
from reference import morans_i
from test_interventions import KernelCalls
from test_trace_wan import model_state

import fglens as fg
from fglens.trace.record import STATS

PROMPT = "a dog jumps over the red fence"
NEGATIVE = "a dog, blurry"  # another real length than the prompt's: the two CFG halves mask different pads
HEIGHT, WIDTH, FRAMES = 32, 64, 9  # x8 VAE: latent grid (2, 4, 8), non-square
GRID = (2, 4, 8)
LAYERS = 2
T = 128


@pytest.fixture(scope="module")
def ltx():
    return fg.testing.tiny_ltx_pipeline()


def _call(pipe, steps=2, seed=0, **kw):
    kw.setdefault("output_type", "np")
    kw.setdefault("negative_prompt", NEGATIVE)
    return pipe(image=fg.testing.reference_image(WIDTH, HEIGHT), prompt=PROMPT, height=HEIGHT, width=WIDTH,
                num_frames=FRAMES, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kw
                ).frames[0]


def _text(calls):
    return [c for c in calls if c["k"].shape[1] == T]


def _self(calls):
    return [c for c in calls if c["k"].shape[1] == math.prod(GRID)]


def _per_forward(calls):
    return [calls[i : i + LAYERS] for i in range(0, len(calls), LAYERS)]


def _mask64(c):
    return c["mask"].double()  # [B, H, 1, T], additive, as the kernel received it


def _probs(c, bias=None):
    logits = torch.einsum("bnhd,bthd->bhnt", c["q"].double(), c["k"].double()) / math.sqrt(c["q"].shape[-1])
    logits = logits + _mask64(c)
    return torch.softmax(logits if bias is None else logits + bias, -1)


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def dense_reference(text, self_call, row: int, words: dict[str, list[int]]) -> dict:
    """Every recorded statistic of batch row `row` from the kernel's own q, k, v and mask, in float64."""
    f, ny, nx = GRID
    p = _probs(text)[row]  # [H, N, T]
    pbar = p.mean(0)
    q, k, v = (text[x][row].double() for x in ("q", "k", "v"))
    o = torch.einsum("hnt,thd->nhd", p, v).flatten(1)
    out: dict[str, list] = {n: [] for n in ("word_map", "similarity_map", "response_map")}
    for pos in words.values():
        out["word_map"].append(pbar[:, pos].sum(-1).reshape(f, ny, nx))
        out["similarity_map"].append(_cos(q.flatten(1), k[pos].flatten(1).mean(0)[None]).reshape(f, ny, nx))
        out["response_map"].append(_cos(o, v[pos].flatten(1).mean(0)[None]).reshape(f, ny, nx))
    ref = {name: torch.stack(maps).numpy() for name, maps in out.items()}
    for src, mean, mi in (("word_map", "word_mass", "morans_i"),
                          ("similarity_map", "similarity", "similarity_morans_i"),
                          ("response_map", "response", "response_morans_i")):
        ref[mean] = ref[src].reshape(len(words), f, -1).mean(-1)
        ref[mi] = np.array([[morans_i(m[i]) for i in range(f)] for m in ref[src]])
    n_open = int((_mask64(text)[row, 0, 0] > -1000).sum())
    ent = -torch.special.xlogy(pbar, pbar).sum(-1) / math.log(n_open)
    ref["entropy"] = ent.reshape(f, -1).mean(-1).numpy()
    ps = torch.softmax(torch.einsum("bnhd,bthd->bhnt", self_call["q"].double(), self_call["k"].double())
                       / math.sqrt(self_call["q"].shape[-1]), -1)[row]
    ref["ref_mass"] = ps[..., : ny * nx].sum(-1).mean(0).reshape(f, -1).mean(-1).numpy()
    return ref


def test_recorded_statistics_equal_float64_dense_reference(ltx):
    record = fg.Record(words=["dog", "red fence"], stats=list(STATS), branches=("cond", "uncond"),
                       maps=("word_map", "similarity_map", "response_map"))
    with fg.trace(ltx, record=record) as run, KernelCalls(tl) as k:
        _call(ltx, output_type="latent")
    ds, attrs = run.dataset, fg.store.decode_attrs(run.dataset.attrs)
    assert attrs["word_positions"] == {"dog": [1], "red fence": [5, 6]} and tuple(attrs["grid"]) == GRID
    assert attrs["word_positions_uncond"] == {"dog": [1], "red fence": []} and attrs["complete"]
    assert "text_share" not in ds and "image_mass" not in ds and "ref_mass" in ds
    assert type(tl.dispatch_attention_fn).__name__ == "function"  # restored
    texts, selfs = _per_forward(_text(k.calls)), _per_forward(_self(k.calls))
    assert len(texts) == 2  # 2 steps, one batched [uncond | cond] call each
    masks = texts[0][0]["mask"]
    assert masks.shape == (2, 2, 1, T)
    open_ = (masks[:, 0, 0] > -1000).sum(-1).tolist()
    assert open_[0] != open_[1]  # the two halves have different real text lengths
    np.testing.assert_array_equal(ds.timestep.values, ltx.scheduler.timesteps.numpy()[:2])
    for step in range(2):
        for layer in range(LAYERS):
            for row, branch in enumerate(("uncond", "cond")):
                words = attrs["word_positions"] if branch == "cond" else {"dog": [1]}
                ref = dense_reference(texts[step][layer], selfs[step][layer], row, words)
                sel = dict(branch=branch, step=step, layer=f"blocks.{layer}")
                for name, want in ref.items():
                    got = ds[name].sel(**sel)
                    if "word" in got.dims:
                        got = got.sel(word=list(words))
                    tol = 5e-4 if name.endswith("morans_i") else 1e-5
                    np.testing.assert_allclose(got.values, want, rtol=tol, atol=tol, err_msg=f"{name} {sel}")
    # a word the negative prompt lacks has no statistic in the uncond branch
    assert np.isnan(ds.word_mass.sel(branch="uncond", word="red fence").values).all()


def test_grid_timestep_and_prompt_tokens(ltx):
    adapter = fg.adapters.LTXVideoAdapter(ltx.transformer)
    hidden = torch.zeros(2, 60, 8)
    assert adapter.grid((), {"hidden_states": hidden, "num_frames": 3, "height": 4, "width": 5}) == (3, 4, 5)
    with pytest.raises(ValueError, match="hidden_states holds 60"):
        adapter.grid((), {"hidden_states": hidden, "num_frames": 2, "height": 4, "width": 5})
    with pytest.raises(ValueError, match="video_coords"):
        adapter.grid((), {"hidden_states": hidden, "video_coords": torch.zeros(2, 3, 60)})
    t = torch.tensor([[0.0, 700.0, 700.0], [0.0, 300.0, 300.0]])
    assert adapter.timestep((), {"timestep": t}).tolist() == [700.0, 300.0]
    tokens = adapter.prompt_tokens(ltx, PROMPT)
    assert len(tokens.tokens) == T and tokens.n_real == 8  # 7 words and </s>, padded to the pipeline's 128
    with fg.trace(ltx, record=fg.Record(words=["dog"])) as run:
        _call(ltx, steps=1, output_type="latent")
    assert fg.store.decode_attrs(run.dataset.attrs)["pipeline_class"] == "LTXImageToVideoPipeline"


def test_traced_call_is_bit_identical(ltx):
    plain = _call(ltx)
    with fg.trace(ltx, record=fg.Record(words=["dog"], stats=list(STATS), maps=True, branches=("cond", "uncond"))):
        traced = _call(ltx)
    assert np.array_equal(plain, traced)


def _state(pipe):
    return model_state(pipe, tl)


def test_model_restored_after_an_exception(ltx):
    before_out, before = _call(ltx, output_type="latent"), _state(ltx)

    def boom(pipe, i, t, kwargs):
        if i == 1:
            raise RuntimeError("stop")
        return kwargs

    with pytest.raises(RuntimeError, match="stop"):
        with fg.trace(ltx, record=fg.Record(words=["dog"])):
            _call(ltx, steps=3, callback_on_step_end=boom, output_type="latent")
    after = _state(ltx)
    assert all(a is b for a, b in zip(before[0].values(), after[0].values(), strict=True)) and before[1:] == after[1:]
    assert torch.equal(before_out, _call(ltx, output_type="latent"))


def test_the_condition_pipelines_are_refused_at_entry(ltx):
    from diffusers import LTXConditionPipeline

    cond = LTXConditionPipeline(**ltx.components)
    before = _state(ltx)
    with pytest.raises(ValueError, match="fg.trace does not trace a LTXConditionPipeline yet: its conditioning"):
        fg.trace(cond, record=fg.Record(words=["dog"]))
    assert _state(ltx)[3] is before[3]


def _bias(mask2d, column, strength, frames):
    return fg.testing.dense_anchor_bias(GRID, T, mask2d, column, strength, frames)


def test_anchor_mask_matches_dense_reference_and_respects_scope(ltx):
    mask = torch.zeros(GRID[1:])
    mask[1:3, 2:6] = 1.0
    strength = 3.0
    anchor = fg.AnchorMask.from_mask(mask, "dog", strength=strength, frames="first",
                                     where=fg.Where(layers=[1], branches=("cond",), steps=[1]))
    with KernelCalls(tl) as plain:
        _call(ltx, output_type="latent")
    with fg.trace(ltx, edit=anchor), KernelCalls(tl) as edited:
        _call(ltx, output_type="latent")
    before, after = _per_forward(_text(plain.calls)), _per_forward(_text(edited.calls))
    for step in range(2):
        for layer in range(LAYERS):
            if (step, layer) != (1, 1):
                assert torch.equal(before[step][layer]["out"], after[step][layer]["out"]), (step, layer)
    call = after[1][1]
    bias = torch.zeros(2, 1, math.prod(GRID), T, dtype=torch.float64)
    bias[1, 0] = _bias(mask, 1, strength, [0])  # the cond half only; "dog" is token 1
    want = torch.einsum("bhnt,bthd->bnhd", _probs(call, bias), call["v"].double())
    torch.testing.assert_close(call["out"].double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(call["out"][0], before[1][1]["out"][0])  # the uncond half untouched
    assert not torch.equal(before[1][1]["out"], call["out"])


@pytest.mark.parametrize("heads", ["each", "mean"])
def test_cache_transfer_and_its_recording_match_the_dense_reference(ltx, heads):
    alpha = 0.4
    edit = fg.CacheTransfer(src=[0], dst=[1], alpha=alpha, mode="same_step", heads=heads)
    with fg.trace(ltx, record=fg.Record(words=["dog", "fence"], stats=["word_mass", "entropy"],
                                        branches=("cond", "uncond")), edit=edit) as run, KernelCalls(tl) as k:
        _call(ltx, steps=1, output_type="latent")
    src, dst = _per_forward(_text(k.calls))[0]
    p_src = _probs(src)
    if heads == "mean":
        p_src = p_src.mean(1, keepdim=True).expand_as(p_src)
    p = (1 - alpha) * _probs(dst) + alpha * p_src
    torch.testing.assert_close(dst["out"].double(), torch.einsum("bhnt,bthd->bnhd", p, dst["v"].double()),
                               rtol=1e-5, atol=1e-5)
    assert (p[..., (dst["mask"][:, :1, 0] < -1000)[:, :, None, :].expand_as(p)] == 0).all()  # pads stay at 0
    attrs = fg.store.decode_attrs(run.dataset.attrs)
    for row, branch in enumerate(("uncond", "cond")):
        positions = attrs["word_positions"] if branch == "cond" else {"dog": [1]}
        pbar = p[row].mean(0)
        for word, pos in positions.items():
            mass = pbar[:, pos].sum(-1).reshape(GRID[0], -1).mean(-1)
            got = run.dataset.word_mass.sel(branch=branch, step=0, layer="blocks.1", word=word).values
            np.testing.assert_allclose(got, mass.numpy(), rtol=1e-5, atol=1e-7)
        n_open = int((dst["mask"][row, 0, 0] > -1000).sum())
        ent = (-torch.special.xlogy(pbar, pbar).sum(-1) / math.log(n_open)).reshape(GRID[0], -1).mean(-1)
        got = run.dataset.entropy.sel(branch=branch, step=0, layer="blocks.1").values
        np.testing.assert_allclose(got, ent.numpy(), rtol=1e-5, atol=1e-7)


def test_focal_guidance_and_its_recording_match_the_dense_reference(ltx):
    mask = torch.zeros(GRID[1:])
    mask[2:, :3] = 1.0
    strength, alpha = 2.0, 0.5
    edit = fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(mask, "dog", strength=strength, frames="all"),
                            cache=fg.CacheTransfer(src=[0], dst=[1], alpha=alpha, mode="same_step"),
                            layers=[1], steps=None)
    with fg.trace(ltx, record=fg.Record(words=["dog", "fence"], stats=["word_mass"]), edit=edit) as run, \
            KernelCalls(tl) as k:
        _call(ltx, steps=1, output_type="latent")
    src, dst = _per_forward(_text(k.calls))[0]
    bias = torch.zeros(2, 1, math.prod(GRID), T, dtype=torch.float64)
    bias[1, 0] = _bias(mask, 1, strength, range(GRID[0]))  # FocalGuidance acts on the cond branch
    p = (1 - alpha) * _probs(dst, bias) + alpha * _probs(src)
    torch.testing.assert_close(dst["out"][1:].double(),
                               torch.einsum("bhnt,bthd->bnhd", p, dst["v"].double())[1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dst["out"][:1].double(),
                               torch.einsum("bhnt,bthd->bnhd", _probs(dst), dst["v"].double())[:1],
                               rtol=1e-5, atol=1e-5)
    positions = fg.store.decode_attrs(run.dataset.attrs)["word_positions"]
    for word in ("dog", "fence"):
        mass = p[1].mean(0)[:, positions[word]].sum(-1).reshape(GRID[0], -1).mean(-1)
        got = run.dataset.word_mass.sel(branch="cond", step=0, layer="blocks.1", word=word).values
        np.testing.assert_allclose(got, mass.numpy(), rtol=1e-5, atol=1e-7)


# -- the CLI with tiny-ltx ----------------------------------------------------------------------------------------
def test_generate_with_tiny_ltx(tmp_path):
    import imageio.v3 as iio
    from test_cli import call

    code, out, err = call(["generate", "--pipeline", "tiny-ltx", "--prompt", PROMPT, "--words", "dog,jumps",
                           "--out", tmp_path, "--steps", "2", "--layers", "1", "--src", "0"])
    assert code == 0, err
    assert iio.imread(tmp_path / "video.mp4").shape == (9, 32, 64, 3)
    ds = fg.open_run(tmp_path / "run.zarr")
    attrs = fg.store.decode_attrs(ds.attrs)
    assert attrs["pipeline_class"] == "LTXImageToVideoPipeline" and tuple(attrs["grid"]) == GRID
    assert attrs["intervention"]["type"] == "FocalGuidance"
