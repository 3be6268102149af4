"""Fully connected layers and embeddings."""

import math

import numpy as np

from netlang.ir.types import TensorType
from netlang.ops.init import init_args
from netlang.ops.onnx_forms import laid_out
from netlang.ops.registry import ParamSpec, always, define_internal, define_op, reads_onnx
from netlang.ops.schema import Arg, BOOL, INT, LAYER

dense = define_op(
    "dense", family="dense", tie="tie",
    args=[
        Arg("units", INT, min=1, doc="output features"),
        Arg("bias", BOOL, True, doc="add a learned bias"),
        Arg("tie", LAYER, None, doc="use this dense layer's weight, transposed (tied autoencoders)"),
        Arg("share", LAYER, None, doc="use this layer's parameters (weight sharing)"),
        *init_args("glorot_uniform"),
    ],
    doc="Affine map over the last axis: `y = x W^T + b`, with W of shape (units, in) as in PyTorch. "
        "Leading axes (batch, time) are kept.")
dense.document(
    shape="`(..., in)` → `(..., units)`: maps the last axis and keeps the others (time "
          "steps of a sequence included). Floating-point input with at least one feature "
          "axis; flatten images first.",
    params="`weight` `(units, in)` (`init`, Glorot uniform by default, with fans `in` and "
           "`units`), `bias` `(units,)` (zeros) unless "
           "`bias = false`. With `tie = other`, the weight is `other`'s weight transposed and "
           "only the bias is new; `other` must be a `dense` layer whose weight is `(in, units)`.",
    example="input x: [784]\noutput h = x -> dense(256, bias = false) -> dense(10)")
# In evaluation, a batch norm after a dense layer folds into its weight and bias.
dense.foldable_product = True
# Each step of a sequence is mapped alone (passes/stepping.py).
dense.step_local = always


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
    specs = [ParamSpec("weight", (a["units"], fan_in), a["init"], fan_in, a["units"], a["gain"])]
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
        *init_args("normal"),
    ],
    doc="Looks up a learned vector for each integer token id: (..., ) → (..., dim).")
embedding.document(
    shape="integer ids of any shape `(...)` → `(..., dim)`, float32.",
    params="`weight` `(vocab, dim)` (`init`, standard normal by default, with fans `vocab` "
           "and `dim`).",
    example="input tokens: int32[20]\noutput vectors = tokens -> embedding(5000, 64)   "
            "# (20, 64)")
# Token ids run below the vocabulary size.
embedding.integer_bound = lambda index, a, in_types: a["vocab"] if index == 0 else None
embedding.step_local = always


@embedding.shape
def _embedding_shape(ctx, a):
    ctx.need_int(0, "integer token ids")
    x = ctx.inputs[0]
    return TensorType(x.shape + (a["dim"],), "float32")


@embedding.params
def _embedding_params(inputs, a):
    return [ParamSpec("weight", (a["vocab"], a["dim"]), a["init"], a["vocab"], a["dim"],
                      a["gain"])]


# ---- forward and backward ------------------------------------------------------------------


def _dense_forward(ins, a, ctx):
    x, weight = ins[0], ins[1]
    y = np.matmul(x, weight.T)
    if len(ins) > 2:
        y += ins[2]
    return y


dense.forward(_dense_forward)


def _grad_input_shape(ctx, a):
    g, weight = ctx.inputs
    return g.with_shape(g.shape[:-1] + (weight.shape[1],))


dense_grad_input = define_internal("dense_grad_input", family="dense", arity=2,
                                   shape=_grad_input_shape, doc="dx = g · W.")
dense_grad_input.forward(lambda ins, a, ctx: np.matmul(ins[0], ins[1]))


def _grad_weight_shape(ctx, a):
    g, x = ctx.inputs
    return TensorType((g.shape[-1], x.shape[-1]), g.dtype)


dense_grad_weight = define_internal("dense_grad_weight", family="dense", arity=2,
                                    shape=_grad_weight_shape, doc="dW = gᵀ · x over every leading axis.")
dense_grad_weight.forward(lambda ins, a, ctx: ins[0].reshape(-1, ins[0].shape[-1]).T
                          @ ins[1].reshape(-1, ins[1].shape[-1]))

bias_grad = define_internal("bias_grad", family="dense",
                            shape=lambda ctx, a: TensorType((ctx.inputs[0].shape[-1],),
                                                            ctx.inputs[0].dtype),
                            doc="db = g summed over every axis but the last.")
bias_grad.forward(lambda ins, a, ctx: ins[0].reshape(-1, ins[0].shape[-1]).sum(axis=0))


