"""Ops that merge branches: concatenation and elementwise sums and products."""

import numpy as np

from netlang.ops.onnx_forms import (
                                   chained,
                                   common_layout,
                                   laid_out,
                                   layout_axis,
                                   per_example_axis,
                                   read_merge,
)
from netlang.ops.registry import (
    check_axis,
    define_internal,
    define_op,
    full_axis,
    off_the_time_axis,
    reads_onnx,
)
from netlang.ops.schema import Arg, INT

concat = define_op(
    "concat", family="merge", arity=None, operand_names=("xs",),
    args=[Arg("axis", INT, -1, doc="per-example axis to join along (default: channels)")],
    doc="Joins two or more tensors along `axis`; all other axes must agree (inception blocks).")
concat.document(
    shape="two or more tensors of one dtype and rank whose shapes agree except along "
          "`axis`; the output's `axis` is the sum.",
    params=None,
    example="input a: [8, 8, 16]\ninput b: [8, 8, 32]\n"
            "output c = (a, b) -> concat   # (8, 8, 48)")


@concat.shape
def _concat_shape(ctx, a):
    first = ctx.inputs[0]
    axis = check_axis(ctx, 0, a["axis"])
    total = 0
    for i, t in enumerate(ctx.inputs):
        if t.dtype != first.dtype:
            ctx.fail(f"`concat` needs one dtype: {first.dtype} {ctx.describe(0)} and "
                     f"{t.dtype} {ctx.describe(i)}")
        if t.rank != first.rank or any(d != e for k, (d, e) in enumerate(zip(t.shape, first.shape))
                                       if k != axis):
            ctx.fail(f"`concat` along axis {a['axis']} needs the other axes to agree: "
                     f"{ctx.describe(0)} and {ctx.describe(i)}")
        total += t.shape[axis]
    return first.with_shape(first.shape[:axis] + (total,) + first.shape[axis + 1:])


def _same_shapes(verb):
    def rule(ctx, a):
        first = ctx.inputs[0]
        for i, t in enumerate(ctx.inputs[1:], start=1):
            if t.shape != first.shape or t.dtype != first.dtype:
                ctx.fail(f"cannot {verb} {ctx.describe(0)} and {ctx.describe(i)}: shapes differ"
                         if t.shape != first.shape else
                         f"cannot {verb} {first.dtype} and {t.dtype} tensors")
        return first
    return rule


add = define_op("add", family="merge", arity=None, operand_names=("xs",),
                doc="Elementwise sum of tensors of one shape (residual connections); `a + b`.")
add.document(
    shape="two or more tensors of the same shape and dtype; the result has that shape. "
          "`a + b` between two tensors is `(a, b) -> add`.",
    params=None,
    example="input x: [16]\nh = x -> dense(16) -> relu\noutput y = h + x")
add.shape(_same_shapes("add"))
multiply = define_op("multiply", family="merge", arity=None, operand_names=("xs",),
                     doc="Elementwise product of tensors of one shape (gating); `a * b`.")
multiply.document(
    shape="as `add`; `a * b` between two tensors is `(a, b) -> multiply`.",
    params=None,
    example="input x: [16]\ngate = x -> dense(16) -> sigmoid\noutput y = (x, gate) -> multiply")
multiply.shape(_same_shapes("multiply"))


# ---- forward and backward ------------------------------------------------------------------


def _concat_forward(ins, a, ctx):
    return np.concatenate(ins, axis=full_axis(ins[0].ndim, a["axis"]))


concat.forward(_concat_forward)
concat.step_local = off_the_time_axis


def _slice_shape(ctx, a):
    x = ctx.inputs[0]
    axis = full_axis(x.rank, a["axis"])
    return x.with_shape(x.shape[:axis] + (a["stop"] - a["start"],) + x.shape[axis + 1:])


slice_axis = define_internal(
    "slice_axis", family="merge", shape=_slice_shape, differentiable=False,
    args=[Arg("axis", INT), Arg("start", INT), Arg("stop", INT)],
    doc="The elements start:stop along a per-example axis (the gradient of concat).")


def _slice_forward(ins, a, ctx):
    x = ins[0]
    index = [slice(None)] * x.ndim
    index[full_axis(x.ndim, a["axis"])] = slice(a["start"], a["stop"])
    return np.ascontiguousarray(x[tuple(index)])


slice_axis.forward(_slice_forward)
slice_axis.step_local = off_the_time_axis


@concat.vjp
def _concat_vjp(b, node, g):
    axis = b.attrs(node)["axis"]
    grads, start = [], 0
    for operand in b.operands(node):
        t = b.type(operand)
        width = t.shape[full_axis(t.rank, axis)]
        grads.append(b.add("slice_axis", [g], axis=axis, start=start, stop=start + width))
        start += width
    return grads


