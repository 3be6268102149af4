"""A `loss` line of the train section → the weighted terms of the training objective.

A loss is a sum of terms, each weighted by a number: `loss cross_entropy(logits, label)`,
`loss binary_cross_entropy(x_hat, image) + kl_normal(mu, logvar)`,
`loss softplus(-real_score) + softplus(fake_score)`, `loss 0.5 * mean(square(a - b)) - 0.1 * e`.
The expression is split at its top-level `+`, `-`, unary `-`, and at `*` and `/` by a number,
which become the terms' weights; each piece left is a term:

- a call of a loss op (`cross_entropy(logits, label)`, `kl_normal(mu, logvar)`): its node;
- any other expression of the model's tensors, lowered as ordinary tensor math in the file's
  top-level scope: its value must be a floating-point scalar per example (shape `[]` or
  `[1]`, anything else is an error at the term naming its shape), and the term is a
  `batch_mean` node (netlang/ops/loss_terms.py) averaging it over the batch.

A weight is any number: a negative one maximises its term (the optimiser minimises the
weighted sum, which is also the training loss reported).  A weight of 0 keeps its term:
computed and reported beside the others, it adds nothing to the gradient.  A term that
depends on no parameter of a model that has some is an error: no training step could
change it.  The nodes lowered for a term are part of the objective, not layers of the model:
they take the role `loss`, so they are not default outputs and an input read only by them is
a target.
"""

from __future__ import annotations

import math

from netlang.errors import did_you_mean
from netlang.frontend import ast
from netlang.lower.names import Scope, user_op, walk
from netlang.lower.tensor_math import TensorMath
from netlang.lower.values import Poisoned, Problem, Tensor
from netlang.ops import all_ops, get_op
from netlang.ops.schema import describe_value

_FORMS = ("a loss is a sum of terms, each a loss such as `cross_entropy(logits, label)` or an "
          "expression of the model's tensors that is a scalar per example, weighted by numbers "
          "(`0.5 * ...`, `... / 2`, `-...`)")


def loss_terms(lowerer: TensorMath, expr, scope: Scope) -> list[tuple[int, float]]:
    """The terms of one loss expression as [(loss node, weight)].

    Raises Problem for the first mistake of a term that stands alone; where several terms
    are summed, each one's mistakes are reported through `lowerer` and Poisoned is raised.
    """
    before = set(lowerer.graph.nodes)
    try:
        found = _terms(lowerer, expr, scope, 1.0)
        if not all(math.isfinite(weight) for _, weight in found):  # `1e300 * (1e300 * ...)`
            raise Problem("the weights of this loss multiply to a number too large", expr.loc,
                          "argument")
        return found
    finally:
        for node in set(lowerer.graph.nodes) - before:
            if lowerer.graph.nodes[node]["role"] in ("layer", "internal"):
                lowerer.graph.nodes[node]["role"] = "loss"


def _terms(lowerer, expr, scope, weight):
    if isinstance(expr, ast.BinOp) and expr.op in ("+", "-"):
        sign = -1.0 if expr.op == "-" else 1.0
        found, failed = [], False
        for side, side_weight in ((expr.left, weight), (expr.right, sign * weight)):
            try:  # both sides are checked, so each term's mistakes are reported
                found += _terms(lowerer, side, scope, side_weight)
            except Problem as problem:
                lowerer.report(problem, scope)
                failed = True
            except Poisoned:
                failed = True
        if failed:
            raise Poisoned()
        return found
    if isinstance(expr, ast.UnaryOp) and expr.op == "-":
        return _terms(lowerer, expr.operand, scope, -weight)
    if isinstance(expr, ast.BinOp) and expr.op in ("*", "/"):
        return _scaled_terms(lowerer, expr, scope, weight)
    if isinstance(expr, ast.Call) and _is_loss_call(expr):
        return [(_loss_call(lowerer, expr, scope), weight)]
    if isinstance(expr, ast.Call) and user_op(expr.func) is None and \
            expr.func not in scope.module.blocks:
        losses = sorted(n for n, o in all_ops().items() if o.role == "loss")
        raise Problem(f"unknown loss `{expr.func}`{did_you_mean(expr.func, losses)}", expr.loc,
                      "name", [f"known: {', '.join(losses)}; or an expression of the model's "
                               f"tensors that is a scalar per example"])
    _refuse_nested_loss(expr)
    return [(_expression_term(lowerer, lowerer.evaluate(expr, scope), expr, scope), weight)]


