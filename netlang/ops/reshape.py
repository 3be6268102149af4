"""Ops that only rearrange elements: flatten, reshape, permute."""

import contextlib
import math

import numpy as np

from netlang.ops.onnx_forms import transposed
from netlang.ops.registry import define_internal, define_op, reads_onnx
from netlang.ops.schema import Arg, INTS

flatten = define_op("flatten", family="reshape",
                    doc="Collapses each example into one axis: (H, W, C) → (H·W·C,), row-major.")
flatten.document(shape="`(d1, d2, …)` → `(d1·d2·…,)`, row-major (channels vary fastest).",
                 params=None,
                 example="input x: [5, 5, 16]\noutput y = x -> flatten   # (400,)")


@flatten.shape
def _flatten_shape(ctx, a):
    x = ctx.inputs[0]
    return x.with_shape((x.shape[0], math.prod(x.shape[1:])))


reshape = define_op(
    "reshape", family="reshape",
    args=[Arg("shape", INTS, doc="the new per-example shape; one entry may be -1")],
    doc="Gives each example a new shape with the same number of elements (row-major).")
reshape.document(
    shape="any per-example shape with the same number of elements; one entry may be −1 "
          "and is then inferred.",
    params=None, example="input x: [784]\noutput y = x -> reshape((28, 28, 1))")


@reshape.shape
def _reshape_shape(ctx, a):
    x = ctx.inputs[0]
    target = list(a["shape"])
    size = math.prod(x.shape[1:])
    unknown = [i for i, d in enumerate(target) if d == -1]
    if len(unknown) > 1 or any(d < -1 or d == 0 for d in target):
        ctx.fail(f"`reshape` target {tuple(target)} may hold positive sizes and at most one -1")
    known = math.prod(d for d in target if d != -1)
    if unknown:
        if size % known:
            ctx.fail(f"`reshape` cannot fit {size} elements per example of {ctx.describe(0)} "
                     f"into {tuple(target)}")
        target[unknown[0]] = size // known
    if math.prod(target) != size:
        ctx.fail(f"`reshape` to {tuple(target)} needs {math.prod(target)} elements per example, "
                 f"but {ctx.describe(0)} has {size}")
    return x.with_shape((x.shape[0],) + tuple(target))


permute = define_op(
    "permute", family="reshape",
    args=[Arg("axes", INTS, doc="the new order of the per-example axes, e.g. (2, 0, 1)")],
    doc="Reorders the per-example axes.")
permute.document(
    shape="`axes` is a permutation of the per-example axes `0 … rank − 1`; output axis `i` "
          "is input axis `axes[i]`.",
    params=None,
    example="input x: [28, 28, 3]\noutput y = x -> permute((2, 0, 1))   # (3, 28, 28)")


@permute.shape
def _permute_shape(ctx, a):
    x = ctx.inputs[0]
    axes = a["axes"]
    if sorted(axes) != list(range(x.rank - 1)):
        ctx.fail(f"`permute` needs an order of the {x.rank - 1} per-example axes of "
                 f"{ctx.describe(0)}, got {axes}")
    return x.with_shape((x.shape[0],) + tuple(x.shape[1 + i] for i in axes))


# ---- forward and backward ------------------------------------------------------------------

flatten.forward(lambda ins, a, ctx: ins[0].reshape(ins[0].shape[0], -1))
reshape.forward(lambda ins, a, ctx: ins[0].reshape((ins[0].shape[0],) + tuple(a["shape"])))

reshape_like = define_internal(
    "reshape_like", family="reshape", arity=2, shape=lambda ctx, a: ctx.inputs[1],
    doc="Reshapes its first operand to the second's shape (the gradient of flatten and reshape).")
reshape_like.forward(lambda ins, a, ctx: ins[0].reshape(ins[1].shape))
flatten.vjp(lambda b, node, g: [b.add("reshape_like", [g, b.operands(node)[0]])])
reshape.vjp(lambda b, node, g: [b.add("reshape_like", [g, b.operands(node)[0]])])

permute.forward(lambda ins, a, ctx: np.ascontiguousarray(
    np.transpose(ins[0], (0,) + tuple(1 + i for i in a["axes"]))))


