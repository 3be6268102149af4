"""rnn, lstm and gru as ONNX's RNN, LSTM and GRU ops: one ONNX op per stacked layer.

netlang keeps PyTorch's parameters (recurrent_reference.py): per layer and direction W_ih,
W_hh, b_ih, b_hh, gates stacked i, f, g, o (LSTM) and r, z, n (GRU).  ONNX stacks both
directions of a layer in one tensor each, W (D, G·H, F), R (D, G·H, H) and B (D, 2·G·H), with
its own gate orders: i, o, f, c for the LSTM, z, r, h for the GRU, whose
`linear_before_reset = 1` is PyTorch's form (the reset gate scales W_hn·h + b_hn).  The
parameters are reordered into new constants here, so a layer's weights must be parameters.

ONNX's ops read (T, N, F), time first, and write Y (T, D, N, H) and Y_h (D, N, H); the stack
is unrolled as one ONNX op per layer, each fed the previous one's Y as (T, N, D·H).  Lengths
become `sequence_lens` (ONNX, like the reference, leaves the state unchanged past a sequence's
end, writes zeros to Y there, and runs the backward direction from each sequence's last step).

Import reads each ONNX op back as one netlang layer, its gates reordered back, and its Y or
Y_h through the nodes netlang's export (Transpose, Reshape) or PyTorch's (Squeeze) put after
it; PyTorch's zero initial states (an Expand of zeros) are the layer's own zero start.
"""

from __future__ import annotations

import numpy as np

from netlang.ops.onnx_forms import INT32, laid_out
from netlang.ops.recurrent_reference import Stack
from netlang.ops.registry import reads_onnx

# Blocks of PyTorch's stacked gates in the order ONNX stacks them.
ONNX_GATE_ORDER = {"rnn": (0,), "lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}
ONNX_OPS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _reordered(weight: np.ndarray, kind: str, units: int) -> np.ndarray:
    """A weight or bias with its gate blocks (`units` rows each) in ONNX's order."""
    return np.concatenate([weight[g * units:(g + 1) * units] for g in ONNX_GATE_ORDER[kind]])


def _layer_constants(step, stack: Stack, named: dict, layer: int) -> list:
    """The names of ONNX's W, R and B for one layer (both directions), from the parameters."""
    w, r, b = [], [], []
    for direction in range(stack.directions):
        tag = f"l{layer}{'_reverse' if direction else ''}"
        parts = {}
        for part in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            array = step.array(named[f"{part}_{tag}"])
            if array is None:
                step.refuse(f"`{part}_{tag}` is computed, not a parameter: its gates cannot be "
                            f"reordered for ONNX")
            parts[part] = _reordered(np.asarray(array, dtype=np.float32), stack.kind, stack.units)
        w.append(parts["weight_ih"])
        r.append(parts["weight_hh"])
        b.append(np.concatenate([parts["bias_ih"], parts["bias_hh"]]))
    return [step.constant(np.stack(w)), step.constant(np.stack(r)), step.constant(np.stack(b))]


def _initial_state(step, stack: Stack, index: int | None, layer: int) -> str:
    """One layer's initial states (D, N, H) from the operand (N, L·D, H) (or (N, H)); "" (left
    out: zeros) when not given."""
    if index is None:
        return ""
    all_states = step.node("Reshape", [step.input(index), step.ints([0, stack.states,
                                                                     stack.units])])
    time_first = step.node("Transpose", [all_states], perm=[1, 0, 2])   # (L·D, N, H)
    first = layer * stack.directions
    return step.node("Slice", [time_first, step.ints([first]),
                               step.ints([first + stack.directions]), step.ints([0])])


def onnx_rule(kind: str, operand_positions):
    """The export rule of recurrent op `kind`; `operand_positions(attrs, count)` names its
    operands (recurrent.py's `named_operands`)."""
    def rule(step):
        a = step.attrs
        stack = Stack.of(kind, a, step.in_types[0].shape)
        named = operand_positions(a, len(step.in_types))
        lengths = ""
        if "lengths" in named:
            lengths = step.node("Cast", [step.input(named["lengths"])], to=INT32)
        sequence = step.input(0, (1, 0, 2))   # (T, N, F)
        extra = {"activations": [a["activation"].capitalize()] * stack.directions} \
            if kind == "rnn" else {}
        if kind == "gru":
            extra["linear_before_reset"] = 1
        for layer in range(stack.layers):
            inputs = [sequence] + _layer_constants(step, stack, named, layer) + [
                lengths, _initial_state(step, stack, named.get("h0"), layer)]
            if kind == "lstm":
                inputs.append(_initial_state(step, stack, named.get("c0"), layer))
            while inputs[-1] == "":   # trailing optional inputs are left off
                inputs.pop()
            y, y_h = step.node(ONNX_OPS[kind], inputs, outputs=2, hidden_size=stack.units,
                               direction="bidirectional" if stack.directions == 2 else "forward",
                               **extra)
            by_step = step.node("Transpose", [y], perm=[0, 2, 1, 3])   # (T, N, D, H)
            sequence = step.node("Reshape", [by_step, step.ints([0, 0, -1])])
        if a["sequences"]:
            return laid_out(sequence, (1, 0, 2))   # (T, N, D·H): netlang's (N, T, D·H), time first
        final = step.node("Transpose", [y_h], perm=[1, 0, 2])   # (N, D, H)
        return step.node("Reshape", [final, step.ints([0, -1])])
    return rule


# ---- ONNX import: RNN, LSTM and GRU, one netlang layer per ONNX op ----------------------------

# The activations netlang's layers use, as ONNX names them (per direction).
ONNX_DEFAULT_ACTIVATIONS = {"lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"]}
OPTIONAL_INPUTS = ("sequence_lens", "initial_h", "initial_c", "P")


