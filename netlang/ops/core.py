"""Ops with no user-facing layer: graph inputs, parameters, and the transpose used by tying."""

from netlang.ir.types import TensorType
from netlang.ops.registry import define_op
from netlang.ops.schema import Arg, INTS

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
