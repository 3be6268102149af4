"""CUDA kernel templates of the recurrent layers (rnn, lstm, gru), forward and back through time.

The ops are in netlang/ops/recurrent.py, their CPU templates in recurrent_kernels.py; these are
the same passes on the device (netlang/codegen/cuda.py), laid out the same way (the record and
the tape of recurrent_reference.py, section-major) so that every op around them, and the
weight gradients, read what the CPU's read.

Forward, for each layer and direction: the input's part of every step's gates is one tiled
product (all B·T rows at once, `k.matmul`); then the host function loops over the steps and
launches one fused kernel per step, one thread per (example, unit): it takes its unit's G dot
products of the state with W_hh (from a transposed copy of W_hh, made once per direction, so
that a warp's threads read neighbouring weights), adds the biases and the input's part,
applies the gate nonlinearities and writes the new state, the record and the output.  The
state before step t is the record's `prev` section at t, which the kernel of the step before
wrote: a thread reads the whole of one state and writes into another, so no thread reads what
another writes in the same launch.  The LSTM's cell state is a workspace that each thread
updates for its own unit alone.

Back through time, last step first, one fused kernel per step, one thread per (example, unit):
it adds to its unit's carried gradient the product of the step after's gate gradients with
W_hh's column (the step after was the previous launch), adds the output's gradient, writes its
unit's gate gradients into the tape and carries what does not pass through W_hh (the LSTM's
cell gradient, the GRU's z·dh, a padded step's whole gradient).  The gradient of the sequence
a layer read is then one product per direction with W_ih (into one of two workspaces used in
turn, as on the CPU), masked by the dropout between layers; each weight's gradient one product
over all examples and steps (`recurrent_weight_grad`), each bias's a reduction per column.
States, gates and gradients live in the record, the tape and planned workspaces: nothing is
allocated per step.

`lengths` are read by the step kernels (a step at or past an example's length is padding: it
keeps the state, outputs zeros and receives no gradient); the host function checks them
first (`check_lengths`: a copy of B integers from the device), since a kernel cannot stop the
program with an error.
"""

from __future__ import annotations

import numpy as np

from netlang.ops.norm import dropout_mask
from netlang.ops.recurrent import (
    named_operands,
    recurrent_bias_grad,
    recurrent_dropout_mask,
    recurrent_input_grad,
    recurrent_section,
    recurrent_weight_grad,
)
from netlang.ops.recurrent_kernels import (
    layer_kernel,
    named_workspaces,
    record_kernel,
    section_rows,
    section_views,
    state_view,
    workspace_rule,
)
from netlang.ops.recurrent_reference import (
    CELL_EXTRAS,
    PARAMETER_PARTS,
    Stack,
    hh_section,
    layout_size,
    record_layout,
    tape_layout,
    valid_steps,
)
from netlang.ops.registry import OPS


def check_lengths(lengths, steps: int) -> None:
    """Host code of the CUDA programs: a one-line DataError (the reference's) when `lengths`
    holds a value outside 0..steps.  `lengths` is a device array, or a NumPy array where a test
    runs the host function on the host (the PTX check)."""
    on_host = lengths.copy_to_host() if hasattr(lengths, "copy_to_host") else lengths
    valid_steps(np.asarray(on_host), 0, steps)


def _tag(layer: int, d: int) -> str:
    return f"l{layer}{'_reverse' if d else ''}"


def _unit(k, n_units: str, lengths: str | None, t: str) -> None:
    """The step kernels' first lines: the thread's example `b` and unit `j`, and whether the
    step is within the example's length (`valid`)."""
    k.line(f"b = i // {n_units}")
    k.line(f"j = i % {n_units}")
    k.line(f"valid = {t} < {lengths}[b]" if lengths else "valid = True")


def _sigmoid(k, v: str) -> str:
    """σ(v) as the reference writes it (no overflow, v's precision kept)."""
    return f"{k.const(0.5)} * ({k.const(1.0)} + {k.math.tanh(f'{k.const(0.5)} * ({v})')})"


# ---- forward --------------------------------------------------------------------------------

