"""Tensor math, element by element: functions (`exp`, `log`, `clip`, ...), arithmetic with
numbers and between tensors, broadcasting, and `stop_gradient`.

Every op here is elementwise on operands of one shape (a `cpu_expr`), so the fusion pass
runs a chain of them (`exp(x) * 0.5 + 1`) inside one loop.  Broadcasting is not a property of
the arithmetic ops: the front end widens an operand to the common shape with an explicit
`broadcast_to` node (whose gradient sums back to the operand's shape), so every elementwise
loop reads its operands at one flat index.  The broadcasting rule itself is
`broadcast_shape`, here beside the op that carries it out.
"""

import math

import numpy as np

from netlang.ops.onnx_forms import (
                                   chained,
                                   map_elements,
                                   passthrough,
                                   read_elementwise,
                                   read_merge,
                                   scalar_input,
                                   unary,
                                   with_constant,
)
from netlang.ops.registry import (
    define_internal,
    define_op,
    elementwise_same,
    reads_onnx,
    same_type_as,
)
from netlang.ops.schema import Arg, FLOAT, INTS


def _function(name, doc, *, shape_doc="unchanged (floating-point input).", example, args=()):
    op = define_op(name, family="math", doc=doc, args=args)
    op.shape(elementwise_same)
    op.document(shape=shape_doc, params=None, example=example)
    return op


exp = _function("exp", "`e^x`, element by element.",
                example="input x: [4]\noutput y = exp(x) * 0.5 + 1")
log = _function("log", "The natural logarithm, element by element (−inf at 0, NaN below).",
                example="input x: [4]\noutput y = x -> softplus -> log")
sqrt = _function("sqrt", "The square root, element by element (NaN below 0).",
                 example="input x: [4]\noutput y = sqrt(square(x) + 1e-6)")
square = _function("square", "`x · x`, element by element.",
                   example="input x: [4]\noutput y = x -> square")
abs_ = _function("abs", "`|x|`, element by element; its gradient at 0 is 0.",
                 example="input x: [4]\noutput y = abs(x)")
softplus = _function("softplus", "`log(1 + e^x)`, computed without overflow.",
                     example="input x: [4]\noutput y = x -> dense(4) -> softplus")
clip = _function(
    "clip", "Limits each element to `[lo, hi]`; the gradient passes where lo ≤ x ≤ hi.",
    args=[Arg("lo", FLOAT, doc="the lower bound"), Arg("hi", FLOAT, doc="the upper bound")],
    shape_doc="unchanged; `lo` must not exceed `hi`.",
    example="input x: [4]\noutput y = x -> clip(-1, 1)")
pow_ = _function(
    "pow", "`x^k`, element by element (for a `k` that is not an integer, x must be positive).",
    args=[Arg("k", FLOAT, doc="the exponent")],
    example="input x: [4]\noutput y = x -> pow(3)   # as x ** 3")
stop_gradient = _function(
    "stop_gradient", "Passes its input through; no gradient flows back through it (a target "
    "computed by the model, held constant).",
    example="input x: [4]\noutput y = x * stop_gradient(x)")


@clip.shape
def _clip_shape(ctx, a):
    ctx.need_float(0)
    if a["lo"] > a["hi"]:
        ctx.fail(f"`clip` needs lo ≤ hi, got lo = {a['lo']:g} and hi = {a['hi']:g}")
    return ctx.inputs[0]


def _same_shapes_of_two(verb):
    def rule(ctx, a):
        left, right = ctx.inputs
        ctx.need_float(0)
        if left != right:
            ctx.fail(f"cannot {verb} {ctx.describe(0)} and {ctx.describe(1)}: "
                     + ("shapes differ" if left.shape != right.shape else "dtypes differ"))
        return left
    return rule


subtract = define_op("subtract", family="math", arity=2, operand_names=("a", "b"),
                     doc="Elementwise difference `a − b` of two tensors of one shape; `a - b`.")
subtract.shape(_same_shapes_of_two("subtract"))
subtract.document(
    shape="two floating-point tensors of the same shape; `a - b` between tensors of "
          "different shapes broadcasts them first (see Tensor arithmetic).",
    params=None, example="input a: [4]\ninput b: [4]\noutput y = (a, b) -> subtract   # a - b")
divide = define_op("divide", family="math", arity=2, operand_names=("a", "b"),
                   doc="Elementwise quotient `a / b` of two tensors of one shape; `a / b`.")
