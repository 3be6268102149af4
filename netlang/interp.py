"""The NumPy reference interpreter: runs any graph, forward and backward, in float32 or float64.

It is the executable specification of every op (each op's `forward` rule in the
registry) and the oracle that the compiled back ends are tested against.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from netlang.errors import DataError, UsageError
from netlang.ir.graph import Graph
from netlang.ops import get_op


@dataclasses.dataclass
class ExecContext:
    """What an op's reference forward reads besides its operands, and what it leaves."""
    mode: str = "eval"  # "train": dropout active, batch statistics
    rng: np.random.Generator = dataclasses.field(default_factory=lambda: np.random.default_rng(0))
    dtype: type = np.float32
    # Buffer name → new value, from ops with a state rule (training mode only).
    state_updates: dict = dataclasses.field(default_factory=dict)


def needed_nodes(graph: Graph, targets) -> list[int]:
    """The targets and everything they depend on, in execution order."""
    needed = set()
    stack = list(targets)
    while stack:
        node = stack.pop()
        if node in needed:
            continue
        needed.add(node)
        stack.extend(graph.operands(node))
    return [n for n in graph.topological_order() if n in needed]


def execute(graph: Graph, feeds: dict, params: dict, targets, ctx: ExecContext | None = None,
            order: list[int] | None = None) -> dict:
    """Evaluate `targets` (node ids); returns node → array for every node computed."""
    ctx = ctx or ExecContext()
    values: dict[int, np.ndarray] = {}
    for node in order or needed_nodes(graph, targets):
        data = graph.nodes[node]
        op = data["op"]
        if op == "input":
            values[node] = _feed(feeds, data, ctx)
        elif op == "param":
            values[node] = np.asarray(params[data["name"]], dtype=ctx.dtype)
        else:
            opdef = get_op(op)
            if opdef.forward_rule is None:   # engines refuse such a graph before running it
                raise UsageError(f"`{op}` (layer `{data['layer']}`) has no reference forward yet")
            inputs = [values[o] for o in data["inputs"]]
            try:
                values[node] = opdef.forward_rule(inputs, data["attrs"], ctx)
            except DataError as problem:   # values the op cannot take (a length past the end)
                raise DataError(f"`{op}` (layer `{data['layer']}`): {problem.message}") from None
            if ctx.mode == "train" and opdef.state_rule is not None:
                for index, value in opdef.state_rule(inputs, data["attrs"], ctx).items():
                    ctx.state_updates[graph.nodes[data["inputs"][index]]["name"]] = value
            if (ctx.mode == "train" and opdef.output_state is not None
                    and opdef.output_state < len(inputs)):
                buffer = graph.nodes[data["inputs"][opdef.output_state]]["name"]
                ctx.state_updates[buffer] = values[node]
    return values


def _feed(feeds: dict, data: dict, ctx: ExecContext) -> np.ndarray:
    name = data["name"]
    if name not in feeds:
        raise DataError(f"no data for input `{name}`")
    value = np.asarray(feeds[name])
    expected = data["type"]
    if value.shape[1:] != tuple(expected.shape[1:]):
        raise DataError(f"input `{name}` expects examples of shape {tuple(expected.shape[1:])}, "
                        f"got {value.shape[1:]}")
    if expected.is_float:
        return value.astype(ctx.dtype, copy=False)
    return value.astype(np.int64, copy=False)
