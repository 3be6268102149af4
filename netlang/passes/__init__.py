"""Passes over the graph IR, one per module, each with the same shape: graph in, graph out.

netlang/pipeline.py orders them into the programs the engines run, and calls `after_pass`
after each one that changes a graph.
"""

from netlang.config import debug, debug_level, verify_enabled
from netlang.ir.printer import format_graph
from netlang.passes.shapes import verify


def after_pass(graph, stage: str):
    """`graph` after the pass `stage`, verified when NETLANG_VERIFY=1 (the tests set it) and
    printed at NETLANG_DEBUG=2; returned as it came, so a pipeline can chain it."""
    if verify_enabled():
        verify(graph, stage)
    if debug_level() >= 2:
        debug(2, f"IR after {stage}:\n{format_graph(graph)}")
    return graph
