"""2-D convolutions, channels-last (N, H, W, C), weights in PyTorch's layout."""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from netlang.ops.init import init_args
from netlang.ops.onnx_forms import channels_first_perm, laid_out, pair, read_padding
from netlang.ops.registry import ParamSpec, define_internal, define_op, reads_onnx
from netlang.ops.schema import Arg, BOOL, INT, LAYER, PADDING, PAIR


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, pad_total: int) -> int:
    """Output length along one axis of a convolution or pool.

    `pad_total` is both sides' padding together; a last window that would overrun the padded
    input is dropped.
    """
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
        *init_args("he_uniform"),
    ],
    doc="Cross-correlation over height and width of an (H, W, C) input. Weight (filters, C/groups, kh, kw).")
conv2d.document(
    shape="`(H, W, C)` → `(H', W', filters)`, with "
          "`H' = floor((H + pad_top + pad_bottom − dilation·(kh − 1) − 1) / stride) + 1` "
          "(likewise W'). `same` pads so that `H' = ceil(H / stride)`, any odd padding "
          "going to the bottom/right. `C` and `filters` must be divisible by `groups`.",
    params="`weight` `(filters, C / groups, kh, kw)` (`init`, He uniform by default, with "
           "fans `C / groups · kh · kw` and `filters / groups · kh · kw`), `bias` `(filters,)` "
           "(zeros) unless `bias = false`.",
    example="input image: [32, 32, 3]\n"
            "output y = image -> conv2d(16, 3, padding = 1)             # (32, 32, 16)\n"
            "  -> conv2d(32, (3, 1), stride = 2, padding = \"same\")      # (16, 16, 32)\n"
            "  -> conv2d(32, 3, groups = 32, bias = false)            # depthwise: (14, 14, 32)")
# In evaluation, a batch norm after a convolution folds into its weight (axis 0: the filters)
# and bias.
conv2d.foldable_product = True


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
    specs = [ParamSpec("weight", (a["filters"], cin, kh, kw), a["init"], fan_in, fan_out,
                       a["gain"])]
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
        *init_args("he_uniform"),
    ],
    doc="Transposed convolution (the gradient of conv2d with respect to its input; "
        "'deconvolution'): out = (in - 1)·stride - 2·padding + dilation·(kernel - 1) + output_padding + 1. "
        "Weight (C_in, filters/groups, kh, kw) as in PyTorch.")
conv_transpose2d.document(
    shape="`(H, W, C)` → `(H', W', filters)` with "
          "`H' = (H − 1)·stride − 2·padding + dilation·(kh − 1) + output_padding + 1`. "
          "`output_padding` must be smaller than `stride` or `dilation`.",
    params="`weight` `(C, filters / groups, kh, kw)` (PyTorch's layout; `init`, He uniform by "
           "default, with fans `filters / groups · kh · kw` and `C / groups · kh · kw`), `bias` "
           "`(filters,)` (zeros) unless `bias = false`.",
    example="input code: [7, 7, 32]\n"
            "output up = code -> conv_transpose2d(16, 3, stride = 2, padding = 1, "
            "output_padding = 1)   # (14, 14, 16)")


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
    specs = [ParamSpec("weight", (cin, per_group, kh, kw), a["init"], fan_in, fan_out, a["gain"])]
    if a["bias"]:
        specs.append(ParamSpec("bias", (a["filters"],), "zeros", fan_in, fan_out))
    return specs


@conv_transpose2d.macs
def _conv_transpose2d_macs(inputs, out, a):
    x = inputs[0]
    kh, kw = a["kernel"]
    return x.shape[1] * x.shape[2] * x.shape[3] * (a["filters"] // a["groups"]) * kh * kw


# ---- forward and backward ------------------------------------------------------------------
#
# Three array functions carry every convolution, forward and backward:
#   conv2d_array             windows of the padded input (im2col) contracted with the weight
#   conv2d_grad_input_array  the weight contracted with g, scattered back window by window (col2im)
#   conv2d_grad_weight_array windows of the padded input contracted with g over batch and space
# A transposed convolution is the same three with the roles swapped: its forward is conv2d's
# input gradient, its input gradient a conv2d forward, its weight gradient conv2d's weight
# gradient with input and gradient exchanged.  Loops run over kernel offsets only, never pixels.


def pad_hw(x, pads, value=0.0):
    """Pads the two spatial axes of (N, H, W, C) by ((top, bottom), (left, right))."""
    (t, b), (l, r) = pads
    if not (t or b or l or r):
        return x
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value)


