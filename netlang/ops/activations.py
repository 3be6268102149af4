"""Elementwise activations, softmax and maxout."""

import contextlib
import math

import numpy as np

from netlang.ops.onnx_forms import (
                                   float_of,
                                   laid_out,
                                   layout_axis,
                                   map_elements,
                                   passthrough,
                                   per_example_axis,
                                   read_elementwise,
                                   read_identity,
                                   unary,
)
from netlang.ops.registry import (
    check_axis,
    define_internal,
    define_op,
    elementwise_same,
    full_axis,
    off_the_time_axis,
    reads_onnx,
    same_type_as,
)
from netlang.ops.schema import Arg, FLOAT, INT, enum


def _elementwise(name, doc, args=()):
    op = define_op(name, family="activation", doc=doc, args=args)
    op.shape(elementwise_same)
    return op


identity = _elementwise("identity", "Passes its input through unchanged (a linear output unit).")
identity.document(shape="unchanged (floating-point input).", params=None,
                  example="input x: [3]\noutput y = x -> dense(1) -> identity")
sign = _elementwise("sign", "The perceptron's output: -1 for negative input, +1 otherwise.")
sign.document(shape="unchanged; −1 where the input is negative, +1 elsewhere (0 included).",
              params=None, example="input x: [2]\noutput y = x -> dense(1) -> sign")
threshold = _elementwise(
    "threshold", "A 0/1 step: 1 where the input is above `value`, else 0.",
    [Arg("value", FLOAT, 0.0, doc="the threshold")])
threshold.document(shape="unchanged; 1 where the input is greater than `value`, else 0.",
                   params=None, example="input x: [2]\noutput y = x -> dense(1) -> threshold(0.5)")
sigmoid = _elementwise("sigmoid", "The logistic function `1 / (1 + e^-x)`.")
sigmoid.document(shape="unchanged.", params=None,
                 example="input x: [2]\noutput p = x -> dense(1) -> sigmoid")
tanh = _elementwise("tanh", "The hyperbolic tangent.")
tanh.document(shape="unchanged.", params=None, example="input x: [4]\noutput y = x -> tanh")
relu = _elementwise("relu", "Rectified linear unit `max(0, x)`.")
relu.document(shape="unchanged.", params=None, example="input x: [4]\noutput y = x -> relu")
leaky_relu = _elementwise(
    "leaky_relu", "`max(slope * x, x)`; PyTorch's default slope is 0.01, the lectures' 0.1.",
    [Arg("slope", FLOAT, 0.01, min=0.0, doc="slope for negative inputs")])
leaky_relu.document(shape="unchanged.", params=None,
                    example="input x: [4]\noutput y = x -> leaky_relu(0.1)")
elu = _elementwise(
    "elu", "`x` for x >= 0, else `alpha * (e^x - 1)`.",
    [Arg("alpha", FLOAT, 1.0, min=0.0, doc="saturation value for negative inputs")])
elu.document(shape="unchanged.", params=None,
             example="input x: [4]\noutput y = x -> elu(alpha = 1.0)")
silu = _elementwise("silu", "`x · sigmoid(x)` (also called swish), as PyTorch's `silu`.")
silu.document(shape="unchanged.", params=None, example="input x: [4]\noutput y = x -> silu")
gelu = _elementwise(
    "gelu", "`x · Φ(x)`, Φ the standard normal CDF, as PyTorch's `gelu`; `approximate = tanh` "
            "takes Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715x³))) instead.",
    [Arg("approximate", enum("none", "tanh"), "none",
         doc="`none`: the exact form, with erf; `tanh`: the tanh approximation")])
gelu.document(shape="unchanged.", params=None,
              example="input x: [8]\noutput y = x -> dense(8) -> gelu(approximate = tanh)")


softmax = define_op(
    "softmax", family="activation",
    args=[Arg("axis", INT, -1, doc="the axis that sums to one")],
    doc="`e^{x_k} / sum_j e^{x_j}` along `axis` (computed stably).")
softmax.document(
    shape="unchanged; `axis` must be a per-example axis (0 … rank − 1, or −1 … −rank). "
          "For training, feed `cross_entropy` the raw scores instead: it applies softmax "
          "itself.",
    params=None, example="input x: [10]\noutput probs = x -> softmax")


