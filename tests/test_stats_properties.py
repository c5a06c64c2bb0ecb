"""Property-based tests (hypothesis) of the statistics in fglens.stats: invariances, bounds and NaN handling,
against float64 numpy references written here (never fglens code).

Maps are drawn with `hypothesis.extra.numpy`. Floating-point tolerances follow from the conditioning: Moran's I
divides by the map's spread, so invariance properties draw maps whose spread is well above the rounding of
their values (`well_spread`); near-flat maps are tested only where the function defines them (exactly constant
-> NaN). See also tests/test_stats.py (known grids, dtypes, integer-valued property tests).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fglens import stats

PROPS = settings(max_examples=30, deadline=None, derandomize=True)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False)
grids = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=7)
maps64 = hnp.arrays(np.float64, grids, elements=finite)
maps32 = hnp.arrays(np.float32, grids, elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False))


def well_spread(m: np.ndarray, *shifts: float, rel: float = 1e-3) -> bool:
    """A map whose spread is far above the rounding of its values (and of the values shifted by `shifts`)."""
    scale = max([1.0, float(np.abs(m).max())] + [abs(c) for c in shifts])
    return m.size > 1 and float(np.ptp(m)) > rel * scale


# --------------------------------------------------------------------------------------------------------------
# Moran's I
# --------------------------------------------------------------------------------------------------------------
def moran_pairs(m: np.ndarray) -> float:
    """Moran's I in float64 by walking the grid's rook neighbour pairs (each unordered pair counted twice)."""
    m = np.asarray(m, dtype=np.float64)
    ny, nx = m.shape
    z = m - m.mean()
    num = s0 = 0.0
    for y in range(ny):
        for x in range(nx):
            for dy, dx in ((0, 1), (1, 0)):
                if y + dy < ny and x + dx < nx:
                    num += 2 * z[y, x] * z[y + dy, x + dx]
                    s0 += 2
    if s0 == 0 or (m == m.flat[0]).all():
        return math.nan
    return m.size / s0 * num / float((z * z).sum())


def moran_bound(ny: int, nx: int) -> float:
    """|I| <= (N / S0) ρ(W): I = (N/S0) zᵀWz / zᵀz and the Rayleigh quotient of the symmetric W lies within its
    spectral radius ρ. The rook graph of an ny x nx grid is the Cartesian product of two paths, whose adjacency
    eigenvalues are 2 cos(kπ/(n+1)), k = 1..n; eigenvalues of a product add, so ρ = 2cos(π/(ny+1)) + 2cos(π/(nx+1))."""
    s0 = 2 * (ny * (nx - 1) + nx * (ny - 1))
    rho = 2 * math.cos(math.pi / (ny + 1)) + 2 * math.cos(math.pi / (nx + 1))
    return ny * nx / s0 * rho


def moran(m) -> float:
    return stats.morans_i(torch.tensor(np.array(m, copy=True))).item()


def test_the_bound_is_tight_on_small_grids():
    # the reference bound itself: the checkerboard (I = -1) of a 2x2 grid reaches it, and it agrees with a
    # numerical eigen-decomposition of W on a few grids
    assert moran_bound(2, 2) == pytest.approx(1.0, abs=1e-12)
    for ny, nx in ((3, 4), (5, 2), (1, 6)):
        n = ny * nx
        w = np.zeros((n, n))
        for y in range(ny):
            for x in range(nx):
                for dy, dx in ((0, 1), (1, 0)):
                    if y + dy < ny and x + dx < nx:
                        w[y * nx + x, (y + dy) * nx + x + dx] = w[(y + dy) * nx + x + dx, y * nx + x] = 1
        assert moran_bound(ny, nx) == pytest.approx(n / w.sum() * np.abs(np.linalg.eigvalsh(w)).max(), rel=1e-12)


@PROPS
@given(maps64)
def test_moran_equals_the_float64_reference_and_is_nan_only_for_constant_maps(m):
    out = moran(m)
    constant = bool((m == m.flat[0]).all())
    assert math.isnan(out) == (constant or m.size == 1)
    if not math.isnan(out):
        # the error of both computations is rounding relative to the spread of the map
        tol = 1e-9 * max(1.0, float(np.abs(m).max())) / float(np.ptp(m))
        assert out == pytest.approx(moran_pairs(m), abs=max(tol, 1e-12))


@PROPS
@given(maps32)
def test_moran_of_float32_maps_is_computed_on_the_exact_values(m):
    out = moran(m)
    assert math.isnan(out) == (bool((m == m.flat[0]).all()) or m.size == 1)
    if not math.isnan(out):
        tol = 1e-9 * max(1.0, float(np.abs(m).max())) / float(np.ptp(m))
        assert out == pytest.approx(moran_pairs(m.astype(np.float64)), abs=max(tol, 1e-12))


@PROPS
@given(maps64)
def test_moran_is_within_the_spectral_bound(m):
    out = moran(m)
    assume(not math.isnan(out))
    assert abs(out) <= moran_bound(*m.shape) + 1e-9


@PROPS
@given(maps64, st.floats(1e-3, 1e3), st.floats(-1e3, 1e3), st.sampled_from([1.0, -1.0]))
def test_moran_is_invariant_under_scaling_and_shifting_float64(m, a, c, sign):
    assume(well_spread(m, c / a))
    base = moran(m)
    for other in (m * a, m + c, a * m + c, sign * m):
        assert moran(other) == pytest.approx(base, abs=1e-8)


@PROPS
@given(maps32, st.integers(-8, 8), st.floats(-1e3, 1e3, width=32))
def test_moran_is_invariant_under_scaling_and_shifting_float32(m, power, c):
    # scaling by a power of two is exact in float32: the same map, the same I to float64 rounding
    scaled = (m * np.float32(2.0**power)).astype(np.float32)
    assume(np.isfinite(scaled).all() and (scaled.astype(np.float64) == m.astype(np.float64) * 2.0**power).all())
    assume(not math.isnan(moran(m)))
    assert moran(scaled) == pytest.approx(moran(m), abs=1e-9)
    # a shift rounds every value to float32 (relative 6e-8 of |m| + |c|): I moves by at most that over the spread
    assume(well_spread(m, float(c), rel=1e-2))
    shifted = (m + np.float32(c)).astype(np.float32)
    assert moran(shifted) == pytest.approx(moran(m), abs=1e-4)


@PROPS
@given(maps64)
def test_moran_is_invariant_under_the_symmetries_of_the_grid(m):
    assume(well_spread(m))
    base = moran(m)
    for other in (m.T, m[::-1], m[:, ::-1], np.rot90(m)):
        assert moran(other) == pytest.approx(base, abs=1e-9)


@PROPS
@given(st.integers(1, 7), st.integers(1, 7), finite, st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_moran_of_a_constant_map_is_nan(ny, nx, value, dtype):
    assert math.isnan(stats.morans_i(torch.full((ny, nx), value, dtype=dtype)).item())


@PROPS
@given(maps64, st.data())
def test_a_nan_in_the_map_gives_nan_never_a_number(m, data):
    y = data.draw(st.integers(0, m.shape[0] - 1))
    x = data.draw(st.integers(0, m.shape[1] - 1))
    m = m.copy()
    m[y, x] = np.nan
    assert math.isnan(moran(m))


@PROPS
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)), elements=finite),
       st.data())
def test_moran_of_a_batch_is_each_maps_own(maps, data):
    maps = maps.copy()
    maps[data.draw(st.integers(0, len(maps) - 1))] = 0.5  # a constant map in the batch stays its own NaN
    out = stats.morans_i(torch.tensor(maps)).numpy()
    assert out.shape == maps.shape[:1]
    singles = np.array([moran(m) for m in maps])
    np.testing.assert_array_equal(np.isnan(out), np.isnan(singles))
    np.testing.assert_allclose(out, singles, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# normalized entropy
# --------------------------------------------------------------------------------------------------------------
weights = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=9),
                     elements=st.floats(0.0, 1.0, allow_subnormal=False))


def simplex(w: np.ndarray) -> np.ndarray:
    """Rows normalised to sum to 1 (rows must have positive mass)."""
    return w / w.sum(-1, keepdims=True)


def entropy_ref(p: np.ndarray, mult: np.ndarray, n_keys: int) -> np.ndarray:
    """-Σ p log(p/m) / log(n): the entropy of the expanded distribution (column j split into m_j equal keys)."""
    terms = np.zeros_like(p)
    np.divide(p, mult, out=terms, where=p > 0)
    terms = np.where(p > 0, -p * np.log(np.where(p > 0, terms, 1.0)), 0.0)
    return terms.sum(-1) / math.log(n_keys)


@PROPS
@given(weights)
def test_entropy_is_in_zero_one_and_equals_the_reference(w):
    assume((w.sum(-1) > 1e-3).all())
    p = simplex(w)
    t = p.shape[-1]
    out = stats.normalized_entropy(torch.tensor(p, dtype=torch.float32), torch.ones(t), t).double().numpy()
    assert ((out >= -1e-6) & (out <= 1 + 1e-6)).all()
    np.testing.assert_allclose(out, entropy_ref(p, np.ones(t), t), atol=2e-6)


@PROPS
@given(st.integers(2, 600), st.data())
def test_entropy_is_zero_for_one_hot_and_one_for_uniform(t, data):
    hot = data.draw(st.integers(0, t - 1))
    one_hot = torch.zeros(t)
    one_hot[hot] = 1.0
    assert stats.normalized_entropy(one_hot, torch.ones(t), t).item() == 0.0
    uniform = torch.full((t,), 1.0 / t)
    assert stats.normalized_entropy(uniform, torch.ones(t), t).item() == pytest.approx(1.0, abs=1e-5)


@PROPS
@given(weights, st.data())
def test_entropy_of_collapsed_columns_equals_the_expanded_distribution(w, data):
    assume((w.sum(-1) > 1e-3).all())
    p = simplex(w)
    k = p.shape[-1]
    mult = np.array(data.draw(st.lists(st.integers(1, 6), min_size=k, max_size=k)), dtype=np.float64)
    n_keys = int(mult.sum())
    expanded = np.concatenate([np.repeat(p[:, j : j + 1] / mult[j], int(mult[j]), axis=-1) for j in range(k)], -1)
    assert expanded.shape[-1] == n_keys
    ref = entropy_ref(expanded, np.ones(n_keys), n_keys)
    out = stats.normalized_entropy(torch.tensor(p, dtype=torch.float32), torch.tensor(mult), n_keys)
    np.testing.assert_allclose(out.double().numpy(), ref, atol=2e-6)
    assert (out.double().numpy() <= 1 + 1e-6).all()


@PROPS
@given(weights, st.randoms(use_true_random=False))
def test_entropy_does_not_depend_on_the_order_of_the_keys(w, rnd):
    assume((w.sum(-1) > 1e-3).all())
    p = simplex(w)
    t = p.shape[-1]
    perm = list(range(t))
    rnd.shuffle(perm)
    a = stats.normalized_entropy(torch.tensor(p), torch.ones(t), t)
    b = stats.normalized_entropy(torch.tensor(p[:, perm]), torch.ones(t), t)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# cosine similarity
# --------------------------------------------------------------------------------------------------------------
vectors = st.integers(1, 5).flatmap(
    lambda c: st.tuples(
        hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 6), st.just(c)), elements=finite),
        st.integers(1, 4),
    )
)


def nonzero_rows(x: np.ndarray) -> bool:
    """Every vector clearly non-zero, also after rounding to float32 (the function computes in float32)."""
    return bool((np.linalg.norm(x.astype(np.float32).astype(np.float64), axis=-1) > 1e-3).all())


@PROPS
@given(vectors, st.data())
def test_cosine_is_in_minus_one_one_scale_invariant_and_equals_the_reference(qw, data):
    q, n_words = qw
    k = data.draw(hnp.arrays(np.float64, (q.shape[0], n_words, q.shape[-1]), elements=finite))
    assume(nonzero_rows(q) and nonzero_rows(k))
    out = stats.cosine_similarity(torch.tensor(q), torch.tensor(k)).double().numpy()
    assert out.shape == (q.shape[0], q.shape[1], n_words)
    assert (np.abs(out) <= 1 + 1e-6).all()
    ref = np.einsum("bnc,bwc->bnw", q, k) / (np.linalg.norm(q, axis=-1)[..., None]
                                             * np.linalg.norm(k, axis=-1)[:, None, :])
    np.testing.assert_allclose(out, ref, atol=1e-5)
    a = data.draw(st.floats(1e-2, 1e2))
    b = data.draw(st.floats(1e-2, 1e2))
    scaled = stats.cosine_similarity(torch.tensor(q * a), torch.tensor(k * b)).double().numpy()
    np.testing.assert_allclose(scaled, out, atol=1e-5)
    flipped = stats.cosine_similarity(torch.tensor(-q), torch.tensor(k))
    torch.testing.assert_close(flipped, -torch.tensor(out, dtype=torch.float32), atol=1e-6, rtol=0)
    # a query along a word's key is at cosine 1
    along = stats.cosine_similarity(torch.tensor(k[:, :1] * a), torch.tensor(k))[:, 0, 0]
    torch.testing.assert_close(along, torch.ones_like(along), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# text share
# --------------------------------------------------------------------------------------------------------------
@PROPS
@given(st.integers(1, 6).flatmap(lambda c: st.tuples(*[hnp.arrays(np.float64, (2, 5, c), elements=finite)] * 2)),
       hnp.arrays(np.int8, (2, 5), elements=st.integers(0, 3)), st.floats(1e-3, 1e3))
def test_text_share_bounds_nan_and_symmetry(ab, zeros, scale):
    a, b = (x.copy() for x in ab)
    a[zeros == 1] = 0.0  # some tokens with no text output, some with no image output, some with neither
    b[zeros == 2] = 0.0
    a[zeros == 3] = b[zeros == 3] = 0.0
    na = np.linalg.norm(a.astype(np.float32).astype(np.float64), axis=-1)
    nb = np.linalg.norm(b.astype(np.float32).astype(np.float64), axis=-1)
    assume(((na == 0) | (na > 1e-3)).all() and ((nb == 0) | (nb > 1e-3)).all())
    out = stats.text_share(torch.tensor(a), torch.tensor(b)).double().numpy()
    neither = (na == 0) & (nb == 0)
    np.testing.assert_array_equal(np.isnan(out), neither)  # NaN exactly where both outputs vanish
    ok = ~neither
    assert ((out[ok] >= 0) & (out[ok] <= 1)).all()
    assert (out[(nb == 0) & ok] == 1).all() and (out[(na == 0) & ok] == 0).all()
    np.testing.assert_allclose(out[ok], na[ok] / (na[ok] + nb[ok]), atol=1e-6)
    swapped = stats.text_share(torch.tensor(b), torch.tensor(a)).double().numpy()
    np.testing.assert_allclose(out[ok] + swapped[ok], 1.0, atol=1e-6)
    common = stats.text_share(torch.tensor(a * scale), torch.tensor(b * scale)).double().numpy()
    np.testing.assert_allclose(common, out, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# frame mean
# --------------------------------------------------------------------------------------------------------------
@PROPS
@given(st.integers(1, 5), st.integers(1, 12), st.integers(1, 3), st.data())
def test_frame_mean_bounds_and_nan_stays_in_its_frame(frames, per_frame, lead, data):
    x = data.draw(hnp.arrays(np.float64, (lead, frames * per_frame), elements=finite))
    out = stats.frame_mean(torch.tensor(x), frames).numpy()
    blocks = x.reshape(lead, frames, per_frame)
    np.testing.assert_allclose(out, blocks.mean(-1), rtol=1e-12, atol=1e-9)
    assert (out >= blocks.min(-1) - 1e-9).all() and (out <= blocks.max(-1) + 1e-9).all()
    token = data.draw(st.integers(0, frames * per_frame - 1))
    x[0, token] = np.nan
    out = stats.frame_mean(torch.tensor(x), frames).numpy()
    nan = np.zeros_like(out, dtype=bool)
    nan[0, token // per_frame] = True  # tokens are frame-major: only that token's frame is NaN
    np.testing.assert_array_equal(np.isnan(out), nan)


@PROPS
@given(st.integers(2, 6), st.integers(1, 20))
def test_frame_mean_refuses_tokens_that_do_not_split_into_frames(frames, n):
    assume(n % frames)
    with pytest.raises(RuntimeError):
        stats.frame_mean(torch.zeros(n), frames)


# --------------------------------------------------------------------------------------------------------------
# word maps
# --------------------------------------------------------------------------------------------------------------
@PROPS
@given(weights, st.data())
def test_word_maps_are_column_sums_bounded_by_one(w, data):
    assume((w.sum(-1) > 1e-3).all())
    p = simplex(w)
    t = p.shape[-1]
    owner = data.draw(hnp.arrays(np.int8, (t,), elements=st.integers(-1, 3)))  # -1: a column of no word
    index = np.stack([(owner == word) for word in range(4)], -1).astype(np.float64)
    out = stats.word_maps(torch.tensor(p, dtype=torch.float32), torch.tensor(index)).double().numpy()
    ref = np.stack([p[:, owner == word].sum(-1) for word in range(4)], -1)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert (out >= 0).all() and (out <= 1 + 1e-6).all()
    assert (out.sum(-1) <= 1 + 1e-6).all()  # disjoint words share at most the whole row
    assert (out[:, ~index.any(0)] == 0).all()  # a word with no column gets no mass
