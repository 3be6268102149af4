"""Shape inference over a finished graph, and the IR verifier.

`infer_shapes` runs every node's shape rule again, in topological order, and
stores the result; `verify` checks the invariants every pass must keep: edges
match operands, names are unique, the graph is acyclic, and every stored type
is what the op's rule infers.  Lowering infers shapes as it builds the graph
(expressions may ask for sizes); this pass serves passes that edit a graph.
"""

from __future__ import annotations

import networkx as nx

from netlang.errors import NetlangShapeError
from netlang.ir.graph import Graph
from netlang.ops import ShapeContext, ShapeProblem, get_op


def _infer(graph: Graph, node: int):
    data = graph.nodes[node]
    op = get_op(data["op"])
    types = [graph.type_of(o) for o in data["inputs"]]
    producers = [graph.nodes[o]["layer"] for o in data["inputs"]]
    try:
        return op.infer(ShapeContext(op, types, producers), data["attrs"])
    except ShapeProblem as problem:
        raise NetlangShapeError(str(problem), data["loc"], trace=()) from None


def infer_shapes(graph: Graph) -> Graph:
    """Recompute every node's type from its op's shape rule, in topological order, and store it.

    Edits `graph` in place and returns it; a shape that does not fit raises NetlangShapeError
    at the node's source position.
    """
    for node in graph.topological_order():
        graph.set_type(node, _infer(graph, node))
    return graph


class VerifyError(AssertionError):
    """An IR invariant is broken: a bug in a pass, never a user's mistake."""


def verify(graph: Graph, stage: str = "") -> None:
    """Raise VerifyError where `graph` breaks an invariant listed in this module's docstring.

    `stage` names the pass that produced `graph`, so the message says which pass broke it.
    """
    where = f" after {stage}" if stage else ""
    if not nx.is_directed_acyclic_graph(graph):
        raise VerifyError(f"the graph has a cycle{where}")
    names = set()
    for node, data in graph.nodes(data=True):
        for key in ("op", "inputs", "attrs", "type", "name", "role"):
            if key not in data:
                raise VerifyError(f"node %{node} has no `{key}`{where}")
        if data["name"] in names:
            raise VerifyError(f"node name {data['name']!r} is used twice{where}")
        names.add(data["name"])
        edges = sorted((key, source) for source, _, key in graph.in_edges(node, keys=True))
        if edges != list(enumerate(data["inputs"])):
            raise VerifyError(f"edges of %{node} do not match its operands{where}")
        if get_op(data["op"]) is None:
            raise VerifyError(f"node %{node} has unknown op {data['op']!r}{where}")
        inferred = _infer(graph, node)
        if inferred != data["type"]:
            raise VerifyError(f"%{node} ({data['name']}) is typed {data['type']} but its rule "
                              f"infers {inferred}{where}")
