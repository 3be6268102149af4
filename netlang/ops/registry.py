"""The op table: every op defined once, its parts side by side.

An `OpDef` holds an op's argument schema, its shape rule, the parameters it
creates and its multiply-add count, and every fact a later stage asks about the
op (reference forward, backward rule, kernel templates, fusion role, how a loss
reads classes...), so a test can walk the table and find any op that lacks a
part, and no module outside `netlang.ops` needs to branch on an op's name.

This module holds the table and the means to fill it; the family modules fill
it, and `netlang.ops` (the package) imports every family and offers the
look-ups `get_op` and `all_ops`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from netlang.ir.types import TensorType
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
    # Scales the scheme's range or standard deviation (a layer's `gain` argument).
    gain: float = 1.0
    buffer: bool = False
    # Whether weight penalties (L1, L2, elastic net) apply; by default to weights, not biases.
    penalise: bool | None = None

    @property
    def penalised(self) -> bool:
        """Whether weight penalties apply: as `penalise` says, else to weights, not biases."""
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
        """Rejects the operands with `message` (the caller adds where)."""
        raise ShapeProblem(message)

    def need_rank(self, i: int, ranks, what: str):
        """Fails unless operand i has one of `ranks` (counting the batch axis); `what` says
        what the op expects, in words."""
        if self.inputs[i].rank not in ranks:
            self.fail(f"`{self.op.name}` expects {what}, got {self.describe(i)}")

    def need_float(self, i: int):
        """Fails unless operand i is floating-point."""
        if not self.inputs[i].is_float:
            self.fail(f"`{self.op.name}` expects floating-point input, got "
                      f"{self.inputs[i].dtype} {self.describe(i)}")

    def need_int(self, i: int, what: str = "integer labels"):
        """Fails unless operand i holds integers (`what` names them)."""
        if self.inputs[i].is_float:
            self.fail(f"`{self.op.name}` expects {what}, got {self.inputs[i].dtype} {self.describe(i)}")


@dataclasses.dataclass
class OpDef:
    """One op: its schema, its rules and every fact later stages read (see the fields)."""

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
    # The operand index of a buffer that takes the op's output after a training step, where the
    # node has that operand (an RBM's persistent chains continue from the sample the step
    # drew), or None.
    output_state: int | None = None
    # Ops whose layers may share this op's parameters (`share = layer`): each reads the ones
    # it names from this op's (a dense layer takes an RBM's weight and hidden bias).
    lends_parameters_to: tuple[str, ...] = ()
    # An energy-based layer's model of its input (an RBM's): fn(attrs) -> an object with
    # `reconstruction(v, *params)` (p(v | h) after one up-down pass) and
    # `gibbs(start, *params, steps, key)` (visible samples), in NumPy; its params are the
    # node's parameter operands in order.  `netlang eval` and training's pictures read it
    # (netlang/train/rbm_report.py).
    visible_model: Callable | None = None
    # CPU kernel templates, rendered into Numba source by netlang.codegen.cpu.  An
    # elementwise op gives a scalar expression over its operands ({0}, {1}, ...), which
    # the code generator fuses into loops; any other op emits statements; a view op
    # (flatten, reshape) gives a reshape of its operand's buffer and no code at all.
    cpu_expr: Callable | None = None     # fn(attrs, c) -> "expr with {0}, {1}"; c: CpuSpelling
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

    # What later stages ask about an op, so that none of them branches on its name.
    # The kernel ends in an elementwise loop over the output (a product's bias add, batch
    # norm's output loop), so elementwise consumers can run inside it (passes/fusion.py).
    # Elementwise ops (those with a `cpu_expr`) host their consumers anyway.
    epilogue_host: bool = False
    # A loss gradient's kernel also computes this loss when both read the same operands with
    # the same attributes, so the shared part (a softmax) is computed once (passes/fusion.py).
    paired_loss: str | None = None
    # A linear product x·W (+ b) of operands (x, weight[, bias]) with a `bias` attribute: a
    # per-channel affine map after it (batch norm in evaluation) folds into its weight and bias.
    foldable_product: bool = False
    # For an op fed by a `foldable_product`: fn(graph, node, product) rewrites the node, in an
    # evaluation graph, as the product itself with folded parameters (passes/fold_batchnorm.py).
    fold_rule: Callable | None = None
    # fn(graph, node): rewrites the node as it runs inside a training step (dropout draws its
    # mask as a node of its own, so the backward pass multiplies by the same mask;
    # passes/training.py).
    training_rewrite_rule: Callable | None = None
    # How a loss's prediction reads as classes (netlang/train/metrics.py): "scores" (one score
    # per class; softmax gives probabilities), "probability" (of class 1 for each unit, or its
    # logit under `logits = true`) or "value" (a regressed value: class 1 above 0.5).
    class_reading: str | None = None
    # The op turns class scores into probabilities (softmax, sigmoid): a class's score is read
    # before it (netlang/saliency.py).
    normalises_scores: bool = False
    # How many values an integer operand can take: fn(index, attrs, in_types) -> bound, or None
    # where the op does not say (an embedding's ids run below its vocabulary, a class label
    # below the number of scores); random benchmark inputs are drawn within it.
    integer_bound: Callable | None = None
    # The kernel is one matrix product of the operands' rows, gᵀ·x (a dense layer's weight
    # gradient), which can accumulate the optimiser's update straight into the parameter
    # through gemm's C ← α·A·B + β·C (netlang/codegen/update.py UpdatePlan).
    absorbs_update: bool = False
    # The op is shorthand for several ops applied to its operands, and a step naming it yields
    # the tuple of their results (`split`: one `slice` per part): fn(ctx: ShapeContext, attrs)
    # -> [(op name, attrs)], failing through ctx like a shape rule.  Such an op has no forward,
    # backward or kernel of its own and never appears in a graph.
    expand_rule: Callable | None = None
    # Running a sequence model one time step at a time (passes/stepping.py, for text
    # sampling).  The time axis of a sequence is the first per-example axis.  `step_local`:
    # fn(attrs, in_types) -> whether step t of the output reads only step t of each sequence
    # operand (dense and embedding map each step alone; a softmax over features does).
    # Elementwise ops (a `cpu_expr`) are step-local by nature; an op that says nothing is taken
    # to mix steps (a convolution over time), and a model with one on the stepped path is
    # refused.
    step_local: Callable | None = None
    # A recurrent layer carries a state from one step to the next.  `carried_states`:
    # fn(attrs, operand types) -> {initial-state operand name: its per-example shape}, raising
    # ShapeProblem where the layer cannot run one step at a time (it reads the sequence
    # backwards too); `step_rule`: fn(builder, attrs, operands, states) -> (output,
    # {state name: the state after the step}, whether the output is still a sequence): one
    # step of the layer built from graph ops (as `vjp_rule` builds its backward pass), its
    # operands those of the layer with a sequence of one step, `states` as `carried_states`
    # shapes them.
    carried_states: Callable | None = None
    step_rule: Callable | None = None
    # How the op is written in ONNX (netlang/interchange/onnx_export.py): fn(step) -> the
    # node's value, adding ONNX nodes through the exporter's `ExportStep` (shared forms in
    # onnx_forms.py).  None: the exporter refuses a model using the op, naming it and its layer.
    onnx_rule: Callable | None = None
    # The language reference (docs/language.md, generated by docs/gen_ops_table.py) of an op a
    # user writes: its shape rule and parameters in words, and an example model.
    shape_doc: str | None = None
    params_doc: str | None = None
    example: str | None = None

    def document(self, *, shape: str, params: str | None = None, example: str) -> None:
        """Sets the op's entry in the language reference: shape rule and parameters (None:
        it learns nothing) in words, and an example model."""
        self.shape_doc, self.params_doc, self.example = shape, params, example

    # Decorators that attach parts, so each op reads top to bottom in one place.
    def shape(self, fn):
        """Attaches the shape rule: fn(ctx: ShapeContext, attrs) -> the result's type."""
        self.shape_rule = fn
        return fn

    def params(self, fn):
        """Attaches the parameters rule: fn(input types, attrs) -> [ParamSpec]."""
        self.params_rule = fn
        return fn

    def macs(self, fn):
        """Attaches the multiply-add count: fn(input types, output type, attrs) -> int."""
        self.macs_rule = fn
        return fn

    def forward(self, fn):
        """Attaches the reference forward (see `forward_rule`)."""
        self.forward_rule = fn
        return fn

    def vjp(self, fn):
        """Attaches the vector-Jacobian rule (see `vjp_rule`)."""
        self.vjp_rule = fn
        return fn

    def expand(self, fn):
        """Attaches the expansion into other ops (see `expand_rule`)."""
        self.expand_rule = fn
        return fn

    def fold_into(self, fn):
        """Attaches the rule that folds this op into the product before it (see `fold_rule`)."""
        self.fold_rule = fn
        return fn

    def training_rewrite(self, fn):
        """Attaches the training-mode rewrite (see `training_rewrite_rule`)."""
        self.training_rewrite_rule = fn
        return fn

    def is_step_local(self, attrs: dict, in_types: Sequence[TensorType]) -> bool:
        """Whether step t of this op's output reads only step t of its sequence operands (see
        `step_local`)."""
        if self.cpu_expr is not None:
            return True
        return bool(self.step_local is not None and self.step_local(attrs, in_types))

    def infer(self, ctx: ShapeContext, attrs: dict) -> TensorType:
        """The result's type for these operands (raises ShapeProblem where they do not fit)."""
        return self.shape_rule(ctx, attrs)

    def parameter_specs(self, inputs: Sequence[TensorType], attrs: dict) -> list[ParamSpec]:
        """The parameters a layer of this op creates (none for most ops)."""
        return list(self.params_rule(inputs, attrs)) if self.params_rule else []

    def count_macs(self, inputs: Sequence[TensorType], output: TensorType, attrs: dict) -> int:
        """Multiply-adds per example (0 for ops that count none)."""
        return int(self.macs_rule(inputs, output, attrs)) if self.macs_rule else 0


