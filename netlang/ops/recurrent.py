"""Recurrent layers: rnn, lstm and gru, stacked and bidirectional, with their gradients.

Parameters follow PyTorch's names and layouts (weight_ih_l0, weight_hh_l0,
bias_ih_l0, bias_hh_l0, `_reverse` for the backward direction; gates stacked in
PyTorch's order: i, f, g, o for the LSTM and r, z, n for the GRU), so weights
move between the two without reshuffling.

A layer's operands are its input sequence, then the tensors its keyword arguments name
(`h0`, `c0`, `lengths`, in that order, those given), then its parameters, and in a
training step the dropout mask between its stacked layers (see `operand_names`).  The
NumPy rules (forward in time, backward through it) are in recurrent_reference.py, the CPU
kernels in recurrent_kernels.py; here each op's schema, shape rule, parameters, and how its
backward pass is built from graph ops.

Inside a training step the layer's forward pass is a `<kind>_record` node, which leaves
the record the pass back reads, and the layer itself reads its output from that record (the
rewrite `_record_for_training`).  The backward pass is one `<kind>_grad` node, which runs back
through time and leaves a tape of gate gradients; each parameter's gradient is then one
product over all examples and steps (`recurrent_weight_grad`) or a column sum
(`recurrent_bias_grad`) of a tape section, the input's a product with W_ih
(`recurrent_input_grad`) and the initial states' a section of the tape (`recurrent_section`).
"""

from netlang.ir.types import TensorType
from netlang.ops.init import init_args
from netlang.ops.norm import dropout_mask_array
from netlang.ops.recurrent_onnx import onnx_rule as recurrent_onnx_rule
from netlang.ops.recurrent_reference import (
    GATES,
    PARAMETER_PARTS,
    Stack,
    backprop,
    hh_section,
    layout_size,
    parameter_names,
    record_array,
    record_layout,
    run,
    section,
    tape_layout,
)
from netlang.ops.registry import ParamSpec, ShapeProblem, define_internal, define_op
from netlang.ops.schema import Arg, BOOL, FLOAT, INT, INTS, LAYER, TENSOR, enum

# The tensors each kind takes by keyword, in operand order: initial states and lengths.
STATE_ARGS = {"rnn": ("h0", "lengths"), "lstm": ("h0", "c0", "lengths"), "gru": ("h0", "lengths")}


# Each stacked layer plans its own parameters, so the count is bounded before any is planned.
MAX_STACKED_LAYERS = 256


def _recurrent_args(kind):
    args = [
        Arg("units", INT, min=1, doc="hidden state size per direction"),
        Arg("layers", INT, 1, min=1, max=MAX_STACKED_LAYERS, doc="stacked layers, each fed the previous one's sequence"),
        Arg("bidirectional", BOOL, False, doc="also run backwards in time and concatenate both"),
        Arg("sequences", BOOL, False,
            doc="return the whole output sequence (T, units·directions) instead of each "
                "direction's final state"),
    ]
    if kind == "rnn":
        args.append(Arg("activation", enum("tanh", "relu"), "tanh"))
    args.append(Arg("share", LAYER, None, doc="use this layer's parameters"))
    args += init_args("recurrent_uniform")
    args.append(Arg("dropout", FLOAT, 0.0, min=0.0, max=1.0,
                    doc="in training, dropout on each stacked layer's output but the last's "
                        "(PyTorch's `dropout`)"))
    states = {"h0": "the initial hidden states: (layers·directions, units) per example, or "
                    "(units,) for one layer and direction (default zeros)",
              "c0": "the initial cell states, shaped as `h0` (default zeros)",
              "lengths": "int32 per example: the steps of each sequence; later steps are "
                         "padding"}
    args += [Arg(name, TENSOR, None, doc=states[name]) for name in STATE_ARGS[kind]]
    return args


def operand_names(kind: str, attrs: dict) -> list[str]:
    """A recurrent node's operands by name, in order: `x`, the tensor arguments given (the
    front end stores each as the name of the layer it came from, None when not given), the
    parameters, `mask` once the training rewrite has added the dropout mask, and `record`
    where the layer reads its output from a `<kind>_record` node."""
    given = [name for name in STATE_ARGS[kind] if attrs.get(name) is not None]
    names = ["x", *given, *parameter_names(attrs["layers"], 2 if attrs["bidirectional"] else 1)]
    return names + (["mask"] if attrs.get("masked") else []) + \
        (["record"] if attrs.get("recorded") else [])


