"""The graph IR.

A `Graph` is a networkx `MultiDiGraph` whose nodes are ops and whose edges are
tensors.  Every node carries:

- `op`: the registry name of its op (`dense`, `param`, `input`, ...);
- `inputs`: its operands as an ordered tuple of node ids (the source of truth;
  the edges are derived from it, keyed by operand position, so `x * x` keeps
  both operands);
- `attrs`: the op's attributes, plain Python values;
- `type`: the `TensorType` it produces;
- `name`: a unique, readable name (`conv1`, `layer1.0.conv2d_1.weight`);
- `role`: `input`, `param`, `buffer`, `layer`, `loss` or `internal`;
- `layer`: the user-visible layer it belongs to (params and internal nodes
  point at their layer, so summaries and errors can group them);
- `loc` and `trace`: where in the source it came from, and through which block
  instantiations.

Graph-level metadata lives in `graph.graph`: `inputs` and `outputs` (name →
node), `losses` (list of (node, weight)), `train` (the training section), and
`source_hash`.
"""

from __future__ import annotations

import itertools

import networkx as nx

from netlang.ir.types import TensorType

ROLES = ("input", "param", "buffer", "layer", "loss", "internal")


def _dotted_prefixes(name: str) -> list[str]:
    """`a.b.c` → [`a`, `a.b`]."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class Graph(nx.MultiDiGraph):
    """The IR graph: networkx, plus a few helpers that keep its invariants."""

    def __init__(self, incoming_graph_data=None, **attr):
        super().__init__(incoming_graph_data, **attr)
        self.graph.setdefault("inputs", {})
        self.graph.setdefault("outputs", {})
        self.graph.setdefault("losses", [])
        self.graph.setdefault("train", None)
        self._ids = itertools.count(max(self.nodes, default=-1) + 1)
        self._names: dict[str, int] = {d["name"]: n for n, d in self.nodes(data=True) if "name" in d}
        self._prefixes: set[str] = {p for name in self._names for p in _dotted_prefixes(name)}

    def add_op(self, op: str, inputs=(), attrs=None, type: TensorType | None = None, *,
               name: str, role: str = "layer", layer: str | None = None,
               loc=None, trace=()) -> int:
        """Add a node applying `op` to `inputs` (node ids, in operand order) and return its id.

        The edges are made from `inputs`, one per operand position.  `name` must be new to the
        graph; `layer` defaults to the node's own name.
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if name in self._names:
            raise ValueError(f"duplicate node name {name!r}")
        node = next(self._ids)
        inputs = tuple(inputs)
        self.add_node(node, op=op, inputs=inputs, attrs=dict(attrs or {}), type=type,
                      name=name, role=role, layer=layer or name, loc=loc, trace=tuple(trace))
        for position, source in enumerate(inputs):
            self.add_edge(source, node, key=position, type=self.nodes[source]["type"])
        self._names[name] = node
        self._prefixes.update(_dotted_prefixes(name))
        return node

    def set_type(self, node: int, type: TensorType) -> None:
        """Set the type `node` produces, on the node and on its outgoing edges alike."""
        self.nodes[node]["type"] = type
        for _, target, key in list(self.out_edges(node, keys=True)):
            self.edges[node, target, key]["type"] = type

    def replace_op(self, node: int, op: str, inputs, attrs: dict) -> None:
        """Give `node` a new op and operands, keeping its name, type and consumers."""
        for source, _, key in list(self.in_edges(node, keys=True)):
            self.remove_edge(source, node, key)
        inputs = tuple(inputs)
        self.nodes[node].update(op=op, inputs=inputs, attrs=dict(attrs))
        for position, source in enumerate(inputs):
            self.add_edge(source, node, key=position, type=self.nodes[source]["type"])

    def copy(self, as_view=False):
        """A copy with its own id counter and name indexes, so nodes added to it cannot clash.

        Graph-level dicts and lists (`outputs`, `losses`, ...) are copied one level deep, since
        passes edit them; nx's own copy would share them.
        """
        copied = super().copy(as_view=as_view)
        if not as_view:
            copied._ids = itertools.count(max(self.nodes, default=-1) + 1)
            copied._names = dict(self._names)
            copied._prefixes = set(self._prefixes)
            # networkx copies graph-level data shallowly; passes edit these containers.
            for key, value in self.graph.items():
                if isinstance(value, (dict, list)):
                    copied.graph[key] = type(value)(value)
        return copied

    def node_named(self, name: str) -> int | None:
        """The node called `name`, or None."""
        return self._names.get(name)

    def has_name(self, name: str) -> bool:
        """Whether some node is called `name`."""
        return name in self._names

    def has_prefix(self, prefix: str) -> bool:
        """Whether some node is named `prefix.<more>` (so `prefix` names a block instance)."""
        return prefix in self._prefixes

    def unique_name(self, base: str) -> str:
        """`base` if free, else `base_2`, `base_3`, ..."""
        if base not in self._names:
            return base
        for k in itertools.count(2):
            candidate = f"{base}_{k}"
            if candidate not in self._names:
                return candidate
        raise AssertionError("unreachable")

    def op(self, node: int) -> str:
        """The registry name of `node`'s op."""
        return self.nodes[node]["op"]

    def operands(self, node: int) -> tuple:
        """`node`'s operands, in order (the same node twice for `x * x`)."""
        return self.nodes[node]["inputs"]

    def type_of(self, node: int) -> TensorType:
        """The TensorType `node` produces."""
        return self.nodes[node]["type"]

    def topological_order(self) -> list[int]:
        """A deterministic topological order (ties broken by creation order)."""
        return list(nx.lexicographical_topological_sort(self, key=lambda n: n))

    def nodes_with_role(self, role: str) -> list[int]:
        """The nodes of one role (`param`, `layer`, ...) in topological order."""
        return [n for n in self.topological_order() if self.nodes[n]["role"] == role]

    def parameters(self) -> dict[str, int]:
        """Trainable and frozen parameters (not buffers), name → node, in creation order."""
        return {self.nodes[n]["name"]: n for n in sorted(self.nodes)
                if self.nodes[n]["role"] == "param"}

    def buffers(self) -> dict[str, int]:
        """Saved state that is not trained (batchnorm's running statistics), name → node."""
        return {self.nodes[n]["name"]: n for n in sorted(self.nodes)
                if self.nodes[n]["role"] == "buffer"}
