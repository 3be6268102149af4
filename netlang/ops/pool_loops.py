"""Loop nests of the pooling kernels, as plain Python: compiled by netlang.runtime.cnn.

The pooling templates (netlang/ops/pool.py) emit calls to these, one compiled function per
loop nest shared by every model (see netlang/ops/conv_loops.py for why).  Windows are
clipped to the input: padding never wins a max nor adds to a sum.  Images are seen as
(pixels, C) matrices, so the innermost loop runs over the contiguous channels with a plain
range index.
"""


def clipped_window(o, s, k, pad, size):
    """(start, stop): the input cells of output position o's window that lie inside the input."""
    start = o * s - pad
    return max(start, 0), min(start + k, size)


def average_count(o, s, k, pad_before, pad_after, size, include_pad):
    """The cells along one axis that output position o's mean divides by: its window clipped to
    the padded input (include_pad, PyTorch's count_include_pad), else to the input."""
    start = o * s - pad_before
    if include_pad:
        return min(start + k, size + pad_after) - start
    return min(start + k, size) - max(start, 0)


def maxpool_forward(x, out, N, H, W, C, Ho, Wo, kh, kw, sh, sw, pt, pl):
    """out ← the maximum of each window, per channel."""
    x = x.reshape((x.size // C, C))
    out = out.reshape((out.size // C, C))
    for n in range(N):
        for oh in range(Ho):
            h0, h1 = clipped_window(oh, sh, kh, pt, H)
            for ow in range(Wo):
                w0, w1 = clipped_window(ow, sw, kw, pl, W)
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
            h0, h1 = clipped_window(oh, sh, kh, pt, H)
            for ow in range(Wo):
                w0, w1 = clipped_window(ow, sw, kw, pl, W)
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


def avgpool_forward(x, out, N, H, W, C, Ho, Wo, kh, kw, sh, sw, pt, pb, pl, pr, include_pad):
    """Window means, divided as PyTorch does (count_include_pad: by the window clipped to the
    padded input, else by its cells inside the input)."""
    x = x.reshape((x.size // C, C))
    out = out.reshape((out.size // C, C))
    for n in range(N):
        for oh in range(Ho):
            h0, h1 = clipped_window(oh, sh, kh, pt, H)
            nh = average_count(oh, sh, kh, pt, pb, H, include_pad)
            for ow in range(Wo):
                w0, w1 = clipped_window(ow, sw, kw, pl, W)
                nw = average_count(ow, sw, kw, pl, pr, W, include_pad)
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


def avgpool_backward(g, dx, N, H, W, C, Ho, Wo, kh, kw, sh, sw, pt, pb, pl, pr, include_pad):
    """dx ← each window's gradient shared out over its cells inside the input, by the forward's
    divisor."""
    g = g.reshape((g.size // C, C))
    dx = dx.reshape((dx.size // C, C))
    for n in range(N):
        for r in range(n * H * W, (n + 1) * H * W):
            for c in range(C):
                dx[r, c] = 0
        for oh in range(Ho):
            h0, h1 = clipped_window(oh, sh, kh, pt, H)
            nh = average_count(oh, sh, kh, pt, pb, H, include_pad)
            for ow in range(Wo):
                w0, w1 = clipped_window(ow, sw, kw, pl, W)
                nw = average_count(ow, sw, kw, pl, pr, W, include_pad)
                o = (n * Ho + oh) * Wo + ow
                inv = dx.dtype.type(1.0) / dx.dtype.type(nh * nw)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        r = (n * H + ih) * W + iw
                        for c in range(C):
                            dx[r, c] += g[o, c] * inv


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


def global_avgpool_backward(g, dx, N, P, C):
    """dx (N, P, C) ← g (N, C) shared equally over the P positions."""
    g = g.reshape((g.size // C, C))
    dx = dx.reshape((dx.size // C, C))
    size = dx.dtype.type(P)
    for n in range(N):
        for r in range(n * P, (n + 1) * P):
            for c in range(C):
                dx[r, c] = g[n, c] / size
