"""Ops that merge branches: concatenation and elementwise sums and products."""

from netlang.ops.registry import check_axis, define_op
from netlang.ops.schema import Arg, INT

concat = define_op(
    "concat", family="merge", arity=None, operand_names=("xs",),
    args=[Arg("axis", INT, -1, doc="per-example axis to join along (default: channels)")],
    doc="Joins two or more tensors along `axis`; all other axes must agree (inception blocks).")


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
add.shape(_same_shapes("add"))
multiply = define_op("multiply", family="merge", arity=None, operand_names=("xs",),
                     doc="Elementwise product of tensors of one shape (gating); `a * b`.")
multiply.shape(_same_shapes("multiply"))
