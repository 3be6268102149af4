"""BLAS matrix products callable from generated Numba code, with gemm's `beta`.

Numba's `np.dot(a, b, out)` overwrites `out`; a training step often wants
`C ← α·A·B + β·C` instead: a momentum buffer updated in place by the weight
gradient's product (`v ← m·v + gᵀx`), or plain SGD applied inside the product
(`W ← W − lr·gᵀx`), which saves a pass over every weight.  Every matrix product of
a generated program comes here.

The BLAS is NumPy's own OpenBLAS (64-bit integers), found beside NumPy and bound
through ctypes: the same library and thread pool as NumPy's products, and no SciPy
import on the way to the first training step (importing SciPy's Cython BLAS table,
as Numba's `np.dot` does, costs a second at start-up).  Where NumPy brings no such
library (another build), SciPy's Cython BLAS table (32-bit integers) serves.

Arrays are row-major; BLAS is column-major, so `C = op(A)·op(B)` is computed
as `Cᵀ = op(B)ᵀ·op(A)ᵀ` with the operands swapped.  Each matrix needs unit
stride along its rows only: a block of columns of a larger matrix (one group of
a grouped convolution) is passed with the larger matrix's row stride.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from netlang.runtime.jit import generic
from netlang.runtime.linkage import symbol_jit


def _numpy_openblas():
    """(sgemm, dgemm, (get-threads, set-threads) or None) addresses in NumPy's bundled
    64-bit-integer OpenBLAS, or None."""
    here = os.path.dirname(np.__file__)
    patterns = [os.path.join(here, "..", "numpy.libs", "libscipy_openblas64_*"),
                os.path.join(here, ".dylibs", "libscipy_openblas64_*")]
    for path in sorted(p for pattern in patterns for p in glob.glob(pattern)):
        try:
            lib = ctypes.CDLL(path)  # already loaded by NumPy: the same handle
            products = (ctypes.cast(lib.scipy_sgemm_64_, ctypes.c_void_p).value,
                        ctypes.cast(lib.scipy_dgemm_64_, ctypes.c_void_p).value)
        except (OSError, AttributeError):
            continue
        try:
            threads = (ctypes.cast(lib.scipy_openblas_get_num_threads64_, ctypes.c_void_p).value,
                       ctypes.cast(lib.scipy_openblas_set_num_threads64_, ctypes.c_void_p).value)
        except AttributeError:
            threads = None
        return products + (threads,)
    return None


def _scipy_cython_blas():
    from numba.extending import get_cython_function_address
    return (get_cython_function_address("scipy.linalg.cython_blas", "sgemm"),
            get_cython_function_address("scipy.linalg.cython_blas", "dgemm"))


# Registered as named symbols (not baked-in addresses), so the compiled code that calls them
# can go to Numba's disk cache and be linked again in the next process.  Each integer width
# has its own symbol names: code compiled for one can never be linked against the other.
_addresses = _numpy_openblas()
ILP64 = _addresses is not None
if not ILP64:
    _addresses = _scipy_cython_blas() + (None,)
THREAD_CONTROL = _addresses[2] is not None
# Part of the program cache key: the library the compiled calls link to, and whether the
# calls holding BLAS to one thread around the worker functions are linked in.
BLAS_ABI = (("numpy-openblas64" if ILP64 else "scipy-cython-blas")
            + ("+threads" if THREAD_CONTROL else ""))
_SUFFIX = "ilp64" if ILP64 else "lp64"
llvm.add_symbol(f"netlang_sgemm_{_SUFFIX}", _addresses[0])
llvm.add_symbol(f"netlang_dgemm_{_SUFFIX}", _addresses[1])
if THREAD_CONTROL:
    llvm.add_symbol("netlang_blas_get_threads", _addresses[2][0])
    llvm.add_symbol("netlang_blas_set_threads", _addresses[2][1])


def _external_call(symbol, real):
    """An intrinsic calling the Fortran-interface gemm `symbol` (whose floats are `real`) with
    its thirteen arguments as values: each scalar is stored in a stack slot of the calling
    function and passed by pointer, as Fortran takes it, so a product allocates nothing (its
    arguments were once NumPy arrays made per call, three np.empty calls that Numba also had
    to compile); the arrays' data pointers are passed as they are."""
    integer = types.int64 if ILP64 else types.int32
    kinds = (types.uint8, types.uint8, integer, integer, integer, real, None, integer, None,
             integer, real, None, integer)   # None: a data pointer, passed as it is

    # Thirteen explicit parameters: Numba's intrinsics do not take *args.
    @intrinsic
    def call(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        given = (transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        signature = types.void(*(types.unliteral(t) for t in given))

        def codegen(context, builder, sig, values):
            pointers = []
            for value, given_type, kind in zip(values, sig.args, kinds):
                if kind is None:
                    pointers.append(builder.inttoptr(value, cgutils.voidptr_t))
                    continue
                slot = cgutils.alloca_once_value(
                    builder, context.cast(builder, value, given_type, kind))
                pointers.append(builder.bitcast(slot, cgutils.voidptr_t))
            fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t] * 13)
            builder.call(cgutils.get_or_insert_function(builder.module, fnty, symbol), pointers)
            return context.get_dummy_value()
        return signature, codegen
    return call


