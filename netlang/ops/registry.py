"""The op registry: every op defined once, its parts side by side.

An `OpDef` holds an op's argument schema, its shape rule, the parameters it
creates and its multiply-add count.  Later stages hang their parts on the same
object (reference forward, backward rule, kernel templates), so a test can walk
the registry and find any op that lacks one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

from netlang.ir.types import BATCH, TensorType, format_shape
from netlang.ops.schema import Arg


class ShapeProblem(Exception):
    """Raised by a shape rule; the caller attaches the source location."""


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """A parameter (or, with trainable=False, a buffer) that a layer creates."""

    name: str
    shape: tuple
    init: str  # see netlang.ops.init for the schemes
    fan_in: int = 1
    fan_out: int = 1
    buffer: bool = False
    # Whether weight penalties (L1, L2, elastic net) apply; by default to weights, not biases.
    penalise: bool | None = None

    @property
    def penalised(self) -> bool:
        if self.penalise is not None:
            return self.penalise
        return not self.buffer and (self.name == "weight" or self.name.startswith("weight_"))


class ShapeContext:
    """What a shape rule sees: operand types, who produced them, and how to fail."""

    def __init__(self, op: "OpDef", inputs: Sequence[TensorType], producers: Sequence[str]):
        self.op = op
        self.inputs = list(inputs)
        self.producers = list(producers)

    def describe(self, i: int) -> str:
        """`(None, 28, 28, 1) from `conv1`` — shape and producer of operand i."""
        return f"{self.inputs[i]} from `{self.producers[i]}`"

    def fail(self, message: str):
        raise ShapeProblem(message)

    def need_rank(self, i: int, ranks, what: str):
        if self.inputs[i].rank not in ranks:
            self.fail(f"`{self.op.name}` expects {what}, got {self.describe(i)}")

    def need_float(self, i: int):
        if not self.inputs[i].is_float:
            self.fail(f"`{self.op.name}` expects floating-point input, got "
                      f"{self.inputs[i].dtype} {self.describe(i)}")

    def need_int(self, i: int, what: str = "integer labels"):
        if self.inputs[i].is_float:
            self.fail(f"`{self.op.name}` expects {what}, got {self.inputs[i].dtype} {self.describe(i)}")


@dataclasses.dataclass
class OpDef:
    name: str
    family: str
    doc: str
    args: tuple[Arg, ...] = ()
    # Number of data operands a user passes (None: two or more, as in `concat`).
    arity: int | None = 1
    operand_names: tuple[str, ...] = ("x",)
    role: str = "layer"  # layer, loss, internal
    shape_rule: Callable | None = None
    params_rule: Callable | None = None
    macs_rule: Callable | None = None
    # The argument that ties this op's weight to another layer's, transposed.
    tie: str | None = None
    # Reference forward on NumPy arrays: fn(inputs, attrs, ctx) -> array.  The
    # interpreter runs it; it is the executable definition every back end matches.
    forward_rule: Callable | None = None
    # Vector-Jacobian rule: fn(builder, node, grad) -> one gradient node (or None) per
    # operand, built from graph ops, so the backward pass is a graph like the forward.
    vjp_rule: Callable | None = None
    # False for ops with no gradient by nature (labels, masks, the backward ops themselves).
    differentiable: bool = True
    # Training-mode side effect on buffer operands (batch norm's running statistics):
    # fn(inputs, attrs, ctx) -> {operand index: new value}, applied after the step.
    state_rule: Callable | None = None
    # CPU kernel templates, rendered into Numba source by netlang.codegen.cpu.  An
    # elementwise op gives a scalar expression over its operands ({0}, {1}, ...), which
    # the code generator fuses into loops; any other op emits statements; a view op
    # (flatten, reshape) gives a reshape of its operand's buffer and no code at all.
    cpu_expr: Callable | None = None     # fn(attrs, const) -> "expr with {0}, {1}"
    cpu_kernel: Callable | None = None   # fn(kernel) -> None, emitting lines
    cpu_view: bool = False
    # Scratch arrays a `cpu_kernel` needs (im2col columns, a transposed weight, per-channel
    # sums): fn(in_types, out_type, attrs) -> [(shape, batched[, dtype])], where a batched
    # shape is per example and dtype is "float" (the engine's), "acc64" (always float64) or
    # "int64".  The memory pass plans them as buffers that live only while the op runs; the
    # kernel reaches the i-th as `k.workspace(i)`.
    cpu_workspace: Callable | None = None
    # The CUDA kernel template (netlang.codegen.cuda), same signature as `cpu_kernel`.  Where
    # the CPU template is written with the target-neutral structure (`k.parallel`,
    # `k.reduction`, `k.matmul`) it is the same function; elementwise and view ops need none.
    cuda_kernel: Callable | None = None
    # Scratch arrays of the `cuda_kernel` where they differ from `cpu_workspace`'s (a GPU packs
    # far larger blocks of im2col columns); None: the same as the CPU's.
    cuda_workspace: Callable | None = None

    # Decorators that attach parts, so each op reads top to bottom in one place.
    def shape(self, fn):
        self.shape_rule = fn
        return fn

    def params(self, fn):
        self.params_rule = fn
        return fn

    def macs(self, fn):
        self.macs_rule = fn
        return fn

    def forward(self, fn):
        self.forward_rule = fn
        return fn

    def vjp(self, fn):
        self.vjp_rule = fn
        return fn

    def infer(self, ctx: ShapeContext, attrs: dict) -> TensorType:
        return self.shape_rule(ctx, attrs)

    def parameter_specs(self, inputs: Sequence[TensorType], attrs: dict) -> list[ParamSpec]:
        return list(self.params_rule(inputs, attrs)) if self.params_rule else []

    def count_macs(self, inputs: Sequence[TensorType], output: TensorType, attrs: dict) -> int:
        return int(self.macs_rule(inputs, output, attrs)) if self.macs_rule else 0


OPS: dict[str, OpDef] = {}


def define_op(name: str, *, family: str, doc: str, args: Sequence[Arg] = (), arity: int | None = 1,
              operand_names: Sequence[str] = ("x",), role: str = "layer",
              tie: str | None = None) -> OpDef:
    if name in OPS:
        raise ValueError(f"op {name!r} defined twice")
    op = OpDef(name=name, family=family, doc=doc, args=tuple(args), arity=arity,
               operand_names=tuple(operand_names), role=role, tie=tie)
    OPS[name] = op
    return op


def define_internal(name: str, *, family: str, doc: str, args: Sequence[Arg] = (),
                    arity: int | None = 1, shape=None, differentiable: bool = False) -> OpDef:
    """An op the compiler inserts (backward ops, masks), never written in a .net file."""
    op = define_op(name, family=family, doc=doc, args=args, arity=arity, role="internal")
    op.differentiable = differentiable
    if shape is not None:
        op.shape(shape)
    return op


def same_type_as(index: int):
    """Shape rule: the result has the type of operand `index` (most backward ops)."""
    def rule(ctx, attrs):
        return ctx.inputs[index]
    return rule


def get_op(name: str) -> OpDef | None:
    _load_families()
    return OPS.get(name)


def all_ops() -> dict[str, OpDef]:
    _load_families()
    return dict(OPS)


_loaded = False


def _load_families() -> None:
    # Importing the family modules registers their ops; done on first use rather
    # than at import time of this module, so the registry has no import cycle.
    global _loaded
    if _loaded:
        return
    _loaded = True
    from netlang.ops import (activations, conv, conv_kernels, core, dense, losses,  # noqa: F401
                             merge, norm, pool, recurrent, reshape)


# Shape helpers shared by several families.

def elementwise_same(ctx: ShapeContext, attrs) -> TensorType:
    ctx.need_float(0)
    return ctx.inputs[0]


def per_example_elements(t: TensorType) -> int:
    return math.prod(d for d in t.shape if d is not BATCH)


def shape_str(shape) -> str:
    return format_shape(shape)


def full_axis(rank: int, axis: int) -> int:
    """A per-example axis of the language (negative counts from the end) as a full-shape axis."""
    return axis + 1 if axis >= 0 else rank + axis


def check_axis(ctx, i: int, axis: int) -> int:
    rank = ctx.inputs[i].rank
    full = full_axis(rank, axis)
    if not 1 <= full < rank:
        ctx.fail(f"axis {axis} is out of range for {ctx.describe(i)} "
                 f"(per-example axes run from 0 to {rank - 2}, or -1 to {1 - rank})")
    return full
