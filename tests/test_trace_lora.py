"""A LoRA loaded the way users load one (``pipe.load_lora_weights``), unfused and fused, under fg.trace (issue 17,
docs/compatibility.md): the recorded statistics are those of the adapted queries and keys (float64 dense reference
from the model's own projections, `test_trace_wan`), recording changes no frame, edits act, and leaving the block
leaves the adapter exactly as it was (loaded, active, fused or not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig
from test_trace_wan import _call, _check_against_dense_reference

import fglens as fg
from fglens import testing


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory):
    """A LoRA on every block's text cross-attention q/k and self-attention q, with random (non-zero) B."""
    pipe = testing.tiny_wan_i2v_pipeline()
    torch.manual_seed(0)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                            target_modules=["attn2.to_q", "attn2.to_k", "attn1.to_q"]), "style")
    out = tmp_path_factory.mktemp("lora")
    fg.train.save_lora(pipe, out, name="style")
    return out


def _loaded(folder, fuse: bool):
    pipe = testing.tiny_wan_i2v_pipeline()
    pipe.load_lora_weights(str(folder), adapter_name="style")
    if fuse:
        pipe.fuse_lora()
    return pipe


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pipe.transformer.state_dict().items()}


def _edit():
    return fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(torch.ones(3, 5), "dog", strength=2.0),
                            cache=fg.CacheTransfer(src=["blocks.3"], dst=["blocks.1", "blocks.2"], alpha=0.5),
                            layers=["blocks.1", "blocks.2"], steps=None)


@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
def test_a_loaded_lora_is_recorded_adapted_and_left_in_place(lora_folder, ref_image, fuse):
    pipe = _loaded(lora_folder, fuse)
    assert pipe.get_active_adapters() == ["style"]
    before = _weights(pipe)
    plain = _call(pipe, ref_image)
    base = _call(testing.tiny_wan_i2v_pipeline(), ref_image)
    assert not np.allclose(plain, base, atol=1e-3)  # the LoRA changes the video
    # statistics equal a float64 reference from the q/k the adapted model computed (both branches, 2 steps)
    _check_against_dense_reference(pipe, ref_image)
    with fg.trace(pipe, record=fg.Record(words=["dog"])):
        traced = _call(pipe, ref_image)
    np.testing.assert_array_equal(traced, plain)
    # the adapter is still there, active, and (fused or not) every weight is as it was
    assert pipe.get_active_adapters() == ["style"]
    after = _weights(pipe)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    np.testing.assert_array_equal(_call(pipe, ref_image), plain)


def test_fused_and_unfused_lora_record_the_same_numbers_and_take_the_same_edit(lora_folder, ref_image):
    runs, frames = [], []
    for fuse in (False, True):
        pipe = _loaded(lora_folder, fuse)
        with fg.trace(pipe, record=fg.Record(words=["dog"], branches=("cond", "uncond")), edit=_edit()) as run:
            frames.append(_call(pipe, ref_image))
        runs.append(run.dataset)
    unfused, fused = runs
    # fusing folds B·A into the weight: the same model up to float32 rounding
    for var in ("word_mass", "morans_i", "similarity", "entropy"):
        np.testing.assert_allclose(fused[var].values, unfused[var].values, rtol=1e-4, atol=1e-5, err_msg=var)
    np.testing.assert_allclose(frames[1], frames[0], atol=1e-4)
    assert not np.allclose(frames[0], _call(_loaded(lora_folder, False), ref_image), atol=1e-3)  # the edit acted