@softmax.shape
def _softmax_shape(ctx, a):
    ctx.need_float(0)
    check_axis(ctx, 0, a["axis"])
    return ctx.inputs[0]


log_softmax = define_op(
    "log_softmax", family="activation",
    args=[Arg("axis", INT, -1, doc="the axis normalised over")],
    doc="The logarithm of softmax, computed stably.")
log_softmax.document(shape="as `softmax`.", params=None,
                     example="input x: [5, 10]\noutput y = x -> log_softmax(axis = 0)")
log_softmax.shape(_softmax_shape)
softmax.step_local = log_softmax.step_local = off_the_time_axis
# Each turns class scores into (log) probabilities: a class's score is the value before it.
for _op in (sigmoid, softmax, log_softmax):
    _op.normalises_scores = True

maxout = define_op(
    "maxout", family="activation",
    args=[Arg("pieces", INT, 2, min=1, doc="how many consecutive features each unit takes the max of")],
    doc="Groups the last axis into units of `pieces` features and keeps each group's maximum: "
        "(..., units*pieces) → (..., units). Put a dense or conv layer with units*pieces outputs before it.")
maxout.document(
    shape="`(..., units·pieces)` → `(..., units)`: the last axis must be divisible by "
          "`pieces`.",
    params=None, example="input x: [20]\noutput y = x -> dense(3 * 64) -> maxout(3)   # (64,)")


@maxout.shape
def _maxout_shape(ctx, a):
    ctx.need_float(0)
    x = ctx.inputs[0]
    if x.rank < 2:
        ctx.fail(f"`maxout` expects a feature axis to group, got {ctx.describe(0)}")
    if x.shape[-1] % a["pieces"]:
        ctx.fail(f"`maxout` with {a['pieces']} pieces needs a last axis divisible by {a['pieces']}, "
                 f"got {ctx.describe(0)}")
    return x.with_shape(x.shape[:-1] + (x.shape[-1] // a["pieces"],))


# ---- forward and backward ------------------------------------------------------------------
#
# Elementwise ops save nothing: each backward op reads the forward's input x or output y
# (whichever makes the derivative cheap), so the backward pass is a graph of plain ops.


def _stable_sigmoid(x):
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    ex = np.exp(x[~positive])
    out[~positive] = ex / (1.0 + ex)
    return out


identity.forward(lambda ins, a, ctx: ins[0])
identity.vjp(lambda b, node, g: [g])
sign.forward(lambda ins, a, ctx: np.where(ins[0] < 0, -1.0, 1.0).astype(ins[0].dtype))
threshold.forward(lambda ins, a, ctx: (ins[0] > a["value"]).astype(ins[0].dtype))
# sign and threshold are flat almost everywhere: their gradient is zero (the perceptron
# learns with its own rule, or through a smooth surrogate loss on the pre-activation).
sign.vjp(lambda b, node, g: [b.add("zeros_like", [g])])
threshold.vjp(lambda b, node, g: [b.add("zeros_like", [g])])

sigmoid.forward(lambda ins, a, ctx: _stable_sigmoid(ins[0]))
tanh.forward(lambda ins, a, ctx: np.tanh(ins[0]))
relu.forward(lambda ins, a, ctx: np.maximum(ins[0], 0))
leaky_relu.forward(lambda ins, a, ctx: np.where(ins[0] >= 0, ins[0], ins[0] * a["slope"]).astype(ins[0].dtype))
elu.forward(lambda ins, a, ctx: np.where(ins[0] >= 0, ins[0], a["alpha"] * np.expm1(np.minimum(ins[0], 0)))
            .astype(ins[0].dtype))
silu.forward(lambda ins, a, ctx: ins[0] * _stable_sigmoid(ins[0]))

# GELU's constants: 1/√2 (Φ(x) = ½(1 + erf(x/√2))), 1/√(2π) (the normal density φ), and the
# tanh approximation's √(2/π) and cubic coefficient.
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715
# NumPy has no erf: the reference takes the C library's, element by element (in float64).
_erf = np.frompyfunc(math.erf, 1, 1)


def _normal_cdf(x, approximate: str):
    """Φ(x), exactly or (approximate = "tanh") by the tanh approximation, in x's dtype."""
    if approximate == "tanh":
        return 0.5 * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + _CUBIC * x ** 3)))
    return 0.5 * (1.0 + _erf(x * _SQRT_HALF).astype(x.dtype))


