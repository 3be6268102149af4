"""The canonical text form of the IR, one node per line (NETLANG_DEBUG=2 prints it after each pass).

    %7 = dense(%3, %5, %6) {units=800, bias=true} : (None, 800) float32   # dense_1 [layer]
"""

from __future__ import annotations

from netlang.ir.graph import Graph


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_value(x) for x in v) + ")"
    return str(v)


def format_node(graph: Graph, node: int) -> str:
    """One node as a line of the canonical form (see this module's docstring).

    Attributes that are None are left out, the rest sorted by name.
    """
    data = graph.nodes[node]
    operands = ", ".join(f"%{o}" for o in data["inputs"])
    attrs = {k: v for k, v in data["attrs"].items() if v is not None}
    attr_text = " {" + ", ".join(f"{k}={_value(v)}" for k, v in sorted(attrs.items())) + "}" \
        if attrs else ""
    t = data["type"]
    return (f"%{node} = {data['op']}({operands}){attr_text} : {t} {t.dtype}"
            f"   # {data['name']} [{data['role']}]")


def format_graph(graph: Graph) -> str:
    """The whole graph in topological order, then its outputs and its weighted losses."""
    lines = [format_node(graph, n) for n in graph.topological_order()]
    for name, node in graph.graph.get("outputs", {}).items():
        lines.append(f"output {name} = %{node}")
    for node, weight in graph.graph.get("losses", []):
        lines.append(f"loss %{node} × {weight:g}")
    return "\n".join(lines)
