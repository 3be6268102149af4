"""Ops with no user-facing layer: graph inputs, parameters, and the transpose used by tying."""

import numpy as np

from netlang.ir.types import TensorType
from netlang.ops.onnx_forms import transposed, with_constant
from netlang.ops.registry import define_internal, define_op, reads_onnx, same_type_as
from netlang.ops.schema import Arg, FLOAT, FLOATS, INTS

input_op = define_op("input", family="core", arity=0, operand_names=(), role="internal",
                     doc="A graph input; its type comes from the `input` statement.")


@input_op.shape
def _input_shape(ctx, attrs):
    return TensorType(tuple(attrs["shape"]), attrs["dtype"])


param_op = define_op("param", family="core", arity=0, operand_names=(), role="internal",
                     doc="A parameter or buffer tensor, created by the layer that owns it.")


@param_op.shape
def _param_shape(ctx, attrs):
    return TensorType(tuple(attrs["shape"]), "float32")


transpose_op = define_op(
    "transpose", family="core", args=[Arg("perm", INTS, doc="the new order of the axes")],
    role="internal",
    doc="Permutes the axes of a tensor; used to tie a decoder to an encoder's weight.")


@transpose_op.shape
def _transpose_shape(ctx, attrs):
    perm = attrs["perm"]
    shape = ctx.inputs[0].shape
    if sorted(perm) != list(range(len(shape))):
        ctx.fail(f"`transpose` needs a permutation of {len(shape)} axes, got {perm}")
    return ctx.inputs[0].with_shape(tuple(shape[p] for p in perm))


# ---- forward and backward ------------------------------------------------------------------


def _inverse(perm):
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return tuple(inverse)


transpose_op.forward(lambda ins, a, ctx: np.ascontiguousarray(np.transpose(ins[0], a["perm"])))
transpose_op.vjp(lambda b, node, g: [b.add("transpose", [g], perm=_inverse(b.attrs(node)["perm"]))])

zeros_like = define_internal("zeros_like", family="core", shape=same_type_as(0),
                             doc="Zeros of its operand's type (the gradient of a flat function).")
zeros_like.forward(lambda ins, a, ctx: np.zeros_like(ins[0]))

scale = define_internal("scale", family="core", shape=same_type_as(0),
                        args=[Arg("factor", FLOAT)], differentiable=True,
                        doc="Multiplies by a constant factor.")
scale.forward(lambda ins, a, ctx: (ins[0] * a["factor"]).astype(ins[0].dtype))
scale.vjp(lambda b, node, g: [b.add("scale", [g], factor=b.attrs(node)["factor"])])


def _loss_sum_shape(ctx, attrs):
    for i, t in enumerate(ctx.inputs):
        if t.shape != ():
            ctx.fail(f"`loss_sum` adds scalar losses, got {ctx.describe(i)}")
    return ctx.inputs[0]


loss_sum = define_internal("loss_sum", family="core", arity=None, shape=_loss_sum_shape,
                           args=[Arg("weights", FLOATS)], differentiable=True,
                           doc="The training objective: the weighted sum of the model's losses.")
loss_sum.forward(lambda ins, a, ctx: np.asarray(sum(w * x for w, x in zip(a["weights"], ins)),
                                                 dtype=ins[0].dtype))
loss_sum.vjp(lambda b, node, g: [b.add("scale", [g], factor=w) for w in b.attrs(node)["weights"]])

ones_like = define_internal("ones_like", family="core", shape=same_type_as(0),
                            doc="Ones of its operand's type (the seed of the backward pass).")
ones_like.forward(lambda ins, a, ctx: np.ones_like(ins[0]))


# ---- CPU kernels ------------------------------------------------------------------------------

def _transpose_kernel(k):
    if tuple(k.attrs["perm"]) != (1, 0):
        raise NotImplementedError("transpose of more than two axes")
    with k.parallel(f"{k.out}.shape[0]", "r"):
        with k.block(f"for c in range({k.out}.shape[1]):"):
            k.line(f"{k.out}[r, c] = {k.ins[0]}[c, r]")


transpose_op.cpu_kernel = _transpose_kernel
transpose_op.cuda_kernel = _transpose_kernel
zeros_like.cpu_expr = lambda a, c: c(0)
ones_like.cpu_expr = lambda a, c: c(1)
scale.cpu_expr = lambda a, c: f"{{0}} * {c(a['factor'])}"
loss_sum.cpu_expr = lambda a, c: " + ".join(f"{c(w)} * {{{i}}}" for i, w in enumerate(a["weights"]))


# ---- ONNX export (the leaves, `input` and `param`, are the exporter's own) --------------------


transpose_op.onnx_rule = lambda step: transposed(step, step.value(0), tuple(step.attrs["perm"]))
scale.onnx_rule = with_constant("Mul", "factor")


@reads_onnx("Constant", constant=True)
def _read_constant(step):
    """A constant node: its tensor, which readers take as weights or shapes."""
    if step.attr("value") is None:
        step.refuse("only a tensor `value` is read (not value_float, value_ints, ...)")
    return np.asarray(step.attr("value"))
