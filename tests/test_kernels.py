"""`dispatch_with_lse`: the same output bits as diffusers' native dispatch, and the exact row log-sum-exp."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_dispatch import attention_backend, dispatch_attention_fn

from fglens.trace.kernels import dispatch_with_lse


def _inputs(b=2, s=120, h=3, d=16, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(b, s, h, d) for _ in range(3)]


def _masks(b, s):
    keep = torch.ones(b, s, dtype=torch.bool)
    keep[:, -11:] = False
    keep[1, 40:45] = False
    yield None
    yield keep  # [B, S], reshaped by diffusers' native backend
    yield keep[:, None, None, :]  # [B, 1, 1, S] boolean
    yield torch.where(keep[:, None, None, :], 0.0, -1e4)  # additive
    yield keep[:, None, :, None] & keep[:, None, None, :]  # [B, 1, S, S] query & key (HunyuanVideo-1.5): pad rows
    # are fully masked (NaN in both kernels; compared where the row is open)


@pytest.mark.parametrize("mask_index", range(5))
def test_output_is_bit_identical_and_lse_exact(mask_index):
    q, k, v = _inputs()
    mask = list(_masks(2, 120))[mask_index]
    expected = dispatch_attention_fn(q, k, v, attn_mask=mask)
    result = dispatch_with_lse(q, k, v, (), {"attn_mask": mask})
    assert result is not None
    out, lse = result
    assert torch.equal(out.isnan(), expected.isnan()) and torch.equal(out.nan_to_num(), expected.nan_to_num())
    assert not out.isnan().any() or mask.shape[-2] > 1  # only fully masked rows are NaN
    logits = torch.einsum("bnhd,bthd->bhnt", q.double(), k.double()) / math.sqrt(16)
    if mask is not None:
        m = mask if mask.ndim == 4 else mask[:, None, None, :]
        logits = logits + (torch.where(m, 0.0, -math.inf) if m.dtype == torch.bool else m.double())
    reference = torch.logsumexp(logits, -1)
    open_rows = reference.isfinite()
    torch.testing.assert_close(lse.double()[open_rows], reference[open_rows], rtol=0, atol=5e-6)


def test_declines_what_it_cannot_reproduce():
    q, k, v = _inputs()
    assert dispatch_with_lse(q, k, v, (), {"is_causal": True}) is None
    assert dispatch_with_lse(q, k, v, (), {"dropout_p": 0.1}) is None
    with attention_backend("_native_math"):
        assert dispatch_with_lse(q, k, v, (), {}) is None
    assert dispatch_with_lse(q.requires_grad_(), k, v, (), {}) is None


def test_direct_sdpa_call_is_bit_identical():
    from fglens.trace.kernels import sdpa_call_with_lse

    q, k, v = (x.transpose(1, 2) for x in _inputs())
    keep = torch.ones(2, 1, 1, 120, dtype=torch.bool)
    keep[..., -7:] = False
    for args, kwargs in (((), {}), ((keep,), {}), ((), {"attn_mask": keep, "scale": 0.3})):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, *args, **kwargs)
        out, lse = sdpa_call_with_lse(q, k, v, args, kwargs)
        assert torch.equal(out, expected)
    assert sdpa_call_with_lse(q, k, v, (None, 0.0, True), {}) is None
