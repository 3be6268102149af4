"""Tensor math in expressions: `a + b`, `x * 0.5`, `1 / x`, `-x`, `x ** 2`, `exp(x)`.

Arithmetic between two tensors broadcasts them (the rule is the ops' own,
`netlang.ops.elementwise.broadcast_shape`): an operand whose per-example shape differs
from the common one is first widened by a `broadcast_to` node, so the arithmetic op always
sees operands of one shape; a pair that does not broadcast is a shape error at the
operator.  Arithmetic with a number becomes one op with the number as its attribute, and a
call of an op on a tensor (`exp(x)`, `sum(x, axis = 0)`, `clip(x, 0, 1)`) is the step
`x -> op(...)`.  `TensorMath` adds these to `LayerBuilder`; the expression evaluator
(netlang.lower.expressions) hands them the values it has evaluated.
"""

from __future__ import annotations

from netlang.frontend import ast
from netlang.lower.layers import LayerBuilder
from netlang.lower.names import Scope
from netlang.lower.values import Problem, Tensor
from netlang.ops import ShapeContext, ShapeProblem, get_op
from netlang.ops.elementwise import TENSOR_OPERATORS, broadcast_shape, number_arithmetic
from netlang.ops.schema import describe_value


class TensorMath(LayerBuilder):
    """Lowers arithmetic on tensors and calls of ops on tensors into graph nodes."""

    def tensor_binary(self, expr: ast.BinOp, left, right, scope: Scope, name_hint: str | None):
        """`left op right` where at least one side is a tensor; the Tensor it makes."""
        where = expr.op_loc or expr.loc
        if isinstance(left, Tensor) and isinstance(right, Tensor):
            if expr.op not in TENSOR_OPERATORS:
                raise Problem(f"cannot apply `{expr.op}` to two tensors; tensors support "
                              f"`+`, `-`, `*` and `/` between them", where, "argument")
            op = get_op(TENSOR_OPERATORS[expr.op])
            ctx = ShapeContext(op, [left.type, right.type], [left.layer, right.layer])
            try:
                shape = broadcast_shape(ctx)
            except ShapeProblem as problem:
                raise Problem(str(problem), where, "shape") from None
            operands = tuple(self._widen(t, shape, scope, where) for t in (left, right))
            return self.apply_op(op, operands, {}, name_hint, scope, where)
        tensor, number = (left, right) if isinstance(left, Tensor) else (right, left)
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise Problem(f"cannot apply `{expr.op}` to {describe_value(left)} and "
                          f"{describe_value(right)}; a tensor combines with tensors and numbers",
                          where, "argument")
        if expr.op == "/" and tensor is left and number == 0:
            raise Problem("division by zero", where, "argument")
        steps = number_arithmetic(expr.op, number, tensor_first=tensor is left)
        if steps is None:
            raise Problem(f"cannot apply `{expr.op}` to {describe_value(left)} and "
                          f"{describe_value(right)}", where, "argument")
        value = tensor
        for i, (name, attrs) in enumerate(steps):
            last = i == len(steps) - 1
            value = self.apply_op(get_op(name), (value,), attrs, name_hint if last else None,
                                  scope, where)
        return value

    def tensor_negate(self, expr: ast.UnaryOp, tensor: Tensor, scope: Scope,
                      name_hint: str | None):
        """`-x` for a tensor x."""
        [(name, attrs)] = number_arithmetic("*", -1.0, tensor_first=True)
        return self.apply_op(get_op(name), (tensor,), attrs, name_hint, scope, expr.loc)

    def tensor_call(self, expr: ast.Call, op, tensors: tuple, scope: Scope,
                    name_hint: str | None):
        """`op(x, args...)` for a tensor x: the step `x -> op(args...)`; `op(a, b, args...)`
        for an op of two input tensors, `(a, b) -> op(args...)`."""
        step = ast.Step(expr.func, expr.args[len(tensors):], loc=expr.loc, op_loc=expr.loc)
        incoming = tensors[0] if len(tensors) == 1 else tensors
        return self.apply_one(step, incoming, scope, name_hint)

    def _widen(self, tensor: Tensor, shape: tuple, scope: Scope, where) -> Tensor:
        """`tensor` broadcast to the per-example `shape` (itself where it has that shape)."""
        if tensor.type.sample_shape == shape:
            return tensor
        return self.apply_op(get_op("broadcast_to"), (tensor,), {"shape": shape}, None, scope,
                             where)

