"""The optimiser update that ends a CPU training step, rendered into the step's source.

Split from netlang/codegen/cpu.py, whose program writer calls it: which parameters the step
updates (`ParamUpdate`), which of them a weight-gradient product updates itself through
gemm's β, and the per-parameter loops that apply penalties, clipping and the optimiser's
rule (`UpdatePlan`, from the templates in `netlang.ops.optim`).  The CUDA renderer
(codegen/cuda.py) derives its plan from this one.
"""

from __future__ import annotations

import dataclasses

from netlang.codegen.cpu import Program, ProgramWriter, sanitise_comment
from netlang.codegen.spelling import CpuSpelling
from netlang.codegen.table import table_unpack, writer_layouts
from netlang.ops import get_op
from netlang.ops.optim import OPTIMIZERS, cpu_penalty


@dataclasses.dataclass
class ParamUpdate:
    """A parameter the training step updates, and what its update depends on."""
    name: str        # parameter name
    grad: int        # its gradient node
    layer: str       # the layer owning it (regularisers may name layers)
    penalised: bool  # whether weight penalties apply to it


class UpdatePlan:
    """The optimiser update that ends a training step, as rendered into the step's source.

    Where the optimiser allows it (its `gemm_update`), a weight whose gradient is a single
    matrix product (an op that `absorbs_update`) is updated by that product itself, at its
    place in the backward pass: gemm accumulates into the momentum buffer (or the weight, for
    plain SGD) and the gradient is never stored.  That is only done when nothing later in the step reads the
    weight, no penalty or clipping needs the gradient, and the weight is not shared.
    """

    def __init__(self, graph, order, updates, optimizer, regularizers, clip_norm, dtype: str,
                 absorb: bool = True):
        self.optimizer, self.regularizers, self.clip_norm = optimizer, regularizers, clip_norm
        definition = OPTIMIZERS[optimizer.name]
        self.template = definition.update_template
        self.slots = definition.state_slots(optimizer.args)
        self.penalty = cpu_penalty
        self.gemm = "gemm32" if dtype == "float32" else "gemm64"
        rule = definition.gemm_update(optimizer.args) \
            if absorb and definition.gemm_update and not clip_norm else None
        position = {n: i for i, n in enumerate(order)}
        self.absorbed, self.rule = {}, rule
        self.rest = []
        for u in updates:
            param = graph.node_named(u.name)
            readers_after = [c for c in graph.successors(param)
                             if c in position and position[c] > position[u.grad]]
            if (rule is not None and get_op(graph.op(u.grad)).absorbs_update
                    and not readers_after
                    and not cpu_penalty(regularizers, u.layer, u.penalised, CpuSpelling(), "p")):
                self.absorbed[u.grad] = u
            else:
                self.rest.append(u)

    def _state_flats(self, writer, u, slots):
        names = {}
        for slot in slots:
            s = writer.argument("state", f"{u.name}.{slot}")
            names[slot] = (s, writer.view(s, (), "f"))
        return names

    def emit_absorbed(self, writer, node):
        """The weight gradient's product, accumulating straight into the update's target."""
        e, u, rule = writer.emitter, self.absorbed[node], self.rule
        graph = writer.graph
        g, x = graph.operands(node)
        g2 = _rows(writer, writer.var(g), graph.type_of(g))
        x2 = _rows(writer, writer.var(x), graph.type_of(x))
        p = writer.argument("param", u.name)
        state = self._state_flats(writer, u, self.slots)
        target = p if rule.target == "param" else state[rule.target][0]
        e.line(f"# {sanitise_comment(u.name)}: gradient product fused with the update")
        with e.block("if t == 1:"):
            e.line(f"{self.gemm}(True, False, {rule.first[0]}, {g2}, {x2}, {rule.first[1]}, {target})")
        with e.block("else:"):
            e.line(f"{self.gemm}(True, False, {rule.later[0]}, {g2}, {x2}, {rule.later[1]}, {target})")
        if rule.after:
            pf = writer.view(p, (), "f")
            names = {"p": pf, **{slot: flat for slot, (_, flat) in state.items()}}
            with e.block(f"for i in range({pf}.size):"):
                for line in rule.after:
                    e.line(line.format(**names))

    def update_flats(self, writer) -> list:
        """(update, flat parameter, flat gradient, template names) of each parameter updated
        after the products, on every target."""
        if self.rest:
            writer.emitter.line("# optimiser update")
        return [self.update_flat(writer, u) for u in self.rest]

    def update_flat(self, writer, u) -> tuple:
        """(update, flat parameter, flat gradient, template names) of the parameter of `u`."""
        p = writer.argument("param", u.name)
        g = writer.var(u.grad)
        pf, gf = writer.view(p, (), "f"), writer.view(g, (), "f")
        names = {"p": pf, **{slot: flat for slot, (_, flat) in
                             self._state_flats(writer, u, self.slots).items()}}
        return u, pf, gf, names

    def emit_element_update(self, e, c, u, pf, gf, body) -> None:
        """One element's update inside the loop over a parameter: its gradient, the penalty,
        the clipping factor and the optimiser's lines."""
        e.line(f"gi = {gf}[i]")
        for line in self.penalty(self.regularizers, u.layer, u.penalised, c, pf):
            e.line(line)
        if self.clip_norm:
            e.line("gi = gi * clipf")
        for line in body:
            e.line(line)

    def emit_tail(self, writer):
        """The end of the step: the update of every parameter whose gradient's product did not
        absorb it, one loop over its elements each, running the optimiser's template.  With
        clipping, first the global norm of the (penalised) gradients, whose factor every update
        multiplies the gradient by."""
        e, c = writer.emitter, writer.spelling
        clip = self.clip_norm
        # Each parameter's update is a function called by name (`serial_function`), its flat
        # views made in the step and passed to it: the same text for every parameter with the
        # same penalty, compiled once whatever the parameters' dimensions (made inside, the
        # views compiled it once per dimension count: LeNet-5's 4-d, 2-d and 1-d parameters
        # three times, 0.1 s each).  With clipping the norm reads them too.
        flats = self.update_flats(writer)
        if clip:
            e.line("norm2 = 0.0")
            for u, pf, gf, names in flats:
                with e.block(f"for i in range({gf}.size):"):
                    e.line(f"gi = {gf}[i]")
                    for line in self.penalty(self.regularizers, u.layer, u.penalised, c, pf):
                        e.line(line)
                    e.line("norm2 += gi * gi")
            e.line("clipf = 1.0")
            with e.block(f"if np.sqrt(norm2) > {clip!r}:"):
                e.line(f"clipf = {clip!r} / (np.sqrt(norm2) + 1e-6)")
        for u, pf, gf, names in flats:
            with writer.serial_function(STEP_SCALARS):
                self.emit_update(writer, c, u, pf, gf, names)

    def emit_update(self, writer, c, u, pf, gf, names) -> None:
        """One parameter's update: the optimiser's prologue, then its loop over the elements."""
        e = writer.emitter
        prologue, body = self.template(self.optimizer.args, c, names)
        for line in prologue:
            e.line(line)
        with e.block(f"for i in range({gf}.size):"):
            self.emit_element_update(e, c, u, pf, gf, body)


