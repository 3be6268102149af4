"""Max and average pooling, and global average pooling, channels-last."""

import numpy as np

from netlang.ops.conv import conv_output_size, resolve_padding, scatter_windows, windows
from netlang.ops.onnx_forms import channels_first_perm, laid_out, pair, read_one, read_padding
from netlang.ops.registry import define_internal, define_op, reads_onnx, same_type_as
from netlang.ops.schema import Arg, BOOL, PADDING, PAIR


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
maxpool.document(
    shape="`(H, W, C)` → `(H', W', C)`; without `ceil_mode`, "
          "`H' = floor((H + pad_top + pad_bottom − kernel) / stride) + 1`; with it the "
          "division rounds up, except that the last window must start inside the input or "
          "its top/left padding (PyTorch's rule). Padding may be at most half the window.",
    params=None,
    example="input x: [112, 112, 64]\n"
            "output y = x -> maxpool(3, stride = 2, ceil_mode = true)   # (56, 56, 64)")
maxpool.shape(_pool_shape)
avgpool = define_op("avgpool", family="pool", args=_pool_args(True),
                    doc="Mean over each window, per channel.")
avgpool.document(
    shape="as `maxpool`.",
    params=None,
    example="input x: [8, 8, 16]\n"
            "output y = x -> avgpool(2, padding = 1, count_include_pad = false)   # (5, 5, 16)")
avgpool.shape(_pool_shape)

global_avgpool = define_op("global_avgpool", family="pool",
                           doc="Mean over height and width: (H, W, C) → (C,).")
global_avgpool.document(
    shape="`(H, W, C)` → `(C,)`.",
    params=None,
    example="input x: [7, 7, 512]\noutput y = x -> global_avgpool   # (512,)")


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
# Calls into the loop nests of netlang/ops/pool_loops.py (compiled by netlang.runtime.cnn),
# which loop over output pixels and the window's cells inside the input, innermost over the
# contiguous channels.

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


# ---- CUDA kernels ------------------------------------------------------------------------------
# One thread per output element (forward) and a gather per input element (backward: each input
# cell sums the gradients of the windows holding it, so no two threads write one cell and no
# atomics are needed).  The windows and divisors are the CPU loops' (ops/pool_loops.py):
# clipped to the input; a max's gradient goes to the window's first cell holding its maximum.

def _cuda_index(k, index, H, W, C) -> None:
    """ex, ih (row), iw (column), ch from a flat channels-last index with (H, W, C) per example."""
    k.line(f"ch = {index} % {C}")
    k.line(f"px = {index} // {C}")
    k.line(f"iw = px % {W}")
    k.line(f"ih = px // {W} % {H}")
    k.line(f"ex = px // {W * H}")


def _cuda_window(k, axis, o, s, kernel, pad, pad_after, size, include_pad=True) -> None:
    """`{axis}0`, `{axis}1` (the window clipped to the input) and `n{axis}` (its divisor)."""
    k.line(f"{axis}s = {o} * {s} - {pad}")
    k.line(f"{axis}0 = max({axis}s, 0)")
    k.line(f"{axis}1 = min({axis}s + {kernel}, {size})")
    if include_pad:
        k.line(f"n{axis} = min({axis}s + {kernel}, {size + pad_after}) - {axis}s")
    else:
        k.line(f"n{axis} = {axis}1 - {axis}0")


def _cuda_windows_holding(k, axis, i, s, kernel, pad, out):
    """A block over the outputs `o{axis}` whose windows hold input position `i` on one axis."""
    k.line(f"{axis}lo = max(({i} + {pad} - {kernel}) // {s} + 1, 0)")
    k.line(f"{axis}hi = min(({i} + {pad}) // {s} + 1, {out})")
    return k.block(f"for o{axis} in range({axis}lo, {axis}hi):")


def _pool_geometry_of(k, x_type):
    H, W, C = x_type.shape[1:4]
    kernel, stride, pads, out_hw, _ = pool_geometry((H, W), k.attrs)
    return H, W, C, kernel, stride, pads, out_hw


