"""The step graph: a sequence model run one time step at a time, its recurrent state carried.

Expects a lowered graph, one of its inputs holding a sequence (the time axis first in each
example, as `input tokens: int32[64]`), and the outputs wanted.  Returns a new graph
(`StepGraph`) that reads one step of that sequence, `(None, 1, ...)`, and for each recurrent
layer on the way to the outputs its state before the step as extra inputs (shaped as the
layer's initial-state operands, `(layers, units)` per example), and gives the outputs at that
step with each layer's state after it as extra outputs.  Called once per step, feeding each
call's states to the next from zeros, its outputs at step n are the sequence program's at step
n: sampling reads a model that way, one character at a time, without running the whole
sequence again for each one.

Every node between the sequence input and the outputs must be step-local (its step t reads
only step t of its operands: dense, embedding, elementwise ops; `OpDef.is_step_local`) or a
layer that carries a state (`OpDef.carried_states`, `OpDef.step_rule`: the recurrent
layers, whose step the op builds from graph ops); anything else (a convolution over time) is
a one-line UsageError naming its layer.  Nothing else of the graph is kept: losses and the
inputs only they read are gone, and the parameters keep their names, so the model's weights
feed the step graph as they are.
"""

from __future__ import annotations

import dataclasses

from netlang.errors import UsageError
from netlang.ir.graph import Graph
from netlang.ir.types import TensorType
from netlang.ops import ShapeContext, ShapeProblem, get_op

# The roles of the values a graph is fed rather than computes: copied as they are.
_FED = ("param", "buffer")


@dataclasses.dataclass(frozen=True)
class CarriedState:
    """One state a layer carries from step to step: the step graph's input that holds it
    before a step, the output that holds it after, and its per-example shape."""

    input: str
    output: str
    shape: tuple


@dataclasses.dataclass
class StepGraph:
    """A graph that computes one step (see the module docstring)."""

    graph: Graph
    sequence_input: str   # the input that takes one step of the sequence, (None, 1, ...)
    outputs: tuple        # the outputs asked for, under their names in the model
    states: list          # [CarriedState], in the order the layers come


class _StepBuilder:
    """What a `step_rule` may do, as a `vjp_rule` does with autodiff's builder: read operand
    types and add shape-checked ops (attributes not given take their defaults)."""

    def __init__(self, graph: Graph, layer_data: dict):
        self.graph = graph
        self.layer = layer_data
        self._count = 0

    def type(self, node) -> TensorType:
        return self.graph.type_of(node)

    def add(self, op_name: str, inputs, **attrs) -> int:
        op = get_op(op_name)
        attrs = {**{arg.name: arg.default for arg in op.args if not arg.required}, **attrs}
        self._count += 1
        name = self.graph.unique_name(f"{self.layer['name']}.step.{self._count}")
        return self.graph.add_op(op_name, inputs, attrs, _infer(self.graph, op, inputs, attrs,
                                                                self.layer),
                                 name=name, role="internal", layer=self.layer["layer"],
                                 loc=self.layer["loc"], trace=self.layer["trace"])


def _infer(graph: Graph, op, inputs, attrs: dict, data: dict) -> TensorType:
    """The type of `op` on `inputs` in the step graph; a one-line UsageError naming the layer
    where it no longer fits (a shape that counted the steps, e.g. a reshape of the sequence)."""
    types = [graph.type_of(i) for i in inputs]
    producers = [graph.nodes[i]["layer"] for i in inputs]
    try:
        return op.infer(ShapeContext(op, types, producers), attrs)
    except ShapeProblem as problem:
        raise UsageError(f"layer `{data['layer']}` cannot run one step at a time: "
                         f"{problem}") from None


def _needed(graph: Graph, nodes) -> set:
    """`nodes` and every node they read, directly or not."""
    seen, pending = set(), list(nodes)
    while pending:
        node = pending.pop()
        if node not in seen:
            seen.add(node)
            pending.extend(graph.operands(node))
    return seen


