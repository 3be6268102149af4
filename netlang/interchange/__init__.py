"""Models and weights in and out of netlang: ONNX export, and PyTorch-style state dicts.

`onnx_export` writes a model's inference graph as ONNX (each op by its `onnx_rule`,
netlang/ops/registry.py; the graph under construction in `onnx_graph`); `onnx_import` reads
one back as .net source and weights (each ONNX op by the reader the ops register,
`reads_onnx`; `onnx_import_graph`, `onnx_import_source`); `state_dict` moves
weights to and from PyTorch's `state_dict` naming, as NumPy arrays.  See docs/interchange.md.
"""

from netlang.interchange.onnx_export import DEFAULT_OPSET, build_model, export_onnx
from netlang.interchange.onnx_import import ImportRefused, onnx_to_source
from netlang.interchange.state_dict import from_state_dict, weights_to_state_dict

__all__ = ["DEFAULT_OPSET", "ImportRefused", "build_model", "export_onnx", "from_state_dict",
           "onnx_to_source", "weights_to_state_dict"]