def _gelu_slope(x, approximate: str):
    """d/dx of x·Φ(x): Φ(x) + x·φ(x) exactly, or the derivative of the tanh form."""
    if approximate == "tanh":
        t = np.tanh(_SQRT_2_OVER_PI * (x + _CUBIC * x ** 3))
        inner_slope = _SQRT_2_OVER_PI * (1.0 + 3 * _CUBIC * x * x)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * inner_slope
    return _normal_cdf(x, "none") + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x)


gelu.forward(lambda ins, a, ctx: (ins[0] * _normal_cdf(ins[0], a["approximate"]))
             .astype(ins[0].dtype))

# Backward ops: (y or x, g) -> dx.
sigmoid_grad = define_internal("sigmoid_grad", family="activation", arity=2, shape=same_type_as(1),
                               doc="g · y(1 − y), from the sigmoid's output y.")
sigmoid_grad.forward(lambda ins, a, ctx: ins[1] * ins[0] * (1 - ins[0]))
tanh_grad = define_internal("tanh_grad", family="activation", arity=2, shape=same_type_as(1),
                            doc="g · (1 − y²), from the tanh's output y.")
tanh_grad.forward(lambda ins, a, ctx: ins[1] * (1 - ins[0] * ins[0]))
relu_grad = define_internal("relu_grad", family="activation", arity=2, shape=same_type_as(1),
                            doc="g where y > 0, from the relu's output y.")
relu_grad.forward(lambda ins, a, ctx: np.where(ins[0] > 0, ins[1], 0).astype(ins[1].dtype))
leaky_relu_grad = define_internal(
    "leaky_relu_grad", family="activation", arity=2, shape=same_type_as(1), args=leaky_relu.args,
    doc="g where x >= 0, slope · g elsewhere, from the input x.")
leaky_relu_grad.forward(lambda ins, a, ctx: np.where(ins[0] >= 0, ins[1], ins[1] * a["slope"])
                        .astype(ins[1].dtype))
elu_grad = define_internal(
    "elu_grad", family="activation", arity=3, shape=same_type_as(2), args=elu.args,
    doc="g where x >= 0, g · (y + alpha) elsewhere, from input x and output y.")
elu_grad.forward(lambda ins, a, ctx: np.where(ins[0] >= 0, ins[2], ins[2] * (ins[1] + a["alpha"]))
                 .astype(ins[2].dtype))
silu_grad = define_internal("silu_grad", family="activation", arity=2, shape=same_type_as(1),
                            doc="g · σ(x)(1 + x(1 − σ(x))), from the input x.")


def _silu_grad(ins, a, ctx):
    x, g = ins
    s = _stable_sigmoid(x)
    return g * s * (1 + x * (1 - s))


silu_grad.forward(_silu_grad)
gelu_grad = define_internal(
    "gelu_grad", family="activation", arity=2, shape=same_type_as(1), args=gelu.args,
    doc="g · (Φ(x) + x·φ(x)) (or the tanh form's slope), from the input x.")
gelu_grad.forward(lambda ins, a, ctx: (ins[1] * _gelu_slope(ins[0], a["approximate"]))
                  .astype(ins[1].dtype))

sigmoid.vjp(lambda b, node, g: [b.add("sigmoid_grad", [node, g])])
tanh.vjp(lambda b, node, g: [b.add("tanh_grad", [node, g])])
relu.vjp(lambda b, node, g: [b.add("relu_grad", [node, g])])
leaky_relu.vjp(lambda b, node, g: [b.add("leaky_relu_grad", [b.operands(node)[0], g],
                                         slope=b.attrs(node)["slope"])])
elu.vjp(lambda b, node, g: [b.add("elu_grad", [b.operands(node)[0], node, g],
                                  alpha=b.attrs(node)["alpha"])])
silu.vjp(lambda b, node, g: [b.add("silu_grad", [b.operands(node)[0], g])])
gelu.vjp(lambda b, node, g: [b.add("gelu_grad", [b.operands(node)[0], g],
                                   approximate=b.attrs(node)["approximate"])])


def _axis_of(x, axis):
    return full_axis(x.ndim, axis)


def _softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


