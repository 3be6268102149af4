"""Fully connected layers and embeddings."""

import math

from netlang.ir.types import TensorType
from netlang.ops.registry import ParamSpec, define_op
from netlang.ops.schema import Arg, BOOL, INT, LAYER

dense = define_op(
    "dense", family="dense", tie="tie",
    args=[
        Arg("units", INT, min=1, doc="output features"),
        Arg("bias", BOOL, True, doc="add a learned bias"),
        Arg("tie", LAYER, None, doc="use this dense layer's weight, transposed (tied autoencoders)"),
        Arg("share", LAYER, None, doc="use this layer's parameters (weight sharing)"),
    ],
    doc="Affine map over the last axis: `y = x W^T + b`, with W of shape (units, in) as in PyTorch. "
        "Leading axes (batch, time) are kept.")


@dense.shape
def _dense_shape(ctx, a):
    ctx.need_float(0)
    x = ctx.inputs[0]
    if x.rank < 2:
        ctx.fail(f"`dense` expects at least one feature axis, got {ctx.describe(0)}")
    weight = ctx.inputs[1]
    if weight.shape != (a["units"], x.shape[-1]):
        ctx.fail(f"`dense` weight of shape {weight} does not map {x.shape[-1]} input features "
                 f"to {a['units']} units: input is {ctx.describe(0)}, weight is {ctx.describe(1)}")
    return x.with_shape(x.shape[:-1] + (a["units"],))


@dense.params
def _dense_params(inputs, a):
    fan_in = inputs[0].shape[-1]
    specs = [ParamSpec("weight", (a["units"], fan_in), "glorot_uniform", fan_in, a["units"])]
    if a["bias"]:
        specs.append(ParamSpec("bias", (a["units"],), "zeros", fan_in, a["units"]))
    return specs


@dense.macs
def _dense_macs(inputs, out, a):
    return math.prod(out.sample_shape) * inputs[0].shape[-1]


embedding = define_op(
    "embedding", family="dense",
    args=[
        Arg("vocab", INT, min=1, doc="number of distinct token ids"),
        Arg("dim", INT, min=1, doc="size of each embedding vector"),
        Arg("share", LAYER, None, doc="use this layer's parameters (weight sharing)"),
    ],
    doc="Looks up a learned vector for each integer token id: (..., ) → (..., dim).")


@embedding.shape
def _embedding_shape(ctx, a):
    ctx.need_int(0, "integer token ids")
    x = ctx.inputs[0]
    return TensorType(x.shape + (a["dim"],), "float32")


@embedding.params
def _embedding_params(inputs, a):
    return [ParamSpec("weight", (a["vocab"], a["dim"]), "normal", a["vocab"], a["dim"])]
