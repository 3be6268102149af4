"""Fusion: which elementwise ops run inside the loop of the op that feeds them.

Expects a shape-checked graph, the nodes a program computes (in execution
order) and the nodes whose values must survive the program.  Guarantees: an
elementwise op is fused into its producer (its *host*) only when the producer
has no other consumer and is not kept, when both have one type, and when the
op's other operands are ready before the host runs; a fused op then writes its
value into the host's buffer, in place, inside the host's loop.  Hosts are ops
whose kernels end in an elementwise loop: matrix products, dense and
convolutions alike (the bias add and activation become the product's
epilogue), batch norm (its activation runs in its output loop) and elementwise
ops themselves.  Which ops can host is a fact of each op (`OpDef.epilogue_host`).

A loss and its gradient that read the same operands are paired, so the
kernel computes the softmax once for both (`OpDef.paired_loss`).
"""

from __future__ import annotations

import dataclasses

from netlang.ir.graph import Graph
from netlang.ops import get_op


@dataclasses.dataclass
class FusionPlan:
    """Which node computes which: the result of `plan_fusion`."""

    host_of: dict       # fused node → the node whose kernel computes it
    epilogue: dict      # host → fused nodes, in order
    paired: dict        # loss-gradient node → the loss node computed in the same kernel


def plan_fusion(graph: Graph, order: list, keep: set) -> FusionPlan:
    """Fuses each elementwise node of `order` into its host where it can (see the module's
    contract) and pairs each loss gradient with its loss."""
    position = {node: i for i, node in enumerate(order)}
    consumers = {node: [] for node in order}
    for node in order:
        for operand in graph.operands(node):
            if operand in consumers:
                consumers[operand].append(node)
    host_of, epilogue, paired = {}, {}, {}
    for node in order:
        op = get_op(graph.op(node))
        if op.cpu_expr is None:
            continue
        for operand in graph.operands(node):
            if operand not in position:
                continue
            host = host_of.get(operand, operand)
            host_op = get_op(graph.op(host))
            can_host = host_op.epilogue_host or host_op.cpu_expr is not None
            if not can_host or operand in keep or len(consumers[operand]) != 1:
                continue
            if graph.type_of(operand) != graph.type_of(node):
                continue
            others = [o for o in graph.operands(node) if o != operand]
            if any(o in position and position[o] >= position[host] for o in others):
                continue
            if any(o == operand for o in others):
                continue  # x * x: the operand is read twice; keep it in its own buffer
            host_of[node] = host
            epilogue.setdefault(host, []).append(node)
            break
    for node in order:
        loss_name = get_op(graph.op(node)).paired_loss
        if loss_name is None:
            continue
        prediction, target = graph.operands(node)[:2]
        for other in order:
            if graph.op(other) == loss_name and graph.operands(other) == (prediction, target) and \
                    graph.nodes[other]["attrs"] == graph.nodes[node]["attrs"]:
                paired[node] = other
    return FusionPlan(host_of, epilogue, paired)