divide.shape(_same_shapes_of_two("divide"))
divide.document(shape="as `subtract`.", params=None,
                example="input a: [4]\ninput b: [4]\noutput y = a / softplus(b)")

# Arithmetic with a number, which the front end writes for `x + 1`, `2 * x`, `1 / x`
# (`x * 0.5` and `x / 2` are the core `scale`).
add_scalar = define_internal("add_scalar", family="math", shape=elementwise_same,
                             args=[Arg("value", FLOAT)], differentiable=True,
                             doc="x + value (`x + 1`, `x - 1`, `1 + x`).")
rdivide_scalar = define_internal("rdivide_scalar", family="math", shape=elementwise_same,
                                 args=[Arg("value", FLOAT)], differentiable=True,
                                 doc="value / x (`1 / x`).")


# How the language's operators lower on tensors (netlang/lower/tensor_math.py): between two
# tensors, once broadcast to one shape, each operator is one op; with a number, see below.
TENSOR_OPERATORS = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}


def number_arithmetic(operator: str, number, tensor_first: bool):
    """The ops, as [(op name, attributes)], computing `tensor operator number` (or, with
    `tensor_first` false, `number operator tensor`); None where the operator does not apply
    to a tensor and a number."""
    value = float(number)
    if operator == "+":
        return [("add_scalar", {"value": value})]
    if operator == "*":
        return [("scale", {"factor": value})]
    if operator == "-":
        if tensor_first:
            return [("add_scalar", {"value": -value})]
        return [("scale", {"factor": -1.0}), ("add_scalar", {"value": value})]
    if operator == "/":
        if not tensor_first:
            return [("rdivide_scalar", {"value": value})]
        return [("scale", {"factor": 1.0 / value})]
    if operator == "**" and tensor_first:
        return [("pow", {"k": value})]
    return None


def broadcast_shape(ctx) -> tuple:
    """The per-example shape two batched operands broadcast to (numpy's rule over the axes
    after the batch axis: shapes are aligned at their last axes; along each, the sizes must
    match or one must be 1, and a missing axis counts as 1).  Fails through `ctx` where they
    do not broadcast."""
    a, b = ctx.inputs
    for i, t in enumerate((a, b)):
        if not t.batched:
            ctx.fail(f"cannot broadcast {ctx.describe(i)}: it has no batch axis")
    if a.dtype != b.dtype:
        ctx.fail(f"cannot combine {a.dtype} {ctx.describe(0)} and {b.dtype} {ctx.describe(1)}")
    left, right = a.sample_shape, b.sample_shape
    rank = max(len(left), len(right))
    left, right = (1,) * (rank - len(left)) + left, (1,) * (rank - len(right)) + right
    result = []
    for axis, (m, n) in enumerate(zip(left, right)):
        if m != n and 1 not in (m, n):
            ctx.fail(f"cannot broadcast {ctx.describe(0)} and {ctx.describe(1)}: per-example "
                     f"axis {axis - rank} has sizes {m} and {n} (sizes must match, or one "
                     f"must be 1)")
        result.append(max(m, n))
    return tuple(result)


def _broadcast_to_shape(ctx, a):
    x = ctx.inputs[0]
    target = tuple(a["shape"])
    own = x.sample_shape
    padded = (1,) * (len(target) - len(own)) + own
    if len(own) > len(target) or any(d != t and d != 1 for d, t in zip(padded, target)):
        ctx.fail(f"cannot broadcast {ctx.describe(0)} to per-example shape {target}")
    return x.with_shape((None,) + target)


broadcast_to = define_internal(
    "broadcast_to", family="math", shape=_broadcast_to_shape, differentiable=True,
    args=[Arg("shape", INTS)],
    doc="Repeats its operand along the per-example axes where it has size 1 (or lacks them) "
        "to the per-example `shape`: an operand of broadcasting arithmetic.")


def broadcast_axes(own: tuple, target: tuple) -> tuple:
    """The per-example axes of `target` along which an operand of per-example shape `own`
    is repeated by `broadcast_to`."""
    padded = (1,) * (len(target) - len(own)) + tuple(own)
    return tuple(i for i, (d, t) in enumerate(zip(padded, target)) if d != t)


# ---- forward and backward ------------------------------------------------------------------


