"""LoRA through peft on chosen layers' attention projections (issue 16, item 2): the targets every architecture's
adapter declares, everything else frozen, identity at init, saved in diffusers' own format and loaded back without
fglens, and fglens still traces and edits the adapted model."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import fglens as fg  # noqa: E402

CALL = dict(prompt="a dog jumps over the red fence", height=32, width=48, num_frames=5, num_inference_steps=2,
            output_type="np")


def _frames(pipe):
    return pipe(image=fg.testing.reference_image(), generator=torch.Generator().manual_seed(0), **CALL).frames[0]


def test_targets_come_from_each_architectures_sites():
    wan = fg.testing.tiny_wan_i2v_pipeline()
    assert fg.train.lora_targets(wan, ["blocks.1", 3]) == {
        "transformer": ["blocks.1.attn2.to_q", "blocks.1.attn2.to_k", "blocks.3.attn2.to_q", "blocks.3.attn2.to_k"]}
    hunyuan = fg.testing.tiny_hunyuan_i2v_pipeline()
    assert fg.train.lora_targets(hunyuan, ["double.1", "single.0"]) == {"transformer": [
        "transformer_blocks.1.attn.to_q", "transformer_blocks.1.attn.to_k", "transformer_blocks.1.attn.add_k_proj",
        "single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k"]}
    cog = fg.testing.tiny_cogvideox_pipeline(num_layers=2)
    assert fg.train.lora_targets(cog, [1]) == {"transformer": ["transformer_blocks.1.attn1.to_q",
                                                               "transformer_blocks.1.attn1.to_k"]}
    wan22 = fg.testing.tiny_wan22_i2v_pipeline()
    assert fg.train.lora_targets(wan22, ["transformer_2.blocks.0"], projections=["to_v"]) == {
        "transformer_2": ["blocks.0.attn2.to_v"]}
    with pytest.raises(ValueError, match="has no projection"):
        fg.train.lora_targets(wan, [1], projections=["to_z"])
    with pytest.raises(ValueError):
        fg.train.lora_targets(wan, ["blocks.9"])


def test_only_the_adapter_trains_and_starts_as_the_identity(wan_i2v):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    before = _frames(pipe)
    trainable = fg.train.add_lora(pipe, [1, 2], rank=4)
    assert trainable == [f"blocks.{i}.attn2.{p}.lora_{ab}.focal.weight" for i in (1, 2) for p in ("to_q", "to_k")
                         for ab in ("A", "B")]
    assert [n for n, p in pipe.transformer.named_parameters() if p.requires_grad] == trainable
    np.testing.assert_array_equal(_frames(pipe), before)  # B = 0 at init
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        fg.train.add_lora(pipe, [1], rank=0)


def test_a_saved_adapter_loads_back_with_diffusers_alone_and_fglens_still_traces_it(tmp_path):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    plain = _frames(pipe)
    fg.train.add_lora(pipe, [1, 2], rank=4)
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    adapted = _frames(pipe)
    assert not np.array_equal(adapted, plain)
    assert fg.train.save_lora(pipe, tmp_path / "lora") == [str(tmp_path / "lora")]
    fresh = fg.testing.tiny_wan_i2v_pipeline()
    fresh.load_lora_weights(str(tmp_path / "lora"), adapter_name="focal")  # diffusers alone
    np.testing.assert_allclose(_frames(fresh), adapted, atol=1e-6)
    # the adapted model is traced and edited as any other: recording on, an anchor, everything restored after
    mask = torch.zeros(2, 3)
    mask[1:, 1:] = 1.0
    with fg.trace(fresh, record=fg.Record(words=["dog"]), edit=fg.AnchorMask.from_mask(mask, "dog", 2.0)) as run:
        _frames(fresh)
    assert np.isfinite(run.dataset.word_mass.values).all()
    np.testing.assert_allclose(_frames(fresh), adapted, atol=1e-6)
    with pytest.raises(ValueError, match="no transformer of this pipeline has a LoRA adapter named 'other'"):
        fg.train.save_lora(fresh, tmp_path / "x", name="other")
