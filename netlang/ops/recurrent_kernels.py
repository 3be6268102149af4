"""CPU kernel templates of the recurrent layers.

The ops (arguments, shape rules, parameters, reference rules, the backward pass as graph
ops) are in netlang/ops/recurrent.py; this module attaches their CPU kernels.  The loop nests
they call are plain Python in netlang/ops/recurrent_loops.py, compiled by
netlang.runtime.recurrent.

Forward (`<kind>_record`, and the layer itself outside a training step), for each layer and
direction, per step: one product x·W_ihᵀ into the step's gate values in the record, one product
h·W_hhᵀ added to them in place (the GRU's apart), both from weights transposed once per call,
and one step function, which adds the biases, applies the nonlinearities in place, and writes
the state, the rest of the record and the output.  Every product is `vector_gemm`
(netlang/runtime/vector_gemm.py).  Back (`<kind>_grad`), per step, last first: one step
function writes the gate gradients into the tape, and one product adds their W_hh part,
da·W_hh, to the state's gradient; then one product per direction gives the gradient of the
sequence the layer read, which the layer below reads (through the dropout mask).  The weights'
gradients are then one product each over all examples and steps (`recurrent_weight_grad`), the
biases' column sums.  States, products and gradients live in planned buffers (the kernels'
workspaces, the record and the tape): nothing is allocated per step.

The examples of a batch are independent through every layer and step, so the forward and back
kernels cut the batch into blocks of examples, each of which runs the whole stack on its own,
and a program with worker threads shares the blocks among them: one parallel region per
kernel, no synchronisation per step.  The weights' and the input's gradients are cut into
blocks of rows likewise.  The cuts depend on the batch alone (`_blocks` says why).

The step functions come in two versions, by the program's dtype (see
netlang/runtime/recurrent.py); records and tapes are section-major (recurrent_reference.py),
so every section is a view of the flat buffer, made once before the loops.
"""

from __future__ import annotations

import contextlib
import math

from netlang.ops.norm import dropout_mask
from netlang.ops.recurrent import (
    named_operands,
    recurrent_bias_grad,
    recurrent_dropout_mask,
    recurrent_input_grad,
    recurrent_section,
    recurrent_weight_grad,
)
from netlang.ops.recurrent_reference import (
    CELL_EXTRAS,
    PARAMETER_PARTS,
    Stack,
    hh_section,
    layout_size,
    record_layout,
    tape_layout,
)
from netlang.ops.registry import OPS

RUNTIME = "netlang.runtime.recurrent"


def _helper(k, name: str) -> str:
    return k.helper(name, RUNTIME)


def _product(k) -> str:
    """The recurrent kernels' matrix product, `vector_gemm(transa, alpha, a, b, beta, c)`
    (netlang/runtime/vector_gemm.py): twice OpenBLAS's speed on their shapes where OpenBLAS
    is held to AVX2, and results that do not depend on how the rows are cut."""
    return k.helper("vector_gemm", "netlang.runtime.vector_gemm")


def _step_function(k, name: str) -> str:
    """A step function in the program's precision (`lstm_step32`, `gru_step_back64`...)."""
    return _helper(k, f"{name}{'32' if k.program.dtype == 'float32' else '64'}")


def section_view(k, array: str, start: int, shape: tuple) -> str:
    """A view (B, *shape) of a section-major array's section starting at `start` (elements
    per example): the slice of its flat buffer from B·start."""
    flat = k.flat(array)
    n = f"{array}.shape[0]"
    size = math.prod(shape)
    return k.host_value(k.reshaped(f"{flat}[{n} * {start}:{n} * {start + size}]", shape), "sec")