OPS: dict[str, OpDef] = {}

# How ONNX ops are read back into netlang layers (`netlang import`): ONNX op type → fn(step)
# → the node's value(s), adding layers through the importer's `ImportStep`
# (netlang/interchange/onnx_import_graph.py).  Each family registers its readers with
# `reads_onnx`, beside its ops' `onnx_rule`; an ONNX op type with none is refused by name.
ONNX_READERS: dict[str, Callable] = {}
# The ONNX op types that read their first operand channels first, (N, C, ...): a 4-D graph
# input that only they read is taken as an image in netlang's (N, H, W, C) layout.
ONNX_CHANNELS_FIRST: set[str] = set()
# ONNX op types whose value is a constant by nature (Constant): read before the walk, so a
# reader looking past its node finds them (a shape after a recurrent op).
ONNX_CONSTANT_OPS: set[str] = set()
# ONNX op type → fn(attribute, constant) → the input indices its reader reads, where not all
# of them (an Expand of zeros never reads the shape it is expanded to): what computes the
# others is not read.  `attribute(name)` and `constant(i)` look at the node.
ONNX_INPUTS_READ: dict[str, Callable] = {}


def reads_onnx(*op_types: str, channels_first: bool = False, constant: bool = False,
               inputs_read: Callable | None = None):
    """Registers the decorated fn(step) as the reader of the ONNX op types `op_types`
    (`channels_first`, `constant` and `inputs_read` fill the tables above)."""
    def attach(fn):
        for op_type in op_types:
            if op_type in ONNX_READERS:
                raise ValueError(f"ONNX op {op_type!r} has two readers")
            ONNX_READERS[op_type] = fn
            if channels_first:
                ONNX_CHANNELS_FIRST.add(op_type)
            if constant:
                ONNX_CONSTANT_OPS.add(op_type)
            if inputs_read is not None:
                ONNX_INPUTS_READ[op_type] = inputs_read
        return fn
    return attach


