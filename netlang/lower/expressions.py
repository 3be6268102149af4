"""Expressions and the names they read: binding, looking up, evaluating.

Arguments, repeat counts and dimensions are expressions evaluated while lowering
(`dense(2 * hidden)`, `x.shape[-1]`): names, numbers, strings, tuples, arithmetic,
comparisons and the built-in functions.  A name is bound once per scope and never
to a built-in's name.  A chain (`x -> dense(3)`), arithmetic on tensors (`a + b`,
`x * 0.5`, `-x`) and a call of an op on a tensor (`exp(x)`) are expressions too, whose
value is a tensor: the evaluator hands those to `lower_chain`, `tensor_binary`,
`tensor_negate` and `tensor_call`, which `LayerBuilder` (netlang.lower.layers) and
`TensorMath` (netlang.lower.tensor_math) add on top of this class.
"""

from __future__ import annotations

import math
import operator

from netlang.errors import did_you_mean
from netlang.frontend import ast
from netlang.frontend.limits import MAX_INT_BITS
from netlang.lower.names import Scope, user_op
from netlang.lower.state import LoweringState
from netlang.lower.values import MAX_SEQUENCE, POISON, Poisoned, Problem, Tensor
from netlang.ops.schema import describe_value

_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
               "//": operator.floordiv, "%": operator.mod, "**": operator.pow}
_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
            ">": operator.gt, ">=": operator.ge}
_BUILTINS = {"min": min, "max": max, "abs": abs, "int": lambda v: int(math.floor(v)),
             "round": round, "ceil": lambda v: int(math.ceil(v))}


