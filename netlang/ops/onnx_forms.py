"""Shapes of ONNX export rules, and of ONNX import readers, that several op families share.

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


# ---- ONNX import: readers that several families share -----------------------------------------
# A reader (registered with `reads_onnx`, registry.py) is fn(step) → the node's value, where
# `step` is the importer's `ImportStep` (netlang/interchange/onnx_import_graph.py): `step.value(i)`
# is input i as a netlang layer and layout, `step.layer(op, args, operands)` adds a layer, and
# `step.result(layer, perm)` is what the node computes.  A reader may also return a NumPy array
# (a constant it folded) or a list, one entry per ONNX output.


def read_identity(step):
    """Identity, Dropout (inference): the operand itself."""
    if len(step.view.outputs) > 1 and step.is_read(step.view.outputs[1]):
        step.refuse("its mask output is read")
    value = step.constant(0)
    return value if value is not None else step.value(0)


def read_elementwise(op: str, args_of=None):
    """An ONNX op that is netlang's elementwise `op` (arguments `args_of(step)`), in any
    layout."""
    def reader(step):
        value = step.value(0)
        layer = step.layer(op, args_of(step) if args_of else {}, [value.layer])
        return step.result(layer, value.perm, value.unit_axes)
    return reader


def per_example_axis(step, i: int, onnx_axis: int) -> tuple[int, tuple | None]:
    """Netlang's per-example axis (counted from 0, or -1 for the last) of ONNX axis `onnx_axis`
    of input i, and input i's layout; refuses the batch axis."""
    value = step.value(i)
    rank = step.rank(i) - value.unit_axes
    if value.unit_axes:
        step.refuse("it works on a tensor with a global pool's axes of size 1")
    axis = onnx_axis % rank
    full = (value.perm or tuple(range(rank)))[axis]
    if full == 0:
        step.refuse("it works along the batch axis")
    return (-1 if full == rank - 1 else full - 1), value.perm


def pair(values):
    """An ONNX pair of sizes as netlang writes it: `3` for (3, 3), else `(3, 5)`."""
    first, second = (int(v) for v in values)
    return first if first == second else (first, second)


def read_padding(step):
    """A conv's or pool's ONNX padding (`auto_pad`, `pads` [top, left, bottom, right]) as
    netlang's `padding`: `valid`, `same`, `2`, `(1, 2)` or ((top, bottom), (left, right))."""
    auto_pad = step.attr("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        return "valid"
    if auto_pad == "SAME_UPPER":   # the extra row and column at the bottom and right: netlang's
        return "same"
    if auto_pad != "NOTSET":
        step.refuse(f"auto_pad {auto_pad} (the extra padding first) has no netlang form")
    top, left, bottom, right = (int(p) for p in step.attr("pads", [0, 0, 0, 0]))
    if top == bottom and left == right:
        return "valid" if top == left == 0 else pair((top, left))
    return ((top, bottom), (left, right))


def read_one(step, name: str, expected, what: str) -> None:
    """Refuses the node unless its attribute `name` is `expected` (its default when absent)."""
    value = step.attr(name, expected)
    if (list(value) if isinstance(value, (list, tuple)) else value) != expected:
        step.refuse(f"{name} = {value}: {what}")


def read_merge(op: str, operator: str | None = None):
    """An ONNX op of tensors of one shape that is netlang's `op` of layers' outputs (Add, Sub,
    Mul, Div, Sum), in the first operand's layout; with one operand a number, tensor math with
    `operator` (`x * 0.5`, `1 / x`), in any layout."""
    def reader(step):
        count = step.input_count
        numbers = [i for i in range(count) if step.constant(i) is not None
                   and step.constant(i).size == 1]
        if operator is not None and count == 2 and len(numbers) == 1:
            tensor = 1 - numbers[0]
            value = step.value(tensor)
            number = scalar_input(step, numbers[0], "constant")
            sides = ["{0}", repr(number)] if tensor == 0 else [repr(number), "{0}"]
            layer = step.expression(f" {operator} ".join(sides), [value.layer])
            return step.result(layer, value.perm, value.unit_axes)
        if any(step.constant(i) is not None for i in range(count)):
            step.refuse(f"a constant tensor operand has no netlang form (netlang's `{op}` "
                        f"reads layers' outputs, and numbers)")
        if len({step.shape(i) for i in range(count)}) != 1:
            step.refuse(f"its operands' shapes differ: netlang's `{op}` takes one shape")
        perm = step.value(0).perm
        layer = step.layer(op, {}, [step.input(i, perm) for i in range(count)])
        return step.result(layer, perm)
    return reader


def scalar_input(step, i: int, what: str) -> float:
    """Input i, a constant holding one number."""
    array = step.weight(i, what)
    if array.size != 1:
        step.refuse(f"its {what} is not one number")
    return float(str(np.float32(array.reshape(-1)[0])))