def _forward_plan(stack: Stack, a: dict, with_record: bool) -> list:
    """W_hh transposed (one direction's at a time), the LSTM's cell state, the input's part of
    every step's gates, and the record where the kernel keeps it to itself."""
    rows = stack.gates * stack.units
    plan = [("weight_t", ((stack.units, rows), False))]
    if stack.kind == "lstm":
        plan.append(("c", ((stack.units,), True)))
    plan.append(("proj", ((stack.steps, rows), True)))
    if with_record:
        plan.append(("record", ((layout_size(record_layout(stack, a["sequences"])),), True)))
    return plan


def _forward_cell(k, kind: str, a: dict, pre, cell: dict, state: str, t: str) -> None:
    """The step kernel's cell: from `pre(g)`, gate g's pre-activation parts, the new state
    into `new` (the old one at a padded step) and the record's sections `cell` at step t."""
    H, zero, one = a["units"], k.const(0.0), k.const(1.0)
    at = f"b, {t}, j"
    gates = cell["gates"]
    if kind == "rnn":
        k.line(f"pre = {pre(0)}")
        k.line(f"v = (pre if pre > {zero} else {zero})" if a["activation"] == "relu" else
               f"v = {k.math.tanh('pre')}")
        k.line(f"{gates}[{at}] = v if valid else {zero}")
        k.line(f"new = v if valid else {state}[{at}]")
    elif kind == "lstm":
        k.line(f"gi = {_sigmoid(k, pre(0))}")
        k.line(f"gf = {_sigmoid(k, pre(1))}")
        k.line(f"gg = {k.math.tanh(pre(2))}")
        k.line(f"go = {_sigmoid(k, pre(3))}")
        c = cell["c"]
        with k.block("if valid:"):
            k.line(f"c_old = {c}[b, j]")
            k.line("cn = gf * c_old + gi * gg")
            k.line(f"tc = {k.math.tanh('cn')}")
            k.line("new = go * tc")
            for g, value in enumerate(("gi", "gf", "gg", "go")):
                k.line(f"{gates}[b, {t}, {g * H} + j] = {value}")
            k.line(f"{cell['cells']}[{at}] = c_old")
            k.line(f"{cell['tanhc']}[{at}] = tc")
            k.line(f"{c}[b, j] = cn")
        with k.block("else:"):
            for g in range(4):
                k.line(f"{gates}[b, {t}, {g * H} + j] = {zero}")
            k.line(f"{cell['cells']}[{at}] = {zero}")
            k.line(f"{cell['tanhc']}[{at}] = {zero}")
            k.line(f"new = {state}[{at}]")
    else:   # gru: n = tanh(W_in x + b_in + r·(W_hn h + b_hn)), h' = (1 − z)·n + z·h
        k.line(f"rg = {_sigmoid(k, pre(0))}")
        k.line(f"zg = {_sigmoid(k, pre(1))}")
        k.line(f"hn = {pre(2, 'hh')}")
        k.line(f"ng = {k.math.tanh(pre(2, 'ih') + ' + rg * hn')}")
        with k.block("if valid:"):
            k.line(f"new = ({one} - zg) * ng + zg * {state}[{at}]")
            for g, value in enumerate(("rg", "zg", "ng")):
                k.line(f"{gates}[b, {t}, {g * H} + j] = {value}")
            k.line(f"{cell['hn']}[{at}] = hn")
        with k.block("else:"):
            for g in range(3):
                k.line(f"{gates}[b, {t}, {g * H} + j] = {zero}")
            k.line(f"{cell['hn']}[{at}] = {zero}")
            k.line(f"new = {state}[{at}]")


