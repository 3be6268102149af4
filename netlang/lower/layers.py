"""Chains and layers: `x -> dense(10) -> relu`, one IR node per op, parameters planned.

Each step of a chain names an op or a block.  For an op, its arguments are bound
against the op's schema, its parameters are planned (new, shared with another
layer, or tied to one transposed) and its output type is inferred by the op's own
shape rule as the node is added, since later expressions may ask for it.  A step
naming a block is handed to `instantiate` (its arguments, to `bind_block_args`),
which `BlockExpander` (netlang.lower.blocks) adds on top of this class.
"""

from __future__ import annotations

import dataclasses
import math

from netlang.errors import did_you_mean
from netlang.frontend import ast
from netlang.frontend.format import ATOM
from netlang.frontend.format import expr as expr_text
from netlang.frontend.format import step as step_text
from netlang.ir.types import TensorType
from netlang.lower.expressions import ExpressionEvaluator
from netlang.lower.names import Scope, walk
from netlang.lower.values import (
    LayerRef,
    MAX_DIM,
    MAX_ELEMENTS,
    MAX_LAYERS,
    MAX_PARAMETER_TENSORS,
    MAX_REPEAT,
    POISON,
    Poisoned,
    Problem,
    Tensor,
)
from netlang.ops import ShapeContext, ShapeProblem, all_ops, get_op
from netlang.ops.schema import ArgumentProblem, REQUIRED, bind_arguments, describe_value


