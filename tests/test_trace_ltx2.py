"""LTX-2 (`LTX2ImageToVideoPipeline`, `LTX2VideoTransformer3DModel`): the video stream's self-attention and text
cross-attention (the connectors' text keys: the prompt's real Gemma tokens first, then learnable registers, all open
under an all-zero additive mask [B, H, 1, 1024]) and its cross-attention to the audio tokens (an `audio` site: one
softmax over the audio keys), batched CFG [uncond | cond], packed latents whose grid comes from the call's num_frames /
height / width, a per-token timestep (0 on the reference frame). Recording exact against the float64 dense reference
of the kernel's own inputs, bit-identical frames and audio, restore, interventions against dense references (the
audio sites never edited), refusals (STG and modality guidance, the appending pipelines), the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.transformers import transformer_ltx2 as tl
from reference import morans_i
from test_interventions import KernelCalls
from test_trace_wan import model_state

import fglens as fg
from fglens.trace.intercept import TracedProcessor
from fglens.trace.record import STATS

PROMPT = "a dog jumps over the red fence"
NEGATIVE = "a dog, blurry"  # another real length than the prompt's: different registers in the two CFG halves
HEIGHT, WIDTH, FRAMES = 32, 64, 9  # x8 VAE: latent grid (2, 4, 8), non-square
GRID = (2, 4, 8)
NV = math.prod(GRID)
LAYERS = 2
T = 1024  # max_sequence_length: the text keys
A = 9  # audio tokens: round(9 frames / 24 fps * 25 per second)
COND_WORDS = {"dog": [2], "red fence": [6, 7]}  # "<bos> a dog jumps over the red fence <register> ..."
UNCOND_WORDS = {"dog": [2]}  # "<bos> a dog , blurry <register> ..."


@pytest.fixture(scope="module")
def ltx2():
    return fg.testing.tiny_ltx2_pipeline()


def _out(pipe, steps=2, seed=0, **kw):
    kw.setdefault("output_type", "np")
    kw.setdefault("negative_prompt", NEGATIVE)
    return pipe(image=fg.testing.reference_image(WIDTH, HEIGHT), prompt=PROMPT, height=HEIGHT, width=WIDTH,
                num_frames=FRAMES, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kw)


def _call(pipe, steps=2, seed=0, **kw):
    return _out(pipe, steps, seed, **kw).frames[0]


def _of(calls, n_q, n_k):
    return [c for c in calls if c["q"].shape[1] == n_q and c["k"].shape[1] == n_k]


def _per_forward(calls):
    return [calls[i : i + LAYERS] for i in range(0, len(calls), LAYERS)]


def _sites(k):
    """Per forward and layer, the kernel calls of the three video-query sites: self, text, audio."""
    return (_per_forward(_of(k.calls, NV, NV)), _per_forward(_of(k.calls, NV, T)), _per_forward(_of(k.calls, NV, A)))


def _logits(c, bias=None):
    logits = torch.einsum("bnhd,bthd->bhnt", c["q"].double(), c["k"].double()) / math.sqrt(c["q"].shape[-1])
    if c["mask"] is not None:
        logits = logits + c["mask"].double()  # [B, H, 1, T], additive, as the kernel received it
    return logits if bias is None else logits + bias


def _probs(c, bias=None):
    return torch.softmax(_logits(c, bias), -1)


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def dense_reference(text, self_call, audio, row: int, words: dict[str, list[int]]) -> dict:
    """Every recorded statistic of batch row `row` from the kernels' own q, k, v and masks, in float64."""
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
    ent = -torch.special.xlogy(pbar, pbar).sum(-1) / math.log(T)  # every text key is open
    ref["entropy"] = ent.reshape(f, -1).mean(-1).numpy()
    ps = _probs(self_call)[row]
    ref["ref_mass"] = ps[..., : ny * nx].sum(-1).mean(0).reshape(f, -1).mean(-1).numpy()
    pa = _probs(audio)[row].mean(0)  # [N, A]
    ref["audio_entropy"] = (-torch.special.xlogy(pa, pa).sum(-1) / math.log(A)).reshape(f, -1).mean(-1).numpy()
    where = torch.arange(A, dtype=torch.float64) / (A - 1)
    ref["audio_position"] = (pa @ where).reshape(f, -1).mean(-1).numpy()
    return ref


