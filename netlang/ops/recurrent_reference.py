"""The NumPy rules of the recurrent layers: forward in time, and backward through it.

Every equation is PyTorch's (`torch.nn.RNN`, `LSTM`, `GRU`), so weights move between the
two and the tests compare them on identical weights:

- rnn:  h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu;
- lstm: (i, f, g, o) = (σ, σ, tanh, σ)(W_ih x + b_ih + W_hh h + b_hh), c' = f·c + i·g,
  h' = o·tanh(c');
- gru:  (r, z) = σ(W_ih x + b_ih + W_hh h + b_hh) on their rows, n = tanh(W_in x + b_in +
  r·(W_hn h + b_hn)), h' = (1 − z)·n + z·h.

Layers stack (each reads the sequence of the one below, both directions concatenated,
through the dropout mask in training); the reverse direction reads the steps backwards.
With `lengths`, the steps at and after an example's length are padding: they leave the
state as it is, output zeros (as PyTorch's `pad_packed_sequence`) and receive no gradient,
so the final state is each example's own, in both directions.

The forward pass of a training step leaves a *record* (`record_layout`), and the backward
rule, one pass back through time (`backprop`), a *tape* (`tape_layout`).  The record holds
what the pass back reads — each cell's state before every step, its gate values (and the
LSTM's cell states, the GRU's W_hn·h + b_hn), the sequence each upper layer read — and the
layer's output; the tape, the gradients of the initial states and of each gate's
pre-activation at every step (`ih`, and `hh` for the part that multiplies W_hh, which only the
GRU's n-gate makes different).  Each weight's gradient is then one product over all examples
and steps of a gate gradient with what the weight multiplied, each bias's a column sum, and
the input's gradient a product with W_ih (netlang/ops/recurrent.py builds them as graph ops).

Both are laid out *section-major*: a (B, size) tensor whose flat buffer holds one section
after the other, each section all B examples' values ((B, T, width) for a sequence), so a
section is one contiguous matrix of B·T rows for a matrix product.  `section` reads one.
Steps past an example's length hold zeros in both (the state before them: its last state).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from netlang.errors import DataError

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# A direction's parameters, in the order each (layer, direction) passes them.
PARAMETER_PARTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


@dataclasses.dataclass(frozen=True)
class Stack:
    """What a recurrent layer's attributes and input shape fix: its kind and sizes."""

    kind: str
    units: int
    layers: int
    directions: int
    steps: int
    features: int

    @classmethod
    def of(cls, kind: str, attrs: dict, input_shape) -> Stack:
        """The stack of an op of `kind` with `attrs`, reading a (…, T, F) input."""
        return cls(kind, attrs["units"], attrs["layers"], 2 if attrs["bidirectional"] else 1,
                   input_shape[-2], input_shape[-1])

    @property
    def gates(self) -> int:
        """Rows of each weight per unit: 1, 4 or 3."""
        return GATES[self.kind]

    @property
    def states(self) -> int:
        """Initial states per example: one per layer and direction (PyTorch's L·D)."""
        return self.layers * self.directions

    def width(self, layer: int) -> int:
        """Features of the sequence that `layer` reads."""
        return self.features if layer == 0 else self.units * self.directions

    def cells(self):
        """(layer, direction, tag) of every cell, in PyTorch's order; the tag suffixes the
        parameter names (`l0`, `l0_reverse`)."""
        return [(layer, d, f"l{layer}{'_reverse' if d else ''}")
                for layer in range(self.layers) for d in range(self.directions)]


def parameter_names(layers: int, directions: int) -> list[str]:
    """A recurrent layer's parameters in operand order: each (layer, direction)'s four parts,
    named as PyTorch names them (`weight_ih_l0`, ..., `bias_hh_l1_reverse`)."""
    return [f"{part}_l{layer}{'_reverse' if d else ''}" for layer in range(layers)
            for d in range(directions) for part in PARAMETER_PARTS]


# ---- the record and the tape: what the forward pass and the pass back leave ----------------


# Besides the state before each step and the gate values, what each kind's pass back reads
# per step: the LSTM's cell state before the step and tanh of the one after, the GRU's
# W_hn·h + b_hn.
CELL_EXTRAS = {"rnn": (), "lstm": ("cells", "tanhc"), "gru": ("hn",)}


def _offsets(sections) -> dict:
    """Name → (offset, per-example shape) of `sections` [(name, shape)], one after the other;
    offsets count elements per example (a section starts at B·offset in the flat buffer)."""
    layout, offset = {}, 0
    for name, shape in sections:
        layout[name] = (offset, tuple(shape))
        offset += int(np.prod(shape))
    return layout


