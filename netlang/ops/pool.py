"""Max and average pooling, and global average pooling, channels-last."""

from netlang.ops.conv import conv_output_size, resolve_padding
from netlang.ops.registry import define_op
from netlang.ops.schema import Arg, BOOL, PAIR, PADDING


def pool_output_size(size, kernel, stride, pad_before, pad_after, ceil_mode):
    """PyTorch's rule: in ceil mode the last window must start inside the input or left padding."""
    pad_total = pad_before + pad_after
    if not ceil_mode:
        return conv_output_size(size, kernel, stride, 1, pad_total)
    out = -(-(size + pad_total - kernel) // stride) + 1
    if (out - 1) * stride >= size + pad_before:
        out -= 1
    return out


def _pool_args(average: bool):
    args = [
        Arg("kernel", PAIR, min=1, doc="window size: k or (kh, kw)"),
        Arg("stride", PAIR, None, min=1, doc="defaults to the window size"),
        Arg("padding", PADDING, "valid", min=0),
        Arg("ceil_mode", BOOL, False, doc="round the output size up instead of down"),
    ]
    if average:
        args.append(Arg("count_include_pad", BOOL, True, doc="divide by the full window, padding included"))
    return args


def _pool_shape(ctx, a):
    ctx.need_float(0)
    ctx.need_rank(0, (4,), "an (H, W, C) input per example")
    x = ctx.inputs[0]
    kernel = a["kernel"]
    stride = a["stride"] or kernel
    pads = resolve_padding(x.shape[1:3], kernel, stride, (1, 1), a["padding"])
    out = []
    for axis, (size, k, s, (p0, p1)) in enumerate(zip(x.shape[1:3], kernel, stride, pads)):
        if max(p0, p1) > k // 2:
            ctx.fail(f"`{ctx.op.name}` padding {max(p0, p1)} is more than half the window {k}")
        n = pool_output_size(size, k, s, p0, p1, a["ceil_mode"])
        if n < 1:
            ctx.fail(f"`{ctx.op.name}` window {kernel[0]}×{kernel[1]} does not fit the "
                     f"{'height' if axis == 0 else 'width'} of {ctx.describe(0)}")
        out.append(n)
    return x.with_shape((x.shape[0], out[0], out[1], x.shape[3]))


maxpool = define_op("maxpool", family="pool", args=_pool_args(False),
                    doc="Maximum over each window, per channel.")
maxpool.shape(_pool_shape)
avgpool = define_op("avgpool", family="pool", args=_pool_args(True),
                    doc="Mean over each window, per channel.")
avgpool.shape(_pool_shape)

global_avgpool = define_op("global_avgpool", family="pool",
                           doc="Mean over height and width: (H, W, C) → (C,).")


@global_avgpool.shape
def _global_avgpool_shape(ctx, a):
    ctx.need_float(0)
    ctx.need_rank(0, (4,), "an (H, W, C) input per example")
    x = ctx.inputs[0]
    return x.with_shape((x.shape[0], x.shape[3]))


# ---- forward and backward ------------------------------------------------------------------
#
# PyTorch's semantics throughout.  The input is padded (−inf for max, 0 for average) out to
# the last window, which in ceil mode may hang past the padding; such cells never win a max
# and never count towards an average.  An average divides by the window clipped to the padded
# input (count_include_pad) or to the input itself (otherwise).  Gradients are scattered back
# one kernel offset at a time (a loop over the window, never over pixels).

import numpy as np  # noqa: E402

from netlang.ops.conv import scatter_windows, windows  # noqa: E402
from netlang.ops.registry import define_internal, same_type_as  # noqa: E402


def pool_geometry(in_hw, a):
    """(kernel, stride, pads, out_hw, extended pads reaching the last window) of a pool."""
    kernel = tuple(a["kernel"])
    stride = tuple(a["stride"] or kernel)
    pads = resolve_padding(in_hw, kernel, stride, (1, 1), a["padding"])
    out_hw = tuple(pool_output_size(size, k, s, p0, p1, a["ceil_mode"])
                   for size, k, s, (p0, p1) in zip(in_hw, kernel, stride, pads))
    reach = tuple((p0, max(p1, (o - 1) * s + k - size - p0))
                  for size, k, s, o, (p0, p1) in zip(in_hw, kernel, stride, out_hw, pads))
    return kernel, stride, pads, out_hw, reach


def _pool_windows(x, a, fill):
    kernel, stride, pads, out_hw, reach = pool_geometry(x.shape[1:3], a)
    xp = np.pad(x, ((0, 0),) + reach + ((0, 0),), constant_values=fill)
    return windows(xp, kernel, stride, (1, 1), out_hw)


def avgpool_divisor(in_hw, a, dtype):
    """(OH, OW, 1) window sizes PyTorch divides by (separable: rows × columns)."""
    kernel, stride, pads, out_hw, _ = pool_geometry(in_hw, a)
    counts = []
    for size, k, s, o, (p0, p1) in zip(in_hw, kernel, stride, out_hw, pads):
        start = np.arange(o) * s - p0
        end = np.minimum(start + k, size + p1)
        if not a["count_include_pad"]:
            start, end = np.maximum(start, 0), np.minimum(end, size)
        counts.append(end - start)
    return np.multiply.outer(counts[0], counts[1]).astype(dtype)[:, :, None]


def _scatter_pool(cols, x_hw, a):
    """Adds per-window values cols (N, OH, OW, kh, kw, C) back onto the input (N, H, W, C)."""
    kernel, stride, pads, out_hw, reach = pool_geometry(x_hw, a)
    (t, b), (l, r) = reach
    full = scatter_windows(cols, (x_hw[0] + t + b, x_hw[1] + l + r), stride, (1, 1))
    return np.ascontiguousarray(full[:, t:t + x_hw[0], l:l + x_hw[1], :])


maxpool.forward(lambda ins, a, ctx: _pool_windows(ins[0], a, -np.inf).max(axis=(3, 4)))

maxpool_grad = define_internal(
    "maxpool_grad", family="pool", arity=3, shape=same_type_as(0), args=maxpool.args,
    doc="From (x, y, g): routes each window's gradient to the first position (in row-major "
        "order, as PyTorch) where x equals the window's maximum y; overlapping windows add.")


@maxpool_grad.forward
def _maxpool_grad(ins, a, ctx):
    x, y, g = ins
    kernel, stride, pads, out_hw, reach = pool_geometry(x.shape[1:3], a)
    xp = np.pad(x, ((0, 0),) + reach + ((0, 0),), constant_values=-np.inf)
    win = windows(xp, kernel, stride, (1, 1), out_hw)
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    full = np.zeros(xp.shape, dtype=g.dtype)
    unclaimed = np.ones(y.shape, dtype=bool)
    for i in range(kh):
        for j in range(kw):
            hit = win[:, :, :, i, j, :] == y
            hit &= unclaimed
            unclaimed &= ~hit
            full[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :] += np.where(hit, g, 0)
    (t, _), (l, _) = reach
    return np.ascontiguousarray(full[:, t:t + x.shape[1], l:l + x.shape[2], :])


maxpool.vjp(lambda b, node, g: [b.add("maxpool_grad", [b.operands(node)[0], node, g], **b.attrs(node))])


@avgpool.forward
def _avgpool_forward(ins, a, ctx):
    x = ins[0]
    total = _pool_windows(x, a, 0.0).sum(axis=(3, 4))
    return total / avgpool_divisor(x.shape[1:3], a, x.dtype)


def _avgpool_grad_shape(ctx, a):
    g = ctx.inputs[0]
    return g.with_shape((g.shape[0],) + tuple(a["in_hw"]) + (g.shape[3],))


avgpool_grad = define_internal(
    "avgpool_grad", family="pool", shape=_avgpool_grad_shape, args=avgpool.args,
    doc="Spreads each window's gradient, over its divisor, across the window; attrs as avgpool "
        "plus the input's in_hw.")


@avgpool_grad.forward
def _avgpool_grad(ins, a, ctx):
    g = ins[0]
    in_hw = tuple(a["in_hw"])
    share = g / avgpool_divisor(in_hw, a, g.dtype)
    kh, kw = a["kernel"]
    cols = np.broadcast_to(share[:, :, :, None, None, :], share.shape[:3] + (kh, kw, share.shape[3]))
    return _scatter_pool(cols, in_hw, a)


def _input_hw(b, node):
    return tuple(b.type(b.operands(node)[0]).shape[1:3])


avgpool.vjp(lambda b, node, g: [b.add("avgpool_grad", [g], in_hw=_input_hw(b, node), **b.attrs(node))])

global_avgpool.forward(lambda ins, a, ctx: ins[0].mean(axis=(1, 2)))


def _global_avgpool_grad_shape(ctx, a):
    g = ctx.inputs[0]
    return g.with_shape((g.shape[0],) + tuple(a["in_hw"]) + (g.shape[1],))


global_avgpool_grad = define_internal(
    "global_avgpool_grad", family="pool", shape=_global_avgpool_grad_shape,
    doc="g / (H·W) at every position of the (H, W) = in_hw input.")


@global_avgpool_grad.forward
def _global_avgpool_grad(ins, a, ctx):
    g = ins[0]
    h, w = a["in_hw"]
    share = g / g.dtype.type(h * w)
    return np.ascontiguousarray(np.broadcast_to(share[:, None, None, :], (g.shape[0], h, w, g.shape[1])))


global_avgpool.vjp(lambda b, node, g: [b.add("global_avgpool_grad", [g], in_hw=_input_hw(b, node))])



# ---- CPU kernels ------------------------------------------------------------------------------
# Calls into netlang.runtime.cnn's loop nests, which loop over output pixels and the window's
# cells inside the input, innermost over the contiguous channels.

def _pool_args(k, x_type, with_after=False) -> str:
    """N and the geometry (H, W, C, Ho, Wo, kh, kw, sh, sw, pt[, pb], pl[, pr]) as arguments."""
    H, W, C = x_type.shape[1:4]
    kernel, stride, pads, out_hw, _ = pool_geometry((H, W), k.attrs)
    (pt, pb), (pl, pr) = pads
    tail = [pt, pb, pl, pr] if with_after else [pt, pl]
    return ", ".join(str(v) for v in [H, W, C, out_hw[0], out_hw[1], kernel[0], kernel[1],
                                      stride[0], stride[1]] + tail)


def _maxpool_kernel(k):
    x = k.ins[0]
    k.line(f"{k.helper('maxpool_forward')}({x}, {k.out}, {x}.shape[0], "
           f"{_pool_args(k, k.in_types[0])})")


def _maxpool_grad_kernel(k):
    x, y, g = k.ins
    k.line(f"{k.helper('maxpool_backward')}({x}, {y}, {g}, {k.out}, {x}.shape[0], "
           f"{_pool_args(k, k.in_types[0])})")


def _avgpool_kernel(k):
    x = k.ins[0]
    k.line(f"{k.helper('avgpool_forward')}({x}, {k.out}, {x}.shape[0], "
           f"{_pool_args(k, k.in_types[0], True)}, {k.attrs['count_include_pad']})")


def _avgpool_grad_kernel(k):
    g = k.ins[0]
    k.line(f"{k.helper('avgpool_backward')}({g}, {k.out}, {g}.shape[0], "
           f"{_pool_args(k, k.out_type, True)}, {k.attrs['count_include_pad']})")


def _global_avgpool_kernel(k):
    x = k.ins[0]
    H, W, C = k.in_types[0].shape[1:4]
    k.line(f"{k.helper('global_avgpool_forward')}({x}, {k.out}, {x}.shape[0], "
           f"{H * W}, {C})")


def _global_avgpool_grad_kernel(k):
    g = k.ins[0]
    H, W, C = k.out_type.shape[1:4]
    k.line(f"{k.helper('global_avgpool_backward')}({g}, {k.out}, {g}.shape[0], "
           f"{H * W}, {C})")


maxpool.cpu_kernel = _maxpool_kernel
maxpool_grad.cpu_kernel = _maxpool_grad_kernel
avgpool.cpu_kernel = _avgpool_kernel
avgpool_grad.cpu_kernel = _avgpool_grad_kernel
global_avgpool.cpu_kernel = _global_avgpool_kernel
global_avgpool_grad.cpu_kernel = _global_avgpool_grad_kernel