def test_recorded_statistics_equal_float64_dense_reference(ltx2):
    record = fg.Record(words=["dog", "red fence"], stats=list(STATS), branches=("cond", "uncond"),
                       maps=("word_map", "similarity_map", "response_map"))
    with fg.trace(ltx2, record=record) as run, KernelCalls(tl) as k:
        _call(ltx2, output_type="latent")
    ds, attrs = run.dataset, fg.store.decode_attrs(run.dataset.attrs)
    assert attrs["word_positions"] == COND_WORDS and tuple(attrs["grid"]) == GRID and attrs["complete"]
    assert attrs["word_positions_uncond"] == {"dog": [2], "red fence": []}
    assert {"text_share", "image_mass", "text_mass"}.isdisjoint(ds) and {"ref_mass", "audio_entropy"} <= set(ds)
    assert type(tl.dispatch_attention_fn).__name__ == "function"  # restored
    selfs, texts, audios = _sites(k)
    assert len(texts) == len(selfs) == len(audios) == 2  # 2 steps, one batched [uncond | cond] call each
    mask = texts[0][0]["mask"]
    assert mask.shape == (2, 2, 1, T) and not mask.any()  # the connectors' all-ones mask: every key open
    assert audios[0][0]["mask"] is None
    np.testing.assert_array_equal(ds.timestep.values, ltx2.scheduler.timesteps.numpy()[:2])
    for step in range(2):
        for layer in range(LAYERS):
            for row, branch in enumerate(("uncond", "cond")):
                words = COND_WORDS if branch == "cond" else UNCOND_WORDS
                ref = dense_reference(texts[step][layer], selfs[step][layer], audios[step][layer], row, words)
                sel = dict(branch=branch, step=step, layer=f"blocks.{layer}")
                for name, want in ref.items():
                    got = ds[name].sel(**sel)
                    if "word" in got.dims:
                        got = got.sel(word=list(words))
                    tol = 5e-4 if name.endswith("morans_i") else 1e-5
                    np.testing.assert_allclose(got.values, want, rtol=tol, atol=tol, err_msg=f"{name} {sel}")
    # a word the negative prompt lacks has no statistic in the uncond branch
    assert np.isnan(ds.word_mass.sel(branch="uncond", word="red fence").values).all()


def test_sites_audio_tokens_and_untouched_audio_stream(ltx2):
    adapter = fg.adapters.LTX2Adapter(ltx2.transformer)
    assert [(s.name, s.kind, s.module) for s in adapter.sites()[:3]] == [
        ("blocks.0.self", "self", "transformer_blocks.0.attn1"),
        ("blocks.0.cross.text", "text", "transformer_blocks.0.attn2"),
        ("blocks.0.cross.audio", "audio", "transformer_blocks.0.audio_to_video_attn")]
    seen = {}
    with fg.trace(ltx2, record=fg.Record(words=["dog"], stats=["audio_entropy"])), KernelCalls(tl) as k:
        seen = {n: type(m.processor) for n, m in ltx2.transformer.named_modules() if hasattr(m, "processor")}
        out = _out(ltx2, steps=1, output_type="latent")
    traced = {n for n, t in seen.items() if t is TracedProcessor}
    assert traced == {f"transformer_blocks.{i}.{m}" for i in range(LAYERS)
                      for m in ("attn1", "attn2", "audio_to_video_attn")}  # audio queries and connectors untouched
    # an audio token: one latent time frame of the audio VAE (25 per second), all latent channels x mel bins packed
    assert out.audio.shape == (1, 2, A, 2)  # [B, latent channels, audio tokens, latent mel bins]
    assert {c["k"].shape[1] for c in _of(k.calls, NV, A)} == {A}
    assert len(_of(k.calls, A, NV)) == LAYERS  # the audio queries' call to the video keys ran, not recorded


