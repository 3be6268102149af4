"""Reductions over per-example axes (`sum`, `mean`, `max`) and taking features apart
(`slice`, `split`).

A reduction's kernel computes one output element per iteration (one GPU thread), looping
over the elements it reduces; the same template serves both renderers.  The gradient of
`sum` and `mean` is their incoming gradient broadcast back over the reduced axes
(`broadcast_to`, netlang/ops/elementwise.py); that of `max` goes to the first element that
attains each maximum, as the forward's argmax picks it.
"""

import math

import numpy as np

from netlang.ops.elementwise import example_coordinates
from netlang.ops.merge import _slice_cuda_kernel, _slice_forward, _slice_kernel
from netlang.ops.onnx_forms import per_example_axis, slice_rule
from netlang.ops.registry import (
    check_axis,
    define_internal,
    define_op,
    full_axis,
    reads_onnx,
    same_type_as,
)
from netlang.ops.schema import Arg, ArgType, BOOL, INT, INTS

_REDUCE_ARGS = [
    Arg("axis", INTS, -1, doc="the per-example axis, or a tuple of axes, to reduce"),
    Arg("keepdims", BOOL, False, doc="keep each reduced axis, with size 1"),
]


def _reduction(name, doc, example):
    op = define_op(name, family="math", doc=doc, args=_REDUCE_ARGS)
    op.document(
        shape="the input without the reduced axes (with `keepdims = true`: each of them of "
              "size 1); each axis must be a per-example axis (0 … rank − 1, or −1 … −rank), "
              "named once.",
        params=None, example=example)
    op.shape(_reduce_shape)
    return op


def reduced_axes(rank: int, axis) -> tuple:
    """The full-shape axes that the `axis` attribute of a reduction names, in order."""
    return tuple(sorted(full_axis(rank, a) for a in axis))


def _reduce_shape(ctx, a):
    ctx.need_float(0)
    x = ctx.inputs[0]
    axes = [check_axis(ctx, 0, axis) for axis in a["axis"]]
    if len(set(axes)) != len(axes):
        ctx.fail(f"`{ctx.op.name}` names an axis twice in {a['axis']} for {ctx.describe(0)}")
    if a["keepdims"]:
        return x.with_shape(tuple(1 if i in axes else d for i, d in enumerate(x.shape)))
    return x.with_shape(tuple(d for i, d in enumerate(x.shape) if i not in axes))


sum_ = _reduction("sum", "The sum over `axis`.",
                  "input x: [5, 3]\noutput y = sum(x, axis = 0)   # (3,)")
mean = _reduction("mean", "The mean over `axis`.",
                  "input x: [4, 4, 8]\noutput y = x -> mean(axis = (0, 1))   # (8,)")
max_ = _reduction("max", "The maximum over `axis`; its gradient goes to the first element "
                  "that attains it.",
                  "input x: [6]\noutput y = x - max(x, keepdims = true)")


def _reduce_forward(numpy_reduction):
    def forward(ins, a, ctx):
        x = ins[0]
        out = numpy_reduction(x, axis=reduced_axes(x.ndim, a["axis"]), keepdims=a["keepdims"])
        return np.ascontiguousarray(out, dtype=x.dtype)
    return forward


sum_.forward(_reduce_forward(np.sum))
mean.forward(_reduce_forward(np.mean))
max_.forward(_reduce_forward(np.max))

max_grad = define_internal(
    "max_grad", family="math", arity=2, shape=same_type_as(0), args=_REDUCE_ARGS,
    doc="(x, g) → g at the first element of x attaining each maximum, 0 elsewhere.")


def _max_grad_forward(ins, a, ctx):
    x, g = ins
    axes = reduced_axes(x.ndim, a["axis"])
    last = tuple(range(x.ndim - len(axes), x.ndim))
    moved = np.moveaxis(x, axes, last)                     # reduced axes last, in order
    rows = moved.reshape(moved.shape[:x.ndim - len(axes)] + (-1,))
    winner = rows.argmax(axis=-1)
    kept_g = g.reshape(winner.shape)
    out = np.zeros_like(rows)
    np.put_along_axis(out, winner[..., None], kept_g[..., None], axis=-1)
    return np.ascontiguousarray(np.moveaxis(out.reshape(moved.shape), last, axes))