_N, _T = 78, 84  # 'N' and 'T'


# Code compiled for one integer width calls that width's symbols: a cached function built
# against the other library fails to link instead of passing it the wrong integers.
_sgemm = _external_call(f"netlang_sgemm_{_SUFFIX}", types.float32)
_dgemm = _external_call(f"netlang_dgemm_{_SUFFIX}", types.float64)


@njit(inline="always")
def _operands(transa, transb, a, b, c):
    """gemm's (transb, transa, n, m, k, ldb, lda, ldc) for the row-major product c = op(a)·op(b),
    computed as its transpose; each leading dimension from a row stride (at least 1, even for
    an empty or one-column matrix)."""
    m, n = c.shape
    k = a.shape[0] if transa else a.shape[1]
    lda, ldb, ldc = a.strides[0] // a.itemsize, b.strides[0] // b.itemsize, c.strides[0] // c.itemsize
    return (_T if transb else _N, _T if transa else _N, n, m, k, ldb if ldb > 1 else 1,
            lda if lda > 1 else 1, ldc if ldc > 1 else 1)


# One compilation, whatever the call site passes; for compiled callers only (jit.py says why).
@functools.partial(generic, any_layout=True, no_cpython_wrapper=True)
def gemm32(transa, transb, alpha, a, b, beta, c):
    """c ← alpha·op(a)·op(b) + beta·c for row-major float32 matrices (unit column stride)."""
    tb, ta, n, m, k, ldb, lda, ldc = _operands(transa, transb, a, b, c)
    _sgemm(tb, ta, n, m, k, alpha, b.ctypes.data, ldb, a.ctypes.data, lda, beta, c.ctypes.data, ldc)


@functools.partial(generic, any_layout=True, no_cpython_wrapper=True)
def gemm64(transa, transb, alpha, a, b, beta, c):
    """c ← alpha·op(a)·op(b) + beta·c for row-major float64 matrices (unit column stride)."""
    tb, ta, n, m, k, ldb, lda, ldc = _operands(transa, transb, a, b, c)
    _dgemm(tb, ta, n, m, k, alpha, b.ctypes.data, ldb, a.ctypes.data, lda, beta, c.ctypes.data, ldc)


@intrinsic
def _get_threads(typingctx):
    signature = types.int32()

    def codegen(context, builder, sig, values):
        fnty = ir.FunctionType(ir.IntType(32), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "netlang_blas_get_threads")
        return builder.call(fn, [])
    return signature, codegen


@intrinsic
def _set_threads(typingctx, count):
    signature = types.void(types.int32)

    def codegen(context, builder, sig, values):
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "netlang_blas_set_threads")
        builder.call(fn, values)
        return context.get_dummy_value()
    return signature, codegen


# A `symbol_jit` function (not plain `njit`): a program cut into pieces is a Python function
# that calls it from Python, and Numba's own disk cache loads its code only after importing
# every registry of the compiler, 0.3 s of a warm process's first step.
@symbol_jit
def _swap_threads(count):
    previous = _get_threads()
    _set_threads(np.int32(count))
    return previous


@symbol_jit
def _no_thread_control(count):
    return 0


# Called by a generated step around each call of a worker function (`ProgramWriter.
# worker_function` in netlang/codegen/cpu.py): the workers are the parallelism, so a product
# inside one runs on the calling thread instead of waking OpenBLAS's own threads to fight the
# other worker for the cores.  The count is OpenBLAS's process-wide one: its pthreads build
# (the one NumPy's wheels bundle) keeps no per-thread count, and even its
# `openblas_set_num_threads_local` sets the shared one.  So only the serial step sets it, once
# before the workers start and once after they all finish, restoring the count returned.  When
# each worker set and restored it, the last to finish decided whether the step's later products
# (a dense layer's) ran on one thread or on several, and OpenBLAS's results differ in the last
# bits between the two: the same seed gave different weights.  Without thread control (another
# BLAS) it does nothing and returns 0.
set_blas_threads = _swap_threads if THREAD_CONTROL else _no_thread_control
