"""Models and weights in and out of netlang: ONNX export, and PyTorch-style state dicts.

`onnx_export` writes a model's inference graph as ONNX (each op by its `onnx_rule`,
netlang/ops/registry.py; the graph under construction in `onnx_graph`); `state_dict` moves
weights to and from PyTorch's `state_dict` naming, as NumPy arrays.  See docs/interchange.md.
"""

from netlang.interchange.onnx_export import DEFAULT_OPSET, build_model, export_onnx
from netlang.interchange.state_dict import from_state_dict, weights_to_state_dict

__all__ = ["DEFAULT_OPSET", "build_model", "export_onnx", "from_state_dict",
           "weights_to_state_dict"]