max_grad.forward(_max_grad_forward)


def _keepdims_shape(b, node) -> tuple:
    """The per-example shape of a reduction's output with its reduced axes kept (size 1)."""
    x = b.operands(node)[0]
    t = b.type(x)
    axes = reduced_axes(t.rank, b.attrs(node)["axis"])
    return tuple(1 if i in axes else d for i, d in enumerate(t.shape))[1:]


def _spread(b, node, g):
    """The incoming gradient repeated over the reduced axes: the operand's shape."""
    x = b.operands(node)[0]
    kept = b.add("reshape", [g], shape=_keepdims_shape(b, node))
    return b.add("broadcast_to", [kept], shape=b.type(x).sample_shape)


sum_.vjp(lambda b, node, g: [_spread(b, node, g)])


@mean.vjp
def _mean_vjp(b, node, g):
    t = b.type(b.operands(node)[0])
    count = math.prod(t.shape[i] for i in reduced_axes(t.rank, b.attrs(node)["axis"]))
    return [b.add("scale", [_spread(b, node, g)], factor=1.0 / count)]


max_.vjp(lambda b, node, g: [b.add("max_grad", [b.operands(node)[0], g],
                                   **b.attrs(node))])


# ---- kernels: one output element per iteration (per GPU thread), both renderers ----------------

def _reduction_layout(k):
    """(per-example input shape, reduced axes, kept axes) of the reduction at hand, axes
    counted within an example."""
    t = k.in_types[0]
    axes = [a - 1 for a in reduced_axes(t.rank, k.attrs["axis"])]
    shape = t.sample_shape
    return shape, axes, [i for i in range(len(shape)) if i not in axes]


def _offsets(k, shape, axes, flat):
    """Emits the coordinates of `flat` over `axes` of `shape`; the terms of their offset in
    an example of `shape`."""
    coords = example_coordinates(k, flat, [shape[i] for i in axes])
    return [f"{c} * {math.prod(shape[i + 1:])}" for c, i in zip(coords, axes)]


def _each_reduction(k, y_var, per_output):
    """Loops over the outputs; `per_output(base, reduce_index_loop, count)` emits one."""
    shape, axes, kept = _reduction_layout(k)
    out_size, in_size = math.prod(shape[i] for i in kept), math.prod(shape)
    count = math.prod(shape[i] for i in axes)
    with k.parallel(f"{y_var}.size", "j"):
        n, rest, base = k.fresh("n"), k.fresh("r"), k.fresh("b")
        k.line(f"{n} = j // {out_size}")
        k.line(f"{rest} = j % {out_size}")
        terms = _offsets(k, shape, kept, rest)
        k.line(f"{base} = {' + '.join([f'{n} * {in_size}'] + terms)}")

        def element(q):
            """Emits the offset of the q-th reduced element; returns its index expression."""
            return " + ".join([base] + _offsets(k, shape, axes, q))
        per_output(element, count)


def _sum_kernel(scale: bool):
    def kernel(k):
        x, y = k.flat(k.ins[0]), k.flat(k.out)

        def per_output(element, count):
            acc = k.fresh("acc")
            k.line(f"{acc} = 0.0")
            with k.block(f"for q in range({count}):"):
                k.line(f"{acc} += {x}[{element('q')}]")
            k.line(f"{y}[j] = {acc} / {count}" if scale else f"{y}[j] = {acc}")
        _each_reduction(k, y, per_output)
    return kernel


def _argmax(k, x, element, count) -> str:
    """Emits the search for the first reduced element attaining the maximum; its index."""
    best, top = k.fresh("best"), k.fresh("top")
    k.line(f"{best} = 0")
    k.line(f"{top} = {x}[{element('0')}]")
    with k.block(f"for q in range(1, {count}):"):
        with k.block(f"if {x}[{element('q')}] > {top}:"):
            k.line(f"{top} = {x}[{element('q')}]")
            k.line(f"{best} = q")
    return best


def _max_kernel(k):
    x, y = k.flat(k.ins[0]), k.flat(k.out)

    def per_output(element, count):
        best = _argmax(k, x, element, count)
        k.line(f"{y}[j] = {x}[{element(best)}]")
    _each_reduction(k, y, per_output)


