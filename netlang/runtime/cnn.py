"""Loop nests of the CNN kernels, called from generated code with their geometry as arguments.

A generated training step calls these instead of carrying its own copy of each loop nest:
Numba's compile time grows much faster than linearly with a function's size, and one
im2col per convolution (forward, input and weight gradients) would make a ResNet's step take
minutes to compile.  These compile once per machine (Numba's disk cache) for each dtype, and
every model reuses them.  Arrays are C-contiguous, of any rank (each helper takes the flat or
(rows, C) view it needs: a reshape in generated code costs compile time at every call site);
images are channels-last (N, H, W, C), so every innermost loop runs over a contiguous run of
channels.

Convolution geometry (input side H, W, C; output side Ho, Wo): input row oh·sh − pt + i·dh
lies under output row oh and kernel row i, columns alike.  A column matrix has one row per
output pixel and its columns ordered (group, kh, kw, C/groups).  Blocks are runs of output
*lines* (one example's row of Wo output pixels): lines l0 ≤ L < l1, line L being example
L // Ho, output row L % Ho; the block's column matrix starts at its first line.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def weight_to_rows(w, rows, F, Cg, kh, kw):
    """rows (F, kh·kw·Cg) in column order (kh, kw, Cg) ← w (F, Cg, kh, kw)."""
    w = w.reshape(w.size)
    rows = rows.reshape(rows.size)
    K = kh * kw * Cg
    for f in range(F):
        for c in range(Cg):
            for i in range(kh):
                for j in range(kw):
                    rows[f * K + (i * kw + j) * Cg + c] = w[((f * Cg + c) * kh + i) * kw + j]


@njit(cache=True, nogil=True)
def rows_to_weight(rows, w, F, Cg, kh, kw):
    """The inverse of weight_to_rows."""
    rows = rows.reshape(rows.size)
    w = w.reshape(w.size)
    K = kh * kw * Cg
    for f in range(F):
        for c in range(Cg):
            for i in range(kh):
                for j in range(kw):
                    w[((f * Cg + c) * kh + i) * kw + j] = rows[f * K + (i * kw + j) * Cg + c]


@njit(cache=True, nogil=True)
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


@njit(inline="always")
def _copy(dst, d, src, s, n):
    """dst[d:d + n] = src[s:s + n], on unsigned offsets: Numba checks a signed index for
    wraparound at every access, which keeps the loop from vectorising."""
    d, s = np.uint64(d), np.uint64(s)
    for q in range(np.uint64(n)):
        dst[d + q] = src[s + q]


@njit(inline="always")
def _add(dst, d, src, s, n):
    d, s = np.uint64(d), np.uint64(s)
    for q in range(np.uint64(n)):
        dst[d + q] += src[s + q]


@njit(inline="always")
def _zero(dst, d, n):
    d = np.uint64(d)
    for q in range(np.uint64(n)):
        dst[d + q] = 0


@njit(inline="always")
def _inner_columns(Wo, W, kw, sw, dw, pl):
    """(lo, hi): the output columns lo ≤ ow < hi whose whole kernel row lies inside the input."""
    lo = min(Wo, (pl + sw - 1) // sw)
    hi = min(Wo, (W - 1 + pl - (kw - 1) * dw) // sw + 1) if W - 1 + pl - (kw - 1) * dw >= 0 else 0
    return lo, max(lo, hi)


@njit(cache=True, nogil=True)
def im2col(x, cols, l0, l1, H, W, C, Ho, Wo, kh, kw, sh, sw, dh, dw, pt, pl, groups):
    """cols ← the input windows of the output pixels of lines l0..l1 (zeros in the padding)."""
    x = x.reshape(x.size)
    cols = cols.reshape(cols.size)
    Cg = C // groups
    Kg = kh * kw * Cg
    K = groups * Kg
    lo, hi = _inner_columns(Wo, W, kw, sw, dw, pl)
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
                        _zero(cols, row0 + ow * K + g * Kg + i * kw * Cg, kw * Cg)
                continue
            xrow = (n * H + ih) * W * C
            for ow in range(lo, hi):   # the kernel row's kw·C values are contiguous
                _copy(cols, row0 + ow * K + i * kw * C, x, xrow + (ow * sw - pl) * C, kw * C)
            for ow in range(Wo):
                if lo <= ow < hi:
                    continue
                iw0 = ow * sw - pl
                for j in range(kw):
                    iw = iw0 + j * dw
                    for g in range(groups):
                        d = row0 + ow * K + g * Kg + (i * kw + j) * Cg
                        if iw >= 0 and iw < W:
                            _copy(cols, d, x, xrow + iw * C + g * Cg, Cg)
                        else:
                            _zero(cols, d, Cg)


@njit(cache=True, nogil=True)
def col2im(cols, dx, l0, l1, H, W, C, Ho, Wo, kh, kw, sh, sw, dh, dw, pt, pl, groups):
    """dx += each column of lines l0..l1 at the input position it was read from (the adjoint
    of im2col; columns in the padding are dropped)."""
    cols = cols.reshape(cols.size)
    dx = dx.reshape(dx.size)
    Cg = C // groups
    Kg = kh * kw * Cg
    K = groups * Kg
    lo, hi = _inner_columns(Wo, W, kw, sw, dw, pl)
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
                _add(dx, xrow + (ow * sw - pl) * C, cols, row0 + ow * K + i * kw * C, kw * C)
            for ow in range(Wo):
                if lo <= ow < hi:
                    continue
                iw0 = ow * sw - pl
                for j in range(kw):
                    iw = iw0 + j * dw
                    if iw < 0 or iw >= W:
                        continue
                    for g in range(groups):
                        _add(dx, xrow + iw * C + g * Cg, cols,
                             row0 + ow * K + g * Kg + (i * kw + j) * Cg, Cg)


# ---- thin inputs: transposed columns from channel planes ---------------------------------------
# For a stride-1 convolution of an input with few channels (an image's first layer) im2col's
# rows are runs of only kw·C values.  Transposed, the columns are long runs instead: in a
# zero-padded plane of channel c (Hp × Wp, flattened) the values under kernel offset (i, j)
# for every output pixel are one contiguous stretch starting at i·dh·Wp + j·dw, if each output
# row is computed Wp wide (its last Wp − Wo values are discarded).  Rows of the transposed
# matrix are ordered (c, i, j): PyTorch's weight layout, so the weight needs no reordering.
# An example takes S = Ho·Wp columns.

@njit(cache=True, nogil=True)
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
                    _copy(colst[(c * kh + i) * kw + j], base, plane[c], i * dh * Wp + j * dw, S)


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


# ---- pooling: windows clipped to the input (padding never wins a max nor adds to a sum) ------
# Images as (pixels, C) matrices: the innermost loop runs over channels with a plain range index.

@njit(inline="always")
def _window(o, s, k, pad, size):
    start = o * s - pad
    return max(start, 0), min(start + k, size)


@njit(cache=True, nogil=True)
def maxpool_forward(x, out, N, H, W, C, Ho, Wo, kh, kw, sh, sw, pt, pl):
    x = x.reshape((x.size // C, C))
    out = out.reshape((out.size // C, C))
    for n in range(N):
        for oh in range(Ho):
            h0, h1 = _window(oh, sh, kh, pt, H)
            for ow in range(Wo):
                w0, w1 = _window(ow, sw, kw, pl, W)
                o = (n * Ho + oh) * Wo + ow
                first = (n * H + h0) * W + w0
                for c in range(C):
                    out[o, c] = x[first, c]
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        r = (n * H + ih) * W + iw
                        for c in range(C):
                            v = x[r, c]
                            m = out[o, c]
                            out[o, c] = v if v > m else m


@njit(cache=True, nogil=True)
def maxpool_backward(x, y, g, dx, N, H, W, C, Ho, Wo, kh, kw, sh, sw, pt, pl):
    """dx ← each window's gradient at the first cell (row-major) holding the window's maximum."""
    x = x.reshape((x.size // C, C))
    y = y.reshape((y.size // C, C))
    g = g.reshape((g.size // C, C))
    dx = dx.reshape((dx.size // C, C))
    for n in range(N):
        for r in range(n * H * W, (n + 1) * H * W):
            for c in range(C):
                dx[r, c] = 0
        for oh in range(Ho):
            h0, h1 = _window(oh, sh, kh, pt, H)
            for ow in range(Wo):
                w0, w1 = _window(ow, sw, kw, pl, W)
                o = (n * Ho + oh) * Wo + ow
                for c in range(C):
                    m = y[o, c]
                    found = False
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            r = (n * H + ih) * W + iw
                            if x[r, c] == m:
                                dx[r, c] += g[o, c]
                                found = True
                                break
                        if found:
                            break


@njit(inline="always")
def _avg_count(o, s, k, pad_before, pad_after, size, include_pad):
    start = o * s - pad_before
    if include_pad:
        return min(start + k, size + pad_after) - start
    return min(start + k, size) - max(start, 0)


@njit(cache=True, nogil=True)
def avgpool_forward(x, out, N, H, W, C, Ho, Wo, kh, kw, sh, sw, pt, pb, pl, pr, include_pad):
    """Window means, divided as PyTorch does (count_include_pad: by the window clipped to the
    padded input, else by its cells inside the input)."""
    x = x.reshape((x.size // C, C))
    out = out.reshape((out.size // C, C))
    for n in range(N):
        for oh in range(Ho):
            h0, h1 = _window(oh, sh, kh, pt, H)
            nh = _avg_count(oh, sh, kh, pt, pb, H, include_pad)
            for ow in range(Wo):
                w0, w1 = _window(ow, sw, kw, pl, W)
                nw = _avg_count(ow, sw, kw, pl, pr, W, include_pad)
                o = (n * Ho + oh) * Wo + ow
                for c in range(C):
                    out[o, c] = 0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        r = (n * H + ih) * W + iw
                        for c in range(C):
                            out[o, c] += x[r, c]
                inv = out.dtype.type(1.0) / out.dtype.type(nh * nw)
                for c in range(C):
                    out[o, c] *= inv


@njit(cache=True, nogil=True)
def avgpool_backward(g, dx, N, H, W, C, Ho, Wo, kh, kw, sh, sw, pt, pb, pl, pr, include_pad):
    g = g.reshape((g.size // C, C))
    dx = dx.reshape((dx.size // C, C))
    for n in range(N):
        for r in range(n * H * W, (n + 1) * H * W):
            for c in range(C):
                dx[r, c] = 0
        for oh in range(Ho):
            h0, h1 = _window(oh, sh, kh, pt, H)
            nh = _avg_count(oh, sh, kh, pt, pb, H, include_pad)
            for ow in range(Wo):
                w0, w1 = _window(ow, sw, kw, pl, W)
                nw = _avg_count(ow, sw, kw, pl, pr, W, include_pad)
                o = (n * Ho + oh) * Wo + ow
                inv = dx.dtype.type(1.0) / dx.dtype.type(nh * nw)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        r = (n * H + ih) * W + iw
                        for c in range(C):
                            dx[r, c] += g[o, c] * inv


@njit(cache=True, nogil=True)
def global_avgpool_forward(x, out, N, P, C):
    """out (N, C) ← the mean of x (N, P, C) over its P = H·W positions."""
    x = x.reshape((x.size // C, C))
    out = out.reshape((out.size // C, C))
    inv = out.dtype.type(1.0) / out.dtype.type(P)
    for n in range(N):
        for c in range(C):
            out[n, c] = 0
        for r in range(n * P, (n + 1) * P):
            for c in range(C):
                out[n, c] += x[r, c]
        for c in range(C):
            out[n, c] *= inv


@njit(cache=True, nogil=True)
def global_avgpool_backward(g, dx, N, P, C):
    g = g.reshape((g.size // C, C))
    dx = dx.reshape((dx.size // C, C))
    size = dx.dtype.type(P)
    for n in range(N):
        for r in range(n * P, (n + 1) * P):
            for c in range(C):
                dx[r, c] = g[n, c] / size


@njit(cache=True, nogil=True)
def column_sums(g, out):
    """out (C,) ← g summed over every axis but the last (a bias's gradient).  Runs of rows are
    added at once into float64 lanes, so the inner loop is long and contiguous even when C is
    small (a six-channel convolution's 100,000 rows), and the total keeps float64 precision."""
    C = out.size
    flat = g.reshape(g.size)
    rows = g.size // C
    per = max(1, 256 // C)   # rows per run
    width = per * C
    lanes = np.zeros(width, np.float64)
    runs = rows // per
    for run in range(runs):
        base = run * width
        for j in range(width):
            lanes[j] += flat[base + j]
    for j in range(runs * width, rows * C):  # the rows after the last whole run
        lanes[j - runs * width] += flat[j]
    for c in range(C):
        total = 0.0
        for k in range(per):
            total += lanes[k * C + c]
        out[c] = total


@njit(cache=True, nogil=True)
def add_bias(out, bias):
    """out (rows, C) += bias (C,): a convolution's epilogue when nothing else is fused."""
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            out[r, c] += bias[c]


# ---- batch norm: (rows, C) views of any rank; per-channel sums in float64 -----------------------

@njit(cache=True, nogil=True)
def channel_sums(x, g, acc, with_grad):
    """acc[0] ← Σx, acc[1] ← Σx² per channel (column) of x (rows, C); with_grad: also
    acc[2] ← Σg, acc[3] ← Σg·x."""
    C = x.shape[1]
    for i in range(4):
        for c in range(C):
            acc[i, c] = 0.0
    for r in range(x.shape[0]):
        for c in range(C):
            v = np.float64(x[r, c])
            acc[0, c] += v
            acc[1, c] += v * v
        if with_grad:
            for c in range(C):
                v = np.float64(x[r, c])
                gv = np.float64(g[r, c])
                acc[2, c] += gv
                acc[3, c] += gv * v


@njit(cache=True, nogil=True)
def batch_moments(acc, rows, c):
    """(mean, biased variance) of channel c from channel_sums."""
    n = max(rows, 1)
    mean = acc[0, c] / n
    return mean, max(acc[1, c] / n - mean * mean, 0.0)


@njit(cache=True, nogil=True)
def batchnorm_coefficients(x, weight, running_mean, running_var, acc, coef, eps, momentum,
                           train, update):
    """coef[0] ← the mean and coef[1] ← weight/σ per channel: batch statistics in training
    (and, with update, the running statistics moved towards them in place), running ones in
    evaluation.  The output is (x − coef[0])·coef[1] + bias."""
    C = weight.size
    x = x.reshape((x.size // C, C))
    rows = x.shape[0]
    if train:
        channel_sums(x, x, acc, False)
    for c in range(C):
        if train:
            mean, var = batch_moments(acc, rows, c)
            if update:
                running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean
                running_var[c] = ((1.0 - momentum) * running_var[c]
                                  + momentum * var * (rows / max(rows - 1, 1)))
        else:
            mean, var = np.float64(running_mean[c]), np.float64(running_var[c])
        coef[0, c] = mean
        coef[1, c] = weight[c] / np.sqrt(var + eps)


@njit(cache=True, nogil=True)
def batchnorm_apply(x, coef, bias, out):
    """out = (x − coef[0])·coef[1] + bias, when no activation is fused into the loop."""
    C = bias.size
    x = x.reshape((x.size // C, C))
    out = out.reshape((out.size // C, C))
    for r in range(x.shape[0]):
        for c in range(C):
            out[r, c] = (x[r, c] - coef[0, c]) * coef[1, c] + bias[c]


@njit(cache=True, nogil=True)
def batchnorm_grad_input(x, g, weight, running_mean, running_var, out, acc, coef, eps, train):
    """dx = w/σ · (g − mean(g) − x̂·mean(g·x̂)) with batch statistics, w/σ · g in evaluation,
    written as A·g + B·x + D per channel."""
    C = weight.size
    x = x.reshape((x.size // C, C))
    g = g.reshape((g.size // C, C))
    out = out.reshape((out.size // C, C))
    rows = x.shape[0]
    if train:
        channel_sums(x, g, acc, True)
        n = max(rows, 1)
        for c in range(C):
            mean, var = batch_moments(acc, rows, c)
            inv = 1.0 / np.sqrt(var + eps)
            gxhat = (acc[3, c] - mean * acc[2, c]) * inv
            a = weight[c] * inv
            b = -a * inv * gxhat / n
            coef[0, c] = a
            coef[1, c] = b
            coef[2, c] = -a * acc[2, c] / n - b * mean
        for r in range(rows):
            for c in range(C):
                out[r, c] = coef[0, c] * g[r, c] + coef[1, c] * x[r, c] + coef[2, c]
    else:
        for c in range(C):
            coef[0, c] = weight[c] / np.sqrt(np.float64(running_var[c]) + eps)
        for r in range(rows):
            for c in range(C):
                out[r, c] = coef[0, c] * g[r, c]


@njit(cache=True, nogil=True)
def batchnorm_grad_weight(x, g, running_mean, running_var, out, acc, eps, train):
    """d weight = Σ g·x̂ per channel."""
    C = out.size
    x = x.reshape((x.size // C, C))
    g = g.reshape((g.size // C, C))
    rows = x.shape[0]
    channel_sums(x, g, acc, True)
    for c in range(C):
        if train:
            mean, var = batch_moments(acc, rows, c)
        else:
            mean, var = np.float64(running_mean[c]), np.float64(running_var[c])
        out[c] = (acc[3, c] - mean * acc[2, c]) / np.sqrt(var + eps)


# ---- local response normalisation across channels (rows, C) -------------------------------------

@njit(cache=True, nogil=True)
def lrn_forward(x, out, before, after, alpha_n, beta, k):
    """out = x · (k + alpha_n · Σ x² over channels c − before … c + after)^−beta."""
    C = x.shape[-1]
    x = x.reshape((x.size // C, C))
    out = out.reshape((out.size // C, C))
    for r in range(x.shape[0]):
        for c in range(C):
            s = 0.0
            for j in range(max(c - before, 0), min(c + after + 1, C)):
                s += np.float64(x[r, j]) * x[r, j]
            out[r, c] = x[r, c] * (k + alpha_n * s) ** -beta


@njit(cache=True, nogil=True)
def lrn_backward(x, g, out, work, before, after, alpha_n, beta, k):
    """dx = g·b^−β − 2·alpha_n·β · x · Σ over the windows holding x of g·x·b^(−β−1), where
    b = k + alpha_n·Σx²; work (2, C) holds a row's b^−β and g·x·b^(−β−1)."""
    C = x.shape[-1]
    x = x.reshape((x.size // C, C))
    g = g.reshape((g.size // C, C))
    out = out.reshape((out.size // C, C))
    for r in range(x.shape[0]):
        for c in range(C):
            s = 0.0
            for j in range(max(c - before, 0), min(c + after + 1, C)):
                s += np.float64(x[r, j]) * x[r, j]
            base = k + alpha_n * s
            scaled = base ** -beta
            work[0, c] = scaled
            work[1, c] = g[r, c] * x[r, c] * scaled / base
        # Channel c lies in channel j's window when j − after ≤ c ≤ j + before.
        for c in range(C):
            s = 0.0
            for j in range(max(c - after, 0), min(c + before + 1, C)):
                s += work[1, j]
            out[r, c] = g[r, c] * work[0, c] - 2.0 * alpha_n * beta * x[r, c] * s