def _maxpool_cuda_kernel(k):
    H, W, C, (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (Ho, Wo) = _pool_geometry_of(k, k.in_types[0])
    xf, of = k.flat(k.ins[0]), k.flat(k.out)
    with k.parallel(f"{of}.size", "i"):
        _cuda_index(k, "i", Ho, Wo, C)
        _cuda_window(k, "h", "ih", sh, kh, pt, pb, H)
        _cuda_window(k, "w", "iw", sw, kw, pl, pr, W)
        k.line(f"best = {xf}[((ex * {H} + h0) * {W} + w0) * {C} + ch]")
        with k.block("for fh in range(h0, h1):"):
            with k.block("for fw in range(w0, w1):"):
                k.line(f"v = {xf}[((ex * {H} + fh) * {W} + fw) * {C} + ch]")
                k.line("best = v if v > best else best")
        k.line(f"{of}[i] = best")


def _maxpool_grad_cuda_kernel(k):
    H, W, C, (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (Ho, Wo) = _pool_geometry_of(k, k.in_types[0])
    xf, yf, gf = (k.flat(v) for v in k.ins)
    of = k.flat(k.out)
    with k.parallel(f"{of}.size", "i"):
        _cuda_index(k, "i", H, W, C)
        k.line("total = F(0.0)")
        with _cuda_windows_holding(k, "h", "ih", sh, kh, pt, Ho):
            _cuda_window(k, "h", "oh", sh, kh, pt, pb, H)
            with _cuda_windows_holding(k, "w", "iw", sw, kw, pl, Wo):
                _cuda_window(k, "w", "ow", sw, kw, pl, pr, W)
                k.line(f"o = ((ex * {Ho} + oh) * {Wo} + ow) * {C} + ch")
                k.line(f"m = {yf}[o]")
                # The window's first cell (row-major) holding the maximum takes its gradient.
                k.line("found = False")
                k.line("mine = False")
                with k.block("for fh in range(h0, h1):"):
                    with k.block("for fw in range(w0, w1):"):
                        with k.block(f"if not found and {xf}[((ex * {H} + fh) * {W} + fw) * {C} "
                                     f"+ ch] == m:"):
                            k.line("found = True")
                            k.line("mine = fh == ih and fw == iw")
                with k.block("if mine:"):
                    k.line(f"total += {gf}[o]")
        k.line(f"{of}[i] = total")


def _avgpool_cuda_kernel(k):
    H, W, C, (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (Ho, Wo) = _pool_geometry_of(k, k.in_types[0])
    include = k.attrs["count_include_pad"]
    xf, of = k.flat(k.ins[0]), k.flat(k.out)
    with k.parallel(f"{of}.size", "i"):
        _cuda_index(k, "i", Ho, Wo, C)
        _cuda_window(k, "h", "ih", sh, kh, pt, pb, H, include)
        _cuda_window(k, "w", "iw", sw, kw, pl, pr, W, include)
        k.line("total = F(0.0)")
        with k.block("for fh in range(h0, h1):"):
            with k.block("for fw in range(w0, w1):"):
                k.line(f"total += {xf}[((ex * {H} + fh) * {W} + fw) * {C} + ch]")
        k.line(f"{of}[i] = total * (F(1.0) / F(nh * nw))")


def _avgpool_grad_cuda_kernel(k):
    H, W, C, (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (Ho, Wo) = _pool_geometry_of(k, k.out_type)
    include = k.attrs["count_include_pad"]
    gf, of = k.flat(k.ins[0]), k.flat(k.out)
    with k.parallel(f"{of}.size", "i"):
        _cuda_index(k, "i", H, W, C)
        k.line("total = F(0.0)")
        with _cuda_windows_holding(k, "h", "ih", sh, kh, pt, Ho):
            _cuda_window(k, "h", "oh", sh, kh, pt, pb, H, include)
            with _cuda_windows_holding(k, "w", "iw", sw, kw, pl, Wo):
                _cuda_window(k, "w", "ow", sw, kw, pl, pr, W, include)
                k.line(f"total += {gf}[((ex * {Ho} + oh) * {Wo} + ow) * {C} + ch] * "
                       f"(F(1.0) / F(nh * nw))")
        k.line(f"{of}[i] = total")


def _global_avgpool_cuda_kernel(k):
    H, W, C = k.in_types[0].shape[1:4]
    xf, of = k.flat(k.ins[0]), k.flat(k.out)
    with k.parallel(f"{of}.size", "i"):   # one thread per (example, channel)
        k.line(f"base = i // {C} * {H * W * C} + i % {C}")
        k.line("total = F(0.0)")
        with k.block(f"for p in range({H * W}):"):
            k.line(f"total += {xf}[base + p * {C}]")
        k.line(f"{of}[i] = total * (F(1.0) / F({H * W}))")


def _global_avgpool_grad_cuda_kernel(k):
    H, W, C = k.out_type.shape[1:4]
    gf, of = k.flat(k.ins[0]), k.flat(k.out)
    with k.parallel(f"{of}.size", "i"):
        k.line(f"{of}[i] = {gf}[i // {H * W * C} * {C} + i % {C}] / F({H * W})")


maxpool.cuda_kernel = _maxpool_cuda_kernel
maxpool_grad.cuda_kernel = _maxpool_grad_cuda_kernel
avgpool.cuda_kernel = _avgpool_cuda_kernel
avgpool_grad.cuda_kernel = _avgpool_grad_cuda_kernel
global_avgpool.cuda_kernel = _global_avgpool_cuda_kernel
global_avgpool_grad.cuda_kernel = _global_avgpool_grad_cuda_kernel


# ---- ONNX export: pools read and write channels first ----------------------------------------


def _onnx_pool(op_type):
    def rule(step):
        a = step.attrs
        kernel, stride, pads, _, reach = pool_geometry(step.in_types[0].shape[1:3], a)
        extra, ceil_mode = {}, 0
        if op_type == "AveragePool":
            extra["count_include_pad"] = int(a["count_include_pad"])
        if op_type == "AveragePool" and a["count_include_pad"] and reach != pads:
            # Padding the input out to the last window would count the extension in the
            # divisor: let ONNX's ceil mode place the last window instead (PyTorch's rule).
            ceil_mode = 1
        else:
            # Padding out to the last window (with -inf for max, uncounted for the average)
            # places every window where the reference does, whatever ONNX's ceil rule.
            pads = reach
        (top, bottom), (left, right) = pads
        y = step.node(op_type, [step.channels_first(0)], kernel_shape=list(kernel),
                      strides=list(stride), pads=[top, left, bottom, right],
                      ceil_mode=ceil_mode, **extra)
        return laid_out(y, channels_first_perm(4))
    return rule


def _onnx_global_avgpool(step):
    pooled = step.node("GlobalAveragePool", [step.channels_first(0)])   # (N, C, 1, 1)
    return step.node("Flatten", [pooled], axis=1)


maxpool.onnx_rule = _onnx_pool("MaxPool")
avgpool.onnx_rule = _onnx_pool("AveragePool")
global_avgpool.onnx_rule = _onnx_global_avgpool


# ---- ONNX import: pools, channels first --------------------------------------------------------


def _read_pool(op):
    def reader(step):
        if step.rank(0) != 4:
            step.refuse("netlang pools images only, (N, C, H, W) in ONNX")
        if len(step.view.outputs) > 1 and step.is_read(step.view.outputs[1]):
            step.refuse("its indices output is read")
        read_one(step, "dilations", [1, 1], "netlang's pools have no dilation")
        kernel = pair(step.attr("kernel_shape"))
        stride = pair(step.attr("strides", [1, 1]))
        args = {"kernel": kernel, "stride": None if stride == kernel else stride,
                "padding": read_padding(step), "ceil_mode": bool(step.attr("ceil_mode", 0))}
        if op == "avgpool":
            args["count_include_pad"] = bool(step.attr("count_include_pad", 0))
        layer = step.layer(op, args, [step.input(0, channels_first_perm(4))])
        return step.result(layer, channels_first_perm(4))
    return reader


@reads_onnx("GlobalAveragePool", channels_first=True)
def _read_global_avgpool(step):
    if step.rank(0) != 4:
        step.refuse("netlang's global_avgpool reads images only, (N, C, H, W) in ONNX")
    layer = step.layer("global_avgpool", {}, [step.input(0, channels_first_perm(4))])
    return step.result(layer, unit_axes=2)   # ONNX keeps (N, C, 1, 1); netlang's is (N, C)


reads_onnx("MaxPool", channels_first=True)(_read_pool("maxpool"))
reads_onnx("AveragePool", channels_first=True)(_read_pool("avgpool"))
