"""SkyReels-V2 (a Wan2.1 DiT in its own diffusers module): recording exact against the float64 dense reference,
bit-identical frames, restore, interventions against dense references, refusals of diffusion forcing, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers.models.transformers import transformer_skyreels_v2 as tsv
from diffusers.models.transformers import transformer_wan as tw
from test_interventions import GRID, KernelCalls, _dense, _layer_calls, assert_focal_guidance_dense
from test_trace_wan import _call, _check_against_dense_reference, model_state

import fglens as fg
from fglens.trace.record import STATS


@pytest.fixture(scope="module")
def sky():
    return fg.testing.tiny_skyreels_i2v_pipeline()


def _state(pipe):
    return model_state(pipe, tsv)


def test_sites_are_wans_and_the_skyreels_module_is_intercepted(sky):
    adapter = fg.adapters.adapter_for(sky.transformer)
    assert type(adapter).__name__ == "SkyReelsV2Adapter" and adapter.family == "skyreels_v2"
    assert [s.name for s in adapter.sites()[:3]] == ["blocks.0.self", "blocks.0.cross.image", "blocks.0.cross.text"]
    original, wan = tsv.dispatch_attention_fn, tw.dispatch_attention_fn
    with fg.trace(sky, record=fg.Record(words=["dog"])):
        assert tsv.dispatch_attention_fn is not original  # SkyReels' own module global
        assert tw.dispatch_attention_fn is wan  # Wan's is left alone
    assert tsv.dispatch_attention_fn is original


def test_recorded_statistics_equal_float64_dense_reference(sky, ref_image):
    # every statistic, both branches, a 3 x 5 latent grid over 3 latent frames, 2 steps, layers 0, 2, 3 (the Wan
    # check: plain torch hooks on the model's own projections, the full softmax in float64)
    _check_against_dense_reference(sky, ref_image)


def test_steps_timesteps_and_completeness_follow_the_unipc_scheduler(sky, ref_image):
    with fg.trace(sky, record=fg.Record(words=["dog"], branches=("cond", "uncond"))) as run:
        _call(sky, ref_image, steps=3, output_type="latent")
    ds = run.dataset
    assert list(ds.step.values) == [0, 1, 2] and ds.attrs["complete"] is True
    np.testing.assert_array_equal(ds.timestep.values, sky.scheduler.timesteps.numpy())
    assert fg.store.decode_attrs(ds.attrs)["model_family"] == "skyreels_v2"
    assert np.isfinite(ds.text_share.values).all()


def test_traced_call_is_bit_identical(sky, ref_image):
    plain = _call(sky, ref_image)
    with fg.trace(sky, record=fg.Record(words=["dog"], stats=list(STATS), maps=True)):
        traced = _call(sky, ref_image)
    assert np.array_equal(plain, traced)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_model_restored_after_interruption(sky, ref_image, error):
    before_out = _call(sky, ref_image, output_type="latent")
    before = _state(sky)

    def boom(pipe, i, t, kwargs):
        if i == 1:
            raise error("stop")
        return kwargs

    with pytest.raises(error):
        with fg.trace(sky, record=fg.Record(words=["dog"])):
            _call(sky, ref_image, steps=3, callback_on_step_end=boom, output_type="latent")
    after = _state(sky)
    assert all(a is b for a, b in zip(before[0].values(), after[0].values(), strict=True))
    assert before[1:] == after[1:]
    assert torch.equal(before_out, _call(sky, ref_image, output_type="latent"))


def test_text_to_video_pipeline_has_no_image_site():
    from diffusers import SkyReelsV2Pipeline

    vae, tokenizer, text_encoder, _ = fg.testing._tiny_wan_parts(0)
    pipe = SkyReelsV2Pipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                              transformer=fg.testing.tiny_skyreels_transformer(num_layers=2, image_conditioned=False),
                              scheduler=fg.testing._skyreels_scheduler())
    pipe.set_progress_bar_config(disable=True)
    with fg.trace(pipe, record=fg.Record(words=["dog"])) as run:
        pipe(prompt="a dog runs", height=32, width=48, num_frames=5, num_inference_steps=2, output_type="latent")
    ds = run.dataset
    assert "text_share" not in ds and list(ds.step.values) == [0, 1] and np.isfinite(ds.word_mass.values).all()


# -- interventions against dense float64 references ---------------------------------------------------------------
def test_anchor_mask_matches_dense_reference_and_respects_scope(sky, ref_image):
    mask = torch.zeros(3, 5)
    mask[0:2, 1:3] = 1.0
    strength = 3.0
    anchor = fg.AnchorMask.from_mask(mask, "dog", strength=strength, frames="first",
                                     where=fg.Where(layers=[2, 3], branches=("cond",), steps=[1]))
    with KernelCalls(tsv) as plain:
        _call(sky, ref_image)
    with fg.trace(sky, edit=anchor), KernelCalls(tsv) as edited:
        _call(sky, ref_image)
    before, after = _layer_calls(plain.text_calls(), 4), _layer_calls(edited.text_calls(), 4)
    for forward in (0, 1, 3):  # outside the scope: bit-identical
        for layer in range(4):
            assert torch.equal(before[forward][layer]["out"], after[forward][layer]["out"]), (forward, layer)
    for layer in range(4):
        call, bias = after[2][layer], None
        if layer in (2, 3):
            m = torch.zeros(GRID[0], 3, 5, dtype=torch.float64)
            m[0] = mask
            column = torch.zeros(512, dtype=torch.float64)
            column[1] = 1.0  # "dog" is token 1
            bias = strength * m.reshape(-1)[:, None] * column[None, :]
        torch.testing.assert_close(call["out"].double(), _dense(call["q"], call["k"], call["v"], bias),
                                   rtol=1e-5, atol=1e-5)
    assert not torch.equal(before[2][2]["out"], after[2][2]["out"])


@pytest.mark.parametrize("mode,src,dst", [("same_step", 0, 2), ("prev_step", 3, 1)])
def test_cache_transfer_matches_dense_reference(sky, ref_image, mode, src, dst):
    alpha = 0.4
    with fg.trace(sky, edit=fg.CacheTransfer(src=[src], dst=[dst], alpha=alpha, mode=mode)), KernelCalls(tsv) as k:
        _call(sky, ref_image, steps=3)
    forwards = _layer_calls(k.text_calls(), 4)
    assert len(forwards) == 6
    for index, forward in enumerate(forwards):
        call = forward[dst]
        own = _dense(call["q"], call["k"], call["v"])
        if mode == "prev_step" and index < 2:
            torch.testing.assert_close(call["out"].double(), own, rtol=1e-5, atol=1e-5)  # no map yet
            continue
        source = forward[src] if mode == "same_step" else forwards[index - 2][src]
        expected = (1 - alpha) * own + alpha * _dense(source["q"], source["k"], call["v"])
        torch.testing.assert_close(call["out"].double(), expected, rtol=1e-5, atol=1e-5)


def test_focal_guidance_and_its_recording_match_the_dense_reference(sky, ref_image):
    mask = torch.zeros(3, 5)
    mask[1:, 2:] = 1.0
    strength, alpha, src, dst = 3.0, 0.5, 0, 2
    edit = fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(mask, "dog", strength=strength, frames="all"),
                            cache=fg.CacheTransfer(src=[src], dst=[dst], alpha=alpha, mode="same_step"),
                            layers=[dst], steps=None)
    with fg.trace(sky, record=fg.Record(words=["dog", "fence"], stats=["word_mass"]), edit=edit) as run, \
            KernelCalls(tsv) as k:
        _call(sky, ref_image, steps=1)
    cond, uncond = _layer_calls(k.text_calls(), 4)
    assert_focal_guidance_dense(run, cond, uncond, src, dst, mask, strength, alpha, GRID)


def test_scale_and_ablate_act_on_their_calls(sky, ref_image):
    edit = fg.Scale("fence", 0.0, where=fg.Where(layers=[1])) + fg.Ablate("image", where=fg.Where(layers=[0]))
    with fg.trace(sky, record=fg.Record(words=["fence"], stats=["word_mass"]), edit=edit) as run, \
            KernelCalls(tsv) as k:
        _call(sky, ref_image, steps=1)
    image_calls = [c for c in k.calls if c["k"].shape[1] == 257]
    assert torch.count_nonzero(image_calls[0]["out"]) == 0 and torch.count_nonzero(image_calls[1]["out"]) > 0
    mass = run.dataset.word_mass.sel(branch="cond", step=0, word="fence")
    np.testing.assert_array_equal(mass.sel(layer="blocks.1").values, 0.0)
    assert (mass.sel(layer="blocks.2") > 0).all()


# -- refused: diffusion forcing ---------------------------------------------------------------------------------------
def test_diffusion_forcing_pipeline_is_refused_before_any_hook(ref_image):
    pipe = fg.testing.tiny_skyreels_df_i2v_pipeline()
    before = _state(pipe)
    with pytest.raises(ValueError, match=r"SkyReelsV2DiffusionForcingImageToVideoPipeline yet: diffusion forcing "
                                         r"denoises each latent frame on its own schedule.*step 0"):
        fg.trace(pipe, record=fg.Record(words=["dog"]))
    after = _state(pipe)
    assert all(a is b for a, b in zip(before[0].values(), after[0].values(), strict=True)) and before[1:] == after[1:]


def test_diffusion_forcing_calls_and_causal_transformers_are_refused():
    t = fg.testing.tiny_skyreels_transformer(num_layers=2, image_conditioned=False)
    x, text = torch.randn(1, 16, 2, 4, 6), torch.randn(1, 512, 32)
    with pytest.raises(ValueError, match="enable_diffusion_forcing=True yet: diffusion forcing"):
        with fg.trace(t, record=fg.Record(words={"w": [1]})):
            t(hidden_states=x, timestep=torch.tensor([[900, 800]]), encoder_hidden_states=text,
              enable_diffusion_forcing=True)
    assert not any(type(m.processor).__name__ == "TracedProcessor" for m in t.modules() if hasattr(m, "processor"))
    with fg.trace(t, record=fg.Record(words={"w": [1]})) as run:  # the same transformer, called plainly, records
        t(hidden_states=x, timestep=torch.tensor([900]), encoder_hidden_states=text)
    assert np.isfinite(run.dataset.word_mass.values).all()
    causal = fg.testing.tiny_skyreels_transformer(num_layers=2, image_conditioned=False, num_frame_per_block=2)
    with pytest.raises(ValueError, match=r"block-causal self-attention yet \(num_frame_per_block=2"):
        fg.trace(causal)


def test_load_pipeline_refuses_a_diffusion_forcing_folder_before_reading_weights(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "SkyReelsV2DiffusionForcingPipeline"}))
    with pytest.raises(ValueError, match="SkyReelsV2DiffusionForcingPipeline, which fglens does not trace yet: "
                                         "diffusion forcing"):
        fg.pipelines.load_pipeline(tmp_path)


# -- the CLI with tiny-skyreels ---------------------------------------------------------------------------------------
def test_generate_and_plot_with_tiny_skyreels(tmp_path):
    """`fglens generate --layers auto`: a diagnosis run (find_weak_layers), then Focal Guidance with a tiny CLIP, the
    video and both runs; `fglens plot` draws every figure of them."""
    import imageio.v3 as iio
    from test_cli import call

    out_dir = tmp_path / "gen"
    code, out, err = call(["generate", "--pipeline", "tiny-skyreels", "--prompt", "a dog jumps over the red fence",
                           "--words", "dog,jumps", "--out", out_dir, "--steps", "2", "--clip", "tiny",
                           "--anchor-words", "all"])
    assert code == 0, err
    assert iio.imread(out_dir / "video.mp4").shape == (5, 32, 48, 3)
    diag_id, edit_id = fg.store.list_runs(out_dir / "run.zarr")
    diag, edited = (fg.open_run(out_dir / "run.zarr", r) for r in (diag_id, edit_id))
    assert fg.store.decode_attrs(diag.attrs)["pipeline_class"] == "SkyReelsV2ImageToVideoPipeline"
    weak = fg.find_weak_layers(diag)
    spec = fg.store.decode_attrs(edited.attrs)["intervention"]
    assert spec["type"] == "FocalGuidance" and {p["type"] for p in spec["parts"]} == {"AnchorMask", "CacheTransfer"}
    assert f"Focal Guidance on layers {', '.join(weak.weak)}" in out
    assert not np.allclose(edited.similarity.values, diag.similarity.values)
    code, out, err = call(["plot", out_dir / "run.zarr", "--all", "--out", tmp_path / "figures"])
    assert code == 0, err
    names = {p.name for p in (tmp_path / "figures").rglob("*.png")}
    assert {"layer_profile.png", "condition_balance.png", "heatmap_text_share.png"} <= names