def _max_grad_kernel(k):
    x, g, out = k.flat(k.ins[0]), k.flat(k.ins[1]), k.flat(k.out)

    def per_output(element, count):
        best = _argmax(k, x, element, count)
        with k.block(f"for q in range({count}):"):
            k.line(f"{out}[{element('q')}] = {g}[j] if q == {best} else {k.const(0)}")
    _each_reduction(k, g, per_output)


sum_.cpu_kernel = sum_.cuda_kernel = _sum_kernel(scale=False)
mean.cpu_kernel = mean.cuda_kernel = _sum_kernel(scale=True)
max_.cpu_kernel = max_.cuda_kernel = _max_kernel
max_grad.cpu_kernel = max_grad.cuda_kernel = _max_grad_kernel


# ---- slicing features ------------------------------------------------------------------------

slice_ = define_op(
    "slice", family="math",
    args=[Arg("start", INT, doc="the first index kept"),
          Arg("stop", INT, doc="the index after the last one kept"),
          Arg("axis", INT, -1, doc="the per-example axis to slice (default: features)")],
    doc="The elements `start` to `stop − 1` along `axis`.")
slice_.document(shape="the input with `axis` of size `stop − start`; 0 ≤ start < stop ≤ the "
                      "axis's size.",
                params=None, example="input x: [10]\noutput y = x -> slice(2, 5)   # (3,)")


def _check_range(ctx, axis, start, stop):
    width = ctx.inputs[0].shape[axis]
    if not 0 <= start < stop <= width:
        ctx.fail(f"`{ctx.op.name}` needs 0 ≤ start < stop ≤ {width} along an axis of size "
                 f"{width} of {ctx.describe(0)}, got start = {start} and stop = {stop}")


@slice_.shape
def _slice_shape(ctx, a):
    x = ctx.inputs[0]
    axis = check_axis(ctx, 0, a["axis"])
    _check_range(ctx, axis, a["start"], a["stop"])
    return x.with_shape(x.shape[:axis] + (a["stop"] - a["start"],) + x.shape[axis + 1:])


# The same copy as concat's gradient (merge's `slice_axis`, whose attributes these are).
slice_.forward(_slice_forward)
slice_.cpu_kernel, slice_.cuda_kernel = _slice_kernel, _slice_cuda_kernel

slice_grad = define_internal(
    "slice_grad", family="math", arity=2, shape=same_type_as(1), args=slice_.args,
    doc="(g, x) → zeros of x's type with g at start:stop along axis (the gradient of slice).")


def _slice_grad_forward(ins, a, ctx):
    g, x = ins
    out = np.zeros_like(x)
    index = [slice(None)] * x.ndim
    index[full_axis(x.ndim, a["axis"])] = slice(a["start"], a["stop"])
    out[tuple(index)] = g
    return out


slice_grad.forward(_slice_grad_forward)
slice_.vjp(lambda b, node, g: [b.add("slice_grad", [g, b.operands(node)[0]], **b.attrs(node))])


def _slice_grad_kernel(k):
    """Each element of the output: its gradient if it lies in the slice, else 0."""
    t = k.out_type
    axis = full_axis(t.rank, k.attrs["axis"])
    start, stop = k.attrs["start"], k.attrs["stop"]
    inner = math.prod(t.shape[axis + 1:])
    whole, width = t.shape[axis], stop - start
    g, out = k.flat(k.ins[0]), k.flat(k.out)
    with k.parallel(f"{out}.size", "i"):
        at = k.fresh("p")
        k.line(f"{at} = (i // {inner}) % {whole}")
        read = (f"(i // {whole * inner}) * {width * inner} + ({at} - {start}) * {inner} "
                f"+ i % {inner}")
        k.line(f"{out}[i] = {g}[{read}] if {at} >= {start} and {at} < {stop} else {k.const(0)}")


slice_grad.cpu_kernel = slice_grad.cuda_kernel = _slice_grad_kernel


def _parts(value):
    """An int n (n equal parts) or a tuple of part sizes, kept apart."""
    if isinstance(value, tuple):
        return INTS.convert(value)
    return INT.convert(value)