# A batch is cut into blocks of examples: each block runs every layer and step on its own, and
# the worker threads share the blocks.  The cut depends on the batch alone, never on the
# thread count: a block's products see the same operands whoever runs it (and `vector_gemm`'s
# results do not depend on the rows it is given either), so a given seed trains the same
# weights on any number of threads.  A block is half the batch, at most BLOCK_EXAMPLES, and at
# least a MAX_BLOCKS-th of it, so that two cores share a batch of 128 in two blocks of 64.
BLOCK_EXAMPLES = 64
MAX_BLOCKS = 8
# The weight gradients' products are cut along their rows (the gates' units, G·H), and the
# input gradient's along the B·T rows of the sequence, for the same reason.
BLOCK_GATE_ROWS = 256
BLOCK_SEQUENCE_ROWS = 512
# The cells whose step reads h·W_hhᵀ apart from x·W_ihᵀ (the GRU's n gate multiplies its
# W_hn·h + b_hn by r): the others add the per-step product to the gate values in place.
HIDDEN_PART_APART = {"gru"}


@contextlib.contextmanager
def _blocks(k, count: str, size: str):
    """`count` rows in blocks of `size` (expressions, evaluated once), spread over the
    program's worker threads as contiguous runs of blocks (`ProgramWriter.worker_function`),
    or run in turn by a serial program; what is emitted inside is one block's work.  Yields
    the names of the block's first row and of the row after its last."""
    workers = k.workers
    with contextlib.ExitStack() as scope:
        if workers > 1:
            worker = scope.enter_context(k.program.worker_function())
        n = k.host_value(count, "n")
        rows = k.host_value(size, "bs")
        blocks = k.host_value(f"({n} + {rows} - 1) // {rows}", "nb")
        if workers > 1:
            span = f"{blocks} * {worker} // {workers}, {blocks} * ({worker} + 1) // {workers}"
        else:
            span = blocks
        block = k.fresh("blk")
        with k.block(f"for {block} in range({span}):"):
            first = k.host_value(f"{block} * {rows}", "e")
            stop = k.host_value(f"min({first} + {rows}, {n})", "e")
            yield first, stop


def _example_blocks(k, array: str):
    """The batch of `array` in blocks of examples (see BLOCK_EXAMPLES)."""
    n = f"{array}.shape[0]"
    return _blocks(k, n, f"max(min({BLOCK_EXAMPLES}, ({n} + 1) // 2), "
                         f"({n} + {MAX_BLOCKS - 1}) // {MAX_BLOCKS})")


def _part(k, array: str | None, first: str, stop: str) -> str | None:
    """A block's examples of a batched array (a view; None stays None)."""
    return None if array is None else k.host_value(f"{array}[{first}:{stop}]", "b")


def section_views(k, array: str, layout: dict) -> dict:
    """A view of every section of a record or tape laid out by `layout`: name → variable."""
    return {name: section_view(k, array, start, shape) for name, (start, shape) in layout.items()}


def _fill_steps(k, steps: str, named: dict, stack: Stack) -> None:
    """Each example's length (checked), or the whole sequence without `lengths`."""
    if "lengths" in named:
        k.line(f"{_helper(k, 'fill_steps')}({steps}, {k.flat(named['lengths'])}, {stack.steps})")
    else:
        k.line(f"{steps}[:] = {stack.steps}")


def state_view(k, named: dict, name: str, stack: Stack) -> str | None:
    """An initial state operand (or its gradient's section) as (B, L·D, H), when given."""
    if name not in named:
        return None
    state = named[name]
    return k.host_value(k.reshaped(state, (stack.states, stack.units)), "st")


def workspace_rule(kind: str, plan):
    """The op's workspace rule from `plan(stack, attrs)`: [(name, spec)] (its CUDA kernels'
    plans too, netlang/ops/recurrent_cuda.py)."""
    def rule(in_types, out_type, a):
        return [spec for _, spec in plan(Stack.of(kind, a, in_types[0].shape), a)]
    return rule


def named_workspaces(k, kind: str, plan) -> dict:
    """The kernel's workspaces by the names `plan` gives them."""
    stack = Stack.of(kind, k.attrs, k.in_types[0].shape)
    return {name: k.workspace(i) for i, (name, _) in enumerate(plan(stack, k.attrs))}


# ---- forward --------------------------------------------------------------------------------

