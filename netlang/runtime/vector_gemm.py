"""Matrix products written as LLVM vector code: the recurrent layers' products.

The recurrent kernels (netlang/ops/recurrent_kernels.py) spend most of a training step in
small products repeated per time step (an LSTM of 128 units at batch 64: 64×128 by 128×512,
28 times forward and 28 times back) and in the weights' gradients over all steps.  OpenBLAS
runs them at the speed of the kernels it picks for the CPU, and where it is held to its AVX2
kernels (`OPENBLAS_CORETYPE=Haswell`, this project's machines, which have AVX-512) that was
about 110 GFLOP/s on one core for every shape the row LSTM multiplies.  The products here are
compiled by LLVM for the host, with the vectors the host has: 220-250 GFLOP/s on the per-step
shapes and 170-200 on the others, on the same core (`benchmarks/recurrent_products.py`;
figures in docs/compiler.md).

The structure is the textbook one.  A *tile* of C, TILE_ROWS rows by TILE_VECTORS vectors of
columns, is kept in vector registers while k runs: per k, the tile's row of b is loaded once
(TILE_VECTORS vector loads) and each of its rows of a is broadcast and multiplied into it with
a fused multiply-add.  The tile's loop is emitted as LLVM IR (`_tile_kernel`): its
accumulators are values LLVM keeps in registers, whatever it can prove about the arrays.  The
driver (`vector_gemm`) walks k in blocks of DEPTH_BLOCK (so a block of b's rows stays in the
first-level cache while every row block of C passes over it), then column panels, then tiles.

Results do not depend on the tile, the host's vector width, or how a caller cuts the rows: each
element of C is one chain of fused multiply-adds over its k in order within a block, and the
blocks' sums are added into C in k's order.  So the recurrent layers give the same bits on
any number of workers (tests/test_recurrent_threads.py).  They differ from OpenBLAS's in the
last bits, as two BLAS libraries differ.
"""

from __future__ import annotations

import functools

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from netlang.runtime.jit import generic

# The host's vector width: 64 bytes with AVX-512, 32 otherwise (AVX2; NEON's pairs of
# registers).  A tile takes TILE_ROWS × TILE_VECTORS registers for C, TILE_VECTORS for b's row
# and one for the broadcast: 19 of AVX-512's 32 registers, 15 of AVX2's 16.  8 rows by 2
# vectors measured fastest on the per-step shapes of 6×4, 8×2, 12×2 and 14×2 (12 and 14 rows
# gave the weight gradients 5% more and the per-step products 15-20% less).
_HOST_FEATURES = llvm.get_host_cpu_features()
VECTOR_BYTES = 64 if _HOST_FEATURES.get("avx512f") else 32
TILE_ROWS = 8 if VECTOR_BYTES == 64 else 6
TILE_VECTORS = 2
# k per block: 256 rows of a 32-column panel of float32 b are 32 KB, in a first-level cache of
# 48 KB.  Measured on the weight gradient ((3584×512)ᵀ by 3584×128): 197 GFLOP/s against 108
# unblocked and 163 with blocks of 512.
DEPTH_BLOCK = 256

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _lanes(dtype) -> int:
    return VECTOR_BYTES // (dtype.bitwidth // 8)


def _splat(builder, value, lanes: int):
    """A vector of `lanes` copies of a scalar."""
    vector = ir.VectorType(value.type, lanes)
    single = builder.insert_element(ir.Constant(vector, ir.Undefined), value, _I32(0))
    return builder.shuffle_vector(single, single, ir.Constant(ir.VectorType(_I32, lanes),
                                                              [0] * lanes))


