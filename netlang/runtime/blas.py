"""BLAS matrix products callable from generated Numba code, with gemm's `beta`.

Numba's `np.dot(a, b, out)` overwrites `out`; a training step often wants
`C ← α·A·B + β·C` instead: a momentum buffer updated in place by the weight
gradient's product (`v ← m·v + gᵀx`), or plain SGD applied inside the product
(`W ← W − lr·gᵀx`), which saves a pass over every weight.  These call the same
OpenBLAS that NumPy and SciPy use, through SciPy's Cython BLAS table.

Arrays are row-major; BLAS is column-major, so `C = op(A)·op(B)` is computed
as `Cᵀ = op(B)ᵀ·op(A)ᵀ` with the operands swapped.  Each matrix needs unit
stride along its rows only: a block of columns of a larger matrix (one group of
a grouped convolution) is passed with the larger matrix's row stride.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic

# Registered as named symbols (not baked-in addresses), so the compiled code that calls them
# can go to Numba's disk cache and be linked again in the next process.
llvm.add_symbol("netlang_sgemm", get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))
llvm.add_symbol("netlang_dgemm", get_cython_function_address("scipy.linalg.cython_blas", "dgemm"))


def _external_call(symbol):
    # Thirteen explicit parameters: Numba's intrinsics do not take *args.
    @intrinsic
    def call(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        signature = types.void(*([types.uintp] * 13))

        def codegen(context, builder, sig, values):
            fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t] * 13)
            fn = cgutils.get_or_insert_function(builder.module, fnty, symbol)
            builder.call(fn, [builder.inttoptr(v, cgutils.voidptr_t) for v in values])
            return context.get_dummy_value()
        return signature, codegen
    return call


_sgemm = _external_call("netlang_sgemm")
_dgemm = _external_call("netlang_dgemm")

_N, _T = 78, 84  # 'N' and 'T'


@njit(cache=True, nogil=True)
def _dims(transa, transb, a, b, c):
    m, n = c.shape
    k = a.shape[0] if transa else a.shape[1]
    ints = np.empty(6, np.int32)
    ints[0], ints[1], ints[2] = n, m, k
    # Leading dimensions from the row strides (≥ 1 even for an empty or one-column matrix).
    ints[3] = max(b.strides[0] // b.itemsize, 1)
    ints[4] = max(a.strides[0] // a.itemsize, 1)
    ints[5] = max(c.strides[0] // c.itemsize, 1)
    chars = np.empty(2, np.uint8)
    chars[0] = _T if transb else _N
    chars[1] = _T if transa else _N
    return ints, chars


@njit(cache=True, nogil=True)
def gemm32(transa, transb, alpha, a, b, beta, c):
    """c ← alpha·op(a)·op(b) + beta·c for row-major float32 matrices (unit column stride)."""
    ints, chars = _dims(transa, transb, a, b, c)
    scalars = np.empty(2, np.float32)
    scalars[0], scalars[1] = alpha, beta
    i, s = ints.ctypes.data, scalars.ctypes.data
    _sgemm(chars.ctypes.data, chars.ctypes.data + 1, i, i + 4, i + 8, s, b.ctypes.data, i + 12,
           a.ctypes.data, i + 16, s + 4, c.ctypes.data, i + 20)


@njit(cache=True, nogil=True)
def gemm64(transa, transb, alpha, a, b, beta, c):
    """c ← alpha·op(a)·op(b) + beta·c for row-major float64 matrices (unit column stride)."""
    ints, chars = _dims(transa, transb, a, b, c)
    scalars = np.empty(2, np.float64)
    scalars[0], scalars[1] = alpha, beta
    i, s = ints.ctypes.data, scalars.ctypes.data
    _dgemm(chars.ctypes.data, chars.ctypes.data + 1, i, i + 4, i + 8, s, b.ctypes.data, i + 12,
           a.ctypes.data, i + 16, s + 8, c.ctypes.data, i + 20)
