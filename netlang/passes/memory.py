"""Memory planning: one buffer per live value, reused once the value is dead.

Expects the nodes a program computes in execution order, the fusion plan and
the nodes whose values must outlive the program.  Guarantees: every computed
node gets a buffer slot, or aliases one (a view op shares its operand's
buffer, a fused op its host's); a slot is reused only by a value of the same
per-example shape and dtype, and only after the last read of its previous
tenant, so no kernel ever writes a buffer it also reads (matrix products need
that).  Slots are allocated once per batch size and reused by every step.
A kernel's workspaces (its op's `cpu_workspace` rule) are slots too, live only
at the kernel's own position: free for the next op as soon as it has run.
"""

from __future__ import annotations

import dataclasses

from netlang.ir.graph import Graph
from netlang.ops import get_op

EXTERNAL = ("input", "param")  # values passed in, not planned here


@dataclasses.dataclass
class BufferPlan:
    """What plan_buffers decides: the buffer slot of each stored value and of each workspace.

    Also what each slot holds, and which node owns the buffer an alias lives in.
    """

    slot_of: dict        # node → slot index (aliases share their root's slot)
    slots: list          # slot index → (per-example shape, batched, dtype)
    root_of: dict        # node → the node that owns the buffer it lives in
    workspaces: dict = dataclasses.field(default_factory=dict)  # node → slots of its scratch arrays


def workspace_specs(graph: Graph, node, target: str = "cpu", workers: int = 1) -> list:
    """(per-example or full shape, batched, slot dtype) of each workspace of a node's kernel
    on `target` ("cpu" or "cuda": an op's `cuda_workspace` rule, where it has one).  The rule
    reads `workers` (the threads a CPU kernel splits a batch among, each with workspaces of
    its own) from its attributes as `_workers`, as its kernel template does."""
    op = get_op(graph.op(node))
    rule = op.cpu_workspace
    if target == "cuda" and op.cuda_workspace is not None:
        rule = op.cuda_workspace
    if rule is None:
        return []
    data = graph.nodes[node]
    out_type = data["type"]
    specs = []
    for spec in rule([graph.type_of(o) for o in data["inputs"]], out_type,
                     dict(data["attrs"], _workers=workers)):
        shape, batched = tuple(int(d) for d in spec[0]), bool(spec[1])
        kind = spec[2] if len(spec) > 2 else "float"
        # "float" workspaces share slots with values of the same shape; acc64 is always float64.
        dtype = {"float": out_type.dtype if out_type.is_float else "float32",
                 "acc64": "acc64", "int64": "int64"}[kind]
        specs.append((shape or (1,), batched, dtype))
    return specs


def plan_buffers(graph: Graph, order: list, fusion, keep: set, skip=(),
                 target: str = "cpu", workers: int = 1) -> BufferPlan:
    """`skip`: computed nodes whose value is never stored (a gradient consumed by the update
    inside its own matrix product); `target` chooses the kernels' workspace rules, `workers`
    the CPU threads they are planned for."""
    position = {node: i for i, node in enumerate(order)}
    root_of = {}
    for node in order:
        op = graph.op(node)
        if op in EXTERNAL or node in skip:
            continue
        if node in fusion.host_of:
            root_of[node] = root_of.get(fusion.host_of[node], fusion.host_of[node])
        elif get_op(op).cpu_view:
            source = graph.operands(node)[0]
            root_of[node] = root_of.get(source, source)
        else:
            root_of[node] = node
    end = len(order)
    last_use = {}
    birth = {}
    for node in order:
        root = root_of.get(node)
        if root is not None:
            birth.setdefault(root, position[node])
            last_use[root] = max(last_use.get(root, position[node]), position[node])
            if node in keep:
                last_use[root] = end
        # Every computed node reads its operands, stored or not (a skipped gradient's product).
        for operand in graph.operands(node):
            operand_root = root_of.get(operand)
            if operand_root is not None:
                last_use[operand_root] = max(last_use.get(operand_root, 0), position[node])
    # A paired loss gradient is written while its loss is computed: born at the loss.
    for grad, loss in fusion.paired.items():
        root = root_of[grad]
        birth[root] = min(birth[root], position[loss])

    # Tenants: stored values (their roots) and workspaces, each live from its birth to its
    # last use; a workspace ("ws", node, i) lives at its node's position only.
    keys, order_key = {}, {}
    for root in birth:
        t = graph.type_of(root)
        keys[root] = (tuple(t.sample_shape) if t.batched else (tuple(t.shape) or (1,)),
                      t.batched, t.dtype)
        order_key[root] = (birth[root], position[root], 0)
    workspaces = {}
    for node in order:
        if node in skip or node in fusion.host_of or graph.op(node) in EXTERNAL:
            continue
        for i, key in enumerate(workspace_specs(graph, node, target, workers)):
            tenant = ("ws", node, i)
            keys[tenant] = key
            birth[tenant] = last_use[tenant] = position[node]
            order_key[tenant] = (position[node], position[node], 1 + i)
            workspaces.setdefault(node, []).append(tenant)

    slots, slot_of_root, free = [], {}, {}
    releases = sorted(((last, root) for root, last in last_use.items()), key=lambda x: x[0])
    release_index = 0
    for root in sorted(birth, key=lambda r: order_key[r]):
        at = birth[root]
        # Free every slot whose tenant was last read strictly before this value is written.
        while release_index < len(releases) and releases[release_index][0] < at:
            _, dead = releases[release_index]
            release_index += 1
            if dead in slot_of_root:
                slot = slot_of_root[dead]
                free.setdefault(slots[slot], []).append(slot)
        key = keys[root]
        if free.get(key):
            slot = free[key].pop()
        else:
            slot = len(slots)
            slots.append(key)
        slot_of_root[root] = slot
    slot_of = {node: slot_of_root[root] for node, root in root_of.items()}
    workspace_slots = {node: [slot_of_root[t] for t in tenants] for node, tenants in workspaces.items()}
    return BufferPlan(slot_of, slots, root_of, workspace_slots)