def test_grid_timestep_prompt_tokens_and_text_to_video(ltx2):
    adapter = fg.adapters.LTX2Adapter(ltx2.transformer)
    hidden = torch.zeros(2, 60, 4)
    assert adapter.grid((), {"hidden_states": hidden, "num_frames": 3, "height": 4, "width": 5}) == (3, 4, 5)
    with pytest.raises(ValueError, match="hidden_states holds 60"):
        adapter.grid((), {"hidden_states": hidden, "num_frames": 2, "height": 4, "width": 5})
    with pytest.raises(ValueError, match="num_frames, height and width"):
        adapter.grid((), {"hidden_states": hidden, "video_coords": torch.zeros(2, 3, 60, 2)})
    with pytest.raises(ValueError, match="spatio-temporal guidance.*isolate_modalities"):
        adapter.grid((), {"hidden_states": hidden, "num_frames": 3, "height": 4, "width": 5,
                          "isolate_modalities": True})
    t = torch.tensor([[0.0, 700.0, 700.0], [0.0, 300.0, 300.0]])
    assert adapter.timestep((), {"timestep": t}).tolist() == [700.0, 300.0]
    tokens = adapter.prompt_tokens(ltx2, PROMPT)
    assert len(tokens.tokens) == T and tokens.n_real == 8 and tokens.tokens[8] == "<register>"
    assert tokens.locate(["dog", "red fence"]) == COND_WORDS
    t2v = fg.testing.tiny_ltx2_pipeline(text_to_video=True)
    with fg.trace(t2v, record=fg.Record(words=["dog"], stats=["word_mass", "audio_position"])) as run:
        t2v(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=1,
            generator=torch.Generator().manual_seed(0), output_type="latent")
    attrs = fg.store.decode_attrs(run.dataset.attrs)
    assert attrs["pipeline_class"] == "LTX2Pipeline" and attrs["word_positions"] == {"dog": [2]}
    assert np.isfinite(run.dataset.audio_position.values).all()


def test_traced_call_is_bit_identical(ltx2):
    plain = _out(ltx2)
    with fg.trace(ltx2, record=fg.Record(words=["dog"], stats=list(STATS), maps=True, branches=("cond", "uncond"))):
        traced = _out(ltx2)
    assert np.array_equal(plain.frames[0], traced.frames[0])
    assert torch.equal(plain.audio, traced.audio)


def _state(pipe):
    return model_state(pipe, tl)


def test_model_restored_after_an_exception(ltx2):
    before_out, before = _call(ltx2, output_type="latent"), _state(ltx2)

    def boom(pipe, i, t, kwargs):
        if i == 1:
            raise RuntimeError("stop")
        return kwargs

    with pytest.raises(RuntimeError, match="stop"):
        with fg.trace(ltx2, record=fg.Record(words=["dog"], stats=["word_mass", "audio_entropy"])):
            _call(ltx2, steps=3, callback_on_step_end=boom, output_type="latent")
    after = _state(ltx2)
    assert all(a is b for a, b in zip(before[0].values(), after[0].values(), strict=True)) and before[1:] == after[1:]
    assert torch.equal(before_out, _call(ltx2, output_type="latent"))


def test_guidance_forwards_and_appending_pipelines_are_refused(ltx2):
    from diffusers import LTX2ConditionPipeline

    before = _state(ltx2)
    with KernelCalls(tl) as k, pytest.raises(ValueError, match="stg_scale=0, audio_stg_scale=0, modality_scale=1"):
        with fg.trace(ltx2, record=fg.Record(words=["dog"])):
            _call(ltx2, steps=1, output_type="latent", stg_scale=1.0)
    assert k.calls == []  # refused before any forward
    after = _state(ltx2)
    assert all(a is b for a, b in zip(before[0].values(), after[0].values(), strict=True)) and before[1:] == after[1:]
    cond = LTX2ConditionPipeline(**ltx2.components)
    with pytest.raises(ValueError, match="fg.trace does not trace a LTX2ConditionPipeline yet: it appends"):
        fg.trace(cond, record=fg.Record(words=["dog"]))
    assert _state(ltx2)[3] is before[3]


def _bias(mask2d, column, strength, frames):
    return fg.testing.dense_anchor_bias(GRID, T, mask2d, column, strength, frames)