def emit_forward(k, stack: Stack, named: dict, record: str, ws: dict) -> None:
    """The layer forward on the device, into `record` (a section-major (B, size) array): every
    section of recurrent_reference.py's `record_layout`, the output included."""
    a = k.attrs
    T, H, D, G = stack.steps, stack.units, stack.directions, stack.gates
    n = k.host_value(f"{named['x']}.shape[0]", "n")
    proj = ws["proj"]
    proj_rows = k.host_value(f"{proj}.reshape(({n} * {T}, {G * H}))", "pr")
    proj_steps = k.host_value(f"{proj}.reshape(({n}, {T}, {G * H}))", "pr")
    weight_t = ws["weight_t"]
    sections = section_views(k, record, record_layout(stack, a["sequences"]))
    h0, c0 = state_view(k, named, "h0", stack), state_view(k, named, "c0", stack)
    lengths = k.flat(named["lengths"]) if "lengths" in named else None
    if lengths:
        k.host_value(f"{k.host_function('check_lengths', __name__)}({lengths}, {T})", "ok")
    final = None if a["sequences"] else sections["output"]   # (B, D·H): the final states
    last = stack.layers - 1
    for layer in range(stack.layers):
        if layer == 0:
            source = k.matrix(named["x"], stack.features)
        else:
            source = k.host_value(f"{sections[f'input{layer}']}.reshape(({n} * {T}, {D * H}))",
                                  "in")
        for d in range(D):
            tag = _tag(layer, d)
            w_ih, w_hh, b_ih, b_hh = (named[f"{part}_{tag}"] for part in PARAMETER_PARTS)
            k.matmul(source, w_ih, proj_rows, trans_b=True, epilogue=False)
            with k.parallel(f"{H * G * H}", "i"):   # weight_t[m, r] = W_hh[r, m]
                k.line(f"{weight_t}[i // {G * H}, i % {G * H}] = {w_hh}[i % {G * H}, i // {G * H}]")
            state = sections[f"prev{tag}"]
            first = T - 1 if d else 0
            with k.parallel(f"{n} * {H}", "i"):
                k.line(f"b = i // {H}")
                k.line(f"j = i % {H}")
                index = layer * D + d
                k.line(f"{state}[b, {first}, j] = " +
                       (f"{h0}[b, {index}, j]" if h0 else k.const(0.0)))
                if stack.kind == "lstm":
                    k.line(f"{ws['c']}[b, j] = " + (f"{c0}[b, {index}, j]" if c0 else k.const(0.0)))
            cell = {"gates": sections[f"gates{tag}"], "c": ws.get("c")}
            cell.update({extra: sections[f"{extra}{tag}"] for extra in CELL_EXTRAS[stack.kind]})
            if layer < last:
                out = sections[f"input{layer + 1}"]
            else:
                out = sections["output"] if a["sequences"] else None
            s = k.fresh("s")
            with k.host_block(f"for {s} in range({T}):", defines=(s,)):
                t = k.host_value(f"{T - 1} - {s}" if d else s, "tt")
                following = k.host_value(f"{t} - 1" if d else f"{t} + 1", "tn")
                with k.parallel(f"{n} * {H}", "i"):
                    _unit(k, str(H), lengths, t)
                    sums = [k.fresh("acc") for _ in range(G)]
                    for total in sums:
                        k.line(f"{total} = {k.const(0.0)}")
                    with k.block(f"for m in range({H}):"):
                        k.line(f"hv = {state}[b, {t}, m]")
                        for g, total in enumerate(sums):
                            k.line(f"{total} += hv * {weight_t}[m, {g * H} + j]")

                    def pre(g, part="both", t=t, sums=sums, b_ih=b_ih, b_hh=b_hh):
                        from_input = f"{proj_steps}[b, {t}, {g * H} + j] + {b_ih}[{g * H} + j]"
                        from_state = f"{sums[g]} + {b_hh}[{g * H} + j]"
                        return {"ih": from_input, "hh": from_state,
                                "both": f"({from_input}) + ({from_state})"}[part]

                    _forward_cell(k, stack.kind, a, pre, cell, state, t)
                    with k.block(f"if {s} < {T - 1}:"):
                        k.line(f"{state}[b, {following}, j] = new")
                    if out is not None:
                        k.line(f"{out}[b, {t}, {d * H} + j] = new if valid else {k.const(0.0)}")
                    if layer == last and final is not None:
                        with k.block(f"if {s} == {T - 1}:"):
                            k.line(f"{final}[b, {d * H} + j] = new")
        if "mask" in named and layer < last:
            _apply_mask(k, sections[f"input{layer + 1}"], named["mask"], stack, layer)


