"""Elementwise activations, softmax and maxout."""

from netlang.ops.registry import check_axis, define_op, elementwise_same
from netlang.ops.schema import Arg, FLOAT, INT


def _elementwise(name, doc, args=()):
    op = define_op(name, family="activation", doc=doc, args=args)
    op.shape(elementwise_same)
    return op


identity = _elementwise("identity", "Passes its input through unchanged (a linear output unit).")
sign = _elementwise("sign", "The perceptron's output: -1 for negative input, +1 otherwise.")
threshold = _elementwise(
    "threshold", "A 0/1 step: 1 where the input is above `value`, else 0.",
    [Arg("value", FLOAT, 0.0, doc="the threshold")])
sigmoid = _elementwise("sigmoid", "The logistic function `1 / (1 + e^-x)`.")
tanh = _elementwise("tanh", "The hyperbolic tangent.")
relu = _elementwise("relu", "Rectified linear unit `max(0, x)`.")
leaky_relu = _elementwise(
    "leaky_relu", "`max(slope * x, x)`; PyTorch's default slope is 0.01, the lectures' 0.1.",
    [Arg("slope", FLOAT, 0.01, min=0.0, doc="slope for negative inputs")])
elu = _elementwise(
    "elu", "`x` for x >= 0, else `alpha * (e^x - 1)`.",
    [Arg("alpha", FLOAT, 1.0, min=0.0, doc="saturation value for negative inputs")])


softmax = define_op(
    "softmax", family="activation",
    args=[Arg("axis", INT, -1, doc="the axis that sums to one")],
    doc="`e^{x_k} / sum_j e^{x_j}` along `axis` (computed stably).")


@softmax.shape
def _softmax_shape(ctx, a):
    ctx.need_float(0)
    check_axis(ctx, 0, a["axis"])
    return ctx.inputs[0]


log_softmax = define_op(
    "log_softmax", family="activation",
    args=[Arg("axis", INT, -1, doc="the axis normalised over")],
    doc="The logarithm of softmax, computed stably.")
log_softmax.shape(_softmax_shape)

maxout = define_op(
    "maxout", family="activation",
    args=[Arg("pieces", INT, 2, min=1, doc="how many consecutive features each unit takes the max of")],
    doc="Groups the last axis into units of `pieces` features and keeps each group's maximum: "
        "(..., units*pieces) → (..., units). Put a dense or conv layer with units*pieces outputs before it.")


@maxout.shape
def _maxout_shape(ctx, a):
    ctx.need_float(0)
    x = ctx.inputs[0]
    if x.shape[-1] % a["pieces"]:
        ctx.fail(f"`maxout` with {a['pieces']} pieces needs a last axis divisible by {a['pieces']}, "
                 f"got {ctx.describe(0)}")
    return x.with_shape(x.shape[:-1] + (x.shape[-1] // a["pieces"],))