add.forward(lambda ins, a, ctx: sum(ins[1:], ins[0].copy()))
add.vjp(lambda b, node, g: [g for _ in b.operands(node)])


def _product(arrays):
    out = arrays[0].copy()
    for x in arrays[1:]:
        out *= x
    return out


multiply.forward(lambda ins, a, ctx: _product(ins))


@multiply.vjp
def _multiply_vjp(b, node, g):
    operands = b.operands(node)
    return [b.add("multiply", [g] + [o for j, o in enumerate(operands) if j != i])
            for i in range(len(operands))]


# ---- CPU kernels ------------------------------------------------------------------------------

def _axis_slices(rank, axis, start, stop):
    return ", ".join(f"{start}:{stop}" if i == axis else ":" for i in range(rank))


def _concat_kernel(k):
    axis = full_axis(k.out_type.rank, k.attrs["axis"])
    start = 0
    for var, t in zip(k.ins, k.in_types):
        stop = start + t.shape[axis]
        k.line(f"{k.out}[{_axis_slices(t.rank, axis, start, stop)}] = {var}")
        start = stop


def _slice_kernel(k):
    axis = full_axis(k.out_type.rank, k.attrs["axis"])
    whole = ", ".join(":" for _ in range(k.out_type.rank))
    part = _axis_slices(k.out_type.rank, axis, k.attrs["start"], k.attrs["stop"])
    k.line(f"{k.out}[{whole}] = {k.ins[0]}[{part}]")


concat.cpu_kernel = _concat_kernel
slice_axis.cpu_kernel = _slice_kernel
add.cpu_expr = lambda a, c: " + ".join("{%d}" % i for i in range(a.get("_arity", 2)))
multiply.cpu_expr = lambda a, c: " * ".join("{%d}" % i for i in range(a.get("_arity", 2)))


# ---- CUDA kernels: the same copies as flat index arithmetic, one element per thread ------------
#
# With the axis at `axis` and `inner` elements after it, an example's row of a tensor whose axis
# is `width` long is (outer, width · inner); a part starting at `start` along the axis sits at
# offset start · inner of each row of the whole.

def _inner(t, axis):
    inner = 1
    for d in t.shape[axis + 1:]:
        inner *= d
    return inner


def _concat_cuda_kernel(k):
    axis = full_axis(k.out_type.rank, k.attrs["axis"])
    inner = _inner(k.out_type, axis)
    out, whole = k.flat(k.out), k.out_type.shape[axis] * inner
    start = 0
    for var, t in zip(k.ins, k.in_types):
        part, width = k.flat(var), t.shape[axis] * inner
        with k.parallel(f"{part}.size", "i"):
            k.line(f"{out}[(i // {width}) * {whole} + {start * inner} + i % {width}] = {part}[i]")
        start += t.shape[axis]


def _slice_cuda_kernel(k):
    axis = full_axis(k.out_type.rank, k.attrs["axis"])
    inner = _inner(k.out_type, axis)
    x, out = k.flat(k.ins[0]), k.flat(k.out)
    width, whole = k.out_type.shape[axis] * inner, k.in_types[0].shape[axis] * inner
    with k.parallel(f"{out}.size", "i"):
        k.line(f"{out}[i] = {x}[(i // {width}) * {whole} + {k.attrs['start'] * inner} + i % {width}]")


concat.cuda_kernel = _concat_cuda_kernel
slice_axis.cuda_kernel = _slice_cuda_kernel


# ---- ONNX export ------------------------------------------------------------------------------


def _onnx_concat(step):
    names, perm = common_layout(step)
    axis = layout_axis(full_axis(step.in_types[0].rank, step.attrs["axis"]), perm)
    return laid_out(step.node("Concat", names, axis=axis), perm)


def _onnx_add(step):
    names, perm = common_layout(step)
    return laid_out(step.node("Add", names) if len(names) == 2 else step.node("Sum", names), perm)


concat.onnx_rule = _onnx_concat
add.onnx_rule = _onnx_add
multiply.onnx_rule = chained("Mul")


# ---- ONNX import: Add, Sum, Mul, Concat of tensors ---------------------------------------------


@reads_onnx("Concat")
def _read_concat(step):
    axis, perm = per_example_axis(step, 0, step.attr("axis"))
    layer = step.layer("concat", {"axis": axis},
                       [step.input(i, perm) for i in range(step.input_count)])
    return step.result(layer, perm)


reads_onnx("Add", "Sum")(read_merge("add", "+"))
reads_onnx("Mul")(read_merge("multiply", "*"))
