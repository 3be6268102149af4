"""Shapes of ONNX export rules that several op families share.

An op's `onnx_rule` (see registry.py) is fn(step) → the node's value, where `step` is the
exporter's `ExportStep` (netlang/interchange/onnx_graph.py): `step.node(op_type, inputs,
**attrs)` adds an ONNX node, `step.input(i)` names operand i in netlang's layout (batch first,
channels last), `step.value(i)` gives it in whatever layout it is in, and a rule may return a
`(name, perm)` pair for a value it leaves in another layout (channels first after a Conv).
These helpers build the rules that need no more than that; nothing here imports the exporter
or the `onnx` package.
"""

from __future__ import annotations

import numpy as np

from netlang.ops.registry import full_axis


def laid_out(name: str, perm) -> tuple:
    """A rule's result: the ONNX tensor `name` is the netlang value transposed by `perm`
    (None: in netlang's layout)."""
    return (name, None if perm is None else tuple(perm))


def passthrough(step):
    """The identity in an inference graph (dropout, stop_gradient): the operand itself."""
    value = step.value(0)
    return laid_out(value.name, value.perm)


def map_elements(build):
    """A rule for an elementwise op of one operand, which works in any layout: `build(step,
    x)` adds the nodes computing it from the ONNX name `x` and returns the result's name."""
    def rule(step):
        value = step.value(0)
        return laid_out(build(step, value.name), value.perm)
    return rule


def unary(op_type: str, **attrs):
    """An elementwise op that is one ONNX op (Relu, Exp, LeakyRelu(alpha=...))."""
    return map_elements(lambda step, x: step.node(op_type, [x], **attrs))


def common_layout(step) -> tuple[list, tuple | None]:
    """Every operand's name in one layout, operand 0's when all have its rank (elementwise ops
    of several operands); netlang's layout otherwise."""
    first = step.value(0)
    ranks = {t.rank for t in step.in_types}
    perm = first.perm if len(ranks) == 1 else None
    return [step.input(i, perm) for i in range(len(step.in_types))], perm


def layout_axis(axis: int, perm) -> int:
    """Where netlang's full-shape `axis` sits in a tensor laid out by `perm`."""
    return axis if perm is None else list(perm).index(axis)


def chained(op_type: str):
    """An elementwise op of two or more operands as a chain of binary ONNX ops (Mul, Sub)."""
    def rule(step):
        names, perm = common_layout(step)
        result = names[0]
        for name in names[1:]:
            result = step.node(op_type, [result, name])
        return laid_out(result, perm)
    return rule


def with_constant(op_type: str, attribute: str, constant_first: bool = False):
    """`x op c` (or `c op x`) with c the float attribute `attribute` (add_scalar, scale)."""
    def build(step, x):
        c = step.scalar(step.attrs[attribute])
        return step.node(op_type, [c, x] if constant_first else [x, c])
    return map_elements(build)


def float_of(step, boolean: str) -> str:
    """A boolean tensor as 0/1 floats in the model's float type."""
    return step.node("Cast", [boolean], to=FLOAT32)


# onnx.TensorProto.FLOAT and INT32: written as numbers so no rule needs the onnx package.
FLOAT32 = 1
INT32 = 6


def transposed(step, value, perm) -> tuple:
    """The operand `value` transposed by the full-shape `perm` (netlang's), with no node: the
    ONNX tensor stays as it is and its layout says how it relates to the result."""
    have = value.perm if value.perm is not None else tuple(range(len(perm)))
    # onnx[i] = operand[have[i]] and operand = transpose(result, inverse(perm)).
    inverse = tuple(int(i) for i in np.argsort(perm))
    layout = tuple(inverse[axis] for axis in have)
    return laid_out(value.name, None if layout == tuple(range(len(perm))) else layout)


def channels_first_perm(rank: int) -> tuple:
    """The layout (N, C, ...) of a netlang value (N, ..., C): ONNX's for convolutions."""
    return (0, rank - 1) + tuple(range(1, rank - 1))


def slice_rule(step):
    """Elements start:stop along the `axis` attribute (a per-example axis), in any layout."""
    value = step.value(0)
    axis = layout_axis(full_axis(step.in_types[0].rank, step.attrs["axis"]), value.perm)
    y = step.node("Slice", [value.name, step.ints([step.attrs["start"]]),
                            step.ints([step.attrs["stop"]]), step.ints([axis])])
    return laid_out(y, value.perm)