def record_layout(stack: Stack, sequences: bool) -> dict:
    """Sections of the forward pass's record: `output` (the layer's output), `input<l>` for
    each layer l ≥ 1 (the sequence it read, after the dropout mask), and per cell
    `prev<tag>` (the state before each step), `gates<tag>` (each gate's value: i, f, g, o;
    r, z, n; the RNN's new state) and CELL_EXTRAS."""
    T, H, D = stack.steps, stack.units, stack.directions
    sections = [("output", (T, D * H) if sequences else (D * H,))]
    sections += [(f"input{layer}", (T, D * H)) for layer in range(1, stack.layers)]
    for _, _, tag in stack.cells():
        sections += [(f"prev{tag}", (T, H)), (f"gates{tag}", (T, stack.gates * H))]
        sections += [(f"{extra}{tag}", (T, H)) for extra in CELL_EXTRAS[stack.kind]]
    return _offsets(sections)


def tape_layout(stack: Stack, with_h0: bool, with_c0: bool) -> dict:
    """Sections of the pass back's tape: `h0`, `c0` (the initial states' gradients, when
    given), and per cell `ih<tag>` (the gradient of each gate's pre-activation at each step),
    with `hh<tag>` for the GRU (its W_hh part: the n-gate's times r)."""
    T, H = stack.steps, stack.units
    sections = [(name, (stack.states, H)) for name, given in (("h0", with_h0), ("c0", with_c0))
                if given]
    for _, _, tag in stack.cells():
        sections.append((f"ih{tag}", (T, stack.gates * H)))
        if stack.kind == "gru":
            sections.append((f"hh{tag}", (T, stack.gates * H)))
    return _offsets(sections)


def hh_section(stack: Stack, tag: str) -> str:
    """The tape section whose product with W_hh passes the gradient back a step: `hh<tag>`
    for the GRU, else the gate gradients themselves (`ih<tag>`)."""
    return f"hh{tag}" if stack.kind == "gru" else f"ih{tag}"


def layout_size(layout: dict) -> int:
    """Elements per example of a record or tape."""
    offset, shape = list(layout.values())[-1]
    return offset + int(np.prod(shape))


def section(array: np.ndarray, layout: dict, name: str) -> np.ndarray:
    """Section `name` of a section-major record or tape (B, size), as (B, *its shape)."""
    batch = array.shape[0]
    offset, shape = layout[name]
    size = int(np.prod(shape))
    return array.reshape(-1)[batch * offset:batch * (offset + size)].reshape((batch,) + shape)


def pack(layout: dict, values: dict, batch: int, dtype) -> np.ndarray:
    """A section-major (B, size) array holding `values` (name → (B, *shape)), zeros where a
    section has no value."""
    flat = np.zeros(batch * layout_size(layout), dtype=dtype)
    for name, (offset, shape) in layout.items():
        if name in values:
            size = int(np.prod(shape))
            flat[batch * offset:batch * (offset + size)] = np.reshape(values[name], -1)
    return flat.reshape(batch, -1)


# ---- one step of each cell, forward and back ------------------------------------------------
#
# A step takes the input's part of the pre-activations (W_ih x + b_ih, computed for every step
# at once) and the previous state; it returns the new state and what its backward step reads.
# A backward step takes that and the gradients of the new state; it returns the gradients of
# the pre-activations (the W_ih part and the W_hh part) and of the previous state.


def _sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))   # no overflow, and the operand's dtype kept


def _rnn_step(gi, h, c, w_hh, b_hh, attrs):
    pre = gi + h @ w_hh.T + b_hh
    new = np.tanh(pre) if attrs["activation"] == "tanh" else np.maximum(pre, 0)
    return new, None, (new, pre)


def _rnn_back(saved, dh, dc, w_hh, attrs):
    new, pre = saved
    da = dh * (1 - new * new) if attrs["activation"] == "tanh" else dh * (pre > 0)
    return da, da, da @ w_hh, None


def _lstm_step(gi, h, c, w_hh, b_hh, attrs):
    i, f, g, o = np.split(gi + h @ w_hh.T + b_hh, 4, axis=-1)
    i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    return o * tanh_c, c_new, (c, i, f, g, o, tanh_c)


def _lstm_back(saved, dh, dc, w_hh, attrs):
    c, i, f, g, o, tanh_c = saved
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    da = np.concatenate([dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g),
                         dh * tanh_c * o * (1 - o)], axis=-1)
    return da, da, da @ w_hh, dc * f