def _apply_mask(k, values: str, mask: str, stack: Stack, layer: int) -> None:
    """values (B, T, W) ×= the dropout mask's `layer` (B, L − 1, T, W)."""
    flat, mask_flat = k.flat(values), k.flat(mask)
    per_layer = stack.steps * stack.units * stack.directions
    with k.parallel(f"{flat}.size", "i"):
        k.line(f"{flat}[i] *= {mask_flat}[((i // {per_layer}) * {stack.layers - 1} + {layer}) "
               f"* {per_layer} + i % {per_layer}]")


def _copy_from(k, source: str, start: str, out: str) -> None:
    """out's elements ← `source`'s flat elements from `start` on."""
    source_flat, out_flat = k.flat(source), k.flat(out)
    with k.parallel(f"{out_flat}.size", "i"):
        k.line(f"{out_flat}[i] = {source_flat}[{start} + i]")


def _copy_record_out(k, record: str) -> None:
    _copy_from(k, record, "0", k.out)


# ---- back through time ----------------------------------------------------------------------

def _grad_plan(stack: Stack, a: dict) -> list:
    """The carried gradient of the state (and the LSTM's cell), and the gradients of the
    sequences that the layers above the first read: two, used in turn."""
    plan = [("dh", ((stack.units,), True))]
    if stack.kind == "lstm":
        plan.append(("dc", ((stack.units,), True)))
    sequence = ((stack.steps, stack.units * stack.directions), True)
    plan += [(f"d_input{i}", sequence) for i in range(min(stack.layers - 1, 2))]
    return plan


def _back_cell(k, kind: str, a: dict, cell: dict, t: str) -> None:
    """The back step's cell: from `dhj`, the gradient of the state after step t, the unit's
    gate gradients into the tape (`ih`, and the GRU's `hh`) and what it carries in `dh`, `dc`.
    """
    H, zero, one = a["units"], k.const(0.0), k.const(1.0)
    at = f"b, {t}, j"
    gates, ih = cell["gates"], cell["ih"]

    def read(g):
        return f"{gates}[b, {t}, {g * H} + j]"

    if kind == "rnn":
        k.line(f"v = {read(0)}")
        k.line(f"{ih}[{at}] = " + (f"(dhj if v > {zero} else {zero})"
                                   if a["activation"] == "relu" else f"dhj * ({one} - v * v)"))
        k.line(f"{cell['dh']}[b, j] = {zero}")
    elif kind == "lstm":
        k.line(f"gi = {read(0)}")
        k.line(f"gf = {read(1)}")
        k.line(f"gg = {read(2)}")
        k.line(f"go = {read(3)}")
        k.line(f"tc = {cell['tanhc']}[{at}]")
        k.line(f"dcj = {cell['dc']}[b, j] + dhj * go * ({one} - tc * tc)")
        k.line(f"{ih}[b, {t}, j] = dcj * gg * gi * ({one} - gi)")
        k.line(f"{ih}[b, {t}, {H} + j] = dcj * {cell['cells']}[{at}] * gf * ({one} - gf)")
        k.line(f"{ih}[b, {t}, {2 * H} + j] = dcj * gi * ({one} - gg * gg)")
        k.line(f"{ih}[b, {t}, {3 * H} + j] = dhj * tc * go * ({one} - go)")
        k.line(f"{cell['dc']}[b, j] = dcj * gf")
        k.line(f"{cell['dh']}[b, j] = {zero}")
    else:
        k.line(f"rg = {read(0)}")
        k.line(f"zg = {read(1)}")
        k.line(f"ng = {read(2)}")
        k.line(f"dn = dhj * ({one} - zg) * ({one} - ng * ng)")
        k.line(f"dz = dhj * ({cell['prev']}[{at}] - ng) * zg * ({one} - zg)")
        k.line(f"dr = dn * {cell['hn']}[{at}] * rg * ({one} - rg)")
        hh = cell["hh"]
        for g, value in enumerate(("dr", "dz", "dn")):
            k.line(f"{ih}[b, {t}, {g * H} + j] = {value}")
        for g, value in enumerate(("dr", "dz", "dn * rg")):
            k.line(f"{hh}[b, {t}, {g * H} + j] = {value}")
        k.line(f"{cell['dh']}[b, j] = dhj * zg")