def named_operands(kind: str, attrs: dict, values) -> dict:
    """Operand name → value (or type) of a recurrent node."""
    return dict(zip(operand_names(kind, attrs), values))


def _recurrent_shape(kind):
    def rule(ctx, a):
        ctx.need_float(0)
        ctx.need_rank(0, (3,), "a (time, features) sequence per example")
        x = ctx.inputs[0]
        stack = Stack.of(kind, a, x.shape)
        positions = named_operands(kind, a, range(len(ctx.inputs)))
        for state in ("h0", "c0"):
            if state not in positions:
                continue
            i = positions[state]
            shapes = [(None, stack.states, stack.units)]
            shapes += [(None, stack.units)] if stack.states == 1 else []
            if ctx.inputs[i].shape not in shapes or ctx.inputs[i].dtype != x.dtype:
                alone = f" or ({stack.units},)" if stack.states == 1 else ""
                ctx.fail(f"`{kind}` expects `{state}` of {x.dtype} ({stack.states}, "
                         f"{stack.units}){alone} per example (layers·directions, units), got "
                         f"{ctx.inputs[i].dtype} {ctx.describe(i)}")
        if "lengths" in positions:
            i = positions["lengths"]
            if ctx.inputs[i].is_float or ctx.inputs[i].shape != (None,):
                ctx.fail(f"`{kind}` expects `lengths` as one integer per example (int32[]), "
                         f"got {ctx.inputs[i].dtype} {ctx.describe(i)}")
        width = a["units"] * stack.directions
        if a["sequences"]:
            return x.with_shape((x.shape[0], x.shape[1], width))
        return x.with_shape((x.shape[0], width))
    return rule