def windows(xp, kernel, stride, dilation, out_hw):
    """A view (N, OH, OW, kh, kw, C) of the first OH×OW windows of the padded input.

    Channels stay innermost, so copying the view (im2col) reads contiguous runs."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    view = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    view = view[:, :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw, :, ::dh, ::dw]
    return view.transpose(0, 1, 2, 4, 5, 3)


def scatter_windows(cols, size_hw, stride, dilation, fill=0.0):
    """The adjoint of `windows`: adds cols (N, OH, OW, kh, kw, C) back into an (N, Hp, Wp, C)
    array at each window's positions, one strided slice per kernel offset."""
    n, oh, ow, kh, kw, c = cols.shape
    (sh, sw), (dh, dw) = stride, dilation
    hp = max(size_hw[0], (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(size_hw[1], (ow - 1) * sw + (kw - 1) * dw + 1)
    out = np.full((n, hp, wp, c), fill, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw, :] \
                += cols[:, :, :, i, j, :]
    return out


def conv_pads(in_hw, a):
    """Explicit ((top, bottom), (left, right)) padding of a conv2d for an input of size in_hw."""
    return resolve_padding(in_hw, a["kernel"], a["stride"], a.get("dilation", (1, 1)), a["padding"])


def _weight_rows(w):
    """The weight (F, C/groups, kh, kw) as rows (F, kh·kw·C/groups), matching window columns."""
    return w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


def conv2d_array(x, w, stride, pads, dilation, groups):
    """Cross-correlation of x (N, H, W, C) with w (F, C/groups, kh, kw) → (N, OH, OW, F)."""
    f, cg, kh, kw = w.shape
    xp = pad_hw(x, pads)
    out_hw = tuple(conv_output_size(size, k, s, d, 0)
                   for size, k, s, d in zip(xp.shape[1:3], (kh, kw), stride, dilation))
    win = windows(xp, (kh, kw), stride, dilation, out_hw)
    n, oh, ow = win.shape[:3]
    if groups == 1:
        return (win.reshape(n * oh * ow, -1) @ _weight_rows(w).T).reshape(n, oh, ow, f)
    win = win.reshape(n, oh, ow, kh, kw, groups, cg)
    out = np.einsum("nhwijgc,gfcij->nhwgf", win, w.reshape(groups, f // groups, cg, kh, kw),
                    optimize=True)
    return out.reshape(n, oh, ow, f)


def conv2d_grad_input_array(g, w, in_hw, stride, pads, dilation, groups):
    """d/dx of conv2d for g (N, OH, OW, F): (N, H, W, C) with (H, W) = in_hw."""
    n, oh, ow, f = g.shape
    _, cg, kh, kw = w.shape
    if groups == 1:
        cols = (g.reshape(-1, f) @ _weight_rows(w)).reshape(n, oh, ow, kh, kw, cg)
    else:
        cols = np.einsum("nhwgf,gfcij->nhwijgc", g.reshape(n, oh, ow, groups, f // groups),
                         w.reshape(groups, f // groups, cg, kh, kw), optimize=True)
        cols = cols.reshape(n, oh, ow, kh, kw, groups * cg)
    (t, b), (l, r) = pads
    full = scatter_windows(cols, (in_hw[0] + t + b, in_hw[1] + l + r), stride, dilation)
    return np.ascontiguousarray(full[:, t:t + in_hw[0], l:l + in_hw[1], :])


def conv2d_grad_weight_array(g, x, kernel, stride, pads, dilation, groups):
    """d/dw of conv2d: (F, C/groups, kh, kw), g summed against the input windows."""
    n, oh, ow, f = g.shape
    kh, kw = kernel
    win = windows(pad_hw(x, pads), kernel, stride, dilation, (oh, ow))
    cg = x.shape[3] // groups
    if groups == 1:
        rows = g.reshape(-1, f).T @ win.reshape(n * oh * ow, -1)        # (F, kh·kw·C)
        return np.ascontiguousarray(rows.reshape(f, kh, kw, cg).transpose(0, 3, 1, 2))
    out = np.einsum("nhwgf,nhwijgc->gfcij", g.reshape(n, oh, ow, groups, f // groups),
                    win.reshape(n, oh, ow, kh, kw, groups, cg), optimize=True)
    return out.reshape(f, cg, kh, kw)


def _with_bias(y, ins):
    if len(ins) > 2:
        y += ins[2]
    return y


@conv2d.forward
def _conv2d_forward(ins, a, ctx):
    x, w = ins[0], ins[1]
    return _with_bias(conv2d_array(x, w, a["stride"], conv_pads(x.shape[1:3], a), a["dilation"],
                                   a["groups"]), ins)


# Backward ops carry explicit padding, resolved against the forward input's size.
_CONV_GRAD_ARGS = "stride, padding ((top, bottom), (left, right)), dilation, groups"


def _grad_input_shape(ctx, a):
    g, w = ctx.inputs
    return g.with_shape((g.shape[0],) + tuple(a["in_hw"]) + (w.shape[1] * a["groups"],))


conv2d_grad_input = define_internal(
    "conv2d_grad_input", family="conv", arity=2, shape=_grad_input_shape,
    doc=f"dx of conv2d from (g, weight); attrs in_hw, {_CONV_GRAD_ARGS}. Also the forward of "
        "conv_transpose2d.")
conv2d_grad_input.forward(lambda ins, a, ctx: conv2d_grad_input_array(
    ins[0], ins[1], a["in_hw"], a["stride"], a["padding"], a["dilation"], a["groups"]))


def _grad_weight_shape(ctx, a):
    g, x = ctx.inputs
    return g.with_shape((g.shape[-1], x.shape[-1] // a["groups"]) + tuple(a["kernel"]))


conv2d_grad_weight = define_internal(
    "conv2d_grad_weight", family="conv", arity=2, shape=_grad_weight_shape,
    doc=f"dW of conv2d from (g, x); attrs kernel, {_CONV_GRAD_ARGS}. With g and x exchanged, "
        "the weight gradient of conv_transpose2d.")
conv2d_grad_weight.forward(lambda ins, a, ctx: conv2d_grad_weight_array(
    ins[0], ins[1], a["kernel"], a["stride"], a["padding"], a["dilation"], a["groups"]))


def _conv_grad_attrs(a, pads):
    return {"stride": a["stride"], "padding": pads, "dilation": a["dilation"], "groups": a["groups"]}


@conv2d.vjp
def _conv2d_vjp(b, node, g):
    operands = b.operands(node)
    x, w = operands[0], operands[1]
    a = b.attrs(node)
    in_hw = tuple(b.type(x).shape[1:3])
    common = _conv_grad_attrs(a, conv_pads(in_hw, a))
    grads = [b.add("conv2d_grad_input", [g, w], in_hw=in_hw, **common),
             b.add("conv2d_grad_weight", [g, x], kernel=tuple(a["kernel"]), **common)]
    if len(operands) > 2:
        grads.append(b.add("bias_grad", [g]))
    return grads


def transpose_output_hw(in_hw, a):
    """(H, W) of conv_transpose2d's output: the input size of the conv it reverses.

    `output_padding` picks among the sizes, since a strided conv maps several input sizes to one
    output size.
    """
    return tuple((size - 1) * s - 2 * p + d * (k - 1) + op + 1
                 for size, k, s, p, op, d in zip(in_hw, a["kernel"], a["stride"], a["padding"],
                                                 a["output_padding"], a["dilation"]))


def _transpose_pads(a):
    (ph, pw) = a["padding"]
    return ((ph, ph), (pw, pw))


@conv_transpose2d.forward
def _conv_transpose2d_forward(ins, a, ctx):
    x, w = ins[0], ins[1]
    out_hw = transpose_output_hw(x.shape[1:3], a)
    return _with_bias(conv2d_grad_input_array(x, w, out_hw, a["stride"], _transpose_pads(a),
                                              a["dilation"], a["groups"]), ins)


def _transpose_grad_input_shape(ctx, a):
    g, w = ctx.inputs
    return g.with_shape((g.shape[0],) + tuple(a["in_hw"]) + (w.shape[0],))


conv_transpose2d_grad_input = define_internal(
    "conv_transpose2d_grad_input", family="conv", arity=2, shape=_transpose_grad_input_shape,
    doc=f"dx of conv_transpose2d from (g, weight) when output_padding exceeds padding: a conv2d "
        f"of g, cropped to in_hw; attrs in_hw, {_CONV_GRAD_ARGS}.")
conv_transpose2d_grad_input.forward(lambda ins, a, ctx: np.ascontiguousarray(conv2d_array(
    ins[0], ins[1], a["stride"], a["padding"], a["dilation"], a["groups"])
    [:, :a["in_hw"][0], :a["in_hw"][1], :]))


@conv_transpose2d.vjp
def _conv_transpose2d_vjp(b, node, g):
    operands = b.operands(node)
    x, w = operands[0], operands[1]
    a = b.attrs(node)
    in_hw = tuple(b.type(x).shape[1:3])
    pads = _transpose_pads(a)
    common = _conv_grad_attrs(a, pads)
    # The input gradient is a convolution of g with the same weight.  Rows and columns that
    # output_padding added at the bottom/right feed no input: dropping them from the padding
    # makes the conv's output exactly in_hw.
    trimmed = tuple((p, p - op) for (p, _), op in zip(pads, a["output_padding"]))
    if all(after >= 0 for _, after in trimmed):
        dx = b.add("conv2d", [g, w], filters=b.type(w).shape[0], kernel=tuple(a["kernel"]),
                   stride=a["stride"], padding=trimmed, dilation=a["dilation"],
                   groups=a["groups"], bias=False, share=None)
    else:
        dx = b.add("conv_transpose2d_grad_input", [g, w], in_hw=in_hw, **common)
    grads = [dx, b.add("conv2d_grad_weight", [x, g], kernel=tuple(a["kernel"]), **common)]
    if len(operands) > 2:
        grads.append(b.add("bias_grad", [g]))
    return grads


# ---- ONNX export: Conv and ConvTranspose read and write channels first ----------------------


def _onnx_conv(op_type):
    def rule(step):
        a = step.attrs
        if op_type == "Conv":
            (top, bottom), (left, right) = conv_pads(step.in_types[0].shape[1:3], a)
            extra = {}
        else:
            (top, bottom), (left, right) = _transpose_pads(a)
            extra = {"output_padding": list(a["output_padding"])}
        inputs = [step.channels_first(0), step.input(1)] + ([step.input(2)] if a["bias"] else [])
        y = step.node(op_type, inputs, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                      dilations=list(a["dilation"]), group=a["groups"],
                      pads=[top, left, bottom, right], **extra)
        return laid_out(y, channels_first_perm(4))
    return rule


conv2d.onnx_rule = _onnx_conv("Conv")
conv_transpose2d.onnx_rule = _onnx_conv("ConvTranspose")


# ---- ONNX import: Conv and ConvTranspose, channels first --------------------------------------


@reads_onnx("Conv", channels_first=True)
def _read_conv(step):
    if step.rank(0) != 4:
        step.refuse("netlang convolves images only, (N, C, H, W) in ONNX")
    weight = step.weight(1, "weight")
    args = {"filters": weight.shape[0], "kernel": pair(weight.shape[2:]),
            "stride": pair(step.attr("strides", [1, 1])), "padding": read_padding(step),
            "dilation": pair(step.attr("dilations", [1, 1])), "groups": step.attr("group", 1)}
    weights = {"weight": weight}
    if step.has_input(2):
        weights["bias"] = step.weight(2, "bias")
    else:
        args["bias"] = False
    layer = step.layer("conv2d", args, [step.input(0, channels_first_perm(4))], weights,
                       name_from=1)
    return step.result(layer, channels_first_perm(4))


@reads_onnx("ConvTranspose", channels_first=True)
def _read_conv_transpose(step):
    if step.rank(0) != 4:
        step.refuse("netlang convolves images only, (N, C, H, W) in ONNX")
    if step.attr("output_shape") is not None:
        step.refuse("an output_shape has no netlang form; give pads and output_padding")
    padding = read_padding(step)
    padding = 0 if padding == "valid" else padding
    if isinstance(padding, str) or (isinstance(padding, tuple) and isinstance(padding[0], tuple)):
        step.refuse("netlang's conv_transpose2d removes the same rows at the top and bottom "
                    "(and columns left and right)")
    weight = step.weight(1, "weight")
    groups = step.attr("group", 1)
    args = {"filters": weight.shape[1] * groups, "kernel": pair(weight.shape[2:]),
            "stride": pair(step.attr("strides", [1, 1])), "padding": padding,
            "output_padding": pair(step.attr("output_padding", [0, 0])),
            "dilation": pair(step.attr("dilations", [1, 1])), "groups": groups}
    weights = {"weight": weight}
    if step.has_input(2):
        weights["bias"] = step.weight(2, "bias")
    else:
        args["bias"] = False
    layer = step.layer("conv_transpose2d", args, [step.input(0, channels_first_perm(4))],
                       weights, name_from=1)
    return step.result(layer, channels_first_perm(4))
