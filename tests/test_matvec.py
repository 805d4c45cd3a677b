"""engines/matvec.py: the vector-code products against numpy, and the order of their sums."""

import numpy as np
import pytest

from charwise.engines.matvec import (
    COPY_PANELS,
    GEMM_VECTORS,
    KC,
    MC,
    PANEL,
    VECTOR_BYTES,
    gemm,
    gemm_nt,
    gemm_packed,
    gemm_tall,
    gemm_tall_parts,
    matvec,
    pack,
    transpose,
)

SHAPES_N = (1, 2, 3, 5, 8, 15, 16, 17, 31, 65, 100, 129, 300, 1024)


def _bound(A, B, dtype):
    """The rounding error bound of a sum of P products in dtype: P eps sum |a_p b_p|
    (recursive summation with one rounding per multiply-add, and P = 0 exact)."""
    P = B.shape[0]
    eps = np.finfo(dtype).eps
    return P * eps * (np.abs(A).astype(np.float64) @ np.abs(B).astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matvec_matches_numpy_within_the_rounding_bound(dtype):
    rng = np.random.default_rng(1)
    for P in (0, 1, 2, 3, 7, 100, 257):
        for N in SHAPES_N:
            B = rng.standard_normal((P, N)).astype(dtype)
            a = rng.standard_normal(P).astype(dtype)
            c = np.full(N, np.nan, dtype)
            matvec(c, a, B)
            exact = a.astype(np.float64) @ B.astype(np.float64)
            assert np.all(np.abs(c - exact) <= _bound(a, B, dtype)), (P, N)


def test_matvec_widens_float32_inputs_for_a_float64_result():
    rng = np.random.default_rng(2)
    for P, N in [(100, 100), (7, 33), (64, 5)]:
        B = rng.standard_normal((P, N)).astype(np.float32)
        a = rng.standard_normal(P)
        c = np.empty(N)
        matvec(c, a, B)
        exact = a @ B.astype(np.float64)
        assert np.all(np.abs(c - exact) <= _bound(a, B, np.float64))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matvec_columns_are_the_same_bits_however_they_are_split(dtype):
    # what fast._layer_step's chunks rely on: a column's sum depends on the rows only
    rng = np.random.default_rng(3)
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    for P in (1, 2, 25, 100, 255):
        for N in (3, lanes - 1, lanes + 3, PANEL * lanes + 5, 2 * PANEL * lanes + 1):
            B = rng.standard_normal((P, N)).astype(dtype)
            a = rng.standard_normal(P).astype(dtype)
            whole = np.empty(N, dtype)
            matvec(whole, a, B)
            for cut in sorted({1, 2, lanes, N // 2, N - 1} - {0, N}):
                parts = np.empty(N, dtype)
                matvec(parts[:cut], a, np.ascontiguousarray(B[:, :cut]))
                matvec(parts[cut:], a, np.ascontiguousarray(B[:, cut:]))
                assert np.array_equal(whole, parts), (P, N, cut)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_matches_numpy_within_the_rounding_bound(dtype):
    rng = np.random.default_rng(4)
    for M in (1, 3, 4, 5, 25, 65):
        for P in (0, 1, 25, 100):
            for N in (1, 15, 16, 17, 65, 100, 200):
                A = rng.standard_normal((M, P)).astype(dtype)
                B = rng.standard_normal((P, N)).astype(dtype)
                for view in (A, np.asfortranarray(A), np.repeat(A, 2, axis=1)[:, ::2]):
                    C = np.full((M, N), np.nan, dtype)
                    gemm(view, B, C)
                    exact = A.astype(np.float64) @ B.astype(np.float64)
                    assert np.all(np.abs(C - exact) <= _bound(A, B, dtype)), (M, P, N)


def test_gemm_takes_strided_rows_by_plain_loops():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((6, 40))
    B = rng.standard_normal((40, 80))[:, ::2]  # rows not contiguous
    C = np.empty((6, 40))
    gemm(A, B, C)
    assert np.allclose(C, A @ B, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_transpose_copies_every_entry_of_any_shape_into_a_slice(dtype):
    rng = np.random.default_rng(5)
    for R in (1, 3, 4, 5, 8, 65, 100):
        for N in (1, 2, 4, 7, 65, 100):
            A = rng.standard_normal((R, N)).astype(dtype)
            wide = np.full((N, R + 9), np.nan, dtype)  # out: a slice with rows of another stride
            transpose(A, wide[:, 4 : 4 + R])
            np.testing.assert_array_equal(wide[:, 4 : 4 + R], A.T)
            assert np.isnan(wide[:, :4]).all() and np.isnan(wide[:, 4 + R :]).all()


def test_transpose_refuses_strided_rows_and_a_wrong_shape():
    with pytest.raises(ValueError, match="rows of A and out must be contiguous"):
        transpose(np.ones((4, 20))[:, ::2], np.empty((10, 4)))
    with pytest.raises(ValueError, match="out must have A's shape reversed"):
        transpose(np.ones((4, 8)), np.empty((8, 3)))


def test_matvec_refuses_strided_rows():
    B = np.ones((4, 20))[:, ::2]
    with pytest.raises(ValueError, match="rows of B must be contiguous"):
        matvec(np.empty(10), np.ones(4), B)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_columns_are_the_same_bits_however_they_are_split(dtype):
    # what kernels' parts of units rely on: for one number of rows, an entry of C depends on
    # its row of A and column of B only (under a vector of columns: scalar code, same order)
    rng = np.random.default_rng(6)
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    for M in (1, 2, 5, 32):
        for P in (1, 9, 64):
            N = 2 * GEMM_VECTORS * lanes + 3
            A = rng.standard_normal((M, P)).astype(dtype)
            B = rng.standard_normal((P, N)).astype(dtype)
            whole = np.empty((M, N), dtype)
            gemm(A, B, whole)
            for cut in (1, lanes // 2, lanes, N // 2, N - 3):
                parts = np.empty((M, N), dtype)
                gemm(A, B[:, :cut], parts[:, :cut])  # strided views of B and C, as kernels'
                gemm(A, B[:, cut:], parts[:, cut:])
                assert np.array_equal(whole, parts), (M, P, cut)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_nt_matches_numpy_within_the_rounding_bound(dtype):
    rng = np.random.default_rng(7)
    for M in (1, 3, 4, 5, 32):
        for P in (1, 7, 16, 17, 25, 100, 257):
            for N in (1, 3, 4, 5, 65):
                A = rng.standard_normal((M, P)).astype(dtype)
                B = rng.standard_normal((N, P)).astype(dtype)
                C = np.full((M, N), np.nan, dtype)
                gemm_nt(A, B, C)
                exact = A.astype(np.float64) @ B.astype(np.float64).T
                assert np.all(np.abs(C - exact) <= _bound(A, B.T, dtype)), (M, P, N)
                parts = np.full((M, N), np.nan, dtype)  # rows of B in two calls: same bits
                gemm_nt(A, B[: N // 2], parts[:, : N // 2])
                gemm_nt(A, B[N // 2 :], parts[:, N // 2 :])
                assert np.array_equal(C, parts)


def test_gemm_nt_sums_only_real_entries():
    # the last P mod lanes entries come from an overlapping vector whose other lanes are
    # masked: an infinity or NaN there must not leak into the sum
    for P in (17, 20, 33):
        A = np.ones((2, P))
        B = np.ones((3, P))
        B[0, 0] = np.inf  # counted once, in the first vector
        B[1, P - 1] = np.nan
        C = np.zeros((2, 3))
        gemm_nt(A, B, C)
        assert np.isinf(C[:, 0]).all() and np.isnan(C[:, 1]).all()
        assert (C[:, 2] == P).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_tall_and_its_parts_equal_gemm_to_the_bit(dtype):
    # passes over KC rows of B (C accumulating), C's rows in parts on threads: each entry is
    # gemm's sum, in order, whatever the passes and parts
    rng = np.random.default_rng(8)
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    shapes = [(7, 3 * KC + 5, 4 * lanes), (33, KC, 2 * lanes), (5, 10, 8 * lanes)]
    shapes += [(6, 2 * KC + 1, 3 * lanes + 5), (9, 40, lanes - 3), (4, 0, 2 * lanes)]
    shapes += [(2 * MC + 9, KC + 3, 2 * lanes), (2 * MC + 9, 30, 2 * lanes + 3)]  # rows in parts
    shapes += [(MC + 9, KC + 3, COPY_PANELS * GEMM_VECTORS * lanes + 5)]  # A's blocks copied
    for M, P, N in shapes:
        A = rng.standard_normal((P, M)).astype(dtype).T  # strided, as dW's dZ^T
        B = rng.standard_normal((P, N)).astype(dtype)
        want = np.empty((M, N), dtype)
        gemm(A, B, want)
        assert np.allclose(want, A @ B, rtol=1e-4, atol=1e-4)
        got = np.full((M, N), np.nan, dtype)
        gemm_tall(A, B, got)
        assert np.array_equal(got, want), (M, P, N)
        for parts in (2, 3, 64):
            got = np.full((M, N), np.nan, dtype)
            gemm_tall_parts(A, B, got, parts)
            assert np.array_equal(got, want), (M, P, N, parts)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_packed_panels_give_gemm_tall_bits_for_each_range_of_columns(dtype):
    # the cells' per-step products: B's columns packed range by range (a gate's units of one
    # part) into one buffer, each range's product from its panels alone, the same bits as
    # gemm_tall on those columns; ranges of under a vector, of a block, of a block and a few
    # columns (the last panel kept a vector wide), of several blocks
    rng = np.random.default_rng(9)
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    wide = GEMM_VECTORS * lanes
    widths = [lanes - 3, lanes, wide, wide + 1, wide + lanes - 1, wide + lanes, 3 * wide + 5]
    cuts = np.cumsum([0] + widths)
    N = int(cuts[-1])
    for M in (1, 4, 9, 33):
        for P in (0, 7, KC, 2 * KC + 3):
            B = rng.standard_normal((N, P)).astype(dtype).T  # strided, as the forward's W^T
            A = rng.standard_normal((M, P)).astype(dtype)
            buf = np.full(P * N, np.nan, dtype)
            for a, b in zip(cuts[:-1], cuts[1:], strict=True):
                pack(B, buf, a, b)
            assert not np.isnan(buf).any()
            for a, b in zip(cuts[:-1], cuts[1:], strict=True):
                want = np.empty((M, b - a), dtype)
                gemm_tall(A, np.ascontiguousarray(B[:, a:b]), want)
                got = np.full((M, N), np.nan, dtype)
                gemm_packed(A, buf, a, b, got)
                assert np.array_equal(got[:, a:b], want), (M, P, a, b)
                assert np.isnan(np.delete(got, np.s_[a:b], axis=1)).all()