class LayerBuilder(ExpressionEvaluator):
    """Lowers chains into IR nodes: binds each op's arguments, plans its parameters, adds it."""

    def lower_chain(self, chain: ast.Chain, scope: Scope, name_hint: str | None):
        """The value at the end of a chain; after a failed step, the rest are still checked."""
        try:
            value = self.evaluate(chain.source, scope)
        except (Problem, Poisoned):
            self.check_steps(chain.steps, scope)
            raise
        return self.apply_steps(chain.steps, value, scope, name_hint)

    def apply_steps(self, steps, incoming, scope: Scope, name_hint: str | None):
        """Apply a chain's or a group's steps in turn; `name_hint` names the last one."""
        value = incoming
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            try:
                if isinstance(step, ast.Group):
                    value = self.apply_group(step, value, scope, name_hint if last else None)
                else:
                    value = self.apply_step(step, value, scope, name_hint if last else None,
                                            before=steps[:i])
            except (Problem, Poisoned):
                self.check_steps(steps[i + 1:], scope)
                raise
        return value

    def repeat_count(self, node, scope: Scope) -> int | None:
        """The `* n` of a step or group: None if it has none, else an integer checked in range."""
        if node.repeat is None:
            return None
        count = self.evaluate(node.repeat, scope)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REPEAT:
            raise Problem(f"a repeat count must be an integer from 1 to {MAX_REPEAT}, not "
                          f"{describe_value(count)}", node.repeat.loc, "argument")
        return count

    def apply_step(self, step: ast.Step, incoming, scope: Scope, name_hint: str | None,
                   before=()):
        """Apply one step, repeated `* n` times (layers `label.0`, `label.1`, ...), and bind
        its `as` label.  `before` are the steps ahead of it in its chain or group, which a
        message about a mistaken repeat quotes."""
        _check_tensors(incoming, step)
        count = self.repeat_count(step, scope)
        if step.label:
            self.check_free(scope, ast.Name(step.label, loc=step.label_loc))
        base = step.label or name_hint
        value = incoming
        for k in range(count or 1):
            label = f"{base}.{k}" if count is not None and base else base
            if count is not None and not base:
                label = None
            value = self.apply_one(step, value, scope, label)
            if k == 0 and count is not None and count > 1:
                _check_repeat_of_activation(step, incoming, value, before, scope)
        if step.label:
            self.bind(scope, ast.Name(step.label, loc=step.label_loc), value)
        return value

    def apply_group(self, group: ast.Group, incoming, scope: Scope, name_hint: str | None):
        """Apply a group's steps, repeated `* n` times, and bind its `as` label.

        Named as a block instance is: the group's name is its label (or `name_hint`), copies
        of a repeat are `name.0`, `name.1`, ..., and the layers inside are `name.0.dense_1`,
        with counters of their own.  A repeat without a name adds its copies' layers where
        the chain is, with automatic names.
        """
        count = self.repeat_count(group, scope)
        if count is not None:
            labelled = next((node for node in walk(group.steps)
                             if isinstance(node, (ast.Step, ast.Group)) and node.label), None)
            if labelled is not None:
                raise Problem(f"`{labelled.label}` would name a layer in every copy of the "
                              f"repeated group; label the group instead: `(...) * "
                              f"{expr_text(group.repeat, ATOM)} as name`", labelled.label_loc,
                              "name")
        if group.label:
            self.check_free(scope, ast.Name(group.label, loc=group.label_loc))
        base = group.label or name_hint
        value = incoming
        for k in range(count or 1):
            name = f"{base}.{k}" if count is not None and base else base
            inner = scope
            if name:
                instance = scope.prefix + name
                if self.graph.has_name(instance) or self.graph.has_prefix(instance):
                    raise Problem(f"a layer named `{instance}` already exists",
                                  group.label_loc or group.loc, "name")
                inner = scope.within(name)
            value = self.apply_steps(group.steps, value, inner, None)
        if group.label:
            self.bind(scope, ast.Name(group.label, loc=group.label_loc), value)
        return value

    def apply_one(self, step: ast.Step, incoming, scope: Scope, label: str | None):
        """Apply one step once: instantiate a block, or add the op it names."""
        if step.op in scope.module.blocks:
            return self.instantiate(scope.module.blocks[step.op], step, incoming, scope, label)
        op = self.layer_op(step, scope)
        attrs = self.bind_op_args(op, step.args or (), scope, step)
        operands = incoming if isinstance(incoming, tuple) else (incoming,)
        if op.expand_rule is not None:
            return self.apply_expansion(op, operands, attrs, label, scope, step)
        return self.apply_op(op, operands, attrs, label, scope, step.loc, arity_loc=step.op_loc)

    def apply_expansion(self, op, operands, attrs, label, scope: Scope, step: ast.Step):
        """A step naming an op that is shorthand for several (`split`): the tuple of their
        results, named `label.0`, `label.1`, ... (or after the op, `split_1.0`, ...)."""
        if op.arity is not None and len(operands) != op.arity:
            raise Problem(f"`{op.name}` takes {op.arity} input tensor"
                          f"{'s' if op.arity != 1 else ''}, got {len(operands)}", step.op_loc,
                          "argument")
        ctx = ShapeContext(op, [t.type for t in operands], [t.layer for t in operands])
        try:
            parts = op.expand_rule(ctx, attrs)
        except ShapeProblem as problem:
            raise Problem(str(problem), step.loc, "shape") from None
        try:
            base = self.layer_name(op.name, label, scope)[len(scope.prefix):]
        except Problem as problem:
            problem.loc = step.loc
            raise
        return tuple(self.apply_op(get_op(name), operands, part_attrs, f"{base}.{i}", scope,
                                   step.loc)
                     for i, (name, part_attrs) in enumerate(parts))

    def layer_op(self, step: ast.Step, scope: Scope):
        """The op a step names, or a Problem saying why it names none."""
        op = get_op(step.op)
        if op is None or op.role == "internal":
            choices = [n for n, o in all_ops().items() if o.role == "layer"] + list(scope.module.blocks)
            raise Problem(f"unknown layer `{step.op}`{did_you_mean(step.op, choices)}",
                          step.op_loc, "name")
        if op.role == "loss":
            raise Problem(f"`{step.op}` is a loss; write it in the train section: "
                          f"`loss {step.op}(prediction, target)`", step.op_loc, "name")
        return op

    def check_steps(self, steps, scope: Scope):
        """Report the mistakes steps make on their own (an unknown layer, a bad argument) when no
        tensor reaches them because of an earlier error, so one mistake does not hide others."""
        for step in steps:
            if isinstance(step, ast.Group):
                self.check_steps(step.steps, scope)
                continue
            try:
                if step.op in scope.module.blocks:
                    self.bind_block_args(scope.module.blocks[step.op], step, scope)
                else:
                    self.bind_op_args(self.layer_op(step, scope), step.args or (), scope, step)
            except Problem as problem:
                self.report(problem, scope)
            except Poisoned:
                pass

    def bind_op_args(self, op, args, scope: Scope, step):
        """Bind a step's arguments against `op`'s schema; Problems point at the argument at fault."""
        schema = {a.name: a for a in op.args}
        positional, keywords, locs = [], [], {}
        given = [a for a in args if a.name is None]
        if len(given) > len(op.args):
            many = ("takes no arguments" if not op.args else
                    f"takes at most {len(op.args)} positional argument{'s' if len(op.args) != 1 else ''}"
                    f", got {len(given)}")
            raise Problem(f"`{op.name}` {many}", given[len(op.args)].loc, "argument",
                          [f"`{op.name}` takes ({_signature(op.args)})"] if op.args else [])
        for i, arg in enumerate(args):
            if arg.name is None:
                if keywords:
                    raise Problem("a positional argument cannot follow a keyword argument",
                                  arg.loc, "argument")
                spec = op.args[i] if i < len(op.args) else None
                locs[i] = arg.loc
                positional.append(self.evaluate_arg(arg.value, spec, scope))
            else:
                locs[arg.name] = arg.loc
                keywords.append((arg.name, self.evaluate_arg(arg.value, schema.get(arg.name), scope)))
        try:
            return bind_arguments(op.args, positional, keywords, f"`{op.name}`")
        except ArgumentProblem as problem:
            loc = locs.get(problem.index, step.op_loc if step is not None else None)
            notes = [f"`{op.name}` takes ({_signature(op.args)})"] if problem.index is None or \
                isinstance(problem.index, str) else []
            raise Problem(problem.message, loc, "argument", notes) from None

    def evaluate_arg(self, expr, spec, scope: Scope):
        """One argument's value as its schema expects: a layer name for a layer reference,
        a bare word where the schema allows one, otherwise an expression (never a tensor)."""
        if spec is not None and spec.type.is_layer_ref:
            if not isinstance(expr, (ast.Name, ast.String)):
                raise Problem("expected the name of a layer", expr.loc, "argument")
            name = expr.id if isinstance(expr, ast.Name) else expr.value
            try:
                value = scope.lookup(name)
            except KeyError:
                raise Problem(f"unknown layer `{name}`"
                              f"{did_you_mean(name, scope.visible_names())}", expr.loc, "name") from None
            if value is POISON:
                raise Poisoned()
            if not isinstance(value, Tensor):
                raise Problem(f"`{name}` is not a layer", expr.loc, "argument")
            return LayerRef(value.layer, expr.loc)
        if spec is not None and spec.type.is_tensor:
            value = self.evaluate(expr, scope)
            if not isinstance(value, Tensor):
                raise Problem(f"`{spec.name}` names a tensor of the model, not "
                              f"{describe_value(value)}", expr.loc, "argument")
            return value
        if spec is not None and spec.type.bare_words and isinstance(expr, ast.Name) and \
                expr.id not in spec.type.bare_words and expr.id not in scope.visible_names():
            words = spec.type.bare_words
            options = [f"`{w}`" for w in words] + ([] if "|" in spec.type.name else ["a number"])
            raise Problem(f"`{spec.name}` must be {_join_or(options)}, not `{expr.id}`"
                          f"{did_you_mean(expr.id, words)}", expr.loc, "argument")
        value = self.evaluate(expr, scope, bare_words=spec.type.bare_words if spec else ())
        if isinstance(value, Tensor) and spec is not None:   # no spec: an unknown keyword
            raise Problem(f"an argument cannot be a tensor ({value.description}); tensors flow "
                          f"along chains", expr.loc, "argument")
        return value

    def layer_name(self, op_name: str, label: str | None, scope: Scope) -> str:
        """The layer's name: its label, or the op's name with the next free number (`dense_2`)."""
        if label:
            name = scope.prefix + label
            if self.graph.has_name(name):
                raise Problem(f"a layer named `{name}` already exists", None, "name")
            return name
        while True:
            count = scope.counters.get(op_name, 0) + 1
            scope.counters[op_name] = count
            name = f"{scope.prefix}{op_name}_{count}"
            if not self.graph.has_name(name):
                return name

    def apply_op(self, op, operands, attrs, label, scope: Scope, loc, arity_loc=None):
        """Add `op` to the graph on `operands`, with its parameters, after checking its arity,
        its inferred type and the size limits; the Tensor it produces."""
        operands = tuple(operands)
        if op.arity is None:
            if len(operands) < 2:
                raise Problem(f"`{op.name}` merges two or more tensors; feed it a tuple such as "
                              f"`(a, b) -> {op.name}`", arity_loc or loc, "argument")
        elif len(operands) != op.arity:
            raise Problem(f"`{op.name}` takes {op.arity} input tensor"
                          f"{'s' if op.arity != 1 else ''}, got {len(operands)}", arity_loc or loc,
                          "argument")
        # Tensors named by keyword arguments (a recurrent layer's `h0 = state`) follow the
        # operands flowing in, in the schema's order.
        operands += tuple(attrs[arg.name] for arg in op.args
                          if arg.type.is_tensor and attrs.get(arg.name) is not None)
        try:
            name = self.layer_name(op.name, label, scope)
        except Problem as problem:
            problem.loc = loc
            raise
        in_types = [t.type for t in operands]
        producers = [t.layer for t in operands]
        plan = self.plan_params(op, in_types, attrs, name, scope, loc, producers)
        types = in_types + [p[1] for p in plan]
        ctx = ShapeContext(op, types, producers + [p[2] for p in plan])
        try:
            out_type = op.infer(ctx, attrs)
        except ShapeProblem as problem:
            raise Problem(str(problem), loc, "shape") from None
        for what, type_ in [("output", out_type)] + [(f"parameter `{p[2]}`", p[1]) for p in plan]:
            dims = [d for d in type_.shape if d is not None]
            if any(d > MAX_DIM for d in dims) or math.prod(dims) > MAX_ELEMENTS:
                raise Problem(f"`{op.name}` would make an {what} of shape {type_}, too large to "
                              f"build", loc, "shape")
        self.count_toward_limits(loc, 0 if op.role == "loss" else 1, len(plan))
        param_nodes = [self.materialise_param(entry, name, scope) for entry in plan]
        stored = {k: (v.name if isinstance(v, LayerRef) else v.layer if isinstance(v, Tensor)
                      else v) for k, v in attrs.items()}
        node = self.graph.add_op(op.name, [t.node for t in operands] + param_nodes, stored, out_type,
                                 name=name, role=op.role, loc=loc, trace=scope.trace)
        return Tensor(node, out_type, name)

    def count_toward_limits(self, loc, layers: int, parameter_tensors: int = 0) -> None:
        """Count `layers` more layers and `parameter_tensors` more parameters before they are
        built, refusing the model (once; later steps stop quietly) past MAX_LAYERS or
        MAX_PARAMETER_TENSORS.  A block instance counts as a layer however little it holds:
        blocks of repeats of empty blocks multiply work as layers do."""
        self.layer_count += layers
        self.parameter_count += parameter_tensors
        if self.layer_count <= MAX_LAYERS and self.parameter_count <= MAX_PARAMETER_TENSORS:
            return
        if self.too_large:  # already reported once
            raise Poisoned()
        self.too_large = True
        if self.layer_count > MAX_LAYERS:
            raise Problem(f"this model has more than {MAX_LAYERS:,} layers (block instances "
                          f"count as layers); check the repeat counts", loc, "shape")
        raise Problem(f"this model has more than {MAX_PARAMETER_TENSORS:,} parameter tensors; "
                      f"check the repeat counts and stacked `layers`", loc, "shape")

    def plan_params(self, op, in_types, attrs, layer, scope, loc, producers=None):
        """(kind, type, producer, payload) for each parameter operand the layer needs.

        kind is `new` (payload: ParamSpec), `existing` (payload: node id, for sharing) or
        `tied` (payload: the other layer's weight node, used transposed).
        """
        if not op.params_rule:
            return []
        try:
            specs = op.parameter_specs(in_types, attrs)
        except (IndexError, ValueError, ZeroDivisionError, TypeError):
            # The operand is malformed; let the shape rule explain how.
            ctx = ShapeContext(op, in_types, list(producers or ["?"] * len(in_types)))
            try:
                op.infer(ctx, attrs)
            except ShapeProblem as problem:
                raise Problem(str(problem), loc, "shape") from None
            except (IndexError, ValueError, TypeError):
                pass
            raise Problem(f"`{op.name}` cannot take {in_types[0]}", loc, "shape") from None
        shared = attrs.get("share")
        tie = attrs.get(op.tie) if op.tie else None
        if shared is not None and tie is not None:
            raise Problem(f"`{op.name}` cannot both share and tie parameters", loc, "argument")
        plan = []
        if shared is not None:
            owned = self.params_of(shared.name)
            other_op = self.graph.op(self.graph.node_named(shared.name))
            if other_op != op.name and op.name not in get_op(other_op).lends_parameters_to:
                raise Problem(f"cannot share parameters with `{shared.name}`: it is a `{other_op}`, "
                              f"this is a `{op.name}`", shared.loc, "argument")
            for spec in specs:
                node = owned.get(spec.name)
                if node is None or self.graph.type_of(node).shape != spec.shape:
                    have = self.graph.type_of(node) if node is not None else "none"
                    raise Problem(f"`{layer}` cannot share the {spec.name} of `{shared.name}`: "
                                  f"`{shared.name}` has {have}, `{layer}` needs "
                                  f"{TensorType(spec.shape)}", shared.loc, "shape")
                plan.append(("existing", self.graph.type_of(node), shared.name, node))
            return plan
        for spec in specs:
            if tie is not None and spec.name == "weight":
                other = self.graph.node_named(tie.name)
                if self.graph.op(other) != op.name:
                    raise Problem(f"cannot tie to `{tie.name}`: it is a `{self.graph.op(other)}`, "
                                  f"not a `{op.name}`", tie.loc, "argument")
                weight = self.params_of(tie.name)["weight"]
                wtype = self.graph.type_of(weight)
                tied = TensorType(tuple(reversed(wtype.shape)), wtype.dtype)
                if tied.shape != spec.shape:
                    raise Problem(f"cannot tie `{layer}` to `{tie.name}`: the weight of `{tie.name}` "
                                  f"transposed is {tied}, `{layer}` needs {TensorType(spec.shape)}",
                                  tie.loc, "shape")
                plan.append(("tied", tied, f"{tie.name}.weight", weight))
            else:
                plan.append(("new", TensorType(spec.shape), f"{layer}.{spec.name}", spec))
        return plan

    def params_of(self, layer: str) -> dict[str, int]:
        """The parameter and buffer nodes of `layer`, by their short names (`weight`, `bias`)."""
        node = self.graph.node_named(layer)
        out = {}
        for operand in self.graph.operands(node):
            data = self.graph.nodes[operand]
            if data["role"] in ("param", "buffer"):
                out[data["name"].rsplit(".", 1)[-1]] = operand
        return out

    def materialise_param(self, entry, layer: str, scope: Scope) -> int:
        """The node for one planned parameter: an existing one, a transpose of a tied
        weight, or a new `param` node."""
        kind, type_, producer, payload = entry
        if kind == "existing":
            return payload
        if kind == "tied":
            return self.graph.add_op("transpose", [payload], {"perm": (1, 0)}, type_,
                                     name=self.graph.unique_name(f"{layer}.weight_tied"),
                                     role="internal", layer=layer, trace=scope.trace)
        spec = payload
        return self.graph.add_op(
            "param", (), {"shape": spec.shape, "init": spec.init, "fan_in": spec.fan_in,
                          "fan_out": spec.fan_out, "gain": spec.gain, "penalise": spec.penalised},
            type_, name=f"{layer}.{spec.name}", role="buffer" if spec.buffer else "param",
            layer=layer, trace=scope.trace)