@dense.vjp
def _dense_vjp(b, node, g):
    operands = b.operands(node)
    x, weight = operands[0], operands[1]
    grads = [b.add("dense_grad_input", [g, weight]), b.add("dense_grad_weight", [g, x])]
    if len(operands) > 2:
        grads.append(b.add("bias_grad", [g]))
    return grads


embedding.forward(lambda ins, a, ctx: ins[1][ins[0]])
embedding_grad = define_internal(
    "embedding_grad", family="dense", arity=2,
    shape=lambda ctx, a: TensorType((a["vocab"], ctx.inputs[1].shape[-1]), ctx.inputs[1].dtype),
    args=embedding.args[:1], doc="Scatter-adds each position's gradient into its token's row.")


def _embedding_grad(ins, a, ctx):
    ids, g = ins
    out = np.zeros((a["vocab"], g.shape[-1]), dtype=g.dtype)
    np.add.at(out, ids.reshape(-1), g.reshape(-1, g.shape[-1]))
    return out


embedding_grad.forward(_embedding_grad)
embedding.vjp(lambda b, node, g: [None, b.add("embedding_grad", [b.operands(node)[0], g],
                                              vocab=b.attrs(node)["vocab"])])


# ---- CPU kernels: matrix products go to BLAS; bias and activations run in the epilogue -----------

def _dense_kernel(k):
    x, out = k.rows(k.ins[0], k.in_types[0]), k.rows(k.out, k.out_type)
    k.matmul(x, k.ins[1], out, trans_b=True, bias=k.ins[2] if len(k.ins) > 2 else None)


def _dense_grad_input_kernel(k):
    g, out = k.rows(k.ins[0], k.in_types[0]), k.rows(k.out, k.out_type)
    k.matmul(g, k.ins[1], out)


def _dense_grad_weight_kernel(k):
    g, x = k.rows(k.ins[0], k.in_types[0]), k.rows(k.ins[1], k.in_types[1])
    k.matmul(g, x, k.out, trans_a=True, epilogue=False)


def _bias_grad_kernel(k):
    # A compiled helper: one per bias in a step, and every loop costs compile time.  Passed
    # the gradient's flat view, so one compilation per dtype serves every bias, whatever the
    # rank of its gradient (a dense layer's 2, a convolution's 4).
    k.line(f"{k.helper('column_sums')}({k.flat(k.ins[0])}, {k.out})")


def _bias_grad_reduction(k):
    """Column sums as reductions, one per column (a block per column on a GPU)."""
    g = k.rows(k.ins[0], k.in_types[0])
    k.reduction(f"{g}.shape[0]", "r", lambda acc: k.line(f"{acc} += {g}[r, c]"),
                lambda acc: k.line(f"{k.out}[c] = {acc}"), groups=f"{g}.shape[1]", group="c")


dense.cpu_kernel = _dense_kernel
dense_grad_input.cpu_kernel = _dense_grad_input_kernel
dense_grad_weight.cpu_kernel = _dense_grad_weight_kernel
bias_grad.cpu_kernel = _bias_grad_kernel
for _op in (dense, dense_grad_input, dense_grad_weight):
    _op.cuda_kernel = _op.cpu_kernel
bias_grad.cuda_kernel = _bias_grad_reduction
# The products end in a loop over their output, where a bias add and an activation can run.
dense.epilogue_host = dense_grad_input.epilogue_host = True
# dW = gᵀ·x is one gemm, which can add the optimiser's step into the weight itself.
dense_grad_weight.absorbs_update = True


def _embedding_kernel(k):
    ids, out = k.flat(k.ins[0]), k.rows(k.out, k.out_type)
    with k.block(f"for r in range({ids}.size):"):
        k.line(f"{out}[r, :] = {k.ins[1]}[{ids}[r], :]")


def _embedding_grad_kernel(k):
    ids, g = k.flat(k.ins[0]), k.rows(k.ins[1], k.in_types[1])
    k.line(f"{k.out}[:, :] = 0")
    with k.block(f"for r in range({ids}.size):"):
        with k.block(f"for c in range({g}.shape[1]):"):
            k.line(f"{k.out}[{ids}[r], c] += {g}[r, c]")


embedding.cpu_kernel = _embedding_kernel
embedding_grad.cpu_kernel = _embedding_grad_kernel


def _embedding_cuda_kernel(k):
    ids, out, dim = k.flat(k.ins[0]), k.flat(k.out), k.out_type.shape[-1]
    with k.parallel(f"{out}.size", "i"):
        k.line(f"{out}[i] = {k.ins[1]}[{ids}[i // {dim}], i % {dim}]")


