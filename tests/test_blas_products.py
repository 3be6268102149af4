"""The BLAS products every generated program calls (netlang/runtime/blas.py): c ← α·op(a)·op(b)
+ β·c on row-major matrices, transposed or not, on views with a row stride of their own (a
block of columns of a larger matrix), in float32 and float64, against NumPy in float64; and
the neighbours of a view left as they were."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import from_python

from netlang.runtime import blas

# Compiled for compiled callers only: called here through `from_python`.
gemm32, gemm64 = from_python(blas.gemm32), from_python(blas.gemm64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transa,transb", list(itertools.product([False, True], repeat=2)))
def test_products_match_numpy_on_views_with_their_own_row_stride(dtype, transa, transb):
    rng = np.random.default_rng(7)
    m, n, k = 13, 9, 21
    gemm = gemm32 if dtype == np.float32 else gemm64
    # Each operand a block of columns of a wider matrix, so its row stride is not its width.
    wide_a = rng.normal(size=(k, m + 5) if transa else (m, k + 5)).astype(dtype)
    wide_b = rng.normal(size=(n, k + 3) if transb else (k, n + 3)).astype(dtype)
    wide_c = rng.normal(size=(m, n + 4)).astype(dtype)
    a = wide_a[:, 2:2 + m] if transa else wide_a[:, 2:2 + k]
    b = wide_b[:, 1:1 + k] if transb else wide_b[:, 1:1 + n]
    c = wide_c[:, 3:3 + n]
    before = wide_c.copy()
    expected = 0.5 * (a.T if transa else a).astype(np.float64) @ \
        (b.T if transb else b).astype(np.float64) - 2.0 * c.astype(np.float64)
    gemm(transa, transb, 0.5, a, b, -2.0, c)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=tolerance, atol=tolerance)
    outside = np.ones(wide_c.shape, bool)
    outside[:, 3:3 + n] = False
    assert np.array_equal(wide_c[outside], before[outside])


def test_beta_zero_overwrites_and_an_integer_alpha_is_a_float():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((3, 4), np.float32)
    c = np.full((2, 4), np.nan, np.float32)
    gemm32(False, False, 2, a, b, 0.0, c)
    assert np.array_equal(c, 2 * a.sum(axis=1, keepdims=True) * np.ones((1, 4), np.float32))