split = define_op(
    "split", family="math",
    args=[Arg("parts", ArgType("int or tuple of ints", _parts),
              doc="how many equal parts, or the size of each part", min=1),
          Arg("axis", INT, -1, doc="the per-example axis to split (default: features)")],
    doc="Splits `axis` into consecutive parts: a tuple of tensors, one `slice` each.")
split.document(
    shape="`parts = n`: n parts of equal size (the axis must be divisible by n); "
          "`parts = (a, b, ...)`: parts of those sizes, which must add up to the axis's size.",
    params=None,
    example="input x: [8]\nhalves = x -> split(2)\noutput y = halves[0] * sigmoid(halves[1])")


@split.expand
def _split_expansion(ctx, a):
    x = ctx.inputs[0]
    axis = check_axis(ctx, 0, a["axis"])
    width, parts = x.shape[axis], a["parts"]
    if isinstance(parts, int):
        if width % parts:
            ctx.fail(f"`split` into {parts} equal parts needs an axis divisible by {parts}, "
                     f"got {width} in {ctx.describe(0)}")
        parts = (width // parts,) * parts
    if sum(parts) != width:
        ctx.fail(f"`split` into parts of sizes {parts} needs an axis of {sum(parts)}, got "
                 f"{width} in {ctx.describe(0)}")
    starts = np.cumsum((0,) + parts)
    return [("slice", {"start": int(starts[i]), "stop": int(starts[i + 1]), "axis": a["axis"]})
            for i in range(len(parts))]


# ---- ONNX export ------------------------------------------------------------------------------


def _onnx_reduce(op_type):
    def rule(step):
        axes = reduced_axes(step.in_types[0].rank, step.attrs["axis"])
        return step.reduce(op_type, step.input(0), axes, step.attrs["keepdims"])
    return rule


sum_.onnx_rule = _onnx_reduce("ReduceSum")
mean.onnx_rule = _onnx_reduce("ReduceMean")
max_.onnx_rule = _onnx_reduce("ReduceMax")
slice_.onnx_rule = slice_rule


# ---- ONNX import: reductions over one axis, Slice ---------------------------------------------


def _one_axis(step, axes, what: str) -> int:
    axes = [int(a) for a in np.asarray(axes).reshape(-1)] if axes is not None else []
    if len(axes) != 1:
        step.refuse(f"netlang's {what} works along one axis, not {axes or 'all of them'}")
    return axes[0]


def _read_reduce(op):
    def reader(step):
        axes = step.attr("axes")
        if axes is None and step.has_input(1):
            axes = step.weight(1, "axes")
        onnx_axis = _one_axis(step, axes, op) % step.rank(0)
        axis, perm = per_example_axis(step, 0, onnx_axis)
        keepdims = bool(step.attr("keepdims", 1))
        layer = step.layer(op, {"axis": axis, "keepdims": keepdims}, [step.value(0).layer])
        if keepdims or perm is None:
            return step.result(layer, perm)
        # The reduced axis leaves the layout; the axes after it move up one.
        reduced = perm[onnx_axis]
        return step.result(layer, tuple(a - (a > reduced) for a in perm if a != reduced))
    return reader


@reads_onnx("Slice")
def _read_slice(step):
    shape = step.shape(0)
    onnx_axis = _one_axis(step, step.weight(3, "axes") if step.has_input(3) else
                          list(range(len(shape))) if len(shape) == 1 else None, "slice")
    onnx_axis %= len(shape)
    if step.has_input(4) and int(step.weight(4, "steps").reshape(-1)[0]) != 1:
        step.refuse("netlang's slice takes every element (steps = 1)")
    size = shape[onnx_axis]
    if size is None:
        step.refuse("the sliced axis has no fixed size")
    start, stop = (int(step.weight(i, what).reshape(-1)[0]) for i, what in ((1, "starts"),
                                                                             (2, "ends")))
    start, stop = (min(max(v + size if v < 0 else v, 0), size) for v in (start, stop))
    axis, perm = per_example_axis(step, 0, onnx_axis)
    layer = step.layer("slice", {"start": start, "stop": stop, "axis": axis},
                       [step.value(0).layer])
    return step.result(layer, perm)


reads_onnx("ReduceSum")(_read_reduce("sum"))
reads_onnx("ReduceMean")(_read_reduce("mean"))
reads_onnx("ReduceMax")(_read_reduce("max"))
