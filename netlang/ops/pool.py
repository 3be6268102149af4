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
