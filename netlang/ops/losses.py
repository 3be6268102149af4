"""Losses: each maps (prediction, target) to a scalar, averaged over the batch.

The batch mean is taken over the leading batch axis and, for sequence outputs,
over time too; the per-example sums follow the textbook definitions in
docs/language.md.  Where PyTorch's default differs (squared error), both are
offered.
"""

from netlang.ir.types import TensorType
from netlang.ops.registry import define_op
from netlang.ops.schema import Arg, BOOL, FLOAT

SCALAR = TensorType((), "float32")


def _loss(name, doc, args=()):
    return define_op(name, family="loss", arity=2, operand_names=("prediction", "target"),
                     role="loss", doc=doc, args=args)


def _class_scores_and_target(ctx, what):
    """Scores (..., C) with integer labels (...) or a float target (..., C) of the same shape."""
    scores, target = ctx.inputs
    ctx.need_float(0)
    if not scores.batched or scores.rank < 2:
        ctx.fail(f"`{ctx.op.name}` expects {what} with a class axis, got {ctx.describe(0)}")
    if target.is_float:
        if target.shape != scores.shape:
            ctx.fail(f"`{ctx.op.name}` needs a target of the prediction's shape or integer labels: "
                     f"prediction {ctx.describe(0)}, target {ctx.describe(1)}")
    elif target.shape != scores.shape[:-1]:
        ctx.fail(f"`{ctx.op.name}` labels must have the prediction's shape without its class axis: "
                 f"prediction {ctx.describe(0)}, labels {ctx.describe(1)}")
    return SCALAR


def _same_shape_target(ctx, a):
    """Prediction and target of one shape; integer labels stand for one-hot rows or, for a single
    output unit, for the target value itself."""
    pred, target = ctx.inputs
    ctx.need_float(0)
    if not pred.batched:
        ctx.fail(f"`{ctx.op.name}` expects a batched prediction, got {ctx.describe(0)}")
    if target.shape == pred.shape:
        return SCALAR
    if not target.is_float and target.shape == pred.shape[:-1]:
        return SCALAR
    ctx.fail(f"`{ctx.op.name}` needs a target of the prediction's shape: prediction "
             f"{ctx.describe(0)}, target {ctx.describe(1)}")


cross_entropy = _loss(
    "cross_entropy",
    "Softmax cross-entropy on raw scores (logits): -log softmax(s)_y per example, averaged. "
    "The target is integer labels or a probability vector per example. Softmax is applied "
    "inside the loss, so the model outputs raw scores.",
    [Arg("label_smoothing", FLOAT, 0.0, min=0.0, max=1.0)])
cross_entropy.shape(lambda ctx, a: _class_scores_and_target(ctx, "scores"))

binary_cross_entropy = _loss(
    "binary_cross_entropy",
    "-t log p - (1 - t) log(1 - p) summed over outputs, averaged over the batch. With "
    "`logits=true` the prediction is a pre-sigmoid score (stable; PyTorch's BCEWithLogits).",
    [Arg("logits", BOOL, False, doc="the prediction is a raw score, not a probability")])
binary_cross_entropy.shape(_same_shape_target)

squared_error = _loss(
    "squared_error",
    "The textbook squared error ½ Σ_j (t_j - y_j)² per example, averaged over the batch.")
squared_error.shape(_same_shape_target)

mse = _loss("mse", "PyTorch's MSELoss: the mean of (t - y)² over every element.")
mse.shape(_same_shape_target)

hinge = _loss(
    "hinge",
    "Multiclass SVM loss Σ_{j≠y} max(0, s_j - s_y + margin) per example, averaged over the batch.",
    [Arg("margin", FLOAT, 1.0, min=0.0)])


@hinge.shape
def _hinge_shape(ctx, a):
    _class_scores_and_target(ctx, "class scores")
    if ctx.inputs[1].is_float:
        ctx.fail(f"`hinge` needs integer labels, got {ctx.inputs[1].dtype} {ctx.describe(1)}")
    return SCALAR


# ---- forward and backward ------------------------------------------------------------------
#
# Each loss has one backward op, (prediction, target, g) -> d prediction, which fuses the
# whole chain rule of the loss (softmax + cross-entropy gives the stable `p − t`).

import numpy as np  # noqa: E402

from netlang.ops.registry import define_internal, same_type_as  # noqa: E402


def _positions(pred) -> int:
    """Examples (and time steps) the class losses average over."""
    return int(np.prod(pred.shape[:-1]))


