"""Recording on CogVideoX (joint attention, text first, `F.scaled_dot_product_attention` called directly, CFG in
one batched call): exact against a float64 dense softmax over all keys for both CFG halves, the latent grid
and token order of CogVideoX 1.0 and 1.5, bit-identical outputs, clean restore."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_functional
from diffusers import CogVideoXTransformer3DModel
from diffusers.models import attention_processor as ap
from reference import morans_i

import fglens as fg
from fglens.adapters import CogVideoXAdapter, adapter_for
from fglens.adapters.prompt import PromptTokens
from fglens.trace.record import STATS

PROMPT = "a dog jumps over the red fence"
NEGATIVE = "a blurry cat, red fence"
JOINT_STATS = ["word_mass", "morans_i", "similarity", "entropy", "text_mass", "image_mass", "ref_mass"]
N_TEXT = 226  # CogVideoX pads the T5 prompt to 226 tokens and attends to all of them
H, W, FRAMES = 48, 80, 9  # latent grid (3, 3, 5): 3 latent frames of 3 x 5 tokens (patch 2 x 2)
GRID = (3, 3, 5)
N_LAYERS = 3


@pytest.fixture(scope="module", params=[True, False], ids=["rotary", "sincos"])
def cog(request):
    return fg.testing.tiny_cogvideox_pipeline(num_layers=N_LAYERS, rotary=request.param)


def _call(pipe, steps=3, seed=0, **kw):
    kw.setdefault("prompt", PROMPT)
    kw.setdefault("negative_prompt", NEGATIVE)
    kw.setdefault("output_type", "latent")  # "np" (decoded frames) where the frames are compared
    kw.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe(height=H, width=W, num_frames=FRAMES, num_inference_steps=steps, **kw).frames[0]


class KernelInputs:
    """Records the q, k and mask each `F.scaled_dot_product_attention` call of `attention_processor` hands to the
    kernel: installed inside the trace, in front of whatever `attention_processor.F` currently is (fglens' proxy)."""

    def __init__(self):
        self.calls: list[dict] = []

    def __enter__(self):
        self.inner = inner = ap.F
        calls = self.calls

        class Recording:
            def __getattr__(self, name):
                return getattr(inner, name)

            def scaled_dot_product_attention(self, query, key, value, *args, **kwargs):
                mask = kwargs.get("attn_mask", args[0] if args else None)
                calls.append({"q": query.detach().clone(), "k": key.detach().clone(), "mask": mask})
                return inner.scaled_dot_product_attention(query, key, value, *args, **kwargs)

        ap.F = Recording()
        return self

    def __exit__(self, *exc):
        ap.F = self.inner


def dense_joint_reference(call, item, grid, words):
    """Full joint softmax in float64 over all [text | video] keys of batch item `item` (q, k as the kernel got
    them, [B, H, S, D]); the statistics of its video query rows."""
    f, ny, nx = grid
    n = f * ny * nx
    q, k = call["q"][item].double(), call["k"][item].double()  # [H, S, D]
    n_text = q.shape[1] - n
    logits = torch.einsum("hnd,htd->hnt", q, k) / math.sqrt(q.shape[-1])
    p = torch.softmax(logits, -1)[:, n_text:].mean(0)  # head mean, video queries: [N, S]
    text = p[:, :n_text]
    out = {
        "text_mass": text.sum(-1),
        "image_mass": torch.zeros(n, dtype=p.dtype),
        "video_mass": p[:, n_text:].sum(-1),
        "ref_mass": p[:, n_text : n_text + ny * nx].sum(-1),
    }
    within = text / text.sum(-1, keepdim=True)
    out["entropy"] = -(torch.special.xlogy(within, within)).sum(-1) / math.log(n_text)  # no mask: all 226 keys
    per_frame = {name: v.reshape(f, -1).mean(-1).numpy() for name, v in out.items()}
    wm, mi, sim = [], [], []
    qv = q[:, n_text:].transpose(0, 1).flatten(1)  # [N, H*D], heads concatenated
    for positions in words.values():
        m = text[:, positions].sum(-1).reshape(f, ny, nx)
        wm.append(m.reshape(f, -1).mean(-1).numpy())
        mi.append([morans_i(m[i].numpy()) for i in range(f)])
        kbar = k[:, positions].transpose(0, 1).flatten(1).mean(0)
        sim.append(torch.nn.functional.cosine_similarity(qv, kbar[None], dim=-1).reshape(f, -1).mean(-1).numpy())
    per_frame.update(word_mass=np.array(wm), morans_i=np.array(mi), similarity=np.array(sim))
    return per_frame


def test_joint_statistics_equal_dense_float64_reference(cog):
    record = fg.Record(words=["dog", "red fence"], stats=JOINT_STATS, branches=("cond", "uncond"))
    with fg.trace(cog, record=record) as run:
        assert type(ap.F).__name__ == "_FunctionalProxy"  # fglens intercepts the processor's direct F.sdpa
        with KernelInputs() as kernel:
            _call(cog)
    ds = run.dataset
    attrs = fg.store.decode_attrs(ds.attrs)
    words = attrs["word_positions"]
    assert words == {"dog": [1], "red fence": [5, 6]}  # T5 token positions = text key columns (text first)
    tokens = cog.tokenizer.convert_ids_to_tokens(cog.tokenizer(PROMPT).input_ids)
    assert [tokens[p] for p in (1, 5, 6)] == ["▁dog", "▁red", "▁fence"]
    uncond = attrs["word_positions_uncond"]
    negative = cog.tokenizer.convert_ids_to_tokens(cog.tokenizer(NEGATIVE).input_ids)
    assert uncond["dog"] == [] and [negative[p] for p in uncond["red fence"]] == ["▁red", "▁fence"]
    assert tuple(attrs["grid"]) == GRID
    assert attrs["complete"] and list(ds.step.values) == [0, 1, 2]  # DDIM scheduler: steps from its step calls
    np.testing.assert_array_equal(ds.timestep.values, cog.scheduler.timesteps.numpy())
    assert list(ds.layer.values) == [f"blocks.{i}" for i in range(N_LAYERS)]
    assert len(kernel.calls) == 3 * N_LAYERS  # 3 steps x layers, one batched [uncond | cond] call each
    n_video = math.prod(GRID)
    checked = 0
    for index, call in enumerate(kernel.calls):
        step, layer_index = divmod(index, N_LAYERS)
        assert call["mask"] is None and call["q"].shape[:3] == (2, 2, N_TEXT + n_video)
        for item, branch in enumerate(("uncond", "cond")):  # diffusers' batched CFG: [uncond | cond]
            # each half reads the words of its own prompt: the negative prompt has "red fence" elsewhere, no "dog"
            here = words if branch == "cond" else {"red fence": uncond["red fence"]}
            ref = dense_joint_reference(call, item, GRID, here)
            got = ds.sel(step=step, branch=branch).isel(layer=layer_index)
            for var in JOINT_STATS:
                value = got[var].sel(word=list(here)) if "word" in got[var].dims else got[var]
                np.testing.assert_allclose(value.values, ref[var], rtol=1e-5, atol=1e-5,
                                           err_msg=f"{var} step {step} layer {layer_index} {branch}")
                if branch == "uncond" and "word" in got[var].dims:
                    assert np.isnan(got[var].sel(word="dog").values).all(), var
                checked += 1
            assert (got.image_mass.values == 0).all()  # no image keys: the reference enters by channels
            np.testing.assert_allclose(got.text_mass.values + ref["video_mass"], 1.0, atol=1e-5)
    assert checked == len(kernel.calls) * 2 * len(JOINT_STATS)
    # the halves really are different prompts
    assert not np.allclose(ds.word_mass.sel(branch="cond").values, ds.word_mass.sel(branch="uncond").values)


def test_cond_half_of_the_batched_call_is_the_cond_branch(cog):
    # at step 0 the latents do not depend on guidance: the cond half of the batched CFG call must give what a
    # call without CFG (batch 1, the prompt alone) gives
    record = fg.Record(words=["dog"], stats=["word_mass", "text_mass"], branches=("cond", "uncond"), steps=[0])
    with fg.trace(cog, record=record) as batched:
        _call(cog, steps=2)
    with fg.trace(cog, record=record) as single:
        _call(cog, steps=2, guidance_scale=1.0)
    b, s = batched.dataset.sel(step=0), single.dataset.sel(step=0)
    for var in ("word_mass", "text_mass"):
        np.testing.assert_allclose(b[var].sel(branch="cond").values, s[var].sel(branch="cond").values, rtol=1e-4,
                                   atol=1e-6)
        assert np.isnan(s[var].sel(branch="uncond").values).all()  # no uncond branch without CFG
        assert not np.allclose(b[var].sel(branch="uncond").values, b[var].sel(branch="cond").values)


def test_each_pipeline_call_is_a_run_with_its_own_steps(cog):
    # the DDIM scheduler keeps no step_index: fglens counts its step() calls, reset by set_timesteps()
    with fg.trace(cog, record=fg.Record(words=["dog"], stats=["text_mass"])) as run:
        _call(cog, steps=2)
        _call(cog, steps=3, prompt="a red dog")
    first, second = run.datasets
    assert list(first.step.values) == [0, 1] and list(second.step.values) == [0, 1, 2]
    assert first.attrs["complete"] and second.attrs["complete"]
    np.testing.assert_array_equal(second.timestep.values, cog.scheduler.timesteps.numpy())


@pytest.fixture(scope="module")
def cog_rotary():
    return fg.testing.tiny_cogvideox_pipeline(num_layers=N_LAYERS, rotary=True)


def test_text_length_follows_max_sequence_length(cog_rotary):
    # the text segment is whatever precedes the video tokens: 20 keys here instead of 226 (the rotary model
    # only: the sin-cos model has position embeddings for exactly 226 text tokens)
    cog = cog_rotary
    record = fg.Record(words=["fence"], stats=JOINT_STATS, branches=("cond", "uncond"))
    with fg.trace(cog, record=record) as run:
        with KernelInputs() as kernel:
            _call(cog, steps=1, max_sequence_length=20)
    ds = run.dataset
    call = kernel.calls[-1]
    assert call["k"].shape[2] == 20 + math.prod(GRID)
    ref = dense_joint_reference(call, 1, GRID, {"fence": [6]})
    got = ds.sel(branch="cond", step=0).isel(layer=N_LAYERS - 1)
    for var in JOINT_STATS:
        np.testing.assert_allclose(got[var].values, ref[var], rtol=1e-5, atol=1e-5, err_msg=var)


def test_traced_call_is_bit_identical_and_restored(cog):
    plain = _call(cog, steps=2, output_type="np")
    processors = {n: m.processor for n, m in cog.transformer.named_modules() if hasattr(m, "processor")}
    record = fg.Record(words=["dog"], stats=list(STATS), maps=True, branches=("cond", "uncond"))
    with fg.trace(cog, record=record) as run:
        traced = _call(cog, steps=2, output_type="np")
    assert plain.shape == (FRAMES, H, W, 3) and np.array_equal(plain, traced)
    assert run.dataset.word_map.shape == (2, 2, N_LAYERS, 1, *GRID)

    def stop(pipe, i, t, kwargs):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        with fg.trace(cog, record=record):
            _call(cog, callback_on_step_end=stop)
    after = {n: m.processor for n, m in cog.transformer.named_modules() if hasattr(m, "processor")}
    assert all(after[n] is p for n, p in processors.items())
    assert ap.F is torch_functional
    assert not {"encode_prompt", "check_inputs", "prepare_latents"} & set(vars(cog))
    assert not {"step", "set_timesteps"} & set(vars(cog.scheduler))
    assert not cog.text_encoder._forward_pre_hooks
    assert np.array_equal(plain, _call(cog, steps=2, output_type="np"))


def _single_pixel_tokens(transformer, frames: int, where: tuple[int, int, int]) -> int:
    """Index of the only video token that changes when one latent pixel (frame, y, x) is set."""
    c = transformer.config
    base = torch.zeros(1, frames, c.in_channels, c.sample_height, c.sample_width)  # latent pixels
    hot = base.clone()
    hot[0, where[0], :, where[1], where[2]] = 1.0
    text = torch.zeros(1, N_TEXT, c.text_embed_dim)
    with torch.no_grad():
        a, b = (transformer.patch_embed(text, x)[0, N_TEXT:] for x in (base, hot))
    changed = (a != b).any(-1).nonzero().flatten().tolist()
    assert len(changed) == 1
    return changed[0]


@pytest.mark.parametrize("patch_size_t", [None, 2], ids=["1.0", "1.5"])
def test_grid_and_token_order(patch_size_t):
    # [B, F', C, H, W] latents; 1.0: frame-major per latent frame; 1.5: each token covers patch_size_t frames
    t = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
        text_embed_dim=fg.testing.COGVIDEOX_TEXT_DIM, num_layers=1, sample_width=10, sample_height=6,
        sample_frames=13, patch_size=2, patch_size_t=patch_size_t, temporal_compression_ratio=4,
        use_rotary_positional_embeddings=True,
    ).eval()
    adapter = adapter_for(t)
    assert isinstance(adapter, CogVideoXAdapter)
    x = torch.zeros(1, 4, 4, 6, 10)  # 4 latent frames, 6 x 10 latent pixels
    grid = adapter.grid((), {"hidden_states": x})
    pt = patch_size_t or 1
    assert grid == (4 // pt, 3, 5)
    frame, y, x_ = 3, 5, 8  # latent pixel -> token (frame // pt, y // 2, x // 2), frame-major
    expected = ((frame // pt) * 3 + y // 2) * 5 + x_ // 2
    assert _single_pixel_tokens(t, 4, (frame, y, x_)) == expected

    # a bare transformer: the whole context is text, the statistics follow the grid
    text = torch.randn(1, N_TEXT, fg.testing.COGVIDEOX_TEXT_DIM)
    with fg.trace(t, record=fg.Record(words={"w": [0, 1]}, stats=JOINT_STATS)) as run:
        with KernelInputs() as kernel:
            t(hidden_states=torch.randn(1, 4, 4, 6, 10), encoder_hidden_states=text, timestep=torch.tensor([500]))
    ds = run.dataset
    assert ds.sizes["frame"] == grid[0]
    ref = dense_joint_reference(kernel.calls[0], 0, grid, {"w": [0, 1]})
    got = ds.sel(branch="cond").isel(step=0, layer=0)
    for var in JOINT_STATS:
        np.testing.assert_allclose(got[var].values, ref[var], rtol=1e-5, atol=1e-5, err_msg=var)


def test_segments_text_first():
    adapter = CogVideoXAdapter(fg.testing.tiny_cogvideox_transformer(num_layers=2))
    seg = adapter.segments(226 + 45, 226 + 45, 45, None)
    assert (seg.text, seg.video, seg.video_queries, seg.image) == ((0, 226), (226, 271), (226, 271), (226, 226))
    assert [s.name for s in adapter.sites()] == ["blocks.0.joint", "blocks.1.joint"]
    assert [s.module for s in adapter.sites()] == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    with pytest.raises(RuntimeError, match="does not hold the 300 video tokens"):
        adapter.segments(271, 271, 300, None)
    tokens = PromptTokens("a dog", ["▁a", "▁dog", "</s>"] + ["<pad>"] * 223, 3)
    assert adapter.segments(271, 271, 45, tokens).text == (0, 226)
    with pytest.raises(RuntimeError, match="60 video tokens of the latent grid and the prompt's 226 tokens"):
        adapter.segments(271, 271, 60, tokens)  # e.g. a grid read from the wrong axes


def test_a_list_of_prompts_records_one_run_per_item_from_the_batched_cfg_call(cog):
    """Batched CFG rows are (uncond 0, uncond 1, cond 0, cond 1): item k's run reads rows k and 2 + k, with its own
    prompt's and negative prompt's words, and equals that prompt called alone with the same noise."""
    prompts, negatives = ["a dog jumps over the red fence", "the small red fence and a dog"], ["blurry", "static dog"]
    record = fg.Record(words=["dog", "fence"], stats=JOINT_STATS)
    with fg.trace(cog, record=record) as run:
        _call(cog, steps=2, prompt=prompts, negative_prompt=negatives,
              generator=[torch.Generator().manual_seed(k) for k in range(2)])
    together = run.datasets
    assert len(together) == 2
    for k in range(2):
        with fg.trace(cog, record=record) as alone:
            _call(cog, steps=2, prompt=prompts[k], negative_prompt=negatives[k], seed=k)
        assert together[k].attrs["prompt"] == prompts[k] and together[k].attrs["batch_item"] == k
        for var in JOINT_STATS:
            np.testing.assert_allclose(together[k][var].values, alone.dataset[var].values, rtol=1e-4, atol=1e-6,
                                       err_msg=var)
