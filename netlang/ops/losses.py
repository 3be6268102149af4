"""Losses: each maps (prediction, target) to a scalar, averaged over the batch.

The batch mean is taken over the leading batch axis and, for sequence outputs,
over time too; the per-example sums follow the textbook definitions in
docs/language.md.  Where PyTorch's default differs (squared error), both are
offered.  The losses that compare no prediction with a target (`kl_normal`, and
`batch_mean`, which makes any per-example scalar a loss term) are in
netlang/ops/loss_terms.py.
"""

import numpy as np

from netlang.ir.types import TensorType
from netlang.ops.registry import OPS, define_internal, define_op, same_type_as
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


def _label_bound(index, a, in_types):
    """An integer target labels one of the prediction's classes (its last axis)."""
    return int(in_types[0].shape[-1]) if index == 1 else None


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
cross_entropy.document(
    shape="prediction: raw scores `(..., C)` with a class axis; target: integer labels "
          "`(...)` (the prediction's shape without its class axis) or a float probability "
          "vector of the prediction's shape. The result is a scalar: the mean over the batch "
          "(and over time for sequences).",
    params=None,
    example="input image: [784]\ninput label: int32[]\n"
            "output logits = image -> dense(10)\n"
            "train { loss cross_entropy(logits, label, label_smoothing = 0.1) }")
cross_entropy.shape(lambda ctx, a: _class_scores_and_target(ctx, "scores"))
cross_entropy.class_reading = "scores"
cross_entropy.integer_bound = _label_bound

binary_cross_entropy = _loss(
    "binary_cross_entropy",
    "-t log p - (1 - t) log(1 - p) summed over outputs, averaged over the batch. With "
    "`logits=true` the prediction is a pre-sigmoid score (stable; PyTorch's BCEWithLogits).",
    [Arg("logits", BOOL, False, doc="the prediction is a raw score, not a probability")])
binary_cross_entropy.document(
    shape="a target of the prediction's shape; or integer labels of the prediction's shape "
          "without its last axis, which stand for one-hot rows or, when that axis has one "
          "unit, for the target value itself. Scalar result.",
    params=None,
    example="input x: [2]\ninput label: int32[]\n"
            "output score = x -> dense(1)\n"
            "train { loss binary_cross_entropy(score, label, logits = true) }")
binary_cross_entropy.shape(_same_shape_target)
binary_cross_entropy.class_reading = "probability"

squared_error = _loss(
    "squared_error",
    "The textbook squared error ½ Σ_j (t_j - y_j)² per example, averaged over the batch.")
squared_error.document(
    shape="as `binary_cross_entropy`. Scalar result.",
    params=None,
    example="input x: [784]\noutput recon = x -> dense(32) -> relu -> dense(784)\n"
            "train { loss squared_error(recon, x) }")
squared_error.shape(_same_shape_target)
squared_error.class_reading = "value"

mse = _loss("mse", "PyTorch's MSELoss: the mean of (t - y)² over every element.")
mse.document(
    shape="as `binary_cross_entropy`. Scalar result.",
    params=None,
    example="input x: [3]\ninput y: [1]\noutput pred = x -> dense(1)\ntrain { loss mse(pred, y) }")
mse.shape(_same_shape_target)
mse.class_reading = "value"

hinge = _loss(
    "hinge",
    "Multiclass SVM loss Σ_{j≠y} max(0, s_j - s_y + margin) per example, averaged over the batch.",
    [Arg("margin", FLOAT, 1.0, min=0.0)])
hinge.document(
    shape="prediction: class scores `(..., C)`; target: integer labels `(...)` only. "
          "Scalar result.",
    params=None,
    example="input x: [2]\ninput label: int32[]\noutput scores = x -> dense(3)\n"
            "train { loss hinge(scores, label, margin = 1) }")
hinge.class_reading = "scores"
hinge.integer_bound = _label_bound


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
    # d/ds of -Σ t·log softmax(s) is softmax(s)·Σt − t: the familiar p − t when t sums to one.
    p = np.exp(_log_softmax(logits))
    return (p * t.sum(axis=-1, keepdims=True) - t) * (g / _positions(logits))


def _batch(pred) -> int:
    return pred.shape[0]


def _bce_forward(ins, a, ctx):
    pred, target = ins
    t = _value_target(pred, target)
    if a["logits"]:
        # log(1 + e^-|s|) form: stable for scores of any size.
        loss = np.maximum(pred, 0) - pred * t + np.log1p(np.exp(-np.abs(pred)))
    else:
        # PyTorch clamps each log at -100 so a saturated probability gives a finite loss; the
        # log of an exact 0 or 1 is that clamp's business, not a warning for the user.
        with np.errstate(divide="ignore"):
            loss = -(t * np.maximum(np.log(pred), -100)
                     + (1 - t) * np.maximum(np.log1p(-pred), -100))
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