def _from_onnx_order(block: np.ndarray, kind: str, units: int) -> np.ndarray:
    """A weight or bias with its gate blocks back in PyTorch's (netlang's) order."""
    parts = [None] * len(ONNX_GATE_ORDER[kind])
    for position, gate in enumerate(ONNX_GATE_ORDER[kind]):
        parts[gate] = block[position * units:(position + 1) * units]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _squeezed_axes(step, view):
    axes = view.attr("axes")
    if axes is None:
        axes = step.constant_of(view, 1)
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def _follow(step, tensor: str, transpose: list, reshape: list, squeeze: int, directions: int,
            value) -> None:
    """Settles how an output of the recurrent op is read: netlang's export reads it through a
    Transpose and a Reshape, PyTorch's (one direction) through a Squeeze; `value` is what
    either gives."""
    first = step.only_consumer(tensor)
    if first is not None and first.op_type == "Transpose" and first.attr("perm") == transpose:
        second = step.only_consumer(first.outputs[0])
        shape = None if second is None else step.constant_of(second, 1)
        if second is not None and second.op_type == "Reshape" and shape is not None \
                and [int(s) for s in shape] == reshape:
            step.settle(first, None)
            step.settle(second, value)
            return
    if first is not None and first.op_type == "Squeeze" and directions == 1 \
            and _squeezed_axes(step, first) == [squeeze]:
        step.settle(first, value)
        return
    step.refuse(f"its output `{tensor}` is read other than through Transpose {transpose} and "
                f"Reshape {reshape}, or Squeeze {squeeze}")


