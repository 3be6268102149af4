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