softmax.forward(lambda ins, a, ctx: _softmax(ins[0], _axis_of(ins[0], a["axis"])))
log_softmax.forward(lambda ins, a, ctx: _log_softmax(ins[0], _axis_of(ins[0], a["axis"])))

softmax_grad = define_internal(
    "softmax_grad", family="activation", arity=2, shape=same_type_as(1), args=softmax.args,
    doc="y · (g − Σ g·y), from the softmax's output y.")


def _softmax_grad(ins, a, ctx):
    y, g = ins
    axis = _axis_of(y, a["axis"])
    return y * (g - (g * y).sum(axis=axis, keepdims=True))


softmax_grad.forward(_softmax_grad)
log_softmax_grad = define_internal(
    "log_softmax_grad", family="activation", arity=2, shape=same_type_as(1), args=log_softmax.args,
    doc="g − softmax · Σ g, from the log-softmax's output y.")


def _log_softmax_grad(ins, a, ctx):
    y, g = ins
    axis = _axis_of(y, a["axis"])
    return g - np.exp(y) * g.sum(axis=axis, keepdims=True)


log_softmax_grad.forward(_log_softmax_grad)
softmax.vjp(lambda b, node, g: [b.add("softmax_grad", [node, g], axis=b.attrs(node)["axis"])])
log_softmax.vjp(lambda b, node, g: [b.add("log_softmax_grad", [node, g],
                                          axis=b.attrs(node)["axis"])])