def onnx_reader(kind: str):
    """The import rule of ONNX's RNN, LSTM or GRU as netlang's `kind` (one layer)."""
    def reader(step):
        if step.attr("layout", 0):
            step.refuse("layout = 1 (batch first) has no netlang form")
        if step.attr("clip") is not None or step.attr("input_forget", 0):
            step.refuse("clip and input_forget have no netlang form")
        if kind == "gru" and step.attr("linear_before_reset", 0) != 1:
            step.refuse("linear_before_reset = 0: netlang's GRU is PyTorch's (1)")
        for i, name in enumerate(OPTIONAL_INPUTS[:step.input_count - 4], 4):
            # Initial states of zeros (PyTorch writes them out) are the states netlang starts
            # from when none are given.
            if step.has_input(i) and not (name.startswith("initial") and step.is_zeros(i)):
                step.refuse(f"its {name} input has no netlang form here")
        direction = step.attr("direction", "forward")
        if direction not in ("forward", "bidirectional"):
            step.refuse(f"direction {direction} has no netlang form")
        directions = 2 if direction == "bidirectional" else 1
        activations = step.attr("activations")
        args = {"units": step.attr("hidden_size"), "bidirectional": directions == 2}
        if kind == "rnn":
            activations = activations or ["Tanh"] * directions
            if len(set(activations)) != 1 or activations[0] not in ("Tanh", "Relu"):
                step.refuse(f"activations {activations}: netlang's rnn uses tanh or relu")
            args["activation"] = activations[0].lower()
        elif activations is not None and activations != ONNX_DEFAULT_ACTIVATIONS[kind] * directions:
            step.refuse(f"activations {activations} differ from PyTorch's (netlang's)")
        units = args["units"]
        w, r = step.weight(1, "W"), step.weight(2, "R")
        gates = len(ONNX_GATE_ORDER[kind])
        b = step.constant(3) if step.has_input(3) else np.zeros((directions, 2 * gates * units))
        weights = {}
        for d in range(directions):
            tag = f"l0{'_reverse' if d else ''}"
            weights[f"weight_ih_{tag}"] = _from_onnx_order(w[d], kind, units)
            weights[f"weight_hh_{tag}"] = _from_onnx_order(r[d], kind, units)
            weights[f"bias_ih_{tag}"] = _from_onnx_order(b[d][:gates * units], kind, units)
            weights[f"bias_hh_{tag}"] = _from_onnx_order(b[d][gates * units:], kind, units)
        outputs = step.view.outputs
        if len(outputs) > 2 and step.is_read(outputs[2]):
            step.refuse("its final cell state Y_c is read; netlang's lstm gives h only")
        read_y, read_h = (step.is_read(outputs[i]) if len(outputs) > i else False
                          for i in (0, 1))
        if read_y and read_h:
            step.refuse("both its sequence Y and its final state Y_h are read; a netlang layer "
                        "gives one of them")
        x = step.input(0, (1, 0, 2))   # ONNX's (T, N, F): netlang's (N, T, F), time first
        layer = step.layer(kind, {**args, "sequences": read_y}, [x], weights, name_from=1)
        if read_y:   # Y (T, D, N, H) → (T, N, D·H): the layer's (N, T, D·H), time first
            _follow(step, outputs[0], [0, 2, 1, 3], [0, 0, -1], 1, directions,
                    step.result(layer, (1, 0, 2)))
        elif read_h:   # Y_h (D, N, H) → (N, D·H)
            _follow(step, outputs[1], [1, 0, 2], [0, -1], 0, directions, step.result(layer))
        return []
    return reader


def _zero_source(constant) -> bool:
    source = constant(0)
    return source is not None and not np.any(source)


@reads_onnx("Expand", inputs_read=lambda attribute, constant: [0] if _zero_source(constant)
            else [0, 1])
def _read_expand(step):
    """An Expand of zeros: the initial states PyTorch's export writes for RNN, LSTM and GRU
    (the shape it expands to, computed from the batch, is never read)."""
    if not _zero_source(step.constant):
        step.refuse("netlang reads an Expand only of zeros, as a recurrent layer's initial state")
    return step.zeros()


reads_onnx("RNN")(onnx_reader("rnn"))
reads_onnx("LSTM")(onnx_reader("lstm"))
reads_onnx("GRU")(onnx_reader("gru"))