@permute.vjp
def _permute_vjp(b, node, g):
    axes = b.attrs(node)["axes"]
    inverse = [0] * len(axes)
    for i, p in enumerate(axes):
        inverse[p] = i
    return [b.add("permute", [g], axes=tuple(inverse))]


# ---- CPU kernels: reshapes are views of their operand's buffer --------------------------------
flatten.cpu_view = True
reshape.cpu_view = True
reshape_like.cpu_view = True


def _permute_kernel(k):
    """A loop nest over the output's per-example axes reading the input at permuted offsets."""
    axes = k.attrs["axes"]
    in_shape, out_shape = k.in_types[0].shape[1:], k.out_type.shape[1:]
    size = math.prod(in_shape)
    in_strides = [math.prod(in_shape[i + 1:]) for i in range(len(in_shape))]
    out_strides = [math.prod(out_shape[i + 1:]) for i in range(len(out_shape))]
    x, y = k.flat(k.ins[0]), k.flat(k.out)
    index = [k.fresh("i") for _ in out_shape]
    with k.parallel(f"{y}.size // {size}", "n"):
        with contextlib.ExitStack() as loops:
            for var, extent in zip(index, out_shape):
                loops.enter_context(k.block(f"for {var} in range({extent}):"))
            read = " + ".join(f"{var} * {in_strides[axis]}" for var, axis in zip(index, axes))
            write = " + ".join(f"{var} * {stride}" for var, stride in zip(index, out_strides))
            k.line(f"{y}[n * {size} + {write}] = {x}[n * {size} + {read}]")


permute.cpu_kernel = _permute_kernel
permute.cuda_kernel = _permute_kernel


# ---- ONNX export ------------------------------------------------------------------------------


flatten.onnx_rule = lambda step: step.node("Flatten", [step.input(0)], axis=1)
# Reshape's 0 keeps the batch axis as it is, whatever the batch.
reshape.onnx_rule = lambda step: step.node(
    "Reshape", [step.input(0), step.ints([0] + list(step.out_type.sample_shape))])
# A permutation moves no data here: the value keeps its ONNX tensor and records the new layout,
# so a later op that wants it in netlang's layout transposes once (or not at all).
permute.onnx_rule = lambda step: transposed(
    step, step.value(0), (0,) + tuple(1 + i for i in step.attrs["axes"]))


# ---- ONNX import: Flatten, Reshape, Transpose ------------------------------------------------


def _flattened(step, value):
    """Input 0 as (N, features), netlang's flatten of it (features in the ONNX tensor's order)."""
    if value.unit_axes and step.rank(0) - value.unit_axes == 2:
        return step.result(value.layer)   # a global pool's (N, C, 1, 1): netlang's is (N, C)
    x = step.input(0)
    return x if step.rank(0) == 2 else step.layer("flatten", {}, [x])


@reads_onnx("Flatten")
def _read_flatten(step):
    if step.attr("axis", 1) != 1:
        step.refuse("netlang's flatten keeps the batch axis only (axis = 1)")
    return _flattened(step, step.value(0))


@reads_onnx("Reshape")
def _read_reshape(step):
    value = step.value(0)
    out, shape = step.out_shape(), step.shape(0)
    if out is None or shape is None or any(size is None for size in out[1:]):
        step.refuse("its output's shape is not known")
    if out[0] != shape[0] or (out[0] is None and step.weight(1, "shape")[0] not in (0, -1)):
        step.refuse("it changes the batch axis, which netlang keeps")
    if len(out) == 2:
        return _flattened(step, value)
    x = step.input(0)
    if tuple(out) == tuple(shape):
        return x
    return step.layer("reshape", {"shape": tuple(int(size) for size in out[1:])}, [x])


@reads_onnx("Transpose")
def _read_transpose(step):
    folded = step.constant(0)
    perm = step.attr("perm")
    if folded is not None:   # a weight stored transposed (a tied dense layer's)
        return np.ascontiguousarray(np.transpose(folded, perm))
    value = step.value(0)
    if value.unit_axes:
        step.refuse("it moves a global pool's axes of size 1")
    have = value.perm or tuple(range(step.rank(0)))
    perm = perm if perm is not None else list(reversed(range(len(have))))
    return step.result(value.layer, tuple(have[axis] for axis in perm))