def _gru_step(gi, h, c, w_hh, b_hh, attrs):
    i_r, i_z, i_n = np.split(gi, 3, axis=-1)
    h_r, h_z, h_n = np.split(h @ w_hh.T + b_hh, 3, axis=-1)
    r, z = _sigmoid(i_r + h_r), _sigmoid(i_z + h_z)
    n = np.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h, None, (h, r, z, n, h_n)


def _gru_back(saved, dh, dc, w_hh, attrs):
    h, r, z, n, h_n = saved
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h - n) * z * (1 - z)
    dr = dn * h_n * r * (1 - r)
    da_hh = np.concatenate([dr, dz, dn * r], axis=-1)
    return np.concatenate([dr, dz, dn], axis=-1), da_hh, dh * z + da_hh @ w_hh, None


CELLS = {"rnn": (_rnn_step, _rnn_back), "lstm": (_lstm_step, _lstm_back),
         "gru": (_gru_step, _gru_back)}


# ---- the whole layer ------------------------------------------------------------------------


@dataclasses.dataclass
class Pass:
    """One direction of one layer run forward: what its backward pass reads."""

    outputs: np.ndarray      # (B, T, H), zero at padded steps
    final: np.ndarray        # (B, H): the state after the last step read
    previous: np.ndarray     # (B, T, H): the state before each step
    saved: list              # per time step, what the cell's backward step reads
    times: range             # the steps in the order they were read


@dataclasses.dataclass
class Record:
    """A forward run of the whole stack: its output, and what the backward pass reads."""

    output: np.ndarray
    inputs: list             # the sequence each layer read (after the dropout mask)
    passes: dict             # (layer, direction) → Pass
    valid: np.ndarray        # (B, T) bool: the steps within each example's length


def valid_steps(lengths, batch: int, steps: int) -> np.ndarray:
    """(B, T) bool: the steps before each example's length (all, without `lengths`)."""
    if lengths is None:
        return np.ones((batch, steps), dtype=bool)
    lengths = np.asarray(lengths)
    if lengths.size and (lengths.min() < 0 or lengths.max() > steps):
        bad = int(lengths.max() if lengths.max() > steps else lengths.min())
        raise DataError(f"`lengths` holds {bad}, outside 0..{steps}: the sequences have "
                        f"{steps} steps")
    return np.arange(steps)[None, :] < lengths[:, None]


def _initial(state, stack: Stack, batch: int, dtype) -> np.ndarray:
    """The initial states as (B, L·D, H): the given ones, else zeros."""
    if state is None:
        return np.zeros((batch, stack.states, stack.units), dtype=dtype)
    return state.reshape(batch, stack.states, stack.units)


def _run_direction(stack, attrs, sequence, weights, h, c, valid, reverse) -> Pass:
    step = CELLS[stack.kind][0]
    w_ih, w_hh, b_ih, b_hh = weights
    batch, steps = sequence.shape[0], stack.steps
    from_input = sequence @ w_ih.T + b_ih          # every step's W_ih x + b_ih at once
    outputs = np.zeros((batch, steps, stack.units), dtype=sequence.dtype)
    previous = np.zeros_like(outputs)
    saved = [None] * steps
    times = range(steps - 1, -1, -1) if reverse else range(steps)
    for t in times:
        new_h, new_c, saved[t] = step(from_input[:, t], h, c, w_hh, b_hh, attrs)
        keep = valid[:, t, None]
        previous[:, t] = h
        h = np.where(keep, new_h, h)
        if c is not None:
            c = np.where(keep, new_c, c)
        outputs[:, t] = h * keep
    return Pass(outputs, h, previous, saved, times)


def run(stack: Stack, attrs: dict, x, weights: dict, h0=None, c0=None, lengths=None,
        mask=None) -> Record:
    """The stack forward on a batch `x` (B, T, F).  `weights`: (layer, direction) → its
    (W_ih, W_hh, b_ih, b_hh); `mask`: the dropout mask (B, L − 1, T, D·H) between layers."""
    batch = x.shape[0]
    valid = valid_steps(lengths, batch, stack.steps)
    h0 = _initial(h0, stack, batch, x.dtype)
    c0 = _initial(c0, stack, batch, x.dtype) if stack.kind == "lstm" else None
    sequence, inputs, passes = x, [], {}
    for layer in range(stack.layers):
        if layer and mask is not None:
            sequence = sequence * mask[:, layer - 1]
        inputs.append(sequence)
        for d in range(stack.directions):
            k = layer * stack.directions + d
            passes[layer, d] = _run_direction(stack, attrs, sequence, weights[layer, d],
                                              h0[:, k], None if c0 is None else c0[:, k],
                                              valid, reverse=d == 1)
        top = [passes[layer, d] for d in range(stack.directions)]
        sequence = np.concatenate([p.outputs for p in top], axis=-1)
    output = sequence if attrs["sequences"] else np.concatenate([p.final for p in top], axis=-1)
    return Record(output, inputs, passes, valid)