def _softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _sigmoid(x):
    e = np.exp(-np.abs(x))           # never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


exp.forward(lambda ins, a, ctx: np.exp(ins[0]))
log.forward(lambda ins, a, ctx: np.log(ins[0]))
sqrt.forward(lambda ins, a, ctx: np.sqrt(ins[0]))
square.forward(lambda ins, a, ctx: ins[0] * ins[0])
abs_.forward(lambda ins, a, ctx: np.abs(ins[0]))
softplus.forward(lambda ins, a, ctx: _softplus(ins[0]))
clip.forward(lambda ins, a, ctx: np.clip(ins[0], a["lo"], a["hi"]).astype(ins[0].dtype))
pow_.forward(lambda ins, a, ctx: np.power(ins[0], ins[0].dtype.type(a["k"])))
stop_gradient.forward(lambda ins, a, ctx: ins[0])
subtract.forward(lambda ins, a, ctx: ins[0] - ins[1])
divide.forward(lambda ins, a, ctx: ins[0] / ins[1])
add_scalar.forward(lambda ins, a, ctx: ins[0] + ins[0].dtype.type(a["value"]))
rdivide_scalar.forward(lambda ins, a, ctx: ins[0].dtype.type(a["value"]) / ins[0])


def _broadcast_forward(ins, a, ctx):
    x = ins[0]
    target = tuple(a["shape"])
    own = x.shape[1:]
    padded = x.reshape((x.shape[0],) + (1,) * (len(target) - len(own)) + own)
    return np.ascontiguousarray(np.broadcast_to(padded, (x.shape[0],) + target))


broadcast_to.forward(_broadcast_forward)

# Backward ops, each (what it reads..., g) -> the gradient of one operand.
sqrt_grad = define_internal("sqrt_grad", family="math", arity=2, shape=same_type_as(1),
                            doc="g / (2·y), from the square root's output y.")
sqrt_grad.forward(lambda ins, a, ctx: ins[1] * 0.5 / ins[0])
square_grad = define_internal("square_grad", family="math", arity=2, shape=same_type_as(1),
                              doc="2·x·g, from the input x.")
square_grad.forward(lambda ins, a, ctx: 2 * ins[0] * ins[1])
abs_grad = define_internal("abs_grad", family="math", arity=2, shape=same_type_as(1),
                           doc="sign(x)·g (0 at x = 0), from the input x.")
abs_grad.forward(lambda ins, a, ctx: np.sign(ins[0]) * ins[1])
softplus_grad = define_internal("softplus_grad", family="math", arity=2, shape=same_type_as(1),
                                doc="σ(x)·g, from the input x.")
softplus_grad.forward(lambda ins, a, ctx: (_sigmoid(ins[0]) * ins[1]).astype(ins[1].dtype))
clip_grad = define_internal("clip_grad", family="math", arity=2, shape=same_type_as(1),
                            args=clip.args,
                            doc="g where lo ≤ x ≤ hi, else 0, from the input x.")
clip_grad.forward(lambda ins, a, ctx: np.where((ins[0] >= a["lo"]) & (ins[0] <= a["hi"]),
                                               ins[1], 0).astype(ins[1].dtype))
pow_grad = define_internal("pow_grad", family="math", arity=2, shape=same_type_as(1),
                           args=pow_.args, doc="k·x^(k−1)·g, from the input x.")
pow_grad.forward(lambda ins, a, ctx: (a["k"] * np.power(ins[0], ins[0].dtype.type(a["k"] - 1))
                                      * ins[1]).astype(ins[1].dtype))
divide_grad = define_internal("divide_grad", family="math", arity=3, shape=same_type_as(2),
                              doc="−g·a / b², the gradient of a / b with respect to b.")
divide_grad.forward(lambda ins, a, ctx: -ins[2] * ins[0] / (ins[1] * ins[1]))
rdivide_scalar_grad = define_internal(
    "rdivide_scalar_grad", family="math", arity=2, shape=same_type_as(1), args=rdivide_scalar.args,
    doc="−g·value / x², the gradient of value / x, from the input x.")
rdivide_scalar_grad.forward(lambda ins, a, ctx: (-ins[1] * a["value"] / (ins[0] * ins[0]))
                            .astype(ins[1].dtype))


def _input(b, node):
    return b.operands(node)[0]