def step_graph(graph: Graph, sequence_input: str, outputs) -> StepGraph:
    """The step graph of `graph` reading `sequence_input` one step at a time and computing
    the outputs (or nodes) named in `outputs`."""
    outputs = tuple(outputs)
    wanted = [graph.graph["outputs"].get(name, graph.node_named(name)) for name in outputs]
    if any(node is None for node in wanted):
        missing = next(name for name, node in zip(outputs, wanted) if node is None)
        raise UsageError(f"the model has no output or layer named `{missing}`")
    needed = _needed(graph, wanted)
    source = graph.graph["inputs"].get(sequence_input)
    if source is None or source not in needed:
        raise UsageError(f"`{', '.join(outputs)}` does not read the input `{sequence_input}`")
    sequence_type = graph.type_of(source)
    if sequence_type.rank < 2:
        raise UsageError(f"input `{sequence_input}` holds no sequence: its examples have no "
                         f"time axis ({sequence_type})")
    step = Graph(**{key: value for key, value in graph.graph.items()
                    if key not in ("inputs", "outputs", "losses")})
    new_of, in_time, states, state_nodes = {}, set(), [], []
    for node in graph.topological_order():
        if node not in needed:
            continue
        data = graph.nodes[node]
        op = get_op(data["op"])
        operands = [new_of[o] for o in data["inputs"]]
        if node == source:
            shape = (None, 1) + tuple(sequence_type.shape[2:])
            new_of[node] = step.add_op("input", (), {**data["attrs"], "shape": shape},
                                       sequence_type.with_shape(shape), name=data["name"],
                                       role=data["role"], layer=data["layer"], loc=data["loc"])
            in_time.add(new_of[node])
            continue
        if data["role"] == "input":
            raise UsageError(f"`{', '.join(outputs)}` reads the input `{data['name']}` besides "
                             f"the sequence `{sequence_input}`: running it one step at a time "
                             f"is pending")
        reads_time = any(o in in_time for o in operands)
        if reads_time and op.step_rule is not None:
            new_of[node], carried, still_in_time = _step_layer(step, data, op, operands)
            states += [state for state, _ in carried]
            state_nodes += [after for _, after in carried]
            if still_in_time:
                in_time.add(new_of[node])
            continue
        types = [step.type_of(o) for o in operands]
        if reads_time and not op.is_step_local(data["attrs"], types):
            raise UsageError(f"`{data['op']}` (layer `{data['layer']}`) mixes the steps of "
                             f"the sequence, so the model cannot run one step at a time")
        out_type = (data["type"] if data["role"] in _FED
                    else _infer(step, op, operands, data["attrs"], data))
        new_of[node] = step.add_op(data["op"], operands, data["attrs"], out_type,
                                   name=data["name"], role=data["role"], layer=data["layer"],
                                   loc=data["loc"], trace=data["trace"])
        if reads_time:
            in_time.add(new_of[node])
    step.graph["inputs"] = {sequence_input: new_of[source],
                            **{s.input: step.node_named(s.input) for s in states}}
    step.graph["outputs"] = {**{name: new_of[node] for name, node in zip(outputs, wanted)},
                             **{s.output: after for s, after in zip(states, state_nodes)}}
    return StepGraph(step, sequence_input, outputs, states)


def _step_layer(step: Graph, data: dict, op, operands) -> tuple[int, list, bool]:
    """One step of a layer that carries state (`op.step_rule`), its states before the step
    added as inputs of `step`: (its output node, [(CarriedState, the node of the state after
    the step)], whether the output is still a sequence)."""
    try:
        shapes = op.carried_states(data["attrs"], [step.type_of(o) for o in operands])
    except ShapeProblem as problem:
        raise UsageError(f"layer `{data['layer']}`: {problem}") from None
    dtype = step.type_of(operands[0]).dtype
    held = {}
    for name, shape in shapes.items():
        input_name = step.unique_name(f"{data['name']}.{name}")
        full = (None,) + tuple(shape)
        held[name] = step.add_op("input", (), {"shape": full, "dtype": dtype},
                                 TensorType(full, dtype), name=input_name, role="input",
                                 layer=data["layer"], loc=data["loc"])
    output, after, still_in_time = op.step_rule(_StepBuilder(step, data), data["attrs"],
                                                operands, held)
    carried = []
    for name, node in after.items():
        input_name = step.nodes[held[name]]["name"]
        carried.append((CarriedState(input_name, f"{input_name}.next", tuple(shapes[name])),
                        node))
    return output, carried, still_in_time
