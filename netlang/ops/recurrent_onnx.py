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
"""

from __future__ import annotations

import numpy as np

from netlang.ops.onnx_forms import INT32, laid_out
from netlang.ops.recurrent_reference import Stack

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