exp.vjp(lambda b, node, g: [b.add("multiply", [g, node])])
log.vjp(lambda b, node, g: [b.add("divide", [g, _input(b, node)])])
sqrt.vjp(lambda b, node, g: [b.add("sqrt_grad", [node, g])])
square.vjp(lambda b, node, g: [b.add("square_grad", [_input(b, node), g])])
abs_.vjp(lambda b, node, g: [b.add("abs_grad", [_input(b, node), g])])
softplus.vjp(lambda b, node, g: [b.add("softplus_grad", [_input(b, node), g])])
clip.vjp(lambda b, node, g: [b.add("clip_grad", [_input(b, node), g], **b.attrs(node))])
pow_.vjp(lambda b, node, g: [b.add("pow_grad", [_input(b, node), g], **b.attrs(node))])
# The point of the op: its operand receives no gradient from here.
stop_gradient.vjp(lambda b, node, g: [None])
subtract.vjp(lambda b, node, g: [g, b.add("scale", [g], factor=-1.0)])


@divide.vjp
def _divide_vjp(b, node, g):
    numerator, denominator = b.operands(node)
    return [b.add("divide", [g, denominator]), b.add("divide_grad", [numerator, denominator, g])]


add_scalar.vjp(lambda b, node, g: [g])
rdivide_scalar.vjp(lambda b, node, g: [b.add("rdivide_scalar_grad", [_input(b, node), g],
                                             **b.attrs(node))])


@broadcast_to.vjp
def _broadcast_vjp(b, node, g):
    """Σ over the repeated axes, keeping them, then the operand's own shape (a view)."""
    x = _input(b, node)
    axes = broadcast_axes(b.type(x).sample_shape, tuple(b.attrs(node)["shape"]))
    summed = b.add("sum", [g], axis=axes, keepdims=True) if axes else g
    return [b.add("reshape_like", [summed, x])]


# ---- kernels: scalar expressions (both renderers), fused into loops ----------------------------
#
# Operands are plain variables, so a template may read one twice; `c` spells constants and
# math functions for the renderer at hand (netlang/codegen/spelling.py).

exp.cpu_expr = lambda a, c: c.exp("{0}")
log.cpu_expr = lambda a, c: c.log("{0}")
sqrt.cpu_expr = lambda a, c: c.sqrt("{0}")
square.cpu_expr = lambda a, c: "{0} * {0}"
abs_.cpu_expr = lambda a, c: "-{0} if {0} < 0 else {0}"
# max(x, 0) + log(1 + e^-|x|): e^-|x| ≤ 1 never overflows.
softplus.cpu_expr = lambda a, c: (f"({{0}} if {{0}} > 0 else {c(0)}) + "
                                  f"{c.log1p(c.exp('{0} if {0} < 0 else -{0}'))}")
clip.cpu_expr = lambda a, c: (f"{c(a['lo'])} if {{0}} < {c(a['lo'])} else "
                              f"({c(a['hi'])} if {{0}} > {c(a['hi'])} else {{0}})")
pow_.cpu_expr = lambda a, c: f"{{0}} ** {c(a['k'])}"
stop_gradient.cpu_expr = lambda a, c: "{0}"
subtract.cpu_expr = lambda a, c: "{0} - {1}"
divide.cpu_expr = lambda a, c: "{0} / {1}"
add_scalar.cpu_expr = lambda a, c: f"{{0}} + {c(a['value'])}"
rdivide_scalar.cpu_expr = lambda a, c: f"{c(a['value'])} / {{0}}"
sqrt_grad.cpu_expr = lambda a, c: f"{{1}} * {c(0.5)} / {{0}}"
square_grad.cpu_expr = lambda a, c: f"{c(2)} * {{0}} * {{1}}"
abs_grad.cpu_expr = lambda a, c: f"{{1}} if {{0}} > 0 else (-{{1}} if {{0}} < 0 else {c(0)})"
# σ(x)·g as g / (1 + e^-x) for x ≥ 0 and g·e^x / (1 + e^x) below: no exponential overflows.
softplus_grad.cpu_expr = lambda a, c: (
    f"{{1}} / ({c(1)} + {c.exp('-{0}')}) if {{0}} >= 0 else "
    f"{{1}} * {c.exp('{0}')} / ({c(1)} + {c.exp('{0}')})")
