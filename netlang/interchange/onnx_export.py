"""A model's inference graph as an ONNX model (`netlang export`, `Model.export`).

The graph exported is the forward program that `netlang/pipeline.py` builds for evaluation:
training-only ops are absent (losses, masks), dropout is the identity and batch norm reads its
running statistics.  Only what the outputs need is written; inputs and outputs keep their
names and their layouts from the .net file (batch first, channels last), and parameters
become initializers under their own names (`conv1.weight`).  Each op is written by its
`onnx_rule` (netlang/ops/registry.py); an op without one stops the export with a one-line
error naming it and its layer.  See onnx_graph.py for how layouts are carried, and
docs/interchange.md.

Everything is written in float32 (a float64 model's weights are rounded), and checked with
`onnx.checker` (with shape inference) before the file is written.
"""

from __future__ import annotations

import os

import numpy as np

from netlang.errors import UsageError
from netlang.interchange.onnx_graph import ExportRefused, ExportStep, OnnxGraphBuilder, Value
from netlang.ir.graph import Graph
from netlang.ops import get_op
from netlang.pipeline import forward_program
from netlang.version import __version__

# The opset written unless asked otherwise (from 2022, so runtimes of that age read it), and
# the range offered: 13 is where the ops used here took their present form (Softmax over one axis,
# ReduceSum's axes as an input).
DEFAULT_OPSET = 17
OPSETS = range(13, 22)
# The name a dynamic batch axis takes in the model's input and output shapes.
BATCH_AXIS = "batch"


def onnx_package():
    """The `onnx` module, or a one-line UsageError saying how to install it."""
    # Imported here, not at the top: onnx is an optional dependency (`pip install netlang[onnx]`).
    try:
        import onnx
    except ImportError:
        raise UsageError("ONNX export needs the `onnx` package: pip install 'netlang[onnx]'") \
            from None
    return onnx


def _values(builder: OnnxGraphBuilder, graph: Graph, order, params: dict) -> tuple[dict, list]:
    """Every node of `order` as an ONNX value; and the graph inputs the program reads."""
    values, inputs = {}, []
    for node in order:
        data = graph.nodes[node]
        if data["op"] == "input":
            builder.reserve(data["name"])
            values[node] = Value(data["name"])
            inputs.append(node)
        elif data["op"] == "param":
            array = np.asarray(params[data["name"]], dtype=np.float32)
            values[node] = Value(builder.named_constant(data["name"], array))
        else:
            rule = get_op(data["op"]).onnx_rule
            operands = graph.operands(node)
            step = ExportStep(builder, graph, node, [values[o] for o in operands],
                              [builder.initializers.get(values[o].name)
                               if graph.op(o) == "param" else None for o in operands])
            if rule is None:
                step.refuse("it has no ONNX form yet")
            result = rule(step)
            values[node] = Value(result) if isinstance(result, str) else Value(*result)
    return values, inputs


def _name_outputs(builder: OnnxGraphBuilder, final: dict) -> None:
    """Makes each ONNX value of `final` (output name → value) the graph output so named:
    renames the node output that computes it, or adds an Identity where the value is an input,
    a constant or already another output."""
    produced = {out: node for node in builder.nodes for out in node.outputs}
    renamed = {}
    for name, value in final.items():
        node = produced.pop(value, None)
        if node is None:
            builder.add("Identity", [renamed.get(value, value)], name)
            builder.nodes[-1].outputs = [name]
            continue
        renamed[value] = name
        node.outputs = [name if out == value else out for out in node.outputs]
        for other in builder.nodes:
            other.inputs = [name if i == value else i for i in other.inputs]


def build_model(graph: Graph, params: dict, *, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, batch: int = 1, doc: str = ""):
    """The ONNX ModelProto of `graph`'s inference pass with the weights `params` (name →
    array, buffers included).  `export_onnx` writes and checks it."""
    onnx = onnx_package()
    helper = onnx.helper
    if opset not in OPSETS:
        raise UsageError(f"opset {opset} is not offered: use {OPSETS.start} to {OPSETS.stop - 1}")
    if batch < 1:
        raise UsageError(f"the batch size must be at least 1, got {batch}")
    outputs = graph.graph["outputs"]
    program = forward_program(graph, list(outputs), mode="eval")
    builder = OnnxGraphBuilder(opset)
    for name in outputs:
        builder.reserve(name)
    values, inputs = _values(builder, graph, program.order, params)
    final = {name: builder.in_layout(values[node], None, graph.type_of(node).rank, name)
             for name, node in outputs.items()}
    _name_outputs(builder, final)

    first_axis = BATCH_AXIS if dynamic_batch else batch

    def tensor_info(node, name):
        t = graph.type_of(node)
        elem = helper.np_dtype_to_tensor_dtype(np.dtype("float32" if t.is_float else t.dtype))
        return helper.make_tensor_value_info(name, elem, [first_axis, *t.sample_shape])

    # A parameter that only feeds a rule's own constants (a recurrent layer's, its gates
    # reordered) is not written.
    read = {name for node in builder.nodes for name in node.inputs} | set(final)
    initializers = [onnx.numpy_helper.from_array(array, name)
                    for name, array in builder.initializers.items() if name in read]
    nodes = [helper.make_node(n.op_type, n.inputs, n.outputs, name=n.name, **n.attrs)
             for n in builder.nodes]
    onnx_graph = helper.make_graph(
        nodes, os.path.basename(doc) or "netlang", [tensor_info(n, graph.nodes[n]["name"])
                                                    for n in inputs],
        [tensor_info(node, name) for name, node in outputs.items()], initializers)
    model = helper.make_model(onnx_graph, producer_name="netlang", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", opset)], doc_string=doc)
    return model


def export_onnx(graph: Graph, params: dict, path, **options) -> str:
    """Writes `graph`'s inference pass as an ONNX file at `path` (see `build_model` for the
    options), checked by onnx.checker with shape inference; returns the path."""
    path = os.fspath(path)
    onnx = onnx_package()
    onnx.save(build_model(graph, params, **options), path)
    # Checked from the file: handed the model, the checker serialises it once more (VGG-16's
    # 553 MB took 17 s that way, against 5 s from the file).
    onnx.checker.check_model(path, full_check=True)
    return path


__all__ = ["BATCH_AXIS", "DEFAULT_OPSET", "ExportRefused", "OPSETS", "build_model",
           "export_onnx"]