def _tile_kernel(rows: int):
    """An intrinsic computing one tile of `rows` rows and TILE_VECTORS vectors of columns:

        c[i, j] ← alpha · Σ_k a[i, k]·b[k, j] + beta · c[i, j]   (beta = 0: c is not read)

    for i < rows, j < columns (≤ the tile's width; the columns past it are neither read nor
    written), k < depth.  Each operand is an array with a start (in elements) and strides (in
    elements): a's between rows and between k's (so a transposed a is a stride of 1 between
    rows), b's between k's (its columns are contiguous), c's between rows."""

    @intrinsic
    def tile(typingctx, a, a_start, a_row, a_step, b, b_start, b_step, c, c_start, c_row,
             depth, alpha, beta, columns):
        dtype = c.dtype
        signature = types.void(a, types.intp, types.intp, types.intp, b, types.intp,
                               types.intp, c, types.intp, types.intp, types.intp, dtype, dtype,
                               types.intp)

        def codegen(context, builder, sig, args):
            (a, a_start, a_row, a_step, b, b_start, b_step, c, c_start, c_row, depth, alpha,
             beta, columns) = args
            lanes = _lanes(dtype)
            scalar = context.get_value_type(dtype)
            vector = ir.VectorType(scalar, lanes)
            mask_type = ir.VectorType(ir.IntType(1), lanes)
            suffix = f"v{lanes}f{dtype.bitwidth}"
            module = builder.module
            fma = cgutils.get_or_insert_function(
                module, ir.FunctionType(vector, [vector] * 3), f"llvm.fma.{suffix}")
            # Masked loads and stores: the last panel of a matrix whose width is not a multiple
            # of the tile's touches only its own columns.
            load = cgutils.get_or_insert_function(
                module, ir.FunctionType(vector, [cgutils.voidptr_t, _I32, mask_type, vector]),
                f"llvm.masked.load.{suffix}.p0")
            store = cgutils.get_or_insert_function(
                module, ir.FunctionType(ir.VoidType(), [vector, cgutils.voidptr_t, _I32,
                                                        mask_type]),
                f"llvm.masked.store.{suffix}.p0")
            align = _I32(dtype.bitwidth // 8)
            zero = ir.Constant(vector, [0.0] * lanes)

            def data(position, value, start):
                array = context.make_array(sig.args[position])(context, builder, value)
                return builder.gep(array.data, [start])
            a, b, c = data(0, a, a_start), data(4, b, b_start), data(7, c, c_start)
            lane_numbers = ir.Constant(ir.VectorType(_I64, lanes), list(range(lanes)))
            masks = [builder.icmp_signed("<", lane_numbers,
                                         _splat(builder, builder.sub(columns, _I64(v * lanes)),
                                                lanes))
                     for v in range(TILE_VECTORS)]

            def vector_at(row_start, v):
                return builder.bitcast(builder.gep(row_start, [_I64(v * lanes)]),
                                       cgutils.voidptr_t)

            # The tile of C is read and written only after the loop over k: asked for now, its
            # cache lines arrive while the loop runs.  The recurrent kernels' C is a step's rows
            # of a record, far apart and long out of the cache; without this a step's h·W_hhᵀ
            # ran at 172 GFLOP/s in the row LSTM's forward pass, and that pass took 8% longer.
            prefetch = cgutils.get_or_insert_function(
                module, ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, _I32, _I32, _I32]),
                "llvm.prefetch.p0")
            for i in range(rows):
                c_row_start = builder.gep(c, [builder.mul(_I64(i), c_row)])
                for v in range(TILE_VECTORS):
                    # for writing (1), kept in every cache level (3), data (1)
                    builder.call(prefetch, [vector_at(c_row_start, v), _I32(1), _I32(3), _I32(1)])

            # The accumulators live in stack slots, which LLVM's mem2reg turns into registers.
            sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(TILE_VECTORS)]
                    for _ in range(rows)]
            with cgutils.for_range(builder, depth) as loop:
                b_row = builder.gep(b, [builder.mul(loop.index, b_step)])
                b_vectors = [builder.call(load, [vector_at(b_row, v), align, masks[v], zero])
                             for v in range(TILE_VECTORS)]
                a_column = builder.gep(a, [builder.mul(loop.index, a_step)])
                for i in range(rows):
                    a_value = builder.load(builder.gep(a_column, [builder.mul(_I64(i), a_row)]))
                    broadcast = _splat(builder, a_value, lanes)
                    for v in range(TILE_VECTORS):
                        total = builder.call(fma, [broadcast, b_vectors[v],
                                                   builder.load(sums[i][v])])
                        builder.store(total, sums[i][v])
            alphas, betas = _splat(builder, alpha, lanes), _splat(builder, beta, lanes)
            beta_is_zero = builder.fcmp_ordered("==", beta, ir.Constant(scalar, 0.0))
            for i in range(rows):
                c_row_start = builder.gep(c, [builder.mul(_I64(i), c_row)])
                for v in range(TILE_VECTORS):
                    where = vector_at(c_row_start, v)
                    old = builder.call(load, [where, align, masks[v], zero])
                    kept = builder.select(beta_is_zero, zero, builder.fmul(betas, old))
                    result = builder.call(fma, [alphas, builder.load(sums[i][v]), kept])
                    builder.call(store, [result, where, align, masks[v]])
            return context.get_dummy_value()
        return signature, codegen
    return tile


_full_tile = _tile_kernel(TILE_ROWS)
_one_row = _tile_kernel(1)


# One compilation per dtype, whatever layouts the call sites pass (whole buffers, a step's rows
# of a record): the driver reads only the arrays' pointers and row strides, as the BLAS calls
# do (`any_layout`).  Typed by layout, the row LSTM's step compiled it three times over.
@functools.partial(generic, any_layout=True, no_cpython_wrapper=True)
def vector_gemm(transa, alpha, a, b, beta, c):
    """c ← alpha·op(a)·b + beta·c: a (M, K), or (K, M) with `transa`; b (K, N); c (M, N); all
    with unit column stride (a row block of a larger matrix is fine).  beta = 0 does not read
    c.  float32 or float64, one thread."""
    m, n = c.shape
    depth = b.shape[0]
    size = c.itemsize
    if transa:
        a_row, a_step = 1, a.strides[0] // size
    else:
        a_row, a_step = a.strides[0] // size, 1
    b_step, c_row = b.strides[0] // size, c.strides[0] // size
    width = TILE_VECTORS * (VECTOR_BYTES // size)
    full = m - m % TILE_ROWS
    alpha, beta, one = c.dtype.type(alpha), c.dtype.type(beta), c.dtype.type(1.0)
    # range(…, max(depth, 1), …): with no k at all c still becomes beta·c.
    for k0 in range(0, max(depth, 1), DEPTH_BLOCK):
        block = min(DEPTH_BLOCK, depth - k0)
        scale = beta if k0 == 0 else one   # the later blocks add into what the first left
        for j0 in range(0, n, width):
            columns = min(width, n - j0)
            b_start = k0 * b_step + j0
            for i0 in range(0, full, TILE_ROWS):
                _full_tile(a, i0 * a_row + k0 * a_step, a_row, a_step, b, b_start, b_step,
                           c, i0 * c_row + j0, c_row, block, alpha, scale, columns)
            for i0 in range(full, m):
                _one_row(a, i0 * a_row + k0 * a_step, a_row, a_step, b, b_start, b_step,
                         c, i0 * c_row + j0, c_row, block, alpha, scale, columns)