clip_grad.cpu_expr = lambda a, c: (f"{{1}} if {{0}} >= {c(a['lo'])} and {{0}} <= {c(a['hi'])} "
                                   f"else {c(0)}")
pow_grad.cpu_expr = lambda a, c: f"{c(a['k'])} * {{0}} ** {c(a['k'] - 1)} * {{1}}"
divide_grad.cpu_expr = lambda a, c: "-{2} * {0} / ({1} * {1})"
rdivide_scalar_grad.cpu_expr = lambda a, c: f"-{{1}} * {c(a['value'])} / ({{0}} * {{0}})"


def example_coordinates(k, flat: str, shape) -> list[str]:
    """Emits the row-major coordinates of the per-example flat index `flat` in `shape`;
    returns their variables (one per axis)."""
    coords, rest = [], flat
    for axis, extent in enumerate(shape):
        inner = math.prod(shape[axis + 1:])
        coord = k.fresh("c")
        k.line(f"{coord} = ({rest} // {inner}) % {extent}" if axis else
               f"{coord} = {rest} // {inner}")
        coords.append(coord)
    return coords


def _broadcast_kernel(k):
    """One output element per iteration, read from the operand's element at the same
    coordinates, with 0 along the repeated axes."""
    target = tuple(k.attrs["shape"])
    own = k.in_types[0].sample_shape
    padded = (1,) * (len(target) - len(own)) + own
    x, y = k.flat(k.ins[0]), k.flat(k.out)
    out_size, in_size = math.prod(target), math.prod(own)
    with k.parallel(f"{y}.size", "i"):
        n, rest = k.fresh("n"), k.fresh("r")
        k.line(f"{n} = i // {out_size}")
        k.line(f"{rest} = i % {out_size}")
        coords = example_coordinates(k, rest, target)
        read = [f"{coord} * {math.prod(padded[axis + 1:])}"
                for axis, coord in enumerate(coords) if padded[axis] != 1]
        k.line(f"{y}[i] = {x}[{' + '.join([f'{n} * {in_size}'] + read)}]")


broadcast_to.cpu_kernel = broadcast_to.cuda_kernel = _broadcast_kernel


# ---- ONNX export ------------------------------------------------------------------------------


def _onnx_broadcast(step):
    own, target = step.in_types[0].sample_shape, tuple(step.attrs["shape"])
    # The batch axis kept (Reshape's 0), missing leading axes made 1, then repeated.
    padded = step.node("Reshape", [step.input(0),
                                   step.ints([0] + [1] * (len(target) - len(own)) + list(own))])
    return step.node("Expand", [padded, step.batch_shape(padded, target)])


exp.onnx_rule = unary("Exp")
log.onnx_rule = unary("Log")
sqrt.onnx_rule = unary("Sqrt")
square.onnx_rule = map_elements(lambda step, x: step.node("Mul", [x, x]))
abs_.onnx_rule = unary("Abs")
softplus.onnx_rule = unary("Softplus")
clip.onnx_rule = map_elements(lambda step, x: step.node(
    "Clip", [x, step.scalar(step.attrs["lo"]), step.scalar(step.attrs["hi"])]))
pow_.onnx_rule = map_elements(lambda step, x: step.node("Pow", [x, step.scalar(step.attrs["k"])]))
stop_gradient.onnx_rule = passthrough
subtract.onnx_rule = chained("Sub")
divide.onnx_rule = chained("Div")
add_scalar.onnx_rule = with_constant("Add", "value")
rdivide_scalar.onnx_rule = with_constant("Div", "value", constant_first=True)
broadcast_to.onnx_rule = _onnx_broadcast


# ---- ONNX import ------------------------------------------------------------------------------

reads_onnx("Exp")(read_elementwise("exp"))
reads_onnx("Log")(read_elementwise("log"))
reads_onnx("Sqrt")(read_elementwise("sqrt"))
reads_onnx("Abs")(read_elementwise("abs"))
reads_onnx("Softplus")(read_elementwise("softplus"))
reads_onnx("Clip")(read_elementwise("clip", lambda step: {
    "lo": scalar_input(step, 1, "minimum"), "hi": scalar_input(step, 2, "maximum")}))
reads_onnx("Pow")(read_elementwise("pow", lambda step: {"k": scalar_input(step, 1, "exponent")}))
reads_onnx("Sub")(read_merge("subtract", "-"))
reads_onnx("Div")(read_merge("divide", "/"))