def _maxout_forward(ins, a, ctx):
    x = ins[0]
    k = a["pieces"]
    return x.reshape(x.shape[:-1] + (x.shape[-1] // k, k)).max(axis=-1)


maxout.forward(_maxout_forward)
maxout_grad = define_internal(
    "maxout_grad", family="activation", arity=2, shape=same_type_as(0), args=maxout.args,
    doc="Routes each unit's gradient to the first piece that attained its maximum.")


def _maxout_grad(ins, a, ctx):
    x, g = ins
    k = a["pieces"]
    grouped = x.reshape(x.shape[:-1] + (x.shape[-1] // k, k))
    winner = grouped.argmax(axis=-1)
    out = np.zeros_like(grouped)
    np.put_along_axis(out, winner[..., None], g[..., None], axis=-1)
    return out.reshape(x.shape)


maxout_grad.forward(_maxout_grad)
maxout.vjp(lambda b, node, g: [b.add("maxout_grad", [b.operands(node)[0], g],
                                     pieces=b.attrs(node)["pieces"])])


# ---- CPU kernels: scalar expressions the code generator fuses into loops ------------------------
identity.cpu_expr = lambda a, c: "{0}"
sign.cpu_expr = lambda a, c: f"{c(-1)} if {{0}} < 0 else {c(1)}"
threshold.cpu_expr = lambda a, c: f"{c(1)} if {{0}} > {c(a['value'])} else {c(0)}"
sigmoid.cpu_expr = lambda a, c: f"{c(1)} / ({c(1)} + {c.exp('-{0}')})"
tanh.cpu_expr = lambda a, c: c.tanh("{0}")
relu.cpu_expr = lambda a, c: f"{{0}} if {{0}} > 0 else {c(0)}"
leaky_relu.cpu_expr = lambda a, c: f"{{0}} if {{0}} >= 0 else {{0}} * {c(a['slope'])}"
elu.cpu_expr = lambda a, c: f"{{0}} if {{0}} >= 0 else {c(a['alpha'])} * {c.expm1('{0}')}"
sigmoid_grad.cpu_expr = lambda a, c: f"{{1}} * {{0}} * ({c(1)} - {{0}})"
tanh_grad.cpu_expr = lambda a, c: f"{{1}} * ({c(1)} - {{0}} * {{0}})"
relu_grad.cpu_expr = lambda a, c: f"{{1}} if {{0}} > 0 else {c(0)}"
leaky_relu_grad.cpu_expr = lambda a, c: f"{{1}} if {{0}} >= 0 else {{1}} * {c(a['slope'])}"
elu_grad.cpu_expr = lambda a, c: f"{{2}} if {{0}} >= 0 else {{2}} * ({{1}} + {c(a['alpha'])})"
# x / (1 + e^-x): for very negative x, e^-x overflows to inf and the quotient is -0, not NaN.
silu.cpu_expr = lambda a, c: f"{{0}} / ({c(1)} + {c.exp('-{0}')})"


def _sigmoid_of(x: str, c) -> str:
    """σ(x) as an expression over the operand `x`, in the renderer's spelling `c`."""
    return f"({c(1)} / ({c(1)} + {c.exp(f'-{x}')}))"


# σ(x)·(1 + x·(1 − σ(x))), σ written out twice (a template is one expression, without
# temporaries): the form (1 + e + x·e)/(1 + e)², e = e^-x, needs one exp but gives inf − inf
# for x < −88 in float32, where this one gives 0.
silu_grad.cpu_expr = lambda a, c: (f"{{1}} * {_sigmoid_of('{0}', c)} * "
                                   f"({c(1)} + {{0}} * ({c(1)} - {_sigmoid_of('{0}', c)}))")


def _gelu_tanh(x: str, c) -> str:
    """tanh(√(2/π)(x + 0.044715x³)), the tanh approximation's inner term."""
    return c.tanh(f"{c(_SQRT_2_OVER_PI)} * ({x} + {c(_CUBIC)} * {x} * {x} * {x})")


def _gelu_expr(a, c) -> str:
    if a["approximate"] == "tanh":
        return f"{c(0.5)} * {{0}} * ({c(1)} + {_gelu_tanh('{0}', c)})"
    return f"{c(0.5)} * {{0}} * ({c(1)} + {c.erf(f'{{0}} * {c(_SQRT_HALF)}')})"


def _gelu_grad_expr(a, c) -> str:
    if a["approximate"] == "tanh":
        t = _gelu_tanh("{0}", c)
        slope = (f"{c(0.5)} * ({c(1)} + {t}) + {c(0.5)} * {{0}} * ({c(1)} - {t} * {t}) * "
                 f"{c(_SQRT_2_OVER_PI)} * ({c(1)} + {c(3 * _CUBIC)} * {{0}} * {{0}})")
    else:
        slope = (f"{c(0.5)} * ({c(1)} + {c.erf(f'{{0}} * {c(_SQRT_HALF)}')}) + "
                 f"{{0}} * {c(_INV_SQRT_2PI)} * {c.exp(f'{c(-0.5)} * {{0}} * {{0}}')}")
    return f"{{1}} * ({slope})"


gelu.cpu_expr = _gelu_expr
gelu_grad.cpu_expr = _gelu_grad_expr


class _AxisLanes:
    """The runs (lanes) of a softmax's operands along its axis, one per iteration `r` of a
    parallel loop (one GPU thread each): lane r's c-th element of a view is `at(view, c)`,
    c < `count`.

    The last axis, the common case (class scores), is the rows of a (rows, axis) view, each
    contiguous.  Another axis is a run of stride `inner`, the size of the axes after it: in a
    (size // inner, inner) view, lane r = (o, i), o = r // inner counting the batch and the
    axes before the axis, i = r % inner, reads rows o·count + c of column i.  Neighbouring
    lanes are neighbouring columns, so a GPU's neighbouring threads read adjacent elements."""

    def __init__(self, k, arrays):
        t = k.in_types[0]
        axis = full_axis(t.rank, k.attrs["axis"])
        self.k = k
        self.inner = math.prod(t.shape[axis + 1:])
        if self.inner == 1:
            self.views = [k.rows(var, t) for var in arrays]
            self.count = f"{self.views[0]}.shape[1]"
        else:
            self.views = [k.matrix(var, self.inner) for var in arrays]
            self.count = str(t.shape[axis])
            self._row, self._column = k.fresh("o"), k.fresh("i")

    @contextlib.contextmanager
    def each(self):
        """The parallel loop over lanes; what is emitted inside runs once per lane."""
        k = self.k
        if self.inner == 1:
            with k.parallel(f"{self.views[0]}.shape[0]", "r"):
                yield
            return
        with k.parallel(f"{self.views[0]}.size // {self.count}", "r"):
            k.line(f"{self._row} = r // {self.inner} * {self.count}")
            k.line(f"{self._column} = r % {self.inner}")
            yield

    def at(self, view: str, c: str) -> str:
        if self.inner == 1:
            return f"{view}[r, {c}]"
        return f"{view}[{self._row} + {c}, {self._column}]"


def _softmax_kernel(log: bool):
    """Softmax (or its log) along the op's axis, lane by lane (lanes in parallel), shifted by
    the lane's maximum."""
    def kernel(k):
        lanes = _AxisLanes(k, [k.ins[0], k.out])
        x, y = lanes.views
        m, s = k.fresh("m"), k.fresh("s")
        with lanes.each():
            k.line(f"{m} = {lanes.at(x, '0')}")
            with k.block(f"for c in range(1, {lanes.count}):"):
                k.line(f"{m} = max({m}, {lanes.at(x, 'c')})")
            k.line(f"{s} = 0.0")
            xc, yc = lanes.at(x, "c"), lanes.at(y, "c")
            with k.block(f"for c in range({lanes.count}):"):
                if log:
                    k.line(f"{s} += {k.math.exp(f'{xc} - {m}')}")
                else:
                    k.line(f"{yc} = {k.math.exp(f'{xc} - {m}')}")
                    k.line(f"{s} += {yc}")
            if log:
                k.line(f"{s} = {m} + {k.math.log(s)}")
            with k.block(f"for c in range({lanes.count}):"):
                k.line(f"{yc} = {xc} - {s}" if log else f"{yc} = {yc} / {s}")
    return kernel


def _softmax_grad_kernel(log: bool):
    """The gradient from the (log-)softmax's output y and the incoming g, lane by lane."""
    def kernel(k):
        lanes = _AxisLanes(k, [k.ins[0], k.ins[1], k.out])
        y, g, out = lanes.views
        s = k.fresh("s")
        with lanes.each():
            k.line(f"{s} = 0.0")
            yc, gc, oc = (lanes.at(view, "c") for view in (y, g, out))
            with k.block(f"for c in range({lanes.count}):"):
                k.line(f"{s} += {gc}" if log else f"{s} += {gc} * {yc}")
            with k.block(f"for c in range({lanes.count}):"):
                k.line(f"{oc} = {gc} - {k.math.exp(yc)} * {s}" if log else
                       f"{oc} = {yc} * ({gc} - {s})")
    return kernel


def _maxout_kernel(k):
    """Each unit's maximum over its `pieces` consecutive features, rows independent."""
    pieces = k.attrs["pieces"]
    x, y = k.matrix(k.ins[0], k.in_types[0].shape[-1]), k.rows(k.out, k.out_type)
    m = k.fresh("m")
    with k.parallel(f"{y}.shape[0]", "r"):
        with k.block(f"for u in range({y}.shape[1]):"):
            k.line(f"{m} = {x}[r, u * {pieces}]")
            with k.block(f"for j in range(1, {pieces}):"):
                k.line(f"{m} = max({m}, {x}[r, u * {pieces} + j])")
            k.line(f"{y}[r, u] = {m}")


def _maxout_grad_kernel(k):
    """Each unit's gradient to the first piece attaining its maximum (as the forward's argmax)."""
    pieces = k.attrs["pieces"]
    x, g = k.matrix(k.ins[0], k.in_types[0].shape[-1]), k.rows(k.ins[1], k.in_types[1])
    out = k.matrix(k.out, k.out_type.shape[-1])
    m, best = k.fresh("m"), k.fresh("b")
    with k.parallel(f"{g}.shape[0]", "r"):
        with k.block(f"for u in range({g}.shape[1]):"):
            k.line(f"{m} = {x}[r, u * {pieces}]")
            k.line(f"{best} = 0")
            with k.block(f"for j in range(1, {pieces}):"):
                with k.block(f"if {x}[r, u * {pieces} + j] > {m}:"):
                    k.line(f"{m} = {x}[r, u * {pieces} + j]")
                    k.line(f"{best} = j")
            with k.block(f"for j in range({pieces}):"):
                k.line(f"{out}[r, u * {pieces} + j] = {g}[r, u] if j == {best} else {k.const(0)}")


maxout.cpu_kernel = _maxout_kernel
maxout_grad.cpu_kernel = _maxout_grad_kernel
maxout.cuda_kernel, maxout_grad.cuda_kernel = _maxout_kernel, _maxout_grad_kernel


softmax.cpu_kernel = _softmax_kernel(log=False)
log_softmax.cpu_kernel = _softmax_kernel(log=True)
softmax_grad.cpu_kernel = _softmax_grad_kernel(log=False)
log_softmax_grad.cpu_kernel = _softmax_grad_kernel(log=True)
# Lane by lane, one thread per lane on a GPU: the same templates serve the CUDA back end.
for _op in (softmax, log_softmax, softmax_grad, log_softmax_grad):
    _op.cuda_kernel = _op.cpu_kernel


# ---- ONNX export ------------------------------------------------------------------------------


def _onnx_sign(step, x):
    # ONNX's Sign gives 0 at 0; netlang's sign gives 1 there (x < 0 → −1, else 1).
    negative = step.node("Less", [x, step.scalar(0.0)])
    return step.node("Where", [negative, step.scalar(-1.0), step.scalar(1.0)])


def _onnx_gelu(step, x):
    # Written out rather than as opset 20's Gelu, so every opset the exporter offers has it.
    if step.attrs["approximate"] == "tanh":
        cube = step.node("Mul", [step.node("Mul", [x, x]), x])
        inner = step.node("Add", [x, step.node("Mul", [cube, step.scalar(_CUBIC)])])
        phi = step.node("Tanh", [step.node("Mul", [inner, step.scalar(_SQRT_2_OVER_PI)])])
    else:
        phi = step.node("Erf", [step.node("Mul", [x, step.scalar(_SQRT_HALF)])])
    half_x = step.node("Mul", [x, step.scalar(0.5)])
    return step.node("Mul", [half_x, step.node("Add", [phi, step.scalar(1.0)])])


def _onnx_softmax(op_type):
    def rule(step):
        value = step.value(0)
        axis = layout_axis(full_axis(step.in_types[0].rank, step.attrs["axis"]),
                                      value.perm)
        return laid_out(step.node(op_type, [value.name], axis=axis), value.perm)
    return rule


def _onnx_maxout(step):
    # (..., C) → (..., C/k, k), pieces of a unit adjacent, as the reference reshapes.
    rank, pieces = step.in_types[0].rank, step.attrs["pieces"]
    width = step.in_types[0].shape[-1]
    grouped = step.node("Reshape", [step.input(0),
                                    step.ints([0] * (rank - 1) + [width // pieces, pieces])])
    return step.reduce("ReduceMax", grouped, [rank], keepdims=False)


identity.onnx_rule = passthrough
sign.onnx_rule = map_elements(_onnx_sign)
threshold.onnx_rule = map_elements(lambda step, x: float_of(
    step, step.node("Greater", [x, step.scalar(step.attrs["value"])])))
sigmoid.onnx_rule = unary("Sigmoid")
tanh.onnx_rule = unary("Tanh")
relu.onnx_rule = unary("Relu")
leaky_relu.onnx_rule = lambda step: unary("LeakyRelu", alpha=step.attrs["slope"])(step)
elu.onnx_rule = lambda step: unary("Elu", alpha=step.attrs["alpha"])(step)
silu.onnx_rule = map_elements(
    lambda step, x: step.node("Mul", [x, step.node("Sigmoid", [x])]))
gelu.onnx_rule = map_elements(_onnx_gelu)
softmax.onnx_rule = _onnx_softmax("Softmax")
log_softmax.onnx_rule = _onnx_softmax("LogSoftmax")
maxout.onnx_rule = _onnx_maxout


# ---- ONNX import ------------------------------------------------------------------------------


def _read_softmax(op):
    def reader(step):
        axis, perm = per_example_axis(step, 0, step.attr("axis", -1))
        layer = step.layer(op, {"axis": axis}, [step.value(0).layer])
        return step.result(layer, perm)
    return reader


reads_onnx("Identity")(read_identity)
reads_onnx("Relu")(read_elementwise("relu"))
reads_onnx("Sigmoid")(read_elementwise("sigmoid"))
reads_onnx("Tanh")(read_elementwise("tanh"))
reads_onnx("LeakyRelu")(read_elementwise("leaky_relu",
                                         lambda step: {"slope": step.attr("alpha", 0.01)}))
reads_onnx("Elu")(read_elementwise("elu", lambda step: {"alpha": step.attr("alpha", 1.0)}))
reads_onnx("Softmax")(_read_softmax("softmax"))
reads_onnx("LogSoftmax")(_read_softmax("log_softmax"))