def _forward_plan(stack: Stack, a: dict, with_record: bool) -> list:
    """Each example's length, the state h (and the LSTM's c), the GRU's h·W_hhᵀ of a step,
    every layer's and direction's W_hh transposed (H, G·H) and W_ih transposed (the first
    layer's (X, G·H), the others' (D·H, G·H)), and the record where the kernel keeps it to
    itself."""
    rows = stack.gates * stack.units
    plan = [("steps", ((1,), True, "int64")), ("h", ((stack.units,), True))]
    if stack.kind == "lstm":
        plan.append(("c", ((stack.units,), True)))
    if stack.kind in HIDDEN_PART_APART:
        plan.append(("hw", ((rows,), True)))
    plan.append(("w_hh_t", ((stack.layers * stack.directions, stack.units, rows), False)))
    plan.append(("w_ih_t", ((stack.directions, stack.features, rows), False)))
    if stack.layers > 1:
        plan.append(("w_ih_t_upper", (((stack.layers - 1) * stack.directions,
                                        stack.directions * stack.units, rows), False)))
    if with_record:
        plan.append(("record", ((layout_size(record_layout(stack, a["sequences"])),), True)))
    return plan


def emit_forward(k, stack: Stack, named: dict, record: str, ws: dict) -> None:
    """The layer forward, into `record` (a section-major (B, size) array): every section of
    recurrent_reference.py's `record_layout`, the output included.  Each block of examples
    (`_example_blocks`) runs all the layers and steps on its own."""
    a = k.attrs
    T, H, D = stack.steps, stack.units, stack.directions
    steps = k.flat(ws["steps"])
    _fill_steps(k, steps, named, stack)   # serial: it may raise, which a worker must not
    # The products read W_hh and W_ih transposed, made once per call: `vector_gemm` reads its
    # second operand row by row.
    for layer in range(stack.layers):
        for d in range(D):
            tag = f"l{layer}{'_reverse' if d else ''}"
            k.line(f"{_helper(k, 'transpose')}({named[f'weight_hh_{tag}']}, {ws['w_hh_t']}, "
                   f"{layer * D + d})")
            k.line(f"{_helper(k, 'transpose')}({named[f'weight_ih_{tag}']}, "
                   f"{ws['w_ih_t'] if layer == 0 else ws['w_ih_t_upper']}, "
                   f"{d if layer == 0 else (layer - 1) * D + d})")
    step = _step_function(k, f"{stack.kind}_step")
    product = _product(k)
    last = stack.layers - 1
    with _example_blocks(k, named["x"]) as (first, stop):
        def part(array):
            return _part(k, array, first, stop)
        h, c, hw = (part(ws.get(name)) for name in ("h", "c", "hw"))
        block_steps = part(steps)
        sections = {name: part(view) for name, view in
                    section_views(k, record, record_layout(stack, a["sequences"])).items()}
        h0, c0 = part(state_view(k, named, "h0", stack)), part(state_view(k, named, "c0", stack))
        mask = part(named.get("mask"))
        for layer in range(stack.layers):
            sequence = part(named["x"]) if layer == 0 else sections[f"input{layer}"]
            for d in range(D):
                tag = f"l{layer}{'_reverse' if d else ''}"
                _, _, b_ih, b_hh = (named[f"{part_}_{tag}"] for part_ in PARAMETER_PARTS)
                w_hh_t = k.host_value(f"{ws['w_hh_t']}[{layer * D + d}]", "wt")
                w_ih_t = k.host_value(f"{ws['w_ih_t']}[{d}]" if layer == 0 else
                                      f"{ws['w_ih_t_upper']}[{(layer - 1) * D + d}]", "wt")
                gates = sections[f"gates{tag}"]
                for state, initial in ((h, h0), (c, c0)):
                    if state is not None and initial is None:
                        k.line(f"{state}[:, :] = 0.0")
                    elif state is not None:
                        k.line(f"{_helper(k, 'start_state')}({state}, {initial}, "
                               f"{layer * D + d})")
                emit = layer < last or a["sequences"]
                if layer < last:
                    out = sections[f"input{layer + 1}"]
                else:   # without `sequences` the top layer outputs no sequence: a placeholder
                    out = sections["output"] if a["sequences"] else sections[f"prev{tag}"]
                arguments = [h] + ([c] if c is not None else []) + \
                    [sections[f"prev{tag}"], gates] + \
                    [sections[f"{extra}{tag}"] for extra in CELL_EXTRAS[stack.kind]] + \
                    [out, str(d * H), str(emit)]
                if stack.kind == "rnn":
                    arguments.append(str(a["activation"] == "relu"))
                arguments.append(str(H))
                s = k.fresh("s")
                with k.block(f"for {s} in range({T}):"):
                    t = k.host_value(f"{T - 1} - {s}" if d else s, "t")
                    # The step's x·W_ihᵀ, then its h·W_hhᵀ added: per step rather than one
                    # product over all steps first, so the gate values are still in the cache
                    # when the second product and the step function read them (the row LSTM's
                    # step took 9% less time, one thread).
                    k.line(f"{product}(False, 1.0, {sequence}[:, {t}], {w_ih_t}, 0.0, "
                           f"{gates}[:, {t}])")
                    if hw is None:   # the step's gates: x·W_ihᵀ + h·W_hhᵀ, in place
                        k.line(f"{product}(False, 1.0, {h}, {w_hh_t}, 1.0, {gates}[:, {t}])")
                    else:
                        k.line(f"{product}(False, 1.0, {h}, {w_hh_t}, 0.0, {hw})")
                    leading = [t, block_steps] + ([hw] if hw is not None else []) + [b_ih, b_hh]
                    k.line(f"{step}({', '.join(leading + arguments)})")
                if layer == last and not a["sequences"]:
                    final = k.host_value(k.reshaped(sections['output'], (D, H)), "fin")
                    k.line(f"{_helper(k, 'store_state')}({h}, {final}, {d})")
            if mask is not None and layer < last:
                k.line(f"{_helper(k, 'apply_mask')}({sections[f'input{layer + 1}']}, {mask}, "
                       f"{layer})")


