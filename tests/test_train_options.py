"""`FocalLoRA`'s memory and precision options (issue 16, item 2): gradient checkpointing gives the same loss and LoRA
gradients as without it, for every loss, and is refused on a model without it; bfloat16 autocast trains with a finite
loss and a float32 adapter, also on a model loaded in bfloat16."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import fglens as fg  # noqa: E402

PROMPT = fg.testing.TINY_PROMPT


def _item(seed: int = 0) -> fg.train.TrainItem:
    video = np.random.default_rng(seed).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    dog = np.zeros((32, 48), bool)
    dog[:16, :24] = True
    return fg.train.TrainItem(f"v{seed}", fg.testing.reference_image(), PROMPT, ("dog",), video, {"dog": dog})


def _job(loss: str, **kw) -> fg.train.FocalLoRA:
    extra = {"teacher": fg.Scale(["dog"], 4.0, where=fg.Where(layers=["blocks.1"])), "call": {"steps": 2}} \
        if loss == "distill" else {}
    return fg.train.FocalLoRA(layers=["blocks.1", "blocks.2"], rank=2, loss=loss, lr=1e-2, **extra, **kw)


def _fit(loss: str, tmp, pipe=None, **kw):
    pipe = pipe or fg.testing.tiny_wan_i2v_pipeline()
    torch.manual_seed(0)  # peft's initial A: the same in both runs
    out = _job(loss, **kw).fit(pipe, [_item(0), _item(1)], steps=2, out=tmp, progress=False)
    grads = {n: p.grad.clone() for n, p in pipe.transformer.named_parameters() if p.grad is not None}
    return pipe, xr.open_zarr(out / "curve.zarr", consolidated=False), grads


@pytest.mark.parametrize("loss", ["distill", "flow", "anchor"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path, loss, monkeypatch):
    _, plain, plain_grads = _fit(loss, tmp_path / "plain")
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counted)
    pipe, ckpt, ckpt_grads = _fit(loss, tmp_path / "ckpt", gradient_checkpointing=True)
    assert calls  # the blocks really were checkpointed
    assert not pipe.transformer.is_gradient_checkpointing  # switched off again after fit
    for name in plain.data_vars:
        np.testing.assert_allclose(ckpt[name].values, plain[name].values, rtol=1e-5, atol=1e-7)
    assert plain_grads.keys() == ckpt_grads.keys() and plain_grads  # the last step's LoRA gradients
    for name, g in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], g, rtol=1e-4, atol=1e-7)
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert manifest["gradient_checkpointing"] is True


def test_gradient_checkpointing_is_refused_on_a_model_without_it(tmp_path):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    pipe.transformer._supports_gradient_checkpointing = False
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        _job("flow", gradient_checkpointing=True).fit(pipe, [_item()], steps=1, out=tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert "focal" not in (getattr(pipe.transformer, "peft_config", None) or {})
    with pytest.raises(ValueError, match="gradient_checkpointing must be True or False"):
        _job("flow", gradient_checkpointing="yes")


@pytest.mark.parametrize("loss", ["distill", "anchor"])
def test_bfloat16_autocast_trains_a_float32_adapter(tmp_path, loss):
    pipe, curve, grads = _fit(loss, tmp_path / "bf16", autocast="bfloat16")
    plain = _fit(loss, tmp_path / "fp32")[1]
    for name in curve.data_vars:
        assert np.isfinite(curve[name].values).all()
        np.testing.assert_allclose(curve[name].values, plain[name].values, rtol=0.1, atol=1e-3)  # bf16's rounding
    saved = load_file(tmp_path / "bf16" / "pytorch_lora_weights.safetensors")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
    assert all(g.dtype == torch.float32 for g in grads.values())
    manifest = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert manifest["autocast"] == "bfloat16" and manifest["job"]["autocast"] == "bfloat16"


def test_a_bfloat16_model_trains_a_float32_adapter(tmp_path):
    pipe = fg.testing.tiny_wan_i2v_pipeline()
    pipe.transformer.to(torch.bfloat16)
    _, curve, _ = _fit("flow", tmp_path, pipe=pipe)
    assert np.isfinite(curve.loss.values).all()
    lora = {n: p for n, p in pipe.transformer.named_parameters() if ".lora_" in n}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    base = dict(pipe.transformer.named_parameters())["blocks.1.attn2.to_q.base_layer.weight"]
    assert base.dtype == torch.bfloat16  # the model itself is left as it was
    saved = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    assert all(t.dtype == torch.float32 for t in saved.values())


def test_bad_autocast_is_refused():
    with pytest.raises(ValueError, match="float16 needs loss scaling"):
        _job("flow", autocast="float16")
    with pytest.raises(ValueError, match="autocast must be one of"):
        _job("flow", autocast="bf16")
    assert "autocast" not in _job("flow", autocast="float32").spec()  # = the default: old checkpoints resume