# ---- CPU kernels ------------------------------------------------------------------------------
#
# Losses accumulate in float64 (a batch sum of float32 terms loses digits otherwise).  A
# cross-entropy and its gradient are computed in one pass when the fusion pass pairs them:
# the loss kernel writes (softmax − target) / rows into the gradient's buffer, and the
# gradient kernel only scales it by the incoming g.

def _target_reader(k, pred_type, target_var, target_type):
    """A function (row, col) -> source of the target value as the loss sees it."""
    if target_type.shape == pred_type.shape:
        t = k.rows(target_var, target_type)
        return lambda r, c: f"F({t}[{r}, {c}])"
    labels = k.flat(target_var)
    if pred_type.shape[-1] == 1 and target_type.shape == pred_type.shape[:-1]:
        return lambda r, c: f"F({labels}[{r}])"
    return lambda r, c: f"(F(1.0) if {labels}[{r}] == {c} else F(0.0))"


def _ce_kernel(k, with_loss: bool, grad_var=None):
    """Softmax cross-entropy over rows: the loss into k.out[0] and/or the gradient into grad_var.
    Rows are independent (a thread each on a GPU); the loss is a reduction over them."""
    z = k.rows(k.ins[0], k.in_types[0])
    target = _target_reader(k, k.in_types[0], k.ins[1], k.in_types[1])
    eps = k.attrs["label_smoothing"]
    classes = k.in_types[0].shape[-1]
    soft = k.in_types[1].is_float
    m, s, lse, tv = (k.fresh(p) for p in ("m", "s", "lse", "tv"))
    grad = k.rows(grad_var, k.in_types[0]) if grad_var else None
    g = f"{k.ins[2]}[0]" if not with_loss else "1.0"

    def row(total):
        k.line(f"{m} = {z}[r, 0]")
        with k.block(f"for c in range(1, {z}.shape[1]):"):
            k.line(f"{m} = max({m}, {z}[r, c])")
        k.line(f"{s} = 0.0")
        with k.block(f"for c in range({z}.shape[1]):"):
            k.line(f"{s} += {k.math.exp(f'{z}[r, c] - {m}')}")
        k.line(f"{lse} = {m} + {k.math.log(s)}")
        # d/dz of −Σ t·log softmax(z) is softmax·Σt − t; Σt is 1 for labels but not for any
        # float target (an unnormalised weighting is allowed).
        tsum = "1.0"
        if soft:
            tsum = k.fresh("ts")
            k.line(f"{tsum} = 0.0")
            with k.block(f"for c in range({z}.shape[1]):"):
                k.line(f"{tsum} += {target('r', 'c')}")
            if eps:
                k.line(f"{tsum} = {tsum} * {1 - eps!r} + {eps!r}")
        with k.block(f"for c in range({z}.shape[1]):"):
            k.line(f"{tv} = {target('r', 'c')}")
            if eps:
                k.line(f"{tv} = {tv} * {1 - eps!r} + {eps / classes!r}")
            if total is not None:
                k.line(f"{total} += {tv} * ({lse} - {z}[r, c])")
            if grad:
                k.line(f"{grad}[r, c] = ({k.math.exp(f'{z}[r, c] - {lse}')} * {tsum} - {tv}) * "
                       f"({g} / {z}.shape[0])")

    if with_loss:
        k.reduction(f"{z}.shape[0]", "r", row,
                    lambda total: k.line(f"{k.out}[0] = {total} / {z}.shape[0]"))
    else:
        with k.parallel(f"{z}.shape[0]", "r"):
            row(None)


def _ce_loss_kernel(k):
    paired = [grad for grad, loss in k.program.fusion.paired.items() if loss == k.node]
    _ce_kernel(k, with_loss=True, grad_var=k.program.var(paired[0]) if paired else None)


def _ce_grad_kernel(k):
    if k.paired_loss is not None:
        f, g = k.flat(k.out), k.ins[2]
        with k.parallel(f"{f}.size", "i"):
            k.line(f"{f}[i] *= {g}[0]")
        return
    _ce_kernel(k, with_loss=False, grad_var=k.out)


def rowwise_loss_kernels(term, grad, normaliser):
    """A loss or gradient that is a sum over elements of term(p, t) or an elementwise grad(p, t)."""
    def loss_kernel(k):
        p = k.rows(k.ins[0], k.in_types[0])
        target = _target_reader(k, k.in_types[0], k.ins[1], k.in_types[1])
        pv, tv = k.fresh("p"), k.fresh("tv")

        def row(total):
            with k.block(f"for c in range({p}.shape[1]):"):
                k.line(f"{pv} = {p}[r, c]")
                k.line(f"{tv} = {target('r', 'c')}")
                k.line(f"{total} += {term(pv, tv, k.attrs, k.math)}")
        k.reduction(f"{p}.shape[0]", "r", row,
                    lambda total: k.line(f"{k.out}[0] = {total} / ({normaliser(k, p)})"))

    def grad_kernel(k):
        p, out = k.rows(k.ins[0], k.in_types[0]), k.rows(k.out, k.out_type)
        target = _target_reader(k, k.in_types[0], k.ins[1], k.in_types[1])
        pv, tv, scale = k.fresh("p"), k.fresh("tv"), k.fresh("sc")
        with k.parallel(f"{p}.shape[0]", "r"):
            k.line(f"{scale} = {k.ins[2]}[0] / ({normaliser(k, p)})")
            with k.block(f"for c in range({p}.shape[1]):"):
                k.line(f"{pv} = {p}[r, c]")
                k.line(f"{tv} = {target('r', 'c')}")
                k.line(f"{out}[r, c] = ({grad(pv, tv, k.attrs, k.math)}) * {scale}")
    return loss_kernel, grad_kernel