# The step's scalars that an update reads: its arguments, and the clipping factor.
STEP_SCALARS = ("lr", "t", "clipf")


def _rows(writer, var, type_):
    width = type_.shape[-1]
    return writer.view(var, (width,), "v")


class _UpdateWriter(ProgramWriter):
    """The writer of an update alone: each gradient is an argument (kind "gradient", keyed by
    its node), not a buffer of a pass."""

    def var(self, node: int) -> str:
        return self.argument("gradient", node)


def render_update(graph, updates, optimizer, regularizers, clip_norm, dtype: str) -> Program:
    """Source of one Numba function applying the update that ends a training step (`UpdatePlan`
    without products absorbing it: penalties, clipping and the optimiser's rule, one loop per
    parameter) to gradients passed in, for steps whose gradients are summed apart
    (netlang/train/distributed.py): `update(table, lr, t)`, its arrays in the table."""
    plan = UpdatePlan(graph, [], updates, optimizer, regularizers, clip_norm, dtype,
                      absorb=False)
    writer = _UpdateWriter(graph, [], None, None, dtype)
    plan.emit_tail(writer)
    # Its arrays come in one table, as a program's do (netlang/codegen/table.py).
    unpack = table_unpack(writer, [f"a{i}" for i in range(len(writer.args))])
    source = "\n".join([
        "# Generated by netlang: an optimiser update. Do not edit.",
        "import numpy as np", *writer.spelling.imports,
        "from netlang.runtime.linkage import symbol_jit",
        # Its helpers: the table's unpacking, and the flat views the update's loops take.
        *[f"from {module} import {name}" for module, name in sorted(writer.imports)],
        *writer.part_import_lines(),
        "", f"F = np.{dtype}", "", "",
        "@symbol_jit", "def update(table, lr, t):", *unpack, *writer.emitter.lines,
        "    return 0", ""])
    return Program(source, "update", writer.args, {}, tuple(writer.parts.items()),
                   layouts=writer_layouts(writer))