def _signature(args) -> str:
    parts = []
    for a in args:
        default = "none" if a.default is None else describe_value(a.default).strip("`")
        parts.append(a.name if a.default is REQUIRED else f"{a.name}={default}")
    return ", ".join(parts)


def _join_or(words) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _check_tensors(incoming, step):
    values = incoming if isinstance(incoming, tuple) else (incoming,)
    for v in values:
        if not isinstance(v, Tensor):
            raise Problem(f"`{step.op}` needs a tensor flowing in, not {describe_value(v)}",
                          step.op_loc, "argument")


def _has_parameters(step, scope: Scope) -> bool:
    """Whether a step makes layers with parameters of their own (a group or block may)."""
    if isinstance(step, ast.Group) or step.op in scope.module.blocks:
        return True
    op = get_op(step.op)
    return op is not None and op.params_rule is not None


def _check_repeat_of_activation(step: ast.Step, incoming, first, before, scope: Scope):
    """Refuse `-> conv2d(6, 5) -> relu * 3`: `* n` binds to the one step before it, and an
    activation, without parameters and keeping its input's shape, is almost never meant to
    repeat alone.  The message suggests the group the author most likely meant: back to the
    nearest step with parameters.  Pooling (it changes the shape) and layers with parameters
    repeat freely, and `(relu) * 3` says that a lone activation is meant to repeat."""
    if step.op in scope.module.blocks:
        return
    op = get_op(step.op)
    if op is None or op.family != "activation" or op.params_rule is not None:
        return
    if isinstance(incoming, tuple) or first.type != incoming.type:
        return
    times = f"* {expr_text(step.repeat, ATOM)}"
    start = len(before)
    while start > 0:
        start -= 1
        if _has_parameters(before[start], scope):
            break
    alone = dataclasses.replace(step, repeat=None, label=None)
    notes = [f"to repeat `{step.op}` alone, group it: `({step_text(alone)}) {times}`"]
    if not before:
        raise Problem(f"`{times}` repeats only `{step.op}`, which has no parameters; to repeat "
                      f"several steps, group them in parentheses: `(... -> {step_text(alone)}) "
                      f"{times}`", step.loc, "argument", notes)
    meant = ast.Group(tuple(before[start:]) + (alone,), step.repeat, step.label)
    raise Problem(f"`{times}` repeats only `{step.op}`; to repeat several steps, group them: "
                  f"`{step_text(meant)}`", step.loc, "argument", notes)