def per_example(k, rows):
    """Normaliser of a loss averaged over the examples of the batch."""
    return f"{k.ins[0]}.shape[0]"


def _per_element(k, rows):
    return f"{k.ins[0]}.size"


def _bce_term(p, t, a, m):
    if a["logits"]:
        return f"max({p}, 0.0) - {p} * {t} + {m.log1p(m.exp(f'-abs({p})'))}"
    return (f"-({t} * max({m.log(p)}, -100.0) + (1.0 - {t}) * max({m.log1p('-' + p)}, -100.0))")


def _bce_grad(p, t, a, m):
    if a["logits"]:
        return f"1.0 / (1.0 + {m.exp('-' + p)}) - {t}"
    return f"({p} - {t}) / max({p} * (1.0 - {p}), 1e-12)"


for _op, _term, _grad, _norm in (
        (binary_cross_entropy, _bce_term, _bce_grad, per_example),
        (squared_error, lambda p, t, a, m: f"0.5 * ({p} - {t}) * ({p} - {t})",
         lambda p, t, a, m: f"{p} - {t}", per_example),
        (mse, lambda p, t, a, m: f"({p} - {t}) * ({p} - {t})",
         lambda p, t, a, m: f"2.0 * ({p} - {t})", _per_element)):
    _op.cpu_kernel, OPS[f"{_op.name}_grad"].cpu_kernel = rowwise_loss_kernels(_term, _grad, _norm)

cross_entropy.cpu_kernel = _ce_loss_kernel


def _hinge_kernels():
    """Multiclass hinge, row by row: Σ_{c ≠ y} max(0, s_c − s_y + margin), and its gradient
    (1 for each violating class, minus their count at the label), both over the row count."""
    def margins(k, s, labels, each):
        correct, label, m = k.fresh("sy"), k.fresh("y"), k.fresh("m")
        k.line(f"{label} = {labels}[r]")
        k.line(f"{correct} = {s}[r, {label}]")
        with k.block(f"for c in range({s}.shape[1]):"):
            k.line(f"{m} = {s}[r, c] - {correct} + {k.const(k.attrs['margin'])}")
            each(label, m)

    def loss_kernel(k):
        s, labels = k.rows(k.ins[0], k.in_types[0]), k.flat(k.ins[1])

        def row(total):
            def each(label, m):
                with k.block(f"if c != {label} and {m} > 0:"):
                    k.line(f"{total} += {m}")
            margins(k, s, labels, each)
        k.reduction(f"{s}.shape[0]", "r", row,
                    lambda total: k.line(f"{k.out}[0] = {total} / {s}.shape[0]"))

    def grad_kernel(k):
        s, labels = k.rows(k.ins[0], k.in_types[0]), k.flat(k.ins[1])
        out = k.rows(k.out, k.out_type)
        scale, count = k.fresh("sc"), k.fresh("n")
        with k.parallel(f"{s}.shape[0]", "r"):
            k.line(f"{scale} = {k.ins[2]}[0] / {s}.shape[0]")
            k.line(f"{count} = 0")

            def each(label, m):
                with k.block(f"if c != {label} and {m} > 0:"):
                    k.line(f"{out}[r, c] = {scale}")
                    k.line(f"{count} += 1")
                with k.block("else:"):
                    k.line(f"{out}[r, c] = {k.const(0)}")
            margins(k, s, labels, each)
            k.line(f"{out}[r, {labels}[r]] = -{count} * {scale}")
    return loss_kernel, grad_kernel


hinge.cpu_kernel, OPS["hinge_grad"].cpu_kernel = _hinge_kernels()
hinge.cuda_kernel, OPS["hinge_grad"].cuda_kernel = hinge.cpu_kernel, OPS["hinge_grad"].cpu_kernel
OPS["cross_entropy_grad"].cpu_kernel = _ce_grad_kernel
# The loss kernel writes the gradient's softmax too when both read the same operands.
OPS["cross_entropy_grad"].paired_loss = "cross_entropy"
# Written with k.parallel and k.reduction only: the same templates serve the CUDA back end.
for _op in (cross_entropy, binary_cross_entropy, squared_error, mse):
    _op.cuda_kernel = _op.cpu_kernel
    OPS[f"{_op.name}_grad"].cuda_kernel = OPS[f"{_op.name}_grad"].cpu_kernel
