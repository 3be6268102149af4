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


# ---- CPU kernels: each optimiser's update as the body of one loop over a parameter ---------------
#
# A template receives the optimiser's arguments, a constant formatter, and the names of the
# loop's variables: `p` (the parameter, flat), `gi` (this element's gradient, penalties and
# clipping applied), the state arrays by slot name, `lr` and `t` (the step number, from 1).
# It returns (lines before the loop, lines in the loop).  The reference rules are in
# netlang/train/optimizers.py; the CPU engine is tested step for step against them.

STATE_SLOTS = {"sgd": lambda a: ("velocity",) if a["momentum"] else (),
               "adagrad": lambda a: ("sum",),
               "rmsprop": lambda a: ("square_avg", "momentum_buffer"),
               "adam": lambda a: ("m", "v"), "adamw": lambda a: ("m", "v")}


def _sgd_update(a, c, v):
    body = []
    if a["weight_decay"]:
        body.append(f"gi += {c(a['weight_decay'])} * {v['p']}[i]")
    if a["momentum"]:
        vel = v["velocity"]
        body += ["if t == 1:", f"    {vel}[i] = gi", "else:",
                 f"    {vel}[i] = {c(a['momentum'])} * {vel}[i] + {c(1 - a['dampening'])} * gi"]
        body.append(f"gi = gi + {c(a['momentum'])} * {vel}[i]" if a["nesterov"] else f"gi = {vel}[i]")
    body.append(f"{v['p']}[i] -= lr * gi")
    return [], body


def _adagrad_update(a, c, v):
    body = []
    if a["weight_decay"]:
        body.append(f"gi += {c(a['weight_decay'])} * {v['p']}[i]")
    body += [f"{v['sum']}[i] += gi * gi",
             f"{v['p']}[i] -= lr * gi / (np.sqrt({v['sum']}[i]) + {c(a['eps'])})"]
    return [], body


def _rmsprop_update(a, c, v):
    body = []
    if a["weight_decay"]:
        body.append(f"gi += {c(a['weight_decay'])} * {v['p']}[i]")
    sq = v["square_avg"]
    body += [f"{sq}[i] = {c(a['alpha'])} * {sq}[i] + {c(1 - a['alpha'])} * gi * gi",
             f"gi = gi / (np.sqrt({sq}[i]) + {c(a['eps'])})"]
    if a["momentum"]:
        buf = v["momentum_buffer"]
        body += [f"{buf}[i] = {c(a['momentum'])} * {buf}[i] + gi", f"gi = {buf}[i]"]
    body.append(f"{v['p']}[i] -= lr * gi")
    return [], body


def _adam_update(decoupled):
    def template(a, c, v):
        m, s, p = v["m"], v["v"], v["p"]
        prologue = [f"bc1 = 1.0 - {a['beta1']!r} ** t", f"bc2 = 1.0 - {a['beta2']!r} ** t"]
        body = []
        if a["weight_decay"]:
            body.append(f"{p}[i] *= 1.0 - lr * {a['weight_decay']!r}" if decoupled else
                        f"gi += {c(a['weight_decay'])} * {p}[i]")
        body += [f"{m}[i] = {c(a['beta1'])} * {m}[i] + {c(1 - a['beta1'])} * gi",
                 f"{s}[i] = {c(a['beta2'])} * {s}[i] + {c(1 - a['beta2'])} * gi * gi",
                 f"{p}[i] -= lr * ({m}[i] / bc1) / (np.sqrt({s}[i] / bc2) + {c(a['eps'])})"]
        return prologue, body
    return template


CPU_UPDATE = {"sgd": _sgd_update, "adagrad": _adagrad_update, "rmsprop": _rmsprop_update,
              "adam": _adam_update(False), "adamw": _adam_update(True)}


def cpu_penalty(choices, layer: str, penalised: bool, c, p: str) -> list[str]:
    """Lines adding the regularisers' gradient for one weight element to `gi`.

    `penalised` comes from the parameter (its op's ParamSpec): biases and norm scales are not."""
    if not penalised:
        return []
    lines = []
    for choice in choices:
        if choice.layers and layer not in choice.layers:
            continue
        a = choice.args
        if choice.name in ("l2", "elastic_net"):
            strength = a["strength"] if choice.name == "l2" else a["l2"]
            if strength:
                lines.append(f"gi += {c(2 * strength)} * {p}[i]")
        if choice.name in ("l1", "elastic_net"):
            strength = a["strength"] if choice.name == "l1" else a["l1"]
            if strength:
                lines.append(f"gi += {c(strength)} * np.sign({p}[i])")
    return lines


# An update that the weight gradient's matrix product can perform itself, through gemm's
# C ← α·A·B + β·C: `target` is the array the product accumulates into ("param" or a state
# slot), `first`/`later` the (α, β) source for step 1 and later steps, `after` the loop body
# that finishes the update (may be empty).  Plain SGD needs no second pass at all.
@dataclasses.dataclass(frozen=True)
class GemmUpdate:
    target: str
    first: tuple
    later: tuple
    after: tuple


def _sgd_absorb(a):
    if a["weight_decay"] or a["nesterov"]:
        return None
    if not a["momentum"]:
        return GemmUpdate("param", ("-lr", "1.0"), ("-lr", "1.0"), ())
    return GemmUpdate("velocity", ("1.0", "0.0"), (repr(1 - a["dampening"]), repr(a["momentum"])),
                      ("{p}[i] -= lr * {velocity}[i]",))


CPU_ABSORB = {"sgd": _sgd_absorb}
