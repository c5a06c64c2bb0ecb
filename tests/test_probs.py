"""Tests of fglens.core.probs against dense float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fglens.core.probs import (
    chunk_probs,
    collapse_padding,
    frame_chunks,
    frames_per_chunk,
    logsumexp_over_keys,
    padding_is_uniform,
    qk_dots,
)

PROPS = settings(deadline=None, max_examples=60, derandomize=True)


def padded_keys(b: int, t: int, h: int, d: int, n_real: int, seed: int) -> torch.Tensor:
    """Keys [B, T, H, D] whose columns from n_real on are one repeated pad key (a different one per batch item)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(b, t, h, d, generator=g, dtype=torch.float64)
    pad = torch.randn(b, 1, h, d, generator=g, dtype=torch.float64)
    k[:, n_real:] = pad
    return k


def dense_softmax(q: torch.Tensor, k: torch.Tensor, scale: float) -> np.ndarray:
    """float64 softmax over ALL keys: [B, H, n, T], written out in numpy."""
    qn, kn = q.double().numpy(), k.double().numpy()
    logits = np.einsum("bnhd,bthd->bhnt", qn, kn) * scale
    logits -= logits.max(-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(-1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# collapse_padding + chunk_probs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_real,total", [(5, 32), (1, 8), (0, 10), (11, 13), (30, 512)])
@pytest.mark.parametrize("scale", [None, 0.9])
def test_collapsed_probs_match_dense_softmax(n_real, total, scale):
    b, n, h, d = 2, 7, 3, 8
    torch.manual_seed(n_real + total)
    q = torch.randn(b, n, h, d, dtype=torch.float64) * 2
    k = padded_keys(b, total, h, d, n_real, seed=total)
    s = 1.0 / math.sqrt(d) if scale is None else scale
    dense = dense_softmax(q, k, s)

    k_eff, mult = collapse_padding(k, n_real)
    assert k_eff.shape == (b, n_real + 1, h, d)
    assert mult.shape == (n_real + 1,)
    assert mult[:n_real].tolist() == [1.0] * n_real and mult[-1].item() == total - n_real
    assert torch.equal(k_eff, k[:, : n_real + 1])

    p = chunk_probs(q, k_eff, mult, scale=scale)
    assert p.dtype == torch.float32 and p.shape == (b, h, n, n_real + 1)
    pn = p.double().numpy()
    np.testing.assert_allclose(pn[..., :n_real], dense[..., :n_real], atol=1e-6, rtol=0)
    np.testing.assert_allclose(pn[..., n_real], dense[..., n_real:].sum(-1), atol=1e-6, rtol=0)
    np.testing.assert_allclose(pn.sum(-1), 1.0, atol=1e-6, rtol=0)


def test_chunk_probs_without_multiplicity_is_plain_softmax():
    torch.manual_seed(0)
    q = torch.randn(1, 5, 2, 4)
    k = torch.randn(1, 9, 2, 4)
    p = chunk_probs(q, k)
    np.testing.assert_allclose(p.double().numpy(), dense_softmax(q, k, 0.5), atol=1e-6, rtol=0)
    # reduced-precision inputs are computed (and returned) in float32
    pb = chunk_probs(q.to(torch.bfloat16), k.to(torch.bfloat16))
    assert pb.dtype == torch.float32
    np.testing.assert_allclose(pb.double().numpy(), dense_softmax(q.bfloat16(), k.bfloat16(), 0.5), atol=1e-6)


@pytest.mark.parametrize("n_real_offset", [-1, 0, 3])
def test_no_padding_returns_keys_unchanged(n_real_offset):
    total = 9
    k = padded_keys(2, total, 2, 4, n_real=total, seed=1)
    n_real = total + n_real_offset  # n_real >= T - 1: nothing (or a single key) to collapse
    k_eff, mult = collapse_padding(k, n_real)
    assert k_eff is k or torch.equal(k_eff, k)
    assert k_eff.shape == k.shape
    assert torch.equal(mult, torch.ones(total))
    # and the probabilities are the dense ones
    q = torch.randn(2, 3, 2, 4, dtype=torch.float64)
    p = chunk_probs(q, k_eff, mult)
    np.testing.assert_allclose(p.double().numpy(), dense_softmax(q, k, 0.5), atol=1e-6, rtol=0)


@PROPS
@given(
    st.integers(1, 3),  # batch
    st.integers(1, 6),  # queries
    st.integers(1, 3),  # heads
    st.integers(1, 20),  # total keys
    st.data(),
)
def test_prop_collapse_exact(b, n, h, total, data):
    n_real = data.draw(st.integers(0, total))
    seed = data.draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, h, 4, generator=g, dtype=torch.float64) * 3
    k = padded_keys(b, total, h, 4, n_real, seed)
    assert bool(padding_is_uniform(k, n_real))
    k_eff, mult = collapse_padding(k, n_real)
    p = chunk_probs(q, k_eff, mult).double().numpy()
    dense = dense_softmax(q, k, 0.5)
    cols = k_eff.shape[1]
    if cols == total:
        np.testing.assert_allclose(p, dense, atol=1e-6, rtol=0)
    else:
        assert cols == n_real + 1
        np.testing.assert_allclose(p[..., :n_real], dense[..., :n_real], atol=1e-6, rtol=0)
        np.testing.assert_allclose(p[..., n_real], dense[..., n_real:].sum(-1), atol=1e-6, rtol=0)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# padding_is_uniform
# --------------------------------------------------------------------------------------------------
def test_padding_is_uniform_true_for_identical_pad_keys():
    k = padded_keys(2, 12, 3, 4, n_real=5, seed=2)
    out = padding_is_uniform(k, 5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool and out.shape == ()
    assert bool(out)
    # zero pad embeddings (Wan) -> identical keys too
    k[:, 5:] = 0.0
    assert bool(padding_is_uniform(k, 5))


@pytest.mark.parametrize("where", [(0, 11, 0, 0), (1, 6, 2, 3), (1, 5, 1, 2)])
def test_padding_is_uniform_false_when_one_pad_key_differs(where):
    k = padded_keys(2, 12, 3, 4, n_real=5, seed=3)
    bi, ti, hi, di = where
    k[bi, ti, hi, di] += 1e-6
    assert not bool(padding_is_uniform(k, 5))


def test_padding_is_uniform_ignores_real_keys_and_short_padding():
    k = torch.randn(1, 6, 2, 3)
    assert not bool(padding_is_uniform(k, 3))  # random "pad" keys differ
    assert bool(padding_is_uniform(k, 5))  # a single pad key: trivially uniform
    assert bool(padding_is_uniform(k, 6))  # no padding
    k[:, 3:] = k[:, 3:4].clone()
    assert bool(padding_is_uniform(k, 3))


# --------------------------------------------------------------------------------------------------
# frame_chunks / frames_per_chunk
# --------------------------------------------------------------------------------------------------
def check_chunks(grid, fpc):
    frames, ny, nx = grid
    per = ny * nx
    chunks = list(frame_chunks(grid, fpc))
    covered = np.zeros(frames * per, dtype=int)
    for start, stop in chunks:
        assert start % per == 0 and stop % per == 0 and stop > start
        assert (stop - start) // per <= fpc
        covered[start:stop] += 1
    assert (covered == 1).all()
    # consecutive, in order, all but the last exactly fpc frames
    assert chunks[0][0] == 0 and chunks[-1][1] == frames * per
    assert all(a[1] == b[0] for a, b in zip(chunks[:-1], chunks[1:], strict=True))
    assert all((stop - start) == fpc * per for start, stop in chunks[:-1])
    assert len(chunks) == math.ceil(frames / fpc)
    return chunks


@pytest.mark.parametrize("fpc", [1, 2, 3, 4, 6, 7, 10])
def test_frame_chunks_cover_every_token_once(fpc):
    check_chunks((7, 3, 4), fpc)


def test_frame_chunks_explicit():
    assert list(frame_chunks((7, 3, 4), 3)) == [(0, 36), (36, 72), (72, 84)]
    assert list(frame_chunks((1, 2, 2), 5)) == [(0, 4)]


@PROPS
@given(st.integers(1, 30), st.integers(1, 8), st.integers(1, 8), st.integers(1, 40))
def test_prop_frame_chunks(frames, ny, nx, fpc):
    check_chunks((frames, ny, nx), fpc)


@PROPS
@given(st.integers(1, 30), st.integers(1, 64), st.integers(1, 64), st.integers(0, 4096), st.integers(0, 10**8))
def test_prop_frames_per_chunk_respects_budget(frames, ny, nx, bytes_per_token, budget):
    got = frames_per_chunk((frames, ny, nx), bytes_per_token, budget)
    assert isinstance(got, int) and got >= 1
    frame_bytes = bytes_per_token * ny * nx
    if got > 1:
        assert got * frame_bytes <= budget
    if frame_bytes > 0:
        # the largest whole number of frames that fits (or 1 when not even one does)
        assert got == max(1, budget // frame_bytes)
        assert (got + 1) * frame_bytes > budget


def test_frames_per_chunk_examples():
    assert frames_per_chunk((21, 30, 52), 4, 0) == 1
    assert frames_per_chunk((21, 30, 52), 4, 4 * 30 * 52 - 1) == 1
    assert frames_per_chunk((21, 30, 52), 4, 4 * 30 * 52) == 1
    assert frames_per_chunk((21, 30, 52), 4, 5 * 4 * 30 * 52 + 17) == 5


# --------------------------------------------------------------------------------------------------
# logsumexp_over_keys
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key_chunk", [1, 2, 3, 5, 12, 13, 14, 100])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_logsumexp_over_keys_matches_dense(key_chunk, scale):
    b, n, h, d, t = 2, 6, 3, 8, 13
    torch.manual_seed(key_chunk)
    q = torch.randn(b, n, h, d, dtype=torch.float64) * 2
    k = torch.randn(b, t, h, d, dtype=torch.float64)
    s = 1.0 / math.sqrt(d) if scale is None else scale
    logits = torch.einsum("bnhd,bthd->bhnt", q, k) * s
    ref = torch.logsumexp(logits, -1)
    out = logsumexp_over_keys(q.float(), k.float(), key_chunk, scale=scale)
    assert out.shape == (b, h, n) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-6)


def test_logsumexp_over_keys_large_logits_do_not_overflow():
    # logits ~ 1e3: a naive exp-sum overflows float32; logaddexp of chunk results must not
    torch.manual_seed(0)
    q = torch.randn(1, 4, 1, 8, dtype=torch.float64) * 30
    k = torch.randn(1, 10, 1, 8, dtype=torch.float64) * 30
    ref = torch.logsumexp(torch.einsum("bnhd,bthd->bhnt", q, k) * 8**-0.5, -1)
    out = logsumexp_over_keys(q.float(), k.float(), 3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=1e-3, rtol=1e-6)


def test_logsumexp_over_keys_gives_exact_key_subset_mass():
    # the way record.py uses it: exp(lse(first keys) - lse(all keys)) is the softmax mass of the first keys
    torch.manual_seed(5)
    q = torch.randn(1, 5, 2, 4, dtype=torch.float64)
    k = torch.randn(1, 11, 2, 4, dtype=torch.float64)
    dense = dense_softmax(q, k, 0.5)
    mass = torch.exp(logsumexp_over_keys(q, k[:, :4], 4) - logsumexp_over_keys(q, k, 3))
    np.testing.assert_allclose(mass.double().numpy(), dense[..., :4].sum(-1), atol=1e-6, rtol=0)


def test_row_logsumexp_matches_dense_float64():
    from fglens.core.probs import row_logsumexp

    torch.manual_seed(3)
    q = torch.randn(2, 37, 3, 16)
    k = torch.randn(2, 53, 3, 16)
    dense = torch.logsumexp(torch.einsum("bnhd,bthd->bhnt", q.double(), k.double()) / 4.0, -1)
    got = row_logsumexp(q, k, key_chunk=7)
    assert got.shape == (2, 3, 37)
    torch.testing.assert_close(got.double(), dense, rtol=0, atol=5e-6)


DOT_DEVICES = [("cpu", torch.float32), ("cpu", torch.bfloat16)] + (
    [("cuda", torch.bfloat16), ("cuda", torch.float16), ("cuda", torch.float32)] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device, dtype", DOT_DEVICES)
def test_qk_dots_are_the_float64_dot_products_of_the_given_numbers(device, dtype):
    # half-precision inputs on CUDA take a tensor-core GEMM with float32 output: the products of the given bf16/fp16
    # numbers are exact, so the only error is float32 accumulation over D (here D = 128, as in Wan)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, 3, 128, generator=g).to(device, dtype)
    k = torch.randn(2, 11, 3, 128, generator=g).to(device, dtype)
    ref = torch.einsum("bnhd,bthd->bhnt", q.double().cpu(), k.double().cpu())
    got = qk_dots(q, k)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 37, 11)
    np.testing.assert_allclose(got.cpu().double().numpy(), ref.numpy(), rtol=0, atol=1e-4)
    # a non-contiguous key (a slice of a longer one, as the joint recorders pass) gives the same numbers
    longer = torch.cat([k, k], 1)[:, 5:16]
    np.testing.assert_allclose(qk_dots(q, longer).cpu().double().numpy(),
                               torch.einsum("bnhd,bthd->bhnt", q.double().cpu(), longer.double().cpu()).numpy(),
                               rtol=0, atol=1e-4)


# -- a separate text call with a key mask (LTX-Video's padding mask) ---------------------------------------------
def test_mask_bias_takes_key_masks_in_every_layout_and_refuses_query_masks():
    from fglens.core.probs import mask_bias, open_keys

    additive = torch.tensor([[0.0, 0.0, -10000.0], [0.0, -10000.0, -10000.0]])
    per_head = additive[:, None, None, :].expand(2, 3, 1, 3)  # what LTXVideoAttnProcessor hands its kernel
    for mask in (additive, additive[:, None], per_head, additive > -1):
        bias = mask_bias(mask, 3)
        assert bias.shape[2] == 1 and bias.shape[-1] == 3 and bias.dtype == torch.float32
        assert open_keys(bias).tolist() == [2, 1]
    assert mask_bias(None, 3) is None
    with pytest.raises(ValueError, match="keys only"):
        mask_bias(torch.zeros(2, 3, 4, 3), 3)  # varies along the queries
    with pytest.raises(ValueError, match="keys only"):
        mask_bias(additive, 4)


def test_masked_text_probabilities_equal_the_dense_softmax_and_drop_the_masked_keys():
    from fglens.core.probs import chunk_probs, mask_bias

    torch.manual_seed(0)
    q, k = torch.randn(2, 5, 3, 4), torch.randn(2, 6, 3, 4)
    mask = torch.zeros(2, 3, 1, 6)
    mask[0, :, :, 4:] = -10000.0
    mask[1, :, :, 2:] = -10000.0
    mask[1, 1, :, 5] = 0.0  # a per-head mask: exact head by head too
    p = chunk_probs(q, k, None, None, mask_bias(mask, 6))
    logits = torch.einsum("bnhd,bthd->bhnt", q.double(), k.double()) / 2 + mask.double()
    torch.testing.assert_close(p.double(), torch.softmax(logits, -1), rtol=1e-6, atol=1e-7)
    assert (p[0, :, :, 4:] == 0).all() and (p[1, 0, :, 2:] == 0).all() and (p[1, 1, :, 5] > 0).all()
    # dropping the masked keys gives the same probabilities on the open ones
    torch.testing.assert_close(p[0, :, :, :4], chunk_probs(q[:1, :, :], k[:1, :4])[0], rtol=1e-6, atol=1e-7)
