"""Blocks: a user-defined layer instantiated in a chain, its body lowered in a scope of its own.

Each instantiation binds the block's parameters (from the step's arguments, else
their defaults) and its inputs (the tensors flowing in), then runs the body's
statements under a prefix (`encoder.`) that keeps its layer names unique.  Running
statements is `run_statements`, which `StatementRunner` (netlang.lower.statements)
adds on top of this class; a repeat (`-> block * 3`) is unrolled by `apply_step`.
"""

from __future__ import annotations

from netlang.errors import did_you_mean
from netlang.frontend import ast
from netlang.lower.names import BlockInfo, Scope
from netlang.lower.tensor_math import TensorMath
from netlang.lower.values import MAX_BLOCK_DEPTH, POISON, Poisoned, Problem, Tensor


class BlockExpander(TensorMath):
    """Instantiates blocks: binds their parameters and inputs, lowers their bodies."""

    def instantiate(self, block: BlockInfo, step: ast.Step, incoming, scope: Scope, label):
        """Lower one use of `block` on the `incoming` tensors; its output tensor, or a tuple."""
        definition = block.definition
        name = definition.name.id
        if name in self.block_stack or len(self.block_stack) >= MAX_BLOCK_DEPTH:
            raise Problem(f"block `{name}` instantiates itself" if name in self.block_stack else
                          f"blocks nested more than {MAX_BLOCK_DEPTH} deep", step.op_loc, "name")
        self.count_toward_limits(step.op_loc, 1)
        instance = self.layer_name(name, label, scope) if not label else scope.prefix + label
        if self.graph.has_name(instance) or self.graph.has_prefix(instance):
            raise Problem(f"a layer named `{instance}` already exists", step.loc, "name")
        params = self.bind_block_args(block, step, scope)
        inputs = [item for item in definition.body if isinstance(item, ast.Input)]
        tensors = incoming if isinstance(incoming, tuple) else (incoming,)
        if len(inputs) != len(tensors):
            raise Problem(f"block `{name}` takes {len(inputs)} input tensor"
                          f"{'s' if len(inputs) != 1 else ''}, got {len(tensors)}", step.op_loc,
                          "argument")
        for item, tensor in zip(inputs, tensors):
            params[item.name.id] = tensor
        inner = Scope(block.module, prefix=instance + ".",
                      trace=scope.trace + ((f"block `{name}` instantiated as `{instance}`", step.loc),),
                      params=params)
        self.block_stack.append(name)
        try:
            outputs = self.run_statements(definition.body, inner, module_level=False, in_block=True)
        finally:
            self.block_stack.pop()
        if any(v is POISON for v in inner.values.values()) and not outputs:
            raise Poisoned()
        if not outputs:
            raise Problem(f"block `{name}` has no `output`", definition.loc, "name")
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def bind_block_args(self, block: BlockInfo, step: ast.Step, scope: Scope) -> dict:
        """The block's parameter values: the step's arguments, else the defaults.

        Defaults are evaluated in the block's own file and see the arguments given and the
        defaults before them.
        """
        definition = block.definition
        names = [p.name.id for p in definition.params]
        values, locs = {}, {}
        for i, arg in enumerate(step.args or ()):
            if arg.name is None:
                if i >= len(names):
                    raise Problem(f"block `{definition.name.id}` takes at most {len(names)} "
                                  f"argument{'s' if len(names) != 1 else ''}", arg.loc, "argument")
                key = names[i]
            else:
                key = arg.name
                if key not in names:
                    raise Problem(f"block `{definition.name.id}` has no parameter `{key}`"
                                  f"{did_you_mean(key, names)}", arg.loc, "argument")
            if key in values:
                raise Problem(f"parameter `{key}` is given twice", arg.loc, "argument")
            values[key] = self.evaluate(arg.value, scope)
            if isinstance(values[key], Tensor):
                raise Problem("a block parameter cannot be a tensor; tensors flow along chains",
                              arg.loc, "argument")
            locs[key] = arg.loc
        defaults_scope = Scope(block.module)
        for param in definition.params:
            key = param.name.id
            if key not in values:
                if param.default is None:
                    raise Problem(f"block `{definition.name.id}` needs the parameter `{key}`",
                                  step.op_loc, "argument")
                defaults_scope.values.update(values)
                values[key] = self.evaluate(param.default, defaults_scope)
        return values