def _embedding_grad_cuda_kernel(k):
    """A gather, one thread per (token, column) summing the positions holding that token, in
    the CPU's order: no atomics, the same sums (its work grows with vocabulary × positions)."""
    ids, g = k.flat(k.ins[0]), k.rows(k.ins[1], k.in_types[1])
    out, dim = k.flat(k.out), k.out_type.shape[-1]
    with k.parallel(f"{out}.size", "i"):
        k.line(f"token = i // {dim}")
        k.line(f"c = i % {dim}")
        k.line("total = F(0.0)")
        with k.block(f"for r in range({ids}.size):"):
            with k.block(f"if {ids}[r] == token:"):
                k.line(f"total += {g}[r, c]")
        k.line(f"{out}[i] = total")


embedding.cuda_kernel = _embedding_cuda_kernel
embedding_grad.cuda_kernel = _embedding_grad_cuda_kernel


# ---- ONNX export ------------------------------------------------------------------------------


def _onnx_dense(step):
    weight = step.input(1)
    bias = [step.input(2)] if len(step.in_types) > 2 else []
    if step.in_types[0].rank == 2:
        return step.node("Gemm", [step.input(0), weight] + bias, transB=1)
    # A dense layer maps the last axis of a longer tensor (each step of a sequence), in any
    # layout that keeps that axis last (a recurrent layer's output, left time first).
    value, rank = step.value(0), step.in_types[0].rank
    perm = value.perm if value.perm is not None and value.perm[-1] == rank - 1 else None
    y = step.node("MatMul", [step.input(0, perm), step.node("Transpose", [weight], perm=[1, 0])])
    return laid_out(step.node("Add", [y] + bias) if bias else y, perm)


dense.onnx_rule = _onnx_dense
embedding.onnx_rule = lambda step: step.node("Gather", [step.input(1), step.input(0)], axis=0)


# ---- ONNX import: Gemm, MatMul (+ Add of a bias), Gather ---------------------------------------


@reads_onnx("Gemm")
def _read_gemm(step):
    if step.attr("transA", 0):
        step.refuse("transA = 1 (the input transposed) has no netlang form")
    x = step.input(0)
    weight = step.weight(1, "weight") * step.attr("alpha", 1.0)
    weight = weight if step.attr("transB", 0) else weight.T
    units = weight.shape[0]
    weights = {"weight": np.ascontiguousarray(weight, dtype=np.float32)}
    if step.has_input(2):
        bias = step.weight(2, "bias") * step.attr("beta", 1.0)
        weights["bias"] = np.broadcast_to(bias.reshape(-1), (units,)).astype(np.float32)
    args = {"units": units, "bias": step.has_input(2)}
    return step.layer("dense", args, [x], weights, name_from=1)


@reads_onnx("MatMul")
def _read_matmul(step):
    weight = step.weight(1, "weight")
    if weight.ndim != 2:
        step.refuse("netlang's dense multiplies by a matrix, not a stack of them")
    value = step.value(0)
    rank = step.rank(0)
    # A dense layer maps the last axis of a tensor in any layout that keeps that axis last.
    keeps_last = value.perm is None or value.perm[-1] == rank - 1
    x = value.layer if keeps_last and not value.unit_axes else step.input(0)
    perm = value.perm if keeps_last else None
    weights = {"weight": np.ascontiguousarray(weight.T, dtype=np.float32)}
    # A bias added right after (netlang's export writes dense over a sequence as MatMul, Add).
    adder = step.only_consumer(step.view.outputs[0])
    bias = None
    if adder is not None and adder.op_type == "Add":
        bias = step.constant_of(adder, 1 - adder.inputs.index(step.view.outputs[0]))
    if bias is not None and bias.size == weight.shape[1]:
        weights["bias"] = bias.reshape(-1).astype(np.float32)
        layer = step.layer("dense", {"units": weight.shape[1]}, [x], weights, name_from=1)
        step.settle(adder, step.result(layer, perm))
        return step.result(layer, perm)
    layer = step.layer("dense", {"units": weight.shape[1], "bias": False}, [x], weights,
                       name_from=1)
    return step.result(layer, perm)


@reads_onnx("Gather")
def _read_gather(step):
    table = step.weight(0, "table")
    if step.attr("axis", 0) != 0 or table.ndim != 2:
        step.refuse("netlang's embedding looks up rows of a matrix (axis 0)")
    layer = step.layer("embedding", {"vocab": table.shape[0], "dim": table.shape[1]},
                       [step.input(1)], {"weight": table.astype(np.float32)}, name_from=0)
    return layer