def _scaled_terms(lowerer, expr: ast.BinOp, scope, weight):
    """`a * b` or `a / b`: a loss (or sum of losses) scaled by a number, a tensor term
    scaled by a number, or a product or quotient of tensors that is a term itself."""
    left_losses, right_losses = _has_loss_call(expr.left), _has_loss_call(expr.right)
    if left_losses and right_losses:
        raise Problem("a loss can be scaled by a number, not multiplied by another loss",
                      expr.op_loc or expr.loc, "argument")
    if right_losses and expr.op == "/":
        raise Problem("a loss can be divided by a number, not be a divisor",
                      expr.op_loc or expr.loc, "argument")
    if left_losses or right_losses:
        loss_side, number_side = (expr.left, expr.right) if left_losses else (expr.right, expr.left)
        number = _weight(lowerer.evaluate(number_side, scope), number_side, expr)
        return _terms(lowerer, loss_side, scope, weight * number)
    _refuse_nested_loss(expr)
    left = lowerer.evaluate(expr.left, scope)
    right = lowerer.evaluate(expr.right, scope)
    if isinstance(left, Tensor) and not isinstance(right, Tensor):
        number = _weight(right, expr.right, expr)
        return [(_expression_term(lowerer, left, expr.left, scope), weight * number)]
    if isinstance(right, Tensor) and not isinstance(left, Tensor) and expr.op == "*":
        number = _weight(left, expr.left, expr)
        return [(_expression_term(lowerer, right, expr.right, scope), weight * number)]
    if isinstance(left, Tensor) or isinstance(right, Tensor):  # `a * b`, `1 / x`: tensor math
        value = lowerer.tensor_binary(expr, left, right, scope, None)
        return [(_expression_term(lowerer, value, expr, scope), weight)]
    raise Problem(f"this loss term is not computed from the model's tensors; {_FORMS}",
                  expr.loc, "argument")


def _weight(value, expr, operation: ast.BinOp) -> float:
    """`value` as the weight of a term (the divisor's reciprocal for `/`), or a Problem."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise Problem(f"a loss weight must be a number, not {describe_value(value)}", expr.loc,
                      "argument")
    if operation.op == "/":
        if value == 0:
            raise Problem("division by zero", expr.loc, "argument")
        return 1.0 / value
    return float(value)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _loss_call(lowerer, expr: ast.Call, scope) -> int:
    """The node of a call of a loss op, on its tensors and with its own keyword arguments."""
    op = get_op(expr.func)
    tensors = [a for a in expr.args if a.name is None]
    if len(tensors) != op.arity:
        operands = ", ".join(op.operand_names)
        raise Problem(f"`{expr.func}` takes {op.arity} tensors: `{expr.func}({operands})`",
                      expr.loc, "argument")
    operands = [lowerer.evaluate(a.value, scope) for a in tensors]
    for a, value in zip(tensors, operands):
        if not isinstance(value, Tensor):
            raise Problem(f"`{expr.func}` needs tensors, not {describe_value(value)}", a.loc,
                          "argument")
    keyword_args = tuple(a for a in expr.args if a.name is not None)
    attrs = lowerer.bind_op_args(op, keyword_args, scope, None)
    tensor = lowerer.apply_op(op, operands, attrs, None, scope, expr.loc)
    _require_parameter(lowerer, tensor.node, expr)
    return tensor.node


def _expression_term(lowerer, value, expr, scope) -> int:
    """A tensor expression's value as a term: its mean over the batch (a `batch_mean` node)."""
    if not isinstance(value, Tensor):
        raise Problem(f"this loss term is {describe_value(value)}, not computed from the "
                      f"model's tensors; {_FORMS}", expr.loc, "argument")
    shape = value.type.sample_shape
    if shape not in ((), (1,)):
        shown = "[" + ", ".join(str(d) for d in shape) + "]"
        raise Problem(f"a loss term must be a scalar per example (shape [] or [1]), but this one "
                      f"has shape {shown}; reduce it first, e.g. `sum(..., axis = "
                      f"{_all_axes(shape)})`", expr.loc, "shape")
    if not value.type.is_float:
        raise Problem(f"a loss term must be floating-point, but this one is {value.type.dtype}",
                      expr.loc, "shape")
    _require_parameter(lowerer, value.node, expr)
    return lowerer.apply_op(get_op("batch_mean"), (value,), {}, None, scope, expr.loc).node


def _all_axes(shape) -> str:
    return "0" if len(shape) == 1 else "(" + ", ".join(str(i) for i in range(len(shape))) + ")"


def _require_parameter(lowerer, node, expr):
    """A Problem unless `node` depends on a parameter, where the model has any."""
    graph = lowerer.graph
    if not graph.parameters():
        return  # a model without parameters differentiates to its inputs only (gradient checks)
    seen, stack = {node}, [node]
    while stack:
        current = stack.pop()
        if graph.nodes[current]["role"] == "param":
            return
        for operand in graph.operands(current):
            if operand not in seen:
                seen.add(operand)
                stack.append(operand)
    raise Problem("this loss term depends on no parameter of the model: no training step could "
                  "change it", expr.loc, "argument")


def _is_loss_call(expr) -> bool:
    if not isinstance(expr, ast.Call):
        return False
    op = get_op(expr.func)
    return op is not None and op.role == "loss"


def _has_loss_call(expr) -> bool:
    """Whether `expr` is a loss call, or a sum or scaling of terms one of which is."""
    if _is_loss_call(expr):
        return True
    if isinstance(expr, ast.BinOp) and expr.op in ("+", "-", "*", "/"):
        return _has_loss_call(expr.left) or _has_loss_call(expr.right)
    if isinstance(expr, ast.UnaryOp) and expr.op == "-":
        return _has_loss_call(expr.operand)
    return False


def _refuse_nested_loss(expr):
    """A Problem where a loss call sits inside tensor math (`exp(cross_entropy(...))`): losses
    are scaled by numbers and added, never operands of other ops."""
    for node in walk(expr):
        if _is_loss_call(node):
            raise Problem(f"`{node.func}` is a loss: losses are weighted by numbers and added "
                          f"(`0.5 * {node.func}(...) + ...`), never used inside tensor math",
                          node.loc, "argument")
