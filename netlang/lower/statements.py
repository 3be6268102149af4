"""Statements: constants, inputs, assignments, outputs and `if`, run in dependency order.

A file (or a block body) may define its names in any order: the statements are
sorted so each runs after those defining the names it uses, and a cycle among them
is an error.  A statement that fails is reported and the names it would have
defined are poisoned, so everything downstream stops quietly instead of reporting
the same mistake again.
"""

from __future__ import annotations

from netlang.errors import did_you_mean
from netlang.frontend import ast
from netlang.ir.types import BATCH, DTYPES, TensorType
from netlang.lower.blocks import BlockExpander
from netlang.lower.names import Scope, block_free_names, defined_names, used_names
from netlang.lower.values import MAX_DIM, POISON, Poisoned, Problem, Tensor
from netlang.ops.noise import NOISE_DISTRIBUTIONS
from netlang.ops.schema import describe_value

DTYPE_ALIASES = {"float": "float32", "int": "int32", "long": "int64", "double": "float64"}


class StatementRunner(BlockExpander):
    """Runs a body of statements: binds names, adds inputs and outputs, reports mistakes."""

    def run_statements(self, items, scope: Scope, module_level: bool, in_block: bool = False):
        """Evaluate `items` in dependency order; returns the block's outputs (in_block)."""
        outputs = []
        for item in items:
            scope.declared.update(defined_names(item))
        ordered = self._dependency_order(items, scope)
        for item in ordered:
            if module_level:
                self.current_statement = item
            try:
                self.run_statement(item, scope, module_level, in_block, outputs)
            except Problem as problem:
                self.report(problem, scope)
                for name in defined_names(item):
                    scope.values[name] = POISON
            except Poisoned:
                for name in defined_names(item):
                    scope.values[name] = POISON
        return outputs

    def run_statement(self, item, scope: Scope, module_level, in_block, outputs):
        """Run one statement; a block's `output` is appended to `outputs`."""
        if isinstance(item, (ast.Import, ast.BlockDef)):
            if not module_level:
                what = "an import" if isinstance(item, ast.Import) else "a block definition"
                raise Problem(f"{what} belongs at the top level of a file", item.loc, "name")
            return  # handled when the module was loaded
        if isinstance(item, ast.Train):
            if not module_level or in_block:
                raise Problem("a `train` section belongs at the top level of a file", item.loc,
                              "name")
            return  # lowered after the network
        if isinstance(item, ast.Const):
            value = self.evaluate(item.value, scope)
            if isinstance(value, Tensor):
                raise Problem(f"constant `{item.name.id}` must be a number, string or tuple, not a "
                              f"tensor", item.value.loc, "argument")
            self.bind(scope, item.name, value)
            if not scope.prefix:  # a file's own top-level constant: its blocks see it too
                scope.module.consts[item.name.id] = value
        elif isinstance(item, ast.Input):
            self.lower_input(item, scope, in_block)
        elif isinstance(item, ast.Assign):
            for target in item.targets:
                self.check_free(scope, target)
            hint = item.targets[0].id if len(item.targets) == 1 else None
            value = self.evaluate(item.value, scope, name_hint=hint)
            self.bind_targets(item, value, scope)
        elif isinstance(item, ast.Output):
            self.lower_output(item, scope, in_block, outputs)
        elif isinstance(item, ast.If):
            condition = self.evaluate(item.condition, scope)
            if not isinstance(condition, bool):
                raise Problem(f"the condition of `if` must be true or false, not "
                              f"{describe_value(condition)}", item.condition.loc, "argument")
            branch = item.body if condition else item.orelse
            outputs.extend(self.run_statements(branch, scope, module_level=False,
                                               in_block=in_block) or [])
        else:
            raise Problem(f"unsupported statement {type(item).__name__}", item.loc)

    def bind_targets(self, item: ast.Assign, value, scope: Scope):
        """Bind the names on the left of an assignment, one value each when there are several."""
        targets = item.targets
        if len(targets) == 1:
            self.bind(scope, targets[0], value)
            return
        if not isinstance(value, tuple) or len(value) != len(targets):
            count = len(value) if isinstance(value, tuple) else 1
            raise Problem(f"{len(targets)} names on the left but {count} value"
                          f"{'s' if count != 1 else ''} on the right", item.loc, "name")
        for target, v in zip(targets, value):
            self.bind(scope, target, v)

    def lower_input(self, item: ast.Input, scope: Scope, in_block: bool):
        """Add an `input` to the graph, or, inside a block, check the tensor bound to it."""
        if in_block:
            # A block's input: bound to the instantiation's incoming tensors before the body runs.
            if item.noise is not None:
                raise Problem(f"block input `{item.name.id}` is handed a tensor; only a model's "
                              f"own inputs are drawn from a distribution", item.noise.loc,
                              "argument")
            if item.name.id not in scope.values:
                raise Problem(f"block input `{item.name.id}` was not given a tensor", item.loc, "name")
            if item.type is not None:
                value = scope.values[item.name.id]
                expected = self.tensor_type(item.type, scope)
                if isinstance(value, Tensor) and (value.type.shape != expected.shape
                                                  or value.type.dtype != expected.dtype):
                    raise Problem(f"block input `{item.name.id}` must be {expected} {expected.dtype}, "
                                  f"got {value.description}", item.loc, "shape")
            return
        if item.type is None:
            raise Problem(f"input `{item.name.id}` needs a shape, e.g. `input {item.name.id}: [784]`",
                          item.loc, "argument")
        self.check_free(scope, item.name)
        type_ = self.tensor_type(item.type, scope)
        name = item.name.id
        if self.graph.has_name(name):
            raise Problem(f"`{name}` is defined twice", item.name.loc, "name")
        attrs = {"shape": type_.shape, "dtype": type_.dtype}
        if item.noise is not None:
            attrs["noise"] = self.noise_attrs(item, type_, scope)
        node = self.graph.add_op("input", (), attrs, type_, name=name, role="input", loc=item.loc)
        self.graph.graph["inputs"][name] = node
        self.bind(scope, item.name, Tensor(node, type_, name))

    def noise_attrs(self, item: ast.Input, type_: TensorType, scope: Scope) -> dict:
        """{"distribution": name, **its arguments} of a noise input (`~ normal(std = 0.5)`)."""
        noise = item.noise
        distribution = NOISE_DISTRIBUTIONS.get(noise.distribution)
        if distribution is None:
            known = ", ".join(f"`{n}`" for n in NOISE_DISTRIBUTIONS)
            raise Problem(f"unknown distribution `{noise.distribution}` (known: {known})"
                          f"{did_you_mean(noise.distribution, NOISE_DISTRIBUTIONS)}",
                          noise.op_loc, "name")
        if not type_.is_float:
            raise Problem(f"noise input `{item.name.id}` must be floating-point, not "
                          f"{type_.dtype}", item.type.loc, "shape")
        return {"distribution": distribution.name,
                **self.bind_op_args(distribution, noise.args, scope, noise)}

    def tensor_type(self, expr: ast.TensorTypeExpr, scope: Scope) -> TensorType:
        """The TensorType of `[d1, d2]` or `dtype[d1, d2]`, with the batch dimension first."""
        dtype = expr.dtype or "float32"
        dtype = DTYPE_ALIASES.get(dtype, dtype)
        if dtype not in DTYPES:
            raise Problem(f"unknown dtype `{expr.dtype}`"
                          f"{did_you_mean(expr.dtype, DTYPES + tuple(DTYPE_ALIASES))}",
                          expr.dtype_loc or expr.loc, "argument")
        dims = []
        for d in expr.dims:
            value = self.evaluate(d, scope)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise Problem(f"a dimension must be a positive integer, not {describe_value(value)}",
                              d.loc, "argument")
            if value > MAX_DIM:
                raise Problem(f"the dimension {value} is too large", d.loc, "argument")
            dims.append(value)
        return TensorType((BATCH,) + tuple(dims), dtype)

    def lower_output(self, item: ast.Output, scope: Scope, in_block: bool, outputs: list):
        """Declare an output of the model, or, inside a block, the value it returns."""
        name = item.name
        if item.value is None:
            try:
                value = scope.lookup(name.id)
            except KeyError:
                raise self.unknown_name(name.id, name.loc, scope) from None
        else:
            self.check_free(scope, name)
            value = self.evaluate(item.value, scope, name_hint=name.id)
            self.bind(scope, name, value)
        if value is POISON:
            raise Poisoned()
        if not isinstance(value, Tensor):
            raise Problem(f"output `{name.id}` must be a single tensor, not {describe_value(value)}",
                          item.loc, "argument")
        if in_block:
            outputs.append(value)
            return
        if name.id in self.graph.graph["outputs"]:
            raise Problem(f"output `{name.id}` is declared twice", name.loc, "name")
        self.graph.graph["outputs"][name.id] = value.node

    def _dependency_order(self, items, scope: Scope):
        """Order statements so each runs after the statements defining the names it uses."""
        definer: dict[str, int] = {}
        for i, item in enumerate(items):
            for name in defined_names(item):
                definer.setdefault(name, i)
        deps = []
        top_level = not scope.prefix
        for i, item in enumerate(items):
            names = used_names(item)
            if top_level:  # a block of this file reads the file's constants when it is used
                names |= block_free_names(item, scope.module)
            used = {definer[n] for n in names if n in definer and definer[n] != i}
            deps.append(sorted(used))
        order, state = [], [0] * len(items)  # 0 new, 1 visiting, 2 done

        # A depth-first search with an explicit stack: a file may chain thousands of
        # definitions, each using the next, deeper than Python's recursion limit.
        for root in range(len(items)):
            if state[root]:
                continue
            state[root] = 1
            stack = [(root, iter(deps[root]))]
            try:
                while stack:
                    i, pending = stack[-1]
                    for j in pending:
                        if state[j] == 2:
                            continue
                        if state[j] == 1:
                            path = [k for k, _ in stack]
                            cycle = path[path.index(j):] + [j]
                            names = [self._first_defined(items[k]) for k in cycle]
                            raise Problem("these definitions depend on each other in a cycle: "
                                          + " → ".join(f"`{n}`" for n in names),
                                          items[cycle[0]].loc, "name")
                        state[j] = 1
                        stack.append((j, iter(deps[j])))
                        break
                    else:
                        stack.pop()
                        state[i] = 2
                        order.append(items[i])
            except Problem as problem:
                self.report(problem, scope)
                # Drop every statement still on the search path (the cycle and what waits on
                # it); the rest go on.
                for j in range(len(items)):
                    if state[j] == 1:
                        state[j] = 2
                        for name in defined_names(items[j]):
                            scope.values[name] = POISON
        return order

    @staticmethod
    def _first_defined(item):
        names = defined_names(item)
        return names[0] if names else "?"