def _through_w_hh(k, through: str, step: str, w_hh: str, rows: int) -> None:
    """dhj += Σ_r through[b, step, r]·W_hh[r, j]: the part of a state's gradient that the gate
    gradients of the step it fed pass back (neighbouring threads read neighbouring weights)."""
    with k.block(f"for r in range({rows}):"):
        k.line(f"dhj += {through}[b, {step}, r] * {w_hh}[r, j]")


def _grad_kernel(kind: str):
    def kernel(k):
        a = k.attrs
        stack = Stack.of(kind, a, k.in_types[0].shape)
        T, H, D, G = stack.steps, stack.units, stack.directions, stack.gates
        named = named_operands(kind, a, k.ins[:-1])
        g = k.ins[-1]
        ws = named_workspaces(k, kind, _grad_plan)
        dh, dc = ws["dh"], ws.get("dc")
        n = k.host_value(f"{named['x']}.shape[0]", "n")
        record = section_views(k, named["record"], record_layout(stack, a["sequences"]))
        tape = section_views(k, k.out, tape_layout(stack, "h0" in named, "c0" in named))
        gradients = {name: state_view(k, tape, name, stack) for name in ("h0", "c0")}
        lengths = k.flat(named["lengths"]) if "lengths" in named else None
        last = stack.layers - 1
        # The gradient of the sequence the layer reads: the output's, for the top layer with
        # `sequences`; the one the layer above left (masked) for the others.
        above = k.host_value(f"{g}.reshape(({n}, {T}, {D * H}))", "ga") if a["sequences"] else None
        final = None if a["sequences"] else k.host_value(f"{g}.reshape(({n}, {D * H}))", "gf")
        for layer in reversed(range(stack.layers)):
            for d in range(D):
                tag = _tag(layer, d)
                w_hh = named[f"weight_hh_{tag}"]
                with k.parallel(f"{n} * {H}", "i"):
                    k.line(f"b = i // {H}")
                    k.line(f"j = i % {H}")
                    start = f"{final}[b, {d * H} + j]" if layer == last and final else k.const(0.0)
                    k.line(f"{dh}[b, j] = {start}")
                    if dc is not None:
                        k.line(f"{dc}[b, j] = {k.const(0.0)}")
                through = tape[hh_section(stack, tag)]
                cell = {"gates": record[f"gates{tag}"], "prev": record[f"prev{tag}"],
                        "ih": tape[f"ih{tag}"], "hh": tape.get(f"hh{tag}"), "dh": dh, "dc": dc}
                cell.update({extra: record[f"{extra}{tag}"] for extra in CELL_EXTRAS[kind]})
                s = k.fresh("s")
                with k.host_block(f"for {s} in range({T}):", defines=(s,)):
                    # Back through a direction's steps in the reverse of their order.
                    t = k.host_value(s if d else f"{T - 1} - {s}", "tt")
                    after = k.host_value(f"{t} - 1" if d else f"{t} + 1", "ta")
                    with k.parallel(f"{n} * {H}", "i"):
                        _unit(k, str(H), lengths, t)
                        k.line(f"dhj = {dh}[b, j]")
                        with k.block(f"if {s} > 0:"):
                            _through_w_hh(k, through, after, w_hh, G * H)
                        with k.block("if valid:"):
                            if above is not None:
                                k.line(f"dhj += {above}[b, {t}, {d * H} + j]")
                            _back_cell(k, kind, a, cell, t)
                        with k.block("else:"):   # padding: no gate gradient, dh passes on
                            for gate in range(G):
                                k.line(f"{cell['ih']}[b, {t}, {gate * H} + j] = "
                                       f"{k.const(0.0)}")
                                if kind == "gru":
                                    k.line(f"{cell['hh']}[b, {t}, {gate * H} + j] = "
                                           f"{k.const(0.0)}")
                            k.line(f"{dh}[b, j] = dhj")
                index, first = layer * D + d, T - 1 if d else 0
                if gradients["h0"] is not None:
                    with k.parallel(f"{n} * {H}", "i"):
                        k.line(f"b = i // {H}")
                        k.line(f"j = i % {H}")
                        k.line(f"dhj = {dh}[b, j]")
                        _through_w_hh(k, through, str(first), w_hh, G * H)
                        k.line(f"{gradients['h0']}[b, {index}, j] = dhj")
                if gradients["c0"] is not None:
                    with k.parallel(f"{n} * {H}", "i"):
                        k.line(f"{gradients['c0']}[i // {H}, {index}, i % {H}] = "
                               f"{dc}[i // {H}, i % {H}]")
            if layer == 0:
                break   # the input's gradient is recurrent_input_grad's
            below = ws[f"d_input{(last - layer) % 2}"]   # not the one it reads
            rows = k.host_value(f"{below}.reshape(({n} * {T}, {D * H}))", "di")
            for d in range(D):
                tag = _tag(layer, d)
                gates = k.host_value(f"{tape[f'ih{tag}']}.reshape(({n} * {T}, {G * H}))", "dg")
                k.matmul(gates, named[f"weight_ih_{tag}"], rows, epilogue=False,
                         accumulate=bool(d))
            if "mask" in named:
                _apply_mask(k, below, named["mask"], stack, layer - 1)
            above = below
    return kernel, workspace_rule(kind, _grad_plan)


