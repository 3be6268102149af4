"""The recurrent layers' matrix product (netlang/runtime/vector_gemm.py): values against a
float64 product, the edges of its tiles, and results that do not depend on how the rows are
cut (what makes the recurrent layers' results independent of the worker count)."""

import numpy as np
import pytest
from conftest import from_python

from netlang.runtime import vector_gemm as compiled
from netlang.runtime.vector_gemm import DEPTH_BLOCK, TILE_ROWS

# Compiled for compiled callers only: called here through `from_python`.
vector_gemm = from_python(compiled.vector_gemm)

TOLERANCE = {np.float32: 2e-6, np.float64: 1e-14}


def _operands(rng, m, k, n, transa, dtype):
    a = rng.standard_normal((k, m) if transa else (m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    return a, b, c


def _expected(a, b, c, alpha, beta, transa):
    a64 = (a.T if transa else a).astype(np.float64)
    return alpha * (a64 @ b.astype(np.float64)) + beta * c.astype(np.float64)


# Shapes at the tiles' edges: rows past the last full tile, a last column panel narrower than
# a vector and one wider, one row, one column, k past one depth block and not a multiple of it.
SHAPES = [(64, 128, 512), (13, 5, 37), (1, 7, 1), (TILE_ROWS + 1, DEPTH_BLOCK + 3, 28),
          (3, 2 * DEPTH_BLOCK, 17), (40, 28, 512)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transa", [False, True])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_product_values(m, k, n, transa, dtype):
    rng = np.random.default_rng(m * 1000 + k + n)
    a, b, c = _operands(rng, m, k, n, transa, dtype)
    expected = _expected(a, b, c, 0.7, 0.5, transa)
    out = c.copy()
    vector_gemm(transa, 0.7, a, b, 0.5, out)
    scale = max(np.abs(expected).max(), 1.0) * np.sqrt(k + 1)
    assert np.abs(out - expected).max() <= TOLERANCE[dtype] * scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_beta_zero_ignores_what_c_held(dtype):
    rng = np.random.default_rng(1)
    a, b, _ = _operands(rng, 11, 9, 21, False, dtype)
    out = np.full((11, 21), np.nan, dtype)
    vector_gemm(False, 1.0, a, b, 0.0, out)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=TOLERANCE[dtype] * 10)


def test_no_depth_scales_c_by_beta():
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = c.copy()
    vector_gemm(False, 1.0, np.zeros((2, 0), np.float32), np.zeros((0, 3), np.float32), 0.5, out)
    np.testing.assert_array_equal(out, 0.5 * c)


def test_views_of_larger_matrices():
    """Operands that are blocks of larger matrices (row strides wider than their rows), as the
    recurrent kernels pass one step's rows of a record: only their own elements are read and
    written."""
    rng = np.random.default_rng(2)
    big_a = rng.standard_normal((20, 3, 30)).astype(np.float32)
    big_b = rng.standard_normal((40, 50)).astype(np.float32)
    big_c = rng.standard_normal((20, 3, 45)).astype(np.float32)
    a, b, c = big_a[2:19, 1, 3:28], big_b[5:30, 7:40], big_c[2:19, 2, 4:37]
    before = big_c.copy()
    expected = _expected(a, b, c, 1.0, 1.0, False)
    vector_gemm(False, 1.0, a, b, 1.0, c)
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5)
    untouched = np.ones(big_c.shape, bool)
    untouched[2:19, 2, 4:37] = False
    np.testing.assert_array_equal(big_c[untouched], before[untouched])


@pytest.mark.parametrize("transa", [False, True])
def test_rows_cut_anywhere_give_the_same_bits(transa):
    """Each element is one chain of multiply-adds in k's order whatever rows the call holds:
    the product of all rows equals, bit for bit, the products of any cut of them (OpenBLAS's
    does not: its kernels differ by the product's size)."""
    rng = np.random.default_rng(3)
    m, k, n = 45, DEPTH_BLOCK + 77, 300
    a, b, c = _operands(rng, m, k, n, transa, np.float32)
    whole = c.copy()
    vector_gemm(transa, 1.0, a, b, 1.0, whole)
    for cuts in ([0, 1, 45], [0, 7, 8, 30, 45], [0, 22, 45]):
        pieces = c.copy()
        for first, stop in zip(cuts[:-1], cuts[1:]):
            rows = a[:, first:stop] if transa else a[first:stop]
            vector_gemm(transa, 1.0, rows, b, 1.0, pieces[first:stop])
        np.testing.assert_array_equal(pieces, whole)
