"""A netlang model under construction from an ONNX graph, and what an op's ONNX reader sees.

The importer (onnx_import.py) walks the ONNX nodes in order and calls the reader registered
for each node's op type (`reads_onnx` in netlang/ops/registry.py) with an `ImportStep`: the
node's attributes, its operands (as netlang values, or as constant arrays), the ONNX shapes,
and the means to add netlang layers.  The layers are `Layer` records that onnx_import_source.py
writes as a .net file; nothing here imports the `onnx` package.

Layouts.  ONNX's convolutions read (N, C, H, W), netlang's (N, H, W, C).  An ONNX tensor is
held as a `Value`: a netlang layer and a permutation `perm` (the ONNX tensor is the netlang
tensor transposed by `perm`; None: the same layout), the inverse of how the exporter carries
layouts (onnx_graph.py).  A Transpose only changes `perm`; a reader asks for an operand in the
layout it needs (`step.input(i, perm)`), and a netlang `permute` is written only where the
value is in another layout.  So the transposes netlang's own export inserts cancel, and a
foreign graph's channels-first chain becomes a channels-last one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from netlang.errors import UsageError
from netlang.ops import get_op
from netlang.ops.schema import ArgumentProblem


class ImportRefused(UsageError):
    """An ONNX node (or one use of it) that has no netlang form, named by op type and node."""


@dataclasses.dataclass
class Layer:
    """One netlang layer (or graph input) of the model being imported.

    `args` are the op's arguments by name (those equal to the op's default are not written);
    `weights` maps the op's parameter names to arrays; `name_hint` is the ONNX name the layer
    is called after when it has weights (written `as name`); `source` is the ONNX tensor it
    computes, which names the value where the .net file needs a name for it."""

    op: str
    args: dict
    operands: list
    weights: dict
    name_hint: str | None
    source: str
    # For a graph input: its per-example shape, dtype, and a note for the comment beside it.
    shape: tuple = ()
    dtype: str = "float32"
    note: str = ""
    # Tensor math instead of a layer call: the expression, its operands as {0}, {1}
    # (`{0} * 0.5`); the front end lowers it to its own ops.
    expression: str | None = None


@dataclasses.dataclass(frozen=True)
class Value:
    """An ONNX tensor as a netlang layer's output: the ONNX tensor is the output transposed by
    `perm` (None: the same layout), with `unit_axes` axes of size 1 after it (a global pool's
    (N, C, 1, 1))."""

    layer: int
    perm: tuple | None = None
    unit_axes: int = 0


@dataclasses.dataclass(frozen=True)
class Zeros:
    """A tensor of zeros whose shape follows the batch (PyTorch's initial recurrent states, an
    Expand of a zero constant): a reader may take it as "not given"."""


def identity(rank: int) -> tuple:
    """The permutation that moves nothing."""
    return tuple(range(rank))


def compose(perm: tuple | None, then: tuple) -> tuple | None:
    """The layout of a tensor laid out by `perm` and then transposed by `then` (None where that
    is netlang's own layout)."""
    have = perm or identity(len(then))
    result = tuple(have[axis] for axis in then)
    return None if result == identity(len(then)) else result


def relaid(model, value: Value, want: tuple, source: str) -> int | None:
    """A `permute` layer whose output, transposed by `want`, is the ONNX tensor `value` holds
    (None where that would move the batch axis)."""
    have = value.perm or identity(len(want))
    # The ONNX tensor's axis i is axis have[i] of the layer's output; the new layer's axis
    # want[i] must be that same axis.
    move = tuple(have[want.index(axis)] for axis in range(len(want)))
    if move[0] != 0:
        return None
    return model.add(Layer("permute", {"axes": tuple(a - 1 for a in move[1:])}, [value.layer],
                           {}, None, source))


class ImportedModel:
    """The layers, inputs and outputs read so far."""

    def __init__(self):
        self.layers: list[Layer] = []
        self.outputs: dict[str, int] = {}

    def add(self, layer: Layer) -> int:
        """Appends `layer`; returns its index."""
        self.layers.append(layer)
        return len(self.layers) - 1


class OnnxNodeView:
    """An ONNX node's op type, name, attributes and inputs, as plain Python values."""

    def __init__(self, node, attributes: dict):
        self.node = node
        self.op_type = node.op_type
        self.name = node.name or (node.output[0] if node.output else node.op_type)
        self.attributes = attributes
        self.inputs = list(node.input)
        self.outputs = list(node.output)

    def attr(self, name: str, default=None):
        """The attribute `name` (ints, floats, strings, lists of them, or an array)."""
        return self.attributes.get(name, default)


class ImportStep:
    """What a reader sees for one ONNX node (see the module docstring)."""

    def __init__(self, importer, view: OnnxNodeView):
        self._importer = importer
        self.view = view
        self.op_type = view.op_type
        self.name = view.name

    # ---- reading the node --------------------------------------------------------------------

    def attr(self, name: str, default=None):
        """The node's attribute `name`, or `default`."""
        return self.view.attr(name, default)

    def has_input(self, i: int) -> bool:
        """Whether optional input i is given."""
        return i < len(self.view.inputs) and self.view.inputs[i] != ""

    @property
    def input_count(self) -> int:
        """How many inputs the node lists (optional ones left out at the end not counted)."""
        return len(self.view.inputs)

    def constant(self, i: int) -> np.ndarray | None:
        """Input i's value when it is a constant (an initializer, or computed from them), else
        None."""
        return self._importer.constants.get(self.view.inputs[i]) if self.has_input(i) else None

    def weight(self, i: int, what: str) -> np.ndarray:
        """Input i, which must be a constant (`what` names it in the refusal)."""
        array = self.constant(i)
        if array is None:
            self.refuse(f"its {what} is computed in the graph, not a constant")
        return array

    def value(self, i: int) -> Value:
        """Input i as a netlang value, whatever its layout."""
        name = self.view.inputs[i]
        if isinstance(self._importer.values.get(name), Zeros):
            self.refuse(f"input {i} (`{name}`) is zeros expanded to the batch, which netlang "
                        f"reads only as a recurrent layer's initial state")
        if name in self._importer.constants:
            self.refuse(f"input {i} (`{name}`) is a constant, which netlang reads only as a "
                        f"layer's weights")
        return self._importer.values[name]

    def is_zeros(self, i: int) -> bool:
        """Whether input i is zeros expanded to the batch (see `Zeros`)."""
        return self.has_input(i) and isinstance(self._importer.values.get(self.view.inputs[i]),
                                                Zeros)

    def zeros(self) -> Zeros:
        """The node's value: zeros expanded to the batch."""
        return Zeros()

    def shape(self, i: int) -> tuple | None:
        """Input i's ONNX shape (None for an axis of unknown size; None when not inferred)."""
        return self._importer.shapes.get(self.view.inputs[i])

    def out_shape(self, j: int = 0) -> tuple | None:
        """Output j's ONNX shape, as ONNX's shape inference gives it."""
        return self._importer.shapes.get(self.view.outputs[j])

    def rank(self, i: int) -> int:
        """The rank of input i's ONNX tensor."""
        shape = self.shape(i)
        if shape is None:
            self.refuse(f"the shape of input `{self.view.inputs[i]}` is not known")
        return len(shape)

    def input(self, i: int, perm: tuple | None = None) -> int:
        """A netlang layer whose output, transposed by `perm` (None: as it is), is input i."""
        value = self.value(i)
        if value.unit_axes:
            self.refuse(f"it reads `{self.view.inputs[i]}` with its axes of size 1; netlang "
                        f"maps only Flatten or Reshape of a global pool")
        rank = self.rank(i)
        want = perm or identity(rank)
        have = value.perm or identity(rank)
        if want == have:
            return value.layer
        layer = relaid(self._importer.model, value, want, self.view.outputs[0])
        if layer is None:
            self.refuse(f"it reads `{self.view.inputs[i]}` with its batch axis moved, which "
                        f"netlang cannot lay out")
        return layer

    # ---- building the model ------------------------------------------------------------------

    def layer(self, op: str, args: dict, operands: list, weights: dict | None = None,
              name_from: int | None = None) -> int:
        """Adds a netlang layer of `op` reading the layers `operands`; returns its index.
        `weights` (parameter name → array) name the layer after ONNX input `name_from`."""
        hint = None
        if weights:
            source = self.view.inputs[name_from] if name_from is not None else ""
            hint = layer_name_of(source) or module_of_node(self.name)
        return self._importer.model.add(Layer(op, dict(args), list(operands), dict(weights or {}),
                                              hint, self.view.outputs[0]))

    def expression(self, template: str, operands: list) -> int:
        """Adds tensor math over the layers `operands` (`{0} * 0.5`); returns its index."""
        return self._importer.model.add(Layer("", {}, list(operands), {}, None,
                                              self.view.outputs[0], expression=template))

    def result(self, layer: int, perm: tuple | None = None, unit_axes: int = 0) -> Value:
        """The node's value: netlang layer `layer`'s output laid out by `perm`."""
        return Value(layer, None if perm is None or perm == identity(len(perm)) else tuple(perm),
                     unit_axes)

    def refuse(self, reason: str):
        """Stops the import: this node cannot be read as netlang (`reason`)."""
        raise ImportRefused(f"ONNX `{self.op_type}` node `{self.name}` cannot be imported: "
                            f"{reason}")

    # ---- looking past the node (a recurrent op's outputs are read through a fixed pattern) ---

    def only_consumer(self, tensor: str) -> OnnxNodeView | None:
        """The one node reading `tensor`, or None when none or several do (or it is an
        output of the graph)."""
        readers = self._importer.consumers.get(tensor, [])
        if len(readers) != 1 or tensor in self._importer.graph_outputs:
            return None
        return readers[0]

    def is_read(self, tensor: str) -> bool:
        """Whether any node or the graph's outputs read `tensor`."""
        return bool(tensor) and (tensor in self._importer.graph_outputs
                                 or bool(self._importer.consumers.get(tensor)))

    def constant_of(self, view: OnnxNodeView, i: int) -> np.ndarray | None:
        """Input i of another node `view` when it is a constant."""
        return self._importer.constants.get(view.inputs[i]) if i < len(view.inputs) else None

    def settle(self, view: OnnxNodeView, value: Value | None) -> None:
        """Takes node `view` (a reshape after this node, say) as read: its output is `value`
        (None: a step on the way, whose output only the next settled node reads)."""
        self._importer.settled.add(id(view.node))
        if value is not None:
            self._importer.values[view.outputs[0]] = value


def layer_name_of(initializer: str) -> str:
    """The layer an initializer belongs to, by its name: `conv1.weight` → `conv1`,
    netlang's `lstm1/const_2` → `lstm1`."""
    if "/" in initializer:
        return initializer.split("/", 1)[0]
    if "." in initializer:
        return initializer.rsplit(".", 1)[0]
    return ""


def module_of_node(name: str) -> str:
    """The module a node's name gives, where PyTorch and netlang name nodes by module and op:
    `/features/features.0/Conv` → `features/features.0`, `/fc/MatMul` → `fc`."""
    parts = [part for part in name.split("/") if part]
    return "/".join(parts[:-1]) if len(parts) > 1 else name


def arguments_written(op: str, args: dict) -> tuple[list, dict]:
    """The positional and keyword arguments to write for layer `op`: required ones in order,
    and the others where they differ from the op's default."""
    positional, keywords = [], {}
    for arg in get_op(op).args:
        if arg.name not in args:
            continue
        value = args[arg.name]
        if arg.required:
            positional.append(value)
        elif not _same_value(arg, value, arg.default):
            keywords[arg.name] = value
    return positional, keywords


def _same_value(arg, value, default) -> bool:
    """Whether `value` is the default `default` of `arg` once both are in canonical form."""
    if default is None or value is None:
        return value is default
    try:
        return arg.check(value) == arg.check(default)
    except ArgumentProblem:   # a value the reader wrote that the op refuses: written, and
        return False          # `netlang check` of the imported file names it
