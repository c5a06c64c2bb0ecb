"""The tiny offline HunyuanVideo-I2V and CogVideoX pipelines: complete, deterministic for a seed, and shaped
(joint sequence, context split, padding mask, CFG calls) like the real ones in diffusers 0.42."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fglens import testing  # noqa: E402

PROMPT = "a dog jumps over a fence"  # 6 Llama tokens: a Ġdog Ġjumps Ġover Ġa Ġfence
NEGATIVE = "blurry worst quality"  # 3 Llama tokens
H, W, F = 32, 48, 5  # latent 2 x 4 x 6 -> video tokens 2 x 2 x 3 (patch 1x2x2)
N_VIDEO = 2 * 2 * 3
N_TEXT = 256 - 4  # max_sequence_length minus the 4 assistant-header tokens the pipeline cuts out


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models are tiny: a second intra-op thread buys nothing and makes timings fragile on a busy machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def hy_tr():
    return testing.tiny_hunyuan_i2v_pipeline(image_condition_type="token_replace")


@pytest.fixture(scope="module")
def hy_lc():
    return testing.tiny_hunyuan_i2v_pipeline(image_condition_type="latent_concat")


@pytest.fixture(scope="module")
def cog():
    return testing.tiny_cogvideox_pipeline()


def _hy(pipe, seed=0, **kw):
    return pipe(
        image=testing.reference_image(), prompt=PROMPT, height=H, width=W, num_frames=F, num_inference_steps=2,
        output_type="np", generator=torch.Generator().manual_seed(seed), **kw,
    ).frames[0]


def _cog(pipe, seed=0, **kw):
    return pipe(
        prompt=PROMPT, height=H, width=W, num_frames=9, num_inference_steps=2, output_type="np",
        generator=torch.Generator().manual_seed(seed), **kw,
    ).frames[0]


# ----------------------------------------------------------------------------------------------------- tokenizers


def test_llama3_tokenizer_reproduces_the_template_counts():
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE as T

    tok = testing.tiny_llama3_tokenizer()
    ids = tok(T["template"].format(PROMPT)).input_ids
    toks = tok.convert_ids_to_tokens(ids)
    assert toks[0] == "<|begin_of_text|>"
    assert toks.index("<image>") == T["image_emb_start"] == 5
    assert toks[T["crop_start"] : T["crop_start"] + 7] == ["a", "Ġdog", "Ġjumps", "Ġover", "Ġa", "Ġfence", "<|eot_id|>"]
    assert toks[-4:] == ["<|start_header_id|>", "assistant", "<|end_header_id|>", "ĊĊ"]
    assert toks.count("<|end_header_id|>") == 3
    assert tok.decode(ids, skip_special_tokens=False).endswith("a dog jumps over a fence<|eot_id|>"
                                                                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # unknown words fall back to smaller pieces (bytes at worst), never to an unknown token
    assert tok.convert_ids_to_tokens(tok("zebra", add_special_tokens=False).input_ids) == list("zebra")
    assert tok.pad_token_id == 5 and tok.padding_side == "right"


def test_clip_tokenizer_keeps_whole_words():
    tok = testing.tiny_clip_tokenizer()
    assert tok.convert_ids_to_tokens(tok("a dog jumps").input_ids) == [
        "<|startoftext|>", "a</w>", "dog</w>", "jumps</w>", "<|endoftext|>"
    ]
    assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in "dog fence quickly camera".split())


# ------------------------------------------------------------------------------------------------ HunyuanVideo


def test_hunyuan_i2v_runs_fast_and_is_deterministic_for_a_seed(hy_tr):
    t0 = time.perf_counter()
    a = _hy(hy_tr)
    assert time.perf_counter() - t0 < 2.0
    assert a.shape == (F, H, W, 3) and np.isfinite(a).all()
    b = _hy(testing.tiny_hunyuan_i2v_pipeline(image_condition_type="token_replace"))
    assert np.array_equal(a, b)
    other = testing.tiny_hunyuan_i2v_pipeline(seed=1)
    assert not torch.equal(other.transformer.proj_out.weight, hy_tr.transformer.proj_out.weight)
    assert not torch.equal(
        other.text_encoder.get_input_embeddings().weight, hy_tr.text_encoder.get_input_embeddings().weight
    )
    # true CFG with a negative prompt changes the result, deterministically
    c1 = _hy(hy_tr, true_cfg_scale=3.0, negative_prompt=NEGATIVE)
    c2 = _hy(hy_tr, true_cfg_scale=3.0, negative_prompt=NEGATIVE)
    assert np.array_equal(c1, c2) and not np.array_equal(a, c1)


def test_hunyuan_latent_concat_runs(hy_lc):
    frames = _hy(hy_lc, true_cfg_scale=2.0, negative_prompt=NEGATIVE)
    # the I2V pipeline drops the first 4 decoded frames for latent_concat (`video[:, :, 4:]`)
    assert frames.shape == (F - 4, H, W, 3) and np.isfinite(frames).all()
    assert np.array_equal(frames, _hy(hy_lc, true_cfg_scale=2.0, negative_prompt=NEGATIVE))


def test_hunyuan_encode_prompt_puts_image_tokens_before_text(hy_tr):
    ref = testing.reference_image()
    for interleave, n_img in ((4, 144), (2, 288), (1, 576)):
        emb, pooled, mask = hy_tr.encode_prompt(image=ref, prompt=PROMPT, image_embed_interleave=interleave)
        assert emb.shape == (1, n_img + N_TEXT, testing.HUNYUAN_TEXT_DIM) and pooled.shape == (1, 8)
        assert mask.shape == (1, n_img + N_TEXT)
        assert mask[0, :n_img].eq(1).all()  # image-derived tokens: never padding
        assert mask[0, n_img : n_img + 7].eq(1).all()  # 6 prompt tokens + the "\n\n" after the assistant header
        assert mask[0, n_img + 7 :].eq(0).all()  # right padding
    # the image-derived tokens are the LLaVA hidden states at the <image> positions, subsampled by the interleave
    full, _, _ = hy_tr.encode_prompt(image=ref, prompt=PROMPT, image_embed_interleave=1)
    sub, _, _ = hy_tr.encode_prompt(image=ref, prompt=PROMPT, image_embed_interleave=4)
    torch.testing.assert_close(sub[0, :144], full[0, :576:4])
    torch.testing.assert_close(sub[0, 144:], full[0, 576:])


class _Recorder:
    """Records every transformer call and every `dispatch_attention_fn` call of the joint-attention sites."""

    def __init__(self, pipe, monkeypatch):
        import diffusers.models.transformers.transformer_hunyuan_video as mod

        self.calls, self.attn, self.site_inputs, self.handles = [], [], [], []
        tr = pipe.transformer
        real = mod.dispatch_attention_fn

        def dispatch(query, key, value, attn_mask=None, **kw):
            self.attn.append((query, key, value, attn_mask))
            return real(query, key, value, attn_mask=attn_mask, **kw)

        monkeypatch.setattr(mod, "dispatch_attention_fn", dispatch)
        self.handles.append(tr.register_forward_pre_hook(lambda m, a, kw: self.calls.append(kw), with_kwargs=True))
        for name in ("transformer_blocks.0.attn", "single_transformer_blocks.0.attn"):
            site = tr.get_submodule(name)
            self.handles.append(
                site.register_forward_pre_hook(
                    lambda m, a, kw, name=name: self.site_inputs.append((name, kw)), with_kwargs=True
                )
            )

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("kind", ["token_replace", "latent_concat"])
def test_hunyuan_transformer_inputs_and_joint_attention_layout(kind, hy_tr, hy_lc, monkeypatch):
    pipe = hy_tr if kind == "token_replace" else hy_lc
    tr = pipe.transformer
    rec = _Recorder(pipe, monkeypatch)
    try:
        _hy(pipe, true_cfg_scale=2.0, negative_prompt=NEGATIVE)
    finally:
        rec.remove()

    # two transformer calls per step, cond first, then the negative prompt; not batched
    assert len(rec.calls) == 4
    n_img_cond = 144 if kind == "token_replace" else 288
    n_img_neg = 288  # the negative prompt is always encoded with the default interleave 2
    for i, kw in enumerate(rec.calls):
        cond = i % 2 == 0
        n_img = n_img_cond if cond else n_img_neg
        n_valid_text = 7 if cond else 4
        assert kw["hidden_states"].shape == ((1, 4, 2, 4, 6) if kind == "token_replace" else (1, 9, 2, 4, 6))
        assert kw["encoder_hidden_states"].shape == (1, n_img + N_TEXT, testing.HUNYUAN_TEXT_DIM)
        m = kw["encoder_attention_mask"]
        assert m.shape == (1, n_img + N_TEXT) and m.dtype == tr.dtype
        assert int(m.sum()) == n_img + n_valid_text and m[0, : n_img + n_valid_text].eq(1).all()
        assert (kw["guidance"] is not None) == (kind == "token_replace")  # embedded guidance only for token_replace
        if kind == "latent_concat":  # noise (4) | image latent, first frame only (4) | mask (1)
            hs = kw["hidden_states"]
            assert hs[:, 4:8, 1:].eq(0).all() and hs[:, 8, 0].eq(1).all() and hs[:, 8, 1:].eq(0).all()
        assert torch.equal(rec.calls[i - i % 2]["hidden_states"], kw["hidden_states"])  # same latents both branches

    # per transformer call: 2 dual-stream + 2 single-stream joint attentions, all through dispatch_attention_fn
    n_sites = tr.config.num_layers + tr.config.num_single_layers
    assert len(rec.attn) == 4 * n_sites
    heads, head_dim = tr.config.num_attention_heads, tr.config.attention_head_dim
    for j, (q, k, v, mask) in enumerate(rec.attn):
        call = j // n_sites
        n_ctx = rec.calls[call]["encoder_hidden_states"].shape[1]
        n_valid = int(rec.calls[call]["encoder_attention_mask"].sum())
        s = N_VIDEO + n_ctx  # [video | context], video first
        assert q.shape == k.shape == v.shape == (1, s, heads, head_dim)  # [B, S, H, D]
        assert mask.dtype == torch.bool and mask.shape == (1, 1, 1, s)  # keys only; broadcast over heads, queries
        assert mask[0, 0, 0, : N_VIDEO + n_valid].all() and not mask[0, 0, 0, N_VIDEO + n_valid :].any()

    # the video part of the values comes from the video stream, the rest from the context stream
    by_site = {}
    for name, kw in rec.site_inputs[:2]:
        by_site[name] = kw
    dual, single = by_site["transformer_blocks.0.attn"], by_site["single_transformer_blocks.0.attn"]
    assert dual["hidden_states"].shape[1] == N_VIDEO and single["hidden_states"].shape[1] == N_VIDEO
    _, _, v_dual, _ = rec.attn[0]
    _, _, v_single, _ = rec.attn[tr.config.num_layers]
    blk = tr.transformer_blocks[0].attn
    torch.testing.assert_close(v_dual[:, :N_VIDEO], blk.to_v(dual["hidden_states"]).unflatten(2, (heads, -1)))
    torch.testing.assert_close(
        v_dual[:, N_VIDEO:], blk.add_v_proj(dual["encoder_hidden_states"]).unflatten(2, (heads, -1))
    )
    sblk = tr.single_transformer_blocks[0].attn
    joint = torch.cat([single["hidden_states"], single["encoder_hidden_states"]], dim=1)
    torch.testing.assert_close(v_single, sblk.to_v(joint).unflatten(2, (heads, -1)))


def test_hunyuan_token_replace_first_frame_is_the_clean_image_latent(hy_tr):
    tr = hy_tr.transformer
    seen, calls, norm_args = [], [], []

    def pre(m, a, kw):
        seen.append(kw["hidden_states"])
        calls.append(kw)

    handles = [
        tr.register_forward_pre_hook(pre, with_kwargs=True),
        tr.single_transformer_blocks[0].norm.register_forward_pre_hook(lambda m, a: norm_args.append(a)),
    ]
    try:
        _hy(hy_tr)
    finally:
        for h in handles:
            h.remove()
    # the first H'W' = 6 video tokens are modulated with timestep 0 (+ pooled text, no guidance embedding)
    _, emb, tr_emb, first_frame_tokens = norm_args[0]
    assert first_frame_tokens == 2 * 3
    kw = calls[0]
    temb, tr_ref = tr.time_text_embed(kw["timestep"], kw["pooled_projections"], kw["guidance"])
    torch.testing.assert_close(emb, temb)
    torch.testing.assert_close(tr_emb, tr_ref)
    zero = tr.time_text_embed.timestep_embedder(tr.time_text_embed.time_proj(torch.zeros(1)))
    torch.testing.assert_close(tr_emb, zero + tr.time_text_embed.text_embedder(kw["pooled_projections"]))
    assert len(seen) == 2  # one call per step without true CFG
    assert torch.equal(seen[0][:, :, 0], seen[1][:, :, 0])  # first latent frame: the image latent, every step
    assert not torch.equal(seen[0][:, :, 1:], seen[1][:, :, 1:])  # the other frames are denoised
    norm1 = hy_tr.transformer.transformer_blocks[0].norm1
    assert type(norm1).__name__ == "HunyuanVideoTokenReplaceAdaLayerNormZero"  # first-frame tokens: timestep 0


# ---------------------------------------------------------------------------------------------------- CogVideoX


def test_cogvideox_runs_and_is_deterministic_for_a_seed(cog):
    t0 = time.perf_counter()
    a = _cog(cog)
    assert time.perf_counter() - t0 < 2.0
    assert a.shape == (9, H, W, 3) and np.isfinite(a).all()
    assert np.array_equal(a, _cog(testing.tiny_cogvideox_pipeline()))
    assert not np.array_equal(a, _cog(cog, seed=1))
    other = testing.tiny_cogvideox_pipeline(seed=1)
    assert not torch.equal(other.transformer.proj_out.weight, cog.transformer.proj_out.weight)


def test_cogvideox_text_first_sdpa_and_batched_cfg(cog, monkeypatch):
    import torch.nn.functional as F_

    tr = cog.transformer
    recording, sdpa_calls, calls, site = [False], [], [], []
    real = F_.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, **kw):
        if recording[0]:
            sdpa_calls.append((q, k, v, attn_mask))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F_, "scaled_dot_product_attention", sdpa)  # CogVideoXAttnProcessor2_0 calls F.sdpa

    def pre(m, a, kw):
        recording[0] = True
        calls.append(kw)

    handles = [
        tr.register_forward_pre_hook(pre, with_kwargs=True),
        tr.register_forward_hook(lambda m, a, o: recording.__setitem__(0, False)),
        tr.transformer_blocks[0].attn1.register_forward_pre_hook(lambda m, a, kw: site.append(kw), with_kwargs=True),
    ]
    try:
        _cog(cog, negative_prompt=NEGATIVE)
    finally:
        for h in handles:
            h.remove()

    assert len(calls) == 2  # one call per step, CFG batched
    neg, _ = cog.encode_prompt(NEGATIVE, do_classifier_free_guidance=False)
    pos, _ = cog.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    ehs = calls[0]["encoder_hidden_states"]
    assert ehs.shape == (2, 226, testing.COGVIDEOX_TEXT_DIM)
    torch.testing.assert_close(ehs, torch.cat([neg, pos]))  # [uncond | cond]
    assert calls[0]["hidden_states"].shape == (2, 3, 4, 4, 6)  # [B, F', C, H, W]: frames before channels

    n_video = 3 * 2 * 3
    heads, head_dim = tr.config.num_attention_heads, tr.config.attention_head_dim
    assert len(sdpa_calls) == 2 * tr.config.num_layers
    for q, k, v, mask in sdpa_calls:
        assert q.shape == k.shape == v.shape == (2, heads, 226 + n_video, head_dim)  # [B, H, S, D], text first
        assert mask is None  # no padding mask: the 226 padded T5 tokens are all attended
    q, _, v, _ = sdpa_calls[0]
    attn = tr.transformer_blocks[0].attn1
    text = site[0]["encoder_hidden_states"]
    q_text = attn.norm_q(attn.to_q(text).view(2, -1, heads, head_dim).transpose(1, 2))
    torch.testing.assert_close(q[:, :, :226], q_text)  # no RoPE on text
    v_video = attn.to_v(site[0]["hidden_states"]).view(2, -1, heads, head_dim).transpose(1, 2)
    torch.testing.assert_close(v[:, :, 226:], v_video)
