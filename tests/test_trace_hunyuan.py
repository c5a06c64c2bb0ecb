"""Recording on HunyuanVideo I2V (joint attention): exact against a float64 dense softmax over all keys with
the padding mask, bit-identical outputs, clean restore, padding invariance, the same analysis code as Wan."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_dispatch import attention_backend
from diffusers.models.transformers import transformer_hunyuan_video as hv
from reference import morans_i

import fglens as fg
from fglens.trace.record import STATS

PROMPT = "a dog jumps over the red fence"
JOINT_STATS = ["word_mass", "morans_i", "similarity", "similarity_morans_i", "entropy", "text_mass", "image_mass",
               "ref_mass"]


@pytest.fixture(scope="module")
def hunyuan():
    return fg.testing.tiny_hunyuan_i2v_pipeline()


@pytest.fixture(scope="module")
def hunyuan_concat():
    return fg.testing.tiny_hunyuan_i2v_pipeline(image_condition_type="latent_concat")


def _call(pipe, steps=2, seed=0, **kw):
    kw.setdefault("prompt", PROMPT)
    return pipe(
        image=fg.testing.reference_image(), height=48, width=80, num_frames=9, num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed), output_type="np", **kw,
    ).frames[0]


class KernelInputs:
    """Records the q, k and mask each joint attention call hands to the kernel (installed inside the trace,
    in front of whatever `dispatch_attention_fn` currently is)."""

    def __init__(self):
        self.calls: list[dict] = []

    def __enter__(self):
        self.inner = hv.dispatch_attention_fn

        def recording(query, key, value, attn_mask=None, *args, **kwargs):
            self.calls.append({"q": query.detach().clone(), "k": key.detach().clone(), "mask": attn_mask})
            return self.inner(query, key, value, attn_mask, *args, **kwargs)

        hv.dispatch_attention_fn = recording
        return self

    def __exit__(self, *exc):
        hv.dispatch_attention_fn = self.inner


def dense_joint_reference(call, grid, n_image, words):
    """Full joint softmax in float64 over all keys with the padding mask; statistics from it."""
    f, ny, nx = grid
    n = f * ny * nx
    q, k = call["q"].double(), call["k"].double()
    logits = torch.einsum("bnhd,bthd->bhnt", q, k) / math.sqrt(q.shape[-1])
    keep = call["mask"].reshape(q.shape[0], -1)  # [B, S] bool
    logits = logits.masked_fill(~keep[:, None, None, :], -math.inf)
    p = torch.softmax(logits, -1)[0, :, :n].mean(0)  # head mean, video queries: [N, S]
    text = p[:, n + n_image :]
    out = {
        "text_mass": text.sum(-1),
        "image_mass": p[:, n : n + n_image].sum(-1),
        "video_mass": p[:, :n].sum(-1),
        "ref_mass": p[:, : ny * nx].sum(-1),
    }
    valid = int(keep[0, n + n_image :].sum())
    within = text / text.sum(-1, keepdim=True)
    out["entropy"] = -(torch.special.xlogy(within, within)).sum(-1) / math.log(valid)
    per_frame = {name: v.reshape(f, -1).mean(-1).numpy() for name, v in out.items()}
    wm, mi, sim, sim_mi = [], [], [], []
    qv = q[0, :n].flatten(1)
    for positions in words.values():
        m = text[:, positions].sum(-1).reshape(f, ny, nx)
        wm.append(m.reshape(f, -1).mean(-1).numpy())
        mi.append([morans_i(m[i].numpy()) for i in range(f)])
        kbar = k[0, [n + n_image + p_ for p_ in positions]].flatten(1).mean(0)
        s = torch.nn.functional.cosine_similarity(qv, kbar[None], dim=-1).reshape(f, ny, nx)
        sim.append(s.reshape(f, -1).mean(-1).numpy())
        sim_mi.append([morans_i(s[i].numpy()) for i in range(f)])
    per_frame.update(word_mass=np.array(wm), morans_i=np.array(mi), similarity=np.array(sim),
                     similarity_morans_i=np.array(sim_mi))
    return per_frame


@pytest.mark.parametrize(
    "condition, backend",
    [("token_replace", "native"), ("latent_concat", "native"), ("token_replace", "_native_math")],
)
def test_joint_statistics_equal_dense_float64_reference(hunyuan, hunyuan_concat, condition, backend):
    # "native": the row log-sum-exp comes from the model's own (flash) kernel call; "_native_math": no kernel
    # returns it, so fglens recomputes it
    pipe = hunyuan if condition == "token_replace" else hunyuan_concat
    record = fg.Record(words=["dog", "red fence"], stats=JOINT_STATS, branches=("cond", "uncond"))
    with fg.trace(pipe, record=record) as run, attention_backend(backend):
        with KernelInputs() as kernel:
            _call(pipe, negative_prompt="a blurry dog, red fence", true_cfg_scale=2.0)
    ds = run.dataset
    attrs = fg.store.decode_attrs(ds.attrs)
    words = attrs["word_positions"]
    assert words == {"dog": [1], "red fence": [5, 6]}
    assert attrs["word_positions_uncond"]["dog"] != [1] and len(attrs["word_positions_uncond"]["red fence"]) == 2
    grid = tuple(attrs["grid"])
    n_layers = len(pipe.transformer.transformer_blocks) + len(pipe.transformer.single_transformer_blocks)
    assert len(kernel.calls) == 2 * 2 * n_layers  # 2 steps x (cond, uncond) x layers
    n_video = math.prod(grid)
    checked = 0
    for index, call in enumerate(kernel.calls):
        forward, layer_index = divmod(index, n_layers)
        step, branch = divmod(forward, 2)
        branch = ("cond", "uncond")[branch]
        context = call["k"].shape[1] - n_video
        n_image = 144 if (condition == "token_replace" and branch == "cond") else 288  # the pipeline's interleave
        assert context == n_image + 252
        # the uncond branch reads each word where the negative prompt has it
        ref = dense_joint_reference(call, grid, n_image, words if branch == "cond" else attrs["word_positions_uncond"])
        got = ds.sel(step=step, branch=branch).isel(layer=layer_index)
        for var in JOINT_STATS:
            np.testing.assert_allclose(got[var].values, ref[var], rtol=1e-5, atol=1e-5, err_msg=f"{var} {index}")
            checked += 1
        total = got.text_mass.values + got.image_mass.values + ref["video_mass"]
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
    assert checked == len(kernel.calls) * len(JOINT_STATS)
    assert list(ds.layer.values) == [f"double.{i}" for i in range(2)] + [f"single.{i}" for i in range(2)]


def test_traced_call_is_bit_identical_and_restored(hunyuan):
    plain = _call(hunyuan, negative_prompt="blurry", true_cfg_scale=2.0)
    processors = {n: m.processor for n, m in hunyuan.transformer.named_modules() if hasattr(m, "processor")}
    original_dispatch = hv.dispatch_attention_fn
    record = fg.Record(words=["dog"], stats=list(STATS), maps=True, branches=("cond", "uncond"))
    with fg.trace(hunyuan, record=record):
        traced = _call(hunyuan, negative_prompt="blurry", true_cfg_scale=2.0)
    assert np.array_equal(plain, traced)

    def stop(pipe, i, t, kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with fg.trace(hunyuan, record=record):
            _call(hunyuan, callback_on_step_end=stop)
    after = {n: m.processor for n, m in hunyuan.transformer.named_modules() if hasattr(m, "processor")}
    assert all(after[n] is p for n, p in processors.items())
    assert hv.dispatch_attention_fn is original_dispatch
    assert "_get_llama_prompt_embeds" not in vars(hunyuan) and "check_inputs" not in vars(hunyuan)
    assert np.array_equal(plain, _call(hunyuan, negative_prompt="blurry", true_cfg_scale=2.0))


def test_padding_does_not_change_the_statistics(hunyuan):
    runs = []
    for max_len in (256, 12):  # 252 text keys, mostly padding, vs 8 (the prompt's 7 tokens and "\n\n")
        with fg.trace(hunyuan, record=fg.Record(words=["dog", "fence"], stats=JOINT_STATS)) as run:
            _call(hunyuan, steps=1, max_sequence_length=max_len)
        runs.append(run.dataset)
    long, short = runs
    for var in JOINT_STATS:
        np.testing.assert_allclose(long[var].values, short[var].values, rtol=1e-4, atol=1e-5, err_msg=var)


def _layer_profile(ds):
    """The kind of analysis code a user writes once: per-layer means of the word statistics."""
    cond = ds.sel(branch="cond")
    return cond[["word_mass", "morans_i", "similarity", "entropy"]].mean(["step", "word", "frame"])


def test_the_same_analysis_runs_on_wan_and_hunyuan(hunyuan, wan_i2v, ref_image):
    with fg.trace(hunyuan, record=fg.Record(words=["dog"])) as h:
        _call(hunyuan, steps=1)
    with fg.trace(wan_i2v, record=fg.Record(words=["dog"])) as w:
        wan_i2v(image=ref_image, prompt=PROMPT, height=48, width=80, num_frames=9, num_inference_steps=1,
                output_type="latent")
    ph, pw = _layer_profile(h.dataset), _layer_profile(w.dataset)
    assert set(ph.data_vars) == set(pw.data_vars)
    assert all(ph[v].dims == pw[v].dims == ("layer",) for v in ph.data_vars)
    for var in ("word_mass", "morans_i", "similarity", "entropy"):
        assert h.dataset[var].dims == w.dataset[var].dims
    assert "text_mass" in h.dataset and "text_share" not in h.dataset
    assert "text_share" in w.dataset and "text_mass" not in w.dataset


def test_bare_transformer_counts_the_whole_context_as_text():
    t = fg.testing.tiny_hunyuan_transformer(num_double=1, num_single=1, image_condition_type="token_replace")
    config = t.config
    x = torch.randn(1, config.in_channels, 2, 4, 6)
    text = torch.randn(1, 10, config.text_embed_dim)
    mask = torch.ones(1, 10)
    mask[:, 7:] = 0
    pooled = torch.randn(1, config.pooled_projection_dim)
    with fg.trace(t, record=fg.Record(words={"w": [0, 1]}, stats=JOINT_STATS)) as run:
        t(hidden_states=x, timestep=torch.tensor([900]), encoder_hidden_states=text, encoder_attention_mask=mask,
          pooled_projections=pooled, guidance=torch.tensor([6000.0]))
    ds = run.dataset
    np.testing.assert_array_equal(ds.image_mass.values, 0.0)
    assert np.isfinite(ds.word_mass.values).all() and (ds.text_mass.values > 0).all()


def test_a_list_of_prompts_of_different_lengths_records_one_run_per_item(hunyuan):
    """The joint text segment reaches as far as the batch's longest prompt (its real keys lie past the short
    one's): each item's run equals that prompt called alone with the same noise."""
    prompts = ["a dog", "a big brown dog jumps over the red fence"]
    record = fg.Record(words=["dog"], stats=JOINT_STATS)
    with fg.trace(hunyuan, record=record) as run:  # the pipeline takes one image per generator
        hunyuan(image=[fg.testing.reference_image()] * 2, prompt=prompts, height=48, width=80, num_frames=9,
                num_inference_steps=1, generator=[torch.Generator().manual_seed(k) for k in range(2)],
                output_type="latent")
    for k, together in enumerate(run.datasets):
        with fg.trace(hunyuan, record=record) as alone:
            hunyuan(image=fg.testing.reference_image(), prompt=prompts[k], height=48, width=80, num_frames=9,
                    num_inference_steps=1, generator=torch.Generator().manual_seed(k), output_type="latent")
        assert together.attrs["prompt"] == prompts[k]
        for var in JOINT_STATS:
            np.testing.assert_allclose(together[var].values, alone.dataset[var].values, rtol=1e-4, atol=1e-6,
                                       err_msg=var)
