"""An ONNX model read back as netlang layers (`netlang import`, `netlang.import_onnx`).

The file is read and checked with the `onnx` package (`onnx.checker`), its shapes inferred, and
its nodes walked in order: each by the reader its op type registers (`reads_onnx`,
netlang/ops/*), which adds netlang layers through an `ImportStep` (onnx_import_graph.py).  An
op type without a reader, or a use of one that netlang cannot express, stops the import with
one line naming the ONNX op type and node.  Only the nodes the graph's outputs need are read.

Inputs drop the batch axis; a 4-D float input that only channels-first ops read (Conv, the
pools, BatchNormalization...) is taken as an image and declared channels last, (H, W, C), as
netlang lays images out.  onnx_import_source.py writes the result as a .net file.
"""

from __future__ import annotations

import os

import numpy as np

from netlang.errors import UsageError
from netlang.interchange.onnx_export import onnx_package
from netlang.interchange.onnx_import_graph import (
    ImportRefused,
    ImportStep,
    ImportedModel,
    Layer,
    OnnxNodeView,
    Value,
    Zeros,
    identity,
    relaid,
)
from netlang.interchange.onnx_import_source import write_source
from netlang.ops import onnx_constant_op, onnx_inputs_read, onnx_reader, reads_channels_first

# The opsets read: from 13, where the ops took the forms the readers know (Softmax over one
# axis, Squeeze's axes as an input), to the newest the exporter writes.
OPSETS = range(13, 22)
# ONNX element types netlang has as input dtypes (onnx.TensorProto numbering).
INPUT_DTYPES = {1: "float32", 6: "int32", 7: "int64"}
# The layout an image input takes in ONNX, (N, C, H, W), of netlang's (N, H, W, C).
CHANNELS_FIRST = (0, 3, 1, 2)