def test_anchor_mask_matches_dense_reference_and_respects_scope(ltx2):
    mask = torch.zeros(GRID[1:])
    mask[1:3, 2:6] = 1.0
    strength = 3.0
    anchor = fg.AnchorMask.from_mask(mask, "dog", strength=strength, frames="first",
                                     where=fg.Where(layers=[1], branches=("cond",), steps=[1]))
    with KernelCalls(tl) as plain:
        _call(ltx2, output_type="latent")
    with fg.trace(ltx2, edit=anchor), KernelCalls(tl) as edited:
        _call(ltx2, output_type="latent")
    before, after = _per_forward(_of(plain.calls, NV, T)), _per_forward(_of(edited.calls, NV, T))
    for step in range(2):
        for layer in range(LAYERS):
            if (step, layer) != (1, 1):
                assert torch.equal(before[step][layer]["out"], after[step][layer]["out"]), (step, layer)
    # the audio sites are never edited: their calls before the edited one (step 1, layer 1) are bit-identical
    for b, a in zip(_of(plain.calls, NV, A)[: LAYERS + 1], _of(edited.calls, NV, A)[: LAYERS + 1], strict=True):
        assert torch.equal(b["out"], a["out"])
    call = after[1][1]
    bias = torch.zeros(2, 1, NV, T, dtype=torch.float64)
    bias[1, 0] = _bias(mask, 2, strength, [0])  # the cond half only; "dog" is token 2
    want = torch.einsum("bhnt,bthd->bnhd", _probs(call, bias), call["v"].double())
    torch.testing.assert_close(call["out"].double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(call["out"][0], before[1][1]["out"][0])  # the uncond half untouched
    assert not torch.equal(before[1][1]["out"], call["out"])


@pytest.mark.parametrize("heads", ["each", "mean"])
def test_cache_transfer_and_its_recording_match_the_dense_reference(ltx2, heads):
    alpha = 0.4
    edit = fg.CacheTransfer(src=[0], dst=[1], alpha=alpha, mode="same_step", heads=heads)
    with fg.trace(ltx2, record=fg.Record(words=["dog", "fence"], stats=["word_mass", "entropy"],
                                         branches=("cond", "uncond")), edit=edit) as run, KernelCalls(tl) as k:
        _call(ltx2, steps=1, output_type="latent")
    src, dst = _per_forward(_of(k.calls, NV, T))[0]
    p_src = _probs(src)
    if heads == "mean":
        p_src = p_src.mean(1, keepdim=True).expand_as(p_src)
    p = (1 - alpha) * _probs(dst) + alpha * p_src
    torch.testing.assert_close(dst["out"].double(), torch.einsum("bhnt,bthd->bnhd", p, dst["v"].double()),
                               rtol=1e-5, atol=1e-5)
    for row, (branch, positions) in enumerate((("uncond", UNCOND_WORDS), ("cond", {"dog": [2], "fence": [7]}))):
        pbar = p[row].mean(0)
        for word, pos in positions.items():
            mass = pbar[:, pos].sum(-1).reshape(GRID[0], -1).mean(-1)
            got = run.dataset.word_mass.sel(branch=branch, step=0, layer="blocks.1", word=word).values
            np.testing.assert_allclose(got, mass.numpy(), rtol=1e-5, atol=1e-7)
        ent = (-torch.special.xlogy(pbar, pbar).sum(-1) / math.log(T)).reshape(GRID[0], -1).mean(-1)
        got = run.dataset.entropy.sel(branch=branch, step=0, layer="blocks.1").values
        np.testing.assert_allclose(got, ent.numpy(), rtol=1e-5, atol=1e-7)


def test_focal_guidance_and_its_recording_match_the_dense_reference(ltx2):
    mask = torch.zeros(GRID[1:])
    mask[2:, :3] = 1.0
    strength, alpha = 2.0, 0.5
    edit = fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(mask, "dog", strength=strength, frames="all"),
                            cache=fg.CacheTransfer(src=[0], dst=[1], alpha=alpha, mode="same_step"),
                            layers=[1], steps=None)
    with fg.trace(ltx2, record=fg.Record(words=["dog", "fence"], stats=["word_mass", "audio_entropy"]),
                  edit=edit) as run, KernelCalls(tl) as k:
        _call(ltx2, steps=1, output_type="latent")
    src, dst = _per_forward(_of(k.calls, NV, T))[0]
    bias = torch.zeros(2, 1, NV, T, dtype=torch.float64)
    bias[1, 0] = _bias(mask, 2, strength, range(GRID[0]))  # FocalGuidance acts on the cond branch
    p = (1 - alpha) * _probs(dst, bias) + alpha * _probs(src)
    torch.testing.assert_close(dst["out"][1:].double(),
                               torch.einsum("bhnt,bthd->bnhd", p, dst["v"].double())[1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dst["out"][:1].double(),
                               torch.einsum("bhnt,bthd->bnhd", _probs(dst), dst["v"].double())[:1],
                               rtol=1e-5, atol=1e-5)
    for word, pos in (("dog", [2]), ("fence", [7])):
        mass = p[1].mean(0)[:, pos].sum(-1).reshape(GRID[0], -1).mean(-1)
        got = run.dataset.word_mass.sel(branch="cond", step=0, layer="blocks.1", word=word).values
        np.testing.assert_allclose(got, mass.numpy(), rtol=1e-5, atol=1e-7)
    # the audio site of the edited layer is recorded from its own, unedited call
    audio = _per_forward(_of(k.calls, NV, A))[0][1]
    pa = _probs(audio)[1].mean(0)
    ent = (-torch.special.xlogy(pa, pa).sum(-1) / math.log(A)).reshape(GRID[0], -1).mean(-1)
    np.testing.assert_allclose(run.dataset.audio_entropy.sel(branch="cond", step=0, layer="blocks.1").values,
                               ent.numpy(), rtol=1e-5, atol=1e-7)


# -- the CLI with tiny-ltx2 ---------------------------------------------------------------------------------------
def test_generate_with_tiny_ltx2(tmp_path):
    import imageio.v3 as iio
    from test_cli import call

    code, out, err = call(["generate", "--pipeline", "tiny-ltx2", "--prompt", PROMPT, "--words", "dog,jumps",
                           "--out", tmp_path, "--steps", "2", "--layers", "1", "--src", "0"])
    assert code == 0, err
    assert iio.imread(tmp_path / "video.mp4").shape == (9, 32, 64, 3)
    ds = fg.open_run(tmp_path / "run.zarr")
    attrs = fg.store.decode_attrs(ds.attrs)
    assert attrs["pipeline_class"] == "LTX2ImageToVideoPipeline" and tuple(attrs["grid"]) == GRID
    assert attrs["intervention"]["type"] == "FocalGuidance"


def test_bare_transformer_against_the_dense_reference(ltx2):
    """A bare transformer called with the pipeline's own step-0 inputs (the cond half): the words given by position,
    the text length read from its encoder_attention_mask, every key open; probabilities recomputed frame by frame."""
    captured = {}

    def grab(module, args, kwargs):
        captured.setdefault("kw", dict(kwargs))

    handle = ltx2.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        _call(ltx2, steps=1, output_type="latent")
    finally:
        handle.remove()
    kw = {k: (v[1:] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == 2 else v)
          for k, v in captured["kw"].items()}  # the cond half: batch 1
    record = fg.Record(words={"dog": [2]}, stats=["word_mass", "entropy", "audio_entropy", "audio_position"],
                       chunk_bytes=1)  # one latent frame per chunk: the chunked paths
    with torch.no_grad(), fg.trace(ltx2.transformer, record=record) as run, KernelCalls(tl) as k:
        ltx2.transformer(**kw)
    ds = run.dataset
    assert ds.sizes["layer"] == LAYERS and tuple(fg.store.decode_attrs(ds.attrs)["grid"]) == GRID
    selfs, texts, audios = _sites(k)
    for layer in range(LAYERS):
        ref = dense_reference(texts[0][layer], selfs[0][layer], audios[0][layer], 0, {"dog": [2]})
        sel = dict(branch="cond", step=0, layer=f"blocks.{layer}")
        for name in ("word_mass", "entropy", "audio_entropy", "audio_position"):
            got = ds[name].sel(**sel)
            got = got.sel(word="dog") if "word" in got.dims else got
            want = ref[name][0] if name == "word_mass" else ref[name]
            np.testing.assert_allclose(got.values, want, rtol=1e-5, atol=1e-6, err_msg=f"{name} {sel}")
