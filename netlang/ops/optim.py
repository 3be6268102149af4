"""Optimisers, learning-rate schedules and weight penalties: their names and hyper-parameters.

Each is defined once here with its argument schema, so the `train` section of a
`.net` file, the CLI's overrides and the training loop all check the same
names and defaults.  The update rules themselves attach here as the training
back end grows.
"""

from __future__ import annotations

import dataclasses

from netlang.ops.schema import Arg, BOOL, FLOAT, INT


@dataclasses.dataclass(frozen=True)
class Configurable:
    name: str
    kind: str  # optimizer, schedule, regularizer
    args: tuple
    doc: str


OPTIMIZERS: dict[str, Configurable] = {}
SCHEDULES: dict[str, Configurable] = {}
REGULARIZERS: dict[str, Configurable] = {}


def _define(table, kind, name, doc, args):
    table[name] = Configurable(name, kind, tuple(args), doc)


_LR = Arg("lr", FLOAT, 0.01, min=0.0, exclusive_min=True, doc="learning rate")
_WD = Arg("weight_decay", FLOAT, 0.0, min=0.0, doc="L2 penalty added to the gradient (coupled)")

_define(OPTIMIZERS, "optimizer", "sgd",
        "Gradient descent w ← w − lr·g, with optional (Nesterov) momentum as in PyTorch.",
        [_LR, Arg("momentum", FLOAT, 0.0, min=0.0, max=1.0), Arg("nesterov", BOOL, False),
         Arg("dampening", FLOAT, 0.0, min=0.0, max=1.0), _WD])
_define(OPTIMIZERS, "optimizer", "adagrad",
        "Per-weight rates scaled by the root of the summed squared gradients.",
        [_LR, Arg("eps", FLOAT, 1e-10, min=0.0, exclusive_min=True), _WD])
_define(OPTIMIZERS, "optimizer", "rmsprop",
        "Per-weight rates scaled by a running root mean square of the gradients.",
        [dataclasses.replace(_LR, default=0.01), Arg("alpha", FLOAT, 0.99, min=0.0, max=1.0),
         Arg("eps", FLOAT, 1e-8, min=0.0, exclusive_min=True),
         Arg("momentum", FLOAT, 0.0, min=0.0, max=1.0), _WD])
_ADAM_ARGS = [dataclasses.replace(_LR, default=0.001),
              Arg("beta1", FLOAT, 0.9, min=0.0, max=1.0), Arg("beta2", FLOAT, 0.999, min=0.0, max=1.0),
              Arg("eps", FLOAT, 1e-8, min=0.0, exclusive_min=True)]
_define(OPTIMIZERS, "optimizer", "adam", "Adaptive moments (Kingma & Ba), bias-corrected.",
        _ADAM_ARGS + [_WD])
_define(OPTIMIZERS, "optimizer", "adamw", "Adam with decoupled weight decay (Loshchilov & Hutter).",
        _ADAM_ARGS + [Arg("weight_decay", FLOAT, 0.01, min=0.0)])

_define(SCHEDULES, "schedule", "constant", "The learning rate stays fixed.", [])
_define(SCHEDULES, "schedule", "step", "Multiply the rate by `gamma` every `every` epochs.",
        [Arg("every", INT, min=1), Arg("gamma", FLOAT, 0.1, min=0.0)])
_define(SCHEDULES, "schedule", "exponential", "Multiply the rate by `gamma` after every epoch.",
        [Arg("gamma", FLOAT, min=0.0)])
_define(SCHEDULES, "schedule", "cosine", "Cosine decay from the base rate to `min_lr` over the run.",
        [Arg("min_lr", FLOAT, 0.0, min=0.0), Arg("warmup", INT, 0, min=0, doc="linear warm-up epochs")])
_define(SCHEDULES, "schedule", "warmup",
        "Linear warm-up from 0 over `epochs` epochs, then the base rate.",
        [Arg("epochs", INT, min=1)])

_define(REGULARIZERS, "regularizer", "l2", "Adds `strength · Σ w²` to the loss.",
        [Arg("strength", FLOAT, min=0.0)])
_define(REGULARIZERS, "regularizer", "l1", "Adds `strength · Σ |w|` to the loss.",
        [Arg("strength", FLOAT, min=0.0)])
_define(REGULARIZERS, "regularizer", "elastic_net", "Adds `l1 · Σ |w| + l2 · Σ w²` to the loss.",
        [Arg("l1", FLOAT, min=0.0), Arg("l2", FLOAT, min=0.0)])
