"""Loop nests of the convolution kernels, as plain Python: compiled by netlang.runtime.cnn.

The convolution templates (netlang/ops/conv_kernels.py) emit calls to these rather than a
copy of each loop nest in every program: Numba's compile time grows much faster than
linearly with a function's size, and one im2col per convolution (forward, input and weight
gradients) would make a ResNet's step take minutes to compile.  Compiled once per machine
(Numba's disk cache) for each dtype, they are shared by every model.  They are written in
the subset of Python that Numba compiles (and run as plain Python too, slowly); compiled, a
function that calls another here calls the other's compiled form (netlang/runtime/jit.py).

Arrays are C-contiguous, of any rank (each loop takes the flat or (rows, C) view it needs: a
reshape in generated code costs compile time at every call site); images are channels-last
(N, H, W, C), so every innermost loop runs over a contiguous run of channels.

Convolution geometry (input side H, W, C; output side Ho, Wo): input row oh·sh − pt + i·dh
lies under output row oh and kernel row i, columns alike.  A column matrix has one row per
output pixel and its columns ordered (group, kh, kw, C/groups).  Blocks are runs of output
*lines* (one example's row of Wo output pixels): lines l0 ≤ L < l1, line L being example
L // Ho, output row L % Ho; the block's column matrix starts at its first line.
"""

import numpy as np


def weight_to_rows(w, rows, F, Cg, kh, kw):
    """rows (F, kh·kw·Cg) in column order (kh, kw, Cg) ← w (F, Cg, kh, kw)."""
    w = w.reshape(w.size)
    rows = rows.reshape(rows.size)
    T = kh * kw
    K = T * Cg
    # Along the rows' runs of Cg values: compiled for every kernel size at once (runtime/
    # cnn.py), this order took 7.5 ms for all of ResNet-18's 3×3 weights, where the weight's
    # order took 26 ms (9 ms compiled for 3×3 only).
    for f in range(F):
        for t in range(T):
            for c in range(Cg):
                rows[f * K + t * Cg + c] = w[(f * Cg + c) * T + t]


def rows_to_weight(rows, w, F, Cg, kh, kw):
    """The inverse of weight_to_rows, in the same order."""
    rows = rows.reshape(rows.size)
    w = w.reshape(w.size)
    T = kh * kw
    K = T * Cg
    for f in range(F):
        for t in range(T):
            for c in range(Cg):
                w[(f * Cg + c) * T + t] = rows[f * K + t * Cg + c]


def sum_partials(partials, total):
    """total ← Σ partials[w] over the workers, in worker order (a weight gradient whose
    examples were split among threads, each summing its own)."""
    flat = total.reshape(total.size)
    parts = partials.reshape((partials.shape[0], flat.size))
    for i in range(flat.size):
        flat[i] = parts[0, i]
    for w in range(1, parts.shape[0]):
        for i in range(flat.size):
            flat[i] += parts[w, i]


def add_bias(out, bias):
    """out (rows, C) += bias (C,): a convolution's epilogue when nothing else is fused."""
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            out[r, c] += bias[c]


# ---- runs of contiguous values: inlined into the loop nests below --------------------------------

def copy_run(dst, d, src, s, n):
    """dst[d:d + n] = src[s:s + n], on unsigned offsets: Numba checks a signed index for
    wraparound at every access, which keeps the loop from vectorising."""
    d, s = np.uint64(d), np.uint64(s)
    for q in range(np.uint64(n)):
        dst[d + q] = src[s + q]


def add_run(dst, d, src, s, n):
    """dst[d:d + n] += src[s:s + n], on unsigned offsets (see copy_run)."""
    d, s = np.uint64(d), np.uint64(s)
    for q in range(np.uint64(n)):
        dst[d + q] += src[s + q]


def zero_run(dst, d, n):
    """dst[d:d + n] = 0, on an unsigned offset (see copy_run)."""
    d = np.uint64(d)
    for q in range(np.uint64(n)):
        dst[d + q] = 0