def define_op(name: str, *, family: str, doc: str, args: Sequence[Arg] = (), arity: int | None = 1,
              operand_names: Sequence[str] = ("x",), role: str = "layer",
              tie: str | None = None) -> OpDef:
    """Registers a new op under `name` (once only) and returns it for its parts to attach."""
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


# Shape helpers shared by several families.

def elementwise_same(ctx: ShapeContext, attrs) -> TensorType:
    """Shape rule of a float elementwise op: the result has its operand's type."""
    ctx.need_float(0)
    return ctx.inputs[0]


def full_axis(rank: int, axis: int) -> int:
    """A per-example axis of the language (negative counts from the end) as a full-shape axis."""
    return axis + 1 if axis >= 0 else rank + axis


def off_the_time_axis(attrs: dict, in_types: Sequence[TensorType]) -> bool:
    """`step_local` rule of an op that works along its `axis` attribute (softmax, concat):
    step-local unless that axis is the time axis, the first per-example one."""
    return full_axis(in_types[0].rank, attrs["axis"]) != 1


def always(attrs: dict, in_types: Sequence[TensorType]) -> bool:
    """`step_local` rule of an op that reads each step alone whatever its attributes."""
    return True


def check_axis(ctx, i: int, axis: int) -> int:
    """`axis` of operand i as a full-shape axis; fails where it is not a per-example axis."""
    rank = ctx.inputs[i].rank
    full = full_axis(rank, axis)
    if not 1 <= full < rank:
        ctx.fail(f"axis {axis} is out of range for {ctx.describe(i)} "
                 f"(per-example axes run from 0 to {rank - 2}, or -1 to {1 - rank})")
    return full
