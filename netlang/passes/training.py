"""Training-mode rewrites: the forward graph as it runs inside a training step.

Expects a lowered, shape-checked graph; returns a copy in which each dropout
is written as `x · dropout_mask(x)`, so the mask drawn in the forward pass is
the one the backward pass multiplies by.
"""

from __future__ import annotations

from netlang.ir.graph import Graph


def training_graph(graph: Graph) -> Graph:
    train = graph.copy()
    for node in list(train.topological_order()):
        data = train.nodes[node]
        if data["op"] != "dropout":
            continue
        x = data["inputs"][0]
        mask = train.add_op("dropout_mask", [x], {"rate": data["attrs"]["rate"]}, data["type"],
                            name=train.unique_name(f"{data['name']}.mask"), role="internal",
                            layer=data["layer"], trace=data["trace"])
        train.replace_op(node, "multiply", [x, mask], {})
    return train