def _backprop_direction(stack, attrs, run_: Pass, valid, w_hh, d_out, dh):
    """Back through one direction's steps: (pre-activation gradients of the W_ih part and
    of the W_hh part, each (B, T, G·H), and the initial state's h and c gradients)."""
    back = CELLS[stack.kind][1]
    batch, rows = d_out.shape[0], stack.gates * stack.units
    d_ih = np.zeros((batch, stack.steps, rows), dtype=d_out.dtype)
    d_hh = np.zeros_like(d_ih)
    dc = np.zeros_like(dh) if stack.kind == "lstm" else None
    for t in reversed(run_.times):
        keep = valid[:, t, None]
        dh = dh + d_out[:, t] * keep
        da_ih, da_hh, dh_prev, dc_prev = back(run_.saved[t], dh, dc, w_hh, attrs)
        d_ih[:, t], d_hh[:, t] = da_ih * keep, da_hh * keep
        dh = np.where(keep, dh_prev, dh)   # a padded step passes the state's gradient on
        if dc is not None:
            dc = np.where(keep, dc_prev, dc)
    return d_ih, d_hh, dh, dc


# What each kind's record holds of a step's saved values (see the cells above), per step.
_RECORDED = {
    "rnn": lambda saved: {"gates": saved[0]},
    "lstm": lambda saved: {"gates": np.concatenate(saved[1:5], axis=-1), "cells": saved[0],
                           "tanhc": saved[5]},
    "gru": lambda saved: {"gates": np.concatenate(saved[1:4], axis=-1), "hn": saved[4]},
}


def record_array(stack: Stack, record: Record, layout: dict) -> np.ndarray:
    """The record (B, size) of the forward run `record`, laid out by `layout`."""
    batch = record.output.shape[0]
    keep = record.valid[:, :, None]
    values = {"output": record.output}
    values.update({f"input{layer}": record.inputs[layer] for layer in range(1, stack.layers)})
    for layer, d, tag in stack.cells():
        run_ = record.passes[layer, d]
        values[f"prev{tag}"] = run_.previous
        steps = [_RECORDED[stack.kind](saved) for saved in run_.saved]
        for name in steps[0]:
            values[f"{name}{tag}"] = np.stack([step[name] for step in steps], axis=1) * keep
    return pack(layout, values, batch, record.output.dtype)


def backprop(stack: Stack, attrs: dict, record: Record, weights: dict, g, layout: dict,
             mask=None) -> np.ndarray:
    """The tape (B, size) of one backward pass through the stack run as `record`, from `g`,
    the gradient of its output; laid out by `layout` (tape_layout)."""
    batch, H, D = g.shape[0], stack.units, stack.directions
    values = {"h0": np.zeros((batch, stack.states, H), dtype=g.dtype)}
    values["c0"] = np.zeros_like(values["h0"])
    if attrs["sequences"]:
        d_seq, d_final = g, [np.zeros((batch, H), dtype=g.dtype)] * D
    else:
        d_seq = np.zeros((batch, stack.steps, H * D), dtype=g.dtype)
        d_final = [g[:, d * H:(d + 1) * H] for d in range(D)]
    for layer in reversed(range(stack.layers)):
        d_input = np.zeros_like(record.inputs[layer])
        for d in range(D):
            w_ih, w_hh = weights[layer, d][:2]
            tag = f"l{layer}{'_reverse' if d else ''}"
            final = d_final[d] if layer == stack.layers - 1 else np.zeros((batch, H), g.dtype)
            d_ih, d_hh, dh, dc = _backprop_direction(stack, attrs, record.passes[layer, d],
                                                     record.valid, w_hh,
                                                     d_seq[..., d * H:(d + 1) * H], final)
            d_input += d_ih @ w_ih
            values[f"ih{tag}"], values[f"hh{tag}"] = d_ih, d_hh
            values["h0"][:, layer * D + d] = dh
            if dc is not None:
                values["c0"][:, layer * D + d] = dc
        d_seq = d_input if mask is None or layer == 0 else d_input * mask[:, layer - 1]
    return pack(layout, values, batch, g.dtype)