def _class_target(pred, target, smoothing=0.0):
    """A probability target of pred's shape from labels or probabilities."""
    classes = pred.shape[-1]
    if np.issubdtype(target.dtype, np.integer):
        dense = np.zeros(pred.shape, dtype=pred.dtype)
        np.put_along_axis(dense, target[..., None].astype(np.int64), 1.0, axis=-1)
    else:
        dense = target.astype(pred.dtype)
    if smoothing:
        dense = dense * (1 - smoothing) + smoothing / classes
    return dense


def _value_target(pred, target):
    """Integer labels as targets of a same-shape loss: the value for one output unit, else one-hot."""
    if target.shape == pred.shape:
        return target.astype(pred.dtype)
    if pred.shape[-1] == 1:
        return target.reshape(pred.shape).astype(pred.dtype)
    return _class_target(pred, target)


def _log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _ce_forward(ins, a, ctx):
    logits, target = ins
    t = _class_target(logits, target, a["label_smoothing"])
    return np.asarray(-(t * _log_softmax(logits)).sum() / _positions(logits), dtype=logits.dtype)


def _ce_grad(ins, a, ctx):
    logits, target, g = ins
    t = _class_target(logits, target, a["label_smoothing"])
    return (np.exp(_log_softmax(logits)) - t) * (g / _positions(logits))


def _batch(pred) -> int:
    return pred.shape[0]


def _bce_forward(ins, a, ctx):
    pred, target = ins
    t = _value_target(pred, target)
    if a["logits"]:
        # log(1 + e^-|s|) form: stable for scores of any size.
        loss = np.maximum(pred, 0) - pred * t + np.log1p(np.exp(-np.abs(pred)))
    else:
        # PyTorch clamps each log at -100 so a saturated probability gives a finite loss.
        loss = -(t * np.maximum(np.log(pred), -100) + (1 - t) * np.maximum(np.log1p(-pred), -100))
    return np.asarray(loss.sum() / _batch(pred), dtype=pred.dtype)


def _bce_grad(ins, a, ctx):
    pred, target, g = ins
    t = _value_target(pred, target)
    if a["logits"]:
        p = 1 / (1 + np.exp(-pred))
        return (p - t) * (g / _batch(pred))
    eps = 1e-12
    return (pred - t) / np.maximum(pred * (1 - pred), eps) * (g / _batch(pred))


def _se_forward(ins, a, ctx):
    pred, target = ins
    d = pred - _value_target(pred, target)
    return np.asarray(0.5 * (d * d).sum() / _batch(pred), dtype=pred.dtype)


def _se_grad(ins, a, ctx):
    pred, target, g = ins
    return (pred - _value_target(pred, target)) * (g / _batch(pred))


def _mse_forward(ins, a, ctx):
    pred, target = ins
    d = pred - _value_target(pred, target)
    return np.asarray((d * d).mean(), dtype=pred.dtype)


def _mse_grad(ins, a, ctx):
    pred, target, g = ins
    return (pred - _value_target(pred, target)) * (2 * g / pred.size)


def _hinge_margins(scores, labels, margin):
    correct = np.take_along_axis(scores, labels[..., None].astype(np.int64), axis=-1)
    margins = np.maximum(0, scores - correct + margin)
    np.put_along_axis(margins, labels[..., None].astype(np.int64), 0, axis=-1)
    return margins


def _hinge_forward(ins, a, ctx):
    scores, labels = ins
    return np.asarray(_hinge_margins(scores, labels, a["margin"]).sum() / _positions(scores),
                      dtype=scores.dtype)


def _hinge_grad(ins, a, ctx):
    scores, labels, g = ins
    active = (_hinge_margins(scores, labels, a["margin"]) > 0).astype(scores.dtype)
    count = active.sum(axis=-1, keepdims=True)
    np.put_along_axis(active, labels[..., None].astype(np.int64), -count, axis=-1)
    return active * (g / _positions(scores))


for _loss_op, _fwd, _grad in ((cross_entropy, _ce_forward, _ce_grad),
                              (binary_cross_entropy, _bce_forward, _bce_grad),
                              (squared_error, _se_forward, _se_grad),
                              (mse, _mse_forward, _mse_grad),
                              (hinge, _hinge_forward, _hinge_grad)):
    _loss_op.forward(_fwd)
    _grad_op = define_internal(f"{_loss_op.name}_grad", family="loss", arity=3,
                               shape=same_type_as(0), args=_loss_op.args,
                               doc=f"The gradient of `{_loss_op.name}` with respect to its prediction.")
    _grad_op.forward(_grad)

    def _vjp(b, node, g, _name=f"{_loss_op.name}_grad"):
        prediction, target = b.operands(node)
        return [b.add(_name, [prediction, target, g], **b.attrs(node)), None]
    _loss_op.vjp(_vjp)
