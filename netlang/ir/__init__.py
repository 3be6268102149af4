"""The graph IR: one networkx graph that every pass and back end shares."""

from netlang.ir.graph import Graph
from netlang.ir.types import BATCH, TensorType, format_shape

__all__ = ["BATCH", "TensorType", "format_shape", "Graph"]
