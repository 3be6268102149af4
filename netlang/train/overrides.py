"""Overriding a model's train-section settings from the command line or from Python.

`--set key=value` (and the named flags such as `--epochs`, which become the same
`key=value` strings; in Python, `fit`'s keywords and `settings=`) are checked by compiling a
one-line train section with netlang's own parser and `netlang.lower.train_section`, so a
value means exactly what it would mean in the file: `--set "optimizer=adam(lr=1e-3)"`,
`--set "schedule=step(every=5, gamma=0.5)"`, `--set "regularize=l2(1e-4) on fc1"`.
When the model is given, its constants and layer names are in scope.

Besides the train-section settings, `lr=X` sets the optimiser's learning rate
(keeping the optimiser), and `none` clears `clip_norm`, `early_stopping`,
`regularize`, `freeze` and `schedule`.

Errors name a setting as "training setting `key=value`"; the command line words that as
`--set key=value` (`netlang.cli.in_flag_words`).
"""

from __future__ import annotations

import copy

from netlang.errors import NetlangError, UsageError, did_you_mean
from netlang.frontend import ast
from netlang.frontend.parser import parse
from netlang.ir.train_config import Choice, SETTINGS, TrainConfig
from netlang.lower import Lowerer, ModuleEnv, Scope, lower_train_section

# The losses and the order of the phases are part of the model's graph, not run settings.
OVERRIDABLE = tuple(s for s in SETTINGS if s not in ("loss", "phases")) + ("lr",)
_CLEARABLE = {"clip_norm": None, "early_stopping": None, "regularize": [], "freeze": (),
              "update": None, "schedule": None, "metrics": (), "adversarial": None}
_FIELD = {"regularize": "regularizers"}
SOURCE_NAME = "<--set>"


def split_override(text: str) -> tuple[str, str]:
    """`"batch-size = 64"` → `("batch_size", "64")`, or a one-line UsageError."""
    if not isinstance(text, str) or "=" not in text:
        raise UsageError(f"training setting `{text}`: expected key=value, such as epochs=5")
    key, value = text.split("=", 1)
    key = key.strip().replace("-", "_")
    value = value.strip()
    if key == "loss":
        raise UsageError("training setting `loss`: the loss is part of the model and cannot be "
                         "overridden; edit the train section instead")
    if key not in OVERRIDABLE:
        raise UsageError(f"unknown training setting `{key}`{did_you_mean(key, OVERRIDABLE)} "
                         f"(known: {', '.join(OVERRIDABLE)})")
    return key, value


class _ModelScope:
    """The model's names (constants, layers) for evaluating override values, built once."""

    def __init__(self, graph):
        self.graph = graph
        self._built = None

    def get(self):
        if self._built is None:
            self._built = _model_scope(self.graph)
        return self._built


def _model_scope(graph):
    path = graph.graph.get("path") if graph is not None else None
    sources = graph.graph.get("sources") or {} if graph is not None else {}
    if path is not None and path in sources:
        lowerer = Lowerer()
        try:
            env, module = lowerer.load_module(path, sources[path], main=True)
            scope = Scope(env)
            statements = [i for i in module.items
                          if not isinstance(i, (ast.Import, ast.BlockDef, ast.Train))]
            lowerer.run_statements(statements, scope, module_level=True)
            return lowerer, scope
        except (NetlangError, RecursionError):
            pass  # fall back to an empty scope: plain values still work
    lowerer = Lowerer()
    return lowerer, Scope(ModuleEnv(SOURCE_NAME))


def apply_overrides(config: TrainConfig, overrides, graph=None) -> TrainConfig:
    """A copy of `config` with each `key=value` in `overrides` applied in order."""
    config = copy.deepcopy(config) if config is not None else TrainConfig()
    scope = _ModelScope(graph)
    lr = None
    replaced_regularizers = False
    for text in overrides or ():
        key, value = split_override(text)
        if key == "lr":
            lr = _positive_float(value, "training setting `lr`")
            continue
        if value.lower() in ("none", "") and key in _CLEARABLE:
            if key == "schedule":
                config.schedule = Choice("constant", {})
            else:
                setattr(config, _FIELD.get(key, key), copy.copy(_CLEARABLE[key]))
            replaced_regularizers = replaced_regularizers or key == "regularize"
            continue
        if key == "data":
            config.data = value[1:-1] if value[:1] == value[-1:] and value[:1] in "\"'" \
                and len(value) >= 2 else value
            continue
        parsed = _lower_item(key, value, text, scope)
        if key == "regularize":
            # The first --set regularize replaces the file's penalties; later ones add to it.
            if not replaced_regularizers:
                config.regularizers = []
                replaced_regularizers = True
            config.regularizers.extend(parsed.regularizers)
        else:
            setattr(config, key, getattr(parsed, key))
    if lr is not None:
        config.optimizer = Choice(config.optimizer.name, {**config.optimizer.args, "lr": lr},
                                  config.optimizer.layers)
    return config


def _positive_float(value, what) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what}: expected a number, got `{value}`") from None
    if not number > 0 or number != number or number == float("inf"):
        raise UsageError(f"{what}: the learning rate must be a positive number, got {value}")
    return number


def _lower_item(key: str, value: str, text: str, scope: _ModelScope) -> TrainConfig:
    snippet = f"train {{\n  {key} {value}\n}}\n"
    try:
        module = parse(snippet, SOURCE_NAME)
    except NetlangError as error:
        raise UsageError(f"training setting `{text}`: cannot read `{value}`: "
                         f"{error.message}") from None
    trains = [i for i in module.items if type(i).__name__ == "Train"]
    if len(trains) != 1 or len(trains[0].items) != 1:
        raise UsageError(f"training setting `{text}`: expected one value for `{key}`")
    lowerer, model_scope = scope.get()
    before = len(lowerer.diagnostics)
    saved = dict(lowerer.graph.graph)
    try:
        lower_train_section(lowerer, trains[0], model_scope)
    except NetlangError as error:
        raise UsageError(f"training setting `{text}`: {error.message}") from None
    new = lowerer.diagnostics[before:]
    del lowerer.diagnostics[before:]
    parsed = lowerer.graph.graph["train"]
    lowerer.graph.graph.clear()
    lowerer.graph.graph.update(saved)
    if new:
        raise UsageError(f"training setting `{text}`: {new[0].message}")
    return parsed


def override_strings(**settings) -> list[str]:
    """Python keyword settings (`epochs=5, optimizer="adam"`) as `key=value` strings; None skipped."""
    out = []
    for key, value in settings.items():
        if value is None:
            continue
        if isinstance(value, Choice):
            args = ", ".join(f"{k}={_literal(v)}" for k, v in value.args.items())
            value = f"{value.name}({args})"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, float):
            value = repr(value)
        out.append(f"{key}={value}")
    return out


def _literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)