def record_kernel(kind: str, emit, forward_plan):
    """`<kind>_record`: the forward pass, its record the output; `emit(k, stack, named, record,
    workspaces)` and `forward_plan(stack, a, with_record)` are the back end's (CPU here, CUDA
    in recurrent_cuda.py).  Returns (kernel, workspace rule)."""
    def plan(stack, a):
        return forward_plan(stack, a, with_record=False)

    def kernel(k):
        named = named_operands(kind, k.attrs, k.ins)
        emit(k, Stack.of(kind, k.attrs, k.in_types[0].shape), named, k.out,
             named_workspaces(k, kind, plan))
    return kernel, workspace_rule(kind, plan)


def layer_kernel(kind: str, emit, forward_plan, copy_out):
    """The layer: inside a training step it copies its output out of its record operand;
    elsewhere it runs the forward pass into a record of its own first.  The output is the
    record's first section, which `copy_out(k, record)` copies to `k.out`."""
    def plan(stack, a):
        return [] if a.get("recorded") else forward_plan(stack, a, with_record=True)

    def kernel(k):
        named = named_operands(kind, k.attrs, k.ins)
        record = named.get("record")
        if record is None:
            ws = named_workspaces(k, kind, plan)
            record = ws["record"]
            emit(k, Stack.of(kind, k.attrs, k.in_types[0].shape), named, record, ws)
        copy_out(k, record)
    return kernel, workspace_rule(kind, plan)


def _copy_record_out(k, record: str) -> None:
    k.line(f"{_helper(k, 'copy_flat')}({record}, 0, {k.out})")


# ---- back through time ------------------------------------------------------------------------

def _grad_plan(stack: Stack, a: dict) -> list:
    """Each example's length, the state's gradient dh (and the LSTM's dc), and the gradients
    of the sequences that the layers above the first read: two, used in turn."""
    plan = [("steps", ((1,), True, "int64")), ("dh", ((stack.units,), True))]
    if stack.kind == "lstm":
        plan.append(("dc", ((stack.units,), True)))
    sequence = ((stack.steps, stack.units * stack.directions), True)
    plan += [(f"d_input{i}", sequence) for i in range(min(stack.layers - 1, 2))]
    return plan


