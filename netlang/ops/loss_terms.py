"""Loss terms that compare no prediction with a target: `kl_normal`, and `batch_mean`.

`kl_normal(mu, logvar)` is the Kullback-Leibler divergence of the diagonal Gaussian
N(mu, exp(logvar)) from the standard normal N(0, 1), summed over an example's features and
averaged over the batch: the latent term of a variational autoencoder's objective.

`batch_mean` is the loss a train section makes of any tensor expression whose value per
example is a scalar (`loss softplus(-score)`): the mean of that value over the batch.  The
expression's own ops are ordinary graph ops; only the average over the batch is a loss.  It
is internal: a user writes the expression, never `batch_mean` (netlang/lower/loss_terms.py
adds it).

Both accumulate in float64 like the other losses, with kernels written with `k.parallel`
and `k.reduction` only, so the same templates serve the CPU and the CUDA renderer.
"""

import numpy as np

from netlang.ops.losses import SCALAR, per_example, rowwise_loss_kernels
from netlang.ops.registry import define_internal, define_op, same_type_as
from netlang.ops.schema import Arg, enum

kl_normal = define_op(
    "kl_normal", family="loss", arity=2, operand_names=("mu", "logvar"), role="loss",
    doc="KL(N(mu, exp(logvar)) ‖ N(0, 1)) = Σ_j −½(1 + logvar_j − mu_j² − exp(logvar_j)) per "
        "example, averaged over the batch: the latent term of a variational autoencoder.")
kl_normal.document(
    shape="`mu` and `logvar`: floating-point tensors of one shape with a feature axis (the "
          "mean and the log-variance of each latent unit). Scalar result.",
    params=None,
    example="input image: [784]\nh = image -> dense(400) -> relu\nmu = h -> dense(20)\n"
            "logvar = h -> dense(20)\noutput x_hat = mu -> dense(400) -> relu -> dense(784) "
            "-> sigmoid\n"
            "train { loss binary_cross_entropy(x_hat, image) + kl_normal(mu, logvar) }")


@kl_normal.shape
def _kl_normal_shape(ctx, a):
    mu, logvar = ctx.inputs
    ctx.need_float(0)
    ctx.need_float(1)
    if not mu.batched or mu.rank < 2:
        ctx.fail(f"`kl_normal` expects a batched `mu` with a feature axis, got {ctx.describe(0)}")
    if mu != logvar:
        ctx.fail(f"`kl_normal` needs `mu` and `logvar` of one shape and dtype: mu "
                 f"{ctx.describe(0)}, logvar {ctx.describe(1)}")
    return SCALAR


@kl_normal.forward
def _kl_normal_forward(ins, a, ctx):
    mu, logvar = ins
    per_unit = -0.5 * (1.0 + logvar - mu * mu - np.exp(logvar))
    return np.asarray(per_unit.sum() / mu.shape[0], dtype=mu.dtype)


kl_normal_grad = define_internal(
    "kl_normal_grad", family="loss", arity=3, shape=same_type_as(0),
    args=[Arg("wrt", enum("mu", "logvar"), doc="the operand differentiated")],
    doc="(mu, logvar, g) → the gradient of `kl_normal` with respect to `wrt`: g·mu / batch for "
        "mu, g·½(exp(logvar) − 1) / batch for logvar.")


@kl_normal_grad.forward
def _kl_normal_grad_forward(ins, a, ctx):
    mu, logvar, g = ins
    local = mu if a["wrt"] == "mu" else 0.5 * (np.exp(logvar) - 1.0)
    return (local * (g / mu.shape[0])).astype(mu.dtype)


@kl_normal.vjp
def _kl_normal_vjp(b, node, g):
    mu, logvar = b.operands(node)
    return [b.add("kl_normal_grad", [mu, logvar, g], wrt=wrt) for wrt in ("mu", "logvar")]


def _kl_term(mu, logvar, a, m):
    return f"-0.5 * (1.0 + {logvar} - {mu} * {mu} - {m.exp(logvar)})"


def _kl_local_grad(mu, logvar, a, m):
    return mu if a["wrt"] == "mu" else f"0.5 * ({m.exp(logvar)} - 1.0)"


# `logvar` plays the target's part in the row-wise loss templates: it has mu's shape.
kl_normal.cpu_kernel, kl_normal_grad.cpu_kernel = rowwise_loss_kernels(_kl_term, _kl_local_grad,
                                                                        per_example)
kl_normal.cuda_kernel, kl_normal_grad.cuda_kernel = kl_normal.cpu_kernel, kl_normal_grad.cpu_kernel


# ---- batch_mean: a per-example scalar as a loss term ------------------------------------------

batch_mean = define_internal(
    "batch_mean", family="loss", differentiable=True,
    doc="The mean over the batch of a value that is a scalar per example (shape [] or [1]): a "
        "loss term written as an expression.")


@batch_mean.shape
def _batch_mean_shape(ctx, a):
    x = ctx.inputs[0]
    ctx.need_float(0)
    if not x.batched or x.sample_shape not in ((), (1,)):
        ctx.fail(f"a loss term must be a scalar per example (shape [] or [1]), got "
                 f"{ctx.describe(0)}")
    return SCALAR


batch_mean.forward(lambda ins, a, ctx: np.asarray(ins[0].sum() / ins[0].shape[0],
                                                  dtype=ins[0].dtype))

batch_mean_grad = define_internal(
    "batch_mean_grad", family="loss", arity=2, shape=same_type_as(0),
    doc="(x, g) → g / batch in every element of x's type (the gradient of `batch_mean`).")
batch_mean_grad.forward(lambda ins, a, ctx: np.full_like(ins[0], ins[1] / ins[0].shape[0]))
batch_mean.vjp(lambda b, node, g: [b.add("batch_mean_grad", [b.operands(node)[0], g])])


def _batch_mean_kernel(k):
    x = k.flat(k.ins[0])
    k.reduction(f"{x}.size", "i", lambda total: k.line(f"{total} += {x}[i]"),
                lambda total: k.line(f"{k.out}[0] = {total} / {k.ins[0]}.shape[0]"))


def _batch_mean_grad_kernel(k):
    out = k.flat(k.out)
    with k.parallel(f"{out}.size", "i"):
        k.line(f"{out}[i] = {k.ins[1]}[0] / {k.out}.shape[0]")


batch_mean.cpu_kernel = batch_mean.cuda_kernel = _batch_mean_kernel
batch_mean_grad.cpu_kernel = batch_mean_grad.cuda_kernel = _batch_mean_grad_kernel
