"""Quantised transformers under fg.trace (issue 17, docs/compatibility.md), on CPU with torchao: weight-only int8 and
float8, and dynamic int8 activations × int8 weights. Recording is exact against a float64 dense reference from the
queries and keys the quantised model itself computed (its dequantised projections, `test_trace_wan`), changes no
frame, edits act, and the quantised weights are left as they were. The same through diffusers' own loader
(``from_pretrained(..., quantization_config=TorchAoConfig(...))``, bfloat16)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_trace_wan import _call, _check_against_dense_reference

import fglens as fg
from fglens import testing

torchao = pytest.importorskip("torchao", reason="pip install fglens[quant] (make test installs it)")
from torchao.quantization import (  # noqa: E402
    Float8WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
    quantize_,
)

CONFIGS = {"int8_weight_only": Int8WeightOnlyConfig, "float8_weight_only": Float8WeightOnlyConfig,
           "int8_dynamic_int8_weight": Int8DynamicActivationInt8WeightConfig}


def _edit():
    return fg.FocalGuidance(anchor=fg.AnchorMask.from_mask(torch.ones(3, 5), "dog", strength=2.0),
                            cache=fg.CacheTransfer(src=["blocks.3"], dst=["blocks.1", "blocks.2"], alpha=0.5),
                            layers=["blocks.1", "blocks.2"], steps=None)


def _weight_types(transformer) -> dict[str, str]:
    return {n: type(m.weight).__name__ for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_torchao_quantised_transformer_is_recorded_exactly(name, ref_image):
    pipe = testing.tiny_wan_i2v_pipeline()
    base = _call(pipe, ref_image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(pipe.transformer, CONFIGS[name]())
    types = _weight_types(pipe.transformer)
    assert types["blocks.0.attn2.to_q"] != "Parameter"  # quantised
    plain = _call(pipe, ref_image)
    assert not np.array_equal(plain, base)
    _check_against_dense_reference(pipe, ref_image)  # both branches, 2 steps, 3 layers, every statistic
    with fg.trace(pipe, record=fg.Record(words=["dog"])):
        traced = _call(pipe, ref_image)
    np.testing.assert_array_equal(traced, plain)
    with fg.trace(pipe, edit=_edit()):
        edited = _call(pipe, ref_image)
    assert not np.allclose(edited, plain, atol=1e-4)
    assert _weight_types(pipe.transformer) == types
    np.testing.assert_array_equal(_call(pipe, ref_image), plain)


def test_a_transformer_quantised_by_diffusers_loader_is_traced(tmp_path, ref_image):
    from diffusers import TorchAoConfig, WanTransformer3DModel

    pipe = testing.tiny_wan_i2v_pipeline()
    pipe.transformer.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.transformer = WanTransformer3DModel.from_pretrained(
            tmp_path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()), torch_dtype=torch.bfloat16)
    assert type(pipe.transformer.blocks[0].attn2.to_q.weight).__name__ == "Int8Tensor"
    plain = _call(pipe, ref_image)
    with fg.trace(pipe, record=fg.Record(words=["dog"], branches=("cond", "uncond"))) as run:
        traced = _call(pipe, ref_image)
    np.testing.assert_array_equal(traced, plain)
    ds = run.dataset
    assert np.isfinite(ds.word_mass.sel(branch="cond").values).all()
    # bf16 q/k upcast by the reference: float32 precision for the statistics fglens computes from them; the ones
    # read from the model's own bf16 kernel outputs or bf16-rotated keys carry bf16 rounding (as on CUDA bf16,
    # test_trace_wan.test_cuda_bfloat16_statistics_equal_float64_reference_from_the_same_qk)
    _check_against_dense_reference(pipe, ref_image, loose={"response": 2e-2, "response_map": 2e-2,
                                                           "response_morans_i": 1e-1, "text_share": 2e-2,
                                                           "ref_mass": 2e-2})