def _grad_kernel(kind: str):
    def kernel(k):
        a = k.attrs
        stack = Stack.of(kind, a, k.in_types[0].shape)
        named = named_operands(kind, a, k.ins[:-1])
        ws = named_workspaces(k, kind, _grad_plan)
        steps = k.flat(ws["steps"])
        _fill_steps(k, steps, named, stack)   # serial: it may raise, which a worker must not
        with _example_blocks(k, named["x"]) as (first, stop):
            _emit_back(k, stack, named, k.ins[-1], ws, steps, first, stop)
    return kernel, workspace_rule(kind, _grad_plan)


def _emit_back(k, stack: Stack, named: dict, g: str, ws: dict, steps: str, first: str,
               stop: str) -> None:
    """Back through time for the examples first..stop: every layer's and direction's gate
    gradients into the tape (the kernel's output), the initial states' gradients, and between
    layers the gradient of the sequence the upper layer read."""
    def part(array):
        return _part(k, array, first, stop)
    a, kind = k.attrs, stack.kind
    T, H, D, G = stack.steps, stack.units, stack.directions, stack.gates
    dh, dc, block_steps = part(ws["dh"]), part(ws.get("dc")), part(steps)
    record = {name: part(view) for name, view in
              section_views(k, named["record"], record_layout(stack, a["sequences"])).items()}
    tape_at = tape_layout(stack, "h0" in named, "c0" in named)
    tape = {name: part(view) for name, view in section_views(k, k.out, tape_at).items()}
    gradients = {name: state_view(k, tape, name, stack) for name in ("h0", "c0")}
    back = _step_function(k, f"{kind}_step_back")
    gemm = _product(k)
    last = stack.layers - 1
    # The gradient of the sequence the layer reads: the output's, for the top layer with
    # `sequences`; the one the layer above left (masked) for the others.
    above = None
    if a["sequences"]:
        above = part(k.host_value(k.reshaped(g, (T, D * H)), "ga"))
    mask = part(named.get("mask"))
    for layer in reversed(range(stack.layers)):
        for d in range(D):
            tag = f"l{layer}{'_reverse' if d else ''}"
            w_hh = named[f"weight_hh_{tag}"]
            if layer == last and not a["sequences"]:
                final = part(k.host_value(k.reshaped(g, (D, H)), "gf"))
                k.line(f"{_helper(k, 'start_state')}({dh}, {final}, {d})")
            else:
                k.line(f"{dh}[:, :] = 0.0")
            if dc is not None:
                k.line(f"{dc}[:, :] = 0.0")
            arguments = [dh] + ([dc] if dc is not None else [])
            arguments += [above or tape[f"ih{tag}"], str(d * H), str(above is not None)]
            if kind == "gru":
                arguments.append(record[f"prev{tag}"])
            arguments += [record[f"gates{tag}"]]
            arguments += [record[f"{extra}{tag}"] for extra in CELL_EXTRAS[kind]]
            arguments.append(tape[f"ih{tag}"])
            if kind == "gru":
                arguments.append(tape[f"hh{tag}"])
            if kind == "rnn":
                arguments.append(str(a["activation"] == "relu"))
            arguments.append(str(H))
            through = tape[hh_section(stack, tag)]
            s = k.fresh("s")
            with k.block(f"for {s} in range({T}):"):
                # Back through a direction's steps in the reverse of their order.
                t = k.host_value(s if d else f"{T - 1} - {s}", "t")
                k.line(f"{back}({t}, {block_steps}, {', '.join(arguments)})")
                product = f"{gemm}(False, 1.0, {through}[:, {t}, :], {w_hh}, 1.0, {dh})"
                if gradients["h0"] is not None:
                    k.line(product)
                else:   # the state before the first step has no gradient to keep
                    with k.block(f"if {s} < {T - 1}:"):
                        k.line(product)
            for name, state in (("h0", dh), ("c0", dc)):
                if gradients[name] is not None:
                    k.line(f"{_helper(k, 'store_state')}({state}, {gradients[name]}, "
                           f"{layer * D + d})")
        if layer == 0:
            break   # the input's gradient is recurrent_input_grad's
        below = part(ws[f"d_input{(last - layer) % 2}"])   # not the one it reads
        rows = k.host_value(k.reshaped(below, (D * H,)), "di")
        for d in range(D):
            tag = f"l{layer}{'_reverse' if d else ''}"
            gates = k.host_value(k.reshaped(tape[f'ih{tag}'], (G * H,)), "dg")
            k.line(f"{gemm}(False, 1.0, {gates}, {named[f'weight_ih_{tag}']}, "
                   f"{1.0 if d else 0.0}, {rows})")
        if mask is not None:
            k.line(f"{_helper(k, 'apply_mask')}({below}, {mask}, {layer - 1})")
        above = below


