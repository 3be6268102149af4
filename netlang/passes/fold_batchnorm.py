"""Batch norm folded into the convolution or dense layer before it, for evaluation programs.

Expects a lowered, shape-checked forward graph that runs in evaluation mode (running
statistics), and the nodes whose values the program must keep.  Returns a copy in which
each node whose op has a fold rule (batch norm: `OpDef.fold_rule`), fed by a product that
can take it in (`OpDef.foldable_product`: conv2d, dense) and has no other consumer, and
whose value need not be kept, is rewritten by that rule: the batch norm's node becomes a
conv2d/dense reading `batchnorm_fold_weight(W, γ, var)` and `batchnorm_fold_bias(γ, β,
mean, var[, b])` (see netlang/ops/norm.py), so it keeps its name, type and consumers, and
its activation fuses into the product's epilogue as before.  The original product is left
without consumers and drops out of the program.  One pass over the activations is saved
per batch norm; the folded weights are recomputed from the current parameters at every
call, so training in between needs no recompilation.
"""

from __future__ import annotations

from netlang.ir.graph import Graph
from netlang.ops import get_op


def fold_batchnorm(graph: Graph, keep=()) -> Graph:
    """A copy of `graph` with every foldable batch norm folded into its product (see above)."""
    folded = graph.copy()
    keep = set(keep)
    for node in list(folded.topological_order()):
        fold = get_op(folded.op(node)).fold_rule
        if fold is None:
            continue
        product = folded.operands(node)[0]
        if not get_op(folded.op(product)).foldable_product or product in keep:
            continue
        if len({target for _, target in folded.out_edges(product)}) != 1:
            continue  # another consumer needs the product's own output
        fold(folded, node, product)
    return folded