def _recurrent_params(kind):
    gates = GATES[kind]

    def rule(inputs, a):
        h = a["units"]
        directions = ("", "_reverse") if a["bidirectional"] else ("",)
        specs = []
        features = inputs[0].shape[-1]

        def weight(name, columns):
            # PyTorch bounds its default by the hidden size, whatever the matrix; any other
            # scheme reads the matrix's own fans, as PyTorch's init functions do.
            fans = (h, h) if a["init"] == "recurrent_uniform" else (columns, gates * h)
            return ParamSpec(name, (gates * h, columns), a["init"], *fans, a["gain"])

        for layer in range(a["layers"]):
            fan_in = features if layer == 0 else h * len(directions)
            for suffix in directions:
                tag = f"l{layer}{suffix}"
                specs += [
                    weight(f"weight_ih_{tag}", fan_in),
                    weight(f"weight_hh_{tag}", h),
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

_REFERENCE = {
    "rnn": dict(
        shape="`(T, F)` → `(units·D,)`: each direction's final state, concatenated "
              "(forwards after its last step, backwards after step 0, PyTorch's `h_n` of the "
              "top layer), or `(T, units·D)` with `sequences = true`; `D` is 2 when "
              "bidirectional, else 1. Initial states and lengths are tensors named by keyword: "
              "`h0` (and `c0`) `(layers·D, units)` per example (`(units,)` for one layer and "
              "direction), zeros when not given; `lengths` `int32[]`, from 0 to `T`: the steps "
              "at and after an example's length are padding, which keeps the state, outputs "
              "zeros and receives no gradient. In training, `dropout` masks each stacked "
              "layer's output sequence but the top one's, as PyTorch does.",
        params="for each layer `l` and direction (suffix `_reverse` for the backward one): "
               "`weight_ih_l<l>` `(G·units, in)`, `weight_hh_l<l>` `(G·units, units)`, "
               "`bias_ih_l<l>` and `bias_hh_l<l>` `(G·units,)`, where `in` is `F` for layer 0 "
               "and `units·D` above it; `G` is 1 for `rnn`, 4 for `lstm` (gates i, f, g, o) and "
               "3 for `gru` (r, z, n) — PyTorch's names and layouts. The weights are drawn by "
               "`init` (by default PyTorch's U(±1/√units)), the biases always U(±1/√units).",
        example="input x: [50, 8]\noutput h = x -> rnn(32, activation = relu)   # (32,)"),
    "lstm": dict(
        shape="as `rnn`.", params="as `rnn`, with `G = 4`.",
        example="input x: [50, 8]\n"
                "input n: int32[]   # each sequence's length, at most 50\n"
                "output h = x -> lstm(64, layers = 2, bidirectional = true, dropout = 0.2,\n"
                "                     lengths = n)   # (128,): both directions' final states"),
    "gru": dict(shape="as `rnn`.", params="as `rnn`, with `G = 3`.",
                example="input x: [50, 8]\ninput y: [20, 8]\n"
                        "state = x -> gru(32) as encoder   # (32,)\n"
                        "output h = y -> gru(32, h0 = state, sequences = true) as decoder"
                        "   # (20, 32)"),
}


# ---- forward, the dropout between stacked layers, and backward -------------------------------


def _weights(stack: Stack, named: dict) -> dict:
    """(layer, direction) → that cell's (W_ih, W_hh, b_ih, b_hh) among the operands."""
    return {(layer, d): tuple(named[f"{part}_{tag}"] for part in PARAMETER_PARTS)
            for layer, d, tag in stack.cells()}


def _mask_shape(a, steps) -> tuple:
    """The dropout mask per example: one value per stacked layer's output but the last's."""
    return (a["layers"] - 1, steps, a["units"] * (2 if a["bidirectional"] else 1))


def _drops(a) -> bool:
    return a["dropout"] > 0 and a["layers"] > 1


def _forward(kind):
    def rule(ins, a, ctx):
        named = named_operands(kind, a, ins)
        x = named["x"]
        if "record" in named:
            layout = record_layout(Stack.of(kind, a, x.shape), a["sequences"])
            return section(named["record"], layout, "output")
        mask = named.get("mask")
        # The graph as lowered, run in training mode (a reference forward pass): the mask is
        # drawn here, from the same stream and in the same order as the training program's
        # mask node would draw it.
        if mask is None and ctx.mode == "train" and _drops(a):
            mask = dropout_mask_array((x.shape[0],) + _mask_shape(a, x.shape[1]), a["dropout"],
                                      ctx.rng, x.dtype)
        stack = Stack.of(kind, a, x.shape)
        return run(stack, a, x, _weights(stack, named), named.get("h0"), named.get("c0"),
                   named.get("lengths"), mask).output
    return rule


recurrent_dropout_mask = define_internal(
    "recurrent_dropout_mask", family="recurrent",
    args=[Arg("rate", FLOAT), Arg("shape", INTS)],
    shape=lambda ctx, a: TensorType((None,) + tuple(a["shape"]), ctx.inputs[0].dtype),
    doc="A fresh inverted-dropout mask of the per-example `shape` each training step, for the "
        "outputs of a recurrent layer's stacked layers but the last; its operand (the layer's "
        "input) gives the batch size and dtype.  Drawn as dropout's masks are.")
recurrent_dropout_mask.forward(
    lambda ins, a, ctx: dropout_mask_array((ins[0].shape[0],) + tuple(a["shape"]), a["rate"],
                                           ctx.rng, ins[0].dtype))


def _without_record(attrs: dict) -> dict:
    return {name: value for name, value in attrs.items() if name != "recorded"}


def _record_for_training(graph, node):
    """Inside a training step the layer's forward pass runs as a `<kind>_record` node, whose
    record the backward pass reads, and the layer reads its output from it.  A layer with
    dropout between its stacked layers reads its mask as one more operand, drawn by a node of
    its own, so that its backward pass applies the very mask its forward pass did."""
    data = graph.nodes[node]
    a, kind = data["attrs"], data["op"]
    x = data["inputs"][0]
    x_type = graph.type_of(x)
    operands = list(data["inputs"])
    if _drops(a):
        shape = _mask_shape(a, x_type.shape[1])
        mask = graph.add_op("recurrent_dropout_mask", [x], {"rate": a["dropout"], "shape": shape},
                            TensorType((None,) + shape, x_type.dtype),
                            name=graph.unique_name(f"{data['name']}.mask"), role="internal",
                            layer=data["layer"], trace=data["trace"])
        operands.append(mask)
        a = {**a, "masked": True}
    layout = record_layout(Stack.of(kind, a, x_type.shape), a["sequences"])
    record = graph.add_op(f"{kind}_record", operands, a,
                          TensorType((None, layout_size(layout)), x_type.dtype),
                          name=graph.unique_name(f"{data['name']}.record"), role="internal",
                          layer=data["layer"], trace=data["trace"])
    graph.replace_op(node, kind, operands + [record], {**a, "recorded": True})


def _record_forward(kind):
    def rule(ins, a, ctx):
        named = named_operands(kind, a, ins)
        x = named["x"]
        stack = Stack.of(kind, a, x.shape)
        record = run(stack, a, x, _weights(stack, named), named.get("h0"), named.get("c0"),
                     named.get("lengths"), named.get("mask"))
        return record_array(stack, record, record_layout(stack, a["sequences"]))
    return rule


def _record_shape(kind):
    def rule(ctx, a):
        x = ctx.inputs[0]
        layout = record_layout(Stack.of(kind, a, x.shape), a["sequences"])
        return TensorType((None, layout_size(layout)), x.dtype)
    return rule


def _grad_forward(kind):
    def rule(ins, a, ctx):
        # The reference runs the layer forward again rather than read the record operand
        # (a function of the others): the NumPy pass keeps its per-step values as arrays.
        named = named_operands(kind, a, ins[:-1])
        x = named["x"]
        stack = Stack.of(kind, a, x.shape)
        weights = _weights(stack, named)
        record = run(stack, a, x, weights, named.get("h0"), named.get("c0"),
                     named.get("lengths"), named.get("mask"))
        layout = tape_layout(stack, "h0" in named, "c0" in named)
        return backprop(stack, a, record, weights, ins[-1], layout, named.get("mask"))
    return rule


def _grad_shape(kind):
    def rule(ctx, a):
        x = ctx.inputs[0]
        named = named_operands(kind, a, ctx.inputs[:-1])
        layout = tape_layout(Stack.of(kind, a, x.shape), "h0" in named, "c0" in named)
        return TensorType((None, layout_size(layout)), x.dtype)
    return rule


def _vjp(kind):
    def rule(b, node, g):
        """One `<kind>_grad` node runs back through time, reading the record of the forward
        pass (a `<kind>_record` node of its own outside a training step, where the layer
        keeps none); each operand's gradient is then built from sections of its tape."""
        a = b.attrs(node)
        operands = list(b.operands(node))
        named = named_operands(kind, a, operands)
        stack = Stack.of(kind, a, b.type(operands[0]).shape)
        if "record" in named:
            operands.pop()
        record = named["record"] if "record" in named else \
            b.add(f"{kind}_record", operands, **_without_record(a))
        tape = b.add(f"{kind}_grad", operands + [record, g], **{**a, "recorded": True})
        tape_at = tape_layout(stack, "h0" in named, "c0" in named)
        record_at = record_layout(stack, a["sequences"])
        steps, rows = stack.steps, stack.gates * stack.units
        grads = {}
        for name in ("h0", "c0"):
            if name in named:
                start, shape = tape_at[name]
                piece = b.add("recurrent_section", [tape], start=start, shape=shape)
                grads[name] = b.add("reshape_like", [piece, named[name]])
        first = [tag for layer, _, tag in stack.cells() if layer == 0]
        grads["x"] = b.add("recurrent_input_grad",
                           [tape] + [named[f"weight_ih_{tag}"] for tag in first],
                           starts=tuple(tape_at[f"ih{tag}"][0] for tag in first), steps=steps)
        for layer, _, tag in stack.cells():
            ih, hh = tape_at[f"ih{tag}"][0], tape_at[hh_section(stack, tag)][0]
            source, at = (named["x"], 0) if layer == 0 else \
                (record, record_at[f"input{layer}"][0])
            grads[f"weight_ih_{tag}"] = b.add(
                "recurrent_weight_grad", [tape, source], starts=(ih, at), steps=steps,
                columns=(rows, stack.width(layer)))
            grads[f"weight_hh_{tag}"] = b.add(
                "recurrent_weight_grad", [tape, record], steps=steps, columns=(rows, stack.units),
                starts=(hh, record_at[f"prev{tag}"][0]))
            grads[f"bias_ih_{tag}"] = b.add("recurrent_bias_grad", [tape], start=ih, steps=steps,
                                            columns=rows)
            # Where the W_hh part passes the gate gradients back unchanged (all but the GRU),
            # the two biases have one gradient: one sum, read by both updates.
            grads[f"bias_hh_{tag}"] = grads[f"bias_ih_{tag}"] if hh == ih else b.add(
                "recurrent_bias_grad", [tape], start=hh, steps=steps, columns=rows)
        return [grads.get(name) for name in operand_names(kind, a)]   # none for lengths, mask
    return rule


# ---- one step at a time (passes/stepping.py) ------------------------------------------------
#
# Sampling runs a model one step at a time, carrying each recurrent layer's state from a step to
# the next.  A layer's step is written here with graph ops (dense, the gate nonlinearities,
# products and sums), so every engine that runs those runs it; tests/test_sampling.py checks it
# against the whole-sequence forward above, step by step.


def _carried_states(kind):
    def rule(a, in_types):
        if a["bidirectional"]:
            raise ShapeProblem(f"`{kind}` with `bidirectional = true` reads the sequence "
                               f"backwards too, so it cannot run one step at a time")
        given = [name for name in STATE_ARGS[kind] if a.get(name) is not None]
        if given:
            raise ShapeProblem(f"`{kind}` takes `{given[0]}` from `{a[given[0]]}`: running it "
                               f"one step at a time is pending")
        stack = Stack.of(kind, a, in_types[0].shape)
        return {name: (stack.states, stack.units) for name in STATE_ARGS[kind]
                if name != "lengths"}
    return rule


def _blocks(b, v, units: int, count: int) -> list:
    """The `count` blocks of `units` columns of v (B, count·units): a cell's gates."""
    return [b.add("slice_axis", [v], axis=-1, start=k * units, stop=(k + 1) * units)
            for k in range(count)]


def _rnn_cell(b, a, gi, gh, held, units):
    return {"h0": b.add(a["activation"], [b.add("add", [gi, gh])])}


def _lstm_cell(b, a, gi, gh, held, units):
    i, f, g, o = _blocks(b, b.add("add", [gi, gh]), units, 4)
    i, f, o = (b.add("sigmoid", [v]) for v in (i, f, o))
    c = b.add("add", [b.add("multiply", [f, held["c0"]]),
                      b.add("multiply", [i, b.add("tanh", [g])])])
    return {"h0": b.add("multiply", [o, b.add("tanh", [c])]), "c0": c}


def _gru_cell(b, a, gi, gh, held, units):
    i_r, i_z, i_n = _blocks(b, gi, units, 3)
    h_r, h_z, h_n = _blocks(b, gh, units, 3)
    r = b.add("sigmoid", [b.add("add", [i_r, h_r])])
    z = b.add("sigmoid", [b.add("add", [i_z, h_z])])
    n = b.add("tanh", [b.add("add", [i_n, b.add("multiply", [r, h_n])])])
    # (1 − z)·n + z·h, as n + z·(h − n)
    h_minus_n = b.add("add", [held["h0"], b.add("scale", [n], factor=-1.0)])
    return {"h0": b.add("add", [n, b.add("multiply", [z, h_minus_n])])}


STEP_CELLS = {"rnn": _rnn_cell, "lstm": _lstm_cell, "gru": _gru_cell}


def _step(kind):
    def rule(b, a, operands, states):
        """One step of the stack: each layer's cell on the step's input and its held state,
        the new states stacked as the initial ones are, (layers, units)."""
        named = named_operands(kind, a, operands)
        stack = Stack.of(kind, a, b.type(named["x"]).shape)
        units, rows = stack.units, stack.gates * stack.units
        x = b.add("reshape", [named["x"]], shape=(stack.features,))   # the one step (B, F)
        after = {name: [] for name in states}
        for layer, _, tag in stack.cells():
            held = {}
            for name, state in states.items():
                row = state if stack.layers == 1 else b.add("slice_axis", [state], axis=0,
                                                            start=layer, stop=layer + 1)
                held[name] = b.add("reshape", [row], shape=(units,))
            gi = b.add("dense", [x, named[f"weight_ih_{tag}"], named[f"bias_ih_{tag}"]],
                       units=rows)
            gh = b.add("dense", [held["h0"], named[f"weight_hh_{tag}"],
                                 named[f"bias_hh_{tag}"]], units=rows)
            new = STEP_CELLS[kind](b, a, gi, gh, held, units)
            for name in states:
                after[name].append(b.add("reshape", [new[name]], shape=(1, units)))
            x = new["h0"]
        stacked = {name: rows_[0] if len(rows_) == 1 else b.add("concat", rows_, axis=0)
                   for name, rows_ in after.items()}
        output = b.add("reshape", [x], shape=(1, units)) if a["sequences"] else x
        return output, stacked, a["sequences"]
    return rule


def _lengths_bound(kind):
    """Random benchmark lengths run from 0 to the number of steps."""
    def bound(index, a, in_types):
        named = named_operands(kind, a, range(len(in_types)))
        return in_types[0].shape[1] + 1 if named.get("lengths") == index else None
    return bound


def _operand_positions(kind):
    """fn(attrs, count) → operand name → position, for the ONNX rule."""
    return lambda a, count: named_operands(kind, a, range(count))


for _kind in ("rnn", "lstm", "gru"):
    _op = define_op(_kind, family="recurrent", args=_recurrent_args(_kind),
                    doc=_DOCS[_kind] + " Input (T, features) per example.")
    _op.document(**_REFERENCE[_kind])
    _op.shape(_recurrent_shape(_kind))
    _op.params(_recurrent_params(_kind))
    _op.macs(_recurrent_macs(_kind))
    _op.forward(_forward(_kind))
    _op.vjp(_vjp(_kind))
    _op.training_rewrite(_record_for_training)
    _op.integer_bound = _lengths_bound(_kind)
    _op.carried_states = _carried_states(_kind)
    _op.step_rule = _step(_kind)
    _op.onnx_rule = recurrent_onnx_rule(_kind, _operand_positions(_kind))
    _record = define_internal(
        f"{_kind}_record", family="recurrent", arity=None, args=_op.args,
        shape=_record_shape(_kind),
        doc=f"`{_kind}` run forward, leaving per example the record its backward pass reads and "
            f"its output (recurrent_reference.py `record_layout`).")
    _record.forward(_record_forward(_kind))
    _grad = define_internal(
        f"{_kind}_grad", family="recurrent", arity=None, args=_op.args, shape=_grad_shape(_kind),
        doc=f"Backpropagation through time of `{_kind}`, from its operands, its record and the "
            f"gradient of its output: per example, a tape of the gradients of its initial "
            f"states and of its gates' pre-activations (recurrent_reference.py `tape_layout`).")
    _grad.forward(_grad_forward(_kind))


# ---- the gradients, from sections of the tape and the record ---------------------------------
#
# A section of a section-major (B, size) array starts at element B·start of its flat buffer and
# holds B·steps rows of `columns` values (recurrent_reference.py); an operand that is a plain
# sequence (B, T, F) is its own section at start 0.


def _rows(array, start: int, steps: int, columns: int):
    """Section rows (B·steps, columns) of `array`, starting at per-example offset `start`."""
    batch = array.shape[0]
    return array.reshape(-1)[batch * start:batch * (start + steps * columns)].reshape(-1, columns)


recurrent_section = define_internal(
    "recurrent_section", family="recurrent",
    args=[Arg("start", INT), Arg("shape", INTS)],
    shape=lambda ctx, a: TensorType((None,) + tuple(a["shape"]), ctx.inputs[0].dtype),
    doc="A section of a section-major tape, as (B, *shape).")
recurrent_section.forward(
    lambda ins, a, ctx: section(ins[0], {"it": (a["start"], tuple(a["shape"]))}, "it"))

recurrent_weight_grad = define_internal(
    "recurrent_weight_grad", family="recurrent", arity=2,
    args=[Arg("starts", INTS), Arg("steps", INT), Arg("columns", INTS)],
    shape=lambda ctx, a: TensorType(tuple(a["columns"]), ctx.inputs[0].dtype),
    doc="A weight's gradient: Σ over examples and steps of a tape section's gate gradients "
        "times what the weight multiplied (a section of the record, or the input).")
recurrent_weight_grad.forward(
    lambda ins, a, ctx: _rows(ins[0], a["starts"][0], a["steps"], a["columns"][0]).T
    @ _rows(ins[1], a["starts"][1], a["steps"], a["columns"][1]))

recurrent_bias_grad = define_internal(
    "recurrent_bias_grad", family="recurrent",
    args=[Arg("start", INT), Arg("steps", INT), Arg("columns", INT)],
    shape=lambda ctx, a: TensorType((a["columns"],), ctx.inputs[0].dtype),
    doc="A bias's gradient: a tape section's gate gradients summed over examples and steps.")
recurrent_bias_grad.forward(
    lambda ins, a, ctx: _rows(ins[0], a["start"], a["steps"], a["columns"]).sum(axis=0))


def _input_grad_shape(ctx, a):
    weight = ctx.inputs[1]
    return TensorType((None, a["steps"], weight.shape[1]), ctx.inputs[0].dtype)


recurrent_input_grad = define_internal(
    "recurrent_input_grad", family="recurrent", arity=None,
    args=[Arg("starts", INTS), Arg("steps", INT)], shape=_input_grad_shape,
    doc="The input's gradient: the first layer's gate gradients (a tape section per direction) "
        "times each direction's W_ih, summed.")


def _input_grad_forward(ins, a, ctx):
    tape, weights = ins[0], ins[1:]
    batch = tape.shape[0]
    total = sum(_rows(tape, start, a["steps"], w.shape[0]) @ w
                for start, w in zip(a["starts"], weights))
    return total.reshape(batch, a["steps"], -1)


recurrent_input_grad.forward(_input_grad_forward)
