"""Recurrent layers: rnn, lstm and gru, stacked and bidirectional.

Parameters follow PyTorch's names and layouts (weight_ih_l0, weight_hh_l0,
bias_ih_l0, bias_hh_l0, `_reverse` for the backward direction; gates stacked in
PyTorch's order: i, f, g, o for the LSTM and r, z, n for the GRU), so weights
move between the two without reshuffling.
"""

from netlang.ops.registry import ParamSpec, define_op
from netlang.ops.schema import Arg, BOOL, INT, LAYER, enum

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _recurrent_args(kind):
    args = [
        Arg("units", INT, min=1, doc="hidden state size per direction"),
        Arg("layers", INT, 1, min=1, doc="stacked layers, each fed the previous one's sequence"),
        Arg("bidirectional", BOOL, False, doc="also run backwards in time and concatenate both"),
        Arg("sequences", BOOL, False,
            doc="return the whole output sequence (T, units·directions) instead of the last state"),
    ]
    if kind == "rnn":
        args.append(Arg("activation", enum("tanh", "relu"), "tanh"))
    args.append(Arg("share", LAYER, None, doc="use this layer's parameters"))
    return args


def _recurrent_shape(ctx, a):
    ctx.need_float(0)
    ctx.need_rank(0, (3,), "a (time, features) sequence per example")
    x = ctx.inputs[0]
    width = a["units"] * (2 if a["bidirectional"] else 1)
    if a["sequences"]:
        return x.with_shape((x.shape[0], x.shape[1], width))
    return x.with_shape((x.shape[0], width))


def _recurrent_params(kind):
    gates = GATES[kind]

    def rule(inputs, a):
        h = a["units"]
        directions = ("", "_reverse") if a["bidirectional"] else ("",)
        specs = []
        features = inputs[0].shape[-1]
        for layer in range(a["layers"]):
            fan_in = features if layer == 0 else h * len(directions)
            for suffix in directions:
                tag = f"l{layer}{suffix}"
                specs += [
                    ParamSpec(f"weight_ih_{tag}", (gates * h, fan_in), "recurrent_uniform", h, h),
                    ParamSpec(f"weight_hh_{tag}", (gates * h, h), "recurrent_uniform", h, h),
                    ParamSpec(f"bias_ih_{tag}", (gates * h,), "recurrent_uniform", h, h),
                    ParamSpec(f"bias_hh_{tag}", (gates * h,), "recurrent_uniform", h, h),
                ]
        return specs
    return rule


def _recurrent_macs(kind):
    gates = GATES[kind]

    def rule(inputs, out, a):
        steps, h = inputs[0].shape[1], a["units"]
        directions = 2 if a["bidirectional"] else 1
        total, features = 0, inputs[0].shape[-1]
        for layer in range(a["layers"]):
            fan_in = features if layer == 0 else h * directions
            total += steps * directions * gates * h * (fan_in + h)
        return total
    return rule


_DOCS = {
    "rnn": "Elman recurrent layer: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).",
    "lstm": "Long short-term memory: input, forget, cell and output gates (PyTorch order i, f, g, o).",
    "gru": "Gated recurrent unit: reset, update and new gates (PyTorch order r, z, n).",
}

for _kind in ("rnn", "lstm", "gru"):
    _op = define_op(_kind, family="recurrent", args=_recurrent_args(_kind),
                    doc=_DOCS[_kind] + " Input (T, features) per example.")
    _op.shape(_recurrent_shape)
    _op.params(_recurrent_params(_kind))
    _op.macs(_recurrent_macs(_kind))
