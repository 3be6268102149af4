"""2-D convolutions, channels-last (N, H, W, C), weights in PyTorch's layout."""

import math

from netlang.ops.registry import ParamSpec, define_op
from netlang.ops.schema import Arg, BOOL, INT, LAYER, PAIR, PADDING


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pad_total: int) -> int:
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def resolve_padding(in_hw, kernel, stride, dilation, padding):
    """Explicit ((top, bottom), (left, right)) padding for a conv or pool.

    `same` pads so the output is ceil(input / stride), extra padding at the
    bottom/right (TensorFlow's rule, which PyTorch's `same` matches at stride 1).
    """
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        pads = []
        for size, k, s, d in zip(in_hw, kernel, stride, dilation):
            out = -(-size // s)
            total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    return padding


def _spatial_out(ctx, a, kernel_key="kernel"):
    x = ctx.inputs[0]
    kernel, stride, dilation = a[kernel_key], a["stride"], a.get("dilation", (1, 1))
    pads = resolve_padding(x.shape[1:3], kernel, stride, dilation, a["padding"])
    out = []
    for axis, (size, k, s, d, (p0, p1)) in enumerate(zip(x.shape[1:3], kernel, stride, dilation, pads)):
        n = conv_output_size(size, k, s, d, p0 + p1)
        if n < 1:
            ctx.fail(f"`{ctx.op.name}` with a {kernel[0]}×{kernel[1]} kernel (dilation {d}) does not fit "
                     f"the {'height' if axis == 0 else 'width'} {size} of {ctx.describe(0)}")
        out.append(n)
    return tuple(out)


conv2d = define_op(
    "conv2d", family="conv",
    args=[
        Arg("filters", INT, min=1, doc="output channels"),
        Arg("kernel", PAIR, min=1, doc="kernel size: k or (kh, kw)"),
        Arg("stride", PAIR, 1, min=1),
        Arg("padding", PADDING, "valid", min=0,
            doc="`valid` (none), `same`, p, (ph, pw) or ((top, bottom), (left, right))"),
        Arg("dilation", PAIR, 1, min=1),
        Arg("groups", INT, 1, min=1, doc="channel groups; groups = input channels is depthwise"),
        Arg("bias", BOOL, True),
        Arg("share", LAYER, None, doc="use this layer's parameters (weight sharing)"),
    ],
    doc="Cross-correlation over height and width of an (H, W, C) input. Weight (filters, C/groups, kh, kw).")


@conv2d.shape
def _conv2d_shape(ctx, a):
    ctx.need_float(0)
    ctx.need_rank(0, (4,), "an (H, W, C) input per example")
    x, weight = ctx.inputs[0], ctx.inputs[1]
    channels, groups = x.shape[3], a["groups"]
    if channels % groups or a["filters"] % groups:
        ctx.fail(f"`conv2d` with {groups} groups needs input channels and filters divisible by "
                 f"{groups}; input is {ctx.describe(0)}, filters {a['filters']}")
    expected = (a["filters"], channels // groups) + tuple(a["kernel"])
    if weight.shape != expected:
        ctx.fail(f"`conv2d` weight {ctx.describe(1)} does not fit input {ctx.describe(0)}: "
                 f"expected {expected}")
    h, w = _spatial_out(ctx, a)
    return x.with_shape((x.shape[0], h, w, a["filters"]))


@conv2d.params
def _conv2d_params(inputs, a):
    cin = inputs[0].shape[3] // a["groups"]
    kh, kw = a["kernel"]
    fan_in, fan_out = cin * kh * kw, a["filters"] // a["groups"] * kh * kw
    specs = [ParamSpec("weight", (a["filters"], cin, kh, kw), "he_uniform", fan_in, fan_out)]
    if a["bias"]:
        specs.append(ParamSpec("bias", (a["filters"],), "zeros", fan_in, fan_out))
    return specs


@conv2d.macs
def _conv2d_macs(inputs, out, a):
    kh, kw = a["kernel"]
    return out.shape[1] * out.shape[2] * a["filters"] * (inputs[0].shape[3] // a["groups"]) * kh * kw


conv_transpose2d = define_op(
    "conv_transpose2d", family="conv",
    args=[
        Arg("filters", INT, min=1, doc="output channels"),
        Arg("kernel", PAIR, min=1),
        Arg("stride", PAIR, 1, min=1),
        Arg("padding", PAIR, 0, min=0, doc="rows/columns removed from each border of the full output"),
        Arg("output_padding", PAIR, 0, min=0, doc="extra rows/columns added at the bottom/right"),
        Arg("dilation", PAIR, 1, min=1),
        Arg("groups", INT, 1, min=1),
        Arg("bias", BOOL, True),
        Arg("share", LAYER, None, doc="use this layer's parameters (weight sharing)"),
    ],
    doc="Transposed convolution (the gradient of conv2d with respect to its input; "
        "'deconvolution'): out = (in - 1)·stride - 2·padding + dilation·(kernel - 1) + output_padding + 1. "
        "Weight (C_in, filters/groups, kh, kw) as in PyTorch.")


@conv_transpose2d.shape
def _conv_transpose2d_shape(ctx, a):
    ctx.need_float(0)
    ctx.need_rank(0, (4,), "an (H, W, C) input per example")
    x, weight = ctx.inputs[0], ctx.inputs[1]
    channels, groups = x.shape[3], a["groups"]
    if channels % groups or a["filters"] % groups:
        ctx.fail(f"`conv_transpose2d` with {groups} groups needs input channels and filters "
                 f"divisible by {groups}; input is {ctx.describe(0)}")
    expected = (channels, a["filters"] // groups) + tuple(a["kernel"])
    if weight.shape != expected:
        ctx.fail(f"`conv_transpose2d` weight {ctx.describe(1)} does not fit input {ctx.describe(0)}")
    out = []
    for size, k, s, p, op, d in zip(x.shape[1:3], a["kernel"], a["stride"], a["padding"],
                                    a["output_padding"], a["dilation"]):
        if op >= max(s, d):
            ctx.fail(f"`conv_transpose2d` output_padding {op} must be smaller than stride or dilation")
        n = (size - 1) * s - 2 * p + d * (k - 1) + op + 1
        if n < 1:
            ctx.fail(f"`conv_transpose2d` padding {p} leaves no output for {ctx.describe(0)}")
        out.append(n)
    return x.with_shape((x.shape[0], out[0], out[1], a["filters"]))


@conv_transpose2d.params
def _conv_transpose2d_params(inputs, a):
    cin = inputs[0].shape[3]
    kh, kw = a["kernel"]
    per_group = a["filters"] // a["groups"]
    fan_in, fan_out = per_group * kh * kw, cin // a["groups"] * kh * kw
    specs = [ParamSpec("weight", (cin, per_group, kh, kw), "he_uniform", fan_in, fan_out)]
    if a["bias"]:
        specs.append(ParamSpec("bias", (a["filters"],), "zeros", fan_in, fan_out))
    return specs


@conv_transpose2d.macs
def _conv_transpose2d_macs(inputs, out, a):
    x = inputs[0]
    kh, kw = a["kernel"]
    return x.shape[1] * x.shape[2] * x.shape[3] * (a["filters"] // a["groups"]) * kh * kw


def spatial_output(ctx, a):
    """Output (H, W) of a windowed op (shared with pooling)."""
    return _spatial_out(ctx, a)


def spatial_macs(out, kernel) -> int:
    return math.prod(out.shape[1:]) * math.prod(kernel)
