"""The tiny offline pipelines: complete, deterministic for a seed, shaped like the real ones."""

from __future__ import annotations

import numpy as np
import torch

from fglens import testing


def _frames(pipe, seed=0):
    return pipe(
        image=testing.reference_image(), prompt="a dog jumps", height=32, width=48, num_frames=5,
        num_inference_steps=2, generator=torch.Generator().manual_seed(seed), output_type="np",
    ).frames[0]


def test_i2v_pipeline_is_deterministic_for_a_seed():
    a, b = testing.tiny_wan_i2v_pipeline(seed=3), testing.tiny_wan_i2v_pipeline(seed=3)
    for (name, pa), (_, pb) in zip(a.transformer.named_parameters(), b.transformer.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert np.array_equal(_frames(a), _frames(b))
    c = testing.tiny_wan_i2v_pipeline(seed=4)
    assert not torch.equal(a.transformer.proj_out.weight, c.transformer.proj_out.weight)


def test_i2v_pipeline_has_wan_i2v_layout(wan_i2v):
    t = wan_i2v.transformer
    assert t.config.in_channels == 36  # 16 noise + 4 mask + 16 image latent channels
    assert t.blocks[0].attn2.add_k_proj is not None
    captured = {}
    h = t.register_forward_pre_hook(lambda m, a, kw: captured.update(kw), with_kwargs=True)
    try:
        _frames(wan_i2v)
    finally:
        h.remove()
    assert captured["encoder_hidden_states"].shape[1] == 512  # text padded to 512 as in Wan
    assert captured["encoder_hidden_states_image"].shape[1] == 257  # as ViT-H/14 at 224 px


def test_tokenizer_keeps_whole_words():
    tok = testing.tiny_t5_tokenizer()
    assert tok.convert_ids_to_tokens(tok("a dog jumps").input_ids) == ["▁a", "▁dog", "▁jumps", "</s>"]


def test_tiny_pipelines_call_with_small_defaults_and_keep_what_is_given(wan_i2v):
    """`pipe(image=..., prompt=...)` alone works on a tiny pipeline (the diffusers defaults, 480x832x81, crashed
    Wan's tiny VAE after a minute and a half); given sizes and steps win; the class name is diffusers'."""
    import inspect

    from diffusers import WanImageToVideoPipeline

    assert isinstance(wan_i2v, WanImageToVideoPipeline) and type(wan_i2v).__name__ == "WanImageToVideoPipeline"
    assert "image" in inspect.signature(type(wan_i2v).__call__).parameters
    seen = []
    hook = wan_i2v.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"].shape),
                                                       with_kwargs=True)
    try:
        frames = wan_i2v(image=testing.reference_image(96, 64), prompt="a dog jumps", output_type="np").frames[0]
        assert frames.shape == (5, 32, 48, 3) and len(seen) == 2 * 4    # CFG x TINY_CALL_DEFAULTS steps
        seen.clear()
        frames = wan_i2v(testing.reference_image(), "a dog jumps", None, 16, 32, num_frames=1,
                         num_inference_steps=1, output_type="np").frames[0]
        assert frames.shape == (1, 16, 32, 3) and len(seen) == 2       # positional height/width kept
    finally:
        hook.remove()
    assert testing.TINY_CALL_DEFAULTS["wan"]["num_inference_steps"] == 4
