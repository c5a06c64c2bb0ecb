"""Tests of fglens.stats against independent float64 numpy references (docs/concepts.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fglens import stats

PROPS = settings(deadline=None, max_examples=60, derandomize=True)


# --------------------------------------------------------------------------------------------------
# independent references (float64 numpy, no fglens code)
# --------------------------------------------------------------------------------------------------
def rook_weights(ny: int, nx: int) -> np.ndarray:
    """The full N x N binary rook (4-neighbour) weight matrix of a row-major ny x nx grid."""
    n = ny * nx
    w = np.zeros((n, n))
    for y in range(ny):
        for x in range(nx):
            i = y * nx + x
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < ny and 0 <= xx < nx:
                    w[i, yy * nx + xx] = 1.0
    return w


def moran_ref(m: np.ndarray) -> float:
    """I = (N / S0) z^T W z / z^T z with the explicit weight matrix; NaN for a constant map or no edges."""
    m = np.asarray(m, dtype=np.float64)
    ny, nx = m.shape
    w = rook_weights(ny, nx)
    z = m.ravel() - m.mean()
    s0 = w.sum()
    den = z @ z
    if s0 == 0 or np.ptp(m) == 0:
        return float("nan")
    return float(m.size / s0 * (z @ w @ z) / den)


def checkerboard(ny: int, nx: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    return np.where((np.arange(ny)[:, None] + np.arange(nx)[None, :]) % 2 == 0, hi, lo)


def entropy_ref(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(-1)


# --------------------------------------------------------------------------------------------------
# Moran's I on known grids
# --------------------------------------------------------------------------------------------------
def test_rook_reference_sanity():
    # the reference itself: 3x3 grid has 12 undirected edges -> S0 = 24; corner degree 2, centre 4
    w = rook_weights(3, 3)
    assert w.sum() == 24 and (w == w.T).all()
    assert w[0].sum() == 2 and w[4].sum() == 4 and w[1].sum() == 3


@pytest.mark.parametrize("shape", [(2, 2), (4, 4), (6, 6), (3, 3), (5, 5), (3, 5), (4, 7), (1, 6), (7, 1)])
@pytest.mark.parametrize("levels", [(0.0, 1.0), (-2.5, 7.0)])
def test_checkerboard_is_exactly_minus_one(shape, levels):
    # Exact value, any grid with >= 2 cells (even OR odd cell count): the rook graph of a grid is bipartite and
    # a checkerboard puts every edge between a "lo" and a "hi" cell. With p the fraction of hi cells,
    # z_hi = (hi-lo)(1-p), z_lo = -(hi-lo)p, so  sum_ij w_ij z_i z_j = -S0 (hi-lo)^2 p(1-p)  and
    # sum_i z_i^2 = N (hi-lo)^2 p(1-p); hence I = (N/S0) * (-S0)/N = -1 exactly, whatever N and p.
    m = checkerboard(*shape, *levels)
    assert moran_ref(m) == pytest.approx(-1.0, abs=1e-12)
    out = stats.morans_i(torch.tensor(m))
    assert out.dtype == torch.float64 and out.shape == ()
    assert out.item() == pytest.approx(-1.0, abs=1e-12)
    # float32 input gives the same (computed in float64 internally)
    assert stats.morans_i(torch.tensor(m, dtype=torch.float32)).item() == pytest.approx(-1.0, abs=1e-12)


def test_docstring_example_2x2():
    assert stats.morans_i(torch.tensor([[0.0, 1.0], [1.0, 0.0]])).item() == pytest.approx(-1.0, abs=1e-15)


@pytest.mark.parametrize("shape", [(8, 8), (5, 9), (16, 3)])
def test_smooth_ramp_strongly_positive(shape):
    ny, nx = shape
    ramp = np.arange(ny)[:, None] * 1.0 + np.arange(nx)[None, :] * 0.7
    out = stats.morans_i(torch.tensor(ramp)).item()
    assert out == pytest.approx(moran_ref(ramp), rel=1e-12)
    assert out > 0.7


def test_ramp_exact_value_1d():
    # 1 x n line, m = 0..n-1: z_i = i - (n-1)/2, sum over neighbour pairs of z_i z_{i+1}, counted twice.
    n = 6
    z = np.arange(n) - (n - 1) / 2
    expected = (n / (2 * (n - 1))) * 2 * np.sum(z[:-1] * z[1:]) / np.sum(z * z)  # = 0.6 * 2 * 8.75 / 17.5
    assert expected == pytest.approx(0.6, abs=1e-15)
    assert stats.morans_i(torch.arange(n, dtype=torch.float64)[None]).item() == pytest.approx(0.6, abs=1e-13)
    assert stats.morans_i(torch.arange(n, dtype=torch.float64)[:, None]).item() == pytest.approx(0.6, abs=1e-13)


@pytest.mark.parametrize("value", [0.0, 0.1, 1.0, -3.7, 1e-7, 12345.678])
@pytest.mark.parametrize("shape", [(4, 4), (7, 7), (3, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_map_is_nan_not_zero(value, shape, dtype):
    out = stats.morans_i(torch.full(shape, value, dtype=dtype))
    assert torch.isnan(out).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_by_one_grid_is_nan(dtype):
    assert torch.isnan(stats.morans_i(torch.tensor([[0.3]], dtype=dtype))).item()
    # also batched: every 1x1 map is NaN
    assert torch.isnan(stats.morans_i(torch.rand(3, 2, 1, 1, dtype=dtype))).all()


def test_float32_near_constant_is_nan():
    torch.manual_seed(0)
    m = (1.0 + 1e-9 * torch.randn(6, 6, dtype=torch.float64)).to(torch.float32)
    # 1e-9 is far below half an ulp of 1.0 in float32 (5.96e-8): the map is *exactly* constant after rounding
    assert torch.unique(m).numel() == 1
    assert torch.isnan(stats.morans_i(m)).item()


@pytest.mark.parametrize("shape", [(2, 3), (3, 5), (4, 7), (5, 5), (8, 6), (1, 9), (9, 1), (2, 1)])
def test_random_maps_match_explicit_weight_matrix(shape):
    gen = np.random.default_rng(sum(shape) * 31 + shape[0])
    for _ in range(5):
        m = gen.normal(size=shape) * gen.uniform(0.01, 100)
        out = stats.morans_i(torch.tensor(m))
        assert out.item() == pytest.approx(moran_ref(m), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("shape", [(3, 5), (4, 7)])
def test_random_float32_maps_match_reference(shape):
    # the float32 values are exact in float64, so the only error is float64 rounding in both computations
    torch.manual_seed(1)
    m = torch.rand(4, *shape, dtype=torch.float32)
    out = stats.morans_i(m)
    ref = np.array([moran_ref(x) for x in m.double().numpy()])
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_batched_leading_dims_all_at_once():
    gen = np.random.default_rng(7)
    lead, (ny, nx) = (2, 3, 4), (5, 6)
    maps = gen.random((*lead, ny, nx))
    maps[0, 1, 2] = 0.25  # one constant map in the batch -> only that entry is NaN
    maps[1, 2, 3] = checkerboard(ny, nx, 1.0, 3.0)
    out = stats.morans_i(torch.tensor(maps))
    assert out.shape == lead and out.dtype == torch.float64
    ref = np.array([moran_ref(m) for m in maps.reshape(-1, ny, nx)]).reshape(lead)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert np.isnan(out[0, 1, 2].item()) and np.isnan(out.numpy()).sum() == 1
    assert out[1, 2, 3].item() == pytest.approx(-1.0, abs=1e-12)


def test_does_not_modify_input():
    m = torch.rand(2, 4, 4, dtype=torch.float64)
    before = m.clone()
    stats.morans_i(m)
    assert torch.equal(m, before)


# --------------------------------------------------------------------------------------------------
# Moran's I: property tests
# --------------------------------------------------------------------------------------------------
# Values are small integers times a positive scale: a non-constant map has a relative spread far above
# rounding, so the scale/shift invariance holds to tight tolerance.
@st.composite
def int_maps(draw, min_side=1, max_side=6):
    ny = draw(st.integers(min_side, max_side))
    nx = draw(st.integers(min_side, max_side))
    vals = draw(st.lists(st.integers(-4, 4), min_size=ny * nx, max_size=ny * nx))
    scale = draw(st.floats(1e-4, 1e4))
    return np.asarray(vals, dtype=np.float64).reshape(ny, nx) * scale


@PROPS
@given(int_maps())
def test_prop_matches_reference_and_nan_iff_constant(m):
    out = stats.morans_i(torch.tensor(m)).item()
    constant = np.ptp(m) == 0 or m.size == 1
    assert math.isnan(out) == constant
    if not constant:
        assert out == pytest.approx(moran_ref(m), rel=1e-9, abs=1e-11)


@PROPS
@given(int_maps(), st.floats(1e-3, 1e3), st.floats(-100.0, 100.0))
def test_prop_invariant_under_positive_scale_and_shift(m, a, c):
    base = stats.morans_i(torch.tensor(m)).item()
    scaled = stats.morans_i(torch.tensor(m * a)).item()
    shifted = stats.morans_i(torch.tensor(m + c)).item()
    both = stats.morans_i(torch.tensor(a * m + c)).item()
    if math.isnan(base):
        assert math.isnan(scaled) and math.isnan(shifted) and math.isnan(both)
    else:
        for v in (scaled, shifted, both):
            assert v == pytest.approx(base, rel=1e-8, abs=1e-8)


@PROPS
@given(int_maps(min_side=1, max_side=6))
def test_prop_within_eigenvalue_bounds(m):
    ny, nx = m.shape
    out = stats.morans_i(torch.tensor(m)).item()
    if math.isnan(out):
        return
    n = m.size
    w = rook_weights(ny, nx)
    s0 = w.sum()
    eig = np.linalg.eigvalsh(w)
    assert abs(out) <= n / s0 * np.abs(eig).max() + 1e-9
    # tighter: z is centred, so I lies within (N/S0) * the extreme eigenvalues of M W M (M = I - 11^T/N)
    c = np.eye(n) - np.full((n, n), 1.0 / n)
    eig_c = np.linalg.eigvalsh(c @ w @ c)
    assert n / s0 * eig_c.min() - 1e-9 <= out <= n / s0 * eig_c.max() + 1e-9


@PROPS
@given(st.integers(1, 6), st.integers(1, 6), st.floats(-1e4, 1e4, allow_subnormal=False))
def test_prop_constant_is_nan(ny, nx, value):
    for dtype in (torch.float32, torch.float64):
        assert math.isnan(stats.morans_i(torch.full((ny, nx), value, dtype=dtype)).item())


# --------------------------------------------------------------------------------------------------
# Moran's I: reduced-precision / integer inputs and the exact meaning of "constant"
# --------------------------------------------------------------------------------------------------
# Regression tests: an earlier version declared a map constant when its RMS deviation was below
# 64 * finfo(input dtype).eps * max|m| -- for bfloat16 that is max|m|/2, so even an exact 0/1 checkerboard came
# back NaN -- and called torch.finfo on integer maps (TypeError). "Constant" now means all values are equal.
def test_bfloat16_checkerboard_is_minus_one():
    m = torch.tensor(checkerboard(8, 8), dtype=torch.bfloat16)
    assert stats.morans_i(m).item() == pytest.approx(-1.0, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_random_map_matches_reference(dtype):
    torch.manual_seed(0)
    m = torch.rand(2, 8, 8).to(dtype)
    ref = [moran_ref(x) for x in m.double().numpy()]  # the half values are exact in float64
    np.testing.assert_allclose(stats.morans_i(m).numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_and_bool_maps(dtype):
    m = torch.tensor(checkerboard(4, 4), dtype=dtype)
    assert stats.morans_i(m).item() == pytest.approx(-1.0, abs=1e-12)
    assert torch.isnan(stats.morans_i(torch.ones(3, 3, dtype=dtype))).item()


def test_float32_one_ulp_checkerboard_is_not_constant():
    one = torch.tensor(1.0, dtype=torch.float32)
    up = torch.nextafter(one, torch.tensor(2.0))
    m = torch.where(torch.tensor(checkerboard(6, 6)) > 0, up, one)
    assert torch.unique(m).numel() == 2
    assert stats.morans_i(m).item() == pytest.approx(-1.0, abs=1e-9)


@PROPS
@given(
    st.integers(1, 6),
    st.integers(1, 6),
    st.data(),
)
def test_prop_float32_nan_iff_all_equal(ny, nx, data):
    vals = data.draw(
        st.lists(
            st.sampled_from([0.0, 1.0, -2.5, 1000.0]) | st.floats(-1e3, 1e3, width=32, allow_subnormal=False),
            min_size=ny * nx,
            max_size=ny * nx,
        )
    )
    m = torch.tensor(vals, dtype=torch.float32).reshape(ny, nx)
    out = stats.morans_i(m).item()
    constant = bool((m == m.flatten()[0]).all()) or m.numel() == 1
    assert math.isnan(out) == constant
    if not constant:
        assert out == pytest.approx(moran_ref(m.double().numpy()), rel=1e-6, abs=1e-6)


# --------------------------------------------------------------------------------------------------
# normalized_entropy
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [2, 3, 7, 512])
def test_entropy_uniform_is_one(t):
    p = torch.full((2, 3, t), 1.0 / t)
    out = stats.normalized_entropy(p, torch.ones(t), t)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, torch.ones(2, 3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("t", [2, 5, 13])
def test_entropy_one_hot_is_zero(t):
    p = torch.zeros(t, t)
    p[torch.arange(t), torch.arange(t)] = 1.0
    out = stats.normalized_entropy(p, torch.ones(t), t)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.zeros(t), atol=1e-7, rtol=0)


def test_entropy_single_key_is_zero():
    p = torch.ones(4, 1)
    out = stats.normalized_entropy(p, torch.ones(1), 1)
    assert torch.equal(out, torch.zeros(4))


def test_entropy_random_matches_numpy():
    gen = np.random.default_rng(3)
    t = 9
    p = gen.dirichlet(np.full(t, 0.5), size=(3, 4))
    p[0, 0] = 0.0
    p[0, 0, 2] = 1.0  # one-hot row with exact zeros: xlogy(0, 0) must give 0, not NaN
    out = stats.normalized_entropy(torch.tensor(p), torch.ones(t), t)
    ref = entropy_ref(p) / np.log(t)
    np.testing.assert_allclose(out.double().numpy(), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_real,total", [(5, 512), (3, 8), (0, 6), (7, 9)])
def test_entropy_collapsed_equals_expanded(n_real, total):
    gen = np.random.default_rng(n_real * 100 + total)
    m = total - n_real
    collapsed = gen.dirichlet(np.ones(n_real + 1), size=(2, 5))  # last column = total pad mass
    if n_real > 0:
        collapsed[1, 0] = 0.0
        collapsed[1, 0, -1] = 1.0  # all mass on padding: expanded is uniform over m keys
    expanded = np.concatenate([collapsed[..., :n_real], np.repeat(collapsed[..., -1:] / m, m, axis=-1)], axis=-1)
    assert expanded.shape[-1] == total
    np.testing.assert_allclose(expanded.sum(-1), 1.0, atol=1e-12)
    ref = entropy_ref(expanded) / np.log(total)
    mult = torch.ones(n_real + 1)
    mult[-1] = m
    out = stats.normalized_entropy(torch.tensor(collapsed, dtype=torch.float32), mult, total)
    np.testing.assert_allclose(out.double().numpy(), ref, atol=2e-6, rtol=0)
    if n_real > 0:
        assert out[1, 0].item() == pytest.approx(math.log(m) / math.log(total), abs=1e-6)


# --------------------------------------------------------------------------------------------------
# word_maps, cosine_similarity, text_share, frame_mean
# --------------------------------------------------------------------------------------------------
def test_word_maps_sums_columns_of_each_word():
    gen = np.random.default_rng(4)
    t = 12
    words = [[0], [2, 3, 4], [7, 11], [3, 5]]  # overlapping and non-contiguous words are allowed
    index = np.zeros((t, len(words)))
    for w, cols in enumerate(words):
        index[cols, w] = 1.0
    p = gen.dirichlet(np.ones(t), size=(2, 3, 6))
    ref = np.stack([p[..., cols].sum(-1) for cols in words], axis=-1)
    for dtype in (torch.float32, torch.float64):
        out = stats.word_maps(torch.tensor(p, dtype=dtype), torch.tensor(index, dtype=torch.float32))
        assert out.shape == (2, 3, 6, len(words)) and out.dtype == dtype
        np.testing.assert_allclose(out.double().numpy(), ref, atol=1e-6 if dtype == torch.float32 else 1e-14)


def test_cosine_similarity_matches_numpy():
    gen = np.random.default_rng(5)
    q = gen.normal(size=(2, 7, 16))
    k = gen.normal(size=(2, 3, 16)) * gen.uniform(0.1, 10, size=(2, 3, 1))
    ref = np.einsum("bnc,bwc->bnw", q, k) / (
        np.linalg.norm(q, axis=-1)[:, :, None] * np.linalg.norm(k, axis=-1)[:, None, :]
    )
    out = stats.cosine_similarity(torch.tensor(q), torch.tensor(k))
    assert out.shape == (2, 7, 3)
    np.testing.assert_allclose(out.double().numpy(), ref, atol=1e-6)
    # a query parallel / anti-parallel to a mean key
    out2 = stats.cosine_similarity(torch.tensor(3 * k[:, :1]), torch.tensor(k))
    assert out2[:, 0, 0].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    out3 = stats.cosine_similarity(torch.tensor(-k[:, :1]), torch.tensor(k))
    assert out3[:, 0, 0].tolist() == pytest.approx([-1.0, -1.0], abs=1e-6)


def test_text_share_matches_numpy():
    gen = np.random.default_rng(6)
    a = gen.normal(size=(2, 5, 8))
    b = gen.normal(size=(2, 5, 8)) * 3
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    out = stats.text_share(torch.tensor(a), torch.tensor(b))
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out.double().numpy(), na / (na + nb), atol=1e-6)


def test_text_share_edge_cases():
    z = torch.zeros(1, 3, 4)
    x = torch.ones(1, 3, 4)
    assert torch.isnan(stats.text_share(z, z)).all()
    assert torch.equal(stats.text_share(x, z), torch.ones(1, 3))
    assert torch.equal(stats.text_share(z, x), torch.zeros(1, 3))
    # mixed: only the token where both outputs vanish is NaN
    a = torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])
    b = torch.tensor([[[0.0, 0.0], [0.0, 5.0]]])
    out = stats.text_share(a, b)
    assert torch.isnan(out[0, 0]) and out[0, 1].item() == pytest.approx(0.5)


def test_frame_mean_on_frame_major_tokens():
    frames, ny, nx = 4, 3, 5
    gen = np.random.default_rng(8)
    x = gen.normal(size=(2, 3, frames * ny * nx))
    per = ny * nx
    ref = np.stack([x[..., f * per : (f + 1) * per].mean(-1) for f in range(frames)], axis=-1)
    out = stats.frame_mean(torch.tensor(x), frames)
    assert out.shape == (2, 3, frames)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
    # a token tensor whose value is its frame index has frame means 0..F-1
    idx = torch.arange(frames).repeat_interleave(per).to(torch.float32)
    assert stats.frame_mean(idx, frames).tolist() == [0.0, 1.0, 2.0, 3.0]
