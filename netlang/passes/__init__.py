"""Passes over the graph IR, one per module, each with the same shape: graph in, graph out.

`after_pass` is called by every pipeline after each pass: it verifies the IR
when NETLANG_VERIFY=1 (the tests set it) and prints it at NETLANG_DEBUG=2.
"""

from netlang.config import debug, debug_level, verify_enabled


def after_pass(graph, stage: str):
    if verify_enabled():
        from netlang.passes.shapes import verify
        verify(graph, stage)
    if debug_level() >= 2:
        from netlang.ir.printer import format_graph
        debug(2, f"IR after {stage}:\n{format_graph(graph)}")
    return graph
