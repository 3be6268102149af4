"""Batch norm folded into the convolution or dense layer before it, for evaluation programs.

Expects a lowered, shape-checked forward graph that runs in evaluation mode (running
statistics), and the nodes whose values the program must keep.  Returns a copy in which
each batch norm fed by a conv2d or dense layer that has no other consumer, and whose value
need not be kept, is the product itself with folded parameters: the batch norm's node
becomes a conv2d/dense reading `batchnorm_fold_weight(W, γ, var)` and
`batchnorm_fold_bias(γ, β, mean, var[, b])` (see netlang/ops/norm.py), so it keeps its
name, type and consumers, and its activation fuses into the product's epilogue as before.
The original product is left without consumers and drops out of the program.  One pass
over the activations is saved per batch norm; the folded weights are recomputed from the
current parameters at every call, so training in between needs no recompilation.
"""

from __future__ import annotations

from netlang.ir.graph import Graph

FOLDABLE = ("conv2d", "dense")


def fold_batchnorm(graph: Graph, keep=()) -> Graph:
    folded = graph.copy()
    keep = set(keep)
    for node in list(folded.topological_order()):
        data = folded.nodes[node]
        if data["op"] != "batchnorm":
            continue
        product = data["inputs"][0]
        if folded.op(product) not in FOLDABLE or product in keep:
            continue
        if len({target for _, target in folded.out_edges(product)}) != 1:
            continue  # another consumer needs the product's own output
        x, weight, *bias = folded.operands(product)
        gamma, beta, mean, var = data["inputs"][1:5]
        eps = {"eps": data["attrs"]["eps"]}
        common = dict(role="internal", layer=data["layer"], trace=data["trace"])
        new_weight = folded.add_op("batchnorm_fold_weight", [weight, gamma, var], eps,
                                   folded.type_of(weight),
                                   name=folded.unique_name(f"{data['name']}.folded_weight"), **common)
        new_bias = folded.add_op("batchnorm_fold_bias", [gamma, beta, mean, var] + bias, eps,
                                 folded.type_of(beta),
                                 name=folded.unique_name(f"{data['name']}.folded_bias"), **common)
        attrs = dict(folded.nodes[product]["attrs"])
        if "bias" in attrs:
            attrs["bias"] = True
        folded.replace_op(node, folded.op(product), [x, new_weight, new_bias], attrs)
    return folded