# ---- the gradients from sections --------------------------------------------------------------

def _section_kernel(k):
    _copy_from(k, k.ins[0], f"{k.ins[0]}.shape[0] * {k.attrs['start']}", k.out)


def _weight_grad_kernel(k):
    (a_start, b_start), (a_columns, b_columns) = k.attrs["starts"], k.attrs["columns"]
    steps = k.attrs["steps"]
    gates = section_rows(k, k.ins[0], a_start, steps, a_columns)
    read = section_rows(k, k.ins[1], b_start, steps, b_columns)
    k.matmul(gates, read, k.out, trans_a=True, epilogue=False)


def _bias_grad_kernel(k):
    """Column sums of a tape section, a block per column (float64 sums)."""
    gates = section_rows(k, k.ins[0], k.attrs["start"], k.attrs["steps"], k.attrs["columns"])
    k.reduction(f"{gates}.shape[0]", "r", lambda acc: k.line(f"{acc} += {gates}[r, c]"),
                lambda acc: k.line(f"{k.out}[c] = {acc}"), groups=f"{gates}.shape[1]", group="c")


def _input_grad_kernel(k):
    steps = k.attrs["steps"]
    out = k.matrix(k.out, k.out_type.shape[-1])
    for i, (start, weight) in enumerate(zip(k.attrs["starts"], k.ins[1:])):
        gates = section_rows(k, k.ins[0], start, steps, k.in_types[1 + i].shape[0])
        k.matmul(gates, weight, out, epilogue=False, accumulate=bool(i))


for _kind in ("rnn", "lstm", "gru"):
    OPS[_kind].cuda_kernel, OPS[_kind].cuda_workspace = \
        layer_kernel(_kind, emit_forward, _forward_plan, _copy_record_out)
    OPS[f"{_kind}_record"].cuda_kernel, OPS[f"{_kind}_record"].cuda_workspace = \
        record_kernel(_kind, emit_forward, _forward_plan)
    OPS[f"{_kind}_grad"].cuda_kernel, OPS[f"{_kind}_grad"].cuda_workspace = _grad_kernel(_kind)
recurrent_section.cuda_kernel = _section_kernel
recurrent_weight_grad.cuda_kernel = _weight_grad_kernel
recurrent_bias_grad.cuda_kernel = _bias_grad_kernel
recurrent_input_grad.cuda_kernel = _input_grad_kernel
recurrent_dropout_mask.cuda_kernel = dropout_mask.cuda_kernel
