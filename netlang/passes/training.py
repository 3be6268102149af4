"""Training-mode rewrites: the forward graph as it runs inside a training step.

Expects a lowered, shape-checked graph; returns a copy in which each node whose op
has a training rewrite (`OpDef.training_rewrite_rule`) is rewritten by it: dropout
becomes `x · dropout_mask(x)`, so the mask drawn in the forward pass is the one the
backward pass multiplies by.
"""

from __future__ import annotations

from netlang.ir.graph import Graph
from netlang.ops import get_op


def training_graph(graph: Graph) -> Graph:
    """A copy of `graph` with every op's training-mode rewrite applied."""
    train = graph.copy()
    for node in list(train.topological_order()):
        rewrite = get_op(train.op(node)).training_rewrite_rule
        if rewrite is not None:
            rewrite(train, node)
    return train
