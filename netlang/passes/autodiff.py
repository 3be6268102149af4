"""Reverse-mode automatic differentiation as a graph pass.

Expects a shape-checked graph with `graph.graph["losses"]`.  Adds, to the same
graph, the objective (the weighted sum of the losses) and one backward node per
op on a path from a differentiated tensor to the objective, built from each
op's vector-Jacobian rule in the registry.  Gradients reaching a node along
several paths (fan-out) are summed with one `add`.  Guarantees: every added
node is shape-checked; nothing outside the backward slice is touched; no
per-model code exists anywhere.

`differentiate_output` runs the same backward pass from one output instead of
the losses, seeded by a cotangent the caller feeds: a vector-Jacobian product,
e.g. the gradient of one class score with respect to the input (saliency).
"""

from __future__ import annotations

import dataclasses

from netlang.errors import NetlangError
from netlang.ir.graph import Graph
from netlang.ops import ShapeContext, get_op


@dataclasses.dataclass
class Gradients:
    """What a backward pass added: the node differentiated (the training objective, or the
    output `differentiate_output` started from) and, for each requested node, its gradient node
    (None where no path reaches the objective: the gradient is zero)."""
    objective: int               # the scalar training objective, or the output differentiated
    of: dict                     # differentiated node → its gradient node


class GradBuilder:
    """What a vjp rule may do: read the forward graph and add shape-checked ops."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.current = None
        self._count = 0

    def operands(self, node):
        """The node's operands, in order: the order its vjp rule returns their gradients in."""
        return self.graph.operands(node)

    def attrs(self, node):
        """The attributes the forward node was built with."""
        return self.graph.nodes[node]["attrs"]

    def type(self, node):
        """The TensorType (dtype, shape) the node produces."""
        return self.graph.type_of(node)

    def add(self, op_name: str, inputs, **attrs) -> int:
        """Adds the op `op_name` on `inputs` with `attrs`, its type inferred by the op's own shape
        rule; returns the new node.  It is named after, and put in the layer of, the forward node
        whose gradient is being built (`current`; before the first, `objective`), so each backward
        node is attributed to the layer whose forward op it differentiates."""
        op = get_op(op_name)
        types = [self.graph.type_of(i) for i in inputs]
        producers = [self.graph.nodes[i]["name"] for i in inputs]
        out = op.infer(ShapeContext(op, types, producers), attrs)
        self._count += 1
        forward = self.graph.nodes[self.current] if self.current is not None else {"layer": "objective",
                                                                                    "name": "objective"}
        return self.graph.add_op(op_name, inputs, attrs, out,
                                 name=self.graph.unique_name(f"grad.{forward['name']}.{self._count}"),
                                 role="internal", layer=forward["layer"])


def differentiate(graph: Graph, wrt) -> Gradients:
    """Add the objective and the gradients of it with respect to the nodes `wrt`."""
    losses = graph.graph.get("losses") or []
    if not losses:
        raise NetlangError("this model has no loss to train: add `loss ...` to its train section")
    builder = GradBuilder(graph)
    objective = graph.add_op("loss_sum", [n for n, _ in losses],
                             {"weights": tuple(float(w) for _, w in losses)},
                             graph.type_of(losses[0][0]), name=graph.unique_name("objective"),
                             role="internal")
    return Gradients(objective, _backpropagate(graph, builder, objective,
                                               builder.add("ones_like", [objective]), wrt))


# Not an identifier of the language, so it cannot clash with a model's own inputs.
COTANGENT_INPUT = "grad.cotangent"


def differentiate_output(graph: Graph, output, wrt) -> tuple[str, Gradients]:
    """Add an input holding a cotangent v shaped like `output` (a node), and the gradients
    of Σ output · v with respect to the nodes `wrt`.

    Returns (the cotangent input's name, the gradients); `objective` is `output` itself.
    A one-hot v per example gives each example's gradient of one output element, as long
    as examples do not interact (evaluation mode: no batch statistics).
    """
    builder = GradBuilder(graph)
    name = graph.unique_name(COTANGENT_INPUT)
    t = graph.type_of(output)
    cotangent = graph.add_op("input", (), {"shape": t.shape, "dtype": t.dtype}, t, name=name,
                             role="input")
    graph.graph["inputs"][name] = cotangent
    return name, Gradients(output, _backpropagate(graph, builder, output, cotangent, wrt))


def _backpropagate(graph: Graph, builder: GradBuilder, root, seed, wrt) -> dict:
    """Backward nodes from `root`, whose gradient is the node `seed`, to each node in `wrt`:
    {node in wrt: its gradient node, or None where no path reaches `root`}."""
    wrt = list(wrt)
    relevant = _backward_slice(graph, wrt, root)
    pending: dict[int, list[int]] = {root: [seed]}
    result = {}
    for node in reversed(graph.topological_order()):
        if node not in relevant or node not in pending:
            continue
        parts = pending.pop(node)
        builder.current = node
        g = parts[0] if len(parts) == 1 else builder.add("add", parts)
        if node in wrt:
            result[node] = g
        data = graph.nodes[node]
        operands = data["inputs"]
        if not any(o in relevant for o in operands):
            continue
        op = get_op(data["op"])
        if not op.differentiable:  # masks, labels: no gradient flows through them
            continue
        if op.vjp_rule is None:
            raise NetlangError(f"`{data['op']}` (layer `{data['layer']}`) cannot be trained yet: "
                               f"it has no backward rule")
        grads = op.vjp_rule(builder, node, g)
        for operand, grad in zip(operands, grads):
            if grad is not None and operand in relevant:
                pending.setdefault(operand, []).append(grad)
    for node in wrt:
        result.setdefault(node, None)  # no path to the root: the gradient is zero
    return result


def _backward_slice(graph: Graph, wrt, objective) -> set:
    """Nodes on some path from a node in `wrt` to the objective."""
    import networkx as nx
    reaching = set(nx.ancestors(graph, objective)) | {objective}
    downstream = set()
    for node in wrt:
        if node in reaching and node not in downstream:
            downstream |= nx.descendants(graph, node) | {node}
    return reaching & downstream