# ---- the gradients from sections --------------------------------------------------------------

def section_rows(k, array: str, start: int, steps: int, columns: int) -> str:
    """Rows (B·steps, columns) of a section starting at `start` elements per example: a view
    the step makes once, which a worker function takes as an argument, so that the worker
    functions of equal products (every weight gradient of a stack of equal layers) have the
    same source and compile once (`ProgramWriter.worker_function`)."""
    flat = k.flat(array)
    n = f"{array}.shape[0]"
    return k.program.view(f"{flat}[{n} * {start}:{n} * {start + steps * columns}]",
                          (columns,), "rw")


def _section_kernel(k):
    k.line(f"{_helper(k, 'copy_flat')}({k.ins[0]}, {k.ins[0]}.shape[0] * {k.attrs['start']}, "
           f"{k.out})")


def _weight_grad_kernel(k):
    """dW = daᵀ·read over all examples and steps, in blocks of dW's rows (BLOCK_GATE_ROWS:
    the gates' units), each one product."""
    (a_start, b_start), (a_columns, b_columns) = k.attrs["starts"], k.attrs["columns"]
    steps = k.attrs["steps"]
    gates = section_rows(k, k.ins[0], a_start, steps, a_columns)
    read = section_rows(k, k.ins[1], b_start, steps, b_columns)
    with _blocks(k, str(a_columns), str(BLOCK_GATE_ROWS)) as (first, stop):
        k.line(f"{_product(k)}(True, 1.0, {gates}[:, {first}:{stop}], {read}, 0.0, "
               f"{k.out}[{first}:{stop}])")


def _bias_grad_kernel(k):
    gates = section_rows(k, k.ins[0], k.attrs["start"], k.attrs["steps"], k.attrs["columns"])
    k.line(f"{k.helper('column_sums')}({k.flat(gates)}, {k.out})")


def _input_grad_kernel(k):
    """dx = Σ da·W_ih over the first layer's directions, in blocks of the B·T rows
    (BLOCK_SEQUENCE_ROWS)."""
    steps = k.attrs["steps"]
    out = k.matrix(k.out, k.out_type.shape[-1])
    operands = [(section_rows(k, k.ins[0], start, steps, k.in_types[1 + i].shape[0]), weight)
                for i, (start, weight) in enumerate(zip(k.attrs["starts"], k.ins[1:]))]
    with _blocks(k, f"{out}.shape[0]", str(BLOCK_SEQUENCE_ROWS)) as (first, stop):
        for i, (gates, weight) in enumerate(operands):
            k.line(f"{_product(k)}(False, 1.0, {gates}[{first}:{stop}], {weight}, "
                   f"{1.0 if i else 0.0}, {out}[{first}:{stop}])")


for _kind in ("rnn", "lstm", "gru"):
    OPS[_kind].cpu_kernel, OPS[_kind].cpu_workspace = \
        layer_kernel(_kind, emit_forward, _forward_plan, _copy_record_out)
    OPS[f"{_kind}_record"].cpu_kernel, OPS[f"{_kind}_record"].cpu_workspace = \
        record_kernel(_kind, emit_forward, _forward_plan)
    OPS[f"{_kind}_grad"].cpu_kernel, OPS[f"{_kind}_grad"].cpu_workspace = _grad_kernel(_kind)
recurrent_section.cpu_kernel = _section_kernel
recurrent_weight_grad.cpu_kernel = _weight_grad_kernel
recurrent_bias_grad.cpu_kernel = _bias_grad_kernel
recurrent_input_grad.cpu_kernel = _input_grad_kernel
# The same mask as dropout's, over the per-example shape of the stacked layers' outputs.
recurrent_dropout_mask.cpu_kernel = dropout_mask.cpu_kernel