def read_model(path):
    """The ONNX ModelProto at `path`, checked; one-line UsageErrors for a missing, unreadable
    or invalid file."""
    onnx = onnx_package()
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UsageError(f"{path}: a folder, not an ONNX file")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    try:
        model = onnx.load(path)
    except Exception as exc:   # protobuf's DecodeError and the like: the bytes are no model
        raise UsageError(f"{path}: not an ONNX model ({_first_line(exc)})") from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise UsageError(f"{path}: not a valid ONNX model: {_first_line(exc)}") from None
    return model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class OnnxImporter:
    """Reads one checked ONNX model into an `ImportedModel` (see `read`)."""

    def __init__(self, model, path: str):
        onnx = onnx_package()
        self.onnx = onnx
        self.path = path
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          None)
        if self.opset not in OPSETS:
            raise UsageError(f"{path}: ONNX opset {self.opset} is not read: netlang imports "
                             f"opsets {OPSETS.start} to {OPSETS.stop - 1}")
        inferred = onnx.shape_inference.infer_shapes(model)
        self.graph = inferred.graph
        self.shapes = {info.name: _dims(info) for info in [*self.graph.input,
                                                           *self.graph.value_info,
                                                           *self.graph.output]}
        self.constants = {t.name: onnx.numpy_helper.to_array(t) for t in self.graph.initializer}
        self.graph_outputs = [o.name for o in self.graph.output]
        self.views = [OnnxNodeView(node, {a.name: self._attribute(a) for a in node.attribute})
                      for node in self.graph.node]
        self.settled: set = set()
        self.values: dict = {}
        for view in self.views:   # Constant nodes first: a reader may look past its node
            if onnx_constant_op(view.op_type):
                self._store(view, onnx_reader(view.op_type)(ImportStep(self, view)))
                self.settled.add(id(view.node))
        self.needed = self._needed()
        # Who reads a tensor, among the nodes the outputs need (an exported recurrent layer's
        # unread sequence output still has its reshape).
        self.consumers: dict[str, list] = {}
        for view in self.views:
            if id(view.node) not in self.needed:
                continue
            for name in view.inputs:
                self.consumers.setdefault(name, []).append(view)
        self.model = ImportedModel()

    def _attribute(self, attribute):
        value = self.onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, self.onnx.TensorProto):
            return self.onnx.numpy_helper.to_array(value)
        if isinstance(value, list):
            return [_readable(v) for v in value]
        return _readable(value)

    def read(self) -> ImportedModel:
        """Every input, the nodes the outputs need, and the outputs, as netlang layers."""
        self._inputs()
        for view in self.views:
            if id(view.node) in self.settled or id(view.node) not in self.needed:
                continue
            if view.node.domain not in ("", "ai.onnx"):
                raise ImportRefused(f"ONNX `{view.op_type}` node `{view.name}` of domain "
                                    f"`{view.node.domain}` has no netlang form")
            reader = onnx_reader(view.op_type)
            if reader is None:
                raise ImportRefused(f"ONNX `{view.op_type}` node `{view.name}` has no netlang "
                                    f"form")
            self._store(view, reader(ImportStep(self, view)))
        for name in self.graph_outputs:
            self.model.outputs[name] = self._output_layer(name)
        return self.model

    def _store(self, view: OnnxNodeView, result) -> None:
        results = result if isinstance(result, (list, tuple)) else [result]
        for name, value in zip(view.outputs, results):
            if value is None or not name:
                continue
            if isinstance(value, np.ndarray):
                self.constants[name] = value
            else:
                self.values[name] = value if isinstance(value, (Value, Zeros)) else Value(value)

    def _needed(self) -> set:
        """The nodes the graph's outputs depend on (by id of their protobuf node)."""
        producer = {name: view for view in self.views for name in view.outputs}
        needed, todo = set(), list(self.graph_outputs)
        while todo:
            view = producer.get(todo.pop())
            if view is None or id(view.node) in needed:
                continue
            needed.add(id(view.node))
            inputs_read = onnx_inputs_read(view.op_type)
            read = range(len(view.inputs)) if inputs_read is None else \
                inputs_read(view.attr, lambda i, view=view: self.constants.get(view.inputs[i]))
            todo.extend(view.inputs[i] for i in read)
        return needed

    def _inputs(self) -> None:
        for info in self.graph.input:
            if info.name in self.constants:   # an initializer listed as an input (IR < 4)
                continue
            shape = self.shapes[info.name]
            elem = info.type.tensor_type.elem_type
            if elem not in INPUT_DTYPES:
                raise UsageError(f"{self.path}: input `{info.name}` has ONNX element type "
                                 f"{self.onnx.TensorProto.DataType.Name(elem)}, which netlang "
                                 f"inputs do not take (float32, int32, int64)")
            if not shape or any(size is None for size in shape[1:]):
                raise UsageError(f"{self.path}: input `{info.name}` has shape "
                                 f"{_shape_text(shape)}: netlang needs a batch axis first and "
                                 f"fixed sizes after it")
            readers = self.consumers.get(info.name, [])
            image = (len(shape) == 4 and INPUT_DTYPES[elem] == "float32" and readers
                     and all(reads_channels_first(view.op_type) for view in readers))
            sample = (shape[2], shape[3], shape[1]) if image else tuple(shape[1:])
            note = f"ONNX reads it as (N, C, H, W) = {_shape_text(shape)}" if image else ""
            layer = self.model.add(Layer("input", {}, [], {}, None, info.name, sample,
                                         INPUT_DTYPES[elem], note))
            self.values[info.name] = Value(layer, CHANNELS_FIRST if image else None)

    def _output_layer(self, name: str) -> int:
        """The layer computing graph output `name` in its ONNX layout."""
        if name not in self.values:
            raise ImportRefused(f"ONNX output `{name}` is a constant, which a netlang model "
                                f"cannot output")
        value = self.values[name]
        if value.unit_axes:
            raise ImportRefused(f"ONNX output `{name}` keeps a global pool's axes of size 1, "
                                f"which netlang's global_avgpool drops")
        if value.perm is None:
            return value.layer
        layer = relaid(self.model, value, identity(len(value.perm)), name)
        if layer is None:
            raise ImportRefused(f"ONNX output `{name}` is not batch first")
        return layer


def _readable(value):
    """An attribute's string decoded, and its float32 number as the shortest decimal that
    reads back as it (0.01, not 0.009999999776482582)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, float):
        return float(str(np.float32(value)))
    return value


def _dims(info) -> tuple:
    dims = info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


def _shape_text(shape) -> str:
    return "(" + ", ".join("?" if size is None else str(size) for size in shape) + ")"


def read_onnx(path) -> tuple[ImportedModel, int]:
    """The ONNX file at `path` as netlang layers, and its opset."""
    path = os.fspath(path)
    importer = OnnxImporter(read_model(path), path)
    return importer.read(), importer.opset


def onnx_to_source(path) -> tuple[str, dict]:
    """The ONNX file at `path` as .net source text (canonical form) and its weights (name →
    float32 array, as the compiled source names them)."""
    model, opset = read_onnx(path)
    return write_source(model, os.path.basename(os.fspath(path)), opset)


__all__ = ["ImportRefused", "OPSETS", "onnx_to_source", "read_model", "read_onnx"]
