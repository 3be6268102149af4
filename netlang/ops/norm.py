"""Normalisation and dropout."""

from netlang.ops.registry import ParamSpec, define_op, elementwise_same
from netlang.ops.schema import Arg, FLOAT, INT, LAYER

batchnorm = define_op(
    "batchnorm", family="norm",
    args=[
        Arg("momentum", FLOAT, 0.1, min=0.0, max=1.0, doc="weight of the new batch in the running statistics"),
        Arg("eps", FLOAT, 1e-5, min=0.0, exclusive_min=True),
        Arg("share", LAYER, None, doc="use this layer's parameters"),
    ],
    doc="Normalises each channel (last axis) by batch statistics in training and running "
        "statistics in evaluation, then scales and shifts: weight and bias of shape (C,); "
        "running_mean and running_var are buffers, not counted as parameters.")


@batchnorm.shape
def _batchnorm_shape(ctx, a):
    ctx.need_float(0)
    if ctx.inputs[0].rank < 2:
        ctx.fail(f"`batchnorm` needs a channel axis, got {ctx.describe(0)}")
    return ctx.inputs[0]


@batchnorm.params
def _batchnorm_params(inputs, a):
    c = inputs[0].shape[-1]
    # The scale is not penalised: shrinking it towards zero fights the normalisation.
    return [ParamSpec("weight", (c,), "ones", penalise=False), ParamSpec("bias", (c,), "zeros"),
            ParamSpec("running_mean", (c,), "zeros", buffer=True),
            ParamSpec("running_var", (c,), "ones", buffer=True)]


lrn = define_op(
    "lrn", family="norm",
    args=[
        Arg("size", INT, 5, min=1, doc="channels in each normalisation window"),
        Arg("alpha", FLOAT, 1e-4, min=0.0),
        Arg("beta", FLOAT, 0.75, min=0.0),
        Arg("k", FLOAT, 2.0, min=0.0),
    ],
    doc="Local response normalisation across channels (AlexNet, GoogLeNet): "
        "x / (k + alpha/size · sum of x² over `size` neighbouring channels)^beta, as PyTorch.")


@lrn.shape
def _lrn_shape(ctx, a):
    ctx.need_float(0)
    ctx.need_rank(0, (3, 4), "a channel axis (C,) after spatial axes")
    return ctx.inputs[0]


dropout = define_op(
    "dropout", family="norm",
    args=[Arg("rate", FLOAT, 0.5, min=0.0, max=1.0, doc="probability of dropping a unit "
              "(PyTorch's convention; the lectures' keep probability p is 1 - rate)")],
    doc="Inverted dropout: in training zeroes each unit with probability `rate` and scales the "
        "rest by 1/(1 - rate); in evaluation passes its input through.")
dropout.shape(elementwise_same)


# ---- forward and backward ------------------------------------------------------------------

import numpy as np  # noqa: E402

from netlang.ops.registry import define_internal, same_type_as  # noqa: E402


def _dropout_forward(ins, a, ctx):
    x = ins[0]
    if ctx.mode != "train" or a["rate"] == 0:
        return x
    return x * dropout_mask_array(x.shape, a["rate"], ctx.rng, x.dtype)


def dropout_mask_array(shape, rate, rng, dtype):
    """Inverted dropout's mask: 0 with probability `rate`, else 1/(1 − rate)."""
    if rate >= 1:
        return np.zeros(shape, dtype=dtype)
    keep = rng.random(shape, dtype=np.float32 if dtype == np.float32 else np.float64) >= rate
    return keep.astype(dtype) / np.asarray(1 - rate, dtype=dtype)


dropout.forward(_dropout_forward)

dropout_mask = define_internal(
    "dropout_mask", family="norm", shape=same_type_as(0), args=dropout.args,
    doc="A fresh inverted-dropout mask of its operand's shape each training step. The training "
        "graph writes dropout(x) as x · dropout_mask(x), so the backward pass reuses the mask.")
# Outside training (the engine's evaluation loss) the mask is all ones: dropout is the identity.
dropout_mask.forward(lambda ins, a, ctx: dropout_mask_array(ins[0].shape, a["rate"], ctx.rng,
                                                             ins[0].dtype)
                     if ctx.mode == "train" else np.ones_like(ins[0]))
# In the training graph dropout has become a product with its mask (see passes/training.py);
# this rule serves graphs differentiated in evaluation mode, where dropout is the identity.
dropout.vjp(lambda b, node, g: [g])


# ---- CPU kernels ------------------------------------------------------------------------------
# In evaluation dropout is the identity (a view); in training the graph has replaced it by a
# product with its mask, which the engine draws and passes in.
dropout.cpu_view = True