class ExpressionEvaluator(LoweringState):
    """Binds names and evaluates expressions; a mistake raises Problem, a poisoned name Poisoned."""

    def check_free(self, scope: Scope, name: ast.Name):
        """Refuse to define `name` again (before anything of the new definition is built)."""
        if name.id in scope.values and scope.values[name.id] is not POISON:
            first = scope.defined_at.get(name.id)
            where = ""
            if first is not None and first.line:
                where = (f" (first on line {first.line})" if name.loc is None or first.line != name.loc.line
                         else f" (first at column {first.column})")
            raise Problem(f"`{name.id}` is defined twice{where}", name.loc, "name")
        # An op's name may name a value (`mean = h -> dense(20)` in a VAE): a step or a call
        # (`x -> mean`, `mean(x)`) always means the op, a bare name always the value.  The
        # built-in functions of numbers stay reserved, since `max(a, b)` reads either way.
        if name.id in _BUILTINS:
            raise Problem(f"`{name.id}` is the name of a built-in; choose another name", name.loc,
                          "name")

    def bind(self, scope: Scope, name: ast.Name, value):
        """Bind `name` to `value` in `scope`, refusing a second definition."""
        if scope.values.get(name.id) is value and isinstance(value, Tensor):
            return  # `y = x -> relu as y`: the label and the assignment name the same layer
        self.check_free(scope, name)
        scope.values[name.id] = value
        scope.defined_at[name.id] = name.loc

    def unknown_name(self, name: str, loc, scope: Scope) -> Problem:
        """The Problem for a name nothing defines, with a suggestion if one is close."""
        candidates = scope.known_names() | set(scope.module.blocks)
        return Problem(f"unknown name `{name}`{did_you_mean(name, candidates)}", loc, "name")

    def evaluate(self, expr, scope: Scope, name_hint: str | None = None, bare_words=()):
        """The value of `expr`; Poisoned if it needs a value an earlier mistake failed to make.

        `name_hint` names the layer a chain or a tensor `+` ends in (`y = x -> relu`);
        `bare_words` are names that stand for themselves as argument values (`padding = same`).
        """
        value = self._evaluate(expr, scope, name_hint, bare_words)
        if value is POISON:
            raise Poisoned()
        return value

    def _evaluate(self, expr, scope, name_hint=None, bare_words=()):
        if isinstance(expr, (ast.Number, ast.String, ast.Bool)):
            return expr.value
        if isinstance(expr, ast.Name):
            try:
                return scope.lookup(expr.id)
            except KeyError:
                if expr.id in bare_words:
                    return expr.id
                if expr.id in scope.module.blocks or user_op(expr.id) is not None:
                    raise Problem(f"`{expr.id}` is a layer, not a value; use it in a chain: "
                                  f"`x -> {expr.id}`", expr.loc, "name") from None
                raise self.unknown_name(expr.id, expr.loc, scope) from None
        if isinstance(expr, ast.Tuple):
            values, poisoned = [], False
            for item in expr.items:
                try:
                    values.append(self.evaluate(item, scope))
                except Poisoned:  # go on: the other items may hold mistakes of their own
                    poisoned = True
            if poisoned:
                raise Poisoned()
            return tuple(values)
        if isinstance(expr, ast.Chain):
            return self.lower_chain(expr, scope, name_hint)
        if isinstance(expr, ast.BinOp):
            return self.binary(expr, scope, name_hint)
        if isinstance(expr, ast.UnaryOp):
            operand = self.evaluate(expr.operand, scope)
            if isinstance(operand, Tensor) and expr.op == "-":
                return self.tensor_negate(expr, operand, scope, name_hint)
            if expr.op == "not":
                if not isinstance(operand, bool):
                    raise Problem(f"`not` needs true or false, not {describe_value(operand)}",
                                  expr.loc, "argument")
                return not operand
            if isinstance(operand, bool) or not isinstance(operand, (int, float)):
                raise Problem(f"cannot negate {describe_value(operand)}", expr.loc, "argument")
            return -operand
        if isinstance(expr, ast.Attribute):
            value = self.evaluate(expr.value, scope)
            if isinstance(value, Tensor):
                if expr.attr == "shape":
                    return tuple(value.type.sample_shape)
                if expr.attr == "size":
                    return value.type.size
                if expr.attr == "rank":
                    return len(value.type.sample_shape)
                raise Problem(f"a tensor has `shape`, `size` and `rank`, not `{expr.attr}`"
                              f"{did_you_mean(expr.attr, ('shape', 'size', 'rank'))}", expr.loc, "name")
            raise Problem(f"{describe_value(value)} has no attribute `{expr.attr}`", expr.loc, "name")
        if isinstance(expr, ast.Index):
            value = self.evaluate(expr.value, scope)
            index = self.evaluate(expr.index, scope)
            if not isinstance(value, tuple):
                raise Problem(f"cannot index {describe_value(value)}", expr.loc, "argument")
            if isinstance(index, bool) or not isinstance(index, int):
                raise Problem(f"an index must be an integer, not {describe_value(index)}",
                              expr.index.loc, "argument")
            if not -len(value) <= index < len(value):
                raise Problem(f"index {index} is out of range for {describe_value(value)}",
                              expr.index.loc, "argument")
            return value[index]
        if isinstance(expr, ast.Call):
            return self.call(expr, scope, name_hint)
        raise Problem(f"unsupported expression {type(expr).__name__}", getattr(expr, "loc", None))

    def call(self, expr: ast.Call, scope: Scope, name_hint: str | None = None):
        """`f(...)`: an op applied to the tensor in its first argument (`exp(x)`,
        `sum(x, axis = 0)`), or in its first two for an op of two input tensors
        (`sample_normal(mu, logvar)`), else a built-in function on numbers."""
        op = user_op(expr.func) if expr.func not in scope.module.blocks else None
        first = expr.args[0] if expr.args and expr.args[0].name is None else None
        if op is None or first is None:
            return self.call_builtin(expr, scope)
        value = self.evaluate(first.value, scope)
        if isinstance(value, Tensor):
            operands = (value,) + self.more_operands(expr, op, scope)
            return self.tensor_call(expr, op, operands, scope, name_hint)
        if expr.func not in _BUILTINS:
            raise Problem(f"`{expr.func}` is a layer: apply it to a tensor, `{expr.func}(x, ...)` "
                          f"or `x -> {expr.func}(...)`, not to {describe_value(value)}",
                          first.loc, "argument")
        return self.call_builtin(expr, scope, first_value=value)

    def more_operands(self, expr: ast.Call, op, scope: Scope) -> tuple:
        """The tensors after the first of a call of an op that takes a fixed number of them
        (`sample_normal(mu, logvar)`): its next positional arguments, each a tensor."""
        if op.arity is None or op.arity < 2:
            return ()
        rest = expr.args[1:op.arity]
        if len(rest) < op.arity - 1 or any(a.name is not None for a in rest):
            given = 1 + sum(1 for a in rest if a.name is None)
            raise Problem(f"`{op.name}` takes {op.arity} input tensors, got {given}", expr.loc,
                          "argument")
        tensors = tuple(self.evaluate(a.value, scope) for a in rest)
        for argument, value in zip(rest, tensors):
            if not isinstance(value, Tensor):
                raise Problem(f"`{op.name}` takes {op.arity} input tensors, not "
                              f"{describe_value(value)}", argument.loc, "argument")
        return tensors

    def call_builtin(self, expr: ast.Call, scope: Scope, first_value=POISON):
        """Call a built-in function (`min`, `max`, `abs`, `int`, `round`, `ceil`) on numbers;
        `first_value`, where given, is the first argument's value, already evaluated."""
        if expr.func not in _BUILTINS:
            if expr.func in scope.module.blocks or user_op(expr.func) is not None:
                raise Problem(f"`{expr.func}` is a layer; use it in a chain: `x -> {expr.func}(...)`",
                              expr.loc, "name")
            raise Problem(f"unknown function `{expr.func}`{did_you_mean(expr.func, _BUILTINS)}",
                          expr.loc, "name")
        if any(a.name for a in expr.args):
            raise Problem(f"`{expr.func}` takes no keyword arguments", expr.loc, "argument")
        values = [first_value if i == 0 and first_value is not POISON else
                  self.evaluate(a.value, scope) for i, a in enumerate(expr.args)]
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            raise Problem(f"`{expr.func}` needs numbers", expr.loc, "argument")
        try:
            return _BUILTINS[expr.func](*values)
        except TypeError:
            raise Problem(f"wrong number of arguments for `{expr.func}`", expr.loc, "argument") from None
        except (OverflowError, ValueError):  # int(inf), round(nan), ...
            raise Problem(f"`{expr.func}` cannot take {', '.join(describe_value(v) for v in values)}",
                          expr.loc, "argument") from None

    def binary(self, expr: ast.BinOp, scope: Scope, name_hint: str | None = None):
        """An infix operation: logic (short-circuit), comparison, arithmetic within bounds,
        joining tuples or strings, or arithmetic on tensors (`tensor_binary`)."""
        op = expr.op
        if op in ("and", "or"):
            left = self.evaluate(expr.left, scope)
            if not isinstance(left, bool):
                raise Problem(f"`{op}` needs true or false, not {describe_value(left)}",
                              expr.left.loc, "argument")
            if (op == "and" and not left) or (op == "or" and left):
                return left
            right = self.evaluate(expr.right, scope)
            if not isinstance(right, bool):
                raise Problem(f"`{op}` needs true or false, not {describe_value(right)}",
                              expr.right.loc, "argument")
            return right
        try:
            left = self.evaluate(expr.left, scope)
        except Poisoned:
            self.evaluate(expr.right, scope)  # the right operand may hold a mistake of its own
            raise
        right = self.evaluate(expr.right, scope)
        if isinstance(left, Tensor) or isinstance(right, Tensor):
            # `y = a + b` names the add layer `y`, as `y = (a, b) -> add` does.
            return self.tensor_binary(expr, left, right, scope, name_hint)
        if op in _COMPARE:
            if op in ("==", "!=") or _both_numbers(left, right):
                return _COMPARE[op](left, right)
            raise Problem(f"cannot compare {describe_value(left)} and {describe_value(right)}",
                          expr.loc, "argument")
        if op == "+" and ((isinstance(left, tuple) and isinstance(right, tuple))
                          or (isinstance(left, str) and isinstance(right, str))):
            if len(left) + len(right) > MAX_SEQUENCE:
                raise Problem(f"this {'tuple' if isinstance(left, tuple) else 'string'} is too long "
                              f"(more than {MAX_SEQUENCE:,} items)", expr.loc, "argument")
            return left + right
        if not _both_numbers(left, right):
            raise Problem(f"cannot apply `{op}` to {describe_value(left)} and {describe_value(right)}",
                          expr.loc, "argument")
        if op in ("/", "//", "%") and right == 0:
            raise Problem("division by zero", expr.loc, "argument")
        if op == "**" and abs(right) > 64:
            raise Problem(f"exponent {right} is too large", expr.loc, "argument")
        try:
            result = _ARITHMETIC[op](left, right)
        except (OverflowError, ZeroDivisionError):  # 1e300 ** 2, 0 ** -1
            raise Problem(f"`{op}` of {describe_value(left)} and {describe_value(right)} is not a "
                          f"finite number", expr.loc, "argument") from None
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
            raise Problem(f"`{op}` of {describe_value(left)} and {describe_value(right)} is not a "
                          f"finite real number", expr.loc, "argument")
        # Operands are bounded (literals and results by MAX_INT_BITS, exponents by 64), so the
        # result was cheap to compute; refuse it when it is out of bounds itself.
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise Problem("this number is too large", expr.loc, "argument")
        return result


def _both_numbers(a, b) -> bool:
    return all(not isinstance(v, bool) and isinstance(v, (int, float)) for v in (a, b))
