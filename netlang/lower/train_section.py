"""The `train { ... }` section → loss nodes in the graph and a `TrainConfig`.

Losses become graph nodes (so autodiff sees them; each `loss` line is split into weighted
terms by netlang.lower.loss_terms); everything else is checked
against the schemas in `netlang.ops.optim` and `netlang.ir.train_config`.  The
section is lowered after the network, in the file's top-level scope, so it can
name the network's layers and constants; `netlang.train.overrides` lowers
one-line sections the same way for `--set`.
"""

from __future__ import annotations

import math

from netlang.errors import did_you_mean
from netlang.frontend import ast
from netlang.ir.train_config import Choice, METRICS, SCALAR_SETTINGS, SETTINGS, TrainConfig
from netlang.lower.layers import LayerBuilder
from netlang.lower.loss_terms import loss_terms
from netlang.lower.names import Scope
from netlang.lower.values import POISON, Poisoned, Problem, Tensor
from netlang.ops.optim import OPTIMIZERS, REGULARIZERS, SCHEDULES
from netlang.ops.schema import ArgumentProblem, bind_arguments, describe_value


def lower_train_section(lowerer: LayerBuilder, section: ast.Train, scope: Scope) -> None:
    """Add the section's losses to `lowerer`'s graph and its settings as graph["train"].

    Every mistake is reported through `lowerer` and the other settings still checked.
    """
    config = TrainConfig()
    seen = {}
    losses = []
    for item in section.items:
        key = item.key.id
        try:
            if key not in SETTINGS:
                raise Problem(f"unknown training setting `{key}`{did_you_mean(key, SETTINGS)}",
                              item.key.loc, "name", [f"known: {', '.join(SETTINGS)}"])
            if key not in ("loss", "regularize") and key in seen:
                raise Problem(f"`{key}` is set twice (first on line {seen[key].line})",
                              item.key.loc, "name")
            seen[key] = item.key.loc
            if item.on and key != "regularize":
                raise Problem("only `regularize` takes `on <layers>`", item.on[0].loc, "argument")
            if key == "loss":
                for value in item.values:
                    losses.extend(loss_terms(lowerer, value, scope))
            elif key == "optimizer":
                config.optimizer = _choice(lowerer, _single(item), OPTIMIZERS, "optimizer", scope)
            elif key == "schedule":
                config.schedule = _choice(lowerer, _single(item), SCHEDULES, "schedule", scope)
            elif key == "regularize":
                choice = _choice(lowerer, _single(item), REGULARIZERS, "regularizer", scope)
                choice.layers = tuple(_layer_names(lowerer, item.on, scope))
                config.regularizers.append(choice)
            elif key == "freeze":
                config.freeze = tuple(_layer_names(lowerer, item.values, scope))
            elif key == "metrics":
                config.metrics = tuple(_metric(lowerer, v, scope) for v in item.values)
            elif key == "data":
                value = _single(item)
                config.data = value.id if isinstance(value, ast.Name) else lowerer.evaluate(value, scope)
                if not isinstance(config.data, str):
                    raise Problem("`data` names a data set, e.g. `data mnist`", value.loc, "argument")
            else:
                setattr(config, key, _scalar(lowerer, key, _single(item), scope))
        except Problem as problem:
            lowerer.report(problem, scope)
        except Poisoned:
            pass
    if losses and not any(weight for _, weight in losses):
        lowerer.report(Problem("every loss term has weight 0: training would change nothing",
                               seen["loss"], "argument"), scope)
    lowerer.graph.graph["losses"] = losses
    lowerer.graph.graph["train"] = config


def _single(item: ast.TrainItem):
    if len(item.values) != 1:
        raise Problem(f"`{item.key.id}` takes one value", item.loc, "argument")
    return item.values[0]


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _scalar(lowerer, key, expr, scope):
    kind, low, high, what = SCALAR_SETTINGS[key]
    value = lowerer.evaluate(expr, scope)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not _finite(value) or (kind is int and not float(value).is_integer()):
        raise Problem(f"`{key}` ({what}) must be {'an integer' if kind is int else 'a number'}, "
                      f"not {describe_value(value)}", expr.loc, "argument")
    value = kind(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise Problem(f"`{key}` must be {bound}, not {value}", expr.loc, "argument")
    return value


def _choice(lowerer, expr, table, what, scope) -> Choice:
    if isinstance(expr, ast.Name):
        name, args = expr.id, ()
    elif isinstance(expr, ast.Call):
        name, args = expr.func, expr.args
    else:
        raise Problem(f"expected {what} such as `{next(iter(table))}(...)`", expr.loc, "argument")
    if name not in table:
        raise Problem(f"unknown {what} `{name}`{did_you_mean(name, table)}", expr.loc, "name",
                      [f"known: {', '.join(sorted(table))}"])
    entry = table[name]
    positional = [lowerer.evaluate(a.value, scope) for a in args if a.name is None]
    keywords = [(a.name, lowerer.evaluate(a.value, scope)) for a in args if a.name is not None]
    try:
        bound = bind_arguments(entry.args, positional, keywords, f"{what} `{name}`")
    except ArgumentProblem as problem:
        loc = expr.loc
        for i, a in enumerate(args):
            if problem.index == i or problem.index == a.name:
                loc = a.loc
        raise Problem(problem.message, loc, "argument") from None
    return Choice(name, bound)


def _layer_names(lowerer, exprs, scope):
    names = []
    for expr in exprs:
        if not isinstance(expr, ast.Name):
            raise Problem("expected the name of a layer", expr.loc, "argument")
        try:
            value = scope.lookup(expr.id)
        except KeyError:
            raise Problem(f"unknown layer `{expr.id}`{did_you_mean(expr.id, scope.visible_names())}",
                          expr.loc, "name") from None
        if value is POISON:  # its definition failed, and that error is already reported
            raise Poisoned()
        if not isinstance(value, Tensor):
            raise Problem(f"`{expr.id}` is not a layer", expr.loc, "argument")
        if lowerer.graph.nodes[value.node]["role"] == "input":
            raise Problem(f"`{expr.id}` is an input, not a layer with parameters", expr.loc,
                          "argument")
        names.append(value.layer)
    return names


def _metric(lowerer, expr, scope):
    if isinstance(expr, ast.Name) and expr.id in METRICS and expr.id != "top_k":
        return expr.id
    if isinstance(expr, ast.Call) and expr.func == "top_k":
        if len(expr.args) != 1 or expr.args[0].name not in (None, "k"):
            raise Problem("`top_k` takes one argument, k", expr.loc, "argument")
        k = lowerer.evaluate(expr.args[0].value, scope)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise Problem(f"`top_k` needs a positive integer, not {describe_value(k)}", expr.loc,
                          "argument")
        return f"top_{k}"
    word = expr.id if isinstance(expr, ast.Name) else getattr(expr, "func", "?")
    raise Problem(f"unknown metric `{word}`{did_you_mean(word, METRICS)}", expr.loc, "name",
                  ["known: accuracy, top_k(k), loss, confusion"])
