"""An ONNX graph under construction, as plain Python data, and what an op's export rule sees.

The exporter (onnx_export.py) walks a forward program and calls each op's `onnx_rule`
(netlang/ops/registry.py) with an `ExportStep`: the node's attributes and operand types, its
operands as ONNX values, and the means to add ONNX nodes and constants.  Nothing here imports
the `onnx` package (an optional dependency): nodes are `OnnxNode` records, constants NumPy
arrays, and onnx_export.py turns them into a ModelProto at the end.

Layouts.  netlang's tensors are batch first and channels last, (N, H, W, C); ONNX's Conv and
pooling ops want (N, C, H, W).  A value therefore lives in the ONNX graph as a `Value`: a name
and a permutation `perm` (the ONNX tensor is the netlang tensor transposed by `perm`; None:
netlang's own layout).  A rule asks for an operand in the layout it needs (`step.input(i)`,
`step.channels_first(i)`), and a Transpose is added only when the value is in another layout,
at most once per value and layout.  An op that does not care (relu, add) passes the layout of
its operand through, so a chain conv → relu → pool → conv runs channels-first with no
transposes between, and the transposes that would cancel are never made.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from netlang.errors import UsageError
from netlang.ops.onnx_forms import channels_first_perm


@dataclasses.dataclass
class OnnxNode:
    """One ONNX node: its op type, input and output names, and attributes."""

    op_type: str
    inputs: list
    outputs: list
    attrs: dict
    name: str


@dataclasses.dataclass(frozen=True)
class Value:
    """A netlang value in the ONNX graph: the ONNX tensor `name` is the netlang tensor
    transposed by `perm` (None: in netlang's own layout)."""

    name: str
    perm: tuple | None = None


def _compose(have: tuple | None, want: tuple | None, rank: int) -> tuple | None:
    """The Transpose perm taking a tensor laid out by `have` to the layout `want` (None when
    they are the same layout)."""
    identity = tuple(range(rank))
    have, want = have or identity, want or identity
    if have == want:
        return None
    return tuple(have.index(axis) for axis in want)


class ExportRefused(UsageError):
    """An op (or one use of it) that ONNX export does not support, named with its layer."""


class OnnxGraphBuilder:
    """The nodes and constants of an ONNX graph being built, with fresh names for each."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[OnnxNode] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._taken: set = set()
        self._transposed: dict = {}   # (name, perm) → the transposed value's name

    def fresh(self, base: str) -> str:
        """A name not used yet, from `base` (reduced to a safe character set)."""
        base = re.sub(r"[^A-Za-z0-9_.:/-]", "_", base) or "v"
        name, count = base, 1
        while name in self._taken:
            count += 1
            name = f"{base}_{count}"
        self._taken.add(name)
        return name

    def reserve(self, name: str) -> None:
        """Keeps `name` (a graph input or output) from being handed out by `fresh`."""
        self._taken.add(name)

    def add(self, op_type: str, inputs, base: str, outputs: int = 1, **attrs):
        """Adds a node; returns its output's name (a list of names when `outputs` > 1).  An
        input given as "" is an optional input left out."""
        names = [self.fresh(f"{base}/{op_type}" + (f":{i}" if outputs > 1 else ""))
                 for i in range(outputs)]
        self.nodes.append(OnnxNode(op_type, list(inputs), names,
                                   {k: v for k, v in attrs.items() if v is not None},
                                   self.fresh(f"{base}/{op_type}#node")))
        return names if outputs > 1 else names[0]

    def constant(self, array, base: str) -> str:
        """A constant tensor (an initializer) holding `array`; returns its name."""
        name = self.fresh(base)
        self.initializers[name] = np.ascontiguousarray(array)
        return name

    def named_constant(self, name: str, array) -> str:
        """An initializer under exactly `name` (a parameter's, so tools show its own name)."""
        self._taken.add(name)
        self.initializers[name] = np.ascontiguousarray(array)
        return name

    def in_layout(self, value: Value, want: tuple | None, rank: int, base: str) -> str:
        """The name of `value` laid out as `want` (None: netlang's layout), adding one
        Transpose the first time a value is asked for in a layout it is not in."""
        perm = _compose(value.perm, want, rank)
        if perm is None:
            return value.name
        key = (value.name, perm)
        if key not in self._transposed:
            self._transposed[key] = self.add("Transpose", [value.name], base, perm=list(perm))
        return self._transposed[key]


class ExportStep:
    """What an op's `onnx_rule` sees for one node: its attributes and operand types, its
    operands as ONNX values, and the builder to add nodes to.  The rule returns the node's
    value: an ONNX name in netlang's layout, or a `Value` with its layout."""

    def __init__(self, builder: OnnxGraphBuilder, graph, node: int, operands: list, arrays: list):
        self.builder = builder
        data = graph.nodes[node]
        self.op = data["op"]
        self.layer = data.get("layer") or data["name"]
        self.attrs = data["attrs"]
        self.in_types = [graph.type_of(o) for o in graph.operands(node)]
        self.out_type = graph.type_of(node)
        self.operands = operands   # one Value per operand
        self._arrays = arrays      # one NumPy array per operand that is a parameter, else None

    @property
    def opset(self) -> int:
        """The ONNX opset the graph is written for."""
        return self.builder.opset

    def refuse(self, reason: str):
        """Stops the export: this op, in this layer, cannot be written as ONNX (`reason`)."""
        raise ExportRefused(f"`{self.op}` (layer `{self.layer}`) cannot be exported to ONNX: "
                            f"{reason}")

    def value(self, i: int) -> Value:
        """Operand i as it is in the ONNX graph, whatever its layout."""
        return self.operands[i]

    def input(self, i: int, perm: tuple | None = None) -> str:
        """Operand i's ONNX name in the layout `perm` (None: netlang's own)."""
        return self.builder.in_layout(self.operands[i], perm, self.in_types[i].rank, self.layer)

    def channels_first(self, i: int) -> str:
        """Operand i laid out (N, C, ...) from netlang's (N, ..., C)."""
        return self.input(i, channels_first_perm(self.in_types[i].rank))

    def array(self, i: int) -> np.ndarray | None:
        """Operand i's value when it is a parameter (its weights), else None."""
        return self._arrays[i]

    def node(self, op_type: str, inputs, outputs: int = 1, **attrs):
        """Adds an ONNX node named after this layer; returns its output name (or names)."""
        return self.builder.add(op_type, inputs, self.layer, outputs, **attrs)

    def constant(self, array) -> str:
        """A constant tensor, named after this layer."""
        return self.builder.constant(np.asarray(array), f"{self.layer}/const")

    def ints(self, values) -> str:
        """A constant int64 vector (shapes, axes, slice bounds)."""
        return self.constant(np.asarray(list(values), dtype=np.int64).reshape(-1))

    def scalar(self, number) -> str:
        """A constant float32 scalar."""
        return self.constant(np.asarray(number, dtype=np.float32))

    def reduce(self, op_type: str, x: str, axes, keepdims: bool) -> str:
        """`op_type` (ReduceSum, ReduceMean, ReduceMax) over `axes`: an input since opset 18
        (13 for ReduceSum), an attribute before."""
        axes = [int(a) for a in axes]
        takes_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if takes_input:
            return self.node(op_type, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.node(op_type, [x], axes=axes, keepdims=int(keepdims))

    def batch_shape(self, x: str, tail) -> str:
        """The shape (batch of `x`, *tail) as an int64 vector, for Expand and Reshape."""
        shape = self.node("Shape", [x])
        batch = self.node("Slice", [shape, self.ints([0]), self.ints([1])])
        return self.node("Concat", [batch, self.ints(tail)], axis=0)