def inner_columns(Wo, W, kw, sw, dw, pl):
    """(lo, hi): the output columns lo ≤ ow < hi whose whole kernel row lies inside the input."""
    lo = min(Wo, (pl + sw - 1) // sw)
    hi = min(Wo, (W - 1 + pl - (kw - 1) * dw) // sw + 1) if W - 1 + pl - (kw - 1) * dw >= 0 else 0
    return lo, max(lo, hi)


# ---- im2col and its adjoint ---------------------------------------------------------------------

def im2col(x, cols, l0, l1, H, W, C, Ho, Wo, kh, kw, sh, sw, dh, dw, pt, pl, groups):
    """cols ← the input windows of the output pixels of lines l0..l1 (zeros in the padding)."""
    x = x.reshape(x.size)
    cols = cols.reshape(cols.size)
    Cg = C // groups
    Kg = kh * kw * Cg
    K = groups * Kg
    lo, hi = inner_columns(Wo, W, kw, sw, dw, pl)
    if groups != 1 or dw != 1:
        lo = hi = 0   # only a plain convolution's kernel row is one contiguous run
    for L in range(l0, l1):
        n = L // Ho
        oh = L - n * Ho
        row0 = (L - l0) * Wo * K
        for i in range(kh):
            ih = oh * sh - pt + i * dh
            if ih < 0 or ih >= H:   # a kernel row in the padding
                for ow in range(Wo):
                    for g in range(groups):
                        zero_run(cols, row0 + ow * K + g * Kg + i * kw * Cg, kw * Cg)
                continue
            xrow = (n * H + ih) * W * C
            for ow in range(lo, hi):   # the kernel row's kw·C values are contiguous
                copy_run(cols, row0 + ow * K + i * kw * C, x, xrow + (ow * sw - pl) * C, kw * C)
            for ow in range(Wo):
                if lo <= ow < hi:
                    continue
                iw0 = ow * sw - pl
                for j in range(kw):
                    iw = iw0 + j * dw
                    for g in range(groups):
                        d = row0 + ow * K + g * Kg + (i * kw + j) * Cg
                        if iw >= 0 and iw < W:
                            copy_run(cols, d, x, xrow + iw * C + g * Cg, Cg)
                        else:
                            zero_run(cols, d, Cg)


def col2im(cols, dx, l0, l1, H, W, C, Ho, Wo, kh, kw, sh, sw, dh, dw, pt, pl, groups):
    """dx += each column of lines l0..l1 at the input position it was read from (the adjoint
    of im2col; columns in the padding are dropped)."""
    cols = cols.reshape(cols.size)
    dx = dx.reshape(dx.size)
    Cg = C // groups
    Kg = kh * kw * Cg
    K = groups * Kg
    lo, hi = inner_columns(Wo, W, kw, sw, dw, pl)
    if groups != 1 or dw != 1:
        lo = hi = 0
    for L in range(l0, l1):
        n = L // Ho
        oh = L - n * Ho
        row0 = (L - l0) * Wo * K
        for i in range(kh):
            ih = oh * sh - pt + i * dh
            if ih < 0 or ih >= H:
                continue
            xrow = (n * H + ih) * W * C
            for ow in range(lo, hi):
                add_run(dx, xrow + (ow * sw - pl) * C, cols, row0 + ow * K + i * kw * C, kw * C)
            for ow in range(Wo):
                if lo <= ow < hi:
                    continue
                iw0 = ow * sw - pl
                for j in range(kw):
                    iw = iw0 + j * dw
                    if iw < 0 or iw >= W:
                        continue
                    for g in range(groups):
                        add_run(dx, xrow + iw * C + g * Cg, cols,
                                row0 + ow * K + g * Kg + (i * kw + j) * Cg, Cg)


# ---- thin inputs: transposed columns from channel planes ---------------------------------------
# For a stride-1 convolution of an input with few channels (an image's first layer) im2col's
# rows are runs of only kw·C values.  Transposed, the columns are long runs instead: in a
# zero-padded plane of channel c (Hp × Wp, flattened) the values under kernel offset (i, j)
# for every output pixel are one contiguous stretch starting at i·dh·Wp + j·dw, if each output
# row is computed Wp wide (its last Wp − Wo values are discarded).  Rows of the transposed
# matrix are ordered (c, i, j): PyTorch's weight layout, so the weight needs no reordering.
# An example takes S = Ho·Wp columns.

def planar_columns(x, plane, colst, n0, n1, H, W, C, Ho, Wo, kh, kw, dh, dw, pt, pl):
    """colst (C·kh·kw, (n1 − n0)·S) ← the transposed columns of examples n0..n1."""
    x = x.reshape((x.size // C, C))
    Wp = Wo + (kw - 1) * dw
    Hp = Ho + (kh - 1) * dh
    S = Ho * Wp
    for n in range(n0, n1):
        for c in range(C):
            for q in range(plane.shape[1]):
                plane[c, q] = 0
        for ih in range(max(0, -pt), min(H, Hp - pt)):
            for iw in range(max(0, -pl), min(W, Wp - pl)):
                r = (n * H + ih) * W + iw
                q = (ih + pt) * Wp + iw + pl
                for c in range(C):
                    plane[c, q] = x[r, c]
        base = (n - n0) * S
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    copy_run(colst[(c * kh + i) * kw + j], base, plane[c], i * dh * Wp + j * dw, S)


def planar_to_rows(outt, out, n0, n1, Ho, Wo, F, Wp):
    """out rows of examples n0..n1 (pixels, F) ← outt (F, (n1 − n0)·S), dropping the extra
    columns of each output row."""
    out = out.reshape((out.size // F, F))
    S = Ho * Wp
    for n in range(n0, n1):
        for oh in range(Ho):
            for ow in range(Wo):
                r = (n * Ho + oh) * Wo + ow
                q = (n - n0) * S + oh * Wp + ow
                for f in range(F):
                    out[r, f] = outt[f, q]


def rows_to_planar(g, gt, n0, n1, Ho, Wo, F, Wp):
    """gt (F, (n1 − n0)·S) ← g's rows of examples n0..n1, zero in the extra columns."""
    g = g.reshape((g.size // F, F))
    S = Ho * Wp
    for n in range(n0, n1):
        for oh in range(Ho):
            q0 = (n - n0) * S + oh * Wp
            for ow in range(Wo, Wp):
                for f in range(F):
                    gt[f, q0 + ow] = 0
            for ow in range(Wo):
                r = (n * Ho + oh) * Wo + ow
                for f in range(F):
                    gt[f, q0 + ow] = g[r, f]
